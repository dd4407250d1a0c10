//! Identities from the CI system: OpenID Connect JSON Web Tokens that
//! GitHub Actions (`id-token`), GitLab (`id_tokens`) and Kubernetes
//! (projected service-account tokens) issue to every job, verified against
//! each configured issuer's published keys, so no CI job needs a shared
//! password and a pull request's token can be told from the default
//! branch's.
//!
//! A token is accepted only when: its algorithm is an asymmetric one
//! (RSA, RSA-PSS, ECDSA, EdDSA — `none` and HMAC are refused, so a public
//! key can never be used as an HMAC secret), its issuer is configured, its
//! key id is in that issuer's key set (fetched from the discovery document
//! or a configured `jwks_uri`, cached, fetched again when a token names an
//! unknown key: rotation), its signature verifies, and its `iss`, `aud`,
//! `exp`, `nbf` and `sub` hold. The token itself is never logged.
//!
//! Fetching keys has a deadline: an issuer that hangs or is down makes a
//! token unverifiable ([`OidcError::is_unreachable`]); the caller is then
//! treated as anonymous and may never write (`auth.rs`).

mod jwks;
pub mod policy;

use crate::grants::Grant;
use jsonwebtoken::{Algorithm, Validation};
use std::time::Duration;

/// How long fetching an issuer's keys may take before the token counts as
/// unverifiable.
pub const FETCH_DEADLINE: Duration = Duration::from_secs(3);

/// An issuer as the auth file names it.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The `iss` value, also the base of its discovery document.
    pub issuer: String,
    /// The `aud` tokens must carry (GitHub's `audience` input, GitLab's
    /// `id_tokens: aud:`, a projected token's `audience`).
    pub audience: String,
    /// Where its key set is; by default the discovery document's.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// The shortest time between two key fetches caused by unknown key
    /// ids (default 10 s).
    #[serde(default)]
    pub refetch_seconds: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    #[error("token is not a JSON web token")]
    Malformed,
    #[error("token algorithm {0:?} is not accepted (asymmetric signatures only)")]
    Algorithm(Algorithm),
    #[error("token issuer {0:?} is not configured")]
    UnknownIssuer(String),
    #[error("fetching the keys of issuer {issuer}")]
    Fetch {
        issuer: String,
        #[source]
        source: jwks::FetchError,
    },
    #[error("issuer {issuer} has no key {kid:?} for {alg:?}")]
    UnknownKey {
        issuer: String,
        kid: Option<String>,
        alg: Algorithm,
    },
    #[error("token from {issuer} refused")]
    Invalid {
        issuer: String,
        #[source]
        source: jsonwebtoken::errors::Error,
    },
}

impl OidcError {
    /// The issuer could not be asked for its keys: not the token's fault,
    /// and no reason to refuse what needs no identity.
    pub fn is_unreachable(&self) -> bool {
        matches!(self, OidcError::Fetch { .. })
    }
}

/// Who a verified token says the caller is, and what the rules grant it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub issuer: String,
    pub subject: String,
    pub grants: Vec<Grant>,
    /// The token's scalar claims as text (registered time and id claims
    /// left out), recorded with what this identity writes.
    pub claims: std::collections::BTreeMap<String, String>,
}

/// The configured issuers and rules.
pub struct Verifier {
    issuers: Vec<(IssuerConfig, jwks::KeySet)>,
    rules: Vec<policy::Rule>,
}

const ACCEPTED: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// The `iss` claim of a token, read before its signature is checked, only
/// to choose whose keys check it.
fn unverified_issuer(token: &str) -> Option<String> {
    use base64::Engine;
    let payload = token.split('.').nth(1)?;
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&raw).ok()?;
    Some(v.get("iss")?.as_str()?.to_string())
}

/// Whether a bearer value is shaped like a JWT (three base64url parts), as
/// opposed to a static token from the auth file.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3 && token.len() > 20
}

impl Verifier {
    pub fn new(issuers: Vec<IssuerConfig>, rules: Vec<policy::Rule>) -> Verifier {
        Verifier {
            issuers: issuers
                .into_iter()
                .map(|c| {
                    let every = c
                        .refetch_seconds
                        .map_or(jwks::REFETCH_EVERY, Duration::from_secs);
                    let keys = jwks::KeySet::new(&c.issuer, c.jwks_uri.clone(), every);
                    (c, keys)
                })
                .collect(),
            rules,
        }
    }

    /// Verifies `token`; the identity and its grants, or why not.
    pub async fn verify(&self, token: &str) -> Result<Identity, OidcError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| OidcError::Malformed)?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(OidcError::Algorithm(header.alg));
        }
        let iss = unverified_issuer(token).ok_or(OidcError::Malformed)?;
        let Some((cfg, keys)) = self.issuers.iter().find(|(c, _)| c.issuer == iss) else {
            return Err(OidcError::UnknownIssuer(iss));
        };
        let key = keys
            .key(header.kid.as_deref(), header.alg)
            .await
            .map_err(|source| OidcError::Fetch {
                issuer: iss.clone(),
                source,
            })?
            .ok_or_else(|| OidcError::UnknownKey {
                issuer: iss.clone(),
                kid: header.kid.clone(),
                alg: header.alg,
            })?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&cfg.issuer]);
        v.set_audience(&[&cfg.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        v.validate_nbf = true;
        v.leeway = 30;
        let data =
            jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &v)
                .map_err(|source| OidcError::Invalid {
                    issuer: iss.clone(),
                    source,
                })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string();
        let kept = claims
            .iter()
            .filter(|(k, _)| !matches!(k.as_str(), "exp" | "iat" | "nbf" | "jti" | "aud"))
            .filter_map(|(k, v)| Some((k.clone(), policy::text(v)?)))
            .collect();
        Ok(Identity {
            grants: policy::grants(&self.rules, &cfg.issuer, &claims),
            claims: kept,
            issuer: cfg.issuer.clone(),
            subject,
        })
    }
}
