//! Manifests: reads verified against their digest, which repositories
//! hold them, writes (only when their blobs or children are present),
//! deletes, the catalog.

use super::*;

/// A manifest written: its digest, and its subject when it was recorded
/// as one of the subject's referrers (the `OCI-Subject` answer).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredManifest {
    pub digest: Digest,
    pub subject: Option<Digest>,
}

impl Store {
    /// A manifest of `repo` by digest, verified against it.
    pub async fn manifest(
        &self,
        repo: &str,
        d: &Digest,
    ) -> Result<Option<Arc<ManifestBlob>>, StoreError> {
        if let Some(m) = self.memory.manifests.get(d).await {
            self.metrics.tier("memory", true);
            // The memory tier is keyed by digest; membership of the repo is
            // checked once per repo and remembered as a tag-cache entry.
            if self.in_repo(repo, d).await? {
                return Ok(Some(m));
            }
            return Ok(None);
        }
        self.metrics.tier("memory", false);
        let key = Key::manifest(repo, d);
        let got = self.call("get", self.storage.get_small(&key)).await?;
        self.metrics.tier("store", got.is_some());
        let Some((raw, _)) = got else {
            return Ok(None);
        };
        self.metrics.bytes("store", "out", raw.len() as u64);
        let m = Arc::new(manifest::parse_stored(&key, d, &raw)?);
        self.memory.manifests.insert(d.clone(), m.clone()).await;
        self.remember_in_repo(repo, d).await;
        Ok(Some(m))
    }

    pub(super) async fn in_repo(&self, repo: &str, d: &Digest) -> Result<bool, StoreError> {
        let k = (repo.to_string(), format!("@{}", d.hex()));
        if self.memory.tags.get(&k).await.is_some() {
            return Ok(true);
        }
        let key = Key::manifest(repo, d);
        let there = self.call("head", self.storage.head(&key)).await?.is_some();
        if there {
            self.remember_in_repo(repo, d).await;
        }
        Ok(there)
    }

    pub(super) async fn remember_in_repo(&self, repo: &str, d: &Digest) {
        let k = (repo.to_string(), format!("@{}", d.hex()));
        self.memory
            .tags
            .insert(
                k,
                TagEntry {
                    digest: d.clone(),
                    modified: chrono::Utc::now(),
                },
            )
            .await;
    }

