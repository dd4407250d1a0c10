//! The remote store: the one truth every replica shares. Each replica's
//! memory and disk tiers are caches of it, so several replicas over one
//! bucket give the same answers.
//!
//! Layout under the prefix (names chosen so any object-store browser shows
//! what is there):
//! - `blobs/sha256/<hex>`: blob content, global and content-addressed;
//! - `repos/<repo>/_manifests/<hex>`: `<media type>\n<manifest bytes>`;
//! - `repos/<repo>/_tags/<tag>`: the tagged manifest's digest. The object's
//!   last-modified time is the entry's last use: a hit rewrites it (at most
//!   every `touch_after`), expiry and LRU eviction read it. No extra index
//!   has to agree with the bucket.
//!
//! Two backends implement [`Backend`]: object stores (`file://`, `s3://`,
//! `gs://`, `az://`, through `object_store`) and an existing registry
//! (`registry://host/repo`, in `upstream`), which maps the same keys onto
//! registry calls: read-through and write-through.

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use kiln_common::Digest;
use object_store::path::Path as ObjectPath;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::io::AsyncReadExt;

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
}

/// One listed object.
#[derive(Debug, Clone)]
pub struct Meta {
    pub key: String,
    pub size: u64,
    pub modified: chrono::DateTime<chrono::Utc>,
}

pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// For `file://`: the directory objects live in, so blobs are committed
    /// by rename and served straight from disk.
    local_root: Option<PathBuf>,
    url: String,
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
    fn blob_read_key(&self, _repo: &str, d: &Digest) -> String {
        Storage::blob_key(d)
    }
    /// Whether objects carry their last write time. Expiry, LRU eviction
    /// and GC need it; without it entries stay until deleted.
    fn has_times(&self) -> bool {
        true
    }
    async fn head(&self, key: &str) -> Result<Option<Meta>, StorageError>;
    /// A small object (manifest, tag) read whole, with its metadata.
    async fn get_small(&self, key: &str) -> Result<Option<(Bytes, Meta)>, StorageError>;
    async fn put_small(&self, key: &str, bytes: Bytes) -> Result<(), StorageError>;
    /// Streams a blob, or a range of it.
    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StorageError>>>, StorageError>;
    /// Commits a staged, already verified blob file, consuming it.
    async fn put_blob_file(&self, d: &Digest, staged: &Path) -> Result<(), StorageError>;
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Every object under `sub`.
    async fn list(&self, sub: &str) -> Result<Vec<Meta>, StorageError>;
    /// A cheap round trip that proves the backend answers (for `/readyz`).
    async fn probe(&self) -> Result<(), StorageError>;
}

/// The backend a `--storage` URL names, and the key scheme shared by all.
pub struct Storage(Box<dyn Backend>);

impl std::ops::Deref for Storage {
    type Target = dyn Backend;
    fn deref(&self) -> &Self::Target {
        self.0.as_ref()
    }
}

impl Storage {
    pub fn open(url: &str) -> Result<Storage, StorageError> {
        if let Some(rest) = url.strip_prefix("registry://") {
            return Ok(Storage(Box::new(crate::upstream::RegistryBackend::open(
                rest,
            )?)));
        }
        Ok(Storage(Box::new(ObjectBackend::open(url)?)))
    }

    pub fn blob_key(d: &Digest) -> String {
        format!("blobs/sha256/{}", d.hex())
    }
    pub fn manifest_key(repo: &str, d: &Digest) -> String {
        format!("repos/{repo}/_manifests/{}", d.hex())
    }
    pub fn tag_key(repo: &str, tag: &str) -> String {
        format!("repos/{repo}/_tags/{tag}")
    }
}

