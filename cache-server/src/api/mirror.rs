//! Pulls routed to an upstream in mirror mode: the mirror makes the
//! manifest or blob present under its internal repository, then the
//! ordinary read answers from there. Routed names are read-only.

use super::endpoint::Endpoint;
use super::http::with_headers;
use super::{blob, manifest, ApiError, ApiResult, App};
use crate::mirror::{Freshness, Hold, Mirror, MirrorError};
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
            MirrorError::Held {
                why, retry_after, ..
            } => match why {
                Hold::RateLimited => ApiError::Later(
                    StatusCode::TOO_MANY_REQUESTS,
                    "TOOMANYREQUESTS",
                    msg,
                    retry_after,
                ),
                Hold::BreakerOpen => ApiError::Later(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "UNAVAILABLE",
                    msg,
                    retry_after,
                ),
            },
            MirrorError::Answered {
                status: 429,
                retry_after,
                ..
            } => ApiError::Later(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                msg,
                retry_after.unwrap_or(std::time::Duration::from_secs(60)),
            ),
            _ => ApiError::Code(StatusCode::BAD_GATEWAY, "UPSTREAM", msg),
        }
    }
}

/// The answer to a request on a routed repository; `None` for a request
/// that is not routed (a cache repository).
pub(super) async fn handle(
    app: &std::sync::Arc<App>,
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
                    let fresh = f != Freshness::Stale;
                    let from = match f {
                        Freshness::Fresh => "cache",
                        Freshness::Fetched => "upstream",
                        Freshness::Stale => "stale",
                    };
                    app.store
                        .metrics()
                        .mirror_served
                        .get_or_create(&crate::metrics::ServedLabel {
                            upstream: mirror.host(&route).to_string(),
                            from: from.into(),
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
        // A whole-blob GET streams while the blob is stored; HEAD and
        // ranges are answered from the store.
        Endpoint::Blob { digest, .. } if read && !head && !headers.contains_key("range") => {
            match mirror.begin_blob(&app.store, &route, digest).await {
                Ok(None) => {
                    let r = blob::get(app, &route.local, digest, headers, false).await;
                    if let Some(n) = r.as_ref().ok().and_then(content_length) {
                        app.store
                            .metrics()
                            .mirror_bytes_saved
                            .get_or_create(&crate::metrics::UpstreamLabel {
                                upstream: mirror.host(&route).to_string(),
                            })
                            .inc_by(n);
                    }
                    r
                }
                Ok(Some(fetch)) => Ok(stream_blob(app.clone(), digest, fetch)),
                Err(e) => Err(e.into()),
            }
        }
        Endpoint::Blob { digest, .. } if read => {
            match mirror.blob(&app.store, &route, digest).await {
                Ok(()) => blob::get(app, &route.local, digest, headers, head).await,
                Err(e) => Err(e.into()),
            }
        }
        // Not proxied: a 404 sends OCI clients to the tag schema
        // (`sha256-<hex>` tags), which is served like any tag.
        Endpoint::Referrers { subject, .. } if read => Err(ApiError::Code(
            StatusCode::NOT_FOUND,
            "UNSUPPORTED",
            format!(
                "{repo}: referrers are not proxied from {}; use the tag {}",
                route.repo,
                subject.referrers_tag()
            ),
        )),
        _ => Err(ApiError::Denied(format!(
            "{repo} (a mirror of {}: read-only, manifests and blobs only)",
            route.repo
        ))),
    })
}

/// The response for a blob still arriving from the upstream: each chunk is
/// passed on as it is staged; the fetch goes on to the end (and is
/// committed) even if this client goes away, so the callers waiting on it
/// find it stored. A failure or a digest mismatch ends the body with an
/// error before its last chunk, so the client sees a broken transfer,
/// never a complete wrong one.
fn stream_blob(
    app: std::sync::Arc<App>,
    digest: &kiln_common::Digest,
    mut fetch: crate::mirror::BlobFetch,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    type Chunk = Result<bytes::Bytes, std::io::Error>;
    let (tx, rx) = tokio::sync::mpsc::channel::<Chunk>(16);
    let mut h = vec![
        ("docker-content-digest", digest.to_string()),
        ("content-type", "application/octet-stream".to_string()),
    ];
    if let Some(n) = fetch.len {
        h.push(("content-length", n.to_string()));
    }
    tokio::spawn(async move {
        let mut client = Some(tx);
        let fail = |client: &mut Option<tokio::sync::mpsc::Sender<Chunk>>,
                    e: &crate::mirror::MirrorError| {
            let msg = kiln_common::report::Report(e).to_string();
            tracing::warn!("mirrored blob: {msg}");
            if let Some(tx) = client.take() {
                let _ = tx.try_send(Err(std::io::Error::other(msg)));
            }
        };
        // The last chunk is held back until the digest matches: a client
        // never receives a complete body that is wrong.
        let mut held: Option<bytes::Bytes> = None;
        while let Some(chunk) = fetch.next().await {
            match chunk {
                Ok(c) => {
                    if let (Some(prev), Some(tx)) = (held.replace(c), &client) {
                        if tx.send(Ok(prev)).await.is_err() {
                            client = None;
                        }
                    }
                }
                Err(e) => {
                    fail(&mut client, &e);
                    return;
                }
            }
        }
        match fetch.finish(&app.store).await {
            Ok(()) => {
                if let (Some(last), Some(tx)) = (held, &client) {
                    let _ = tx.send(Ok(last)).await;
                }
            }
            Err(e) => fail(&mut client, &e),
        }
    });
    let body = axum::body::Body::from_stream(receiver_stream(rx));
    with_headers((StatusCode::OK, body).into_response(), &h)
}

/// A channel's receiver as a stream.
fn receiver_stream<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|x| (x, rx)) })
}

/// A response's `Content-Length`.
fn content_length(r: &axum::response::Response) -> Option<u64> {
    r.headers()
        .get(axum::http::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}
