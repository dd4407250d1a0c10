//! Blob upload sessions (monolithic and chunked). Nothing reaches the store
//! until the client's digest matches, and then it is committed in one
//! atomic step; a dropped connection or a crash leaves only staging data,
//! which is never served and is swept when a session goes stale.
//!
//! Where a session's state lives depends on the backend
//! ([`crate::backend::Backend::shares_uploads`]):
//! - **shared** (object stores): each PATCHed chunk is stored in the backend
//!   under the session ([`crate::store`]'s `parts`), so any replica can take
//!   the next request — no session affinity. The closing PUT reads the
//!   chunks back in order, hashing them with its own body into a local
//!   staging file. A session id carries a short hash of its repository, so
//!   a replica that never saw the session can still refuse it under
//!   another repository. Monolithic uploads (the usual case) store nothing
//!   extra: their one body goes straight to staging.
//! - **local** (a fronted registry, which cannot hold chunks): bytes are
//!   staged in this process's directory and hashed as they arrive; the
//!   session lives in its memory, so chunked uploads need affinity.

use crate::store::Store;

mod shared;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncWriteExt;

#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload {0} unknown")]
    Unknown(String),
    #[error("upload {id}: chunk starts at {got}, expected {expected}")]
    RangeInvalid { id: String, expected: u64, got: u64 },
    #[error("upload {id}: {message}")]
    Body { id: String, message: String },
    #[error("upload {id}: digest {expected} does not match the content, which is {actual}")]
    DigestInvalid {
        id: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("upload {id}: declared {declared} bytes, received {actual}")]
    SizeInvalid {
        id: String,
        declared: u64,
        actual: u64,
    },
    #[error("staging {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("upload {id}: the store")]
    Storage {
        id: String,
        #[source]
        source: Box<crate::backend::StorageError>,
    },
}

/// A local session: the repository it was started in is fixed at start and
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

