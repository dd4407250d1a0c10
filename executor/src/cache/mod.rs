//! The shared layer cache (`--cache --cache-repo`).
//!
//! Each entry is an ordinary OCI image manifest tagged with the step's key:
//! its config blob records the key's inputs (so a miss can be explained and
//! any client can inspect it), its one layer is the step's layer (none when the
//! step changed no file), and an annotation holds the layer's diff id so a hit
//! needs no layer bytes at all.
//!
//! Semantics of [`LayerCache::lookup`]: `Ok(Some)` is a hit, `Ok(None)` a miss
//! (absent, expired, or written by another cache format), `Err` means the
//! cache could not answer — the caller warns, counts it, and treats the step as
//! a miss; a cache never fails a build.

mod chain;
mod record;

pub use chain::CacheChain;
pub use record::{explain, BuildRecord, RecordedStep};

use crate::cache_key::CACHE_FORMAT;
use crate::model::{ImageLayer, LayerSource};
use crate::outline;
use kiln_common::cache_api::{BuildReport, KilnClient};
use kiln_common::image::{self, Descriptor, Manifest};
use kiln_common::layout::write_atomic;
use kiln_common::registry::{Registry, RegistryError};
use kiln_common::Digest;
use oci_client::Reference;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.kiln.cache.config.v1+json";
const ANN_CREATED: &str = "dev.kiln.cache.created";
const ANN_DIFF_ID: &str = "dev.kiln.cache.diff-id";
const ANN_FORMAT: &str = "dev.kiln.cache.format";
/// How long the step took to execute: what a hit saves.
const ANN_SECONDS: &str = "dev.kiln.cache.seconds";

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cache repository {repo}")]
    Registry {
        repo: String,
        source: Box<RegistryError>,
    },
    #[error("cache layout {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache entry {key}: {message}")]
    Corrupt { key: String, message: String },
}

/// What a cached step produced.
#[derive(Debug, Clone)]
pub struct CacheHit {
    pub key: Digest,
    /// `None` when the step changed no file.
    pub layer: Option<ImageLayer>,
    /// Execution time of the step that made the entry (0 if unknown).
    pub seconds: f64,
    /// The read-only repository (`--cache-from`) the entry came from;
    /// `None` when the written one (`--cache-repo`) had it.
    pub from: Option<Fallback>,
    /// The entry's manifest as stored (its digest was checked where the
    /// answer came with one): recorded as it is into the written repository
    /// when the entry came from a fallback.
    pub manifest: Vec<u8>,
    /// Who wrote it, where a Kiln cache server recorded it.
    pub writer: Option<kiln_common::cache_api::Writer>,
}

/// A repository a hit came from other than the one written to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fallback {
    /// As [`LayerCache::describe`] names it.
    pub name: String,
    /// Its registry repository (`None` for an `oci:` layout).
    pub repo: Option<Reference>,
    /// Its directory, for an `oci:` layout.
    pub dir: Option<PathBuf>,
}

/// The inputs a key was made of, kept in the entry's config.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EntryConfig {
    pub format: String,
    pub key: Digest,
    pub created: String,
    pub inputs: Vec<(String, String)>,
}

/// One narrow seam: where cache entries live.
pub enum LayerCache {
    Registry {
        registry: Arc<Registry>,
        repo: Reference,
        ttl: Option<Duration>,
        /// Set once the host has been asked whether it is a Kiln cache
        /// server, whose batch lookup answers a whole build in one request.
        kiln: Box<tokio::sync::OnceCell<Option<KilnClient>>>,
    },
    Layout {
        dir: PathBuf,
        ttl: Option<Duration>,
    },
}

impl LayerCache {
    /// `--cache-repo`: `oci:/path` for a local OCI layout, else a registry repository.
    pub fn open(
        spec: &str,
        registry: Arc<Registry>,
        ttl: Option<Duration>,
    ) -> Result<LayerCache, CacheError> {
        if let Some(p) = spec.strip_prefix("oci:") {
            let dir = PathBuf::from(p);
            std::fs::create_dir_all(dir.join("blobs/sha256")).map_err(|source| CacheError::Io {
                path: dir.clone(),
                source,
            })?;
            std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(
                |source| CacheError::Io {
                    path: dir.clone(),
                    source,
                },
            )?;
            return Ok(LayerCache::Layout { dir, ttl });
        }
        let repo =
            kiln_common::registry::parse_reference(spec).map_err(|e| CacheError::Registry {
                repo: spec.to_string(),
                source: Box::new(e),
            })?;
        Ok(LayerCache::Registry {
            registry,
            repo,
            ttl,
            kiln: Box::default(),
        })
    }

