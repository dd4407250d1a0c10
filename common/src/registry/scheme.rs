//! Which registries are spoken to over plain HTTP without a flag. kaniko
//! (go-containerregistry's `name.Registry.Scheme` and its ping) allows it
//! for hosts that cannot be on the public internet — `localhost:<port>`,
//! `*.local`, `*.localhost`, `127.0.0.1`, `::1` and the RFC 1918 ranges —
//! and still tries TLS first: such a host is asked `GET /v2/` over HTTPS,
//! and only when that gets no HTTP answer at all (the server speaks plain
//! HTTP, or there is no CA bundle to verify with) and plain HTTP gets a
//! registry's answer (200 or 401), the host is spoken to over HTTP from
//! then on. An in-cluster registry reached
//! by its Service IP, or a CI job's sidecar, then works unchanged.
//!
//! Hosts with TLS settings of their own (`--registry-certificate`,
//! `--skip-tls-verify-registry`, certs.d, a client certificate) and hosts
//! already named by `--insecure*` are left as configured. The decision is
//! made once per host and logged once.

use super::Registry;
use std::net::IpAddr;
use std::time::Duration;

/// How long each of the two probes may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why `host` (`name[:port]`) may be spoken to over plain HTTP, if it may:
/// kaniko's list.
pub fn private_reason(host: &str) -> Option<&'static str> {
    let name = match host.strip_prefix('[') {
        // `[::1]:5000`
        Some(rest) => rest.split_once(']').map_or(rest, |(n, _)| n),
        None => match host.matches(':').count() {
            0 | 1 => host.split(':').next().unwrap_or(host),
            // A bare IPv6 address.
            _ => host,
        },
    };
    if host.starts_with("localhost:") {
        return Some("localhost");
    }
    let lower = name.to_ascii_lowercase();
    if lower.ends_with(".local") || lower.ends_with(".localhost") {
        return Some("a local name");
    }
    match name.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) if ip.is_loopback() && ip.octets() == [127, 0, 0, 1] => {
            Some("the loopback address")
        }
        Ok(IpAddr::V4(ip)) if ip.is_private() => Some("a private address (RFC 1918)"),
        Ok(IpAddr::V6(ip)) if ip.is_loopback() => Some("the loopback address"),
        _ => None,
    }
}

impl Registry {
    /// What was decided for `host`, if anything yet.
    fn decided(&self, host: &str) -> Option<bool> {
        self.plain_http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied()
    }

    /// Whether `host` was found to speak only plain HTTP (see the module).
    pub(super) fn plain_http(&self, host: &str) -> bool {
        self.decided(host).unwrap_or(false)
    }

    /// Decides, once, whether `host` is spoken to over plain HTTP without a
    /// flag (see the module). Called before anything is sent to a host.
    pub(super) async fn settle_scheme(&self, host: &str) {
        let configured = self
            .opts
            .insecure_hosts
            .iter()
            .any(|h| h == "*" || h == host);
        if configured || self.decided(host).is_some() {
            return;
        }
        let Some(why) = private_reason(host) else {
            return;
        };
        let plain = match self.host_tls(host) {
            Ok(tls) if tls.is_default() => self.answers_only_plain_http(host).await,
            _ => false,
        };
        let mut m = self.plain_http.lock().unwrap_or_else(|p| p.into_inner());
        if m.insert(host.to_string(), plain).is_none() && plain {
            tracing::info!(
                "{host}: speaking plain HTTP to it, as kaniko does: it is {why} and did not \
                 answer over TLS"
            );
        }
    }

    async fn answers_only_plain_http(&self, host: &str) -> bool {
        let probe = |scheme: &'static str| async move {
            let client = match scheme {
                "https" => self.http_client(host, PROBE_TIMEOUT).ok()?,
                _ => crate::tls::client_builder()
                    .timeout(PROBE_TIMEOUT)
                    .redirect(reqwest::redirect::Policy::none())
                    .build()
                    .ok()?,
            };
            client
                .get(format!("{scheme}://{host}/v2/"))
                .send()
                .await
                .ok()
                .map(|r| r.status())
        };
        // As go-containerregistry's ping: only 200 or 401 from `/v2/` is a
        // registry speaking plain HTTP (a TLS server answers a plain
        // request too, with 400).
        let registry = |s: reqwest::StatusCode| {
            s == reqwest::StatusCode::OK || s == reqwest::StatusCode::UNAUTHORIZED
        };
        probe("https").await.is_none() && probe("http").await.is_some_and(registry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kanikos_list_of_hosts_spoken_to_over_http() {
        for host in [
            "localhost:5000",
            "registry.local",
            "registry.local:5000",
            "kiln.localhost:80",
            "127.0.0.1",
            "127.0.0.1:5000",
            "[::1]:5000",
            "::1",
            "10.0.0.7:5000",
            "172.16.0.1",
            "172.31.255.254:443",
            "192.168.1.20:5000",
        ] {
            assert!(private_reason(host).is_some(), "{host}");
        }
        for host in [
            "localhost",
            "docker.io",
            "ghcr.io:443",
            "172.32.0.1:5000",
            "11.0.0.1",
            "192.169.0.1",
            "8.8.8.8",
            "127.0.0.2:5000",
            "notlocal:5000",
            "local:5000",
        ] {
            assert!(private_reason(host).is_none(), "{host}");
        }
    }
}
