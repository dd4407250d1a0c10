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
    /// `stale_after` (a client that went away), from one listing. Returns
    /// how many sessions.
    pub(crate) async fn sweep_uploads(&self, stale_after: Duration) -> Result<usize, StorageError> {
        let listed = self.list(&Prefix::Uploads).await?;
        let mut sessions: BTreeMap<String, (chrono::DateTime<chrono::Utc>, Vec<Key>)> =
            BTreeMap::new();
        for m in listed {
            if let Key::UploadPart { id, .. } = &m.key {
                let e = sessions
                    .entry(id.clone())
                    .or_insert((m.modified, Vec::new()));
                e.0 = e.0.max(m.modified);
                e.1.push(m.key);
            }
        }
        let cutoff = chrono::Utc::now()
            - chrono::Duration::from_std(stale_after).unwrap_or(chrono::Duration::hours(1));
        let mut swept = 0;
        for (newest, keys) in sessions.into_values() {
            if newest >= cutoff {
                continue;
            }
            for key in &keys {
                self.call("delete", self.storage.delete(key)).await?;
            }
            swept += 1;
        }
        Ok(swept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// Chunks of a stale session go, a live session's stay, from one sweep;
    /// a session's offsets come back in order.
    #[tokio::test]
    async fn sweep_removes_only_stale_sessions() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().join("store").display());
        let backend = crate::backend::open(&url, Default::default()).unwrap();
        let store = Store::new(backend, Default::default(), Arc::new(Default::default()))
            .await
            .unwrap();
        for (id, offset) in [("old", 0), ("old", 3), ("live", 0)] {
            let f = dir.path().join(format!("chunk-{id}-{offset}"));
            std::fs::write(&f, "abc").unwrap();
            store.put_upload_part(id, offset, &f).await.unwrap();
        }
        let offsets = |parts: Vec<Part>| parts.iter().map(|p| p.offset).collect::<Vec<_>>();
        assert_eq!(offsets(store.upload_parts("old").await.unwrap()), [0, 3]);
        // Age the "old" session's chunks by two hours.
        let old = dir.path().join("store/_uploads/old");
        let then = filetime::FileTime::from_unix_time(chrono::Utc::now().timestamp() - 7200, 0);
        for e in std::fs::read_dir(&old).unwrap().flatten() {
            filetime::set_file_mtime(e.path(), then).unwrap();
        }
        let swept = store
            .sweep_uploads(Duration::from_secs(3600))
            .await
            .unwrap();
        assert_eq!(swept, 1);
        assert!(store.upload_parts("old").await.unwrap().is_empty());
        assert_eq!(offsets(store.upload_parts("live").await.unwrap()), [0]);
    }
}
