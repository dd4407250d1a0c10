//! The final image's file system as an SBOM needs it, read from its
//! layers rather than from a root on disk: a fully cached build has no
//! root, and the layers are what the image is. Layers are applied in
//! order with their whiteouts (`.wh.<name>`, `.wh..wh..opq`); kept are
//! every regular file's SHA-1 (SPDX requires it of each file listed), the
//! bytes of the package databases ([`is_database`]) and, for ELF files
//! built by Go, the build information the Go linker embeds (the Go
//! version and the modules linked in: `go version -m` reads the same).

use sha1::{Digest as _, Sha1};
use std::collections::BTreeMap;
use std::io::{self, Read};

/// The largest package database file kept (a Debian `status` with
/// thousands of packages is a few MiB).
const DATABASE_LIMIT: u64 = 64 << 20;

/// Where Go's build information starts (`debug/buildinfo`'s magic).
pub const GO_MAGIC: &[u8] = b"\xff Go buildinf:";
/// How much of it is kept: the header, the Go version and the module
/// list (a few KiB even for big programs).
const GO_INFO_LIMIT: usize = 256 << 10;

/// What the image holds, as far as the SBOM is concerned.
#[derive(Debug, Default)]
pub struct ImageFiles {
    /// Every regular file by path (no leading `/`): its SHA-1, hex.
    pub sha1: BTreeMap<String, String>,
    /// Package database files by path: their bytes.
    pub databases: BTreeMap<String, Vec<u8>>,
    /// Go programs by path: their build information, from [`GO_MAGIC`].
    pub go: BTreeMap<String, Vec<u8>>,
}

/// Whether `path` (no leading `/`) is a file a package database is read from.
pub fn is_database(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    path == "var/lib/dpkg/status"
        || path == "etc/os-release"
        || path == "usr/lib/os-release"
        || path.starts_with("var/lib/dpkg/status.d/")
        || (path.starts_with("var/lib/dpkg/info/") && name.ends_with(".md5sums"))
        || path == "lib/apk/db/installed"
        || (name == "METADATA" || name == "RECORD")
            && path
                .rsplit('/')
                .nth(1)
                .is_some_and(|d| d.ends_with(".dist-info"))
        || name == "package.json" && path.contains("node_modules/")
}

impl ImageFiles {
    /// Applies one layer (an uncompressed tar stream) over what is here.
    pub fn apply(&mut self, layer: impl Read) -> io::Result<()> {
        let mut ar = tar::Archive::new(layer);
        for entry in ar.entries()? {
            let mut e = entry?;
            let path = normalize(&String::from_utf8_lossy(&e.path_bytes()));
            let (dir, name) = match path.rsplit_once('/') {
                Some((d, n)) => (d.to_string(), n.to_string()),
                None => (String::new(), path.clone()),
            };
            if name == ".wh..wh..opq" {
                self.remove_under(&dir);
                continue;
            }
            if let Some(gone) = name.strip_prefix(".wh.") {
                let gone = if dir.is_empty() {
                    gone.to_string()
                } else {
                    format!("{dir}/{gone}")
                };
                self.remove(&gone);
                self.remove_under(&gone);
                continue;
            }
            // A file replaced by anything else is no longer that file.
            self.remove(&path);
            if e.header().entry_type() == tar::EntryType::Directory {
                continue;
            }
            if e.header().entry_type().is_file() {
                let keep = is_database(&path) && e.size() <= DATABASE_LIMIT;
                let mut h = Sha1::new();
                let mut kept = Vec::new();
                let mut go = GoInfo::default();
                let mut buf = vec![0u8; 64 << 10];
                let mut first = true;
                loop {
                    let n = e.read(&mut buf)?;
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                    if keep {
                        kept.extend_from_slice(&buf[..n]);
                    }
                    if first {
                        go.elf = buf[..n].starts_with(b"\x7fELF");
                        first = false;
                    }
                    go.feed(&buf[..n]);
                }
                self.sha1.insert(path.clone(), hex::encode(h.finalize()));
                if let Some(info) = go.found {
                    self.go.insert(path.clone(), info);
                }
                if keep {
                    self.databases.insert(path, kept);
                }
            } else if e.header().entry_type() == tar::EntryType::Link {
                // A hard link has its target's content.
                if let Some(target) = e.link_name_bytes() {
                    let target = normalize(&String::from_utf8_lossy(&target));
                    if let Some(s) = self.sha1.get(&target).cloned() {
                        self.sha1.insert(path.clone(), s);
                    }
                    if let Some(b) = self.databases.get(&target).cloned() {
                        self.databases.insert(path.clone(), b);
                    }
                    if let Some(b) = self.go.get(&target).cloned() {
                        self.go.insert(path, b);
                    }
                }
            }
        }
        Ok(())
    }

    fn remove(&mut self, path: &str) {
        self.sha1.remove(path);
        self.databases.remove(path);
        self.go.remove(path);
    }

    /// Removes everything strictly under directory `dir` (`""`: the root).
    fn remove_under(&mut self, dir: &str) {
        let prefix = if dir.is_empty() {
            String::new()
        } else {
            format!("{dir}/")
        };
        self.sha1.retain(|p, _| !p.starts_with(&prefix));
        self.databases.retain(|p, _| !p.starts_with(&prefix));
        self.go.retain(|p, _| !p.starts_with(&prefix));
    }
}

