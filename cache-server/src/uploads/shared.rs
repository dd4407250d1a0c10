//! Shared sessions (object-store backends): the session's state is the
//! list of its chunks in the store, so any replica continues it. See the
//! parent module's note.

use super::{
    check_digest, check_offset, check_size, chunks_end, copy_body, owns, storage, Staged,
    UploadError, Uploads,
};
use crate::store::Store;
use bytes::Bytes;
use futures_util::Stream;
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncWriteExt;

impl Uploads {
    fn staging_file(&self) -> PathBuf {
        self.dir.join(format!("shared-{}", crate::random_id()))
    }

    pub(super) async fn shared_offset(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
    ) -> Result<u64, UploadError> {
        if !owns(repo, id) {
            return Err(UploadError::Unknown(id.to_string()));
        }
        let parts = store.upload_parts(id).await.map_err(storage(id))?;
        chunks_end(id, &parts)
    }

    pub(super) async fn shared_append<S, E>(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let offset = self.shared_offset(store, repo, id).await?;
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

    pub(super) async fn shared_finish<S, E>(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
        digest: &Digest,
        declared: Option<u64>,
        body: S,
    ) -> Result<Staged, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        if !owns(repo, id) {
            return Err(UploadError::Unknown(id.to_string()));
        }
        let path = self.staging_file();
        let r = self
            .shared_stage(store, id, &path, digest, declared, body)
            .await;
        if r.is_err() {
            let _ = tokio::fs::remove_file(&path).await;
            if !matches!(r, Err(UploadError::Storage { .. })) {
                // A bad upload is discarded, as a local one is.
                let _ = store.delete_upload(id).await;
            }
        }
        r
    }

    /// The chunks in order, then the closing body, into `path`, hashed.
    async fn shared_stage<S, E>(
        &self,
        store: &Store,
        id: &str,
        path: &Path,
        digest: &Digest,
        declared: Option<u64>,
        body: S,
    ) -> Result<Staged, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
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
}