    /// Stores a manifest after checking it: size, JSON shape, and that every
    /// blob and child manifest it refers to is present. A manifest with a
    /// `subject` is listed among its subject's referrers (the subject need
    /// not be stored: OCI 1.1 lets an artifact arrive first). Returns its
    /// digest, and the subject when the referrer was recorded.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        content_type: Option<&str>,
        bytes: Bytes,
    ) -> Result<StoredManifest, StoreError> {
        self.check_manifest_size(&bytes)?;
        let d = Digest::sha256_of(&bytes);
        if let Some(want) = reference.strip_prefix("sha256:").map(|_| reference) {
            let want: Digest = want
                .parse()
                .map_err(|e: kiln_common::digest::DigestError| {
                    StoreError::ManifestInvalid(e.to_string())
                })?;
            if want != d {
                return Err(StoreError::DigestInvalid {
                    expected: want,
                    actual: d,
                });
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::ManifestInvalid(format!("not JSON: {e}")))?;
        let declared = v.get("mediaType").and_then(|m| m.as_str());
        let media_type = match (content_type, declared) {
            (_, Some(m)) => m.to_string(),
            (Some(c), None) if !c.is_empty() && c != "application/octet-stream" => c.to_string(),
            _ if v.get("manifests").is_some() => media::OCI_INDEX.to_string(),
            _ => media::OCI_MANIFEST.to_string(),
        };
        if v.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
            return Err(StoreError::ManifestInvalid(
                "schemaVersion must be 2".into(),
            ));
        }
        let referrer = crate::referrers::of_manifest(&media_type, &bytes, &d)
            .map_err(|e| StoreError::ManifestInvalid(e.to_string()))?;
        let blob = ManifestBlob::new(media_type.clone(), bytes.clone());
        if is_index(&media_type) {
            for child in manifest::descriptors(&v, "manifests")? {
                if self.manifest(repo, &child).await?.is_none() {
                    return Err(StoreError::ManifestBlobUnknown { digest: child });
                }
            }
        } else {
            for b in referenced_blobs(&blob)? {
                if self.blob_size(repo, b).await?.is_none() {
                    return Err(StoreError::ManifestBlobUnknown { digest: b.clone() });
                }
            }
        }
        self.store_manifest(repo, reference, &media_type, bytes, &d)
            .await?;
        let subject = match referrer {
            Some(r) => self.record_referrer(repo, &d, r).await?,
            None => None,
        };
        Ok(StoredManifest { digest: d, subject })
    }

    fn check_manifest_size(&self, bytes: &Bytes) -> Result<(), StoreError> {
        if bytes.len() > self.cfg.max_manifest_bytes {
            return Err(StoreError::ManifestTooBig {
                size: bytes.len(),
                limit: self.cfg.max_manifest_bytes,
            });
        }
        Ok(())
    }

    /// Stores a manifest an upstream sent (the mirror: its digest already
    /// checked by the caller where one was asked for), without requiring
    /// its blobs: they are fetched when a client asks for them.
    pub async fn put_mirrored_manifest(
        &self,
        repo: &str,
        reference: &str,
        bytes: Bytes,
    ) -> Result<Digest, StoreError> {
        self.check_manifest_size(&bytes)?;
        let v: serde_json::Value = serde_json::from_slice(&bytes)
            .map_err(|e| StoreError::ManifestInvalid(format!("not JSON: {e}")))?;
        let media_type = match v.get("mediaType").and_then(|m| m.as_str()) {
            Some(m) => m.to_string(),
            None if v.get("manifests").is_some() => media::OCI_INDEX.to_string(),
            None => media::OCI_MANIFEST.to_string(),
        };
        let d = Digest::sha256_of(&bytes);
        self.store_manifest(repo, reference, &media_type, bytes, &d)
            .await?;
        Ok(d)
    }

    /// Writes a checked manifest and, for a tag, the tag.
    async fn store_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: Bytes,
        d: &Digest,
    ) -> Result<(), StoreError> {
        let blob = ManifestBlob::new(media_type.to_string(), bytes.clone());
        let d = d.clone();
        let obj = manifest::encode_stored(media_type, &bytes);
        let mkey = Key::manifest(repo, &d);
        self.call("put", self.storage.put_small(&mkey, obj)).await?;
        self.metrics.bytes("store", "in", bytes.len() as u64);
        self.memory
            .manifests
            .insert(d.clone(), Arc::new(blob))
            .await;
        self.remember_in_repo(repo, &d).await;
        if !reference.starts_with("sha256:") {
            self.put_tag(repo, reference, &d).await?;
        }
        Ok(())
    }

    /// Deletes a tag, or a manifest by digest together with its tags and
    /// its place among its subject's referrers.
    pub async fn delete_manifest(&self, repo: &str, reference: &str) -> Result<bool, StoreError> {
        if let Ok(d) = reference.parse::<Digest>() {
            let key = Key::manifest(repo, &d);
            if self.call("head", self.storage.head(&key)).await?.is_none() {
                return Ok(false);
            }
            if let Ok(Some(m)) = self.manifest(repo, &d).await {
                if let Ok(Some(r)) = crate::referrers::of_manifest(&m.media_type, &m.bytes, &d) {
                    self.forget_referrer(repo, &r.subject, &d).await?;
                }
            }
            for t in self.tags(repo).await? {
                if let Some(e) = self.resolve_tag(repo, &t).await? {
                    if e.digest == d {
                        self.delete_tag(repo, &t).await?;
                    }
                }
            }
            self.call("delete", self.storage.delete(&key)).await?;
            self.memory
                .tags
                .invalidate(&(repo.to_string(), format!("@{}", d.hex())))
                .await;
            return Ok(true);
        }
        if self.resolve_tag(repo, reference).await?.is_none() {
            return Ok(false);
        }
        self.delete_tag(repo, reference).await?;
        Ok(true)
    }

    /// Repositories holding at least one manifest.
    pub async fn catalog(&self) -> Result<Vec<String>, StoreError> {
        let mut v: Vec<String> = self
            .call("list", self.storage.list(&Prefix::Repos))
            .await?
            .into_iter()
            .filter_map(|m| match m.key {
                Key::Manifest { repo, .. } => Some(repo),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        Ok(v)
    }
}
