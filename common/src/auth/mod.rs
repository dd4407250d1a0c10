//! Registry credentials: Docker's `config.json` first, as kaniko reads it
//! (`docker_config.rs`), then the logins kaniko's image had built in
//! (`cloud.rs`: ECR, Google, ACR, GitLab CI, `KANIKO_<host>_USER`), so a
//! pipeline that never writes config.json still authenticates.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Credential`], [`AuthError`], [`Keychain`]: the order sources are tried in |
//! | `docker_config.rs` | `config.json`: `auths`, `credHelpers`, `credsStore` |
//! | `cloud.rs` | built-in logins, which hosts they serve, `--credential-helpers` |

mod cloud;
mod docker_config;

pub use cloud::{LoginError, Provider};
pub use docker_config::{DockerConfig, Lookup};

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("parsing {path}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("credential helper docker-credential-{helper} for {registry}: {message}")]
    Helper {
        helper: String,
        registry: String,
        message: String,
    },
    #[error("{path}: auth entry for {registry} is not base64 user:password")]
    BadAuth { path: PathBuf, registry: String },
    /// A built-in login (ECR, Google, ACR, …) failed.
    #[error("{provider} login for {registry}")]
    Login {
        provider: &'static str,
        registry: String,
        /// Boxed: it would make every `AuthError` larger.
        #[source]
        source: Box<cloud::LoginError>,
    },
    #[error(
        "config.json maps {registry} to the {provider} helper, and that login found no credentials"
    )]
    NoLogin {
        provider: &'static str,
        registry: String,
    },
    #[error("--credential-helpers {name:?}: expected env, google, ecr, acr or gitlab")]
    UnknownHelper { name: String },
}

#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    Anonymous,
    Basic {
        username: String,
        password: String,
    },
    /// An identity or registry token, sent as a bearer token.
    Token(String),
}

impl std::fmt::Debug for Credential {
    // Never print secrets, even in debug logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Anonymous => f.write_str("Anonymous"),
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::Token(_) => f.write_str("Token(***)"),
        }
    }
}

/// A client with the host's TLS settings, made only when a login needs one.
pub type MakeClient<'a> =
    &'a (dyn Fn() -> Result<reqwest::Client, Box<dyn std::error::Error + Send + Sync>> + Sync);

/// Where a login that talks to the registry itself reaches it (ACR's token
/// exchange): its base URL and how to make a client with that host's TLS
/// settings (only that login makes one).
pub struct RegistryHttp<'a> {
    pub base: &'a str,
    pub client: MakeClient<'a>,
}

/// Every source of credentials in kaniko's order: `config.json` first (its
/// helpers included), then the built-in logins that are enabled and apply
/// to the host.
///
/// A registry's answer is kept for [`Keychain::REFRESH_AFTER`], then looked
/// up again: a build uses one login, but a long-running server (mirror
/// upstreams, `registry://` storage) outlives cloud tokens (Google's last an
/// hour, ECR's twelve). A 401 forgets a kept login at once ([`forget`]).
/// Helpers run on a blocking thread with a deadline, never on the async
/// runtime.
///
/// [`forget`]: Keychain::forget
pub struct Keychain {
    config: std::sync::Arc<DockerConfig>,
    logins: Vec<Provider>,
    cache: Mutex<HashMap<String, (Credential, Instant)>>,
}

impl Keychain {
    /// How long a login is reused: half the shortest common cloud token
    /// life (Google's hour), so a token is replaced well before it expires.
    pub const REFRESH_AFTER: Duration = Duration::from_secs(30 * 60);

