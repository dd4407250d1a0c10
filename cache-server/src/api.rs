//! The HTTP surface: the OCI distribution API under `/v2/`, Kiln's batch
//! lookup and build-report extensions under `/v2/_kiln/`, and the
//! operational routes. Each request is parsed into an [`Endpoint`] first;
//! every error becomes a status in one place, [`ApiError::into_response`].

use crate::auth::{Access, Auth, Caller};
use crate::metrics::{RouteLabel, StatusLabel};
use crate::store::{BlobBody, Lookup, Store, StoreError};
use crate::uploads::{UploadError, Uploads};
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use kiln_common::cache_api::{BuildReport, Info, LookupEntry, LookupRequest, LookupResponse};
use kiln_common::Digest;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

/// Most keys one batch lookup may ask for.
pub const MAX_LOOKUP_KEYS: usize = 4096;

pub struct App {
    pub store: Store,
    pub uploads: Uploads,
    pub auth: Auth,
}

/// A parsed `/v2/` request path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Base,
    Catalog,
    KilnInfo,
    KilnLookup,
    KilnReport,
    Manifest { repo: String, reference: String },
    Blob { repo: String, digest: Digest },
    UploadStart { repo: String },
    Upload { repo: String, id: String },
    Tags { repo: String },
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

fn valid_tag(t: &str) -> bool {
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
        if let Some(repo) = rest.strip_suffix("/tags/list") {
            return Ok(Endpoint::Tags {
                repo: repo_ok(repo)?,
            });
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
            if !id.bytes().all(|b| b.is_ascii_hexdigit()) {
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
            Endpoint::Manifest { .. } => "manifest",
            Endpoint::Blob { .. } => "blob",
            Endpoint::UploadStart { .. } | Endpoint::Upload { .. } => "upload",
            Endpoint::Tags { .. } => "tags",
        }
    }

    fn repo(&self) -> Option<&str> {
        match self {
            Endpoint::Manifest { repo, .. }
            | Endpoint::Blob { repo, .. }
            | Endpoint::UploadStart { repo }
            | Endpoint::Upload { repo, .. }
            | Endpoint::Tags { repo } => Some(repo),
            _ => None,
        }
    }

    /// The access a method on this endpoint needs. The Kiln extensions name
    /// their repository in the body and check it there.
    fn needs(&self, method: &Method) -> Access {
        match self {
            Endpoint::Base | Endpoint::KilnInfo => Access::None,
            Endpoint::KilnLookup | Endpoint::KilnReport => Access::None,
            _ if method == Method::GET || method == Method::HEAD => Access::Read,
            _ => Access::Write,
        }
    }
}

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
            },
            ApiError::NameInvalid(_) => (StatusCode::BAD_REQUEST, "NAME_INVALID"),
            ApiError::DigestInvalid(_) => (StatusCode::BAD_REQUEST, "DIGEST_INVALID"),
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "UNAUTHORIZED"),
            ApiError::Denied(_) => (StatusCode::FORBIDDEN, "DENIED"),
            ApiError::NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            ApiError::Unsupported => (StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED"),
            ApiError::RangeInvalid { .. } => (StatusCode::RANGE_NOT_SATISFIABLE, "RANGE_INVALID"),
            ApiError::Code(s, c, _) => (*s, c),
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
            _ => {}
        }
        r
    }
}

type ApiResult = Result<Response, ApiError>;

/// Every `/v2/` request enters here.
pub async fn handle(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let (route, result) = match Endpoint::parse(req.uri().path()) {
        Ok(ep) => (ep.route(), dispatch(&app, ep, req).await),
        Err(e) => ("invalid", Err(e)),
    };
    let response = result.unwrap_or_else(IntoResponse::into_response);
    let m = &app.store.metrics();
    m.request_seconds
        .get_or_create(&RouteLabel {
            route: route.to_string(),
            method: method.to_string(),
        })
        .observe(started.elapsed().as_secs_f64());
    m.responses
        .get_or_create(&StatusLabel {
            route: route.to_string(),
            status: response.status().as_u16().to_string(),
        })
        .inc();
    response
}

