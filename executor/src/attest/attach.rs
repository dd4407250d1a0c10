//! Attestations attached to an image as OCI 1.1 artifacts: an image
//! manifest with an `artifactType`, the empty config, the document as its
//! one layer and the image manifest as its `subject`. A registry that
//! answers the push with `OCI-Subject` lists it among the image's
//! referrers itself (Kiln's cache server does); for one that does not
//! (docker-registry 2.x), the client keeps the tag-schema index
//! `<repo>:sha256-<hex>` as the distribution spec asks.

use super::AttestError;
use kiln_common::image::{self, Descriptor, Index};
use kiln_common::registry::Registry;
use kiln_common::Digest;
use oci_client::Reference;
use std::collections::BTreeMap;
use std::path::Path;

/// The empty config's media type and bytes (image-spec's empty descriptor).
pub const EMPTY_MEDIA: &str = "application/vnd.oci.empty.v1+json";
const EMPTY: &[u8] = b"{}";

/// One attestation, ready to attach.
#[derive(Debug, Clone)]
pub struct Artifact {
    /// The artifact's type, also its layer's media type.
    pub artifact_type: &'static str,
    pub body: Vec<u8>,
    /// On the layer (`in-toto.io/predicate-type` for a statement).
    pub annotations: BTreeMap<String, String>,
    /// The artifact manifest, made by [`Artifact::manifest`].
    pub manifest: Vec<u8>,
}

impl Artifact {
    /// `body` of `artifact_type` attached to `subject`, created at
    /// `created` (RFC 3339; `SOURCE_DATE_EPOCH` keeps it reproducible).
    pub fn new(
        artifact_type: &'static str,
        body: Vec<u8>,
        annotations: BTreeMap<String, String>,
        subject: &Descriptor,
        created: &str,
    ) -> Artifact {
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": image::OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": {
                "mediaType": EMPTY_MEDIA,
                "digest": Digest::sha256_of(EMPTY).to_string(),
                "size": EMPTY.len(),
                "data": "e30=",
            },
            "layers": [{
                "mediaType": artifact_type,
                "digest": Digest::sha256_of(&body).to_string(),
                "size": body.len(),
                "annotations": annotations,
            }],
            "subject": {
                "mediaType": subject.media_type,
                "digest": subject.digest.to_string(),
                "size": subject.size,
            },
            "annotations": {"org.opencontainers.image.created": created},
        });
        Artifact {
            artifact_type,
            body,
            annotations,
            manifest: manifest.to_string().into_bytes(),
        }
    }

    pub fn digest(&self) -> Digest {
        Digest::sha256_of(&self.manifest)
    }

    /// The descriptor an index (a referrers listing, the tag schema, a
    /// layout's `index.json`) gives it.
    pub fn descriptor(&self) -> Descriptor {
        let mut d = Descriptor::new(
            image::OCI_MANIFEST,
            self.digest(),
            self.manifest.len() as u64,
        );
        d.artifact_type = Some(self.artifact_type.to_string());
        d
    }
}

/// Pushes `artifacts` to `repo` (a destination's repository), each by
/// digest, and keeps the tag-schema index when the registry does not
/// list referrers itself.
pub async fn push(
    registry: &Registry,
    repo: &Reference,
    subject: &Descriptor,
    artifacts: &[Artifact],
) -> Result<(), AttestError> {
    let dest = repo.whole();
    let err = |what| {
        let dest = dest.clone();
        move |source| AttestError::Push {
            what,
            destination: dest,
            source: Box::new(source),
        }
    };
    let at = |reference: String| {
        if reference.starts_with("sha256:") {
            Reference::with_digest(
                repo.registry().to_string(),
                repo.repository().to_string(),
                reference,
            )
        } else {
            Reference::with_tag(
                repo.registry().to_string(),
                repo.repository().to_string(),
                reference,
            )
        }
    };
    let mut unlisted = Vec::new();
    for a in artifacts {
        registry
            .push_blob_bytes(repo, EMPTY)
            .await
            .map_err(err("the empty config"))?;
        registry
            .push_blob_bytes(repo, &a.body)
            .await
            .map_err(err(a.artifact_type))?;
        let listed = registry
            .put_manifest_subject(
                &at(a.digest().to_string()),
                a.manifest.clone().into(),
                image::OCI_MANIFEST,
            )
            .await
            .map_err(err(a.artifact_type))?;
        if listed.as_ref() != Some(&subject.digest) {
            unlisted.push(a.descriptor());
        }
    }
    if unlisted.is_empty() {
        return Ok(());
    }
    let tag = at(subject.digest.referrers_tag());
    let mut index = match registry
        .get_manifest(&tag)
        .await
        .map_err(err("the tag-schema index"))?
    {
        Some((bytes, _)) => {
            serde_json::from_slice::<Index>(&bytes).map_err(|source| AttestError::NotAnIndex {
                reference: tag.whole(),
                source,
            })?
        }
        None => Index::empty(),
    };
    merge(&mut index, unlisted);
    let bytes = serde_json::to_vec(&index).unwrap_or_default();
    registry
        .put_manifest_subject(&tag, bytes.into(), image::OCI_INDEX)
        .await
        .map_err(err("the tag-schema index"))?;
    Ok(())
}

