//! Pre-pulls base images into a shared cache directory (one OCI layout, see
//! [`kiln_common::layout`]) so builds start without pulling.
//!
//! Unlike kaniko's warmer: blobs shared by several images are stored once;
//! images and layers are fetched in parallel (bounded), verified while
//! streamed and renamed into place; expired entries are re-checked with a HEAD
//! (which Docker Hub does not count as a pull) and refetched only when the
//! tag moved; unused entries and unreferenced blobs are removed.

use kiln_common::dockerfile::{Dockerfile, Kind};
use kiln_common::image::{Descriptor, Platform};
use kiln_common::layout::{CacheDir, LayoutError};
use kiln_common::registry::{parse_reference, Registry, RegistryError};
use kiln_common::shell_lex::Lexer;
use kiln_common::Digest;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

mod push;
pub mod pushgateway;
mod retention;
mod through;
pub use push::push_to;
pub use pushgateway::metrics_text;
pub use retention::{retain, Retention};
pub use through::warm_through;

#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    #[error(transparent)]
    Layout(#[from] LayoutError),
    #[error("{image}")]
    Registry {
        image: String,
        source: Box<RegistryError>,
    },
    #[error(transparent)]
    Dockerfile(#[from] kiln_common::dockerfile::ParseError),
    #[error("keeping the layers of {image} extracted")]
    Extract {
        image: String,
        #[source]
        source: Box<kiln_layers::lowers::LowerError>,
    },
    #[error("decoding warmed {what} {digest}")]
    Decode {
        what: &'static str,
        digest: Digest,
        #[source]
        source: serde_json::Error,
    },
    #[error("{image}: layer {digest} is missing")]
    LayerMissing { image: String, digest: Digest },
    #[error("{image}: layer {expected} arrived as {actual}")]
    LayerDigest {
        image: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{path}:{line}: {message}")]
    From {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct WarmOptions {
    pub cache_dir: PathBuf,
    pub images: Vec<String>,
    pub platforms: Vec<Platform>,
    /// Entries younger than this are used without asking the registry.
    pub ttl: Duration,
    pub force: bool,
    /// Images fetched at once.
    pub jobs: usize,
    /// Layer downloads at once, across all images.
    pub layer_jobs: usize,
    /// Also keep every layer extracted (`extracted/sha256/<diff id>`), for
    /// builds that stack their root on them ([`kiln_layers::lowers`]).
    pub extract_layers: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageReport {
    pub image: String,
    pub platform: String,
    /// `fetched`, `fresh` (no registry call), `unchanged` (a HEAD said so),
    /// `warmed` (pulled through a mirror, `--warm-mirror`) or `failed`.
    pub status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<Digest>,
    pub bytes_fetched: u64,
    pub bytes_reused: u64,
    /// Layers extracted by this run (`--extract-layers`).
    #[serde(skip_serializing_if = "is_zero")]
    pub layers_extracted: usize,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl ImageReport {
    /// The report of `image` for `platform` before anything is known: failed
    /// until the warm says otherwise.
    fn failed(image: String, platform: String) -> ImageReport {
        ImageReport {
            image,
            platform,
            status: "failed".into(),
            manifest: None,
            bytes_fetched: 0,
            bytes_reused: 0,
            layers_extracted: 0,
            seconds: 0.0,
            error: None,
        }
    }
}

/// Every stage's base image in a Dockerfile, with global ARGs (and
/// `--build-arg` values) resolved; stage aliases and `scratch` are skipped.
pub fn images_from_dockerfile(
    path: &Path,
    build_args: &[(String, String)],
) -> Result<Vec<String>, WarmError> {
    let df = Dockerfile::from_path(path)?;
    let lexer = Lexer::new(df.escape);
    let mut vars: Vec<(String, String)> = Vec::new();
    for ins in &df.global_args {
        if let Kind::Arg(list) = &ins.kind {
            for (name, default) in list {
                let v = match build_args.iter().rev().find(|(k, _)| k == name) {
                    Some((_, v)) => v.clone(),
                    None => match default {
                        Some(d) => lexer.process_word(d, &vars).map_err(|e| WarmError::From {
                            path: path.to_path_buf(),
                            line: ins.line,
                            message: kiln_common::report::Report(&e).to_string(),
                        })?,
                        None => String::new(),
                    },
                };
                vars.push((name.clone(), v));
            }
        }
    }
    let mut out = Vec::new();
    let mut aliases = HashSet::new();
    for s in &df.stages {
        let base = lexer
            .process_word(&s.base, &vars)
            .map_err(|e| WarmError::From {
                path: path.to_path_buf(),
                line: s.line,
                message: kiln_common::report::Report(&e).to_string(),
            })?;
        let known_alias = aliases.contains(&base.to_ascii_lowercase());
        if !known_alias && !base.eq_ignore_ascii_case("scratch") && !out.contains(&base) {
            out.push(base);
        }
        if let Some(n) = &s.name {
            aliases.insert(n.clone());
        }
    }
    Ok(out)
}

/// Warms every (image, platform); failures are reported per image, not raised.
pub async fn warm(
    registry: Arc<Registry>,
    opts: &WarmOptions,
) -> Result<Vec<ImageReport>, WarmError> {
    let dir = Arc::new(CacheDir::open(&opts.cache_dir)?);
    let images = Arc::new(Semaphore::new(opts.jobs.max(1)));
    let layers = Arc::new(Fetcher {
        permits: Semaphore::new(opts.layer_jobs.max(1)),
        inflight: std::sync::Mutex::new(HashMap::new()),
    });
    let mut tasks = Vec::new();
    for image in &opts.images {
        for platform in &opts.platforms {
            let (registry, dir, images, layers) = (
                registry.clone(),
                dir.clone(),
                images.clone(),
                layers.clone(),
            );
            let (image, platform, opts) = (image.clone(), platform.clone(), opts.clone());
            tasks.push(tokio::spawn(async move {
                let _permit = images.acquire_owned().await;
                let t0 = Instant::now();
                let mut report = ImageReport::failed(image.clone(), platform.to_string());
                let mut res = warm_one(
                    &registry,
                    &dir,
                    &layers,
                    &image,
                    &platform,
                    &opts,
                    &mut report,
                )
                .await;
                if let (Ok(()), true, Some(m)) = (&res, opts.extract_layers, &report.manifest) {
                    match layers.extract_all(&dir, &image, m).await {
                        Ok(n) => report.layers_extracted = n,
                        Err(e) => res = Err(e),
                    }
                }
                if let Err(e) = res {
                    report.status = "failed".into();
                    report.error = Some(kiln_common::report::Report(&e).to_string());
                }
                report.seconds = t0.elapsed().as_secs_f64();
                report
            }));
        }
    }
    let mut out = Vec::new();
    for t in tasks {
        match t.await {
            Ok(r) => out.push(r),
            Err(e) => out.push(ImageReport {
                error: Some(kiln_common::report::Report(&e).to_string()),
                ..ImageReport::failed(String::new(), String::new())
            }),
        }
    }
    Ok(out)
}

/// Bounds layer downloads and makes concurrent requests for one blob (images
/// sharing a base, warmed at once) wait for a single download.
struct Fetcher {
    permits: Semaphore,
    inflight: std::sync::Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
}

impl Fetcher {
    /// Fetches `l` unless present; returns (fetched bytes, reused bytes).
    async fn fetch(
        &self,
        registry: &Registry,
        dir: &CacheDir,
        r: &oci_client::Reference,
        l: &Descriptor,
    ) -> Result<(u64, u64), RegistryError> {
        let gate = self.gate(&l.digest);
        let _one = gate.lock().await;
        if dir.has_blob(&l.digest) {
            return Ok((0, l.size));
        }
        let _permit = self.permits.acquire().await;
        registry.fetch_blob(r, l, &dir.blob_path(&l.digest)).await?;
        Ok((l.size, 0))
    }

    /// The lock that makes concurrent requests for one digest (a blob to
    /// fetch, a diff id to extract) wait for a single worker.
    fn gate(&self, d: &Digest) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        m.entry(d.clone()).or_default().clone()
    }

    /// Keeps every layer of `image`'s warmed manifest `m` extracted; a layer
    /// is extracted once however many images share it. Returns how many
    /// this call extracted.
    async fn extract_all(
        &self,
        dir: &Arc<CacheDir>,
        image: &str,
        m: &Digest,
    ) -> Result<usize, WarmError> {
        use kiln_layers::lowers::{extract_layer, LowerError};
        let failed = |source| WarmError::Extract {
            image: image.to_string(),
            source: Box::new(source),
        };
        let (manifest, config) = warmed_image(dir, m)?;
        let mut n = 0;
        for (l, id) in manifest.layers.iter().zip(&config.rootfs.diff_ids) {
            let gate = self.gate(id);
            let _one = gate.lock().await;
            let (root, blob, id) = (
                dir.root().to_path_buf(),
                dir.blob_path(&l.digest),
                id.clone(),
            );
            let did = tokio::task::spawn_blocking(move || extract_layer(&root, &blob, &id))
                .await
                .map_err(|e| {
                    failed(LowerError::Io {
                        op: "extracting",
                        path: dir.blob_path(&l.digest),
                        source: std::io::Error::other(e),
                    })
                })?
                .map_err(failed)?;
            n += usize::from(did);
        }
        Ok(n)
    }
}

/// A warmed image's manifest and config, read (and verified) from `dir`.
fn warmed_image(
    dir: &CacheDir,
    m: &Digest,
) -> Result<
    (
        kiln_common::image::Manifest,
        kiln_common::image::ImageConfig,
    ),
    WarmError,
> {
    let decode = |what, digest: &Digest| {
        let digest = digest.clone();
        move |source| WarmError::Decode {
            what,
            digest,
            source,
        }
    };
    let manifest: kiln_common::image::Manifest =
        serde_json::from_slice(&dir.read_blob(m)?).map_err(decode("manifest", m))?;
    let c = &manifest.config.digest;
    let config = serde_json::from_slice(&dir.read_blob(c)?).map_err(decode("config", c))?;
    Ok((manifest, config))
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

async fn warm_one(
    registry: &Registry,
    dir: &CacheDir,
    layers: &Arc<Fetcher>,
    image: &str,
    platform: &Platform,
    opts: &WarmOptions,
    report: &mut ImageReport,
) -> Result<(), WarmError> {
    let rerr = |source| WarmError::Registry {
        image: image.to_string(),
        source: Box::new(source),
    };
    let reference = parse_reference(image).map_err(rerr)?;
    if !opts.force {
        if let Some(e) = dir.find(image, platform)? {
            let complete = entry_complete(dir, &e.manifest.digest);
            let age = e.fetched.map(|f| {
                chrono::Utc::now()
                    .signed_duration_since(f)
                    .to_std()
                    .unwrap_or_default()
            });
            if complete && (reference.digest().is_some() || age.is_some_and(|a| a < opts.ttl)) {
                report.status = "fresh".into();
                report.manifest = Some(e.manifest.digest);
                return Ok(());
            }
            if complete {
                // Expired: one HEAD decides whether anything must be pulled.
                if let Ok(Some(d)) = registry.head_manifest(&reference).await {
                    if Some(&d) == e.top.as_ref() {
                        dir.lock()?.refresh(image, platform)?;
                        report.status = "unchanged".into();
                        report.manifest = Some(e.manifest.digest);
                        return Ok(());
                    }
                }
            }
        }
    }
    let resolved = registry.resolve(image, platform).await.map_err(rerr)?;
    dir.put_blob(&resolved.config_bytes)?;
    let fetches = resolved
        .manifest
        .layers
        .iter()
        .map(|l| layers.fetch(registry, dir, &resolved.reference, l));
    for r in futures_util::future::join_all(fetches).await {
        let (fetched, reused) = r.map_err(rerr)?;
        report.bytes_fetched += fetched;
        report.bytes_reused += reused;
    }
    // The manifest goes in last: an entry never points at a missing blob.
    let md = dir.put_blob(&resolved.manifest_bytes)?;
    let top = resolved
        .index_digest
        .clone()
        .unwrap_or_else(|| resolved.manifest_digest.clone());
    dir.lock()?.put_entry(
        image,
        platform,
        Descriptor::new(
            &resolved.media_type,
            md.clone(),
            resolved.manifest_bytes.len() as u64,
        ),
        &top,
    )?;
    report.status = "fetched".into();
    report.manifest = Some(md);
    Ok(())
}

/// Whether a manifest and everything it references are on disk.
fn entry_complete(dir: &CacheDir, manifest: &Digest) -> bool {
    let Ok(b) = dir.read_blob(manifest) else {
        return false;
    };
    let Ok(m) = serde_json::from_slice::<kiln_common::image::Manifest>(&b) else {
        return false;
    };
    dir.has_blob(&m.config.digest) && m.layers.iter().all(|l| dir.has_blob(&l.digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_bases_resolve_global_args_and_skip_aliases() {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("Dockerfile");
        std::fs::write(
            &p,
            "ARG REG=reg.example\nARG TAG=1\nFROM $REG/base:${TAG} AS build\nFROM build AS test\nFROM scratch\nCOPY --from=build / /\nFROM ${REG}/runtime:2\n",
        )
        .expect("write");
        assert_eq!(
            images_from_dockerfile(&p, &[]).expect("parse"),
            vec!["reg.example/base:1", "reg.example/runtime:2"]
        );
        assert_eq!(
            images_from_dockerfile(&p, &[("TAG".into(), "9".into())]).expect("parse"),
            vec!["reg.example/base:9", "reg.example/runtime:2"]
        );
    }
}
