//! Cache keys for build steps.
//!
//! A key is a sha256 over an unambiguous encoding: every field is written as
//! `len(name) name len(value) value` (u64 little-endian lengths), so no two
//! input sequences can produce the same byte stream, unlike kaniko's
//! `-`-joined strings. Keys chain: each covers the previous key of its stage,
//! which starts from the cache-format version, the layer settings, the platform
//! and the base image's manifest digest (or the final key of an earlier stage).
//! The full specification is in ARCHITECTURE.md.

use crate::dockerignore::DockerIgnore;
use kiln_common::digest::HashingReader;
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Bumped whenever the encoding or the meaning of a field changes.
pub const CACHE_FORMAT: &str = "kiln-cache-v2";

/// Up to this many entries of a copied tree are listed in a key's inputs.
const MAX_ITEMISED: usize = 500;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("hashing {path}")]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Builds one key; also records a readable summary of each input so that a
/// miss can be explained by comparing with an earlier build's inputs.
#[derive(Clone)]
pub struct KeyBuilder {
    h: Sha256,
    pub inputs: Vec<(String, String)>,
}

impl KeyBuilder {
    pub fn new(previous: &Digest) -> KeyBuilder {
        let mut k = KeyBuilder {
            h: Sha256::new(),
            inputs: Vec::new(),
        };
        k.raw("format", CACHE_FORMAT.as_bytes());
        k.raw("previous", previous.as_str().as_bytes());
        k
    }

    fn raw(&mut self, name: &str, value: &[u8]) {
        self.h.update((name.len() as u64).to_le_bytes());
        self.h.update(name.as_bytes());
        self.h.update((value.len() as u64).to_le_bytes());
        self.h.update(value);
    }

    /// Adds a field; `summary` is what a miss explanation shows.
    pub fn field(&mut self, name: &str, value: &str) -> &mut Self {
        self.raw(name, value.as_bytes());
        let shown = if value.len() > 200 {
            format!(
                "{}… (sha256 {})",
                &value[..value.floor_char_boundary(120)],
                &hex::encode(Sha256::digest(value.as_bytes()))[..12]
            )
        } else {
            value.to_string()
        };
        self.inputs.push((name.to_string(), shown));
        self
    }

    /// A list field: its length first, then each item.
    pub fn list(&mut self, name: &str, items: &[String]) -> &mut Self {
        self.raw(name, &(items.len() as u64).to_le_bytes());
        for i in items {
            self.raw("item", i.as_bytes());
        }
        self.inputs.push((name.to_string(), items.join(" ")));
        self
    }

    pub fn finish(self) -> (Digest, Vec<(String, String)>) {
        (Digest::from_sha256(self.h.finalize().into()), self.inputs)
    }
}

/// The start of a stage's chain.
pub fn stage_start(base: &str, platform: &str, layer_settings: &str) -> Digest {
    let mut k = KeyBuilder::new(&Digest::sha256_of(b""));
    k.field("base", base)
        .field("platform", platform)
        .field("layers", layer_settings);
    k.finish().0
}

/// Hashes what a COPY/ADD would copy from `src` (a match in a source tree):
/// each file's relative name, type, mode, owner (only when kept), content or
/// link target. mtime is left out on purpose: a fresh clone must hit.
pub fn hash_tree(
    base: &Path,
    rel: &str,
    ignore: Option<&DockerIgnore>,
    keep_owner: bool,
    k: &mut KeyBuilder,
) -> Result<(), KeyError> {
    let top = kiln_layers::rootfs::resolve(base, rel, true).map_err(|e| KeyError::Io {
        path: base.join(rel),
        source: std::io::Error::other(e.to_string()),
    })?;
    let mut files = Vec::new();
    let mut h = Sha256::new();
    walk(&top, "", rel, ignore, keep_owner, &mut h, &mut files)?;
    let d = hex::encode(h.finalize());
    k.raw("source", rel.as_bytes());
    k.raw("tree", d.as_bytes());
    k.inputs.push((
        format!("source {rel}"),
        format!("{} entries, sha256 {}", files.len(), &d[..16]),
    ));
    // Small trees are itemised so that a miss can name the file that changed.
    if files.len() <= MAX_ITEMISED {
        k.inputs.extend(files);
    }
    Ok(())
}

