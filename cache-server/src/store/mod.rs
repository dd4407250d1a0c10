//! Registry semantics over the tiers and the remote store: manifests, tags,
//! blobs, cache-entry lookups with expiry. The HTTP layer (`api`) only parses
//! requests and maps [`StoreError`]s to statuses.
//!
//! `Store` is one type whose operations are split by what they work on:
//! `tags.rs` (tag resolution, cache-entry lookups with expiry, touch),
//! `manifests.rs` (manifests, their repositories, the catalog) and
//! `blobs.rs` (sizes, reads through the tiers, commits, deletes).

mod blobs;
mod manifests;
mod parts;
pub use manifests::StoredManifest;
pub(crate) use parts::Part;
mod referrers;
mod tags;
mod writers;

use crate::backend::{Backend, StorageError};
use crate::keys::{Key, Prefix};
use crate::manifest::{self, is_index, referenced_blobs, ManifestBlob, ManifestError};
use crate::metrics::{Metrics, TierLabel};
use crate::tiers::{DiskTier, MemoryTier, TagEntry, TierError};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use kiln_common::image as media;
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Tier(#[from] TierError),
    #[error("manifest {reference} unknown in {repo}")]
    ManifestUnknown { repo: String, reference: String },
    #[error("blob {0} unknown")]
    BlobUnknown(Digest),
    #[error("manifest invalid: {0}")]
    ManifestInvalid(String),
    #[error("manifest refers to {digest}, which is not stored")]
    ManifestBlobUnknown { digest: Digest },
    #[error("manifest of {size} bytes exceeds the limit of {limit}")]
    ManifestTooBig { size: usize, limit: usize },
    #[error("digest mismatch: expected {expected}, content is {actual}")]
    DigestInvalid { expected: Digest, actual: Digest },
    #[error("stored object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Entries unused for this long are expired (lookups miss, GC deletes).
    pub ttl: Option<Duration>,
    /// A hit rewrites the entry's tag only when it is older than this, so a
    /// hot entry costs one write per interval, not one per hit.
    pub touch_after: Duration,
    pub max_manifest_bytes: usize,
    pub memory_bytes: u64,
    pub tag_cache_ttl: Duration,
    /// Local blob tier; `None` for `file://`, whose store is already local.
    pub disk_dir: Option<std::path::PathBuf>,
    pub disk_bytes: u64,
    /// Deadline of a small backend call (tags, manifests, heads, deletes).
    pub backend_timeout: Duration,
    /// Deadline of a blob upload or a listing.
    pub transfer_timeout: Duration,
    /// No progress for this long fails a backend transfer.
    pub transfer_stall_timeout: Duration,
    /// How long the backend is skipped after repeated timeouts.
    pub breaker_cool_off: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            ttl: Some(Duration::from_secs(14 * 24 * 3600)),
            touch_after: Duration::from_secs(600),
            max_manifest_bytes: 4 << 20,
            memory_bytes: 256 << 20,
            tag_cache_ttl: Duration::from_secs(5),
            backend_timeout: Duration::from_secs(10),
            transfer_timeout: Duration::from_secs(600),
            transfer_stall_timeout: Duration::from_secs(30),
            breaker_cool_off: Duration::from_secs(30),
            disk_dir: None,
            disk_bytes: 20 << 30,
        }
    }
}

/// The outcome of a cache-entry lookup.
pub enum Lookup {
    Hit(TagEntry, Arc<ManifestBlob>),
    Miss,
    Expired,
}

/// A blob body ready to send.
pub struct BlobBody {
    pub size: u64,
    pub range: Option<Range<u64>>,
    pub stream: BoxStream<'static, Result<Bytes, std::io::Error>>,
}

/// The server's one view of what is stored. Its parts stay private: the
/// HTTP layer, GC and start-up ask it by name (`tags`, `list`, `probe`, …)
/// rather than reaching into the backend or the tiers.
pub struct Store {
    storage: Box<dyn Backend>,
    memory: MemoryTier,
    disk: Option<DiskTier>,
    metrics: Arc<Metrics>,
    cfg: StoreConfig,
    breaker: crate::breaker::Breaker,
    /// Blobs recently seen to exist, with their size (positive answers only:
    /// a new upload must be visible at once).
    known_blobs: moka::future::Cache<Key, u64>,
    /// Writer records read recently, by the tag and the manifest they name
    /// (a record is only believed for its digest, and the same manifest
    /// under the same tag is the same content whoever wrote it last): a
    /// batch lookup of 100 hits read 100 records from the backend before.
    writers: moka::future::Cache<(String, String, Digest), Option<kiln_common::cache_api::Writer>>,
}

