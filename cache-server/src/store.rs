//! Registry semantics over the tiers and the remote store: manifests, tags,
//! blobs, cache-entry lookups with expiry. The HTTP layer (`api`) only parses
//! requests and maps [`StoreError`]s to statuses.

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
use tokio::io::{AsyncSeekExt, AsyncWriteExt};

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
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            ttl: Some(Duration::from_secs(14 * 24 * 3600)),
            touch_after: Duration::from_secs(600),
            max_manifest_bytes: 4 << 20,
            memory_bytes: 256 << 20,
            tag_cache_ttl: Duration::from_secs(5),
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
    /// Blobs recently seen to exist, with their size (positive answers only:
    /// a new upload must be visible at once).
    known_blobs: moka::future::Cache<Key, u64>,
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
        self.count_err("probe", self.storage.probe().await)
    }

    /// Every stored object under `prefix`, with its size and time (GC).
    pub(crate) async fn list(
        &self,
        prefix: &Prefix,
    ) -> Result<Vec<crate::backend::Meta>, StorageError> {
        self.count_err("list", self.storage.list(prefix).await)
    }

    /// A small object (tag, manifest) read straight from the backend (GC).
    pub(crate) async fn read_small(&self, key: &Key) -> Result<Option<Bytes>, StorageError> {
        let got = self.count_err("get", self.storage.get_small(key).await)?;
        Ok(got.map(|(b, _)| b))
    }

    /// Deletes a manifest object by key (GC; tags pointing at it are gone).
    pub(crate) async fn delete_object(&self, key: &Key) -> Result<(), StorageError> {
        self.count_err("delete", self.storage.delete(key).await)
    }

    fn count_err<T>(&self, op: &str, r: Result<T, StorageError>) -> Result<T, StorageError> {
        if r.is_err() {
            self.metrics.backend_error(op);
        }
        r
    }

    /// The digest a tag points at, from memory or the store.
    pub async fn resolve_tag(&self, repo: &str, tag: &str) -> Result<Option<TagEntry>, StoreError> {
        let k = (repo.to_string(), tag.to_string());
        if let Some(e) = self.memory.tags.get(&k).await {
            self.metrics.tier("memory", true);
            return Ok(Some(e));
        }
        self.metrics.tier("memory", false);
        let key = Key::tag(repo, tag);
        let got = self.count_err("get", self.storage.get_small(&key).await)?;
        self.metrics.tier("store", got.is_some());
        let Some((bytes, meta)) = got else {
            return Ok(None);
        };
        let digest: Digest = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| StoreError::Corrupt {
                key: key.to_string(),
                reason: "not a digest".into(),
            })?;
        let e = TagEntry {
            digest,
            modified: meta.modified,
        };
        self.memory.tags.insert(k, e.clone()).await;
        Ok(Some(e))
    }

    /// A manifest of `repo` by digest, verified against it.
    pub async fn manifest(
        &self,
        repo: &str,
        d: &Digest,
    ) -> Result<Option<Arc<ManifestBlob>>, StoreError> {
        if let Some(m) = self.memory.manifests.get(d).await {
            self.metrics.tier("memory", true);
            // The memory tier is keyed by digest; membership of the repo is
            // checked once per repo and remembered as a tag-cache entry.
            if self.in_repo(repo, d).await? {
                return Ok(Some(m));
            }
            return Ok(None);
        }
        self.metrics.tier("memory", false);
        let key = Key::manifest(repo, d);
        let got = self.count_err("get", self.storage.get_small(&key).await)?;
        self.metrics.tier("store", got.is_some());
        let Some((raw, _)) = got else {
            return Ok(None);
        };
        self.metrics.bytes("store", "out", raw.len() as u64);
        let m = Arc::new(manifest::parse_stored(&key, d, &raw)?);
        self.memory.manifests.insert(d.clone(), m.clone()).await;
        self.remember_in_repo(repo, d).await;
        Ok(Some(m))
    }

    async fn in_repo(&self, repo: &str, d: &Digest) -> Result<bool, StoreError> {
        let k = (repo.to_string(), format!("@{}", d.hex()));
        if self.memory.tags.get(&k).await.is_some() {
            return Ok(true);
        }
        let key = Key::manifest(repo, d);
        let there = self
            .count_err("head", self.storage.head(&key).await)?
            .is_some();
        if there {
            self.remember_in_repo(repo, d).await;
        }
        Ok(there)
    }

    async fn remember_in_repo(&self, repo: &str, d: &Digest) {
        let k = (repo.to_string(), format!("@{}", d.hex()));
        self.memory
            .tags
            .insert(
                k,
                TagEntry {
                    digest: d.clone(),
                    modified: chrono::Utc::now(),
                },
            )
            .await;
    }

    fn expired(&self, e: &TagEntry) -> bool {
        if !self.storage.has_times() {
            return false;
        }
        match self.cfg.ttl {
            Some(ttl) => chrono::Utc::now()
                .signed_duration_since(e.modified)
                .to_std()
                .is_ok_and(|age| age > ttl),
            None => false,
        }
    }

    /// A cache-entry lookup: the tag, unexpired, whose manifest and blobs are
    /// all present. A hit refreshes the entry's last use.
    pub async fn lookup(&self, repo: &str, tag: &str) -> Result<Lookup, StoreError> {
        let r = self.lookup_inner(repo, tag).await;
        let result = match &r {
            Ok(Lookup::Hit(..)) => "hit",
            Ok(Lookup::Miss) => "miss",
            Ok(Lookup::Expired) => "expired",
            Err(_) => "error",
        };
        self.metrics.lookup(repo, result);
        r
    }

    async fn lookup_inner(&self, repo: &str, tag: &str) -> Result<Lookup, StoreError> {
        let Some(entry) = self.resolve_tag(repo, tag).await? else {
            return Ok(Lookup::Miss);
        };
        if self.expired(&entry) {
            return Ok(Lookup::Expired);
        }
        let Some(m) = self.manifest(repo, &entry.digest).await? else {
            return Ok(Lookup::Miss);
        };
        for d in referenced_blobs(&m)? {
            if self.blob_size(repo, d).await?.is_none() {
                tracing::warn!("entry {repo}:{tag} refers to missing blob {d}; treated as a miss");
                return Ok(Lookup::Miss);
            }
        }
        self.touch(repo, tag, &entry).await;
        Ok(Lookup::Hit(entry, m))
    }

    /// Refreshes an entry's last use in the store, at most once per
    /// `touch_after` (one small write on that hit; a failure is counted and
    /// the hit still stands).
    async fn touch(&self, repo: &str, tag: &str, e: &TagEntry) {
        let age = chrono::Utc::now().signed_duration_since(e.modified);
        if !self.storage.has_times() || age.to_std().map_or(true, |a| a < self.cfg.touch_after) {
            return;
        }
        let fresh = TagEntry {
            digest: e.digest.clone(),
            modified: chrono::Utc::now(),
        };
        self.memory
            .tags
            .insert((repo.to_string(), tag.to_string()), fresh)
            .await;
        let key = Key::tag(repo, tag);
        let body = Bytes::from(e.digest.to_string());
        if let Err(err) = self.storage.put_small(&key, body).await {
            self.metrics.backend_error("put");
            tracing::warn!("could not refresh {key}: {err}");
        }
    }

    /// The size of a stored blob, `None` when absent.
    pub async fn blob_size(&self, repo: &str, d: &Digest) -> Result<Option<u64>, StoreError> {
        let key = self.storage.blob_read_key(repo, d);
        if let Some(s) = self.known_blobs.get(&key).await {
            return Ok(Some(s));
        }
        let m = self.count_err("head", self.storage.head(&key).await)?;
        if let Some(m) = &m {
            self.known_blobs.insert(key, m.size).await;
        }
        Ok(m.map(|m| m.size))
    }

    /// Streams a blob (or a range of it) from the nearest tier that has it.
    pub async fn open_blob(
        &self,
        repo: &str,
        d: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobBody>, StoreError> {
        if let Some(p) = self.storage.local_blob_path(d) {
            return match std::fs::File::open(&p) {
                Ok(f) => {
                    self.metrics.tier("store", true);
                    Ok(Some(self.file_body(f, range, "store").await?))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.metrics.tier("store", false);
                    Ok(None)
                }
                Err(source) => Err(StorageError::Io { path: p, source }.into()),
            };
        }
        if let Some(disk) = &self.disk {
            if let Some(f) = disk.open_blob(d).await {
                self.metrics.tier("disk", true);
                return Ok(Some(self.file_body(f, range, "disk").await?));
            }
            self.metrics.tier("disk", false);
        }
        let Some(size) = self.blob_size(repo, d).await? else {
            self.metrics.tier("store", false);
            return Ok(None);
        };
        self.metrics.tier("store", true);
        if let Some(disk) = &self.disk {
            let fill = |tmp: std::path::PathBuf| self.fetch_verified(repo, d, tmp);
            match disk.get_or_fill(d, size, fill).await {
                Ok((f, coalesced)) => {
                    if coalesced {
                        self.metrics
                            .coalesced
                            .get_or_create(&TierLabel::disk())
                            .inc();
                    }
                    return Ok(Some(self.file_body(f, range, "disk").await?));
                }
                Err(e @ TierError::Fetch(_))
                    if self.blob_size_uncached(repo, d).await?.is_none() =>
                {
                    tracing::debug!(
                        "blob {d} vanished while filling the disk tier: {}",
                        kiln_common::report::Report(&e)
                    );
                    return Ok(None);
                }
                Err(e) => {
                    // Disk full, unwritable or too small: serve from the
                    // store directly rather than fail the client.
                    self.metrics
                        .tier_requests
                        .get_or_create(&crate::metrics::TierResultLabel {
                            tier: "disk".into(),
                            result: "error".into(),
                        })
                        .inc();
                    tracing::warn!(
                        "disk tier bypassed for {d}: {}",
                        kiln_common::report::Report(&e)
                    );
                }
            }
        }
        self.remote_body(repo, d, size, range).await
    }

    async fn blob_size_uncached(&self, repo: &str, d: &Digest) -> Result<Option<u64>, StoreError> {
        self.known_blobs
            .invalidate(&self.storage.blob_read_key(repo, d))
            .await;
        self.blob_size(repo, d).await
    }

    /// Streams from the store, verifying a whole-blob read as it goes: a
    /// mismatch ends the body with an error instead of a clean finish.
    async fn remote_body(
        &self,
        repo: &str,
        d: &Digest,
        size: u64,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobBody>, StoreError> {
        let key = self.storage.blob_read_key(repo, d);
        let Some(s) = self.count_err("get", self.storage.get_stream(&key, range.clone()).await)?
        else {
            return Ok(None);
        };
        let metrics = self.metrics.clone();
        let verify = range.is_none();
        let expected = d.clone();
        let mut hasher = Sha256::new();
        let stream = s
            .map(move |r| r.map_err(std::io::Error::other))
            .chain(futures_util::stream::once(async { Ok(Bytes::new()) }))
            .scan(false, move |done, r| {
                if *done {
                    return futures_util::future::ready(None);
                }
                let out = match r {
                    Ok(b) if b.is_empty() => {
                        *done = true;
                        if verify {
                            let actual =
                                Digest::from_sha256(std::mem::take(&mut hasher).finalize().into());
                            if actual != expected {
                                metrics.backend_error("verify");
                                return futures_util::future::ready(Some(Err(
                                    std::io::Error::other(format!(
                                        "blob {expected} in the store hashes to {actual}"
                                    )),
                                )));
                            }
                        }
                        Ok(b)
                    }
                    Ok(b) => {
                        if verify {
                            hasher.update(&b);
                        }
                        metrics.bytes("store", "out", b.len() as u64);
                        Ok(b)
                    }
                    Err(e) => {
                        *done = true;
                        Err(e)
                    }
                };
                futures_util::future::ready(Some(out))
            })
            .boxed();
        Ok(Some(BlobBody {
            size,
            range,
            stream,
        }))
    }

    /// Fills the disk tier: the store's bytes to `tmp`, hashed as they come.
    async fn fetch_verified(
        &self,
        repo: &str,
        d: &Digest,
        tmp: std::path::PathBuf,
    ) -> Result<(), TierError> {
        let key = self.storage.blob_read_key(repo, d);
        let s = self
            .count_err("get", self.storage.get_stream(&key, None).await)
            .map_err(|e| TierError::Fetch(kiln_common::report::Report(&e).to_string()))?;
        let Some(mut s) = s else {
            return Err(TierError::Fetch(format!("blob {d} is gone from the store")));
        };
        let io = |source| TierError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| {
                self.metrics.backend_error("get");
                TierError::Fetch(kiln_common::report::Report(&e).to_string())
            })?;
            h.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.flush().await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        let actual = Digest::from_sha256(h.finalize().into());
        if &actual != d {
            self.metrics.backend_error("verify");
            return Err(TierError::Fetch(format!(
                "blob {d} in the store hashes to {actual}"
            )));
        }
        self.metrics.bytes("store", "out", n);
        self.metrics.bytes("disk", "in", n);
        Ok(())
    }

    async fn file_body(
        &self,
        f: std::fs::File,
        range: Option<Range<u64>>,
        tier: &'static str,
    ) -> Result<BlobBody, StoreError> {
        let size = f
            .metadata()
            .map_err(|source| StorageError::Io {
                path: "<blob>".into(),
                source,
            })?
            .len();
        let mut f = tokio::fs::File::from_std(f);
        let (start, len) = match &range {
            Some(r) => (r.start, r.end.min(size).saturating_sub(r.start)),
            None => (0, size),
        };
        if start > 0 {
            f.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|source| StorageError::Io {
                    path: "<blob>".into(),
                    source,
                })?;
        }
        self.metrics.bytes(tier, "out", len);
        let reader = tokio::io::AsyncReadExt::take(f, len);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 << 10).boxed();
        Ok(BlobBody {
            size,
            range,
            stream,
        })
    }

    /// Commits a verified upload.
    pub async fn commit_blob(
        &self,
        d: &Digest,
        staged: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        self.count_err("put", self.storage.put_blob_file(d, staged).await)?;
        self.metrics.bytes("store", "in", size);
        self.known_blobs.insert(Key::Blob(d.clone()), size).await;
        Ok(())
    }

    pub async fn delete_blob(&self, d: &Digest) -> Result<(), StoreError> {
        // Only global keys are deleted (fronted registries refuse deletes).
        self.known_blobs.invalidate(&Key::Blob(d.clone())).await;
        if let Some(disk) = &self.disk {
            disk.remove(d).await;
        }
        self.count_err("delete", self.storage.delete(&Key::Blob(d.clone())).await)?;
        self.known_blobs.invalidate(&Key::Blob(d.clone())).await;
        Ok(())
    }

    /// Stores a manifest after checking it: size, JSON shape, and that every
    /// blob and child manifest it refers to is present. Returns its digest.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<Digest, StoreError> {
        if bytes.len() > self.cfg.max_manifest_bytes {
            return Err(StoreError::ManifestTooBig {
                size: bytes.len(),
                limit: self.cfg.max_manifest_bytes,
            });
        }
        let d = Digest::sha256_of(&bytes);
        if let Some(want) = reference.strip_prefix("sha256:").map(|_| reference) {
            let want: Digest = want
                .parse()
                .map_err(|e: kiln_common::digest::DigestError| {
                    StoreError::ManifestInvalid(e.to_string())
                })?;
            if want != d {
                return Err(StoreError::DigestInvalid {
                    expected: want,
                    actual: d,
                });
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::ManifestInvalid(format!("not JSON: {e}")))?;
        let declared = v.get("mediaType").and_then(|m| m.as_str());
        let media_type = match (content_type, declared) {
            (_, Some(m)) => m.to_string(),
            (Some(c), None) if !c.is_empty() && c != "application/octet-stream" => c.to_string(),
            _ if v.get("manifests").is_some() => media::OCI_INDEX.to_string(),
            _ => media::OCI_MANIFEST.to_string(),
        };
        if v.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
            return Err(StoreError::ManifestInvalid(
                "schemaVersion must be 2".into(),
            ));
        }
        let blob = ManifestBlob::new(media_type.clone(), bytes.clone());
        if is_index(&media_type) {
            for child in manifest::descriptors(&v, "manifests")? {
                if self.manifest(repo, &child).await?.is_none() {
                    return Err(StoreError::ManifestBlobUnknown { digest: child });
                }
            }
        } else {
            for b in referenced_blobs(&blob)? {
                if self.blob_size(repo, b).await?.is_none() {
                    return Err(StoreError::ManifestBlobUnknown { digest: b.clone() });
                }
            }
        }
        let obj = manifest::encode_stored(&media_type, &bytes);
        let mkey = Key::manifest(repo, &d);
        self.count_err("put", self.storage.put_small(&mkey, obj).await)?;
        self.metrics.bytes("store", "in", bytes.len() as u64);
        self.memory
            .manifests
            .insert(d.clone(), Arc::new(blob))
            .await;
        self.remember_in_repo(repo, &d).await;
        if !reference.starts_with("sha256:") {
            let tkey = Key::tag(repo, reference);
            self.count_err(
                "put",
                self.storage
                    .put_small(&tkey, Bytes::from(d.to_string()))
                    .await,
            )?;
            self.memory
                .tags
                .insert(
                    (repo.to_string(), reference.to_string()),
                    TagEntry {
                        digest: d.clone(),
                        modified: chrono::Utc::now(),
                    },
                )
                .await;
        }
        Ok(d)
    }

    /// Deletes a tag, or a manifest by digest together with its tags.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<bool, StoreError> {
        if let Ok(d) = reference.parse::<Digest>() {
            let key = Key::manifest(repo, &d);
            if self
                .count_err("head", self.storage.head(&key).await)?
                .is_none()
            {
                return Ok(false);
            }
            for t in self.tags(repo).await? {
                if let Some(e) = self.resolve_tag(repo, &t).await? {
                    if e.digest == d {
                        self.delete_tag(repo, &t).await?;
                    }
                }
            }
            self.count_err("delete", self.storage.delete(&key).await)?;
            self.memory
                .tags
                .invalidate(&(repo.to_string(), format!("@{}", d.hex())))
                .await;
            return Ok(true);
        }
        if self.resolve_tag(repo, reference).await?.is_none() {
            return Ok(false);
        }
        self.delete_tag(repo, reference).await?;
        Ok(true)
    }

    pub async fn delete_tag(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
        self.count_err("delete", self.storage.delete(&Key::tag(repo, tag)).await)?;
        self.memory
            .tags
            .invalidate(&(repo.to_string(), tag.to_string()))
            .await;
        Ok(())
    }

    pub async fn tags(&self, repo: &str) -> Result<Vec<String>, StoreError> {
        let prefix = Prefix::Tags(repo.to_string());
        let mut v: Vec<String> = self
            .count_err("list", self.storage.list(&prefix).await)?
            .into_iter()
            .filter_map(|m| match m.key {
                Key::Tag { repo: r, tag } if r == repo && !tag.contains('/') => Some(tag),
                _ => None,
            })
            .collect();
        v.sort();
        Ok(v)
    }

    /// Repositories holding at least one manifest.
    pub async fn catalog(&self) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = self
            .count_err("list", self.storage.list(&Prefix::Repos).await)?
            .into_iter()
            .filter_map(|m| match m.key {
                Key::Manifest { repo, .. } => Some(repo),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}
