//! Blob upload sessions (monolithic and chunked). Nothing reaches the store
//! until the client's digest matches, and then it is committed in one
//! atomic step; a dropped connection or a crash leaves only staging data,
//! which is never served and is swept when a session goes stale.
//!
//! Where a session's state lives depends on the backend
//! ([`crate::backend::Backend::shares_uploads`]), chosen once when the
//! server starts: one [`Sessions`] implementation each.
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

mod local;
mod shared;
use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use kiln_common::Digest;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::Duration;
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

/// What a finished upload produced: a staged file whose digest matched.
pub struct Staged {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

/// A request body as the sessions read it: chunks, or the transport's
/// failure as text.
type Body<'a> = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send + 'a>>;

/// Where upload sessions live. Every operation names the repository, and a
/// session is refused ([`UploadError::Unknown`]) under any repository but
/// the one it was started in, whatever state it is in. Nothing reaches the
/// store's blobs from here: a finished session is a staged, verified file
/// the caller commits.
#[async_trait::async_trait]
trait Sessions: Send + Sync {
    /// A new session in `repo`: its id.
    fn start(&self, repo: &str) -> Result<String, UploadError>;
    /// Bytes received so far.
    async fn offset(&self, store: &Store, repo: &str, id: &str) -> Result<u64, UploadError>;
    /// Appends a chunk (PATCH); `start`, the Content-Range start, must be
    /// where the session is. Returns the bytes received in all.
    async fn append(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
        start: Option<u64>,
        body: Body<'_>,
    ) -> Result<u64, UploadError>;
    /// Ends a session with the closing request's body: everything received
    /// must hash to `digest`, and the body be `declared` bytes long; on a
    /// mismatch the session is discarded.
    async fn finish(
        &self,
        store: &Store,
        repo: &str,
        id: &str,
        digest: &Digest,
        declared: Option<u64>,
        body: Body<'_>,
    ) -> Result<Staged, UploadError>;
    /// The staged file of a finished session was committed.
    async fn committed(&self, store: &Store, id: &str);
    async fn cancel(&self, store: &Store, repo: &str, id: &str) -> Result<(), UploadError>;
    /// Drops sessions no client has touched for a while.
    async fn sweep(&self, store: &Store);
    /// Sessions open in this process.
    fn active(&self) -> usize;
}

pub struct Uploads {
    /// Held while this process runs: staging dirs whose lock is free
    /// belong to a process that is gone.
    _lock: nix::fcntl::Flock<std::fs::File>,
    sessions: Box<dyn Sessions>,
}

/// A session no client has touched for this long is swept.
const STALE_AFTER: Duration = Duration::from_secs(3600);

fn boxed<'a, S, E>(body: S) -> Body<'a>
where
    S: Stream<Item = Result<Bytes, E>> + Send + 'a,
    E: std::fmt::Display,
{
    Box::pin(body.map(|r| r.map_err(|e| e.to_string())))
}

impl Uploads {
    /// Opens a staging directory of this process's own under `root`, and
    /// removes those of processes that are gone (their lock is free), so
    /// several servers may share one data directory. `shared`: sessions
    /// live in the store (see the module's note).
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
        let sessions: Box<dyn Sessions> = if shared {
            Box::new(shared::Shared {
                dir,
                stale_after: STALE_AFTER,
            })
        } else {
            Box::new(local::Local::new(dir, STALE_AFTER))
        };
        Ok(Uploads {
            _lock: lock,
            sessions,
        })
    }

    pub fn start(&self, repo: &str) -> Result<String, UploadError> {
        self.sessions.start(repo)
    }

    /// Bytes received so far.
    pub async fn offset(&self, store: &Store, repo: &str, id: &str) -> Result<u64, UploadError> {
        self.sessions.offset(store, repo, id).await
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
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.sessions
            .append(store, repo, id, start, boxed(body))
            .await
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
        S: Stream<Item = Result<Bytes, E>> + Send,
        E: std::fmt::Display,
    {
        self.sessions
            .finish(store, repo, id, digest, declared, boxed(body))
            .await
    }

    /// The staged file of a finished session was committed: a shared
    /// session's chunks can go.
    pub async fn committed(&self, store: &Store, id: &str) {
        self.sessions.committed(store, id).await
    }

    pub async fn cancel(&self, store: &Store, repo: &str, id: &str) -> Result<(), UploadError> {
        self.sessions.cancel(store, repo, id).await
    }

    /// Drops sessions no client has touched for an hour (in the store too,
    /// for shared sessions: any replica may sweep them).
    pub async fn sweep(&self, store: &Store) {
        self.sessions.sweep(store).await
    }

    pub fn active(&self) -> usize {
        self.sessions.active()
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
}