    /// The registry and repository behind a registry cache (`None` for `oci:`).
    pub fn registry_repo(&self) -> Option<(Arc<Registry>, Reference)> {
        match self {
            LayerCache::Registry { registry, repo, .. } => Some((registry.clone(), repo.clone())),
            LayerCache::Layout { .. } => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            LayerCache::Registry { repo, .. } => {
                format!("{}/{}", repo.registry(), repo.repository())
            }
            LayerCache::Layout { dir, .. } => format!("oci:{}", dir.display()),
        }
    }

    fn ttl(&self) -> Option<Duration> {
        match self {
            LayerCache::Registry { ttl, .. } | LayerCache::Layout { ttl, .. } => *ttl,
        }
    }

    fn tag_ref(&self, key: &Digest) -> Option<Reference> {
        match self {
            LayerCache::Registry { repo, .. } => Some(Reference::with_tag(
                repo.registry().to_string(),
                repo.repository().to_string(),
                key.hex().to_string(),
            )),
            LayerCache::Layout { .. } => None,
        }
    }

    pub async fn lookup(&self, key: &Digest) -> Result<Option<CacheHit>, CacheError> {
        let (bytes, source) = match self {
            LayerCache::Registry { registry, repo, .. } => {
                let r = self.tag_ref(key).unwrap_or_else(|| repo.clone());
                match registry.get_manifest(&r).await {
                    Ok(Some((b, _))) => (b, LayerSource::Remote(r)),
                    Ok(None) => return Ok(None),
                    Err(e) => {
                        return Err(CacheError::Registry {
                            repo: self.describe(),
                            source: Box::new(e),
                        })
                    }
                }
            }
            LayerCache::Layout { dir, .. } => {
                let p = dir.join("entries").join(key.hex());
                match std::fs::read(&p) {
                    Ok(b) => (b, LayerSource::Path(dir.join("blobs/sha256"))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                    Err(source) => return Err(CacheError::Io { path: p, source }),
                }
            }
        };
        self.parse_entry(key, &bytes, source)
    }

    /// The Kiln cache server behind this cache, if it is one.
    async fn kiln(&self) -> Option<&KilnClient> {
        match self {
            LayerCache::Registry {
                registry,
                repo,
                kiln,
                ..
            } => kiln
                .get_or_init(|| async {
                    let c = KilnClient::discover(registry, repo.registry()).await;
                    if c.is_some() {
                        tracing::info!(
                            "cache {} is a Kiln cache server: using batch lookups",
                            self.describe()
                        );
                    }
                    c
                })
                .await
                .as_ref(),
            LayerCache::Layout { .. } => None,
        }
    }

    /// Looks up every key: one request against a Kiln cache server, else
    /// one concurrent lookup per key. Results are in the order of `keys`.
    pub async fn lookup_many(&self, keys: &[Digest]) -> Vec<Result<Option<CacheHit>, CacheError>> {
        match self.lookup_batch(&[], keys).await {
            Some(r) => r,
            None => futures_util::future::join_all(keys.iter().map(|k| self.lookup(k))).await,
        }
    }

    /// This cache as a fallback of another: what a hit from it records.
    pub fn as_fallback(&self) -> Fallback {
        Fallback {
            name: self.describe(),
            repo: self.registry_repo().map(|(_, r)| r),
            dir: match self {
                LayerCache::Layout { dir, .. } => Some(dir.clone()),
                LayerCache::Registry { .. } => None,
            },
        }
    }

    /// One batch request for the whole chain — this repository, then
    /// `fallbacks` in order — where this is a Kiln cache server that chains
    /// lookups and every fallback is a repository on the same server;
    /// `None` otherwise (the caller asks each repository in turn).
    pub async fn lookup_batch(
        &self,
        fallbacks: &[&LayerCache],
        keys: &[Digest],
    ) -> Option<Vec<Result<Option<CacheHit>, CacheError>>> {
        let LayerCache::Registry { repo, .. } = self else {
            return None;
        };
        let kiln = self.kiln().await?;
        let mut names = Vec::new();
        for f in fallbacks {
            match f.registry_repo() {
                Some((_, r)) if kiln.fallbacks && r.registry() == repo.registry() => {
                    names.push(r.repository().to_string())
                }
                _ => return None,
            }
        }
        let tags: Vec<String> = keys.iter().map(|k| k.hex().to_string()).collect();
        let mut r = match kiln.lookup(repo.repository(), &names, &tags).await {
            Ok(r) => r,
            Err(e) => {
                let msg = e.to_string();
                let failed = keys.iter().map(|k| {
                    Err(CacheError::Corrupt {
                        key: k.to_string(),
                        message: format!("batch lookup failed: {msg}"),
                    })
                });
                return Some(failed.collect());
            }
        };
        let answer = |k: &Digest| {
            let Some(e) = r.entries.remove(k.hex()) else {
                return Ok(None);
            };
            let fallback = match &e.repository {
                None => None,
                Some(name) => match fallbacks.iter().find(|f| {
                    f.registry_repo()
                        .is_some_and(|(_, r)| r.repository() == name)
                }) {
                    Some(f) => Some(f.as_fallback()),
                    // An answer from a repository not asked: not trusted.
                    None => return Ok(None),
                },
            };
            let from_repo = fallback
                .as_ref()
                .and_then(|f| f.repo.clone())
                .unwrap_or_else(|| repo.clone());
            let tag = Reference::with_tag(
                from_repo.registry().to_string(),
                from_repo.repository().to_string(),
                k.hex().to_string(),
            );
            let writer = e.writer.filter(|w| w.digest == e.digest);
            let bytes = e.manifest.into_bytes();
            if Digest::sha256_of(&bytes) != e.digest {
                return Err(CacheError::Corrupt {
                    key: k.to_string(),
                    message: format!("manifest does not hash to {}", e.digest),
                });
            }
            let hit = self.parse_entry(k, &bytes, LayerSource::Remote(tag))?;
            Ok(hit.map(|h| CacheHit {
                from: fallback,
                writer,
                ..h
            }))
        };
        Some(keys.iter().map(answer).collect())
    }

    /// Tells a Kiln cache server how this build used it (for its metrics).
    pub async fn report(&self, result: &crate::outcome::BuildResult) {
        if let (Some(kiln), LayerCache::Registry { repo, .. }) = (self.kiln().await, self) {
            let r = BuildReport {
                repository: repo.repository().to_string(),
                hits: result.cache_hits,
                misses: result.cache_misses,
                seconds_saved: result.seconds_saved,
                bytes_saved: result.bytes_saved,
                first_miss: result
                    .first_miss
                    .as_ref()
                    .map(|m| crate::summary::step_name(m.line, &m.instruction)),
            };
            if let Err(e) = kiln.report(&r).await {
                tracing::warn!(
                    "could not report build figures to the cache server: {}",
                    kiln_common::report::Report(&e)
                );
            }
        }
    }

    fn parse_entry(
        &self,
        key: &Digest,
        bytes: &[u8],
        source: LayerSource,
    ) -> Result<Option<CacheHit>, CacheError> {
        let corrupt = |message: String| CacheError::Corrupt {
            key: key.to_string(),
            message,
        };
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        let ann = m.annotations.clone().unwrap_or_default();
        if ann.get(ANN_FORMAT).map(String::as_str) != Some(CACHE_FORMAT) {
            return Ok(None);
        }
        let created = ann
            .get(ANN_CREATED)
            .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
            .map(|c| c.with_timezone(&chrono::Utc))
            .ok_or_else(|| corrupt("no creation time".into()))?;
        if let Some(ttl) = self.ttl() {
            let age = chrono::Utc::now().signed_duration_since(created);
            if age.to_std().is_ok_and(|a| a > ttl) {
                tracing::info!(
                    "cache entry {} expired ({}s old)",
                    &key.hex()[..12],
                    age.num_seconds()
                );
                return Ok(None);
            }
        }
        // The layer first; its outline (if any) after it.
        let layer = match m.layers.first() {
            None => None,
            Some(d) => {
                let diff_id: Digest = ann
                    .get(ANN_DIFF_ID)
                    .ok_or_else(|| corrupt("layer without diff id".into()))?
                    .parse()
                    .map_err(|e: kiln_common::digest::DigestError| corrupt(e.to_string()))?;
                Some(ImageLayer {
                    descriptor: d.clone(),
                    diff_id,
                    source,
                    outline: m.layers.get(1).filter(|o| outline::is_outline(o)).cloned(),
                })
            }
        };
        let seconds = ann
            .get(ANN_SECONDS)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0.0);
        Ok(Some(CacheHit {
            key: key.clone(),
            layer,
            seconds,
            from: None,
            manifest: bytes.to_vec(),
            writer: None,
        }))
    }

