//! Content digests. Everything fetched or produced is hashed while it streams,
//! and nothing is trusted until the digest matches.

use sha2::{Digest as _, Sha256};
use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DigestError {
    #[error("invalid digest {0:?}: expected sha256:<64 hex digits>")]
    Invalid(String),
    #[error("digest mismatch: expected {expected}, got {actual}")]
    Mismatch { expected: Digest, actual: Digest },
}

/// A `sha256:<hex>` digest. Only sha256 is produced; others are refused on input
/// rather than silently unchecked.
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(try_from = "String", into = "String")]
pub struct Digest(String);

impl Digest {
    pub fn sha256_of(data: &[u8]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(Sha256::digest(data))))
    }
    pub fn from_sha256(hash: [u8; 32]) -> Digest {
        Digest(format!("sha256:{}", hex::encode(hash)))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// The hex part, safe to use as a file name (validated on construction).
    pub fn hex(&self) -> &str {
        &self.0[7..]
    }

    /// The tag OCI 1.1's referrers tag schema gives this digest's
    /// referrers (`sha256-<hex>`), where a registry has no referrers API.
    pub fn referrers_tag(&self) -> String {
        self.as_str().replace(':', "-")
    }
    pub fn verify(&self, actual: &Digest) -> Result<(), DigestError> {
        if self == actual {
            Ok(())
        } else {
            Err(DigestError::Mismatch {
                expected: self.clone(),
                actual: actual.clone(),
            })
        }
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.strip_prefix("sha256:") {
            Some(h)
                if h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) =>
            {
                Ok(Digest(s.to_string()))
            }
            _ => Err(DigestError::Invalid(s.to_string())),
        }
    }
}

impl TryFrom<String> for Digest {
    type Error = DigestError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Digest> for String {
    fn from(d: Digest) -> String {
        d.0
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A writer that hashes and counts what passes through it.
pub struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
}

impl<W: Write> HashingWriter<W> {
    pub fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: Sha256::new(),
            written: 0,
        }
    }
    pub fn finish(self) -> (W, Digest, u64) {
        (
            self.inner,
            Digest::from_sha256(self.hasher.finalize().into()),
            self.written,
        )
    }
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A reader that hashes and counts what is read through it.
pub struct HashingReader<R> {
    inner: R,
    hasher: Sha256,
    read: u64,
}

impl<R: Read> HashingReader<R> {
    pub fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: Sha256::new(),
            read: 0,
        }
    }
    pub fn finish(self) -> (Digest, u64) {
        (
            Digest::from_sha256(self.hasher.finalize().into()),
            self.read,
        )
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.read += n as u64;
        Ok(n)
    }
}

/// Hashes a file without loading it whole.
pub fn digest_file(path: &std::path::Path) -> io::Result<(Digest, u64)> {
    let mut r = HashingReader::new(std::fs::File::open(path)?);
    io::copy(&mut r, &mut io::sink())?;
    Ok(r.finish())
}

/// Why a blob could not be committed by [`commit_verified`].
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} hashes to {actual}, expected {expected}", path.display())]
    Mismatch {
        path: std::path::PathBuf,
        expected: Digest,
        actual: Digest,
    },
}

/// Brings a blob from an untrusted place (a shared warmed directory, an
/// `oci:` cache, another build's store) to `dest`: hard link when the two
/// share a filesystem, else copy, always into a temp name beside `dest`; the
/// temp file is hashed and renamed only when it matches `want`. A reader of
/// `dest` therefore never sees unverified or partial bytes, and a tampered
/// source is refused rather than passed on.
pub fn commit_verified(
    src: &std::path::Path,
    dest: &std::path::Path,
    want: &Digest,
) -> Result<(), CommitError> {
    let io = |op, path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| CommitError::Io { op, path, source }
    };
    let dir = dest.parent().unwrap_or(std::path::Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".import-")
        .make_in(dir, |p| match std::fs::hard_link(src, p) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(e),
            Err(_) => std::fs::copy(src, p).map(|_| ()),
        })
        .map_err(io("importing", src))?;
    let (actual, _) = digest_file(tmp.path()).map_err(io("hashing", src))?;
    if &actual != want {
        return Err(CommitError::Mismatch {
            path: src.to_path_buf(),
            expected: want.clone(),
            actual,
        });
    }
    tmp.persist(dest)
        .map_err(|e| CommitError::Io {
            op: "committing",
            path: dest.to_path_buf(),
            source: e.error,
        })
        .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_verify() {
        let d = Digest::sha256_of(b"abc");
        assert_eq!(
            d.as_str(),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert!("sha256:../../etc".parse::<Digest>().is_err());
        assert!("md5:abc".parse::<Digest>().is_err());
        assert!(d.verify(&Digest::sha256_of(b"abd")).is_err());
        let mut w = HashingWriter::new(Vec::new());
        w.write_all(b"abc").unwrap();
        let (buf, wd, n) = w.finish();
        assert_eq!((buf.len(), n), (3, 3));
        assert_eq!(wd, d);
    }

    #[test]
    fn commit_verified_refuses_tampered_blobs() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("src");
        std::fs::write(&src, b"layer").unwrap();
        let dest = dir.path().join("dest");
        let good = Digest::sha256_of(b"layer");
        commit_verified(&src, &dest, &good).unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"layer");
        let other = dir.path().join("other");
        let e = commit_verified(&src, &other, &Digest::sha256_of(b"x")).unwrap_err();
        assert!(matches!(e, CommitError::Mismatch { .. }), "{e}");
        assert!(!other.exists());
        // Nothing but the two committed files is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
    }
}
