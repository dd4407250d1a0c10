//! Blob reads (whole or ranged) and deletes.

use super::http::{parse_range, with_headers};
use super::{ApiResult, App};
use crate::store::{BlobBody, StoreError};
use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::IntoResponse;
use kiln_common::Digest;

pub(super) async fn get(
    app: &App,
    repo: &str,
    d: &Digest,
    headers: &HeaderMap,
    head: bool,
) -> ApiResult {
    let size = app
        .store
        .blob_size(repo, d)
        .await?
        .ok_or_else(|| StoreError::BlobUnknown(d.clone()))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, size))
        .transpose()?;
    let mut h = vec![
        ("docker-content-digest", d.to_string()),
        ("content-type", "application/octet-stream".to_string()),
        ("accept-ranges", "bytes".to_string()),
    ];
    let status = match &range {
        Some(r) => {
            h.push((
                "content-range",
                format!("bytes {}-{}/{size}", r.start, r.end - 1),
            ));
            StatusCode::PARTIAL_CONTENT
        }
        None => StatusCode::OK,
    };
    let len = range.as_ref().map_or(size, |r| r.end - r.start);
    h.push(("content-length", len.to_string()));
    if head {
        return Ok(with_headers((status, Body::empty()).into_response(), &h));
    }
    let BlobBody { stream, .. } = app
        .store
        .open_blob(repo, d, range)
        .await?
        .ok_or_else(|| StoreError::BlobUnknown(d.clone()))?;
    Ok(with_headers(
        (status, Body::from_stream(stream)).into_response(),
        &h,
    ))
}

pub(super) async fn delete(app: &App, repo: &str, digest: Digest) -> ApiResult {
    if app.store.blob_size(repo, &digest).await?.is_none() {
        return Err(StoreError::BlobUnknown(digest).into());
    }
    app.store.delete_blob(&digest).await?;
    Ok(StatusCode::ACCEPTED.into_response())
}
