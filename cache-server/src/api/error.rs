//! Every error the API can answer with, and its one mapping to an HTTP
//! status, a distribution-spec error code and a JSON body.

use crate::store::StoreError;
use crate::uploads::UploadError;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Upload(#[from] UploadError),
    #[error("invalid repository name {0:?}")]
    NameInvalid(String),
    #[error("invalid digest {0:?}")]
    DigestInvalid(String),
    #[error("authentication required")]
    Unauthorized(String),
    #[error("access to {0} denied")]
    Denied(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    Unsupported,
    #[error("range not satisfiable")]
    RangeInvalid { size: u64 },
    #[error("{2}")]
    Code(StatusCode, &'static str, String),
    /// As `Code`, with a `Retry-After` (an upstream held by a 429 or an
    /// open breaker).
    #[error("{2}")]
    Later(StatusCode, &'static str, String, std::time::Duration),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, &'static str) {
        use StoreError as S;
        use UploadError as U;
        match self {
            ApiError::Store(e) => match e {
                S::Storage(crate::backend::StorageError::Unsupported { .. }) => {
                    (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED")
                }
                S::Storage(_) => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
                S::Tier(_) | S::Corrupt { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
                S::ManifestUnknown { .. } => (StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN"),
                S::BlobUnknown(_) => (StatusCode::NOT_FOUND, "BLOB_UNKNOWN"),
                S::ManifestInvalid(_) => (StatusCode::BAD_REQUEST, "MANIFEST_INVALID"),
                S::ManifestBlobUnknown { .. } => (StatusCode::BAD_REQUEST, "MANIFEST_BLOB_UNKNOWN"),
                S::ManifestTooBig { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "SIZE_INVALID"),
                S::DigestInvalid { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            },
            ApiError::Upload(e) => match e {
                U::Unknown(_) => (StatusCode::NOT_FOUND, "BLOB_UPLOAD_UNKNOWN"),
                U::RangeInvalid { .. } => {
                    (StatusCode::RANGE_NOT_SATISFIABLE, "BLOB_UPLOAD_INVALID")
                }
                U::Body { .. } => (StatusCode::BAD_REQUEST, "BLOB_UPLOAD_INVALID"),
                U::DigestInvalid { .. } => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
                U::SizeInvalid { .. } => (StatusCode::BAD_REQUEST, "SIZE_INVALID"),
                U::Io { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "UNKNOWN"),
                U::Storage { .. } => (StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE"),
            },
            ApiError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            ApiError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Unsupported => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            ApiError::RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            ApiError::Code(s, c, _) | ApiError::Later(s, c, _, _) => (*s, c),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        let message = kiln_common::report::Report(&self).to_string();
        if status.is_server_error() {
            tracing::warn!("{code}: {message}");
        }
        let body = serde_json::json!({"errors": [{"code": code, "message": message}]});
        let mut r = (
            status,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
        match &self {
            ApiError::Unauthorized(challenge) => {
                if let Ok(v) = HeaderValue::from_str(challenge) {
                    r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
                }
            }
            ApiError::RangeInvalid { size } => {
                if let Ok(v) = HeaderValue::from_str(&format!("bytes */{size}")) {
                    r.headers_mut().insert(header::CONTENT_RANGE, v);
                }
            }
            ApiError::Later(_, _, _, after) => {
                let secs = after.as_secs().max(1).to_string();
                if let Ok(v) = HeaderValue::from_str(&secs) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
            }
            _ => {}
        }
        r
    }
}
