//! Blobs through the mirror: fetched once (single flight), staged and
//! hashed chunk by chunk as they pass to the first client, committed only
//! when the digest matches.

use super::health::Outcome;
use super::{Mirror, MirrorError, Route};
use crate::store::Store;
use kiln_common::registry::{Limits, RegistryError, RemoteKind};
use kiln_common::Digest;

impl Mirror {
    /// Makes blob `d` of `route` present in the store, fetched once,
    /// verified, then committed (never visible partial).
    pub async fn blob(&self, store: &Store, route: &Route, d: &Digest) -> Result<(), MirrorError> {
        let Some(mut f) = self.begin_blob(store, route, d).await? else {
            return Ok(());
        };
        while let Some(chunk) = f.next().await {
            chunk?;
        }
        f.finish(store).await
    }

    /// Starts fetching blob `d` of `route` from the upstream: `None` when
    /// it is stored already (or was, by the caller ahead of this one, which
    /// is waited for). The returned fetch holds the blob's single flight
    /// until it is finished or dropped.
    pub async fn begin_blob(
        &self,
        store: &Store,
        route: &Route,
        d: &Digest,
    ) -> Result<Option<BlobFetch>, MirrorError> {
        // Asked again once the flight is ours: the caller ahead may have
        // stored it meanwhile.
        let stored = || async {
            let size = store.blob_size(&route.local, d).await;
            size.map(|s| s.is_some()).map_err(self.store_err(route))
        };
        if stored().await? {
            return Ok(None);
        }
        let guard = self.flights.enter(format!("b {}", d.hex())).await;
        if stored().await? {
            return Ok(None);
        }
        self.may_ask(route)?;
        let r = self.reference(route, d.as_str());
        let stream = self
            .bounded(route, self.registry.blob_stream(&r, d, 0, None))
            .await;
        let (result, outcome) = match &stream {
            Ok(_) => ("ok", Outcome::Answered),
            Err(MirrorError::Timeout { .. }) => ("timeout", Outcome::Failed),
            Err(MirrorError::Upstream { source, .. }) => match source.remote_kind() {
                Some(RemoteKind::RateLimited { .. }) => ("429", Outcome::RateLimited),
                Some(RemoteKind::Transient) | None => ("error", Outcome::Failed),
                Some(_) => ("refused", Outcome::Answered),
            },
            Err(_) => ("error", Outcome::Failed),
        };
        self.count(store, route, "blob", result);
        self.record(store, route, outcome, Limits::default());
        let upstream = self.host(route).to_string();
        let Some(s) = stream? else {
            return Err(MirrorError::NotFound {
                upstream,
                what: format!("blob {d} of {}", route.repo),
            });
        };
        let io = |source| MirrorError::Io {
            upstream: upstream.clone(),
            source,
        };
        std::fs::create_dir_all(&self.staging).map_err(io)?;
        let tmp = tempfile::NamedTempFile::new_in(&self.staging).map_err(io)?;
        let file = tokio::fs::File::from_std(tmp.reopen().map_err(io)?);
        Ok(Some(BlobFetch {
            _guard: guard,
            len: s.len,
            stream: s.stream,
            tmp,
            file,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            n: 0,
            digest: d.clone(),
            repo: route.repo.clone(),
            upstream,
        }))
    }
}

/// A blob on its way from the upstream: each chunk is written to a
/// staging file and hashed as it passes; [`BlobFetch::finish`] commits it
/// only when the digest matches.
pub struct BlobFetch {
    _guard: tokio::sync::OwnedMutexGuard<()>,
    /// The length the upstream announced.
    pub len: Option<u64>,
    stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, RegistryError>>,
    tmp: tempfile::NamedTempFile,
    file: tokio::fs::File,
    hasher: sha2::Sha256,
    n: u64,
    digest: Digest,
    repo: String,
    upstream: String,
}

impl BlobFetch {
    /// The next chunk, already staged; `None` at the end.
    pub async fn next(&mut self) -> Option<Result<bytes::Bytes, MirrorError>> {
        use futures_util::StreamExt;
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt;
        let chunk = match self.stream.next().await? {
            Ok(c) => c,
            Err(e) => {
                return Some(Err(MirrorError::Upstream {
                    upstream: self.upstream.clone(),
                    source: Box::new(e),
                }))
            }
        };
        self.hasher.update(&chunk);
        self.n += chunk.len() as u64;
        if let Err(source) = self.file.write_all(&chunk).await {
            return Some(Err(MirrorError::Io {
                upstream: self.upstream.clone(),
                source,
            }));
        }
        Some(Ok(chunk))
    }

    /// Verifies what arrived and commits it.
    pub async fn finish(mut self, store: &Store) -> Result<(), MirrorError> {
        use sha2::Digest as _;
        use tokio::io::AsyncWriteExt;
        self.file.flush().await.map_err(|source| MirrorError::Io {
            upstream: self.upstream.clone(),
            source,
        })?;
        let hex = hex::encode(self.hasher.clone().finalize());
        let actual: Digest =
            format!("sha256:{hex}")
                .parse()
                .map_err(|_| MirrorError::NotFound {
                    upstream: self.upstream.clone(),
                    what: "a digest".into(),
                })?;
        if actual != self.digest {
            return Err(MirrorError::Digest {
                upstream: self.upstream.clone(),
                what: format!("blob of {}", self.repo),
                expected: self.digest.clone(),
                actual,
            });
        }
        store
            .commit_blob(&self.digest, self.tmp.path(), self.n)
            .await
            .map_err(|e| MirrorError::Store {
                upstream: self.upstream.clone(),
                source: Box::new(e),
            })
    }
}