fn entry(h: &mut Sha256, name: &str, value: &[u8]) {
    h.update((name.len() as u64).to_le_bytes());
    h.update(name.as_bytes());
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

fn walk(
    path: &Path,
    rel: &str,
    ctx_rel: &str,
    ignore: Option<&DockerIgnore>,
    keep_owner: bool,
    h: &mut Sha256,
    files: &mut Vec<(String, String)>,
) -> Result<(), KeyError> {
    let io = |source| KeyError::Io {
        path: path.to_path_buf(),
        source,
    };
    let m = std::fs::symlink_metadata(path).map_err(io)?;
    entry(h, "path", rel.as_bytes());
    let mode = m.permissions().mode() & 0o177777;
    entry(h, "mode", &mode.to_le_bytes());
    let mut summary = format!("mode {mode:o}");
    if keep_owner {
        entry(h, "owner", format!("{}:{}", m.uid(), m.gid()).as_bytes());
        summary.push_str(&format!(" owner {}:{}", m.uid(), m.gid()));
    }
    let ft = m.file_type();
    if ft.is_symlink() {
        let t = std::fs::read_link(path).map_err(io)?;
        entry(h, "link", t.as_os_str().as_encoded_bytes());
        summary.push_str(&format!(" -> {}", t.display()));
    } else if ft.is_file() {
        let mut r = HashingReader::new(std::fs::File::open(path).map_err(io)?);
        std::io::copy(&mut r, &mut std::io::sink()).map_err(io)?;
        let (d, _) = r.finish();
        entry(h, "content", d.as_str().as_bytes());
        summary.push_str(&format!(" content {}", &d.hex()[..12]));
    }
    files.push((format!("file {ctx_rel}"), summary));
    if ft.is_dir() {
        let mut names: Vec<_> = std::fs::read_dir(path)
            .map_err(io)?
            .map(|e| e.map(|e| e.file_name()))
            .collect::<Result<_, _>>()
            .map_err(io)?;
        names.sort();
        for n in names {
            let n = n.to_string_lossy();
            let child_rel = if rel.is_empty() {
                n.to_string()
            } else {
                format!("{rel}/{n}")
            };
            let child_ctx = if ctx_rel.is_empty() {
                n.to_string()
            } else {
                format!("{ctx_rel}/{n}")
            };
            let p = path.join(n.as_ref());
            if let Some(i) = ignore {
                if i.prunes(&child_ctx, || {
                    std::fs::symlink_metadata(&p).is_ok_and(|m| m.is_dir())
                }) {
                    continue;
                }
            }
            walk(&p, &child_rel, &child_ctx, ignore, keep_owner, h, files)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_is_unambiguous_and_chained() {
        let p = stage_start("sha256:x", "linux/amd64", "gzip");
        let mut a = KeyBuilder::new(&p);
        a.field("cmd", "a-b").field("env", "c");
        let mut b = KeyBuilder::new(&p);
        b.field("cmd", "a").field("env", "b-c");
        assert_ne!(a.finish().0, b.finish().0);
        let mut c = KeyBuilder::new(&stage_start("sha256:y", "linux/amd64", "gzip"));
        c.field("cmd", "a-b").field("env", "c");
        let mut d = KeyBuilder::new(&p);
        d.field("cmd", "a-b").field("env", "c");
        assert_ne!(
            c.finish().0,
            d.clone().finish().0,
            "the chain start matters"
        );
        let mut l1 = KeyBuilder::new(&p);
        l1.list("args", &["a b".into()]);
        let mut l2 = KeyBuilder::new(&p);
        l2.list("args", &["a".into(), "b".into()]);
        assert_ne!(l1.finish().0, l2.finish().0);
    }

    #[test]
    fn trees_ignore_mtime_but_not_names_modes_or_content() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("src")).unwrap();
        std::fs::write(d.path().join("src/a"), "1").unwrap();
        let key = |d: &Path| {
            let mut k = KeyBuilder::new(&Digest::sha256_of(b""));
            hash_tree(d, "src", None, false, &mut k).unwrap();
            k.finish().0
        };
        let k0 = key(d.path());
        filetime::set_file_mtime(
            d.path().join("src/a"),
            filetime::FileTime::from_unix_time(1, 0),
        )
        .unwrap();
        assert_eq!(key(d.path()), k0, "mtime is not an input");
        std::fs::rename(d.path().join("src/a"), d.path().join("src/b")).unwrap();
        let k1 = key(d.path());
        assert_ne!(k1, k0, "a renamed file misses");
        std::fs::set_permissions(
            d.path().join("src/b"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        assert_ne!(key(d.path()), k1, "a mode change misses");
    }
}