/// Looks for Go's build information in an ELF file streamed through
/// [`GoInfo::feed`], the magic possibly split between two reads.
#[derive(Default)]
struct GoInfo {
    elf: bool,
    /// The end of the previous read, for a magic split between two.
    tail: Vec<u8>,
    /// From the magic on, once found (up to [`GO_INFO_LIMIT`]).
    found: Option<Vec<u8>>,
}

impl GoInfo {
    fn feed(&mut self, chunk: &[u8]) {
        if !self.elf {
            return;
        }
        if let Some(f) = &mut self.found {
            let room = GO_INFO_LIMIT.saturating_sub(f.len());
            f.extend_from_slice(&chunk[..chunk.len().min(room)]);
            return;
        }
        let mut window = std::mem::take(&mut self.tail);
        window.extend_from_slice(chunk);
        if let Some(at) = memchr::memmem::find(&window, GO_MAGIC) {
            let end = window.len().min(at + GO_INFO_LIMIT);
            self.found = Some(window[at..end].to_vec());
            return;
        }
        let keep = (GO_MAGIC.len() - 1).min(window.len());
        self.tail = window[window.len() - keep..].to_vec();
    }
}

/// A tar path as the image's path: no `./`, no leading or trailing `/`.
fn normalize(p: &str) -> String {
    p.split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(entries: &[(&str, Option<&[u8]>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in entries {
            let mut h = tar::Header::new_gnu();
            match data {
                Some(d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_size(d.len() as u64);
                    h.set_mode(0o644);
                    b.append_data(&mut h, path, *d).unwrap();
                }
                None => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_size(0);
                    h.set_mode(0o755);
                    b.append_data(&mut h, path, &[][..]).unwrap();
                }
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn layers_apply_with_whiteouts_and_keep_databases() {
        let mut f = ImageFiles::default();
        f.apply(
            &layer(&[
                ("./var/lib/dpkg/status", Some(b"Package: a\n")),
                ("etc/a", Some(b"x")),
                ("opt/d/", None),
                ("opt/d/one", Some(b"1")),
                (
                    "usr/lib/python3/dist-packages/x-1.dist-info/METADATA",
                    Some(b"Name: x\n"),
                ),
            ])[..],
        )
        .unwrap();
        assert_eq!(
            f.sha1["etc/a"], "11f6ad8ec52a2984abaafd7c3b516503785c2072",
            "sha1 of \"x\""
        );
        assert_eq!(f.databases["var/lib/dpkg/status"], b"Package: a\n");
        assert!(f
            .databases
            .contains_key("usr/lib/python3/dist-packages/x-1.dist-info/METADATA"));
        assert!(!f.databases.contains_key("etc/a"));
        f.apply(
            &layer(&[
                ("etc/.wh.a", Some(b"")),
                ("opt/d/.wh..wh..opq", Some(b"")),
                ("opt/d/two", Some(b"2")),
                ("var/lib/dpkg/status", Some(b"Package: b\n")),
            ])[..],
        )
        .unwrap();
        assert!(!f.sha1.contains_key("etc/a"));
        assert!(!f.sha1.contains_key("opt/d/one"));
        assert!(f.sha1.contains_key("opt/d/two"));
        assert_eq!(f.databases["var/lib/dpkg/status"], b"Package: b\n");
        // A directory whited out takes its files with it.
        f.apply(&layer(&[("usr/lib/.wh.python3", Some(b""))])[..])
            .unwrap();
        assert!(f
            .databases
            .keys()
            .all(|k| !k.starts_with("usr/lib/python3")));
    }

    #[test]
    fn go_build_information_is_found_across_reads_in_elf_files_only() {
        let mut elf = b"\x7fELF".to_vec();
        elf.resize((64 << 10) - 5, 0);
        elf.extend_from_slice(GO_MAGIC);
        elf.extend_from_slice(b"\x08\x02 the rest");
        let mut not_elf = b"#!/bin/sh\n".to_vec();
        not_elf.extend_from_slice(GO_MAGIC);
        let mut f = ImageFiles::default();
        f.apply(
            &layer(&[
                ("usr/bin/app", Some(&elf)),
                ("usr/bin/script", Some(&not_elf)),
            ])[..],
        )
        .unwrap();
        assert!(f.go["usr/bin/app"].starts_with(GO_MAGIC));
        assert!(f.go["usr/bin/app"].ends_with(b" the rest"));
        assert!(!f.go.contains_key("usr/bin/script"));
        f.apply(&layer(&[("usr/bin/.wh.app", Some(b""))])[..])
            .unwrap();
        assert!(f.go.is_empty());
    }

    #[test]
    fn which_files_are_databases() {
        for yes in [
            "var/lib/dpkg/status",
            "var/lib/dpkg/status.d/base",
            "var/lib/dpkg/info/bash.md5sums",
            "lib/apk/db/installed",
            "app/node_modules/left-pad/package.json",
            "venv/lib/python3.11/site-packages/six-1.16.0.dist-info/RECORD",
        ] {
            assert!(is_database(yes), "{yes}");
        }
        for no in [
            "var/lib/dpkg/info/bash.list",
            "app/package.json",
            "x/METADATA",
        ] {
            assert!(!is_database(no), "{no}");
        }
    }
}
