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

use crate::cache_key::CACHE_FORMAT;
use crate::model::LayerSource;
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
    pub layer: Option<(Descriptor, Digest, LayerSource)>,
    /// Execution time of the step that made the entry (0 if unknown).
    pub seconds: f64,
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
        if let (Some(kiln), LayerCache::Registry { repo, .. }) = (self.kiln().await, self) {
            let tags: Vec<String> = keys.iter().map(|k| k.hex().to_string()).collect();
            return match kiln.lookup(repo.repository(), &tags).await {
                Ok(mut r) => keys
                    .iter()
                    .map(|k| match r.entries.remove(k.hex()) {
                        Some(e) => {
                            let r = self.tag_ref(k).unwrap_or_else(|| repo.clone());
                            let bytes = e.manifest.into_bytes();
                            if Digest::sha256_of(&bytes) != e.digest {
                                return Err(CacheError::Corrupt {
                                    key: k.to_string(),
                                    message: format!("manifest does not hash to {}", e.digest),
                                });
                            }
                            self.parse_entry(k, &bytes, LayerSource::Remote(r))
                        }
                        None => Ok(None),
                    })
                    .collect(),
                Err(e) => {
                    let msg = e.to_string();
                    keys.iter()
                        .map(|k| {
                            Err(CacheError::Corrupt {
                                key: k.to_string(),
                                message: format!("batch lookup failed: {msg}"),
                            })
                        })
                        .collect()
                }
            };
        }
        futures_util::future::join_all(keys.iter().map(|k| self.lookup(k))).await
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
        let layer = match m.layers.first() {
            None => None,
            Some(d) => {
                let diff_id: Digest = ann
                    .get(ANN_DIFF_ID)
                    .ok_or_else(|| corrupt("layer without diff id".into()))?
                    .parse()
                    .map_err(|e: kiln_common::digest::DigestError| corrupt(e.to_string()))?;
                Some((d.clone(), diff_id, source))
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
        }))
    }

    /// Stores an entry. The layer blob goes first: the tag that makes the entry
    /// visible is written only once its layer is complete.
    pub async fn store(
        &self,
        key: &Digest,
        layer: Option<(&Path, &Descriptor, &Digest)>,
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
        if let Some((_, _, diff_id)) = layer {
            ann.insert(ANN_DIFF_ID.into(), diff_id.to_string());
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
            layers: layer.map(|(_, d, _)| vec![d.clone()]).unwrap_or_default(),
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
                if let Some((path, d, _)) = layer {
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
                if let Some((path, d, _)) = layer {
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

/// What one build's steps were keyed on, kept per destination so that the
/// next build's first miss in each stage can say which input changed.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct BuildRecord {
    pub format: String,
    pub steps: Vec<RecordedStep>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct RecordedStep {
    pub stage: String,
    /// Index among the stage's filesystem steps.
    pub index: usize,
    pub line: usize,
    pub key: Digest,
    pub inputs: Vec<(String, String)>,
}

impl LayerCache {
    fn record_tag(destination: &str) -> String {
        format!(
            "last-{}",
            &Digest::sha256_of(destination.as_bytes()).hex()[..40]
        )
    }

    /// The record of the last build of `destination`, if any; errors are `None`
    /// (an explanation is a nicety, never a reason to fail). `tmp_dir` is the
    /// build's own directory: never `/tmp`, which may be the image's while a
    /// step runs in the container's root.
    pub async fn load_record(&self, destination: &str, tmp_dir: &Path) -> Option<BuildRecord> {
        let tag = Self::record_tag(destination);
        let bytes = match self {
            LayerCache::Registry { registry, repo, .. } => {
                let r = Reference::with_tag(
                    repo.registry().to_string(),
                    repo.repository().to_string(),
                    tag,
                );
                let (m, _) = registry.get_manifest(&r).await.ok()??;
                let m: Manifest = serde_json::from_slice(&m).ok()?;
                let tmp = tempfile::NamedTempFile::new_in(tmp_dir).ok()?;
                registry.fetch_blob(&r, &m.config, tmp.path()).await.ok()?;
                std::fs::read(tmp.path()).ok()?
            }
            LayerCache::Layout { dir, .. } => std::fs::read(dir.join("entries").join(tag)).ok()?,
        };
        serde_json::from_slice::<BuildRecord>(&bytes)
            .ok()
            .filter(|r| r.format == CACHE_FORMAT)
    }

    pub async fn store_record(
        &self,
        destination: &str,
        record: &BuildRecord,
    ) -> Result<(), CacheError> {
        let tag = Self::record_tag(destination);
        let bytes = serde_json::to_vec(record).map_err(|e| CacheError::Corrupt {
            key: tag.clone(),
            message: e.to_string(),
        })?;
        match self {
            LayerCache::Registry { registry, repo, .. } => {
                let r = Reference::with_tag(
                    repo.registry().to_string(),
                    repo.repository().to_string(),
                    tag,
                );
                let rerr = |e| CacheError::Registry {
                    repo: self.describe(),
                    source: Box::new(e),
                };
                let d = registry.push_blob_bytes(&r, &bytes).await.map_err(rerr)?;
                let m = Manifest {
                    schema_version: 2,
                    media_type: Some(image::OCI_MANIFEST.into()),
                    config: Descriptor::new(CONFIG_MEDIA_TYPE, d, bytes.len() as u64),
                    layers: Vec::new(),
                    annotations: None,
                };
                let mb = serde_json::to_vec(&m).map_err(|e| CacheError::Corrupt {
                    key: "record".into(),
                    message: e.to_string(),
                })?;
                registry
                    .push_manifest(&r, mb, image::OCI_MANIFEST)
                    .await
                    .map_err(rerr)?;
            }
            LayerCache::Layout { dir, .. } => {
                let entries = dir.join("entries");
                std::fs::create_dir_all(&entries).map_err(|source| CacheError::Io {
                    path: entries.clone(),
                    source,
                })?;
                write_atomic(&entries.join(tag), &bytes).map_err(|source| CacheError::Io {
                    path: entries.clone(),
                    source,
                })?;
            }
        }
        Ok(())
    }
}

/// Says which inputs differ between a step's previous and current inputs.
pub fn explain(previous: &[(String, String)], current: &[(String, String)]) -> String {
    let mut out = Vec::new();
    for (name, value) in current {
        if name == "previous" {
            continue;
        }
        match previous.iter().find(|(n, _)| n == name) {
            Some((_, old)) if old == value => {}
            Some((_, old)) => out.push(format!("{name}: {} -> {}", short(old), short(value))),
            None => out.push(format!("{name}: (new) {}", short(value))),
        }
    }
    for (name, value) in previous {
        if !current.iter().any(|(n, _)| n == name) {
            out.push(format!("{name}: {} -> (gone)", short(value)));
        }
    }
    if out.is_empty() {
        "the step's own inputs are unchanged: an earlier input of the stage (its base image) changed, or the entry expired or was evicted".into()
    } else {
        out.join("; ")
    }
}

fn short(s: &str) -> String {
    if s.chars().count() > 100 {
        format!("{:?}…", s.chars().take(100).collect::<String>())
    } else {
        format!("{s:?}")
    }
}

fn copy_atomic(src: &Path, dest: &Path) -> std::io::Result<()> {
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
