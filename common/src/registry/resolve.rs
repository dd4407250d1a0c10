//! From a reference to one platform's manifest and config (through an
//! index when there is one), and the manifest/tag queries.

use super::{parse_reference, Registry, RegistryError, RemoteKind, ResolvedImage, ACCEPT};
use crate::digest::Digest;
use crate::image::{self, ImageConfig, ImageError, ManifestKind, Platform};
use oci_client::Reference;

impl Registry {
    /// Resolves a reference to one platform's manifest and config.
    pub async fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let r = parse_reference(reference)?;
        let mut last = None;
        for c in self.candidates(&r) {
            match self
                .retry("resolving the image", self.opts.pull_retries, || {
                    self.resolve_at(&c, platform)
                })
                .await
            {
                Ok(img) => return Ok(img),
                Err(e) => {
                    if c != r {
                        tracing::warn!(
                            "mirror {} failed: {}",
                            c.whole(),
                            crate::report::Report(&e)
                        );
                    }
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| RegistryError::remote(&r, RemoteKind::Other, "no registry to try")))
    }

    async fn resolve_at(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let auth = self.auth_for(r).await?;
        let (bytes, digest) = self
            .client(r)?
            .pull_manifest_raw(r, &auth, ACCEPT)
            .await
            .map_err(|e| RegistryError::remote_err(r, e))?;
        let digest = checked_manifest_digest(r, &bytes, &digest)?;
        let img_err = |source| RegistryError::Image {
            reference: r.whole(),
            source,
        };
        let (manifest, manifest_digest, index_digest, at, manifest_bytes) =
            match image::parse_manifest(&bytes, None, digest.as_str()).map_err(img_err)? {
                ManifestKind::Image(m) => (m, digest, None, r.clone(), bytes.to_vec()),
                ManifestKind::Index(idx) => {
                    let d = idx.select(platform).map_err(img_err)?.clone();
                    let pr = Reference::with_digest(
                        r.registry().to_string(),
                        r.repository().to_string(),
                        d.digest.to_string(),
                    );
                    let (mb, md) = self
                        .client(&pr)?
                        .pull_manifest_raw(&pr, &auth, ACCEPT)
                        .await
                        .map_err(|e| RegistryError::remote_err(&pr, e))?;
                    let md = checked_manifest_digest(&pr, &mb, &md)?;
                    d.digest
                        .verify(&md)
                        .map_err(|source| RegistryError::Digest {
                            reference: pr.whole(),
                            digest: d.digest.clone(),
                            source,
                        })?;
                    match image::parse_manifest(&mb, None, md.as_str()).map_err(img_err)? {
                        ManifestKind::Image(m) => (m, md, Some(digest), pr, mb.to_vec()),
                        ManifestKind::Index(_) => {
                            return Err(RegistryError::remote(
                                &pr,
                                RemoteKind::Other,
                                "nested image index is not supported",
                            ))
                        }
                    }
                }
            };
        let mut config_bytes = Vec::new();
        self.client(&at)?
            .pull_blob(&at, manifest.config.digest.as_str(), &mut config_bytes)
            .await
            .map_err(|e| RegistryError::remote_err(&at, e))?;
        manifest
            .config
            .digest
            .verify(&Digest::sha256_of(&config_bytes))
            .map_err(|source| RegistryError::Digest {
                reference: at.whole(),
                digest: manifest.config.digest.clone(),
                source,
            })?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| RegistryError::Image {
                reference: at.whole(),
                source: ImageError::BadConfig {
                    digest: manifest.config.digest.to_string(),
                    source,
                },
            })?;
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| image::OCI_MANIFEST.to_string());
        Ok(ResolvedImage {
            reference: at,
            manifest_digest,
            index_digest,
            manifest,
            manifest_bytes,
            media_type,
            config,
            config_bytes,
        })
    }

    /// Fetches a manifest by tag or digest; `Ok(None)` when the registry says
    /// it does not exist (a cache miss), `Err` when the registry could not answer.
    pub async fn get_manifest(
        &self,
        r: &Reference,
    ) -> Result<Option<(Vec<u8>, Digest)>, RegistryError> {
        self.retry("getting a manifest", self.opts.pull_retries, || async {
            let auth = self.auth_for(r).await?;
            match self.client(r)?.pull_manifest_raw(r, &auth, ACCEPT).await {
                Ok((bytes, _)) => {
                    let d = checked_manifest_digest(r, &bytes, "")?;
                    Ok(Some((bytes.to_vec(), d)))
                }
                Err(e) if RemoteKind::of(&e) == RemoteKind::NotFound => Ok(None),
                Err(e) => Err(RegistryError::remote_err(r, e)),
            }
        })
        .await
    }

    /// The digest a tag points to, by HEAD (which Docker Hub does not count as a
    /// pull). `Ok(None)` when the registry says it does not exist.
    pub async fn head_manifest(&self, r: &Reference) -> Result<Option<Digest>, RegistryError> {
        let auth = self.auth_for(r).await?;
        match self.client(r)?.fetch_manifest_digest(r, &auth).await {
            Ok(d) => Ok(Some(d.parse().map_err(|source| RegistryError::Digest {
                reference: r.whole(),
                digest: Digest::sha256_of(b""),
                source,
            })?)),
            Err(e) if RemoteKind::of(&e) == RemoteKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }

    /// The repository's tags; empty when the repository does not exist.
    pub async fn list_tags(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        let auth = self.auth_for(r).await?;
        match self.client(r)?.list_tags(r, &auth, None, None).await {
            Ok(t) => Ok(t.tags),
            Err(e) if RemoteKind::of(&e) == RemoteKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }
}

pub(super) fn checked_manifest_digest(
    r: &Reference,
    bytes: &[u8],
    claimed: &str,
) -> Result<Digest, RegistryError> {
    let actual = Digest::sha256_of(bytes);
    if let Some(want) = r.digest() {
        let want: Digest = want.parse().map_err(|source| RegistryError::Digest {
            reference: r.whole(),
            digest: actual.clone(),
            source,
        })?;
        want.verify(&actual)
            .map_err(|source| RegistryError::Digest {
                reference: r.whole(),
                digest: want.clone(),
                source,
            })?;
    }
    if !claimed.is_empty() && claimed != actual.as_str() {
        tracing::debug!(
            "{}: registry reported digest {claimed}, content hashes to {actual}",
            r.whole()
        );
    }
    Ok(actual)
}