impl From<ManifestError> for StoreError {
    fn from(e: ManifestError) -> Self {
        match e {
            ManifestError::Invalid(m) => StoreError::ManifestInvalid(m),
            ManifestError::Corrupt { key, reason } => StoreError::Corrupt { key, reason },
        }
    }
}

impl Store {
    pub async fn new(
        storage: Box<dyn Backend>,
        cfg: StoreConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Store, StoreError> {
        let disk = match &cfg.disk_dir {
            Some(dir) if storage.local_root().is_none() => {
                Some(DiskTier::open(dir, cfg.disk_bytes, metrics.clone()).await?)
            }
            _ => None,
        };
        Ok(Store {
            memory: MemoryTier::new(cfg.memory_bytes, cfg.tag_cache_ttl, metrics.clone()),
            disk,
            storage,
            metrics,
            known_blobs: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(Duration::from_secs(60))
                .build(),
            writers: moka::future::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(cfg.tag_cache_ttl)
                .build(),
            breaker: crate::breaker::Breaker::new(
                cfg.backend_timeout,
                cfg.transfer_timeout,
                cfg.breaker_cool_off,
            ),
            cfg,
        })
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn config(&self) -> &StoreConfig {
        &self.cfg
    }

    /// The backend's address without secrets, for logs.
    pub fn describe(&self) -> String {
        self.storage.describe()
    }

    /// Whether stored objects carry their last write time (expiry and GC need it).
    pub fn keeps_times(&self) -> bool {
        self.storage.has_times()
    }

    /// One cheap round trip to the backend (start-up check, `/readyz`).
    pub async fn probe(&self) -> Result<(), StorageError> {
        self.call("probe", self.storage.probe()).await
    }

    /// Every stored object under `prefix`, with its size and time (GC).
    pub(crate) async fn list(
        &self,
        prefix: &Prefix,
    ) -> Result<Vec<crate::backend::Meta>, StorageError> {
        self.call("list", self.storage.list(prefix)).await
    }

    /// A small object (tag, manifest) read straight from the backend (GC).
    pub(crate) async fn read_small(&self, key: &Key) -> Result<Option<Bytes>, StorageError> {
        let got = self.call("get", self.storage.get_small(key)).await?;
        Ok(got.map(|(b, _)| b))
    }

    /// Deletes a manifest object by key (GC; tags pointing at it are gone).
    pub(crate) async fn delete_object(&self, key: &Key) -> Result<(), StorageError> {
        self.call("delete", self.storage.delete(key)).await
    }

    /// One backend call under its deadline and the breaker; every failure
    /// is counted in `backend_errors`.
    pub(super) async fn call<T>(
        &self,
        op: &'static str,
        fut: impl std::future::Future<Output = Result<T, StorageError>>,
    ) -> Result<T, StorageError> {
        let deadline = match op {
            "put_blob" | "list" => self.breaker.transfer,
            _ => self.breaker.meta,
        };
        let r = match self.breaker.call(op, deadline, fut).await {
            Ok(r) => r,
            Err(source) => {
                if matches!(source, crate::breaker::GuardError::Timeout { .. }) {
                    self.metrics.backend_timeouts.inc();
                }
                Err(StorageError::Unavailable {
                    op,
                    path: self.storage.describe(),
                    source,
                })
            }
        };
        self.metrics
            .backend_circuit_open
            .set(i64::from(self.breaker.open_for().is_some()));
        self.count_err(op, r)
    }

    /// How long the backend is still skipped, when the breaker is open.
    pub fn backend_skipped_for(&self) -> Option<Duration> {
        self.breaker.open_for()
    }

    pub(super) fn count_err<T>(
        &self,
        op: &str,
        r: Result<T, StorageError>,
    ) -> Result<T, StorageError> {
        if r.is_err() {
            self.metrics.backend_error(op);
        }
        r
    }
}