/// Adds `descs` to `index`, each digest once.
fn merge(index: &mut Index, descs: Vec<Descriptor>) {
    for d in descs {
        if !index.manifests.iter().any(|m| m.digest == d.digest) {
            index.manifests.push(d);
        }
    }
}

/// Writes `artifacts` into the OCI layout `dir` (which holds their
/// subject): their blobs, and their manifests in `index.json` beside the
/// image (no ref name, so tools that pick an image by tag ignore them).
pub fn write_layout(dir: &Path, artifacts: &[Artifact]) -> Result<(), AttestError> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    for a in artifacts {
        for bytes in [EMPTY, &a.body[..], &a.manifest[..]] {
            let p = blobs.join(Digest::sha256_of(bytes).hex());
            if !p.exists() {
                kiln_common::layout::write_atomic(&p, bytes).map_err(io_err(&p))?;
            }
        }
    }
    list_in_layout(dir, artifacts.iter().map(Artifact::descriptor).collect())
}

/// The artifacts listed in layout `dir`'s `index.json` (those with an
/// `artifactType`).
pub fn listed_in_layout(dir: &Path) -> Vec<Descriptor> {
    kiln_common::layout::read_layout_index(dir)
        .manifests
        .into_iter()
        .filter(|d| d.artifact_type.is_some())
        .collect()
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AttestError {
    let path = path.to_path_buf();
    move |source| AttestError::Io {
        what: "an attestation",
        path,
        source,
    }
}

/// Adds `descs` (whose blobs are in the layout) to layout `dir`'s
/// `index.json`, each digest once.
pub fn list_in_layout(dir: &Path, descs: Vec<Descriptor>) -> Result<(), AttestError> {
    let mut index = kiln_common::layout::read_layout_index(dir);
    merge(&mut index, descs);
    kiln_common::layout::write_layout_index(dir, &index).map_err(io_err(&dir.join("index.json")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_manifests_name_their_subject() {
        let subject = Descriptor::new(image::OCI_MANIFEST, Digest::sha256_of(b"img"), 3);
        let a = Artifact::new(
            super::super::SPDX_JSON,
            b"{\"spdxVersion\":\"SPDX-2.3\"}".to_vec(),
            BTreeMap::new(),
            &subject,
            "1970-01-01T00:00:00Z",
        );
        let m: serde_json::Value = serde_json::from_slice(&a.manifest).unwrap();
        assert_eq!(m["subject"]["digest"], subject.digest.to_string());
        assert_eq!(m["artifactType"], super::super::SPDX_JSON);
        assert_eq!(m["config"]["mediaType"], EMPTY_MEDIA);
        assert_eq!(m["config"]["digest"], Digest::sha256_of(b"{}").to_string());
        assert_eq!(
            subject.digest.referrers_tag(),
            format!("sha256-{}", subject.digest.hex())
        );
        let mut idx = Index::empty();
        merge(&mut idx, vec![a.descriptor(), a.descriptor()]);
        assert_eq!(idx.manifests.len(), 1);
        let text = serde_json::to_string(&idx).unwrap();
        assert!(text.contains("\"artifactType\":\"application/spdx+json\""));
    }

    #[test]
    fn layouts_keep_artifacts_beside_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let subject = Descriptor::new(image::OCI_MANIFEST, Digest::sha256_of(b"img"), 3);
        let a = Artifact::new(
            super::super::IN_TOTO,
            b"{}".to_vec(),
            BTreeMap::new(),
            &subject,
            "1970-01-01T00:00:00Z",
        );
        write_layout(dir.path(), std::slice::from_ref(&a)).unwrap();
        write_layout(dir.path(), std::slice::from_ref(&a)).unwrap();
        let idx: Index =
            serde_json::from_slice(&std::fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(idx.manifests.len(), 1);
        assert!(dir
            .path()
            .join("blobs/sha256")
            .join(a.digest().hex())
            .is_file());
    }
}
