//! Upload chunks kept in the backend ([`Key::UploadPart`]), so that a
//! session started on one replica can be continued and finished on any
//! other: the session's state *is* the list of its chunks (offset and size
//! of each), so no replica has to remember anything between requests.

use super::Store;
use crate::backend::StorageError;
use crate::keys::{Key, Prefix};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One stored chunk of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub offset: u64,
    pub size: u64,
}

impl Store {
    /// Whether upload sessions live in the backend (any replica continues
    /// them) rather than in one process's memory.
    pub fn shares_uploads(&self) -> bool {
        self.storage.shares_uploads()
    }

    /// A session's chunks, by offset.
    pub(crate) async fn upload_parts(&self, id: &str) -> Result<Vec<Part>, StorageError> {
        let listed = self.list(&Prefix::Upload(id.to_string())).await?;
        let mut parts: Vec<Part> = listed
            .into_iter()
            .filter_map(|m| match m.key {
                Key::UploadPart { offset, .. } => Some(Part {
                    offset,
                    size: m.size,
                }),
                _ => None,
            })
            .collect();
        parts.sort_by_key(|p| p.offset);
        Ok(parts)
    }

    /// Stores a staged chunk of session `id` that starts at `offset`,
    /// consuming the file.
    pub(crate) async fn put_upload_part(
        &self,
        id: &str,
        offset: u64,
        staged: &Path,
    ) -> Result<(), StorageError> {
        let key = Key::UploadPart {
            id: id.to_string(),
            offset,
        };
        self.call("put_blob", self.storage.put_file(&key, staged))
            .await
    }

    /// A chunk's bytes.
    pub(crate) async fn upload_part(
        &self,
        id: &str,
        offset: u64,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StorageError>>>, StorageError> {
        let key = Key::UploadPart {
            id: id.to_string(),
            offset,
        };
        self.call("get", self.storage.get_stream(&key, None)).await
    }

    /// Deletes a session's chunks (finished, cancelled or abandoned).
    pub(crate) async fn delete_upload(&self, id: &str) -> Result<(), StorageError> {
        for p in self.upload_parts(id).await? {
            let key = Key::UploadPart {
                id: id.to_string(),
                offset: p.offset,
            };
            self.call("delete", self.storage.delete(&key)).await?;
        }
        Ok(())
    }

    /// Deletes the chunks of every session whose newest chunk is older than
    /// `stale_after` (a client that went away). Returns how many sessions.
    pub(crate) async fn sweep_uploads(&self, stale_after: Duration) -> Result<usize, StorageError> {
        let listed = self.list(&Prefix::Uploads).await?;
        let mut newest: BTreeMap<String, chrono::DateTime<chrono::Utc>> = BTreeMap::new();
        for m in &listed {
            if let Key::UploadPart { id, .. } = &m.key {
                let e = newest.entry(id.clone()).or_insert(m.modified);
                *e = (*e).max(m.modified);
            }
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::hours(1));
        let stale: Vec<String> = newest
            .into_iter()
            .filter(|(_, t)| *t < cutoff)
            .map(|(id, _)| id)
            .collect();
        for id in &stale {
            self.delete_upload(id).await?;
        }
        Ok(stale.len())
    }
}
