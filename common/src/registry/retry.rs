//! Retries: transient failures (connection, 5xx, 429) are tried again with
//! exponential backoff; a 429 waits what the registry's `Retry-After` asks.

use super::{Registry, RegistryError, RemoteKind};
use crate::auth::Credential;
use std::time::Duration;

impl Registry {
    /// Runs `f` until it succeeds, fails for good, or `attempts` extra tries
    /// are spent; each retry is logged naming `op` and the cause.
    pub(super) async fn retry<T, F, Fut>(
        &self,
        op: &str,
        attempts: u32,
        mut f: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut delay = Duration::from_millis(250);
        let mut n = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if n < attempts && e.is_transient() => {
                    n += 1;
                    let shown = crate::report::Report(&e).to_string();
                    let wait = match e.remote_kind() {
                        Some(RemoteKind::RateLimited { url }) => {
                            match self.retry_after(url).await {
                                Some(w) => {
                                    tracing::warn!("{op}: {shown}; the registry asks to retry after {w:?} ({n}/{attempts})");
                                    w
                                }
                                None => {
                                    tracing::warn!("{op}: {shown}; no Retry-After, retrying in {delay:?} ({n}/{attempts})");
                                    delay
                                }
                            }
                        }
                        _ => {
                            tracing::warn!("{op}: {shown}; retrying in {delay:?} ({n}/{attempts})");
                            delay
                        }
                    };
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How long a registry that answered 429 asks to wait, from its
    /// `Retry-After` header. oci-client does not expose response headers, so
    /// the request is repeated as a HEAD (which registries, Docker Hub among
    /// them, do not count as a pull), with a token obtained as the registry's
    /// challenge describes. `None` when the registry does not say (the caller
    /// then backs off exponentially). Waits are capped at 10 minutes.
    async fn retry_after(&self, url: &str) -> Option<Duration> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let host = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str()?),
            None => parsed.host_str()?.to_string(),
        };
        let cred = self
            .credential_for(&host)
            .await
            .unwrap_or(Credential::Anonymous);
        let http = self.http_client(&host, Duration::from_secs(15)).ok()?;
        let with_cred = |req: reqwest::RequestBuilder| match &cred {
            Credential::Basic { username, password } => req.basic_auth(username, Some(password)),
            Credential::Token(t) => req.bearer_auth(t),
            Credential::Anonymous => req,
        };
        let mut resp = with_cred(http.head(url)).send().await.ok()?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)?
                .to_str()
                .ok()?
                .to_string();
            let token = bearer_token(&http, &challenge, &cred).await?;
            resp = http.head(url).bearer_auth(token).send().await.ok()?;
        }
        if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let v = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?;
        parse_retry_after(v).map(|d| d.min(Duration::from_secs(600)))
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// A token for a `Bearer realm=…,service=…,scope=…` challenge.
async fn bearer_token(
    http: &reqwest::Client,
    challenge: &str,
    cred: &Credential,
) -> Option<String> {
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
    let body = req.send().await.ok()?.bytes().await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
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
}
