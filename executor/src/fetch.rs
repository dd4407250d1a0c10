//! The one way a layer reaches the build's blob store, whatever its source,
//! and the unpacking of layers into a root. Every source but the store itself
//! is untrusted: registry blobs are hashed while they stream
//! ([`Registry::fetch_blob_progress`]); blobs in shared directories are
//! committed by [`commit_verified`]. The build, the cache hits and the
//! outputs all go through [`LayerFetcher::ensure_local`], so no path hands
//! on an unverified blob.

use crate::blobs::BlobStore;
use crate::model::{ImageLayer, LayerSource};
use kiln_common::digest::{commit_verified, CommitError};
use kiln_common::registry::{Landed, LandedTx, Registry, RegistryError};
use kiln_common::Digest;
use kiln_layers::extract::{self, Extent, ExtractError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("layer {digest} is missing from the build's blob store")]
    Missing { digest: Digest },
    #[error("importing layer {digest} from {}", dir.display())]
    Import {
        digest: Digest,
        dir: PathBuf,
        #[source]
        source: CommitError,
    },
    #[error("pulling layer {digest} from {image}")]
    Pull {
        digest: Digest,
        image: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("extracting layer {digest} of {image}")]
    Extract {
        digest: Digest,
        image: String,
        #[source]
        source: Box<ExtractError>,
    },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl FetchError {
    /// The digest did not match: the source is corrupt or was tampered with.
    pub fn is_mismatch(&self) -> bool {
        matches!(
            self,
            FetchError::Import {
                source: CommitError::Mismatch { .. },
                ..
            }
        )
    }
}

/// Brings layers into one build's blob store and counts what it downloads.
pub struct LayerFetcher {
    registry: Arc<Registry>,
    store: BlobStore,
    pulled: AtomicU64,
    /// `--image-fs-extract-retry`: how often an extraction that failed on
    /// I/O is tried again (a hostile entry never is).
    extract_retries: u32,
    /// One download per digest: stages running at once and the base
    /// prefetch may want the same layer; the later callers wait for it.
    inflight: crate::gates::Gates<Digest>,
}

