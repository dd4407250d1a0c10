//! Upload sessions: start (or mount from another repository, or a
//! monolithic upload with `?digest=`), status, PATCH chunks, the closing
//! PUT, and cancel. Bytes are hashed as they arrive; only a matching digest
//! is committed.

use super::endpoint::valid_repo;
use super::http::{parse_content_range, with_headers};
use super::{ApiError, ApiResult, App};
use crate::auth::{Access, Caller};
use crate::uploads::{check_size, UploadError};
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_common::Digest;
use std::collections::BTreeMap;

/// `POST /v2/<repo>/blobs/uploads/`.
pub(super) async fn start(
    app: &App,
    caller: &Caller,
    repo: &str,
    query: &BTreeMap<String, String>,
    req: Request,
) -> ApiResult {
    if let (Some(mount), Some(from)) = (query.get("mount"), query.get("from")) {
        if let Ok(d) = mount.parse::<Digest>() {
            let readable = valid_repo(from) && app.auth.access(caller, Some(from)) >= Access::Read;
            if readable && app.store.blob_size(from, &d).await?.is_some() {
                return Ok(blob_created(repo, &d));
            }
        }
    }
    let id = app.uploads.start(repo)?;
    if let Some(d) = query.get("digest") {
        let d: Digest = d.parse().map_err(|_| ApiError::DigestInvalid(d.clone()))?;
        return finish_upload(app, repo, &id, &d, req).await;
    }
    Ok(upload_accepted(repo, &id, 0))
}

pub(super) async fn status(app: &App, repo: &str, id: &str) -> ApiResult {
    let n = app.uploads.offset(&app.store, repo, id).await?;
    let mut r = upload_accepted(repo, id, n);
    *r.status_mut() = StatusCode::NO_CONTENT;
    Ok(r)
}

/// One chunk; a `Content-Range` must match what arrived.
pub(super) async fn patch(app: &App, repo: &str, id: String, req: Request) -> ApiResult {
    let range = req
        .headers()
        .get(header::CONTENT_RANGE)
        .and_then(|v| v.to_str().ok())
        .map(parse_content_range)
        .transpose()?;
    let n = app
        .uploads
        .append(
            &app.store,
            repo,
            &id,
            range.map(|r| r.0),
            req.into_body().into_data_stream(),
        )
        .await?;
    if let Some((start, end)) = range {
        // `append` checked that the chunk starts at `start`, where the
        // session was. `end` is inclusive and may be u64::MAX: no overflow
        // on hostile input.
        let declared = (end - start).saturating_add(1);
        if let Err(e) = check_size(&id, Some(declared), n - start) {
            app.uploads.cancel(&app.store, repo, &id).await?;
            return Err(e.into());
        }
    }
    Ok(upload_accepted(repo, &id, n))
}

/// The closing PUT with `?digest=`.
pub(super) async fn put(
    app: &App,
    repo: &str,
    id: &str,
    query: &BTreeMap<String, String>,
    req: Request,
) -> ApiResult {
    let d = query
        .get("digest")
        .ok_or_else(|| ApiError::DigestInvalid(String::new()))?;
    let d: Digest = d.parse().map_err(|_| ApiError::DigestInvalid(d.clone()))?;
    finish_upload(app, repo, id, &d, req).await
}

pub(super) async fn cancel(app: &App, repo: &str, id: &str) -> ApiResult {
    app.uploads.cancel(&app.store, repo, id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn finish_upload(app: &App, repo: &str, id: &str, d: &Digest, req: Request) -> ApiResult {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let finished = app
        .uploads
        .finish(
            &app.store,
            repo,
            id,
            d,
            declared,
            req.into_body().into_data_stream(),
        )
        .await;
    let staged = match finished {
        Ok(s) => s,
        Err(e) => {
            app.store.metrics().upload(match e {
                UploadError::DigestInvalid { .. } => "digest_invalid",
                UploadError::SizeInvalid { .. } => "size_invalid",
                _ => "aborted",
            });
            return Err(e.into());
        }
    };
    app.store
        .commit_blob(&staged.digest, &staged.path, staged.size)
        .await?;
    app.uploads.committed(&app.store, id).await;
    app.store.metrics().upload("committed");
    Ok(blob_created(repo, d))
}

fn blob_created(repo: &str, d: &Digest) -> Response {
    with_headers(
        StatusCode::CREATED.into_response(),
        &[
            ("location", format!("/v2/{repo}/blobs/{d}")),
            ("docker-content-digest", d.to_string()),
            ("content-length", "0".into()),
        ],
    )
}

fn upload_accepted(repo: &str, id: &str, received: u64) -> Response {
    let range = if received == 0 {
        "0-0".to_string()
    } else {
        format!("0-{}", received - 1)
    };
    with_headers(
        StatusCode::ACCEPTED.into_response(),
        &[
            ("location", format!("/v2/{repo}/blobs/uploads/{id}")),
            ("range", range),
            ("docker-upload-uuid", id.to_string()),
            ("content-length", "0".into()),
        ],
    )
}