impl ObjectBackend {
    pub fn open(url: &str) -> Result<ObjectBackend, StorageError> {
        let (store, prefix) =
            kiln_common::objstore::open(url, kiln_common::objstore::Patience::Quick)?;
        let local_root = url
            .strip_prefix("file://")
            .map(|p| PathBuf::from(p.split('?').next().unwrap_or(p)));
        Ok(ObjectBackend {
            store,
            prefix,
            local_root,
            url: url.to_string(),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        let mut p = self.prefix.clone();
        for part in key.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    fn backend(
        &self,
        op: &'static str,
        key: &str,
    ) -> impl Fn(object_store::Error) -> StorageError + '_ {
        let path = key.to_string();
        move |source| StorageError::Backend {
            op,
            path: path.clone(),
            source,
        }
    }

    fn meta(&self, m: ObjectMeta) -> Meta {
        let full = m.location.as_ref();
        let pre = self.prefix.as_ref();
        let key = if pre.is_empty() {
            full.to_string()
        } else {
            full.strip_prefix(pre)
                .unwrap_or(full)
                .trim_start_matches('/')
                .to_string()
        };
        Meta {
            key,
            size: m.size,
            modified: m.last_modified,
        }
    }
}

#[async_trait::async_trait]
impl Backend for ObjectBackend {
    /// The URL with any query options (which may hold secrets) removed.
    fn describe(&self) -> String {
        self.url.split('?').next().unwrap_or_default().to_string()
    }

    fn local_root(&self) -> Option<&Path> {
        self.local_root.as_deref()
    }

    /// Where a blob lives on this machine's disk, for `file://`.
    fn local_blob_path(&self, d: &Digest) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        let mut p = root.clone();
        for part in self.prefix.parts() {
            p.push(part.as_ref());
        }
        Some(p.join("blobs/sha256").join(d.hex()))
    }

    async fn head(&self, key: &str) -> Result<Option<Meta>, StorageError> {
        match self.store.head(&self.path(key)).await {
            Ok(m) => Ok(Some(self.meta(m))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend("head", key)(e)),
        }
    }

    /// A small object (manifest, tag) read whole, with its metadata.
    async fn get_small(&self, key: &str) -> Result<Option<(Bytes, Meta)>, StorageError> {
        let r = match self.store.get(&self.path(key)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend("get", key)(e)),
        };
        let meta = self.meta(r.meta.clone());
        let bytes = r.bytes().await.map_err(self.backend("get", key))?;
        Ok(Some((bytes, meta)))
    }

    async fn put_small(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        self.store
            .put(&self.path(key), PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(self.backend("put", key))
    }

    /// Streams part of a blob. `None` when absent.
    async fn get_stream(
        &self,
        key: &str,
        range: Option<Range<u64>>,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StorageError>>>, StorageError> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        match self.store.get_opts(&self.path(key), opts).await {
            Ok(r) => {
                let path = key.to_string();
                Ok(Some(
                    r.into_stream()
                        .map_err(move |source| StorageError::Backend {
                            op: "get",
                            path: path.clone(),
                            source,
                        })
                        .boxed(),
                ))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend("get", key)(e)),
        }
    }

    /// Commits a staged, already verified blob file. The file is consumed.
    async fn put_blob_file(&self, d: &Digest, staged: &Path) -> Result<(), StorageError> {
        let key = Storage::blob_key(d);
        if let Some(dest) = self.local_blob_path(d) {
            let io = |source| StorageError::Io {
                path: dest.clone(),
                source,
            };
            if let Some(parent) = dest.parent() {
                tokio::fs::create_dir_all(parent).await.map_err(io)?;
            }
            if tokio::fs::rename(staged, &dest).await.is_ok() {
                return Ok(());
            }
            // Another filesystem: copy beside the destination, then rename.
            let tmp = dest.with_extension(format!("tmp-{}", crate::random_id()));
            tokio::fs::copy(staged, &tmp).await.map_err(io)?;
            let r = tokio::fs::rename(&tmp, &dest).await.map_err(io);
            let _ = tokio::fs::remove_file(staged).await;
            return r;
        }
        let io = |source| StorageError::Io {
            path: staged.to_path_buf(),
            source,
        };
        let size = tokio::fs::metadata(staged).await.map_err(io)?.len();
        let path = self.path(&key);
        if size <= PART_SIZE as u64 {
            let bytes = tokio::fs::read(staged).await.map_err(io)?;
            self.store
                .put(&path, PutPayload::from(bytes))
                .await
                .map_err(self.backend("put", &key))?;
        } else {
            // A multipart upload becomes visible only on completion.
            let upload = self
                .store
                .put_multipart(&path)
                .await
                .map_err(self.backend("put", &key))?;
            let mut w = WriteMultipart::new_with_chunk_size(upload, PART_SIZE);
            let mut f = tokio::fs::File::open(staged).await.map_err(io)?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match f.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = w.abort().await;
                        return Err(io(e));
                    }
                };
                if n == 0 {
                    break;
                }
                if let Err(e) = w.wait_for_capacity(4).await {
                    return Err(self.backend("put", &key)(e));
                }
                w.write(&buf[..n]);
            }
            w.finish().await.map_err(self.backend("put", &key))?;
        }
        let _ = tokio::fs::remove_file(staged).await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend("delete", key)(e)),
        }
    }

    /// Every object under `sub` (relative to the prefix).
    async fn list(&self, sub: &str) -> Result<Vec<Meta>, StorageError> {
        let p = self.path(sub);
        let mut s = self.store.list(Some(&p));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            match m {
                Ok(m) => out.push(self.meta(m)),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.backend("list", sub)(e)),
            }
        }
        Ok(out)
    }

    /// A cheap round trip that proves the store answers (for `/readyz`).
    async fn probe(&self) -> Result<(), StorageError> {
        self.head("kiln-probe").await.map(|_| ())
    }
}
