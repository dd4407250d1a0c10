//! Kiln's extensions under `/v2/_kiln/` (server info, the batch lookup,
//! build reports) and the `/v2/` base route.

use super::endpoint::{valid_repo, valid_tag};
use super::http::json_response;
use super::{check, ApiError, ApiResult, App, MAX_LOOKUP_KEYS};
use crate::auth::{Access, Caller};
use crate::store::{Lookup, StoreError};
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use kiln_common::cache_api::{
    BuildReport, Info, LookupEntry, LookupRequest, LookupResponse, Writer,
};

/// `GET /v2/`: with accounts configured, anonymous callers are challenged
/// so that clients holding credentials know to send them.
pub(super) fn base(app: &App, caller: &Caller) -> ApiResult {
    if *caller == Caller::Rejected || (*caller == Caller::Anonymous && app.auth.has_users()) {
        return Err(ApiError::Unauthorized(app.auth.challenge()));
    }
    Ok(json_response(StatusCode::OK, &serde_json::json!({})))
}

pub(super) fn info() -> Response {
    json_response(
        StatusCode::OK,
        &Info {
            server: "kiln-cache-server".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            max_lookup_keys: MAX_LOOKUP_KEYS,
            fallbacks: true,
        },
    )
}

/// A Kiln extension's JSON body, at most `limit` bytes.
async fn json_body<T: serde::de::DeserializeOwned>(
    req: Request,
    limit: usize,
    code: &'static str,
) -> Result<T, ApiError> {
    let bad = |m: String| ApiError::Code(StatusCode::BAD_REQUEST, code, m);
    let body = axum::body::to_bytes(req.into_body(), limit)
        .await
        .map_err(|e| bad(e.to_string()))?;
    serde_json::from_slice(&body).map_err(|e| bad(e.to_string()))
}

/// The extensions name their repository in the body: check it there.
fn readable(app: &App, caller: &Caller, repo: &str) -> Result<(), ApiError> {
    if !valid_repo(repo) {
        return Err(ApiError::NameInvalid(repo.to_string()));
    }
    check(app, caller, Some(repo), Access::Read)
}

/// One round trip for many cache keys: which tags exist (unexpired, with
/// all their blobs) and their manifests, so an executor plans a whole build
/// with one request instead of one per step.
pub(super) async fn lookup(app: &App, caller: &Caller, req: Request) -> ApiResult {
    let q: LookupRequest = json_body(req, 1 << 20, "LOOKUP_INVALID").await?;
    readable(app, caller, &q.repository)?;
    if q.keys.len() > MAX_LOOKUP_KEYS {
        return Err(ApiError::Code(
            StatusCode::BAD_REQUEST,
            "LOOKUP_INVALID",
            format!(
                "{} keys; at most {MAX_LOOKUP_KEYS} per request",
                q.keys.len()
            ),
        ));
    }
    if let Some(k) = q.keys.iter().find(|k| !valid_tag(k)) {
        return Err(ApiError::Code(
            StatusCode::BAD_REQUEST,
            "LOOKUP_INVALID",
            format!("invalid key {k:?}"),
        ));
    }
    if q.fallbacks.len() > MAX_FALLBACKS {
        return Err(ApiError::Code(
            StatusCode::BAD_REQUEST,
            "LOOKUP_INVALID",
            format!("{} fallbacks; at most {MAX_FALLBACKS}", q.fallbacks.len()),
        ));
    }
    // Every repository of the chain must be readable by the caller: a
    // fallback is never a way around a grant.
    for f in &q.fallbacks {
        readable(app, caller, f)?;
    }
    let mut out = LookupResponse::default();
    let mut wanted = q.keys;
    let chain = std::iter::once(&q.repository).chain(&q.fallbacks);
    for (i, repo) in chain.enumerate() {
        if wanted.is_empty() {
            break;
        }
        let source = (i > 0).then(|| repo.clone());
        let (missed, hits) =
            lookup_in(app, repo, source, std::mem::take(&mut wanted), &mut out).await?;
        if i > 0 && hits > 0 {
            let label = crate::metrics::SourceLabel {
                repo: q.repository.clone(),
                source: repo.clone(),
            };
            app.store
                .metrics()
                .fallback_hits
                .get_or_create(&label)
                .inc_by(hits);
        }
        wanted = missed;
    }
    Ok(json_response(StatusCode::OK, &out))
}

