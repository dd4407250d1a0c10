//! Who may read and write which repositories. Access is anonymous, by
//! credentials (HTTP basic with a user's password, or a static bearer
//! token), or by an OpenID Connect token a CI system issued (`oidc`: the
//! rules turn its claims into grants), each granting read-only or
//! read-write on repository prefixes. Credentials are compared by their
//! SHA-256; no credential or token is logged or echoed in errors.

use base64::Engine;
use sha2::{Digest as _, Sha256};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("auth file {path}: {message}")]
    File { path: PathBuf, message: String },
}

pub use crate::grants::{Access, Grant};

#[derive(Debug, Clone, serde::Deserialize)]
struct UserSpec {
    username: Option<String>,
    password: Option<String>,
    token: Option<String>,
    grants: Vec<Grant>,
}

#[derive(Debug, Clone, serde::Deserialize)]
struct AuthFile {
    #[serde(default)]
    anonymous: Vec<Grant>,
    #[serde(default)]
    users: Vec<UserSpec>,
    /// OpenID Connect issuers whose tokens are accepted.
    #[serde(default)]
    issuers: Vec<crate::oidc::IssuerConfig>,
    /// What their tokens' claims grant.
    #[serde(default)]
    rules: Vec<crate::oidc::policy::Rule>,
}

struct Principal {
    name: String,
    basic: Option<[u8; 32]>,
    token: Option<[u8; 32]>,
    grants: Vec<Grant>,
}

/// The access policy. `Auth::open()` (no file) lets anyone read and write,
/// which suits a cache reachable only inside a cluster.
pub struct Auth {
    anonymous: Vec<Grant>,
    principals: Vec<Principal>,
    oidc: Option<crate::oidc::Verifier>,
    realm: String,
}

/// Who made a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    User(String),
    /// A verified OpenID Connect token.
    Identity(Box<crate::oidc::Identity>),
    /// A token whose issuer could not be asked for its keys in time: as
    /// anonymous, but never more than read.
    Unverified,
    /// Credentials were sent and did not match.
    Rejected,
}

fn hash(s: &[u8]) -> [u8; 32] {
    Sha256::digest(s).into()
}

impl Auth {
    pub fn open() -> Auth {
        Auth {
            anonymous: vec![Grant {
                prefix: String::new(),
                access: Access::Write,
            }],
            principals: Vec::new(),
            oidc: None,
            realm: "kiln-cache".into(),
        }
    }

