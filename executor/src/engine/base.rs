//! Where a stage's base image comes from: the warmed directory when it holds
//! a current copy, else the registry.

use super::Builder;
use crate::model::{BuiltImage, ImageLayer, LayerSource};
use kiln_common::image::{ImageConfig, Platform};
use kiln_common::registry::RegistryError;
use kiln_common::Digest;
use std::path::Path;

/// Why a warmed copy could not be read (the build then pulls).
#[derive(Debug, thiserror::Error)]
enum WarmedError {
    #[error("reading blob {digest}")]
    Read {
        digest: Digest,
        #[source]
        source: kiln_common::layout::LayoutError,
    },
    #[error("decoding {what}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

impl Builder {
    /// The image `name` for `platform` and its manifest digest, resolved
    /// once per build: the stages that use it and the start-of-build
    /// prefetch ([`super::graph`]) share one resolution (a failed one is
    /// tried again by the next caller).
    pub(super) async fn base(
        &self,
        name: &str,
        platform: &Platform,
    ) -> Result<(BuiltImage, Digest), RegistryError> {
        let cell = {
            let mut bases = self
                .bases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            bases
                .entry(format!("{name} {platform}"))
                .or_default()
                .clone()
        };
        cell.get_or_try_init(|| self.pull_base(name, platform))
            .await
            .cloned()
    }

    /// The image `name` for `platform`, and its manifest digest.
    async fn pull_base(
        &self,
        name: &str,
        platform: &Platform,
    ) -> Result<(BuiltImage, Digest), RegistryError> {
        if let Some(dir) = &self.opts.cache_dir {
            if let Some(found) = self.warmed_base(dir, name, platform).await {
                return Ok(found);
            }
        }
        let registry = self.fetcher.registry();
        let resolved = registry.resolve(name, platform).await?;
        tracing::info!("resolved {name} to {}", resolved.manifest_digest);
        let diff_ids = resolved.config.rootfs.diff_ids.clone();
        let layers = resolved
            .manifest
            .layers
            .iter()
            .zip(
                diff_ids
                    .iter()
                    .chain(std::iter::repeat(&Digest::sha256_of(b""))),
            )
            .map(|(d, id)| ImageLayer {
                descriptor: d.clone(),
                diff_id: id.clone(),
                source: LayerSource::Remote(resolved.reference.clone()),
                outline: None,
            })
            .collect();
        let img = BuiltImage {
            config: resolved.config,
            layers,
        };
        Ok((img, resolved.manifest_digest))
    }

    /// A base image from the warmed directory: a digest-pinned reference makes
    /// no registry call; a tag costs one HEAD (and if the registry cannot
    /// answer, the warmed copy is used with a warning). `None` means pull.
    /// Its layers stay in the directory until needed, and are verified then
    /// ([`crate::fetch`]).
    async fn warmed_base(
        &self,
        dir: &Path,
        name: &str,
        platform: &Platform,
    ) -> Option<(BuiltImage, Digest)> {
        let cd = match kiln_common::layout::CacheDir::open(dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(
                    "--cache-dir unusable, pulling instead: {}",
                    kiln_common::report::Report(&e)
                );
                return None;
            }
        };
        let entry = cd.find(name, platform).ok().flatten()?;
        let r = kiln_common::registry::parse_reference(name).ok()?;
        if r.digest().is_none() {
            match self.fetcher.registry().head_manifest(&r).await {
                Ok(Some(d)) if Some(&d) == entry.top.as_ref() => {}
                Ok(_) => {
                    tracing::info!("{name} changed since it was warmed: pulling it");
                    return None;
                }
                Err(e) => tracing::warn!(
                    "cannot check {name} against its registry ({}); using the warmed copy",
                    kiln_common::report::Report(&e)
                ),
            }
        }
        let read = |d: &Digest| {
            cd.read_blob(d).map_err(|source| WarmedError::Read {
                digest: d.clone(),
                source,
            })
        };
        let load =
            || -> Result<BuiltImage, WarmedError> {
                let m: kiln_common::image::Manifest =
                    serde_json::from_slice(&read(&entry.manifest.digest)?).map_err(|source| {
                        WarmedError::Json {
                            what: "manifest",
                            source,
                        }
                    })?;
                let config: ImageConfig = serde_json::from_slice(&read(&m.config.digest)?)
                    .map_err(|source| WarmedError::Json {
                        what: "config",
                        source,
                    })?;
                let layers = m
                    .layers
                    .iter()
                    .zip(config.rootfs.diff_ids.iter())
                    .map(|(d, id)| ImageLayer {
                        descriptor: d.clone(),
                        diff_id: id.clone(),
                        source: LayerSource::Path(cd.blobs()),
                        outline: None,
                    })
                    .collect();
                Ok(BuiltImage { config, layers })
            };
        match load() {
            Ok(img) => {
                tracing::info!("{name}: using the warmed copy {}", entry.manifest.digest);
                if let Err(e) = cd.lock().and_then(|l| l.touch(name, platform)) {
                    tracing::debug!("recording use of {name}: {e}");
                }
                Some((img, entry.manifest.digest))
            }
            Err(e) => {
                tracing::warn!(
                    "warmed copy of {name} is unusable ({}); pulling it",
                    kiln_common::report::Report(&e)
                );
                None
            }
        }
    }
}
