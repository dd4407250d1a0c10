//! One image reference for several platforms: an OCI image index (a Docker
//! manifest list with `--image-format docker`) whose entries are each
//! platform's manifest, with its platform set.
//!
//! Two ways in: a multi-platform build pushes each platform's manifest by
//! digest and then its index to the tags ([`push_index`]); `executor index`
//! joins images that native runners built ([`join`]) — the job
//! manifest-tool does for kaniko's users — checking that each image is the
//! platform it claims (its config says so) and mounting its blobs into the
//! destination repository rather than copying them where the registry can.

use crate::options::ImageFormat;
use futures_util::StreamExt;
use kiln_common::image::{self, Descriptor, ImageConfig, Index, Manifest, Platform};
use kiln_common::registry::{parse_reference, Registry, RegistryError};
use kiln_common::Digest;
use oci_client::Reference;

#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    #[error("{reference}")]
    Registry {
        reference: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{reference}: no such image in the registry")]
    Missing { reference: String },
    #[error("{reference} is an index: name one platform's image")]
    NotAnImage { reference: String },
    #[error("{reference}: decoding its {what}")]
    Decode {
        reference: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{reference}: its config does not hash to {expected}")]
    ConfigDigest { reference: String, expected: Digest },
    #[error("{reference} claims {claimed} but is built for {actual}")]
    WrongPlatform {
        reference: String,
        claimed: String,
        actual: String,
    },
    #[error("{first} and {second} are both for {platform}")]
    Duplicate {
        platform: String,
        first: String,
        second: String,
    },
    #[error("staging a blob of {reference}")]
    Io {
        reference: String,
        #[source]
        source: std::io::Error,
    },
}

/// An image to join: a reference, and the platform it claims
/// (`ref=linux/arm64`), checked against its config.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub reference: String,
    pub claimed: Option<Platform>,
}

impl std::str::FromStr for Member {
    type Err = String;
    fn from_str(s: &str) -> Result<Member, String> {
        match s.rsplit_once('=') {
            Some((r, p)) => Ok(Member {
                reference: r.to_string(),
                claimed: Some(Platform::parse(p).map_err(|e| format!("{s:?}: {e}"))?),
            }),
            None => Ok(Member {
                reference: s.to_string(),
                claimed: None,
            }),
        }
    }
}

/// The index of `entries` (pure).
pub fn index_bytes(entries: &[Descriptor], format: ImageFormat) -> (Vec<u8>, &'static str) {
    let media_type = match format {
        ImageFormat::Docker => image::DOCKER_LIST,
        _ => image::OCI_INDEX,
    };
    let index = Index {
        schema_version: 2,
        media_type: Some(media_type.to_string()),
        manifests: entries.to_vec(),
        annotations: None,
    };
    // Serializing plain data into memory cannot fail.
    (serde_json::to_vec(&index).unwrap_or_default(), media_type)
}

/// Refuses two entries for one platform.
fn check_unique(entries: &[(String, Descriptor)]) -> Result<(), IndexError> {
    for (i, (a, da)) in entries.iter().enumerate() {
        for (b, db) in &entries[i + 1..] {
            if da.platform == db.platform {
                return Err(IndexError::Duplicate {
                    platform: da
                        .platform
                        .as_ref()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                    first: a.clone(),
                    second: b.clone(),
                });
            }
        }
    }
    Ok(())
}

/// Pushes the index of `entries` to every destination's tag; returns its
/// digest. The manifests it names must be in each destination repository.
pub async fn push_index(
    registry: &Registry,
    destinations: &[String],
    entries: &[Descriptor],
    format: ImageFormat,
) -> Result<Digest, IndexError> {
    let (bytes, media_type) = index_bytes(entries, format);
    let digest = Digest::sha256_of(&bytes);
    for d in destinations {
        let err = |source| IndexError::Registry {
            reference: d.clone(),
            source: Box::new(source),
        };
        let r = parse_reference(d).map_err(err)?;
        registry
            .push_manifest(&r, bytes.clone(), media_type)
            .await
            .map_err(err)?;
        tracing::info!("pushed {d} (index {digest}, {} platforms)", entries.len());
    }
    Ok(digest)
}

/// Joins `members` (single-platform images) into one index at every
/// destination; returns the index digest and its entries.
pub async fn join(
    registry: &Registry,
    destinations: &[String],
    members: &[Member],
    format: ImageFormat,
) -> Result<(Digest, Vec<Descriptor>), IndexError> {
    let mut entries = Vec::new();
    for m in members {
        let (r, bytes, desc, blobs) = inspect(registry, m).await?;
        for d in destinations {
            copy_into(registry, &r, d, &blobs, &bytes, &desc).await?;
        }
        entries.push((m.reference.clone(), desc));
    }
    check_unique(&entries)?;
    let entries: Vec<Descriptor> = entries.into_iter().map(|(_, d)| d).collect();
    let digest = push_index(registry, destinations, &entries, format).await?;
    Ok((digest, entries))
}

