//! The remote store: the one truth every replica shares. Each replica's
//! memory and disk tiers are caches of it, so several replicas over one
//! bucket give the same answers.
//!
//! What is stored where is [`crate::keys`]: a tag object's last-modified
//! time is the entry's last use (a hit rewrites it at most every
//! `touch_after`; expiry and LRU eviction read it), so no extra index has to
//! agree with the bucket.
//!
//! Two backends implement [`Backend`]: object stores (`file://`, `s3://`,
//! `gs://`, `az://`, through `object_store`; [`object`]) and an existing
//! registry (`registry://host/repo`; [`registry`]), which maps the same keys
//! onto registry calls: read-through and write-through.

mod object;
pub mod registry;

pub use object::ObjectBackend;

use crate::keys::{Key, Prefix};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use kiln_common::Digest;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Objects above this size are uploaded in parts (S3's minimum part is 5 MiB).
const PART_SIZE: usize = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("storage {op} {path}")]
    Backend {
        op: &'static str,
        path: String,
        source: object_store::Error,
    },
    #[error("storage {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Url(#[from] kiln_common::objstore::ObjStoreError),
    #[error("upstream registry {op} {path}")]
    Upstream {
        op: &'static str,
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{op} is not supported by {backend}")]
    Unsupported { op: &'static str, backend: String },
    #[error("storage {op} {path}")]
    Unavailable {
        op: &'static str,
        path: String,
        #[source]
        source: crate::breaker::GuardError,
    },
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct Meta {
    pub key: Key,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

/// Where the truth lives.
///
/// Semantics, for every method: a missing object is `Ok(None)` (`Ok(())` for
/// a delete); `Err` means the backend could not answer: the caller counts
/// it in `backend_errors` and answers 503, or treats a lookup as a miss,
/// never silently. Writes are atomic: an object is wholly visible or not at
/// all (object-store puts are; `file://` commits blobs by rename).
#[async_trait::async_trait]
pub trait Backend: Send + Sync {
    /// The store's address without secrets, for logs.
    fn describe(&self) -> String;
    /// For `file://`: the directory, so blobs commit by rename and are
    /// served straight from disk (no separate disk tier).
    fn local_root(&self) -> Option<&Path> {
        None
    }
    fn local_blob_path(&self, _d: &Digest) -> Option<PathBuf> {
        None
    }
    /// The key to read a blob by when a request for it names `repo`. Blobs
    /// are global in object stores; a fronted registry keeps them per
    /// repository and looks in the named one first.
    fn blob_read_key(&self, _repo: &str, d: &Digest) -> Key {
        Key::Blob(d.clone())
    }
    /// Whether objects carry their last write time. Expiry, LRU eviction
    /// and GC need it; without it entries stay until deleted.
    fn has_times(&self) -> bool {
        true
    }
    async fn head(&self, key: &Key) -> Result<Option<Meta>, StorageError>;
    /// A small object (manifest, tag) read whole, with its metadata.
    async fn get_small(&self, key: &Key) -> Result<Option<(Bytes, Meta)>, StorageError>;
    async fn put_small(&self, key: &Key, bytes: Bytes) -> Result<(), StorageError>;
    /// Streams a blob, or a range of it.
    async fn get_stream(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StorageError>>>, StorageError>;
    /// Commits a staged, already verified blob file, consuming it.
    async fn put_blob_file(&self, d: &Digest, staged: &Path) -> Result<(), StorageError>;
    /// Whether upload sessions can keep their chunks here
    /// ([`Key::UploadPart`]), so that any replica can continue one. A
    /// fronted registry cannot: its sessions stay in one replica's memory.
    fn shares_uploads(&self) -> bool {
        false
    }
    /// Stores a file under any key, atomically, consuming it (upload chunks).
    async fn put_file(&self, _key: &Key, _staged: &Path) -> Result<(), StorageError> {
        Err(StorageError::Unsupported {
            op: "storing upload chunks",
            backend: self.describe(),
        })
    }
    async fn delete(&self, key: &Key) -> Result<(), StorageError>;
    /// Every object under `sub`.
    async fn list(&self, sub: &Prefix) -> Result<Vec<Meta>, StorageError>;
    /// A cheap round trip that proves the backend answers (for `/readyz`).
    async fn probe(&self) -> Result<(), StorageError>;
}

/// How long a backend's transfers may take: no progress for `stall` fails
/// one (a store that accepts and then hangs); `total` bounds any request.
#[derive(Debug, Clone, Copy)]
pub struct Deadlines {
    pub stall: std::time::Duration,
    pub total: std::time::Duration,
}

impl Default for Deadlines {
    fn default() -> Self {
        Deadlines {
            stall: std::time::Duration::from_secs(30),
            total: std::time::Duration::from_secs(600),
        }
    }
}

/// The backend a `--storage` URL names.
pub fn open(url: &str, deadlines: Deadlines) -> Result<Box<dyn Backend>, StorageError> {
    if let Some(rest) = url.strip_prefix("registry://") {
        return Ok(Box::new(registry::RegistryBackend::open(rest, deadlines)?));
    }
    Ok(Box::new(ObjectBackend::open(url, deadlines)?))
}
