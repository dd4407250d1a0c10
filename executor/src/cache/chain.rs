//! The cache chain: `--cache-repo`, read first and the only repository
//! written, then each `--cache-from`, only read. A branch build reads the
//! default branch's scope without being able to write into it (GitHub
//! Actions' rule for pull requests), and still gets hits.
//!
//! A hit from a fallback is used exactly like one from the written
//! repository (its layer fetched only if a later step needs it, mounted
//! from where it is on a push), and recorded into the written repository
//! without moving layer bytes ([`LayerCache::adopt`]: cross-repository
//! mounts of its blobs, then the same manifest under the same key), so the
//! branch's next build hits its own scope.

use super::{copy_atomic, CacheError, CacheHit, Fallback, LayerCache};
use kiln_common::image::Manifest;
use kiln_common::layout::write_atomic;
use kiln_common::Digest;
use oci_client::Reference;

pub struct CacheChain {
    /// `--cache-repo`.
    pub write: LayerCache,
    /// `--cache-from`, in order.
    pub read: Vec<LayerCache>,
    /// `--cache-trust`: `key=value` rules every hit's recorded writer must
    /// satisfy ([`kiln_common::cache_api::Writer::satisfies`]); an entry
    /// whose writer is unknown or other is a miss. Empty: every entry.
    pub trust: Vec<(String, String)>,
}

impl CacheChain {
    /// Every key looked up along the chain, results in the order of `keys`:
    /// one request where the written repository is a Kiln cache server
    /// holding every fallback too, else the written repository first, then
    /// each fallback for the keys still missing. A fallback that cannot
    /// answer makes its keys lookup errors (misses with a warning).
    pub async fn lookup_many(&self, keys: &[Digest]) -> Vec<Result<Option<CacheHit>, CacheError>> {
        let results = self.lookup_chain(keys).await;
        if self.trust.is_empty() {
            return results;
        }
        results
            .into_iter()
            .map(|r| {
                r.map(|hit| {
                    hit.filter(|h| {
                        let trusted = h.writer.as_ref().is_some_and(|w| w.satisfies(&self.trust));
                        if !trusted {
                            tracing::info!(
                                "cache entry {} is a miss: its writer ({}) does not satisfy --cache-trust",
                                &h.key.hex()[..12],
                                h.writer.as_ref().map_or("unknown".to_string(), |w| match &w.issuer {
                                    Some(i) => format!("{} from {i}", w.subject),
                                    None => w.subject.clone(),
                                })
                            );
                        }
                        trusted
                    })
                })
            })
            .collect()
    }

    async fn lookup_chain(&self, keys: &[Digest]) -> Vec<Result<Option<CacheHit>, CacheError>> {
        let read: Vec<&LayerCache> = self.read.iter().collect();
        if let Some(r) = self.write.lookup_batch(&read, keys).await {
            return r;
        }
        let mut results = self.write.lookup_many(keys).await;
        for f in &self.read {
            let missing: Vec<usize> = (0..keys.len())
                .filter(|&i| matches!(results[i], Ok(None)))
                .collect();
            if missing.is_empty() {
                break;
            }
            let wanted: Vec<Digest> = missing.iter().map(|&i| keys[i].clone()).collect();
            let answers = f.lookup_many(&wanted).await;
            for (i, a) in missing.into_iter().zip(answers) {
                results[i] = a.map(|hit| {
                    hit.map(|h| CacheHit {
                        from: Some(f.as_fallback()),
                        ..h
                    })
                });
            }
        }
        results
    }
}

impl LayerCache {
    /// Records `hit`, found in a fallback, into this repository under its
    /// key, moving no layer bytes: on a registry, the entry's blobs are
    /// mounted from the fallback's repository on the same registry, then
    /// the same manifest is tagged; in an `oci:` layout from another
    /// layout, the files are copied. Returns false where that cannot be
    /// done (another registry, a layout and a registry, a refused mount):
    /// the entry then stays where it is, still found through the chain.
    pub async fn adopt(&self, hit: &CacheHit) -> Result<bool, CacheError> {
        let Some(from) = &hit.from else {
            return Ok(false);
        };
        let m: Manifest =
            serde_json::from_slice(&hit.manifest).map_err(|e| CacheError::Corrupt {
                key: hit.key.to_string(),
                message: e.to_string(),
            })?;
        let blobs: Vec<&Digest> = std::iter::once(&m.config.digest)
            .chain(m.layers.iter().map(|l| &l.digest))
            .collect();
        match (self, from) {
            (
                LayerCache::Registry { registry, repo, .. },
                Fallback {
                    repo: Some(source), ..
                },
            ) if source.registry() == repo.registry() => {
                let tag = Reference::with_tag(
                    repo.registry().to_string(),
                    repo.repository().to_string(),
                    hit.key.hex().to_string(),
                );
                let rerr = |e| CacheError::Registry {
                    repo: self.describe(),
                    source: Box::new(e),
                };
                for d in blobs {
                    if !registry.mount_blob(&tag, source, d).await.map_err(rerr)? {
                        tracing::debug!("{}: mounting {d} was refused", self.describe());
                        return Ok(false);
                    }
                }
                let mt = m
                    .media_type
                    .clone()
                    .unwrap_or_else(|| kiln_common::image::OCI_MANIFEST.to_string());
                registry
                    .push_manifest(&tag, hit.manifest.clone(), &mt)
                    .await
                    .map_err(rerr)?;
                Ok(true)
            }
            (LayerCache::Layout { dir, .. }, Fallback { dir: Some(src), .. }) => {
                let io = |source| CacheError::Io {
                    path: dir.clone(),
                    source,
                };
                for d in blobs {
                    let to = dir.join("blobs/sha256").join(d.hex());
                    if !to.exists() {
                        copy_atomic(&src.join("blobs/sha256").join(d.hex()), &to).map_err(io)?;
                    }
                }
                let entries = dir.join("entries");
                std::fs::create_dir_all(&entries).map_err(io)?;
                let manifest_blob = dir
                    .join("blobs/sha256")
                    .join(Digest::sha256_of(&hit.manifest).hex());
                write_atomic(&manifest_blob, &hit.manifest).map_err(io)?;
                write_atomic(&entries.join(hit.key.hex()), &hit.manifest).map_err(io)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}
