//! How registry access fails: [`RegistryError`], with remote failures
//! classified once into a [`RemoteKind`] from oci-client's typed errors.

use crate::digest::{Digest, DigestError};
use crate::image::ImageError;
use oci_client::Reference;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}")]
    BadReference {
        reference: String,
        source: super::ReferenceError,
    },
    /// The registry (or the way to it) failed; `kind` says how, so callers
    /// decide on it rather than on the text.
    #[error("{reference}: {kind}")]
    Remote {
        reference: String,
        kind: RemoteKind,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{reference}")]
    Image {
        reference: String,
        #[source]
        source: ImageError,
    },
    #[error("{reference}: blob {digest}")]
    Digest {
        reference: String,
        digest: Digest,
        #[source]
        source: DigestError,
    },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// No HTTP client could be made at all (no usable CA certificates and
    /// nowhere to put a placeholder for them: see `tls::ensure_ca_roots`).
    #[error("setting up the registry client")]
    Client {
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    /// Boxed: its paths would make every `RegistryError` larger.
    #[error(transparent)]
    ClientCert(Box<super::ClientCertError>),
}

impl From<super::ClientCertError> for RegistryError {
    fn from(e: super::ClientCertError) -> Self {
        RegistryError::ClientCert(Box::new(e))
    }
}

/// How a registry request failed, classified once from oci-client's typed
/// errors (status codes and the distribution spec's error codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteKind {
    /// The manifest, blob or repository does not exist.
    NotFound,
    /// No or wrong credentials.
    Unauthorized,
    /// Credentials accepted, access refused.
    Denied,
    /// The registry refuses to move the tag (an immutable tag, as ECR's
    /// `TAG_INVALID` or Harbor's immutability rules).
    TagRefused,
    /// HTTP 429 / TOOMANYREQUESTS: retried after what `Retry-After` asks
    /// (the URL is where to ask).
    RateLimited { url: String },
    /// Connection, timeout, 5xx: worth retrying.
    Transient,
    /// Anything else: a protocol or content problem retrying will not fix.
    Other,
}

impl std::fmt::Display for RemoteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteKind::NotFound => "not found",
            RemoteKind::Unauthorized => "unauthorized",
            RemoteKind::Denied => "access denied",
            RemoteKind::TagRefused => "the registry refuses to overwrite the tag",
            RemoteKind::RateLimited { .. } => "rate limited by the registry",
            RemoteKind::Transient => "request failed",
            RemoteKind::Other => "registry error",
        })
    }
}

impl RemoteKind {
    /// Worth another attempt.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteKind::Transient | RemoteKind::RateLimited { .. })
    }

    /// A plain HTTP failure: by its status, or a connection problem.
    fn of_http(r: &reqwest::Error) -> RemoteKind {
        r.status()
            .map_or(RemoteKind::Transient, |s| Self::of_status(s.as_u16()))
    }

    /// An HTTP status that is not a success, as a kind.
    pub(crate) fn of_status(status: u16) -> RemoteKind {
        match status {
            401 => RemoteKind::Unauthorized,
            403 => RemoteKind::Denied,
            404 => RemoteKind::NotFound,
            s if s < 500 => RemoteKind::Other,
            _ => RemoteKind::Transient,
        }
    }

    pub(crate) fn of(e: &(dyn std::error::Error + 'static)) -> RemoteKind {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
        let Some(oe) = e.downcast_ref::<E>() else {
            return match e.downcast_ref::<reqwest::Error>() {
                Some(r) => Self::of_http(r),
                None => RemoteKind::Transient,
            };
        };
        match oe {
            E::ServerError { code: 429, url, .. } => RemoteKind::RateLimited { url: url.clone() },
            E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
                RemoteKind::NotFound
            }
            E::ServerError { code: 401, .. }
            | E::UnauthorizedError { .. }
            | E::AuthenticationFailure(_) => RemoteKind::Unauthorized,
            E::ServerError { code: 403, .. } => RemoteKind::Denied,
            E::ServerError { code, .. } if *code >= 500 => RemoteKind::Transient,
            E::ServerError { .. } => RemoteKind::Other,
            E::RegistryError { envelope, url } => {
                let codes: Vec<&C> = envelope.errors.iter().map(|x| &x.code).collect();
                if codes.contains(&&C::Toomanyrequests) {
                    RemoteKind::RateLimited { url: url.clone() }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        C::ManifestUnknown
                            | C::BlobUnknown
                            | C::NameUnknown
                            | C::NotFound
                            | C::ManifestBlobUnknown
                    )
                }) {
                    RemoteKind::NotFound
                } else if codes.contains(&&C::Unauthorized) {
                    RemoteKind::Unauthorized
                } else if codes.contains(&&C::TagInvalid) {
                    RemoteKind::TagRefused
                } else if codes.contains(&&C::Denied) {
                    RemoteKind::Denied
                } else {
                    RemoteKind::Other
                }
            }
            E::RequestError(r) => Self::of_http(r),
            E::IoError(_) => RemoteKind::Transient,
            _ => RemoteKind::Other,
        }
    }
}

