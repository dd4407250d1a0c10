//! The CI job's identity token for the cache server, found where CI
//! systems put it, and sent as a bearer token to the cache repositories'
//! hosts only (never to a base image's or a destination's other registry):
//!
//! - `--cache-token-file` (a Kubernetes projected service-account token
//!   with the cache's audience, or any file a pipeline writes);
//! - `KILN_CACHE_TOKEN` (GitLab: `id_tokens: KILN_CACHE_TOKEN: aud: …`);
//! - GitHub Actions (`permissions: id-token: write`): requested from
//!   `ACTIONS_ID_TOKEN_REQUEST_URL` with `--cache-token-audience`.

use anyhow::Context;
use kiln_common::registry::{parse_reference, HostToken};
use std::collections::HashMap;

/// The token, if the job has one.
pub async fn find(
    file: Option<&std::path::Path>,
    audience: &str,
) -> anyhow::Result<Option<String>> {
    if let Some(f) = file {
        let t = std::fs::read_to_string(f)
            .with_context(|| format!("reading --cache-token-file {}", f.display()))?;
        return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    if let Ok(t) = std::env::var("KILN_CACHE_TOKEN") {
        return Ok(Some(t.trim().to_string()).filter(|t| !t.is_empty()));
    }
    let (Ok(url), Ok(bearer)) = (
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL"),
        std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN"),
    ) else {
        return Ok(None);
    };
    github(&url, &bearer, audience).await.map(Some)
}

/// GitHub's documented request: `GET $URL&audience=<aud>` with the request
/// token; the answer is `{"value": "<jwt>"}`.
async fn github(url: &str, bearer: &str, audience: &str) -> anyhow::Result<String> {
    kiln_common::tls::install_crypto_provider();
    let sep = if url.contains('?') { '&' } else { '?' };
    let full = format!("{url}{sep}audience={audience}");
    let client = kiln_common::tls::client_builder()
        .timeout(std::time::Duration::from_secs(15))
        .build()
        .context("an HTTP client for GitHub's token service")?;
    let resp = client
        .get(&full)
        .bearer_auth(bearer)
        .send()
        .await
        .context("requesting the job's identity token from GitHub")?;
    if !resp.status().is_success() {
        anyhow::bail!(
            "GitHub's token service answered HTTP {} (does the job have `permissions: id-token: write`?)",
            resp.status()
        );
    }
    #[derive(serde::Deserialize)]
    struct Answer {
        value: String,
    }
    let a: Answer = serde_json::from_slice(&resp.bytes().await?)
        .context("GitHub's token service answered something else than a token")?;
    Ok(a.value)
}

/// The token for each cache repository's host (`oci:` layouts have none).
pub fn for_hosts(token: Option<String>, repos: &[&str]) -> HashMap<String, HostToken> {
    let Some(t) = token else {
        return HashMap::new();
    };
    repos
        .iter()
        .filter(|r| !r.starts_with("oci:"))
        .filter_map(|r| parse_reference(r).ok())
        .map(|r| (r.registry().to_string(), HostToken(t.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_goes_to_the_cache_hosts_only() {
        let m = for_hosts(
            Some("t".into()),
            &[
                "cache.internal:5000/team/main",
                "oci:/cache",
                "cache.internal:5000/team/b",
                "other.example/x",
            ],
        );
        let mut hosts: Vec<&String> = m.keys().collect();
        hosts.sort();
        assert_eq!(hosts, ["cache.internal:5000", "other.example"]);
        assert!(for_hosts(None, &["cache.internal:5000/x"]).is_empty());
        assert_eq!(format!("{:?}", m["other.example"]), "HostToken(***)");
    }
}