/// Most fallback repositories one lookup may chain.
const MAX_FALLBACKS: usize = 8;

/// Looks `keys` up in `repo`, adding hits (marked with `source`, the
/// fallback's name) and expired keys and errors to `out`; returns the keys
/// `repo` does not have, for the next repository of the chain, and how
/// many it had. An expired entry is a miss there too: a fallback may have
/// a fresh one.
async fn lookup_in(
    app: &App,
    repo: &str,
    source: Option<String>,
    keys: Vec<String>,
    out: &mut LookupResponse,
) -> Result<(Vec<String>, u64), ApiError> {
    type Found = (String, Result<Lookup, StoreError>, Option<Writer>);
    let results: Vec<Found> = futures_util::stream::iter(keys)
        .map(|k| async move {
            let r = app.store.lookup(repo, &k).await;
            let writer = match &r {
                Ok(Lookup::Hit(e, _)) => app.store.writer(repo, &k, &e.digest).await,
                _ => None,
            };
            (k, r, writer)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let (mut missed, mut hits) = (Vec::new(), 0);
    for (k, r, writer) in results {
        match r {
            Ok(Lookup::Hit(e, m)) => {
                // Manifests are JSON, hence UTF-8; the client checks the digest.
                let Ok(manifest) = String::from_utf8(m.bytes.to_vec()) else {
                    out.errors += 1;
                    continue;
                };
                out.expired.retain(|x| x != &k);
                out.entries.insert(
                    k,
                    LookupEntry {
                        digest: e.digest,
                        media_type: m.media_type.clone(),
                        manifest,
                        repository: source.clone(),
                        writer,
                    },
                );
                hits += 1;
            }
            Ok(Lookup::Expired) => {
                if !out.expired.contains(&k) {
                    out.expired.push(k.clone());
                }
                missed.push(k);
            }
            Ok(Lookup::Miss) => missed.push(k),
            Err(StoreError::Storage(e)) => return Err(StoreError::Storage(e).into()),
            Err(e) => {
                out.errors += 1;
                tracing::warn!("lookup {repo}:{k}: {}", kiln_common::report::Report(&e));
            }
        }
    }
    // The chain asks in a stable order whatever the completion order was.
    missed.sort();
    Ok((missed, hits))
}

/// `GET /v2/_kiln/writers/<repo>/<tag>`: the manifest the tag points at
/// and who wrote it (`writer` absent when none is recorded for it).
pub(super) async fn writer(app: &App, repo: &str, tag: &str) -> ApiResult {
    let Some(t) = app.store.resolve_tag(repo, tag).await? else {
        return Err(StoreError::ManifestUnknown {
            repo: repo.to_string(),
            reference: tag.to_string(),
        }
        .into());
    };
    let w = app.store.writer(repo, tag, &t.digest).await;
    Ok(json_response(
        StatusCode::OK,
        &serde_json::json!({"digest": t.digest, "writer": w}),
    ))
}

/// Build-level figures from an executor, so hit rates per build show up
/// beside the server's own counters.
pub(super) async fn report(app: &App, caller: &Caller, req: Request) -> ApiResult {
    let r: BuildReport = json_body(req, 64 << 10, "REPORT_INVALID").await?;
    readable(app, caller, &r.repository)?;
    let m = &app.store.metrics();
    let label = |result: &str| crate::metrics::LookupLabel {
        repo: r.repository.clone(),
        result: result.to_string(),
    };
    m.build_steps.get_or_create(&label("hit")).inc_by(r.hits);
    m.build_steps.get_or_create(&label("miss")).inc_by(r.misses);
    let repo = crate::metrics::RepoLabel {
        repo: r.repository.clone(),
    };
    if r.seconds_saved.is_finite() && r.seconds_saved > 0.0 {
        m.build_seconds_saved
            .get_or_create(&repo)
            .inc_by(r.seconds_saved);
    }
    m.builds.get_or_create(&repo).inc();
    m.build_bytes_saved
        .get_or_create(&repo)
        .inc_by(r.bytes_saved);
    if let Some(step) = &r.first_miss {
        // Bounded like a label should be: the executor sends `line N …`
        // shortened; anything longer is cut here too.
        let step: String = step.chars().take(80).collect();
        m.build_first_miss
            .get_or_create(&crate::metrics::StepLabel {
                repo: r.repository.clone(),
                step,
            })
            .inc();
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}