    /// `logins`: the built-in logins to try, in order ([`Provider::DEFAULT`]
    /// unless `--credential-helpers` says otherwise).
    pub fn new(config: DockerConfig, logins: Vec<Provider>) -> Keychain {
        Keychain {
            config: std::sync::Arc::new(config),
            logins,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The credential for `registry` (a host, with its port if any).
    ///
    /// A login config.json asks for explicitly fails the lookup when it
    /// fails; one tried only because the host looks like its cloud's is
    /// logged and skipped, as kaniko's keychain does, and the registry's
    /// own answer (401) then says what is wrong.
    pub async fn credential_for(
        &self,
        registry: &str,
        http: &RegistryHttp<'_>,
    ) -> Result<Credential, AuthError> {
        if let Some(c) = self.cached(registry) {
            return Ok(c);
        }
        let (config, host) = (self.config.clone(), registry.to_string());
        let lookup = tokio::task::spawn_blocking(move || config.lookup(&host))
            .await
            .map_err(|e| AuthError::Helper {
                helper: "(lookup)".into(),
                registry: registry.to_string(),
                message: e.to_string(),
            })??;
        let found = match lookup {
            Lookup::Found(c) => c,
            Lookup::BuiltIn(p) => cloud::login(p, registry, http)
                .await
                .map_err(|source| AuthError::Login {
                    provider: p.name(),
                    registry: registry.to_string(),
                    source: Box::new(source),
                })?
                .ok_or(AuthError::NoLogin {
                    provider: p.name(),
                    registry: registry.to_string(),
                })?,
            Lookup::Nothing => self.built_in(registry, http).await,
        };
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(registry.to_string(), (found.clone(), Instant::now()));
        }
        Ok(found)
    }

    /// The credential found for `registry` within [`Self::REFRESH_AFTER`].
    pub fn cached(&self, registry: &str) -> Option<Credential> {
        let cache = self.cache.lock().ok()?;
        let (c, at) = cache.get(registry)?;
        (at.elapsed() < Self::REFRESH_AFTER).then(|| c.clone())
    }

    /// Forgets `registry`'s login (it was answered 401).
    pub fn forget(&self, registry: &str) {
        if let Ok(mut cache) = self.cache.lock() {
            cache.remove(registry);
        }
    }

    /// Forgets every login kept; whether there was any.
    pub fn forget_all(&self) -> bool {
        self.cache.lock().is_ok_and(|mut cache| {
            let had = !cache.is_empty();
            cache.clear();
            had
        })
    }

    async fn built_in(&self, registry: &str, http: &RegistryHttp<'_>) -> Credential {
        for p in self.logins.iter().filter(|p| p.serves(registry)) {
            match cloud::login(*p, registry, http).await {
                Ok(Some(c)) => {
                    tracing::info!(
                        "{registry}: credentials from the built-in {} login",
                        p.name()
                    );
                    return c;
                }
                Ok(None) => {}
                Err(source) => {
                    let e = AuthError::Login {
                        provider: p.name(),
                        registry: registry.to_string(),
                        source: Box::new(source),
                    };
                    tracing::warn!("{}; trying without", crate::report::Report(&e));
                }
            }
        }
        Credential::Anonymous
    }
}

/// `--credential-helpers`: names, repeated or comma-separated; an empty
/// value turns every built-in login off; none given means all of them.
pub fn parse_credential_helpers(values: &[String]) -> Result<Vec<Provider>, AuthError> {
    if values.is_empty() {
        return Ok(Provider::DEFAULT.to_vec());
    }
    let mut out = Vec::new();
    for name in values.iter().flat_map(|v| v.split(',')).map(str::trim) {
        if name.is_empty() {
            continue;
        }
        let p = Provider::from_name(name).ok_or_else(|| AuthError::UnknownHelper {
            name: name.to_string(),
        })?;
        if !out.contains(&p) {
            out.push(p);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_helpers_flag() {
        let v = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(parse_credential_helpers(&[]).unwrap(), Provider::DEFAULT);
        assert_eq!(parse_credential_helpers(&v(&[""])).unwrap(), vec![]);
        assert_eq!(
            parse_credential_helpers(&v(&["ecr,google", "ecr"])).unwrap(),
            vec![Provider::Ecr, Provider::Google]
        );
        assert!(parse_credential_helpers(&v(&["vault"])).is_err());
    }
}
