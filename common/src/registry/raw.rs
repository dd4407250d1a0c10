//! Registry requests outside oci-client, for what its answers' headers say
//! and oci-client does not expose: `Retry-After`, Docker Hub's
//! `ratelimit-limit` / `ratelimit-remaining`, `Docker-Content-Digest`.
//! The pull-through mirror asks its upstreams this way, and a 429 is
//! asked again this way for how long to wait.
//!
//! Authorization follows the registry's challenge (distribution's token
//! flow, or basic auth); bearer tokens are kept until the token server says
//! they expire, so a mirror revalidating every few minutes does not log in
//! every time (Harbor's proxy did, and was rate-limited for it). A 401
//! after a fresh token or with basic credentials forgets the credential and
//! tries once more: a cloud login that expired is refreshed, not repeated.

use super::{Registry, RegistryError, RemoteKind, ACCEPT};
use crate::auth::Credential;
use crate::digest::Digest;
use bytes::Bytes;
use oci_client::Reference;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use std::time::{Duration, Instant};

/// The largest manifest read (distribution's own limit is 4 MiB).
const MANIFEST_LIMIT: usize = 4 << 20;

/// A registry's HTTP answer: any status, its headers, the body (empty for
/// HEAD).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// What a registry says of its request budget.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// `Retry-After`, on a 429 or 503.
    pub retry_after: Option<Duration>,
    /// `ratelimit-limit: 100;w=21600`: pulls allowed per window.
    pub limit: Option<u64>,
    /// `ratelimit-remaining: 76;w=21600`: pulls left in the window.
    pub remaining: Option<u64>,
}

impl Answer {
    pub fn limits(&self) -> Limits {
        let header = |name: &str| self.headers.get(name).and_then(|v| v.to_str().ok());
        let count = |name: &str| {
            header(name)
                .and_then(|v| v.split(';').next())
                .and_then(|n| n.trim().parse().ok())
        };
        Limits {
            retry_after: header("retry-after")
                .and_then(parse_retry_after)
                .map(|d| d.min(Duration::from_secs(600))),
            limit: count("ratelimit-limit"),
            remaining: count("ratelimit-remaining"),
        }
    }

    /// `Docker-Content-Digest`, when present and well formed.
    pub fn digest(&self) -> Option<Digest> {
        self.headers
            .get("docker-content-digest")?
            .to_str()
            .ok()?
            .parse()
            .ok()
    }
}

impl Registry {
    /// A manifest request (`HEAD` or `GET`) for `r`, answered with whatever
    /// status the registry gives; `Err` only when no answer came (the
    /// connection failed, the deadline passed) or the login failed.
    pub async fn manifest_answer(
        &self,
        r: &Reference,
        head: bool,
    ) -> Result<Answer, RegistryError> {
        let (host, url) = self.manifest_url(r);
        let method = if head { Method::HEAD } else { Method::GET };
        let a = self
            .send_raw(&host, method, &url, &ACCEPT.join(", "), None)
            .await?;
        if a.body.len() > MANIFEST_LIMIT {
            return Err(RegistryError::remote(
                r,
                RemoteKind::Other,
                format!("the manifest is over {MANIFEST_LIMIT} bytes"),
            ));
        }
        Ok(a)
    }

