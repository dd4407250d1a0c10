//! An issuer's published keys (JWKS), fetched on first use, kept, and
//! fetched again when a token names a key id the kept set lacks (the
//! issuer rotated its keys) — at most once per [`REFETCH_EVERY`] (or the
//! issuer's `refetch_seconds`), so
//! tokens with made-up key ids cannot make the server hammer the issuer.
//! One fetch at a time per issuer; every fetch has [`super::FETCH_DEADLINE`].

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// The shortest time between two fetches caused by unknown key ids.
pub const REFETCH_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} is not a {what}")]
    Invalid {
        url: String,
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("no answer within {0:?}")]
    Deadline(Duration),
    #[error("no keys yet: the last fetch failed, the next is not due")]
    NotDue,
}

struct Cached {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

pub struct KeySet {
    issuer: String,
    refetch_every: Duration,
    jwks_uri: Option<String>,
    http: reqwest::Client,
    cached: Mutex<Cached>,
}

impl KeySet {
    pub fn new(issuer: &str, jwks_uri: Option<String>, refetch_every: Duration) -> KeySet {
        let http = kiln_common::tls::client_builder()
            .timeout(super::FETCH_DEADLINE)
            .connect_timeout(super::FETCH_DEADLINE)
            .build()
            .unwrap_or_default();
        KeySet {
            issuer: issuer.trim_end_matches('/').to_string(),
            refetch_every,
            jwks_uri,
            http,
            cached: Mutex::new(Cached {
                set: None,
                fetched: None,
            }),
        }
    }

    /// The key for `kid` (or the only key usable with `alg` when the token
    /// names none); `Ok(None)` when the issuer has no such key even after a
    /// fetch.
    pub async fn key(
        &self,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<Option<DecodingKey>, FetchError> {
        let deadline = super::FETCH_DEADLINE;
        let mut c = tokio::time::timeout(deadline, self.cached.lock())
            .await
            .map_err(|_| FetchError::Deadline(deadline))?;
        if let Some(k) = c.set.as_ref().and_then(|s| find(s, kid, alg)) {
            return Ok(Some(k));
        }
        let may_fetch = c.fetched.is_none_or(|t| t.elapsed() >= self.refetch_every);
        if !may_fetch {
            return match c.set {
                Some(_) => Ok(None),
                None => Err(FetchError::NotDue),
            };
        }
        c.fetched = Some(Instant::now());
        let set = tokio::time::timeout(deadline, self.fetch())
            .await
            .map_err(|_| FetchError::Deadline(deadline))??;
        tracing::info!("issuer {}: {} key(s) fetched", self.issuer, set.keys.len());
        let found = find(&set, kid, alg);
        c.set = Some(set);
        Ok(found)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
        what: &'static str,
    ) -> Result<T, FetchError> {
        let http = |source| FetchError::Http {
            url: url.to_string(),
            source,
        };
        let resp = self.http.get(url).send().await.map_err(http)?;
        if !resp.status().is_success() {
            return Err(FetchError::Status {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let body = resp.bytes().await.map_err(http)?;
        serde_json::from_slice(&body).map_err(|source| FetchError::Invalid {
            url: url.to_string(),
            what,
            source,
        })
    }

    async fn fetch(&self) -> Result<JwkSet, FetchError> {
        let uri = match &self.jwks_uri {
            Some(u) => u.clone(),
            None => {
                #[derive(serde::Deserialize)]
                struct Discovery {
                    jwks_uri: String,
                }
                let url = format!("{}/.well-known/openid-configuration", self.issuer);
                let d: Discovery = self.get_json(&url, "discovery document").await?;
                d.jwks_uri
            }
        };
        self.get_json(&uri, "JWK set").await
    }
}

/// The key of `set` for `kid` usable with `alg`: its type must fit the
/// algorithm (an RSA key never verifies an ECDSA token, and no key is ever
/// taken as an HMAC secret).
fn find(set: &JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
    let fits = |k: &Jwk| match (&k.algorithm, alg) {
        (AlgorithmParameters::RSA(_), a) => matches!(
            a,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::PS384
                | Algorithm::PS512
        ),
        (AlgorithmParameters::EllipticCurve(_), a) => {
            matches!(a, Algorithm::ES256 | Algorithm::ES384)
        }
        (AlgorithmParameters::OctetKeyPair(_), a) => a == Algorithm::EdDSA,
        (AlgorithmParameters::OctetKey(_), _) => false,
    };
    let mut candidates = set.keys.iter().filter(|k| fits(k));
    let k = match kid {
        Some(kid) => candidates.find(|k| k.common.key_id.as_deref() == Some(kid))?,
        None => {
            let first = candidates.next()?;
            if candidates.next().is_some() {
                return None; // ambiguous without a key id
            }
            first
        }
    };
    DecodingKey::from_jwk(k).ok()
}
