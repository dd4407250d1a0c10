//! A local content-addressed blob store (`<dir>/sha256/<hex>`): blobs are
//! written to a temp file beside their final place, hashed while written, and
//! renamed only once complete, so a reader never sees a partial blob.

use kiln_common::digest::{Digest, HashingWriter};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("blob store {path}")]
    Io { path: PathBuf, source: io::Error },
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    dir: PathBuf,
}

pub struct BlobWriter {
    inner: HashingWriter<io::BufWriter<std::fs::File>>,
    tmp: tempfile::TempPath,
    dir: PathBuf,
}

impl Write for BlobWriter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.inner.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl BlobWriter {
    /// Commits the blob under its digest; returns the digest and size.
    pub fn commit(self) -> Result<(Digest, u64), BlobError> {
        let (buf, digest, size) = self.inner.finish();
        let err = |source| BlobError::Io {
            path: self.dir.clone(),
            source,
        };
        buf.into_inner().map_err(|e| err(e.into_error()))?;
        let dest = self.dir.join(digest.hex());
        self.tmp.persist(&dest).map_err(|e| err(e.error))?;
        Ok((digest, size))
    }
}

impl BlobStore {
    pub fn open(dir: &Path) -> Result<BlobStore, BlobError> {
        let dir = dir.join("sha256");
        std::fs::create_dir_all(&dir).map_err(|source| BlobError::Io {
            path: dir.clone(),
            source,
        })?;
        Ok(BlobStore { dir })
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn has(&self, d: &Digest) -> bool {
        self.path(d).is_file()
    }

    pub fn writer(&self) -> Result<BlobWriter, BlobError> {
        let tmp = tempfile::Builder::new()
            .prefix(".tmp-")
            .tempfile_in(&self.dir)
            .map_err(|source| BlobError::Io {
                path: self.dir.clone(),
                source,
            })?;
        let (file, tmp) = tmp.into_parts();
        Ok(BlobWriter {
            inner: HashingWriter::new(io::BufWriter::with_capacity(1 << 20, file)),
            tmp,
            dir: self.dir.clone(),
        })
    }

    pub fn put(&self, data: &[u8]) -> Result<(Digest, u64), BlobError> {
        let mut w = self.writer()?;
        w.write_all(data).map_err(|source| BlobError::Io {
            path: self.dir.clone(),
            source,
        })?;
        w.commit()
    }
}
