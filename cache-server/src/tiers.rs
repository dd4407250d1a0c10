//! The tiers in front of the remote store: memory for manifests and tag
//! lookups, local disk for blobs. Both are caches: losing either loses no
//! data, and an entry is only ever inserted once it has been verified.

use crate::manifest::ManifestBlob;
use crate::metrics::Metrics;
use kiln_common::Digest;
use moka::notification::RemovalCause;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a tag points at, and when the entry was last used.
#[derive(Debug, Clone)]
pub struct TagEntry {
    pub digest: Digest,
    pub modified: chrono::DateTime<chrono::Utc>,
}

pub struct MemoryTier {
    /// Manifests by digest: immutable, so kept until evicted by size.
    pub manifests: moka::future::Cache<Digest, Arc<ManifestBlob>>,
    /// Tags by (repo, tag): kept briefly, because another replica may
    /// retag, touch or expire them; the bucket stays the truth.
    pub tags: moka::future::Cache<(String, String), TagEntry>,
}

impl MemoryTier {
    pub fn new(bytes: u64, tag_ttl: Duration, metrics: Arc<Metrics>) -> MemoryTier {
        MemoryTier {
            manifests: moka::future::Cache::builder()
                .max_capacity(bytes)
                .weigher(|_, v: &Arc<ManifestBlob>| v.bytes.len().try_into().unwrap_or(u32::MAX))
                .eviction_listener(move |_, _, cause| {
                    if matches!(cause, RemovalCause::Size) {
                        metrics
                            .evictions
                            .get_or_create(&crate::metrics::TierLabel::memory())
                            .inc();
                    }
                })
                .build(),
            tags: moka::future::Cache::builder()
                .max_capacity(1_000_000)
                .time_to_live(tag_ttl)
                .build(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TierError {
    #[error("disk tier {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("blob {digest} does not fit the disk tier ({size} bytes, cap {cap})")]
    TooBig { digest: Digest, size: u64, cap: u64 },
    #[error("{0}")]
    Fetch(String),
}

/// Blobs on local disk, capped in bytes, least recently used evicted first.
/// Files are written to a temporary name and renamed once their digest
/// matches, so a crash never leaves a partial blob under a digest's name.
pub struct DiskTier {
    dir: PathBuf,
    cap: u64,
    cache: moka::future::Cache<Digest, u64>,
    metrics: Arc<Metrics>,
}

impl DiskTier {
    pub async fn open(dir: &Path, cap: u64, metrics: Arc<Metrics>) -> Result<DiskTier, TierError> {
        let io = |source| TierError::Io {
            path: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let evict_dir = dir.to_path_buf();
        metrics
            .tier_capacity_bytes
            .get_or_create(&crate::metrics::TierLabel::disk())
            .set(i64::try_from(cap).unwrap_or(i64::MAX));
        // Exported from the start (0), not only after the first blob.
        metrics
            .tier_stored_bytes
            .get_or_create(&crate::metrics::TierLabel::disk())
            .set(0);
        let m = metrics.clone();
        let cache = moka::future::Cache::builder()
            .max_capacity(cap / 1024)
            .weigher(|_, size: &u64| u32::try_from(*size / 1024 + 1).unwrap_or(u32::MAX))
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .eviction_listener(move |d: Arc<Digest>, size: u64, cause| {
                // Open readers keep their file handle; the name goes now.
                let _ = std::fs::remove_file(evict_dir.join(d.hex()));
                if matches!(cause, RemovalCause::Size) {
                    m.evictions
                        .get_or_create(&crate::metrics::TierLabel::disk())
                        .inc();
                }
                m.tier_stored_bytes
                    .get_or_create(&crate::metrics::TierLabel::disk())
                    .dec_by(size as i64);
            })
            .build();
        let tier = DiskTier {
            dir: dir.to_path_buf(),
            cap: cap / 1024,
            cache,
            metrics,
        };
        // Leftovers of a crash are temporary names; committed files are
        // verified blobs from an earlier run.
        for entry in std::fs::read_dir(dir).map_err(io)?.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let size = entry.metadata().map(|m| m.len()).unwrap_or(0);
            match format!("sha256:{name}").parse::<Digest>() {
                Ok(d) => {
                    tier.metrics
                        .tier_stored_bytes
                        .get_or_create(&crate::metrics::TierLabel::disk())
                        .inc_by(size as i64);
                    tier.cache.insert(d, size).await;
                }
                Err(_) => {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
        Ok(tier)
    }

    pub fn path(&self, d: &Digest) -> PathBuf {
        self.dir.join(d.hex())
    }

    pub fn temp_path(&self) -> PathBuf {
        self.dir.join(format!(".tmp-{}", crate::random_id()))
    }

    /// Whether a blob of `size` bytes can be kept at all.
    pub fn fits(&self, size: u64) -> bool {
        size / 1024 < self.cap
    }

    /// Opens a blob held on disk, refreshing its recency.
    pub async fn open_blob(&self, d: &Digest) -> Option<std::fs::File> {
        self.cache.get(d).await?;
        std::fs::File::open(self.path(d)).ok()
    }

    /// Returns an open handle to the blob, fetching it with `fill` when it
    /// is not on disk. Concurrent calls for one digest share a single fetch.
    /// `fill` writes the blob to the given temporary path and verifies it;
    /// this then renames it into place. Returns the file and whether this
    /// call waited on another caller's fetch.
    pub async fn get_or_fill<F, Fut>(
        &self,
        d: &Digest,
        size: u64,
        fill: F,
    ) -> Result<(std::fs::File, bool), TierError>
    where
        F: FnOnce(PathBuf) -> Fut,
        Fut: std::future::Future<Output = Result<(), TierError>>,
    {
        if !self.fits(size) {
            return Err(TierError::TooBig {
                digest: d.clone(),
                size,
                cap: self.cap * 1024,
            });
        }
        let ran = Arc::new(AtomicBool::new(false));
        let ran2 = ran.clone();
        let tmp = self.temp_path();
        let dest = self.path(d);
        let metrics = self.metrics.clone();
        let entry = self
            .cache
            .entry(d.clone())
            .or_try_insert_with(async move {
                ran2.store(true, Ordering::Relaxed);
                let r = fill(tmp.clone()).await;
                if let Err(e) = r {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
                std::fs::rename(&tmp, &dest).map_err(|source| TierError::Io {
                    path: dest.clone(),
                    source,
                })?;
                metrics
                    .tier_stored_bytes
                    .get_or_create(&crate::metrics::TierLabel::disk())
                    .inc_by(size as i64);
                Ok(size)
            })
            .await
            .map_err(|e: Arc<TierError>| {
                TierError::Fetch(kiln_common::report::Report(&*e).to_string())
            })?;
        // Whoever did not run the fetch shared someone else's.
        let _ = entry;
        let coalesced = !ran.load(Ordering::Relaxed);
        let f = std::fs::File::open(self.path(d)).map_err(|source| TierError::Io {
            path: self.path(d),
            source,
        })?;
        Ok((f, coalesced))
    }

    pub async fn remove(&self, d: &Digest) {
        self.cache.invalidate(d).await;
    }
}
