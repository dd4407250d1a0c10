//! The build context's digest for provenance: what `.dockerignore` admits,
//! walked in name order, each entry's kind, mode, path and content (a
//! file's SHA-256, a link's target) hashed into one SHA-256. Two contexts
//! with the same digest give COPY the same inputs.

use crate::dockerignore::DockerIgnore;
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

pub fn digest(dir: &Path, ignore: &DockerIgnore) -> std::io::Result<Digest> {
    let mut h = Sha256::new();
    walk(dir, "", ignore, &mut h)?;
    Ok(Digest::from_sha256(h.finalize().into()))
}

fn walk(dir: &Path, rel: &str, ignore: &DockerIgnore, h: &mut Sha256) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    names.sort();
    for name in names {
        let name = name.to_string_lossy().to_string();
        let r = if rel.is_empty() {
            name.clone()
        } else {
            format!("{rel}/{name}")
        };
        let p = dir.join(&name);
        let m = std::fs::symlink_metadata(&p)?;
        if ignore.prunes(&r, || m.is_dir()) {
            continue;
        }
        let excluded = ignore.excluded(&r);
        let mode = m.permissions().mode() & 0o7777;
        if m.is_dir() {
            if !excluded {
                h.update(format!("d {mode:o} {r}\n").as_bytes());
            }
            walk(&p, &r, ignore, h)?;
        } else if excluded {
            continue;
        } else if m.file_type().is_symlink() {
            let t = std::fs::read_link(&p)?;
            h.update(format!("l {mode:o} {r} {}\n", t.display()).as_bytes());
        } else if m.is_file() {
            let (d, _) = kiln_common::digest::digest_file(&p)?;
            h.update(format!("f {mode:o} {r} {}\n", d.hex()).as_bytes());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ignored_files_do_not_change_the_digest() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a"), "1").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        std::fs::write(d.path().join("sub/b"), "2").unwrap();
        let ignore = DockerIgnore::parse("*.log\n");
        let first = digest(d.path(), &ignore).unwrap();
        std::fs::write(d.path().join("x.log"), "noise").unwrap();
        assert_eq!(digest(d.path(), &ignore).unwrap(), first);
        std::fs::write(d.path().join("sub/b"), "3").unwrap();
        assert_ne!(digest(d.path(), &ignore).unwrap(), first);
    }
}
