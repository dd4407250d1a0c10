//! Manifests as the server keeps them: the stored object format
//! (`<media type>\n<exact bytes>`, written by [`encode_stored`], read back
//! and verified by [`parse_stored`]) and what a manifest refers to (blobs for
//! an image, child manifests for an index), parsed once per manifest held.

use crate::keys::Key;
use bytes::Bytes;
use kiln_common::image as media;
use kiln_common::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// A client sent something that is not a valid manifest.
    #[error("manifest invalid: {0}")]
    Invalid(String),
    /// A stored object does not hold what its key promises.
    #[error("stored object {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// A manifest as stored: its media type and exact bytes. What it refers
/// to is parsed once, when first asked (every cache hit asks), and kept
/// with it in the memory tier.
#[derive(Debug)]
pub struct ManifestBlob {
    pub media_type: String,
    pub bytes: Bytes,
    /// Blobs (config, layers) and child manifests, or why they could not be read.
    pub(crate) refs: std::sync::OnceLock<Result<ManifestRefs, String>>,
}

#[derive(Debug, Default)]
pub struct ManifestRefs {
    pub blobs: Vec<Digest>,
    pub children: Vec<Digest>,
}

impl ManifestBlob {
    pub fn new(media_type: String, bytes: Bytes) -> ManifestBlob {
        ManifestBlob {
            media_type,
            bytes,
            refs: std::sync::OnceLock::new(),
        }
    }
}

/// What an image manifest's layers add up to, in bytes (0 for anything
/// that is not one): a shared cache mount's files.
pub fn layer_bytes(bytes: &[u8]) -> u64 {
    #[derive(serde::Deserialize)]
    struct Layers {
        #[serde(default)]
        layers: Vec<Sized>,
    }
    #[derive(serde::Deserialize)]
    struct Sized {
        size: u64,
    }
    serde_json::from_slice::<Layers>(bytes)
        .map(|m| m.layers.iter().map(|l| l.size).sum())
        .unwrap_or(0)
}

/// The stored object for a manifest.
pub fn encode_stored(media_type: &str, bytes: &[u8]) -> Bytes {
    let mut obj = Vec::with_capacity(media_type.len() + 1 + bytes.len());
    obj.extend_from_slice(media_type.as_bytes());
    obj.push(b'\n');
    obj.extend_from_slice(bytes);
    Bytes::from(obj)
}

/// A stored manifest object (`<media type>\n<bytes>`), verified against `d`.
pub fn parse_stored(key: &Key, d: &Digest, raw: &[u8]) -> Result<ManifestBlob, ManifestError> {
    let corrupt = |reason: String| ManifestError::Corrupt {
        key: key.to_string(),
        reason,
    };
    let nl = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| corrupt("no media type line".into()))?;
    let media_type = std::str::from_utf8(&raw[..nl])
        .map_err(|e| corrupt(e.to_string()))?
        .to_string();
    let bytes = Bytes::copy_from_slice(&raw[nl + 1..]);
    let actual = Digest::sha256_of(&bytes);
    if &actual != d {
        return Err(corrupt(format!("content hashes to {actual}")));
    }
    Ok(ManifestBlob::new(media_type, bytes))
}

pub fn is_index(media_type: &str) -> bool {
    media_type == media::OCI_INDEX || media_type == media::DOCKER_LIST
}

pub(crate) fn descriptors(
    v: &serde_json::Value,
    field: &str,
) -> Result<Vec<Digest>, ManifestError> {
    let Some(list) = v.get(field) else {
        return Ok(Vec::new());
    };
    let list = list
        .as_array()
        .ok_or_else(|| ManifestError::Invalid(format!("{field} is not a list")))?;
    list.iter()
        .filter(|d| d.get("urls").is_none())
        .map(|d| {
            d.get("digest")
                .and_then(|x| x.as_str())
                .ok_or_else(|| {
                    ManifestError::Invalid(format!("a descriptor in {field} has no digest"))
                })?
                .parse()
                .map_err(|e: kiln_common::digest::DigestError| {
                    ManifestError::Invalid(e.to_string())
                })
        })
        .collect()
}

/// What a manifest refers to, parsed once per manifest held in memory.
fn refs(m: &ManifestBlob) -> &Result<ManifestRefs, String> {
    m.refs.get_or_init(|| {
        let v: serde_json::Value = serde_json::from_slice(&m.bytes).map_err(|e| e.to_string())?;
        let invalid = |e: ManifestError| e.to_string();
        if is_index(&m.media_type) {
            return Ok(ManifestRefs {
                blobs: Vec::new(),
                children: descriptors(&v, "manifests").map_err(invalid)?,
            });
        }
        let config = v
            .get("config")
            .ok_or("image manifest without config")?
            .get("digest")
            .and_then(|x| x.as_str())
            .ok_or("config has no digest")?;
        let mut blobs = vec![config.parse::<Digest>().map_err(|e| e.to_string())?];
        blobs.extend(descriptors(&v, "layers").map_err(invalid)?);
        Ok(ManifestRefs {
            blobs,
            children: Vec::new(),
        })
    })
}

/// The blobs an image manifest needs (config and layers); none for an index.
pub fn referenced_blobs(m: &ManifestBlob) -> Result<&[Digest], ManifestError> {
    match refs(m) {
        Ok(r) => Ok(&r.blobs),
        Err(e) => Err(ManifestError::Invalid(e.clone())),
    }
}

/// Child manifests an index refers to.
pub fn referenced_manifests(m: &ManifestBlob) -> &[Digest] {
    match refs(m) {
        Ok(r) => &r.children,
        Err(_) => &[],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_manifests_round_trip_and_are_verified() {
        let body = br#"{"schemaVersion":2,"config":{"digest":"sha256:0000000000000000000000000000000000000000000000000000000000000000"},"layers":[]}"#;
        let d = Digest::sha256_of(body);
        let key = Key::manifest("r", &d);
        let obj = encode_stored(media::OCI_MANIFEST, body);
        let m = parse_stored(&key, &d, &obj).unwrap();
        assert_eq!(m.media_type, media::OCI_MANIFEST);
        assert_eq!(referenced_blobs(&m).unwrap().len(), 1);
        let other = Digest::sha256_of(b"other");
        assert!(matches!(
            parse_stored(&key, &other, &obj),
            Err(ManifestError::Corrupt { .. })
        ));
    }
}