    /// PUTs manifest `body` (of `media_type`) at `r`'s tag or digest,
    /// retried like every push. Returns the registry's `OCI-Subject`
    /// answer: the subject's digest when the registry lists the manifest
    /// among its subject's referrers itself (OCI 1.1), `None` when the
    /// client must keep the tag-schema index.
    pub async fn put_manifest_subject(
        &self,
        r: &Reference,
        body: Bytes,
        media_type: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let (host, url) = self.manifest_url(r);
        self.retry("pushing the manifest", self.opts.push_retries, || async {
            let a = self
                .send_raw(&host, Method::PUT, &url, "", Some((&body, media_type)))
                .await?;
            if !a.status.is_success() {
                return Err(status_error(r, &a));
            }
            Ok(a.headers
                .get("oci-subject")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()))
        })
        .await
    }

    /// The host of `r` and the URL of its manifest (by digest, else tag).
    fn manifest_url(&self, r: &Reference) -> (String, String) {
        let host = r.resolve_registry().to_string();
        let reference = r.digest().or(r.tag()).unwrap_or("latest");
        let url = format!(
            "{}/v2/{}/manifests/{reference}",
            self.base_url(&host),
            r.repository()
        );
        (host, url)
    }

    /// `method` on `url` at `host`, with `body` of its content type when
    /// given, authorized as the registry's challenge asks (see the
    /// module's doc).
    pub(super) async fn send_raw(
        &self,
        host: &str,
        method: Method,
        url: &str,
        accept: &str,
        body: Option<(&Bytes, &str)>,
    ) -> Result<Answer, RegistryError> {
        let http = self.http_client(host, Duration::from_secs(60))?;
        let key = token_key(host, url);
        let mut refreshed = false;
        loop {
            let cred = self.credential_for(host).await?;
            let req = |token: Option<&str>| {
                let mut req = http.request(method.clone(), url);
                if !accept.is_empty() {
                    req = req.header(reqwest::header::ACCEPT, accept);
                }
                if let Some((b, ct)) = body {
                    req = req
                        .header(reqwest::header::CONTENT_TYPE, ct)
                        .body(b.clone());
                }
                match (token, &cred) {
                    (Some(t), _) => req.bearer_auth(t),
                    (None, Credential::Token(t)) => req.bearer_auth(t),
                    (None, Credential::Basic { username, password }) => {
                        req.basic_auth(username, Some(password))
                    }
                    (None, Credential::Anonymous) => req,
                }
            };
            let kept = self.token(&key);
            let mut resp = send(req(kept.as_deref()), host).await?;
            let mut fresh_token = false;
            if resp.status() == StatusCode::UNAUTHORIZED {
                let challenge = resp
                    .headers()
                    .get(reqwest::header::WWW_AUTHENTICATE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default()
                    .to_string();
                if let Some((token, ttl)) = bearer_token(&http, &challenge, &cred).await {
                    self.keep_token(&key, &token, ttl);
                    resp = send(req(Some(&token)), host).await?;
                    fresh_token = true;
                }
            }
            let tried_credential =
                fresh_token || kept.is_none() && !matches!(cred, Credential::Anonymous);
            if resp.status() == StatusCode::UNAUTHORIZED && tried_credential && !refreshed {
                tracing::info!("{host}: 401 with the current login; logging in again");
                self.forget_login(host, &key);
                refreshed = true;
                continue;
            }
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = if method == Method::HEAD {
                Bytes::new()
            } else {
                read_limited(resp, MANIFEST_LIMIT + 1, host).await?
            };
            return Ok(Answer {
                status,
                headers,
                body,
            });
        }
    }

    fn token(&self, key: &str) -> Option<String> {
        let tokens = self.tokens.lock().ok()?;
        let (t, until) = tokens.get(key)?;
        (Instant::now() < *until).then(|| t.clone())
    }

    fn keep_token(&self, key: &str, token: &str, ttl: Duration) {
        if let Ok(mut tokens) = self.tokens.lock() {
            // A little early, so a token is never sent as it expires.
            let until = Instant::now() + ttl.saturating_sub(Duration::from_secs(10));
            tokens.insert(key.to_string(), (token.to_string(), until));
        }
    }

    /// Forgets `host`'s login and the token kept for `key`, after a 401.
    fn forget_login(&self, host: &str, key: &str) {
        self.keys.forget(host);
        if let Ok(mut tokens) = self.tokens.lock() {
            tokens.remove(key);
        }
    }
}

