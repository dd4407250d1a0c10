//! Local sessions (a fronted registry, which cannot hold chunks): bytes
//! are staged in this process's directory and hashed as they arrive; the
//! session lives in this process's memory, so chunked uploads need
//! affinity. See the parent module's note.

use super::{
    check_digest, check_offset, check_size, copy_body, Body, Sessions, Staged, UploadError,
};
use crate::store::Store;
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

/// A session: the repository it was started in is fixed at start and
/// kept outside the lock, so every request is checked against it, also
/// while another request holds the session (a slow PATCH).
struct Held {
    repo: String,
    state: tokio::sync::Mutex<Session>,
}

struct Session {
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    touched: Instant,
}

pub(super) struct Local {
    /// This process's staging directory.
    pub dir: PathBuf,
    pub stale_after: Duration,
    sessions: Mutex<HashMap<String, Arc<Held>>>,
}

impl Local {
    pub fn new(dir: PathBuf, stale_after: Duration) -> Local {
        Local {
            dir,
            stale_after,
            sessions: Mutex::new(HashMap::new()),
        }
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Held>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The session `id`, if it was started in `repo`: a session belongs to
    /// the repository it was started in, whatever its lock state (another
    /// repository's name gets "unknown", as if it did not exist).
    fn get(&self, repo: &str, id: &str) -> Result<Arc<Held>, UploadError> {
        match self.sessions().get(id) {
            Some(s) if s.repo == repo => Ok(s.clone()),
            _ => Err(UploadError::Unknown(id.to_string())),
        }
    }

    /// Ends session `id` (removed from the map): its staged file when
    /// everything received hashes to `digest`.
    async fn close(&self, repo: &str, id: &str, digest: &Digest) -> Result<Staged, UploadError> {
        let s = self.get(repo, id)?;
        self.sessions().remove(id);
        let s = s.state.lock().await;
        let actual = match check_digest(id, digest, s.hasher.clone()) {
            Ok(d) => d,
            Err(e) => {
                let _ = std::fs::remove_file(&s.path);
                return Err(e);
            }
        };
        let path = s.path.clone();
        let synced = tokio::task::spawn_blocking({
            let path = path.clone();
            move || std::fs::File::open(&path).and_then(|f| f.sync_all())
        })
        .await
        .map_err(std::io::Error::other)
        .and_then(|r| r);
        synced.map_err(|source| UploadError::Io {
            path: path.clone(),
            source,
        })?;
        Ok(Staged {
            path,
            digest: actual,
            size: s.size,
        })
    }

    /// Appends a chunk; `start`, when given, must be where the session is.
    async fn receive(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64, UploadError> {
        let s = self.get(repo, id)?;
        let mut s = s.state.lock().await;
        if let Some(start) = start {
            check_offset(id, s.size, start)?;
        }
        let path = s.path.clone();
        let io = |source| UploadError::Io {
            path: path.clone(),
            source,
        };
        let mut f = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await
            .map_err(io)?;
        // A broken body rolls the file back to the last complete chunk, so
        // the session's size and hash always describe the staged bytes.
        let before = s.size;
        let mut hasher = s.hasher.clone();
        let n = match copy_body(id, &path, &mut f, Some(&mut hasher), body).await {
            Ok(n) => n,
            Err(e) => {
                drop(f);
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(before));
                return Err(e);
            }
        };
        f.flush().await.map_err(io)?;
        s.hasher = hasher;
        s.size += n;
        s.touched = Instant::now();
        Ok(s.size)
    }

    fn drop_session(&self, repo: &str, id: &str) -> Result<(), UploadError> {
        let s = self.get(repo, id)?;
        self.sessions().remove(id);
        if let Ok(s) = s.state.try_lock() {
            let _ = std::fs::remove_file(&s.path);
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Sessions for Local {
    fn start(&self, repo: &str) -> Result<String, UploadError> {
        let id = crate::random_id();
        let path = self.dir.join(&id);
        std::fs::File::create(&path).map_err(|source| UploadError::Io {
            path: path.clone(),
            source,
        })?;
        let s = Session {
            path,
            hasher: Sha256::new(),
            size: 0,
            touched: Instant::now(),
        };
        let held = Held {
            repo: repo.to_string(),
            state: tokio::sync::Mutex::new(s),
        };
        self.sessions().insert(id.clone(), Arc::new(held));
        Ok(id)
    }

    async fn offset(&self, _store: &Store, repo: &str, id: &str) -> Result<u64, UploadError> {
        Ok(self.get(repo, id)?.state.lock().await.size)
    }

    async fn append(
        &self,
        _store: &Store,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64, UploadError> {
        self.receive(repo, id, start, body).await
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
        let before = self.offset(store, repo, id).await?;
        let n = match self.receive(repo, id, None, body).await {
            Ok(n) => n,
            Err(e) => {
                let _ = self.drop_session(repo, id);
                return Err(e);
            }
        };
        if let Err(e) = check_size(id, declared, n - before) {
            let _ = self.drop_session(repo, id);
            return Err(e);
        }
        self.close(repo, id, digest).await
    }

    /// Nothing is left once the staged file was committed.
    async fn committed(&self, _store: &Store, _id: &str) {}

    async fn cancel(&self, _store: &Store, repo: &str, id: &str) -> Result<(), UploadError> {
        self.drop_session(repo, id)
    }

    /// Drops sessions no client has touched for a while.
    async fn sweep(&self, _store: &Store) {
        let stale: Vec<(String, Arc<Held>)> = self
            .sessions()
            .iter()
            .filter(|(_, s)| {
                s.state
                    .try_lock()
                    .is_ok_and(|s| s.touched.elapsed() > self.stale_after)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, s) in stale {
            self.sessions().remove(&id);
            if let Ok(s) = s.state.try_lock() {
                let _ = std::fs::remove_file(&s.path);
            }
        }
    }

    fn active(&self) -> usize {
        self.sessions().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn body(chunks: &'static [&'static [u8]]) -> Body<'static> {
        Box::pin(futures_util::stream::iter(
            chunks.iter().map(|c| Ok(Bytes::from_static(c))),
        ))
    }

    /// A session held busy by a slow chunk is still refused under another
    /// repository's name, for every operation; the chunk in flight is not
    /// disturbed.
    #[tokio::test]
    async fn a_busy_session_is_refused_under_another_repository() {
        let dir = tempfile::tempdir().unwrap();
        let u = Arc::new(Local::new(
            dir.path().to_path_buf(),
            Duration::from_secs(3600),
        ));
        let id = u.start("team/a").unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        let rx: Body<'static> = Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
        tx.send(Ok(Bytes::from_static(b"first"))).unwrap();
        let slow = tokio::spawn({
            let (u, id) = (u.clone(), id.clone());
            async move { u.receive("team/a", &id, Some(0), rx).await }
        });
        // Wait until the slow chunk holds the session's lock.
        while u.get("team/a", &id).unwrap().state.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let other = "team/b";
        let unknown = |r: Result<(), UploadError>| matches!(r, Err(UploadError::Unknown(_)));
        let appended = u.receive(other, &id, None, body(&[b"x"])).await;
        assert!(unknown(appended.map(drop)));
        let closed = u.close(other, &id, &Digest::sha256_of(b"")).await;
        assert!(unknown(closed.map(drop)));
        assert!(unknown(u.drop_session(other, &id)));
        assert_eq!(u.active(), 1, "the session was dropped under another name");
        tx.send(Ok(Bytes::from_static(b"-second"))).unwrap();
        drop(tx);
        assert_eq!(slow.await.unwrap().unwrap(), 12);
        let staged = u
            .close("team/a", &id, &Digest::sha256_of(b"first-second"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(staged.path).unwrap(), b"first-second");
    }
}
