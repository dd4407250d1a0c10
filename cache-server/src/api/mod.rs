//! The HTTP surface: the OCI distribution API under `/v2/`, Kiln's batch
//! lookup and build-report extensions under `/v2/_kiln/`, and the
//! operational routes. Each request is parsed into an [`Endpoint`] first;
//! every error becomes a status in one place, [`ApiError::into_response`].
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`handle`]: identify, authorize, dispatch (one line per route) |
//! | `endpoint.rs` | request paths → [`Endpoint`], name rules |
//! | `error.rs` | [`ApiError`] → status, code and body |
//! | `manifest.rs` | manifests, tags list, catalog, referrers |
//! | `blob.rs` | blob reads and deletes |
//! | `upload.rs` | upload sessions: start, mount, PATCH, PUT, cancel |
//! | `kiln.rs` | `/v2/_kiln/`: info, batch lookup, build reports |
//! | `http.rs` | queries, ranges, JSON responses |

mod blob;
mod endpoint;
mod error;
mod http;
mod kiln;
mod manifest;
mod mirror;
mod upload;

pub use endpoint::{valid_repo, Endpoint};
pub use error::ApiError;
/// Header parsers, public for the fuzz targets.
pub use http::{parse_content_range, parse_range};

use crate::auth::{Access, Auth, Caller};
use crate::metrics::{RouteLabel, StatusLabel};
use crate::store::Store;
use crate::uploads::Uploads;
use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::response::{IntoResponse, Response};
use std::sync::Arc;
use std::time::Instant;

/// Most keys one batch lookup may ask for.
pub const MAX_LOOKUP_KEYS: usize = 4096;

pub struct App {
    pub store: Store,
    pub uploads: Uploads,
    pub auth: Auth,
    /// Mirror mode (`--mirror`).
    pub mirror: Option<crate::mirror::Mirror>,
}

pub(crate) type ApiResult = Result<Response, ApiError>;

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
    if needs == Access::Write {
        let kind = match caller {
            Caller::Anonymous => "anonymous",
            Caller::User(_) => "user",
            Caller::Identity(_) => "identity",
            Caller::Unverified => "unverified",
            Caller::Rejected => "rejected",
        };
        let label = crate::metrics::RefusedLabel {
            repo: repo.unwrap_or("").to_string(),
            caller: kind.to_string(),
        };
        app.store
            .metrics()
            .refused_writes
            .get_or_create(&label)
            .inc();
    }
    match caller {
        Caller::User(_) | Caller::Identity(_) => {
            Err(ApiError::Denied(repo.unwrap_or("the registry").to_string()))
        }
        _ => Err(ApiError::Unauthorized(app.auth.challenge())),
    }
}

async fn dispatch(app: &Arc<App>, ep: Endpoint, req: Request) -> ApiResult {
    let auth_header = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = app.auth.identify(auth_header).await;
    let method = req.method().clone();
    check(app, &caller, ep.repo(), ep.needs(&method))?;
    let query = http::parse_query(req.uri().query());
    if let Some(mirror) = &app.mirror {
        let routed = mirror::handle(app, mirror, &ep, &method, &query, req.headers()).await;
        if let Some(answer) = routed {
            return answer;
        }
    }
    match (ep, method) {
        (Endpoint::Base, Method::GET | Method::HEAD) => kiln::base(app, &caller),
        (Endpoint::KilnInfo, Method::GET) => Ok(kiln::info()),
        (Endpoint::Catalog, Method::GET) => manifest::catalog(app, &caller).await,
        (Endpoint::KilnLookup, Method::POST) => kiln::lookup(app, &caller, req).await,
        (Endpoint::KilnReport, Method::POST) => kiln::report(app, &caller, req).await,
        (Endpoint::KilnWriter { repo, tag }, Method::GET) => kiln::writer(app, &repo, &tag).await,
        (Endpoint::Manifest { repo, reference }, m @ (Method::GET | Method::HEAD)) => {
            manifest::get(app, &repo, &reference, m == Method::HEAD).await
        }
        (Endpoint::Manifest { repo, reference }, Method::PUT) => {
            manifest::put(app, &caller, &repo, &reference, req).await
        }
        (Endpoint::Manifest { repo, reference }, Method::DELETE) => {
            manifest::delete(app, repo, reference).await
        }
        (Endpoint::Blob { repo, digest }, m @ (Method::GET | Method::HEAD)) => {
            blob::get(app, &repo, &digest, req.headers(), m == Method::HEAD).await
        }
        (Endpoint::Blob { repo, digest }, Method::DELETE) => blob::delete(app, &repo, digest).await,
        (Endpoint::UploadStart { repo }, Method::POST) => {
            upload::start(app, &caller, &repo, &query, req).await
        }
        (Endpoint::Upload { repo, id }, Method::GET) => upload::status(app, &repo, &id).await,
        (Endpoint::Upload { repo, id }, Method::PATCH) => upload::patch(app, &repo, id, req).await,
        (Endpoint::Upload { repo, id }, Method::PUT) => {
            upload::put(app, &repo, &id, &query, req).await
        }
        (Endpoint::Upload { repo, id }, Method::DELETE) => upload::cancel(app, &repo, &id).await,
        (Endpoint::Tags { repo }, Method::GET) => manifest::tags(app, &repo, &query).await,
        (Endpoint::Referrers { repo, subject }, Method::GET) => {
            manifest::referrers(app, &repo, &subject, &query).await
        }
        _ => Err(ApiError::Unsupported),
    }
}