/// A registry's refusal as an error of the kind its status says.
fn status_error(r: &Reference, a: &Answer) -> RegistryError {
    let kind = RemoteKind::of_status(a.status.as_u16());
    let text = String::from_utf8_lossy(&a.body[..a.body.len().min(512)]).to_string();
    RegistryError::remote(r, kind, format!("HTTP {}: {text}", a.status))
}

async fn send(
    req: reqwest::RequestBuilder,
    host: &str,
) -> Result<reqwest::Response, RegistryError> {
    req.send().await.map_err(|e| RegistryError::Remote {
        reference: host.to_string(),
        kind: RemoteKind::Transient,
        source: Some(Box::new(e)),
    })
}

async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    host: &str,
) -> Result<Bytes, RegistryError> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| RegistryError::Remote {
        reference: host.to_string(),
        kind: RemoteKind::Transient,
        source: Some(Box::new(e)),
    })? {
        out.extend_from_slice(&chunk);
        if out.len() >= limit {
            break;
        }
    }
    Ok(out.into())
}

/// Tokens are scoped to a repository: the key is the host and the URL's
/// path up to the repository (`/v2/<repo>/`).
fn token_key(host: &str, url: &str) -> String {
    let path = url.split_once("/v2/").map_or("", |(_, p)| p);
    let repo = ["/manifests/", "/blobs/", "/tags/", "/referrers/"]
        .iter()
        .find_map(|m| path.split_once(m).map(|(r, _)| r))
        .unwrap_or(path);
    format!("{host} {repo}")
}

/// `Retry-After`: seconds, or an HTTP date.
pub(super) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// A token for a `Bearer realm=…,service=…,scope=…` challenge, and how
/// long it lives (`expires_in`; the token spec's default is 60 seconds).
async fn bearer_token(
    http: &reqwest::Client,
    challenge: &str,
    cred: &Credential,
) -> Option<(String, Duration)> {
    let params = challenge
        .strip_prefix("Bearer ")
        .or_else(|| challenge.strip_prefix("bearer "))?;
    let mut realm = None;
    let mut query = Vec::new();
    for part in params.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim_matches('"').to_string();
        if k == "realm" {
            realm = Some(v);
        } else {
            query.push((k.to_string(), v));
        }
    }
    let mut req = http.get(realm?).query(&query);
    if let Credential::Basic { username, password } = cred {
        req = req.basic_auth(username, Some(password));
    }
    let resp = req.send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
    let token = v
        .get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())?
        .to_string();
    let ttl = v
        .get("expires_in")
        .and_then(|t| t.as_u64())
        .map_or(Duration::from_secs(60), Duration::from_secs);
    Some((token, ttl))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = chrono::Utc::now() + chrono::Duration::seconds(30);
        let d = parse_retry_after(&later.to_rfc2822()).expect("a date");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn docker_hub_rate_limit_headers() {
        let mut headers = HeaderMap::new();
        headers.insert("ratelimit-limit", "100;w=21600".parse().unwrap());
        headers.insert("ratelimit-remaining", "76;w=21600".parse().unwrap());
        headers.insert("retry-after", "30".parse().unwrap());
        let a = Answer {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers,
            body: Bytes::new(),
        };
        assert_eq!(
            a.limits(),
            Limits {
                retry_after: Some(Duration::from_secs(30)),
                limit: Some(100),
                remaining: Some(76),
            }
        );
        let none = Answer {
            status: StatusCode::OK,
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        assert_eq!(none.limits(), Limits::default());
    }

    #[test]
    fn tokens_are_kept_per_repository() {
        let k = |u: &str| token_key("r.io", u);
        assert_eq!(
            k("https://r.io/v2/library/alpine/manifests/3.19"),
            k("https://r.io/v2/library/alpine/blobs/sha256:ab")
        );
        assert_ne!(
            k("https://r.io/v2/library/alpine/manifests/3.19"),
            k("https://r.io/v2/library/busybox/manifests/3.19")
        );
    }
}