impl RegistryError {
    /// A failure Kiln itself detected (no underlying error).
    pub(crate) fn remote(
        reference: &Reference,
        kind: RemoteKind,
        what: impl std::fmt::Display,
    ) -> Self {
        RegistryError::Remote {
            reference: reference.whole(),
            kind,
            source: Some(what.to_string().into()),
        }
    }

    /// A client error, classified once; the error itself stays the source.
    pub(crate) fn remote_err<E>(reference: &Reference, e: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let kind = RemoteKind::of(&e);
        RegistryError::Remote {
            reference: reference.whole(),
            kind,
            source: Some(Box::new(e)),
        }
    }

    /// The remote failure's kind, when this is one.
    pub fn remote_kind(&self) -> Option<&RemoteKind> {
        match self {
            RegistryError::Remote { kind, .. } => Some(kind),
            _ => None,
        }
    }

    pub(crate) fn is_transient(&self) -> bool {
        match self {
            RegistryError::Remote { kind, .. } => kind.is_transient(),
            RegistryError::Io { .. } => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_failures_are_classified_from_typed_errors() {
        use oci_client::errors::{OciDistributionError as E, OciEnvelope, OciError, OciErrorCode};
        let server = |code| E::ServerError {
            code,
            url: "http://r/v2/x".into(),
            message: String::new(),
        };
        let envelope = |code| E::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "m".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://r/v2/x".into(),
        };
        let r: Reference = "r/x:1".parse().unwrap();
        let kind = |e: E| RegistryError::remote_err(&r, e).remote_kind().cloned();
        assert_eq!(kind(server(404)), Some(RemoteKind::NotFound));
        assert_eq!(kind(server(503)), Some(RemoteKind::Transient));
        assert_eq!(kind(server(403)), Some(RemoteKind::Denied));
        assert_eq!(
            kind(server(429)),
            Some(RemoteKind::RateLimited {
                url: "http://r/v2/x".into()
            })
        );
        assert_eq!(
            kind(envelope(OciErrorCode::ManifestUnknown)),
            Some(RemoteKind::NotFound)
        );
        assert_eq!(
            kind(envelope(OciErrorCode::TagInvalid)),
            Some(RemoteKind::TagRefused)
        );
        assert_eq!(
            kind(envelope(OciErrorCode::Unauthorized)),
            Some(RemoteKind::Unauthorized)
        );
        let e = RegistryError::remote_err(&r, server(502));
        assert!(e.is_transient());
        assert!(!RegistryError::remote_err(&r, server(404)).is_transient());
        // The message names the reference and the kind; the cause stays a source.
        assert_eq!(e.to_string(), "docker.io/r/x:1: request failed");
        assert!(crate::report::Report(&e).to_string().contains("code: 502"));
    }
}