impl LayerFetcher {
    pub fn new(registry: Arc<Registry>, store: BlobStore, extract_retries: u32) -> LayerFetcher {
        LayerFetcher {
            registry,
            store,
            pulled: AtomicU64::new(0),
            extract_retries,
            inflight: Default::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn store(&self) -> &BlobStore {
        &self.store
    }

    /// Layer bytes downloaded from registries so far.
    pub fn pulled(&self) -> u64 {
        self.pulled.load(Ordering::Relaxed)
    }

    /// The layer's blob in the build's store, verified; `progress` counts
    /// downloaded bytes for a progress bar.
    pub async fn ensure_local(
        &self,
        l: &ImageLayer,
        progress: Option<&AtomicU64>,
    ) -> Result<PathBuf, FetchError> {
        self.fetch_layer(l, progress, None).await
    }

    /// [`ensure_local`](Self::ensure_local), telling `follow` how far a
    /// download has got (a remote blob), so it can be read as it lands.
    async fn fetch_layer(
        &self,
        l: &ImageLayer,
        progress: Option<&AtomicU64>,
        follow: Option<&LandedTx>,
    ) -> Result<PathBuf, FetchError> {
        let digest = &l.descriptor.digest;
        let p = self.store.path(digest);
        if p.is_file() {
            return Ok(p);
        }
        let gate = self.inflight.gate(digest);
        let _one = gate.lock().await;
        if p.is_file() {
            // Another fetch (the base prefetch, another stage) brought it.
            if let Some(c) = progress {
                c.fetch_add(l.descriptor.size, Ordering::Relaxed);
            }
            return Ok(p);
        }
        match &l.source {
            LayerSource::Local => Err(FetchError::Missing {
                digest: digest.clone(),
            }),
            LayerSource::Path(dir) => {
                let src = dir.join(digest.hex());
                let (dir, src, dest, want) = (dir.clone(), src, p.clone(), digest.clone());
                tokio::task::spawn_blocking(move || {
                    commit_verified(&src, &dest, &want).map_err(|source| FetchError::Import {
                        digest: want.clone(),
                        dir,
                        source,
                    })
                })
                .await
                .map_err(|e| FetchError::Io {
                    op: "importing",
                    path: p.clone(),
                    source: std::io::Error::other(e),
                })??;
                Ok(p)
            }
            LayerSource::Remote(r) => {
                self.pulled.fetch_add(l.descriptor.size, Ordering::Relaxed);
                self.registry
                    .fetch_blob_progress(r, &l.descriptor, &p, progress, follow)
                    .await
                    .map_err(|source| FetchError::Pull {
                        digest: digest.clone(),
                        image: r.whole(),
                        source: Box::new(source),
                    })?;
                Ok(p)
            }
        }
    }

    /// Fetches `layers` concurrently (with progress on a terminal) and
    /// applies them in order to `root`, each extracted as its bytes arrive
    /// ([`crate::follow`]): the download and the extraction overlap, and
    /// each byte is read once more, from the page cache, not from the
    /// network again. `root` is only good when this returns `Ok`: a layer
    /// that fails its digest fails the whole call.
    pub async fn unpack(
        &self,
        root: &Path,
        layers: &[ImageLayer],
        image: &str,
    ) -> Result<(), FetchError> {
        self.unpack_as(root, layers, image, &Extent::Full)
            .await
            .map(drop)
    }

    /// [`Fetcher::unpack`], each layer written as `extent` says; returns
    /// the files [`Extent::Skeleton`] left out, in layer order.
    pub async fn unpack_as(
        &self,
        root: &Path,
        layers: &[ImageLayer],
        image: &str,
        extent: &Extent,
    ) -> Result<Vec<PathBuf>, FetchError> {
        let total: u64 = layers
            .iter()
            .filter(|l| !self.store.has(&l.descriptor.digest))
            .map(|l| l.descriptor.size)
            .sum();
        let progress = crate::progress::Progress::start(&format!("pulling {image}"), total);
        let (txs, rxs): (Vec<_>, Vec<_>) = layers
            .iter()
            .map(|_| tokio::sync::watch::channel(Landed::default()))
            .unzip();
        // Each sender moves into its fetch: a fetch dropped because another
        // failed ends its follower with an error instead of a wait.
        let fetches = layers.iter().zip(txs).map(|(l, tx)| {
            let counter = progress.counter();
            async move {
                let res = self.fetch_layer(l, counter, Some(&tx)).await;
                let landed = res.as_ref().ok().map(|p| {
                    let len = std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
                    (p.clone(), len)
                });
                // The blob's final path (a download was renamed into it).
                tx.send_modify(|s| match landed {
                    Some((p, len)) => {
                        s.path = Some(p);
                        s.flushed = len;
                        s.done = Some(true);
                    }
                    None => s.done = Some(false),
                });
                res
            }
        });
        let applies = async {
            let mut skipped = Vec::new();
            for (l, rx) in layers.iter().zip(rxs) {
                let stats = self.apply_following(root, l, rx, image, extent).await?;
                skipped.extend(stats.skipped);
            }
            Ok::<Vec<PathBuf>, FetchError>(skipped)
        };
        let (fetched, applied) =
            futures_util::future::join(futures_util::future::try_join_all(fetches), applies).await;
        progress.finish();
        fetched?;
        applied
    }

    /// Applies a layer while it is fetched. An extraction that fails for a
    /// reason other than hostile content is tried again from the complete
    /// blob, once it is verified; the streamed try is the first of the
    /// attempts `--image-fs-extract-retry` allows.
    async fn apply_following(
        &self,
        root: &Path,
        l: &ImageLayer,
        mut rx: tokio::sync::watch::Receiver<Landed>,
        image: &str,
        extent: &Extent,
    ) -> Result<extract::ExtractStats, FetchError> {
        let blob = self.store.path(&l.descriptor.digest);
        let follow = crate::follow::Follow::new(
            rx.clone(),
            tokio::runtime::Handle::current(),
            l.descriptor.digest.clone(),
        );
        let first = self.extract_once(root, &blob, follow, extent).await?;
        let verified = first.is_ok()
            || rx
                .wait_for(|s| s.done.is_some())
                .await
                .is_ok_and(|s| s.done == Some(true));
        self.retry_extraction((root, extent), l, &blob, image, first, verified)
            .await
    }

    /// Applies one layer blob to a root. I/O failures are retried; a hostile
    /// entry (a path or link leaving the root) never is.
    pub async fn apply(
        &self,
        root: &Path,
        l: &ImageLayer,
        blob: &Path,
        image: &str,
    ) -> Result<(), FetchError> {
        let full = Extent::Full;
        let first = self.extract_from_file(root, blob, &full).await?;
        self.retry_extraction((root, &full), l, blob, image, first, true)
            .await
            .map(drop)
    }

    /// After a first try, `first`: retries from the blob file while the
    /// failure is not hostile, the blob is `verified` and attempts remain.
    /// `into`: the root and how much of the layer goes into it.
    async fn retry_extraction(
        &self,
        (root, extent): (&Path, &Extent),
        l: &ImageLayer,
        blob: &Path,
        image: &str,
        first: Result<extract::ExtractStats, ExtractError>,
        verified: bool,
    ) -> Result<extract::ExtractStats, FetchError> {
        let mut res = first;
        let mut attempt = 0;
        loop {
            match res {
                Ok(stats) => return Ok(stats),
                Err(e) if verified && attempt < self.extract_retries && !e.is_hostile() => {
                    attempt += 1;
                    tracing::warn!(
                        "extracting {}: {}; retrying",
                        l.descriptor.digest,
                        kiln_common::report::Report(&e)
                    );
                    res = self.extract_from_file(root, blob, extent).await?;
                }
                Err(source) => {
                    return Err(FetchError::Extract {
                        digest: l.descriptor.digest.clone(),
                        image: image.to_string(),
                        source: Box::new(source),
                    })
                }
            }
        }
    }

    async fn extract_from_file(
        &self,
        root: &Path,
        blob: &Path,
        extent: &Extent,
    ) -> Result<Result<extract::ExtractStats, ExtractError>, FetchError> {
        let f = std::fs::File::open(blob).map_err(|source| FetchError::Io {
            op: "opening",
            path: blob.to_path_buf(),
            source,
        })?;
        self.extract_once(root, blob, f, extent).await
    }

    /// One extraction of `r` (the bytes of `blob`) on a blocking thread;
    /// the outer error is the thread's, the inner the extraction's.
    async fn extract_once<R: std::io::Read + Send + 'static>(
        &self,
        root: &Path,
        blob: &Path,
        r: R,
        extent: &Extent,
    ) -> Result<Result<extract::ExtractStats, ExtractError>, FetchError> {
        let root = root.to_path_buf();
        let extent = extent.clone();
        tokio::task::spawn_blocking(move || extract::apply_layer_as(&root, r, &extent))
            .await
            .map_err(|e| FetchError::Io {
                op: "extracting",
                path: blob.to_path_buf(),
                source: std::io::Error::other(e),
            })
    }
}
