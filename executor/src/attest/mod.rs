//! Attestations of a built image (`--attest=provenance,sbom`): SLSA v1
//! provenance naming the cache entries used ([`provenance`]), an SPDX SBOM
//! of the packages in the image ([`sbom`]), attached as OCI 1.1 artifacts
//! whose `subject` is the image manifest ([`attach`]) — the image stays an
//! image (BuildKit turns it into an index to carry its attestations, which
//! some consumers mishandle).

pub mod attach;
pub mod context;
pub mod provenance;
pub mod sbom;

use kiln_common::registry::RegistryError;
use std::path::PathBuf;

/// Media and artifact type of a provenance statement.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";
/// Media and artifact type of an SPDX document.
pub const SPDX_JSON: &str = "application/spdx+json";

#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("--attest {value:?}: {why}")]
    Flag { value: String, why: &'static str },
    #[error("reading the image's layers for its SBOM")]
    Layers(#[source] std::io::Error),
    #[error("fetching layer {digest} for the SBOM")]
    Fetch {
        digest: kiln_common::Digest,
        #[source]
        source: Box<crate::fetch::FetchError>,
    },
    #[error("attaching {what} to {destination}")]
    Push {
        what: &'static str,
        destination: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("writing {what} to {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the tag-schema index {reference} is not an index")]
    NotAnIndex {
        reference: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Which attestations to make, and who the builder is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AttestOptions {
    pub provenance: bool,
    pub sbom: bool,
    /// `builder-id=<uri>` (otherwise the CI job's URL, see
    /// [`provenance::builder_id`]).
    pub builder_id: Option<String>,
}

impl AttestOptions {
    pub fn any(&self) -> bool {
        self.provenance || self.sbom
    }

    /// Every `--attest` value: `provenance`, `sbom`, comma-separated, or
    /// BuildKit's `type=provenance[,mode=max][,builder-id=…]`.
    pub fn parse(values: &[String]) -> Result<AttestOptions, AttestError> {
        let mut o = AttestOptions::default();
        for value in values {
            let bad = |why| AttestError::Flag {
                value: value.clone(),
                why,
            };
            for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
                let (k, v) = item.split_once('=').unwrap_or(("type", item));
                match (k, v) {
                    ("type", "provenance") => o.provenance = true,
                    ("type", "sbom") => o.sbom = true,
                    ("type", _) => return Err(bad("the types are provenance and sbom")),
                    // Kiln's provenance is always the full one.
                    ("mode", "max" | "min") => {}
                    ("builder-id", id) if id.contains(':') => o.builder_id = Some(id.to_string()),
                    ("builder-id", _) => return Err(bad("builder-id must be a URI")),
                    ("disabled", "true") => return Ok(AttestOptions::default()),
                    _ => return Err(bad("unknown option")),
                }
            }
        }
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attest_flags_in_kiln_and_buildkit_spellings() {
        let p =
            |v: &[&str]| AttestOptions::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let both = p(&["provenance,sbom"]).unwrap();
        assert!(both.provenance && both.sbom);
        let bk = p(&[
            "type=provenance,mode=max,builder-id=https://ci/1",
            "type=sbom",
        ])
        .unwrap();
        assert!(bk.provenance && bk.sbom);
        assert_eq!(bk.builder_id.as_deref(), Some("https://ci/1"));
        assert!(!p(&[]).unwrap().any());
        assert!(matches!(p(&["slsa"]), Err(AttestError::Flag { .. })));
        assert!(matches!(p(&["mode=ultra"]), Err(AttestError::Flag { .. })));
    }
}
