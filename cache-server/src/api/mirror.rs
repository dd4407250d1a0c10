//! Pulls routed to an upstream in mirror mode: the mirror makes the
//! manifest or blob present under its internal repository, then the
//! ordinary read answers from there. Routed names are read-only.

use super::endpoint::Endpoint;
use super::http::with_headers;
use super::{blob, manifest, ApiError, ApiResult, App};
use crate::mirror::{Freshness, Mirror, MirrorError};
use axum::http::{HeaderMap, Method, StatusCode};
use std::collections::BTreeMap;

impl From<MirrorError> for ApiError {
    fn from(e: MirrorError) -> ApiError {
        let msg = kiln_common::report::Report(&e).to_string();
        match e {
            MirrorError::NotFound { .. } => {
                ApiError::Code(StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN", msg)
            }
            MirrorError::Store { source, .. } => (*source).into(),
            _ => ApiError::Code(StatusCode::BAD_GATEWAY, "UPSTREAM", msg),
        }
    }
}

/// The answer to a request on a routed repository; `None` for a request
/// that is not routed (a cache repository).
pub(super) async fn handle(
    app: &App,
    mirror: &Mirror,
    ep: &Endpoint,
    method: &Method,
    query: &BTreeMap<String, String>,
    headers: &HeaderMap,
) -> Option<ApiResult> {
    let repo = ep.repo()?;
    let route = mirror.route(repo, query.get("ns").map(String::as_str))?;
    let read = *method == Method::GET || *method == Method::HEAD;
    let head = *method == Method::HEAD;
    Some(match ep {
        Endpoint::Manifest { reference, .. } if read => {
            match mirror.manifest(&app.store, &route, reference).await {
                Ok(f) => {
                    mirror.used(&app.store, &route, reference).await;
                    let fresh = f == Freshness::Fresh;
                    app.store
                        .metrics()
                        .mirror_served
                        .get_or_create(&crate::metrics::ServedLabel {
                            upstream: mirror.host(&route).to_string(),
                            freshness: if fresh { "fresh" } else { "stale" }.into(),
                        })
                        .inc();
                    // By digest: a mirrored tag's blobs arrive only when
                    // asked for, so it is never a complete cache entry.
                    let digest = match reference.parse::<kiln_common::Digest>() {
                        Ok(d) => Ok(d),
                        Err(_) => match app.store.resolve_tag(&route.local, reference).await {
                            Ok(Some(t)) => Ok(t.digest),
                            Ok(None) => Err(ApiError::Code(
                                StatusCode::NOT_FOUND,
                                "MANIFEST_UNKNOWN",
                                format!("{repo}:{reference}"),
                            )),
                            Err(e) => Err(e.into()),
                        },
                    };
                    let digest = match digest {
                        Ok(d) => d,
                        Err(e) => return Some(Err(e)),
                    };
                    manifest::get(app, &route.local, digest.as_str(), head)
                        .await
                        .map(|r| {
                            if fresh {
                                r
                            } else {
                                with_headers(r, &[("x-kiln-stale", "true".to_string())])
                            }
                        })
                }
                Err(e) => Err(e.into()),
            }
        }
        Endpoint::Blob { digest, .. } if read => {
            match mirror.blob(&app.store, &route, digest).await {
                Ok(()) => blob::get(app, &route.local, digest, headers, head).await,
                Err(e) => Err(e.into()),
            }
        }
        _ => Err(ApiError::Denied(format!(
            "{repo} (a mirror of {}: read-only, manifests and blobs only)",
            route.repo
        ))),
    })
}
