//! Object stores as the backend: `file://`, `s3://`, `gs://`, `az://`
//! through `object_store`. `file://` commits blobs by rename and serves
//! them straight from disk.

use super::{Backend, Meta, StorageError, PART_SIZE};
use crate::keys::{Key, Prefix};
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

pub struct ObjectBackend {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    /// For `file://`: the directory objects live in, so blobs are committed
    /// by rename and served straight from disk.
    local_root: Option<PathBuf>,
    url: String,
}

impl ObjectBackend {
    pub fn open(url: &str, deadlines: super::Deadlines) -> Result<ObjectBackend, StorageError> {
        let patience = kiln_common::objstore::Patience::Quick {
            stall: deadlines.stall,
            total: deadlines.total,
        };
        let (store, prefix) = kiln_common::objstore::open(url, patience)?;
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

    /// Where an object lives on this machine's disk, for `file://`.
    fn local_path(&self, key: &Key) -> Option<PathBuf> {
        let root = self.local_root.as_ref()?;
        let mut p = root.clone();
        for part in self.prefix.parts() {
            p.push(part.as_ref());
        }
        Some(p.join(key.to_string()))
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

    /// The listed object as a key of the layout; `None` for a stray object.
    fn meta(&self, m: ObjectMeta) -> Option<Meta> {
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
        Some(Meta {
            key: key.parse().ok()?,
            size: m.size,
            modified: m.last_modified,
        })
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
        self.local_path(&Key::Blob(d.clone()))
    }

    fn shares_uploads(&self) -> bool {
        true
    }

    async fn head(&self, key: &Key) -> Result<Option<Meta>, StorageError> {
        let name = key.to_string();
        match self.store.head(&self.path(&name)).await {
            Ok(m) => Ok(self.meta(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.backend("head", &name)(e)),
        }
    }

    /// A small object (manifest, tag) read whole, with its metadata.
    async fn get_small(&self, key: &Key) -> Result<Option<(Bytes, Meta)>, StorageError> {
        let name = key.to_string();
        let r = match self.store.get(&self.path(&name)).await {
            Ok(r) => r,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.backend("get", &name)(e)),
        };
        let meta = Meta {
            key: key.clone(),
            size: r.meta.size,
            modified: r.meta.last_modified,
        };
        let bytes = r.bytes().await.map_err(self.backend("get", &name))?;
        Ok(Some((bytes, meta)))
    }

    async fn put_small(&self, key: &Key, bytes: Bytes) -> Result<(), StorageError> {
        let name = key.to_string();
        self.store
            .put(&self.path(&name), PutPayload::from_bytes(bytes))
            .await
            .map(|_| ())
            .map_err(self.backend("put", &name))
    }

    /// Streams part of a blob. `None` when absent.
    async fn get_stream(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StorageError>>>, StorageError> {
        let opts = GetOptions {
            range: range.map(GetRange::Bounded),
            ..Default::default()
        };
        let name = key.to_string();
        match self.store.get_opts(&self.path(&name), opts).await {
            Ok(r) => {
                let path = name.clone();
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
            Err(e) => Err(self.backend("get", &name)(e)),
        }
    }

    /// Commits a staged, already verified blob file. The file is consumed.
    async fn put_blob_file(&self, d: &Digest, staged: &Path) -> Result<(), StorageError> {
        self.put_file(&Key::Blob(d.clone()), staged).await
    }

    /// Stores a file under `key` atomically (rename on `file://`, a single
    /// or multipart put elsewhere). The file is consumed.
    async fn put_file(&self, key: &Key, staged: &Path) -> Result<(), StorageError> {
        let local = self.local_path(key);
        let key = key.to_string();
        if let Some(dest) = local {
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
            let tmp = dest.with_extension(format!("tmp-{}", kiln_common::units::random_id()));
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

    async fn delete(&self, key: &Key) -> Result<(), StorageError> {
        let name = key.to_string();
        match self.store.delete(&self.path(&name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.backend("delete", &name)(e)),
        }
    }

    /// Every object under `sub` (relative to the prefix).
    async fn list(&self, sub: &Prefix) -> Result<Vec<Meta>, StorageError> {
        let name = sub.to_string();
        let p = self.path(&name);
        let mut s = self.store.list(Some(&p));
        let mut out = Vec::new();
        while let Some(m) = s.next().await {
            match m {
                Ok(m) => out.extend(self.meta(m)),
                Err(object_store::Error::NotFound { .. }) => break,
                Err(e) => return Err(self.backend("list", &name)(e)),
            }
        }
        Ok(out)
    }

    /// A cheap round trip that proves the store answers (for `/readyz`).
    async fn probe(&self) -> Result<(), StorageError> {
        self.head(&Key::Probe).await.map(|_| ())
    }
}
