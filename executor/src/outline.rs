//! A layer's outline: the layer's tar with the bodies of its regular files
//! left out, written beside the layer and stored with its cache entry.
//!
//! A COPY-only tail builds on a skeleton root (`engine/skeleton.rs`): the
//! base and the cached layers unpacked without their files. Unpacked from
//! the layers themselves, that still means fetching and inflating every
//! cached layer — tens of megabytes for a venv or a `node_modules` — to
//! learn its directories and links. The outline holds exactly what a
//! skeleton unpack reads (every entry's header, PAX records and link
//! names; the data of the files a skeleton keeps), so a skeleton unpacked
//! from it is the one unpacked from the layer, at a few kilobytes.
//!
//! Which files a skeleton keeps is decided on their resolved path in the
//! root ([`SKELETON_KEEP`]); the writer cannot resolve, so it keeps the
//! data of every file whose name is one of theirs (`passwd`, `group`
//! anywhere): a few small files. The media type carries a version: a
//! change to what a skeleton keeps is a new version, and an entry whose
//! outline is of another version is used as if it had none.

use kiln_common::image::Descriptor;
use kiln_layers::extract::SKELETON_KEEP;
use std::io::{self, Read, Write};
use std::path::Path;

/// The media type of an outline in a cache entry's manifest (after the
/// layer; readers that know only the first layer never see it).
pub const OUTLINE_MEDIA_TYPE: &str = "application/vnd.dev.kiln.layer.outline.v1.tar+gzip";

/// Whether `d` is an outline Kiln can read.
pub fn is_outline(d: &Descriptor) -> bool {
    d.media_type == OUTLINE_MEDIA_TYPE
}

/// The largest kept file an outline holds (read into memory on the way):
/// a layer with a bigger one gets no outline, and is unpacked itself.
const KEEP_MAX: u64 = 1 << 20;

/// Whether a regular file at `rel` keeps its data in the outline.
fn keeps(rel: &Path) -> bool {
    let name = rel.file_name();
    SKELETON_KEEP
        .iter()
        .any(|k| Path::new(k).file_name() == name)
}

fn builder<T: Write>(w: T) -> tar::Builder<T> {
    let mut tb = tar::Builder::new(w);
    tb.mode(tar::HeaderMode::Complete);
    tb.follow_symlinks(false);
    tb
}

/// The tar of a layer and, optionally, its outline, written entry by entry
/// together: the outline's entries are the layer's, each regular file with
/// size 0 and no data unless [`keeps`] says otherwise.
pub struct Tars<W: Write, O: Write> {
    layer: tar::Builder<W>,
    outline: Option<tar::Builder<O>>,
}

impl<W: Write, O: Write> Tars<W, O> {
    pub fn new(layer: W, outline: Option<O>) -> Tars<W, O> {
        Tars {
            layer: builder(layer),
            outline: outline.map(builder),
        }
    }

    /// PAX records (extended attributes) for the next entry.
    pub fn pax(&mut self, records: &[(String, Vec<u8>)]) -> io::Result<()> {
        let it = || records.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
        self.layer.append_pax_extensions(it())?;
        if let Some(o) = &mut self.outline {
            o.append_pax_extensions(it())?;
        }
        Ok(())
    }

    /// A symlink or hard link entry (header type set by the caller).
    pub fn link(&mut self, h: &mut tar::Header, rel: &Path, target: &Path) -> io::Result<()> {
        if let Some(o) = &mut self.outline {
            o.append_link(&mut h.clone(), rel, target)?;
        }
        self.layer.append_link(h, rel, target)
    }

    /// An entry without data: a directory, a device node, a FIFO, a whiteout.
    pub fn empty(&mut self, h: &mut tar::Header, rel: &Path) -> io::Result<()> {
        h.set_size(0);
        if let Some(o) = &mut self.outline {
            o.append_data(&mut h.clone(), rel, io::empty())?;
        }
        self.layer.append_data(h, rel, io::empty())
    }

    /// A regular file of `h.size()` bytes read from `data`.
    pub fn file(&mut self, h: &mut tar::Header, rel: &Path, mut data: impl Read) -> io::Result<()> {
        if keeps(rel) && h.size()? > KEEP_MAX {
            self.outline = None;
        }
        match &mut self.outline {
            None => self.layer.append_data(h, rel, data),
            Some(o) if keeps(rel) => {
                let mut bytes = Vec::new();
                data.read_to_end(&mut bytes)?;
                o.append_data(&mut h.clone(), rel, bytes.as_slice())?;
                self.layer.append_data(h, rel, bytes.as_slice())
            }
            Some(o) => {
                let mut empty = h.clone();
                empty.set_size(0);
                o.append_data(&mut empty, rel, io::empty())?;
                self.layer.append_data(h, rel, data)
            }
        }
    }

    /// Ends both archives; returns the layer's writer and the outline's
    /// (none if a kept file was over [`KEEP_MAX`]).
    pub fn finish(self) -> io::Result<(W, Option<O>)> {
        let outline = self.outline.map(tar::Builder::into_inner).transpose()?;
        Ok((self.layer.into_inner()?, outline))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_layers::extract::{apply_layer_as, Extent};
    use std::path::PathBuf;

    fn header(kind: tar::EntryType, mode: u32) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_size(0);
        h
    }

