//! Kiln's registry extensions, spoken by the cache server and its clients:
//! one wire format, defined once. A client discovers the server with
//! `GET /v2/_kiln/info` and falls back to plain registry calls when that is
//! not a Kiln server.

use crate::auth::Credential;
use crate::registry::Registry;
use crate::Digest;
use std::collections::BTreeMap;
use std::time::Duration;

pub const INFO_PATH: &str = "/v2/_kiln/info";
pub const LOOKUP_PATH: &str = "/v2/_kiln/lookup";
pub const REPORT_PATH: &str = "/v2/_kiln/report";

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LookupRequest {
    pub repository: String,
    pub keys: Vec<String>,
    /// Repositories only read (`--cache-from`), asked in order for the keys
    /// `repository` does not have: one round trip for the whole chain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fallbacks: Vec<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LookupEntry {
    pub digest: Digest,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The manifest exactly as stored (its digest is `digest`).
    pub manifest: String,
    /// The fallback repository that answered, when it was not the
    /// requested one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Who wrote the entry, where the server recorded it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<Writer>,
}

/// Who wrote a cache entry, as the cache server authenticated them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Writer {
    /// The manifest written; the record is believed only for it.
    pub digest: Digest,
    /// The token's issuer (`None` for a static user or anonymous).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The token's subject, the static user's name, or `anonymous`.
    pub subject: String,
    /// The token's scalar claims (`ref`, `ref_protected`, …), as text.
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// When (RFC 3339).
    pub time: String,
}

impl Writer {
    /// Whether every `key=value` of `rules` holds: `issuer` and `subject`
    /// name a token's writer (give both: subjects are per issuer), `user` a
    /// static user of the server's auth file; any other key is a claim of
    /// the writer's token.
    pub fn satisfies(&self, rules: &[(String, String)]) -> bool {
        rules.iter().all(|(k, v)| match k.as_str() {
            "issuer" => self.issuer.as_deref() == Some(v.as_str()),
            "subject" => self.issuer.is_some() && &self.subject == v,
            "user" => self.issuer.is_none() && &self.subject == v,
            claim => self.issuer.is_some() && self.claims.get(claim) == Some(v),
        })
    }
}

#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct LookupResponse {
    /// Keys that exist, unexpired, with every blob present.
    pub entries: BTreeMap<String, LookupEntry>,
    /// Keys that exist but expired (a miss for the client).
    #[serde(default)]
    pub expired: Vec<String>,
    /// Keys the server could not answer for (a miss, counted by the server).
    #[serde(default)]
    pub errors: u64,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BuildReport {
    pub repository: String,
    pub hits: u64,
    pub misses: u64,
    #[serde(default)]
    pub seconds_saved: f64,
    /// Layer bytes the build's hits reused.
    #[serde(default)]
    pub bytes_saved: u64,
    /// The build's first missing step as `line N INSTRUCTION` (shortened):
    /// a step that is the first miss of every build is a cache buster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_miss: Option<String>,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Info {
    pub server: String,
    pub version: String,
    #[serde(default)]
    pub max_lookup_keys: usize,
    /// Whether a lookup takes `fallbacks` (older servers ignore them).
    #[serde(default)]
    pub fallbacks: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{url}: {message}")]
    Http { url: String, message: String },
}

/// A client of a discovered Kiln cache server.
#[derive(Clone)]
pub struct KilnClient {
    http: reqwest::Client,
    base: String,
    auth: Option<String>,
    pub max_keys: usize,
    /// The server looks fallback repositories up in the same request.
    pub fallbacks: bool,
}

impl std::fmt::Debug for KilnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KilnClient({})", self.base)
    }
}

impl KilnClient {
    /// Asks `host` whether it is a Kiln cache server. `None` for any other
    /// registry, or when it cannot be asked (the caller then uses plain calls).
    pub async fn discover(registry: &Registry, host: &str) -> Option<KilnClient> {
        crate::tls::install_crypto_provider();
        let credential = registry.credential_for(host).await;
        let base = registry.base_url(host);
        let http = registry.http_client(host, Duration::from_secs(30)).ok()?;
        let auth = match credential {
            Ok(Credential::Basic { username, password }) => {
                use base64::Engine;
                Some(format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{username}:{password}"))
                ))
            }
            Ok(Credential::Token(t)) => Some(format!("Bearer {t}")),
            _ => None,
        };
        let mut req = http.get(format!("{base}{INFO_PATH}"));
        if let Some(a) = &auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        let info: Info = serde_json::from_slice(&resp.bytes().await.ok()?).ok()?;
        (info.server == "kiln-cache-server").then_some(KilnClient {
            http,
            base,
            auth,
            max_keys: info.max_lookup_keys.max(1),
            fallbacks: info.fallbacks,
        })
    }

    async fn post<T: serde::Serialize>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::Response, ApiError> {
        let url = format!("{}{path}", self.base);
        let err = |message: String| ApiError::Http {
            url: url.clone(),
            message,
        };
        let bytes = serde_json::to_vec(body).map_err(|e| err(e.to_string()))?;
        let mut req = self
            .http
            .post(&url)
            .header("Content-Type", "application/json")
            .body(bytes);
        if let Some(a) = &self.auth {
            req = req.header("Authorization", a);
        }
        let resp = req.send().await.map_err(|e| err(e.to_string()))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            return Err(err(format!(
                "HTTP {status}: {}",
                text.chars().take(300).collect::<String>()
            )));
        }
        Ok(resp)
    }

    /// Looks up many keys in as few round trips as the server allows;
    /// keys `repository` lacks are looked up in `fallbacks`, in order (only
    /// where [`Self::fallbacks`] says the server does so).
    pub async fn lookup(
        &self,
        repository: &str,
        fallbacks: &[String],
        keys: &[String],
    ) -> Result<LookupResponse, ApiError> {
        let mut all = LookupResponse::default();
        for chunk in keys.chunks(self.max_keys) {
            let resp = self
                .post(
                    LOOKUP_PATH,
                    &LookupRequest {
                        repository: repository.to_string(),
                        keys: chunk.to_vec(),
                        fallbacks: fallbacks.to_vec(),
                    },
                )
                .await?;
            let url = format!("{}{LOOKUP_PATH}", self.base);
            let body = resp.bytes().await.map_err(|e| ApiError::Http {
                url: url.clone(),
                message: e.to_string(),
            })?;
            let r: LookupResponse = serde_json::from_slice(&body).map_err(|e| ApiError::Http {
                url,
                message: e.to_string(),
            })?;
            all.entries.extend(r.entries);
            all.expired.extend(r.expired);
            all.errors += r.errors;
        }
        Ok(all)
    }

    pub async fn report(&self, report: &BuildReport) -> Result<(), ApiError> {
        self.post(REPORT_PATH, report).await.map(|_| ())
    }
}
