//! Shared sessions (object-store backends): the session's state is the
//! list of its chunks in the store, so any replica continues it. See the
//! parent module's note.

use super::{
    check_digest, check_offset, check_size, chunks_end, copy_body, owns, repo_tag, storage, Body,
    Sessions, Staged, UploadError,
};
use crate::store::Store;
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

pub(super) struct Shared {
    /// This process's staging directory (for a PATCH's body on its way
    /// into the store, and for the closing PUT's assembled blob).
    pub dir: PathBuf,
    pub stale_after: Duration,
}

impl Shared {
    fn staging_file(&self) -> PathBuf {
        self.dir.join(format!("shared-{}", crate::random_id()))
    }
}

#[async_trait::async_trait]
impl Sessions for Shared {
    /// A session id carries a short hash of its repository, so a replica
    /// that never saw the session can still refuse it under another one.
    fn start(&self, repo: &str) -> Result<String, UploadError> {
        Ok(format!("{}-{}", crate::random_id(), repo_tag(repo)))
    }

    async fn offset(&self, store: &Store, repo: &str, id: &str) -> Result<u64, UploadError> {
        if !owns(repo, id) {
            return Err(UploadError::Unknown(id.to_string()));
        }
        let parts = store.upload_parts(id).await.map_err(storage(id))?;
        chunks_end(id, &parts)
    }

    async fn append(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64, UploadError> {
        let offset = self.offset(store, repo, id).await?;
        if let Some(start) = start {
            check_offset(id, offset, start)?;
        }
        let path = self.staging_file();
        let io = |source| UploadError::Io {
            path: path.clone(),
            source,
        };
        let mut f = tokio::fs::File::create(&path).await.map_err(io)?;
        let copied = copy_body(id, &path, &mut f, None, body).await;
        let n = match copied {
            Ok(n) => n,
            Err(e) => {
                let _ = tokio::fs::remove_file(&path).await;
                return Err(e);
            }
        };
        f.flush().await.map_err(io)?;
        drop(f);
        if n == 0 {
            let _ = tokio::fs::remove_file(&path).await;
            return Ok(offset);
        }
        let stored = store.put_upload_part(id, offset, &path).await;
        let _ = tokio::fs::remove_file(&path).await;
        stored.map_err(storage(id))?;
        Ok(offset + n)
    }

    async fn finish(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
        digest: &Digest,
        declared: Option<u64>,
        body: Body<'_>,
    ) -> Result<Staged, UploadError> {
        if !owns(repo, id) {
            return Err(UploadError::Unknown(id.to_string()));
        }
        let path = self.staging_file();
        let r = stage(store, id, &path, digest, declared, body).await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
            if !matches!(r, Err(UploadError::Storage { .. })) {
                // A bad upload is discarded, as a local one is.
                let _ = store.delete_upload(id).await;
            }
        }
        r
    }

    /// The chunks can go: the blob they made is in the store.
    async fn committed(&self, store: &Store, id: &str) {
        if let Err(e) = store.delete_upload(id).await {
            tracing::warn!(
                "upload {id}: chunks left for the sweep: {}",
                kiln_common::report::Report(&e)
            );
        }
    }

    async fn cancel(&self, store: &Store, repo: &str, id: &str) -> Result<(), UploadError> {
        if !owns(repo, id) {
            return Err(UploadError::Unknown(id.to_string()));
        }
        store.delete_upload(id).await.map_err(storage(id))
    }

    /// Any replica may sweep sessions no client touched for a while.
    async fn sweep(&self, store: &Store) {
        match store.sweep_uploads(self.stale_after).await {
            Ok(0) => {}
            Ok(n) => tracing::info!("swept {n} abandoned upload sessions"),
            Err(e) => tracing::warn!(
                "sweeping upload sessions: {}",
                kiln_common::report::Report(&e)
            ),
        }
    }

    /// Sessions live in the store, not here.
    fn active(&self) -> usize {
        0
    }
}

/// The chunks in order, then the closing body, into `path`, hashed.
async fn stage(
    store: &Store,
    id: &str,
    path: &Path,
    digest: &Digest,
    declared: Option<u64>,
    body: Body<'_>,
) -> Result<Staged, UploadError> {
    let io = |source| UploadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut f = tokio::fs::File::create(path).await.map_err(io)?;
    let mut hasher = Sha256::new();
    let parts = store.upload_parts(id).await.map_err(storage(id))?;
    chunks_end(id, &parts)?;
    let mut size = 0u64;
    for p in parts {
        let stream = store
            .upload_part(id, p.offset)
            .await
            .map_err(storage(id))?
            .ok_or_else(|| UploadError::Unknown(id.to_string()))?;
        size += copy_body(id, path, &mut f, Some(&mut hasher), stream).await?;
    }
    let n = copy_body(id, path, &mut f, Some(&mut hasher), body).await?;
    check_size(id, declared, n)?;
    size += n;
    let actual = check_digest(id, digest, hasher)?;
    f.flush().await.map_err(io)?;
    f.sync_all().await.map_err(io)?;
    Ok(Staged {
        path: path.to_path_buf(),
        digest: actual,
        size,
    })
}
