//! Blob upload sessions (monolithic and chunked). Bytes are staged in a
//! local file and hashed as they arrive; nothing reaches the store until the
//! client's digest matches, and then it is committed in one atomic step. A
//! dropped connection or a crash leaves only a staging file, which is never
//! served and is swept at startup and when a session goes stale.

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
}

struct Session {
    repo: String,
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
    /// Held while this process runs: staging dirs whose lock is free
    /// belong to a process that is gone.
    _lock: nix::fcntl::Flock<std::fs::File>,
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Session>>>>,
    stale_after: Duration,
}

impl Uploads {
    /// Opens a staging directory of this process's own under `root`, and
    /// removes those of processes that are gone (their lock is free), so
    /// several servers may share one data directory.
    pub fn open(root: &Path) -> Result<Uploads, UploadError> {
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
            _lock: lock,
            sessions: Mutex::new(HashMap::new()),
            stale_after: Duration::from_secs(3600),
        })
    }

    fn sessions(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Session>>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, repo: &str) -> Result<String, UploadError> {
        let id = crate::random_id();
        let path = self.dir.join(&id);
        std::fs::File::create(&path).map_err(|source| UploadError::Io {
            path: path.clone(),
            source,
        })?;
        let s = Session {
            repo: repo.to_string(),
            path,
            hasher: Sha256::new(),
            size: 0,
            touched: Instant::now(),
        };
        self.sessions()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(s)));
        Ok(id)
    }

    fn get(&self, repo: &str, id: &str) -> Result<Arc<tokio::sync::Mutex<Session>>, UploadError> {
        self.sessions()
            .get(id)
            .cloned()
            .ok_or_else(|| UploadError::Unknown(id.to_string()))
            .and_then(|s| {
                // A session belongs to the repository it was started in.
                match s.try_lock() {
                    Ok(g) if g.repo != repo => Err(UploadError::Unknown(id.to_string())),
                    _ => Ok(s.clone()),
                }
            })
    }

    /// Bytes received so far.
    pub async fn offset(&self, repo: &str, id: &str) -> Result<u64, UploadError> {
        Ok(self.get(repo, id)?.lock().await.size)
    }

    /// Appends a chunk. `start` is the client's Content-Range start, checked
    /// against what has been received.
    pub async fn append<S, E>(
        &self,
        repo: &str,
        id: &str,
        start: Option<u64>,
        mut body: S,
    ) -> Result<u64, UploadError>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let s = self.get(repo, id)?;
        let mut s = s.lock().await;
        if let Some(start) = start {
            if start != s.size {
                return Err(UploadError::RangeInvalid {
                    id: id.to_string(),
                    expected: s.size,
                    got: start,
                });
            }
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
        let mut n = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    drop(f);
                    let _ = std::fs::OpenOptions::new()
                        .write(true)
                        .open(&path)
                        .and_then(|f| f.set_len(before));
                    return Err(UploadError::Body {
                        id: id.to_string(),
                        message: e.to_string(),
                    });
                }
            };
            hasher.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.flush().await.map_err(io)?;
        s.hasher = hasher;
        s.size += n;
        s.touched = Instant::now();
        Ok(s.size)
    }

    /// Ends a session: the content must hash to `digest`. On a mismatch the
    /// staged bytes are discarded.
    pub async fn finish(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
    ) -> Result<Staged, UploadError> {
        let s = self.get(repo, id)?;
        self.sessions().remove(id);
        let s = s.lock().await;
        let actual = Digest::from_sha256(s.hasher.clone().finalize().into());
        if &actual != digest {
            let _ = std::fs::remove_file(&s.path);
            return Err(UploadError::DigestInvalid {
                id: id.to_string(),
                expected: digest.clone(),
                actual,
            });
        }
        let f = std::fs::File::open(&s.path).map_err(|source| UploadError::Io {
            path: s.path.clone(),
            source,
        })?;
        f.sync_all().map_err(|source| UploadError::Io {
            path: s.path.clone(),
            source,
        })?;
        Ok(Staged {
            path: s.path.clone(),
            digest: actual,
            size: s.size,
        })
    }

    pub fn cancel(&self, repo: &str, id: &str) -> Result<(), UploadError> {
        let s = self.get(repo, id)?;
        self.sessions().remove(id);
        if let Ok(s) = s.try_lock() {
            let _ = std::fs::remove_file(&s.path);
        }
        Ok(())
    }

    /// Drops sessions no client has touched for an hour.
    pub fn sweep(&self) {
        let stale: Vec<(String, Arc<tokio::sync::Mutex<Session>>)> = self
            .sessions()
            .iter()
            .filter(|(_, s)| {
                s.try_lock()
                    .is_ok_and(|s| s.touched.elapsed() > self.stale_after)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        for (id, s) in stale {
            self.sessions().remove(&id);
            if let Ok(s) = s.try_lock() {
                let _ = std::fs::remove_file(&s.path);
            }
        }
    }

    pub fn active(&self) -> usize {
        self.sessions().len()
    }
}