    /// Stores an entry. The layer blob (and its outline) go first: the tag
    /// that makes the entry visible is written only once they are complete.
    pub async fn store(
        &self,
        key: &Digest,
        layer: Option<&EntryLayer>,
        inputs: Vec<(String, String)>,
        seconds: Option<f64>,
    ) -> Result<(), CacheError> {
        let created = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let config = EntryConfig {
            format: CACHE_FORMAT.into(),
            key: key.clone(),
            created: created.clone(),
            inputs,
        };
        let config_bytes = serde_json::to_vec(&config).map_err(|e| CacheError::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        let mut ann = BTreeMap::from([
            (ANN_CREATED.to_string(), created),
            (ANN_FORMAT.to_string(), CACHE_FORMAT.to_string()),
        ]);
        if let Some(l) = layer {
            ann.insert(ANN_DIFF_ID.into(), l.diff_id.to_string());
        }
        if let Some(s) = seconds {
            ann.insert(ANN_SECONDS.into(), format!("{s:.3}"));
        }
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(image::OCI_MANIFEST.into()),
            config: Descriptor::new(
                CONFIG_MEDIA_TYPE,
                Digest::sha256_of(&config_bytes),
                config_bytes.len() as u64,
            ),
            layers: layer.map(EntryLayer::descriptors).unwrap_or_default(),
            annotations: Some(ann),
        };
        let manifest_bytes = serde_json::to_vec(&manifest).map_err(|e| CacheError::Corrupt {
            key: key.to_string(),
            message: e.to_string(),
        })?;
        match self {
            LayerCache::Registry { registry, .. } => {
                let r = self.tag_ref(key).ok_or_else(|| CacheError::Corrupt {
                    key: key.to_string(),
                    message: "no tag".into(),
                })?;
                let rerr = |e| CacheError::Registry {
                    repo: self.describe(),
                    source: Box::new(e),
                };
                for (path, d) in layer.iter().flat_map(|l| l.blobs()) {
                    if !registry.blob_exists(&r, &d.digest).await.map_err(rerr)? {
                        registry
                            .push_blob_file(&r, path, &d.digest, d.size)
                            .await
                            .map_err(rerr)?;
                    }
                }
                registry
                    .push_blob_bytes(&r, &config_bytes)
                    .await
                    .map_err(rerr)?;
                registry
                    .push_manifest(&r, manifest_bytes, image::OCI_MANIFEST)
                    .await
                    .map_err(rerr)?;
            }
            LayerCache::Layout { dir, .. } => {
                let io = |source| CacheError::Io {
                    path: dir.clone(),
                    source,
                };
                let blobs = dir.join("blobs/sha256");
                for (path, d) in layer.iter().flat_map(|l| l.blobs()) {
                    copy_atomic(path, &blobs.join(d.digest.hex())).map_err(io)?;
                }
                write_atomic(
                    &blobs.join(Digest::sha256_of(&config_bytes).hex()),
                    &config_bytes,
                )
                .map_err(io)?;
                write_atomic(
                    &blobs.join(Digest::sha256_of(&manifest_bytes).hex()),
                    &manifest_bytes,
                )
                .map_err(io)?;
                let entries = dir.join("entries");
                std::fs::create_dir_all(&entries).map_err(io)?;
                write_atomic(&entries.join(key.hex()), &manifest_bytes).map_err(io)?;
            }
        }
        Ok(())
    }
}

/// A layer to store with an entry: its blob and, if written, its outline's.
#[derive(Debug, Clone)]
pub struct EntryLayer {
    pub path: PathBuf,
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub outline: Option<(PathBuf, Descriptor)>,
}

impl EntryLayer {
    /// The manifest's layers: the layer, then its outline.
    fn descriptors(&self) -> Vec<Descriptor> {
        self.blobs().map(|(_, d)| d.clone()).collect()
    }

    fn blobs(&self) -> impl Iterator<Item = (&Path, &Descriptor)> {
        std::iter::once((self.path.as_path(), &self.descriptor))
            .chain(self.outline.iter().map(|(p, d)| (p.as_path(), d)))
    }
}

pub(crate) fn copy_atomic(src: &Path, dest: &Path) -> std::io::Result<()> {
    if dest.exists() {
        return Ok(());
    }
    let dir = dest.parent().unwrap_or(Path::new("."));
    let t = tempfile::NamedTempFile::new_in(dir)?;
    std::fs::copy(src, t.path())?;
    t.as_file().sync_all()?;
    t.persist(dest).map_err(|e| e.error)?;
    Ok(())
}