    /// Reads a JSON policy:
    /// `{"anonymous": [{"prefix": "", "access": "read"}],
    ///   "users": [{"username": "ci", "password": "…", "token": "…",
    ///              "grants": [{"prefix": "cache/", "access": "write"}]}]}`
    pub fn load(path: &Path) -> Result<Auth, AuthError> {
        let err = |message: String| AuthError::File {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        // serde's message may quote the offending value; keep only its position.
        let f: AuthFile = serde_json::from_slice(&text).map_err(|e| {
            err(format!(
                "invalid JSON at line {} column {}",
                e.line(),
                e.column()
            ))
        })?;
        let mut principals = Vec::new();
        for (i, u) in f.users.into_iter().enumerate() {
            let basic = match (&u.username, &u.password) {
                (Some(n), Some(p)) => Some(hash(format!("{n}:{p}").as_bytes())),
                (None, None) => None,
                _ => {
                    return Err(err(format!(
                        "user {} needs both username and password",
                        i + 1
                    )))
                }
            };
            if basic.is_none() && u.token.is_none() {
                return Err(err(format!(
                    "user {} has neither password nor token",
                    i + 1
                )));
            }
            principals.push(Principal {
                name: u
                    .username
                    .clone()
                    .unwrap_or_else(|| format!("token-{}", i + 1)),
                basic,
                token: u.token.as_deref().map(|t| hash(t.as_bytes())),
                grants: u.grants,
            });
        }
        if let Some(r) = f
            .rules
            .iter()
            .find(|r| !f.issuers.iter().any(|i| i.issuer == r.issuer))
        {
            return Err(err(format!(
                "a rule names issuer {:?}, which is not in issuers",
                r.issuer
            )));
        }
        let oidc = (!f.issuers.is_empty()).then(|| crate::oidc::Verifier::new(f.issuers, f.rules));
        Ok(Auth {
            anonymous: f.anonymous,
            principals,
            oidc,
            realm: "kiln-cache".into(),
        })
    }

    /// Identifies the caller from an `Authorization` header value: a static
    /// credential, else (for a bearer value shaped like one) a token of a
    /// configured issuer.
    pub async fn identify(&self, authorization: Option<&str>) -> Caller {
        let Some(h) = authorization else {
            return Caller::Anonymous;
        };
        let (scheme, value) = h.split_once(' ').unwrap_or((h, ""));
        let value = value.trim();
        let found = if scheme.eq_ignore_ascii_case("basic") {
            let Ok(raw) = base64::engine::general_purpose::STANDARD.decode(value) else {
                return Caller::Rejected;
            };
            // Some clients send empty basic credentials when they have none.
            if raw.is_empty() || raw == b":" {
                return Caller::Anonymous;
            }
            let h = hash(&raw);
            self.principals.iter().find(|p| p.basic == Some(h))
        } else if scheme.eq_ignore_ascii_case("bearer") {
            let h = hash(value.as_bytes());
            let found = self.principals.iter().find(|p| p.token == Some(h));
            if found.is_none() && crate::oidc::looks_like_jwt(value) {
                if let Some(v) = &self.oidc {
                    return Self::verified(v.verify(value).await);
                }
            }
            found
        } else {
            None
        };
        match found {
            Some(p) => Caller::User(p.name.clone()),
            None => Caller::Rejected,
        }
    }

    fn verified(r: Result<crate::oidc::Identity, crate::oidc::OidcError>) -> Caller {
        match r {
            Ok(id) => {
                tracing::debug!(
                    "token of {} from {}: {} grant(s)",
                    id.subject,
                    id.issuer,
                    id.grants.len()
                );
                Caller::Identity(Box::new(id))
            }
            Err(e) if e.is_unreachable() => {
                tracing::warn!(
                    "a token could not be verified, read-only as anonymous: {}",
                    kiln_common::report::Report(&e)
                );
                Caller::Unverified
            }
            Err(e) => {
                tracing::info!("refused a token: {}", kiln_common::report::Report(&e));
                Caller::Rejected
            }
        }
    }

    /// The access `caller` has to `repo` (`None`: the registry as a whole,
    /// as for `/v2/` and the catalog).
    pub fn access(&self, caller: &Caller, repo: Option<&str>) -> Access {
        let (grants, cap): (&[Grant], Access) = match caller {
            Caller::Anonymous => (&self.anonymous, Access::Write),
            Caller::Unverified => (&self.anonymous, Access::Read),
            Caller::User(n) => match self.principals.iter().find(|p| &p.name == n) {
                Some(p) => (&p.grants, Access::Write),
                None => return Access::None,
            },
            Caller::Identity(id) => (&id.grants, Access::Write),
            Caller::Rejected => return Access::None,
        };
        let granted = grants
            .iter()
            .filter(|g| match repo {
                Some(r) => r.starts_with(&g.prefix),
                None => g.prefix.is_empty(),
            })
            .map(|g| g.access)
            .max()
            .unwrap_or(Access::None);
        granted.min(cap)
    }

    /// What the store records as the writer of manifest `digest` written
    /// by `caller`.
    pub fn writer(caller: &Caller, digest: &kiln_common::Digest) -> kiln_common::cache_api::Writer {
        let (issuer, subject, claims) = match caller {
            Caller::Identity(id) => (
                Some(id.issuer.clone()),
                id.subject.clone(),
                id.claims.clone(),
            ),
            Caller::User(n) => (None, n.clone(), Default::default()),
            _ => (None, "anonymous".to_string(), Default::default()),
        };
        kiln_common::cache_api::Writer {
            digest: digest.clone(),
            issuer,
            subject,
            claims,
            time: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    }

    pub fn has_users(&self) -> bool {
        !self.principals.is_empty() || self.oidc.is_some()
    }

    pub fn challenge(&self) -> String {
        format!("Basic realm=\"{}\"", self.realm)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn grants_follow_prefixes_and_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        std::fs::write(
            &p,
            r#"{"anonymous":[{"prefix":"public/","access":"read"}],
                "users":[{"username":"ci","password":"s3cret","grants":[{"prefix":"cache/","access":"write"},{"prefix":"","access":"read"}]},
                         {"token":"tok","grants":[{"prefix":"cache/","access":"read"}]}]}"#,
        )
        .unwrap();
        let a = Auth::load(&p).unwrap();
        let basic = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ci:s3cret")
        );
        let ci = a.identify(Some(&basic)).await;
        assert_eq!(ci, Caller::User("ci".into()));
        assert_eq!(a.access(&ci, Some("cache/app")), Access::Write);
        assert_eq!(a.access(&ci, Some("other")), Access::Read);
        let tok = a.identify(Some("Bearer tok")).await;
        assert_eq!(a.access(&tok, Some("cache/app")), Access::Read);
        assert_eq!(a.access(&tok, Some("other")), Access::None);
        let bad = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("ci:wrong")
        );
        assert_eq!(a.identify(Some(&bad)).await, Caller::Rejected);
        assert_eq!(a.access(&Caller::Anonymous, Some("public/x")), Access::Read);
        assert_eq!(a.access(&Caller::Anonymous, Some("cache/x")), Access::None);
    }

    #[test]
    fn a_broken_file_does_not_echo_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("auth.json");
        std::fs::write(&p, r#"{"users":[{"username":"ci","password":"hunter2","grants":[{"access":"superuser"}]}]}"#).unwrap();
        let e = Auth::load(&p).err().unwrap().to_string();
        assert!(e.contains("line 1"), "{e}");
        assert!(!e.contains("hunter2") && !e.contains("superuser"), "{e}");
    }

    /// `deploy/trusted-cache/auth.json` does what its README says, for
    /// tokens shaped as GitHub, GitLab and Kubernetes issue them.
    #[test]
    fn the_documented_policy_scopes_each_ci_system() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/trusted-cache/auth.json");
        let a = Auth::load(&p).unwrap();
        let f: AuthFile = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
        let access = |iss: &str, claims: serde_json::Value, repo: &str| {
            let claims = claims.as_object().unwrap().clone();
            let id = crate::oidc::Identity {
                issuer: iss.into(),
                subject: String::new(),
                grants: crate::oidc::policy::grants(&f.rules, iss, &claims),
                claims: Default::default(),
            };
            a.access(&Caller::Identity(Box::new(id)), Some(repo))
        };
        let gh = "https://token.actions.githubusercontent.com";
        let push_main = serde_json::json!({"repository": "Org/App", "ref": "refs/heads/main", "event_name": "push"});
        let pr = serde_json::json!({"repository": "org/app", "ref": "refs/pull/7/merge", "event_name": "pull_request"});
        assert_eq!(
            access(gh, push_main.clone(), "cache/org/app/main/img"),
            Access::Write
        );
        assert_eq!(
            access(gh, pr.clone(), "cache/org/app/main/img"),
            Access::Read
        );
        assert_eq!(
            access(gh, pr.clone(), "cache/org/app/branch/refs-pull-7-merge/img"),
            Access::Write
        );
        assert_eq!(access(gh, pr, "cache/other/app/main/img"), Access::None);
        let gl = "https://gitlab.com";
        let protected = serde_json::json!({"project_path": "group/app", "ref": "main", "ref_type": "branch", "ref_protected": "true"});
        let feature = serde_json::json!({"project_path": "group/app", "ref": "Feature/X", "ref_type": "branch", "ref_protected": "false"});
        assert_eq!(
            access(gl, protected, "cache/group/app/main/img"),
            Access::Write
        );
        assert_eq!(
            access(gl, feature.clone(), "cache/group/app/main/img"),
            Access::Read
        );
        assert_eq!(
            access(gl, feature, "cache/group/app/branch/feature-x/img"),
            Access::Write
        );
        let k8s = "https://kubernetes.default.svc.cluster.local";
        let main_sa = serde_json::json!({"sub": "system:serviceaccount:ci:kiln-main"});
        let pr_sa = serde_json::json!({"sub": "system:serviceaccount:ci:kiln-pr"});
        assert_eq!(
            access(k8s, main_sa, "cache/jenkins/main/img"),
            Access::Write
        );
        assert_eq!(
            access(k8s, pr_sa.clone(), "cache/jenkins/main/img"),
            Access::Read
        );
        assert_eq!(access(k8s, pr_sa, "cache/jenkins/pr/img"), Access::Write);
        // A token of an issuer the file does not name earns nothing.
        let other = serde_json::json!({"project_path": "group/app", "ref_protected": "true", "ref_type": "branch"});
        assert_eq!(
            access("https://gitlab.example", other, "cache/group/app/main/img"),
            Access::None
        );
    }
}
