//! Request paths parsed into [`Endpoint`]s, and the naming rules of the
//! distribution spec for repositories and tags.

use super::ApiError;
use crate::auth::Access;
use crate::uploads::UploadError;
use axum::http::{Method, StatusCode};
use kiln_common::Digest;

/// A parsed `/v2/` request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    KilnInfo,
    KilnLookup,
    KilnReport,
    /// `GET /v2/_kiln/writers/<repo>/<tag>`: who wrote a tag.
    KilnWriter {
        repo: String,
        tag: String,
    },
    Manifest {
        repo: String,
        reference: String,
    },
    Blob {
        repo: String,
        digest: Digest,
    },
    UploadStart {
        repo: String,
    },
    Upload {
        repo: String,
        id: String,
    },
    Tags {
        repo: String,
    },
    /// `GET /v2/<repo>/referrers/<digest>` (OCI 1.1).
    Referrers {
        repo: String,
        subject: Digest,
    },
}

/// Repository names as the distribution spec defines them.
pub fn valid_repo(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name.split('/').all(|c| {
            let b = c.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
                && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
                && b.iter().all(|x| {
                    x.is_ascii_lowercase() || x.is_ascii_digit() || matches!(x, b'.' | b'_' | b'-')
                })
        })
}

pub(super) fn valid_tag(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 128
        && t.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl Endpoint {
    pub fn parse(path: &str) -> Result<Endpoint, ApiError> {
        let rest = path.strip_prefix("/v2").ok_or(ApiError::NotFound)?;
        let rest = rest.strip_prefix('/').unwrap_or(rest);
        match rest {
            "" => return Ok(Endpoint::Base),
            "_catalog" => return Ok(Endpoint::Catalog),
            "_kiln/info" => return Ok(Endpoint::KilnInfo),
            "_kiln/lookup" => return Ok(Endpoint::KilnLookup),
            "_kiln/report" => return Ok(Endpoint::KilnReport),
            _ => {}
        }
        let repo_ok = |r: &str| -> Result<String, ApiError> {
            if valid_repo(r) {
                Ok(r.to_string())
            } else {
                Err(ApiError::NameInvalid(r.to_string()))
            }
        };
        if let Some(path) = rest.strip_prefix("_kiln/writers/") {
            let (repo, tag) = path.rsplit_once('/').ok_or(ApiError::NotFound)?;
            if !valid_tag(tag) {
                return Err(ApiError::NotFound);
            }
            return Ok(Endpoint::KilnWriter {
                repo: repo_ok(repo)?,
                tag: tag.to_string(),
            });
        }
        if let Some(repo) = rest.strip_suffix("/tags/list") {
            return Ok(Endpoint::Tags {
                repo: repo_ok(repo)?,
            });
        }
        if let Some((repo, d)) = rest
            .rsplit_once("/referrers/")
            .filter(|(_, d)| !d.contains('/'))
        {
            let repo = repo_ok(repo)?;
            let subject = d
                .parse()
                .map_err(|_| ApiError::DigestInvalid(d.to_string()))?;
            return Ok(Endpoint::Referrers { repo, subject });
        }
        if let Some((repo, reference)) = rest.rsplit_once("/manifests/") {
            let repo = repo_ok(repo)?;
            if reference.parse::<Digest>().is_err() && !valid_tag(reference) {
                return Err(ApiError::Code(
                    StatusCode::BAD_REQUEST,
                    "MANIFEST_INVALID",
                    format!("invalid reference {reference:?}"),
                ));
            }
            return Ok(Endpoint::Manifest {
                repo,
                reference: reference.to_string(),
            });
        }
        if let Some((repo, tail)) = rest.rsplit_once("/blobs/uploads") {
            let repo = repo_ok(repo)?;
            let id = tail.trim_start_matches('/');
            if id.is_empty() {
                return Ok(Endpoint::UploadStart { repo });
            }
            // Hex, and for sessions kept in the store `<hex>-<hex>`.
            if !id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') || id.len() > 80 {
                return Err(ApiError::Upload(UploadError::Unknown(id.to_string())));
            }
            return Ok(Endpoint::Upload {
                repo,
                id: id.to_string(),
            });
        }
        if let Some((repo, d)) = rest.rsplit_once("/blobs/") {
            let repo = repo_ok(repo)?;
            let digest = d
                .parse()
                .map_err(|_| ApiError::DigestInvalid(d.to_string()))?;
            return Ok(Endpoint::Blob { repo, digest });
        }
        Err(ApiError::NotFound)
    }

    pub fn route(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::KilnInfo => "kiln_info",
            Endpoint::KilnLookup => "kiln_lookup",
            Endpoint::KilnReport => "kiln_report",
            Endpoint::KilnWriter { .. } => "kiln_writer",
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::UploadStart { .. } | Endpoint::Upload { .. } => "upload",
            Endpoint::Tags { .. } => "tags",
            Endpoint::Referrers { .. } => "referrers",
        }
    }

    pub(super) fn repo(&self) -> Option<&str> {
        match self {
            Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::UploadStart { repo }
            | Endpoint::Upload { repo, .. }
            | Endpoint::KilnWriter { repo, .. }
            | Endpoint::Referrers { repo, .. }
            | Endpoint::Tags { repo } => Some(repo),
            _ => None,
        }
    }

    /// The access a method on this endpoint needs. The Kiln extensions name
    /// their repository in the body and check it there.
    pub(super) fn needs(&self, method: &Method) -> Access {
        match self {
            Endpoint::Base | Endpoint::KilnInfo => Access::None,
            Endpoint::KilnLookup | Endpoint::KilnReport => Access::None,
            _ if method == Method::GET || method == Method::HEAD => Access::Read,
            _ => Access::Write,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_nested_names() {
        let d = format!("sha256:{}", "a".repeat(64));
        assert_eq!(Endpoint::parse("/v2/").unwrap(), Endpoint::Base);
        assert_eq!(
            Endpoint::parse(&format!("/v2/a/b/c/blobs/{d}")).unwrap(),
            Endpoint::Blob {
                repo: "a/b/c".into(),
                digest: d.parse().unwrap()
            }
        );
        assert_eq!(
            Endpoint::parse("/v2/team/app/manifests/latest").unwrap(),
            Endpoint::Manifest {
                repo: "team/app".into(),
                reference: "latest".into()
            }
        );
        assert_eq!(
            Endpoint::parse("/v2/x/blobs/uploads/").unwrap(),
            Endpoint::UploadStart { repo: "x".into() }
        );
        assert_eq!(
            Endpoint::parse("/v2/x/blobs/uploads/abc123").unwrap(),
            Endpoint::Upload {
                repo: "x".into(),
                id: "abc123".into()
            }
        );
        assert!(matches!(
            Endpoint::parse("/v2/UPPER/tags/list"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse("/v2/x/blobs/sha256:zz"),
            Err(ApiError::DigestInvalid(_))
        ));
        assert!(matches!(
            Endpoint::parse("/v2/../x/tags/list"),
            Err(ApiError::NameInvalid(_))
        ));
        assert!(Endpoint::parse("/v2/x/manifests/../../etc").is_err());
        assert_eq!(
            Endpoint::parse(&format!("/v2/a/b/referrers/{d}")).unwrap(),
            Endpoint::Referrers {
                repo: "a/b".into(),
                subject: d.parse().unwrap()
            }
        );
        // A repository named `…/referrers/…` is still a repository.
        assert_eq!(
            Endpoint::parse("/v2/a/referrers/b/manifests/t").unwrap(),
            Endpoint::Manifest {
                repo: "a/referrers/b".into(),
                reference: "t".into()
            }
        );
        assert!(matches!(
            Endpoint::parse("/v2/a/referrers/sha256:zz"),
            Err(ApiError::DigestInvalid(_))
        ));
    }
}
