//! Retries: transient failures (connection, 5xx, 429) are tried again with
//! exponential backoff; a 429 waits what the registry's `Retry-After` asks;
//! a 401 forgets the logins kept and tries once more with fresh ones.

use super::{Registry, RegistryError, RemoteKind};
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
        let mut relogged = false;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                // A login that expired (a cloud token, a rotated helper
                // secret): log in again, once.
                Err(e)
                    if !relogged
                        && e.remote_kind() == Some(&RemoteKind::Unauthorized)
                        // Both forgotten: a kept push authorization's token
                        // may be what expired.
                        && (self.keys.forget_all() | self.forget_push_logins()) =>
                {
                    relogged = true;
                    tracing::info!("{op}: {}; logging in again", crate::report::Report(&e));
                }
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
    /// them, do not count as a pull). `None` when the registry does not say
    /// (the caller then backs off exponentially). Waits are capped at 10
    /// minutes.
    async fn retry_after(&self, url: &str) -> Option<Duration> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let host = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str()?),
            None => parsed.host_str()?.to_string(),
        };
        let a = self
            .send_raw(&host, reqwest::Method::HEAD, url, "", None)
            .await
            .ok()?;
        if a.status != reqwest::StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        a.limits().retry_after
    }
}