    fn file(t: &mut Tars<Vec<u8>, Vec<u8>>, rel: &str, data: &[u8]) {
        let mut h = header(tar::EntryType::Regular, 0o644);
        h.set_size(data.len() as u64);
        t.file(&mut h, Path::new(rel), data).unwrap();
    }

    fn dir(t: &mut Tars<Vec<u8>, Vec<u8>>, rel: &str, mode: u32, mtime: u64) {
        let mut h = header(tar::EntryType::Directory, mode);
        h.set_mtime(mtime);
        h.set_uid(7);
        t.empty(&mut h, Path::new(rel)).unwrap();
    }

    fn link(t: &mut Tars<Vec<u8>, Vec<u8>>, kind: tar::EntryType, rel: &str, to: &str) {
        let mut h = header(kind, 0o777);
        t.link(&mut h, Path::new(rel), Path::new(to)).unwrap();
    }

    /// Every path under `root` with its type, mode, owner, directory
    /// time, link target and (for files) content, sorted.
    fn listing(root: &Path) -> Vec<String> {
        use std::os::unix::fs::MetadataExt;
        let mut out = Vec::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(p) = todo.pop() {
            let m = p.symlink_metadata().unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let extra = if m.is_symlink() {
                std::fs::read_link(&p).unwrap().display().to_string()
            } else if m.is_file() {
                String::from_utf8_lossy(&std::fs::read(&p).unwrap()).into_owned()
            } else {
                for e in std::fs::read_dir(&p).unwrap() {
                    todo.push(e.unwrap().path());
                }
                // The times the layer gives (others are the unpack's).
                match rel.as_str() {
                    "etc" | "alt" => m.mtime().to_string(),
                    _ => String::new(),
                }
            };
            out.push(format!(
                "{rel} {:o} {}:{} {extra}",
                m.mode(),
                m.uid(),
                m.gid()
            ));
        }
        out.sort();
        out
    }

    fn skeleton_of(tar: &[u8]) -> (Vec<String>, Vec<PathBuf>) {
        let root = tempfile::tempdir().unwrap();
        let stats = apply_layer_as(root.path(), tar, &Extent::skeleton()).unwrap();
        (listing(root.path()), stats.skipped)
    }

    #[test]
    fn a_skeleton_from_the_outline_is_the_skeleton_from_the_layer() {
        let mut t = Tars::new(Vec::new(), Some(Vec::new()));
        dir(&mut t, "etc", 0o755, 1000);
        file(&mut t, "etc/passwd", b"root:x:0:0::/root:/bin/sh\n");
        file(&mut t, "etc/hostname", b"kiln\n");
        // Named like a kept file where a link would resolve to one.
        dir(&mut t, "alt", 0o700, 2000);
        file(&mut t, "alt/group", b"root:x:0:\n");
        link(&mut t, tar::EntryType::Symlink, "usr", "alt");
        // Through a link to /etc: kept in the layer's skeleton by the
        // resolved path, so the outline must hold its data.
        link(&mut t, tar::EntryType::Symlink, "cfg", "etc");
        file(&mut t, "cfg/group", b"staff:x:50:\n");
        let long = format!("deep/{}/file", "d".repeat(150));
        t.pax(&[("SCHILY.xattr.user.k".into(), b"v".to_vec())])
            .unwrap();
        file(&mut t, &long, &[7u8; 4000]);
        link(&mut t, tar::EntryType::Link, "etc/hard", "etc/hostname");
        file(&mut t, "etc/.wh.shadow", b"");
        let (layer, outline) = t.finish().unwrap();
        let outline = outline.unwrap();

        let (want, want_skipped) = skeleton_of(&layer);
        let (got, got_skipped) = skeleton_of(&outline);
        assert_eq!(got, want);
        assert_eq!(got_skipped, want_skipped);
        assert!(want
            .iter()
            .any(|l| l.starts_with("etc/passwd ") && l.contains("root:x")));
        assert!(want
            .iter()
            .any(|l| l.starts_with("etc/group ") && l.contains("staff")));
        assert!(want_skipped.contains(&PathBuf::from("etc/hostname")));
        // The bodies are gone: the 4000-byte file and the hostname.
        assert!(
            outline.len() < layer.len() - 4000,
            "{} {}",
            outline.len(),
            layer.len()
        );
        assert!(!outline.windows(5).any(|w| w == b"kiln\n"));
        assert!(outline.windows(8).any(|w| w == b"root:x:0"));
    }

    #[test]
    fn a_kept_file_too_big_to_hold_leaves_the_layer_without_an_outline() {
        let mut t = Tars::new(Vec::new(), Some(Vec::new()));
        file(&mut t, "etc/hostname", b"kiln\n");
        file(&mut t, "etc/passwd", &vec![b'x'; KEEP_MAX as usize + 1]);
        let (layer, outline) = t.finish().unwrap();
        assert!(outline.is_none());
        assert!(layer.len() > KEEP_MAX as usize);
    }
}
