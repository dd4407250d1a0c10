//! The record of a build's keys, kept in the cache per destination, so the
//! next build's first miss in each stage can say which input changed.

use super::{CacheError, LayerCache, CONFIG_MEDIA_TYPE};
use crate::cache_key::CACHE_FORMAT;
use kiln_common::image::{self, Descriptor, Manifest};
use kiln_common::layout::write_atomic;
use kiln_common::Digest;
use oci_client::Reference;
use std::path::Path;

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
