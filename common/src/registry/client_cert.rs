//! Client certificates (mutual TLS) for registries that require one.
//!
//! oci-client builds its own reqwest client and offers no way to give it a
//! client identity (0.18 takes CAs and a verification switch only). Rather
//! than fork it, a host that needs a certificate is reached through a relay
//! on loopback: that host's oci-client talks plain HTTP to the relay as to
//! an HTTP proxy (absolute-form requests), and the relay makes each request
//! over TLS with the certificate through reqwest, which can present one.
//!
//! - One relay per host; it refuses requests for any other host.
//! - It listens on 127.0.0.1 with a port the kernel picks and asks for a
//!   random proxy password that lives only in this process, so a RUN step
//!   sharing the network cannot borrow the certificate through it.
//! - Bodies are streamed both ways; nothing is buffered.
//! - Redirects are passed back, not followed, and absolute
//!   `https://<host>` URLs in `Location` and `WWW-Authenticate` are
//!   rewritten to `http://<host>`, so upload sessions and token requests on
//!   the same host come back through the relay.
//! - It runs as a task of the runtime that first needed it and ends with it.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum ClientCertError {
    #[error("reading client certificate file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("client certificate {} with key {} for {host}", cert.display(), key.display())]
    Identity {
        host: String,
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: reqwest::Error,
    },
    #[error("starting the client-certificate relay for {host}")]
    Start {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the client-certificate relay for {host} needs a tokio runtime")]
    NoRuntime { host: String },
}

/// A client certificate and its key (PEM files), as kaniko's
/// `--registry-client-cert host=cert.pem,key.pem` and certs.d's
/// `client.cert`/`client.key` give them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl ClientCert {
    /// The identity reqwest presents: certificate chain and key in one PEM.
    pub(super) fn identity(&self, host: &str) -> Result<reqwest::Identity, ClientCertError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| ClientCertError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let mut pem = read(&self.cert)?;
        pem.push(b'\n');
        pem.extend(read(&self.key)?);
        reqwest::Identity::from_pem(&pem).map_err(|source| ClientCertError::Identity {
            host: host.to_string(),
            cert: self.cert.clone(),
            key: self.key.clone(),
            source,
        })
    }
}

/// A running relay: the proxy URL (with its password) to give oci-client.
pub(super) struct Relay {
    pub proxy_url: String,
}

struct Shared {
    host: String,
    /// `Basic base64("kiln:<password>")`, what reqwest sends for the
    /// proxy URL's user info.
    expected_auth: HeaderValue,
    /// Presents the certificate; trusts what the host's own client trusts.
    upstream: reqwest::Client,
}

impl Relay {
    /// Starts the relay for `host`; `upstream` must present the certificate.
    pub(super) fn start(host: &str, upstream: reqwest::Client) -> Result<Relay, ClientCertError> {
        let handle =
            tokio::runtime::Handle::try_current().map_err(|_| ClientCertError::NoRuntime {
                host: host.to_string(),
            })?;
        let start_err = |source| ClientCertError::Start {
            host: host.to_string(),
            source,
        };
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(start_err)?;
        std_listener.set_nonblocking(true).map_err(start_err)?;
        let addr = std_listener.local_addr().map_err(start_err)?;
        let mut raw = [0u8; 18];
        getrandom::fill(&mut raw).map_err(|e| start_err(std::io::Error::other(e)))?;
        let password = hex::encode(raw);
        use base64::Engine as _;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("kiln:{password}"));
        let expected_auth = HeaderValue::from_str(&format!("Basic {token}"))
            .map_err(|e| start_err(std::io::Error::other(e)))?;
        let shared = Arc::new(Shared {
            host: host.to_string(),
            expected_auth,
            upstream,
        });
        let _guard = handle.enter();
        let listener = tokio::net::TcpListener::from_std(std_listener).map_err(start_err)?;
        let app = axum::Router::new().fallback(relay).with_state(shared);
        let what = host.to_string();
        handle.spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::warn!("client-certificate relay for {what} stopped: {e}");
            }
        });
        Ok(Relay {
            proxy_url: format!("http://kiln:{password}@{addr}"),
        })
    }
}

/// Headers that belong to one hop and are not passed on.
const HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
];

async fn relay(State(s): State<Arc<Shared>>, req: Request) -> Response {
    if req.headers().get(header::PROXY_AUTHORIZATION) != Some(&s.expected_auth) {
        return (StatusCode::PROXY_AUTHENTICATION_REQUIRED, "").into_response();
    }
    let uri = req.uri().clone();
    if uri.authority().map(|a| a.as_str()) != Some(s.host.as_str()) {
        let msg = format!("this relay serves {} only", s.host);
        return (StatusCode::MISDIRECTED_REQUEST, msg).into_response();
    }
    let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let url = format!("https://{}{path}", s.host);
    let (parts, body) = req.into_parts();
    let mut headers = HeaderMap::new();
    for (k, v) in &parts.headers {
        if !HOP.contains(&k.as_str()) {
            headers.append(k, v.clone());
        }
    }
    let sent = s
        .upstream
        .request(parts.method, &url)
        .headers(headers)
        .body(reqwest::Body::wrap_stream(body.into_data_stream()))
        .send()
        .await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => {
            // The cause (a refused certificate, a reset) goes back to the
            // client in the body, which oci-client puts in its error.
            let msg = format!("{url}: {}", crate::report::Report(&e));
            tracing::debug!("client-certificate relay: {msg}");
            return (StatusCode::BAD_GATEWAY, msg).into_response();
        }
    };
    let mut out = Response::builder().status(resp.status());
    let (from, to) = (format!("https://{}", s.host), format!("http://{}", s.host));
    for (k, v) in resp.headers() {
        if HOP.contains(&k.as_str()) {
            continue;
        }
        let rewritten = (k == header::LOCATION || k == header::WWW_AUTHENTICATE)
            .then(|| v.to_str().ok())
            .flatten()
            .filter(|t| t.contains(&from))
            .and_then(|t| HeaderValue::from_str(&t.replace(&from, &to)).ok());
        out = out.header(k, rewritten.unwrap_or_else(|| v.clone()));
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|e| (StatusCode::BAD_GATEWAY, e.to_string()).into_response())
}
