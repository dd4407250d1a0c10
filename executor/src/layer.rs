//! Writes a [`Diff`] as a layer blob: tar → (uncompressed digest) → compressor
//! → (compressed digest) → temp file → rename. Streams end to end; no layer is
//! ever held in memory.

use crate::blobs::{BlobError, BlobStore};
use crate::compression::Compression;
use crate::outline::{Tars, OUTLINE_MEDIA_TYPE};
use crate::snapshot::{Change, Diff};
use flate2::write::GzEncoder;
use kiln_common::digest::{Digest, HashingWriter};
use kiln_common::image::Descriptor;
use kiln_layers::extract::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use std::collections::HashMap;
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The manifest and media-type family of the image (`--image-format`): one
/// value, so that the manifest and the layers' media types cannot disagree.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ImageFormat {
    #[default]
    Oci,
    /// Docker schema 2 (`--image-format docker`): no zstd layers.
    Docker,
}

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("layer entry {path}")]
    Entry { path: PathBuf, source: io::Error },
    #[error("writing layer: {0}")]
    Write(io::Error),
    #[error(transparent)]
    Blob(#[from] BlobError),
}

#[derive(Debug, Clone, Copy, Default)]
pub struct LayerOptions {
    pub compression: Compression,
    pub level: Option<i32>,
    /// Timestamps set to the epoch, so the same inputs give the same digest.
    pub reproducible: bool,
    pub format: ImageFormat,
    /// `SOURCE_DATE_EPOCH`, when given: the time Kiln's own entries
    /// (whiteouts) carry, and with `rewrite_timestamp` the latest time any
    /// entry may.
    pub epoch: Option<u64>,
    /// `--rewrite-timestamp` (BuildKit's `rewrite-timestamp=true`): file
    /// times in the layers Kiln writes are capped at `epoch`; base layers
    /// are never rewritten.
    pub rewrite_timestamp: bool,
    /// Write each layer's outline too (`outline.rs`): for layers that go
    /// into the shared cache. Not part of the layer's bytes or its key.
    pub outline: bool,
}

impl LayerOptions {
    /// The time an entry written at `mtime` carries in a layer.
    fn entry_time(&self, mtime: u64) -> u64 {
        match (self.reproducible, self.rewrite_timestamp, self.epoch) {
            (true, _, _) => 0,
            (false, true, Some(e)) => mtime.min(e),
            _ => mtime,
        }
    }

    /// What distinguishes layers these options write, for cache keys:
    /// a cached layer is the bytes a rebuild would give.
    pub fn cache_settings(&self) -> String {
        // The level in effect, not the flag: a cached layer written at
        // another default is not what this build would write.
        let mut s = format!(
            "{}:{}:{}",
            self.compression.name(),
            self.level.unwrap_or(self.compression.default_level()),
            self.reproducible
        );
        if let (true, Some(e)) = (self.rewrite_timestamp, self.epoch) {
            s.push_str(&format!(":rewrite-timestamp={e}"));
        }
        s
    }
}

#[derive(Debug, Clone)]
pub struct Layer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub uncompressed_size: u64,
    /// The layer's outline in the same store, when asked for.
    pub outline: Option<Descriptor>,
}

/// Writes the layer for `diff`, reading content from `root`.
pub fn write_layer(
    root: &Path,
    diff: &Diff,
    store: &BlobStore,
    opts: &LayerOptions,
) -> Result<Layer, LayerError> {
    let blob = crate::pipe::ThreadedWriter::new(store.writer()?);
    let enc = opts
        .compression
        .encoder(blob, opts.level)
        .map_err(LayerError::Write)?;
    // Small (headers), so compressed on this thread, fast.
    let outline = match opts.outline {
        true => Some(GzEncoder::new(store.writer()?, flate2::Compression::fast())),
        false => None,
    };
    // An uncompressed layer's diff id is its digest: the tar is hashed once,
    // as the blob, not twice.
    let (enc, diff_id, uncompressed_size, outline) = if opts.compression == Compression::None {
        let (counted, o) = append_diff(Counting { inner: enc, n: 0 }, outline, root, diff, opts)?;
        (counted.inner, None, counted.n, o)
    } else {
        let (w, o) = append_diff(HashingWriter::new(enc), outline, root, diff, opts)?;
        let (enc, d, n) = w.finish();
        (enc, Some(d), n, o)
    };
    let blob = enc.finish_box().map_err(LayerError::Write)?;
    let (digest, size) = blob.finish().map_err(LayerError::Write)?.commit()?;
    let outline = match outline {
        Some(o) => {
            let (d, n) = o.finish().map_err(LayerError::Write)?.commit()?;
            Some(Descriptor::new(OUTLINE_MEDIA_TYPE, d, n))
        }
        None => None,
    };
    Ok(Layer {
        outline,
        descriptor: Descriptor::new(
            opts.compression
                .media_type(opts.format == ImageFormat::Docker),
            digest.clone(),
            size,
        ),
        diff_id: diff_id.unwrap_or(digest),
        uncompressed_size,
    })
}

