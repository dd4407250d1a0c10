//! Manifests (GET/HEAD/PUT/DELETE), the tags list and the catalog.

use super::http::{json_response, with_headers};
use super::{ApiError, ApiResult, App};
use crate::auth::{Access, Caller};
use crate::store::{Lookup, StoreError};
use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use kiln_common::Digest;
use std::collections::BTreeMap;

pub(super) async fn get(app: &App, repo: &str, reference: &str, head: bool) -> ApiResult {
    let unknown = || StoreError::ManifestUnknown {
        repo: repo.to_string(),
        reference: reference.to_string(),
    };
    let (d, m) = match reference.parse::<Digest>() {
        Ok(d) => {
            let m = app.store.manifest(repo, &d).await?.ok_or_else(unknown)?;
            (d, m)
        }
        Err(_) => {
            let scope = crate::metrics::mount_scope(reference).filter(|_| !head);
            match app.store.lookup(repo, reference).await? {
                Lookup::Hit(e, m) => {
                    if let Some(scope) = scope {
                        let bytes = crate::manifest::layer_bytes(&m.bytes);
                        app.store.metrics().mount_restore(repo, scope, Some(bytes));
                    }
                    (e.digest, m)
                }
                Lookup::Miss | Lookup::Expired => {
                    if let Some(scope) = scope {
                        app.store.metrics().mount_restore(repo, scope, None);
                    }
                    return Err(unknown().into());
                }
            }
        }
    };
    let headers = [
        ("content-type", m.media_type.clone()),
        ("docker-content-digest", d.to_string()),
        ("content-length", m.bytes.len().to_string()),
    ];
    let body = if head {
        Body::empty()
    } else {
        Body::from(m.bytes.clone())
    };
    Ok(with_headers(
        (StatusCode::OK, body).into_response(),
        &headers,
    ))
}

pub(super) async fn put(
    app: &App,
    caller: &Caller,
    repo: &str,
    reference: &str,
    req: Request,
) -> ApiResult {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let limit = app.store.config().max_manifest_bytes;
    let bytes = axum::body::to_bytes(req.into_body(), limit + 1)
        .await
        .map_err(|_| StoreError::ManifestTooBig {
            size: limit + 1,
            limit,
        })?;
    let mount = crate::metrics::mount_scope(reference)
        .map(|scope| (scope, crate::manifest::layer_bytes(&bytes)));
    let stored = app
        .store
        .put_manifest(repo, reference, ct.as_deref(), bytes)
        .await?;
    let d = stored.digest;
    if !reference.starts_with("sha256:") {
        let w = crate::auth::Auth::writer(caller, &d);
        app.store.record_writer(repo, reference, &w).await;
    }
    if let Some((scope, size)) = mount {
        app.store.metrics().mount_save(repo, scope, size);
    }
    let mut headers = vec![
        ("location", format!("/v2/{repo}/manifests/{d}")),
        ("docker-content-digest", d.to_string()),
        ("content-length", "0".into()),
    ];
    // OCI 1.1: the registry lists it among the subject's referrers, so
    // the client need not keep a tag-schema index.
    if let Some(s) = stored.subject {
        headers.push(("oci-subject", s.to_string()));
    }
    Ok(with_headers(StatusCode::CREATED.into_response(), &headers))
}

/// `GET /v2/<repo>/referrers/<digest>`: the manifests naming `subject`,
/// as an OCI index, filtered by `artifactType` when asked. An unknown
/// subject has no referrers (an empty index, never a 404); a backend
/// that keeps no referrer records answers 404, which tells clients to
/// fall back to the tag schema.
pub(super) async fn referrers(
    app: &App,
    repo: &str,
    subject: &Digest,
    query: &BTreeMap<String, String>,
) -> ApiResult {
    let found = match app.store.referrers(repo, subject).await {
        Err(StoreError::Storage(crate::backend::StorageError::Unsupported { .. })) => {
            return Err(ApiError::Code(
                StatusCode::NOT_FOUND,
                "UNSUPPORTED",
                format!(
                    "this storage backend keeps no referrers; use the tag {}",
                    subject.referrers_tag()
                ),
            ))
        }
        r => r?,
    };
    let (index, filtered) =
        crate::referrers::listing(found, query.get("artifactType").map(String::as_str));
    let mut r = json_response(StatusCode::OK, &index);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(kiln_common::image::OCI_INDEX),
    );
    if filtered {
        r.headers_mut().insert(
            "oci-filters-applied",
            HeaderValue::from_static("artifactType"),
        );
    }
    Ok(r)
}

/// DELETE by digest (with the tags pointing at it) or by tag.
pub(super) async fn delete(app: &App, repo: String, reference: String) -> ApiResult {
    if app.store.delete_manifest(&repo, &reference).await? {
        Ok(StatusCode::ACCEPTED.into_response())
    } else {
        Err(StoreError::ManifestUnknown { repo, reference }.into())
    }
}

/// The repositories this caller may read.
pub(super) async fn catalog(app: &App, caller: &Caller) -> ApiResult {
    let all = app.store.catalog().await?;
    let visible: Vec<String> = all
        .into_iter()
        .filter(|r| app.auth.access(caller, Some(r)) >= Access::Read)
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"repositories": visible}),
    ))
}

/// `GET /v2/<repo>/tags/list`, paginated with `n` and `last`.
pub(super) async fn tags(app: &App, repo: &str, query: &BTreeMap<String, String>) -> ApiResult {
    let mut tags = app.store.tags(repo).await?;
    // A backend that cannot list repositories knows only tags.
    let known = || async {
        app.store
            .catalog()
            .await
            .map(|c| c.binary_search(&repo.to_string()).is_ok())
            .unwrap_or(false)
    };
    if tags.is_empty() && !known().await {
        return Err(ApiError::Code(
            StatusCode::NOT_FOUND,
            "NAME_UNKNOWN",
            format!("repository {repo} unknown"),
        ));
    }
    if let Some(last) = query.get("last") {
        tags.retain(|t| t.as_str() > last.as_str());
    }
    let mut link = None;
    if let Some(n) = query.get("n").and_then(|n| n.parse::<usize>().ok()) {
        if tags.len() > n {
            tags.truncate(n);
            if let Some(l) = tags.last() {
                link = Some(format!(
                    "</v2/{repo}/tags/list?n={n}&last={l}>; rel=\"next\""
                ));
            }
        }
    }
    let mut r = json_response(
        StatusCode::OK,
        &serde_json::json!({"name": repo, "tags": tags}),
    );
    if let Some(l) = link.and_then(|l| HeaderValue::from_str(&l).ok()) {
        r.headers_mut().insert(header::LINK, l);
    }
    Ok(r)
}
