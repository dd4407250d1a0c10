//! The OCI 1.1 referrers API, pure part: what a manifest's `subject` is,
//! the descriptor the API lists for it, and the index it answers with
//! (filtered by `artifactType`). The store keeps one small object per
//! (subject, referrer) pair ([`crate::keys::Key::Referrer`]) so a listing
//! reads one prefix, the way distribution's own implementation keeps
//! per-subject links instead of scanning manifests.

use kiln_common::image as media;
use kiln_common::Digest;

#[derive(Debug, thiserror::Error)]
pub enum ReferrerError {
    /// The manifest's `subject` is not a descriptor with a digest.
    #[error("the manifest's subject is invalid: {0}")]
    Subject(String),
    /// A stored descriptor could not be read back.
    #[error("referrer record {key} is corrupt")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// A manifest that names a subject: the subject's digest and the
/// descriptor a referrers listing gives for the manifest.
#[derive(Debug, Clone, PartialEq)]
pub struct Referrer {
    pub subject: Digest,
    pub descriptor: serde_json::Value,
}

/// The subject of manifest `bytes` (digest `d`, `media_type`) and its
/// listing descriptor, or `None` when it has no subject. The descriptor's
/// `artifactType` is the manifest's, or its config's media type when it
/// has none (image-spec's rule), and it carries the manifest's annotations.
pub fn of_manifest(
    media_type: &str,
    bytes: &[u8],
    d: &Digest,
) -> Result<Option<Referrer>, ReferrerError> {
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| ReferrerError::Subject(e.to_string()))?;
    let Some(subject) = v.get("subject") else {
        return Ok(None);
    };
    let subject = subject
        .get("digest")
        .and_then(|x| x.as_str())
        .ok_or_else(|| ReferrerError::Subject("no digest".into()))?
        .parse::<Digest>()
        .map_err(|e| ReferrerError::Subject(e.to_string()))?;
    let artifact_type = v
        .get("artifactType")
        .and_then(|x| x.as_str())
        .or_else(|| v.pointer("/config/mediaType").and_then(|x| x.as_str()));
    let mut desc = serde_json::json!({
        "mediaType": media_type,
        "digest": d.to_string(),
        "size": bytes.len(),
    });
    if let Some(t) = artifact_type {
        desc["artifactType"] = t.into();
    }
    if let Some(a) = v.get("annotations").filter(|a| a.is_object()) {
        desc["annotations"] = a.clone();
    }
    Ok(Some(Referrer {
        subject,
        descriptor: desc,
    }))
}

/// A stored descriptor read back.
pub fn parse_record(key: &str, raw: &[u8]) -> Result<serde_json::Value, ReferrerError> {
    serde_json::from_slice(raw).map_err(|source| ReferrerError::Corrupt {
        key: key.to_string(),
        source,
    })
}

/// The referrers listing: an OCI index of `descriptors`, those of
/// `artifact_type` only when one is asked for, in digest order so the
/// answer does not depend on the backend's listing order. The flag says
/// whether a filter was applied (the `OCI-Filters-Applied` header).
pub fn listing(
    mut descriptors: Vec<serde_json::Value>,
    artifact_type: Option<&str>,
) -> (serde_json::Value, bool) {
    if let Some(t) = artifact_type {
        descriptors.retain(|d| d.get("artifactType").and_then(|x| x.as_str()) == Some(t));
    }
    descriptors.sort_by(|a, b| {
        let key =
            |d: &serde_json::Value| d.get("digest").and_then(|x| x.as_str()).map(str::to_owned);
        key(a).cmp(&key(b))
    });
    (
        serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_INDEX,
            "manifests": descriptors,
        }),
        artifact_type.is_some(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(subject: &Digest, artifact_type: Option<&str>) -> Vec<u8> {
        let mut m = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media::OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": Digest::sha256_of(b"{}").to_string(), "size": 2},
            "layers": [],
            "subject": {"mediaType": media::OCI_MANIFEST, "digest": subject.to_string(), "size": 7},
            "annotations": {"org.opencontainers.image.created": "2026-01-01T00:00:00Z"},
        });
        if let Some(t) = artifact_type {
            m["artifactType"] = t.into();
        }
        serde_json::to_vec(&m).unwrap()
    }

    #[test]
    fn a_subject_gives_a_descriptor_with_the_artifact_type() {
        let subject = Digest::sha256_of(b"image");
        let bytes = artifact(&subject, Some("application/spdx+json"));
        let d = Digest::sha256_of(&bytes);
        let r = of_manifest(media::OCI_MANIFEST, &bytes, &d)
            .unwrap()
            .unwrap();
        assert_eq!(r.subject, subject);
        assert_eq!(r.descriptor["artifactType"], "application/spdx+json");
        assert_eq!(r.descriptor["size"], bytes.len());
        assert_eq!(r.descriptor["digest"], d.to_string());
        assert!(r.descriptor["annotations"].is_object());
        // Without artifactType, the config's media type stands in.
        let bytes = artifact(&subject, None);
        let r = of_manifest(media::OCI_MANIFEST, &bytes, &Digest::sha256_of(&bytes))
            .unwrap()
            .unwrap();
        assert_eq!(
            r.descriptor["artifactType"],
            "application/vnd.oci.empty.v1+json"
        );
    }

    #[test]
    fn manifests_without_or_with_a_bad_subject() {
        let plain = br#"{"schemaVersion":2,"layers":[]}"#;
        let d = Digest::sha256_of(plain);
        assert!(of_manifest(media::OCI_MANIFEST, plain, &d)
            .unwrap()
            .is_none());
        let bad = br#"{"schemaVersion":2,"subject":{"digest":"sha256:zz"}}"#;
        assert!(matches!(
            of_manifest(media::OCI_MANIFEST, bad, &d),
            Err(ReferrerError::Subject(_))
        ));
    }

    #[test]
    fn listings_filter_and_sort() {
        let s = Digest::sha256_of(b"s");
        let descs: Vec<_> = [Some("a/x"), Some("b/y"), None]
            .iter()
            .map(|t| {
                let b = artifact(&s, *t);
                of_manifest(media::OCI_MANIFEST, &b, &Digest::sha256_of(&b))
                    .unwrap()
                    .unwrap()
                    .descriptor
            })
            .collect();
        let (all, filtered) = listing(descs.clone(), None);
        assert!(!filtered);
        let list = all["manifests"].as_array().unwrap();
        assert_eq!(list.len(), 3);
        assert!(list
            .windows(2)
            .all(|w| w[0]["digest"].as_str() < w[1]["digest"].as_str()));
        assert_eq!(all["mediaType"], media::OCI_INDEX);
        let (only, filtered) = listing(descs, Some("b/y"));
        assert!(filtered);
        assert_eq!(only["manifests"].as_array().unwrap().len(), 1);
        assert_eq!(only["manifests"][0]["artifactType"], "b/y");
    }
}