fn check(app: &App, caller: &Caller, repo: Option<&str>, needs: Access) -> Result<(), ApiError> {
    if needs == Access::None || app.auth.access(caller, repo) >= needs {
        return Ok(());
    }
    match caller {
        Caller::User(_) => Err(ApiError::Denied(repo.unwrap_or("the registry").to_string())),
        _ => Err(ApiError::Unauthorized(app.auth.challenge())),
    }
}

async fn dispatch(app: &App, ep: Endpoint, req: Request) -> ApiResult {
    let auth_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = app.auth.identify(auth_header);
    let method = req.method().clone();
    check(app, &caller, ep.repo(), ep.needs(&method))?;
    let query = parse_query(req.uri().query());
    match (ep, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => {
            // With accounts configured, anonymous callers are challenged so
            // that clients holding credentials know to send them.
            if caller == Caller::Rejected || (caller == Caller::Anonymous && app.auth.has_users()) {
                return Err(ApiError::Unauthorized(app.auth.challenge()));
            }
            Ok(json_response(StatusCode::OK, &serde_json::json!({})))
        }
        (Endpoint::KilnInfo, Method::GET) => Ok(json_response(
            StatusCode::OK,
            &Info {
                server: "kiln-cache-server".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                max_lookup_keys: MAX_LOOKUP_KEYS,
            },
        )),
        (Endpoint::Catalog, Method::GET) => {
            let all = app.store.catalog().await?;
            let visible: Vec<String> = all
                .into_iter()
                .filter(|r| app.auth.access(&caller, Some(r)) >= Access::Read)
                .collect();
            Ok(json_response(
                StatusCode::OK,
                &serde_json::json!({"repositories": visible}),
            ))
        }
        (Endpoint::KilnLookup, Method::POST) => lookup(app, &caller, req).await,
        (Endpoint::KilnReport, Method::POST) => report(app, &caller, req).await,
        (Endpoint::Manifest { repo, reference }, m @ (Method::GET | Method::HEAD)) => {
            get_manifest(app, &repo, &reference, m == Method::HEAD).await
        }
        (Endpoint::Manifest { repo, reference }, Method::PUT) => {
            put_manifest(app, &repo, &reference, req).await
        }
        (Endpoint::Manifest { repo, reference }, Method::DELETE) => {
            if app.store.delete_manifest(&repo, &reference).await? {
                Ok(StatusCode::ACCEPTED.into_response())
            } else {
                Err(StoreError::ManifestUnknown { repo, reference }.into())
            }
        }
        (Endpoint::Blob { repo, digest }, m @ (Method::GET | Method::HEAD)) => {
            get_blob(app, &repo, &digest, req.headers(), m == Method::HEAD).await
        }
        (Endpoint::Blob { repo, digest }, Method::DELETE) => {
            if app.store.blob_size(&repo, &digest).await?.is_none() {
                return Err(StoreError::BlobUnknown(digest).into());
            }
            app.store.delete_blob(&digest).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        (Endpoint::UploadStart { repo }, Method::POST) => {
            if let (Some(mount), Some(from)) = (query.get("mount"), query.get("from")) {
                if let Ok(d) = mount.parse::<Digest>() {
                    let readable =
                        valid_repo(from) && app.auth.access(&caller, Some(from)) >= Access::Read;
                    if readable && app.store.blob_size(from, &d).await?.is_some() {
                        return Ok(blob_created(&repo, &d));
                    }
                }
            }
            let id = app.uploads.start(&repo)?;
            if let Some(d) = query.get("digest") {
                let d: Digest = d.parse().map_err(|_| ApiError::DigestInvalid(d.clone()))?;
                return finish_upload(app, &repo, &id, &d, req).await;
            }
            Ok(upload_accepted(&repo, &id, 0))
        }
        (Endpoint::Upload { repo, id }, Method::GET) => {
            let n = app.uploads.offset(&repo, &id).await?;
            let mut r = upload_accepted(&repo, &id, n);
            *r.status_mut() = StatusCode::NO_CONTENT;
            Ok(r)
        }
        (Endpoint::Upload { repo, id }, Method::PATCH) => {
            let range = req
                .headers()
                .get(header::CONTENT_RANGE)
                .and_then(|v| v.to_str().ok())
                .map(parse_content_range)
                .transpose()?;
            let before = app.uploads.offset(&repo, &id).await?;
            let n = app
                .uploads
                .append(
                    &repo,
                    &id,
                    range.map(|r| r.0),
                    req.into_body().into_data_stream(),
                )
                .await?;
            if let Some((start, end)) = range {
                if end + 1 - start != n - before {
                    app.uploads.cancel(&repo, &id)?;
                    return Err(UploadError::SizeInvalid {
                        id,
                        declared: end + 1 - start,
                        actual: n - before,
                    }
                    .into());
                }
            }
            Ok(upload_accepted(&repo, &id, n))
        }
        (Endpoint::Upload { repo, id }, Method::PUT) => {
            let d = query
                .get("digest")
                .ok_or_else(|| ApiError::DigestInvalid(String::new()))?;
            let d: Digest = d.parse().map_err(|_| ApiError::DigestInvalid(d.clone()))?;
            finish_upload(app, &repo, &id, &d, req).await
        }
        (Endpoint::Upload { repo, id }, Method::DELETE) => {
            app.uploads.cancel(&repo, &id)?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        (Endpoint::Tags { repo }, Method::GET) => {
            let mut tags = app.store.tags(&repo).await?;
            // A backend that cannot list repositories knows only tags.
            let known = || async {
                app.store
                    .catalog()
                    .await
                    .map(|c| c.binary_search(&repo).is_ok())
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
        _ => Err(ApiError::Unsupported),
    }
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    q.unwrap_or_default()
        .split('&')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `Content-Range: <start>-<end>` of a chunked upload (inclusive end).
fn parse_content_range(v: &str) -> Result<(u64, u64), ApiError> {
    let v = v
        .trim()
        .trim_start_matches("bytes")
        .trim_start_matches([' ', '=']);
    let bad = || {
        ApiError::Code(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "BLOB_UPLOAD_INVALID",
            format!("bad Content-Range {v:?}"),
        )
    };
    let (a, b) = v.split_once('-').ok_or_else(bad)?;
    let a: u64 = a.trim().parse().map_err(|_| bad())?;
    let b: u64 = b
        .trim()
        .split('/')
        .next()
        .unwrap_or("")
        .parse()
        .map_err(|_| bad())?;
    if b < a {
        return Err(bad());
    }
    Ok((a, b))
}

/// `Range: bytes=<start>-[<end>]` of a blob read.
fn parse_range(v: &str, size: u64) -> Result<std::ops::Range<u64>, ApiError> {
    let bad = || ApiError::RangeInvalid { size };
    let spec = v.trim().strip_prefix("bytes=").ok_or_else(bad)?;
    if spec.contains(',') {
        return Err(bad());
    }
    let (a, b) = spec.split_once('-').ok_or_else(bad)?;
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| bad())?;
        (size.saturating_sub(n), size)
    } else {
        let start: u64 = a.parse().map_err(|_| bad())?;
        let end = if b.is_empty() {
            size
        } else {
            b.parse::<u64>()
                .map_err(|_| bad())?
                .saturating_add(1)
                .min(size)
        };
        (start, end)
    };
    if start >= end || start >= size {
        return Err(bad());
    }
    Ok(start..end)
}

fn json_response<T: serde::Serialize>(status: StatusCode, v: &T) -> Response {
    let body = serde_json::to_vec(v).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn with_headers(mut r: Response, headers: &[(&'static str, String)]) -> Response {
    for (k, v) in headers {
        if let Ok(v) = HeaderValue::from_str(v) {
            r.headers_mut().insert(*k, v);
        }
    }
    r
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

async fn finish_upload(app: &App, repo: &str, id: &str, d: &Digest, req: Request) -> ApiResult {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let before = app.uploads.offset(repo, id).await?;
    let appended = app
        .uploads
        .append(repo, id, None, req.into_body().into_data_stream())
        .await;
    let n = match appended {
        Ok(n) => n,
        Err(e) => {
            let _ = app.uploads.cancel(repo, id);
            app.store.metrics().upload("aborted");
            return Err(e.into());
        }
    };
    if let Some(declared) = declared {
        if declared != n - before {
            let _ = app.uploads.cancel(repo, id);
            app.store.metrics().upload("size_invalid");
            return Err(UploadError::SizeInvalid {
                id: id.to_string(),
                declared,
                actual: n - before,
            }
            .into());
        }
    }
    let staged = match app.uploads.finish(repo, id, d).await {
        Ok(s) => s,
        Err(e) => {
            app.store.metrics().upload("digest_invalid");
            return Err(e.into());
        }
    };
    app.store
        .commit_blob(&staged.digest, &staged.path, staged.size)
        .await?;
    app.store.metrics().upload("committed");
    Ok(blob_created(repo, d))
}

async fn get_manifest(app: &App, repo: &str, reference: &str, head: bool) -> ApiResult {
    let unknown = || StoreError::ManifestUnknown {
        repo: repo.to_string(),
        reference: reference.to_string(),
    };
    let (d, m) = match reference.parse::<Digest>() {
        Ok(d) => {
            let m = app.store.manifest(repo, &d).await?.ok_or_else(unknown)?;
            (d, m)
        }
        Err(_) => match app.store.lookup(repo, reference).await? {
            Lookup::Hit(e, m) => (e.digest, m),
            Lookup::Miss | Lookup::Expired => return Err(unknown().into()),
        },
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

async fn put_manifest(app: &App, repo: &str, reference: &str, req: Request) -> ApiResult {
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
    let d = app
        .store
        .put_manifest(repo, reference, ct.as_deref(), bytes)
        .await?;
    Ok(with_headers(
        StatusCode::CREATED.into_response(),
        &[
            ("location", format!("/v2/{repo}/manifests/{d}")),
            ("docker-content-digest", d.to_string()),
            ("content-length", "0".into()),
        ],
    ))
}

async fn get_blob(app: &App, repo: &str, d: &Digest, headers: &HeaderMap, head: bool) -> ApiResult {
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
async fn lookup(app: &App, caller: &Caller, req: Request) -> ApiResult {
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
    let repo = q.repository.as_str();
    let results: Vec<(String, Result<Lookup, StoreError>)> = futures_util::stream::iter(q.keys)
        .map(|k| async move {
            let r = app.store.lookup(repo, &k).await;
            (k, r)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut out = LookupResponse::default();
    for (k, r) in results {
        match r {
            Ok(Lookup::Hit(e, m)) => {
                // Manifests are JSON, hence UTF-8; the client checks the digest.
                let Ok(manifest) = String::from_utf8(m.bytes.to_vec()) else {
                    out.errors += 1;
                    continue;
                };
                out.entries.insert(
                    k,
                    LookupEntry {
                        digest: e.digest,
                        media_type: m.media_type.clone(),
                        manifest,
                    },
                );
            }
            Ok(Lookup::Expired) => out.expired.push(k),
            Ok(Lookup::Miss) => {}
            Err(StoreError::Storage(e)) => return Err(StoreError::Storage(e).into()),
            Err(e) => {
                out.errors += 1;
                tracing::warn!("lookup {repo}:{k}: {}", kiln_common::report::Report(&e));
            }
        }
    }
    Ok(json_response(StatusCode::OK, &out))
}

/// Build-level figures from an executor, so hit rates per build show up
/// beside the server's own counters.
async fn report(app: &App, caller: &Caller, req: Request) -> ApiResult {
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
    Ok(StatusCode::NO_CONTENT.into_response())
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
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100).unwrap(), 0..10);
        assert_eq!(parse_range("bytes=90-", 100).unwrap(), 90..100);
        assert_eq!(parse_range("bytes=-10", 100).unwrap(), 90..100);
        assert_eq!(parse_range("bytes=50-500", 100).unwrap(), 50..100);
        assert!(parse_range("bytes=100-", 100).is_err());
        assert!(parse_range("bytes=0-1,5-6", 100).is_err());
        assert_eq!(parse_content_range("0-99").unwrap(), (0, 99));
        assert!(parse_content_range("9-1").is_err());
    }
}