/// A member's manifest, checked: (its reference, its bytes, its index
/// entry, its blobs).
async fn inspect(
    registry: &Registry,
    m: &Member,
) -> Result<(Reference, Vec<u8>, Descriptor, Vec<Descriptor>), IndexError> {
    let reference = m.reference.clone();
    let err = |source| IndexError::Registry {
        reference: reference.clone(),
        source: Box::new(source),
    };
    let r = parse_reference(&m.reference).map_err(err)?;
    let Some((bytes, digest)) = registry.get_manifest(&r).await.map_err(err)? else {
        return Err(IndexError::Missing { reference });
    };
    let decode = |what, source| IndexError::Decode {
        reference: reference.clone(),
        what,
        source,
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|e| decode("manifest", e))?;
    if v.get("manifests").is_some() {
        return Err(IndexError::NotAnImage { reference });
    }
    let manifest: Manifest = serde_json::from_value(v).map_err(|e| decode("manifest", e))?;
    let config = read_blob(registry, &r, &manifest.config.digest).await?;
    if Digest::sha256_of(&config) != manifest.config.digest {
        return Err(IndexError::ConfigDigest {
            reference,
            expected: manifest.config.digest.clone(),
        });
    }
    let config: ImageConfig = serde_json::from_slice(&config).map_err(|e| decode("config", e))?;
    let actual = Platform {
        os: config.os.clone(),
        architecture: config.architecture.clone(),
        variant: config.variant.clone(),
    };
    if let Some(claimed) = &m.claimed {
        let same = claimed.os == actual.os
            && claimed.architecture == actual.architecture
            && (claimed.variant.is_none() || claimed.variant == actual.variant);
        if !same {
            return Err(IndexError::WrongPlatform {
                reference,
                claimed: claimed.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    let media_type = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| image::OCI_MANIFEST.to_string());
    let mut desc = Descriptor::new(&media_type, digest, bytes.len() as u64);
    desc.platform = Some(actual);
    let mut blobs = vec![manifest.config.clone()];
    blobs.extend(manifest.layers.iter().cloned());
    Ok((r, bytes, desc, blobs))
}

/// A small blob (a config) read whole.
async fn read_blob(registry: &Registry, r: &Reference, d: &Digest) -> Result<Vec<u8>, IndexError> {
    let err = |source| IndexError::Registry {
        reference: r.whole(),
        source: Box::new(source),
    };
    let Some(mut s) = registry.blob_stream(r, d, 0, None).await.map_err(err)? else {
        return Err(IndexError::Missing {
            reference: format!("{}@{d}", r.whole()),
        });
    };
    let mut out = Vec::new();
    while let Some(chunk) = s.stream.next().await {
        out.extend_from_slice(&chunk.map_err(err)?);
    }
    Ok(out)
}

/// Puts a member's blobs and manifest (by digest) into `dest`'s
/// repository: nothing for what is there, a cross-repository mount on the
/// same registry, a copy otherwise.
async fn copy_into(
    registry: &Registry,
    from: &Reference,
    dest: &str,
    blobs: &[Descriptor],
    manifest: &[u8],
    desc: &Descriptor,
) -> Result<(), IndexError> {
    let err = |source| IndexError::Registry {
        reference: dest.to_string(),
        source: Box::new(source),
    };
    let d = parse_reference(dest).map_err(err)?;
    for b in blobs {
        if registry.blob_exists(&d, &b.digest).await.map_err(err)? {
            continue;
        }
        if registry
            .mount_blob(&d, from, &b.digest)
            .await
            .map_err(err)?
        {
            continue;
        }
        let tmp = tempfile::NamedTempFile::new().map_err(|source| IndexError::Io {
            reference: from.whole(),
            source,
        })?;
        registry
            .fetch_blob(from, b, tmp.path())
            .await
            .map_err(|source| IndexError::Registry {
                reference: from.whole(),
                source: Box::new(source),
            })?;
        registry
            .push_blob_file(&d, tmp.path(), &b.digest, b.size)
            .await
            .map_err(err)?;
    }
    let by_digest = Reference::with_digest(
        d.registry().to_string(),
        d.repository().to_string(),
        desc.digest.to_string(),
    );
    registry
        .push_manifest(&by_digest, manifest.to_vec(), &desc.media_type)
        .await
        .map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_claim_platforms_and_an_index_lists_them() {
        let m: Member = "r.io/app:arm=linux/arm64/v8".parse().unwrap();
        assert_eq!(m.reference, "r.io/app:arm");
        assert_eq!(m.claimed.unwrap().variant.as_deref(), Some("v8"));
        let m: Member = "r.io/app:amd".parse().unwrap();
        assert!(m.claimed.is_none());
        assert!("r.io/app=linux".parse::<Member>().is_err());

        let mut a = Descriptor::new(image::OCI_MANIFEST, Digest::sha256_of(b"a"), 1);
        a.platform = Some(Platform::parse("linux/amd64").unwrap());
        let mut b = Descriptor::new(image::OCI_MANIFEST, Digest::sha256_of(b"b"), 1);
        b.platform = Some(Platform::parse("linux/arm64").unwrap());
        let (bytes, mt) = index_bytes(&[a.clone(), b.clone()], ImageFormat::Oci);
        assert_eq!(mt, image::OCI_INDEX);
        let back: Index = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back.manifests, vec![a.clone(), b]);
        assert!(check_unique(&[("x".into(), a.clone()), ("y".into(), a)]).is_err());
    }
}