/// What a finished upload produced: a staged file whose digest matched.
pub struct Staged {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

pub struct Uploads {
    dir: PathBuf,
    /// Sessions live in the store (see the module's note).
    shared: bool,
    /// Held while this process runs: staging dirs whose lock is free
    /// belong to a process that is gone.
    _lock: nix::fcntl::Flock<std::fs::File>,
    sessions: Mutex<HashMap<String, Arc<Held>>>,
    stale_after: Duration,
}

impl Uploads {
    /// Opens a staging directory of this process's own under `root`, and
    /// removes those of processes that are gone (their lock is free), so
    /// several servers may share one data directory.
    pub fn open(root: &Path, shared: bool) -> Result<Uploads, UploadError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| UploadError::Io { path, source }
        };
        std::fs::create_dir_all(root).map_err(io(root))?;
        for e in std::fs::read_dir(root).map_err(io(root))?.flatten() {
            let lock = e.path().join(".lock");
            let Ok(f) = std::fs::File::open(&lock) else {
                let _ = std::fs::remove_dir_all(e.path());
                continue;
            };
            if let Ok(held) =
                nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock)
            {
                let _ = std::fs::remove_dir_all(e.path());
                drop(held);
            }
        }
        let dir = root.join(crate::random_id());
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let lock_path = dir.join(".lock");
        let f = std::fs::File::create(&lock_path).map_err(io(&lock_path))?;
        let lock = nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, e)| io(&lock_path)(e.into()))?;
        Ok(Uploads {
            dir,
            shared,
            _lock: lock,
            sessions: Mutex::new(HashMap::new()),
            stale_after: Duration::from_secs(3600),
        })
    }

    fn sessions(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Held>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, repo: &str) -> Result<String, UploadError> {
        if self.shared {
            return Ok(format!("{}-{}", crate::random_id(), repo_tag(repo)));
        }
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

    /// The session `id`, if it was started in `repo`: a session belongs to
    /// the repository it was started in, whatever its lock state (another
    /// repository's name gets "unknown", as if it did not exist).
    fn get(&self, repo: &str, id: &str) -> Result<Arc<Held>, UploadError> {
        match self.sessions().get(id) {
            Some(s) if s.repo == repo => Ok(s.clone()),
            _ => Err(UploadError::Unknown(id.to_string())),
        }
    }

    /// Bytes received so far.
    pub async fn offset(&self, store: &Store, repo: &str, id: &str) -> Result<u64, UploadError> {
        if self.shared {
            return self.shared_offset(store, repo, id).await;
        }
        Ok(self.get(repo, id)?.state.lock().await.size)
    }

    /// Appends a chunk (PATCH); returns the bytes received in all. `start`
    /// is the client's Content-Range start, checked against what has been
    /// received.
    pub async fn append<S, E>(
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
        if self.shared {
            return self.shared_append(store, repo, id, start, body).await;
        }
        self.local_append(repo, id, start, body).await
    }

    async fn local_append<S, E>(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
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

    /// Ends a session with the closing request's `body` (empty for a
    /// chunked upload's PUT): everything received must hash to `digest`,
    /// and the body must be as long as `declared` (its Content-Length). On
    /// a mismatch the session is discarded. After the caller committed the
    /// staged file it calls [`Self::committed`].
    pub async fn finish<S, E>(
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
        if self.shared {
            return self
                .shared_finish(store, repo, id, digest, declared, body)
                .await;
        }
        let before = self.offset(store, repo, id).await?;
        let n = match self.local_append(repo, id, None, body).await {
            Ok(n) => n,
            Err(e) => {
                let _ = self.local_cancel(repo, id);
                return Err(e);
            }
        };
        if let Err(e) = check_size(id, declared, n - before) {
            let _ = self.local_cancel(repo, id);
            return Err(e);
        }
        self.local_finish(repo, id, digest).await
    }

    /// The staged file of a finished session was committed: a shared
    /// session's chunks can go.
    pub async fn committed(&self, store: &Store, id: &str) {
        if self.shared {
            if let Err(e) = store.delete_upload(id).await {
                tracing::warn!(
                    "upload {id}: chunks left for the sweep: {}",
                    kiln_common::report::Report(&e)
                );
            }
        }
    }

    async fn local_finish(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
    ) -> Result<Staged, UploadError> {
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
        let io = |source| UploadError::Io {
            path: s.path.clone(),
            source,
        };
        std::fs::File::open(&s.path)
            .and_then(|f| f.sync_all())
            .map_err(io)?;
        Ok(Staged {
            path: s.path.clone(),
            digest: actual,
            size: s.size,
        })
    }

    pub async fn cancel(&self, store: &Store, repo: &str, id: &str) -> Result<(), UploadError> {
        if self.shared {
            if !owns(repo, id) {
                return Err(UploadError::Unknown(id.to_string()));
            }
            return store.delete_upload(id).await.map_err(storage(id));
        }
        self.local_cancel(repo, id)
    }

    fn local_cancel(&self, repo: &str, id: &str) -> Result<(), UploadError> {
        let s = self.get(repo, id)?;
        self.sessions().remove(id);
        if let Ok(s) = s.state.try_lock() {
            let _ = std::fs::remove_file(&s.path);
        }
        Ok(())
    }

    /// Drops sessions no client has touched for an hour (in the store too,
    /// for shared sessions: any replica may sweep them).
    pub async fn sweep(&self, store: &Store) {
        if self.shared {
            match store.sweep_uploads(self.stale_after).await {
                Ok(0) => {}
                Ok(n) => tracing::info!("swept {n} abandoned upload sessions"),
                Err(e) => tracing::warn!(
                    "sweeping upload sessions: {}",
                    kiln_common::report::Report(&e)
                ),
            }
        }
        self.local_sweep();
    }

    fn local_sweep(&self) {
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

    pub fn active(&self) -> usize {
        self.sessions().len()
    }
}

/// A request body must be as long as its headers declared (`None`: no
/// declaration).
pub fn check_size(id: &str, declared: Option<u64>, actual: u64) -> Result<(), UploadError> {
    match declared {
        Some(declared) if declared != actual => Err(UploadError::SizeInvalid {
            id: id.to_string(),
            declared,
            actual,
        }),
        _ => Ok(()),
    }
}

/// Where a session's stored chunks end; they must follow each other
/// without a gap (only a client writing two chunks at once makes one).
fn chunks_end(id: &str, parts: &[crate::store::Part]) -> Result<u64, UploadError> {
    let mut end = 0;
    for p in parts {
        check_offset(id, end, p.offset)?;
        end += p.size;
    }
    Ok(end)
}

/// Bytes must continue where the session stands: a chunk's Content-Range
/// start, or a stored chunk's offset.
fn check_offset(id: &str, expected: u64, got: u64) -> Result<(), UploadError> {
    if got == expected {
        Ok(())
    } else {
        Err(UploadError::RangeInvalid {
            id: id.to_string(),
            expected,
            got,
        })
    }
}

/// What everything received hashes to, if it is the digest the client
/// named.
fn check_digest(id: &str, expected: &Digest, hasher: Sha256) -> Result<Digest, UploadError> {
    let actual = Digest::from_sha256(hasher.finalize().into());
    if &actual == expected {
        Ok(actual)
    } else {
        Err(UploadError::DigestInvalid {
            id: id.to_string(),
            expected: expected.clone(),
            actual,
        })
    }
}

/// The part of a shared session id that names its repository.
fn repo_tag(repo: &str) -> String {
    Digest::sha256_of(repo.as_bytes()).hex()[..8].to_string()
}

/// Whether shared session `id` was started in `repo`.
fn owns(repo: &str, id: &str) -> bool {
    id.rsplit_once('-')
        .is_some_and(|(_, tag)| tag == repo_tag(repo))
}

fn storage(id: &str) -> impl FnOnce(crate::backend::StorageError) -> UploadError + '_ {
    move |source| UploadError::Storage {
        id: id.to_string(),
        source: Box::new(source),
    }
}

/// Writes a body to `f`, feeding `hasher` when given; returns its length.
async fn copy_body<S, E>(
    id: &str,
    path: &Path,
    f: &mut tokio::fs::File,
    mut hasher: Option<&mut Sha256>,
    mut body: S,
) -> Result<u64, UploadError>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let mut n = 0u64;
    while let Some(chunk) = body.next().await {
        let chunk = chunk.map_err(|e| UploadError::Body {
            id: id.to_string(),
            message: e.to_string(),
        })?;
        if let Some(h) = hasher.as_deref_mut() {
            h.update(&chunk);
        }
        n += chunk.len() as u64;
        f.write_all(&chunk)
            .await
            .map_err(|source| UploadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_ids_name_their_repository() {
        let dir = tempfile::tempdir().unwrap();
        let u = Uploads::open(dir.path(), true).unwrap();
        let id = u.start("team/app").unwrap();
        assert!(owns("team/app", &id));
        assert!(!owns("team/other", &id));
        assert!(!owns("team/app", "no-dash-tag"));
    }

    /// A local session held busy by a slow chunk is still refused under
    /// another repository's name, for every operation; the chunk in flight
    /// is not disturbed.
    #[tokio::test]
    async fn a_busy_session_is_refused_under_another_repository() {
        let dir = tempfile::tempdir().unwrap();
        let u = Arc::new(Uploads::open(dir.path(), false).unwrap());
        let id = u.start("team/a").unwrap();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<Result<Bytes, String>>();
        let rx = Box::pin(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|chunk| (chunk, rx))
        }));
        tx.send(Ok(Bytes::from_static(b"first"))).unwrap();
        let slow = tokio::spawn({
            let (u, id) = (u.clone(), id.clone());
            async move { u.local_append("team/a", &id, Some(0), rx).await }
        });
        // Wait until the slow chunk holds the session's lock.
        while u.get("team/a", &id).unwrap().state.try_lock().is_ok() {
            tokio::task::yield_now().await;
        }
        let other = "team/b";
        let unknown = |r: Result<(), UploadError>| matches!(r, Err(UploadError::Unknown(_)));
        let body = futures_util::stream::iter([Ok::<_, String>(Bytes::from_static(b"x"))]);
        assert!(unknown(
            u.local_append(other, &id, None, body).await.map(drop)
        ));
        assert!(unknown(
            u.local_finish(other, &id, &Digest::sha256_of(b""))
                .await
                .map(drop)
        ));
        assert!(unknown(u.local_cancel(other, &id)));
        assert_eq!(u.active(), 1, "the session was dropped under another name");
        tx.send(Ok(Bytes::from_static(b"-second"))).unwrap();
        drop(tx);
        assert_eq!(slow.await.unwrap().unwrap(), 12);
        let staged = u
            .local_finish("team/a", &id, &Digest::sha256_of(b"first-second"))
            .await
            .unwrap();
        assert_eq!(std::fs::read(staged.path).unwrap(), b"first-second");
    }
}