/// The tar of `diff` written into `w` (and its outline into `outline`),
/// which are returned.
fn append_diff<W: Write, O: Write>(
    w: W,
    outline: Option<O>,
    root: &Path,
    diff: &Diff,
    opts: &LayerOptions,
) -> Result<(W, Option<O>), LayerError> {
    let mut tb = Tars::new(w, outline);
    let mut links: HashMap<(u64, u64), PathBuf> = HashMap::new();
    for (rel, change) in &diff.changes {
        let entry_err = |source| LayerError::Entry {
            path: rel.clone(),
            source,
        };
        match change {
            Change::Delete => {
                // Bytes, not text: a non-UTF-8 name keeps its whiteout.
                let mut name = std::ffi::OsString::from(WHITEOUT_PREFIX);
                name.push(rel.file_name().unwrap_or_default());
                let wh = rel.with_file_name(name);
                append_empty(&mut tb, &wh, opts).map_err(entry_err)?;
            }
            Change::Add | Change::Opaque => {
                let content = diff.contents.get(rel).map(PathBuf::as_path);
                append_path(&mut tb, root, rel, content, &mut links, opts).map_err(entry_err)?;
                if *change == Change::Opaque {
                    append_empty(&mut tb, &rel.join(OPAQUE_MARKER), opts).map_err(entry_err)?;
                }
            }
        }
    }
    tb.finish().map_err(LayerError::Write)
}

/// Counts what passes through (an uncompressed layer's size).
struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let k = self.inner.write(buf)?;
        self.n += k as u64;
        Ok(k)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn append_empty<W: Write, O: Write>(
    tb: &mut Tars<W, O>,
    path: &Path,
    opts: &LayerOptions,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(0);
    h.set_mode(0o644);
    h.set_mtime(opts.entry_time(opts.epoch.unwrap_or_else(now)));
    h.set_uid(0);
    h.set_gid(0);
    tb.empty(&mut h, path)
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Appends `root/rel`; a regular file's bytes come from `content` when the
/// root holds only its placeholder.
fn append_path<W: Write, O: Write>(
    tb: &mut Tars<W, O>,
    root: &Path,
    rel: &Path,
    content: Option<&Path>,
    links: &mut HashMap<(u64, u64), PathBuf>,
    opts: &LayerOptions,
) -> io::Result<()> {
    let full = root.join(rel);
    let m = std::fs::symlink_metadata(&full)?;
    let ft = m.file_type();
    // Extended attributes travel as PAX records (overlay's own are internal).
    if let Ok(names) = xattr::list(&full) {
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        for n in names {
            let ns = n.to_string_lossy();
            if crate::userns::is_overlay_xattr(&ns) || ns == "security.selinux" {
                continue;
            }
            if let Ok(Some(v)) = xattr::get(&full, &n) {
                pax.push((format!("SCHILY.xattr.{ns}"), v));
            }
        }
        if !pax.is_empty() {
            tb.pax(&pax)?;
        }
    }
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(&m, tar::HeaderMode::Complete);
    h.set_mtime(opts.entry_time(h.mtime()?));
    if !ft.is_dir() && m.nlink() > 1 {
        let key = (m.dev(), m.ino());
        if let Some(first) = links.get(&key) {
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            return tb.link(&mut h, rel, first);
        }
        links.insert(key, rel.to_path_buf());
    }
    if ft.is_symlink() {
        let target = std::fs::read_link(&full)?;
        h.set_size(0);
        tb.link(&mut h, rel, &target)
    } else if ft.is_file() {
        let src = content.unwrap_or(&full);
        let f = std::fs::File::open(src)?;
        // A COPY source may have changed since its placeholder was sized;
        // the root's own file was stat'ed just above. A file that shrinks
        // while it is read is caught by `Exact` either way.
        if content.is_some() && f.metadata()?.len() != m.len() {
            return Err(changed(src));
        }
        let exact = Exact {
            inner: f,
            left: m.len(),
            path: src,
        };
        tb.file(&mut h, rel, exact)
    } else if ft.is_dir() || ft.is_fifo() || ft.is_char_device() || ft.is_block_device() {
        tb.empty(&mut h, rel)
    } else {
        // Sockets cannot be represented in a layer.
        Ok(())
    }
}

fn changed(src: &Path) -> io::Error {
    io::Error::other(format!(
        "{} changed while its layer was written",
        src.display()
    ))
}

/// A file read for its layer: exactly the size its header gives, or an
/// error — a COPY source that shrank since its placeholder was made must
/// not leave a malformed tar.
struct Exact<'a> {
    inner: std::fs::File,
    left: u64,
    path: &'a Path,
}

impl io::Read for Exact<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.left).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n == 0 && !buf.is_empty() {
            return Err(changed(self.path));
        }
        self.left -= n as u64;
        Ok(n)
    }
}
