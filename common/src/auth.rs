//! Registry credentials from Docker's `config.json`, looked up the way kaniko
//! does so existing Kubernetes secrets keep working: `$DOCKER_CONFIG/config.json`,
//! then `/kaniko/.docker/config.json`, then `~/.docker/config.json`;
//! `credHelpers` / `credsStore` run `docker-credential-<name> get`.

use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

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

#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// The credentials of one config.json (or none when no file exists).
#[derive(Debug, Default)]
pub struct DockerConfig {
    path: Option<PathBuf>,
    file: ConfigFile,
}

impl DockerConfig {
    /// The candidate paths in kaniko's order.
    pub fn default_paths() -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
            let p = PathBuf::from(d);
            // kaniko accepts DOCKER_CONFIG naming the file itself too.
            if p.extension().is_some_and(|e| e == "json") {
                v.push(p);
            } else {
                v.push(p.join("config.json"));
            }
        }
        v.push(PathBuf::from("/kaniko/.docker/config.json"));
        if let Some(h) = std::env::var_os("HOME") {
            v.push(PathBuf::from(h).join(".docker/config.json"));
        }
        v
    }

    pub fn load_default() -> Result<DockerConfig, AuthError> {
        for p in Self::default_paths() {
            if p.is_file() {
                return Self::load(&p);
            }
        }
        Ok(DockerConfig::default())
    }

    pub fn load(path: &Path) -> Result<DockerConfig, AuthError> {
        let text = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let file = serde_json::from_slice(&text).map_err(|source| AuthError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(DockerConfig {
            path: Some(path.to_path_buf()),
            file,
        })
    }

    /// Credentials for a registry host (`docker.io` matches Docker Hub's legacy keys).
    pub fn credential_for(&self, registry: &str) -> Result<Credential, AuthError> {
        let aliases: Vec<String> = if matches!(
            registry,
            "docker.io" | "index.docker.io" | "registry-1.docker.io"
        ) {
            vec![
                "https://index.docker.io/v1/".into(),
                "index.docker.io".into(),
                "docker.io".into(),
                "registry-1.docker.io".into(),
            ]
        } else {
            vec![registry.to_string()]
        };
        for a in &aliases {
            if let Some(h) = self.file.cred_helpers.get(a) {
                return run_helper(h, a);
            }
        }
        for (key, entry) in &self.file.auths {
            let host = normalize_key(key);
            if aliases.iter().any(|a| normalize_key(a) == host) {
                return self.entry_credential(key, entry);
            }
        }
        if let Some(store) = &self.file.creds_store {
            match run_helper(store, &aliases[0]) {
                Ok(c) => return Ok(c),
                Err(e) => tracing::debug!("credsStore gave nothing for {registry}: {e}"),
            }
        }
        Ok(Credential::Anonymous)
    }

    fn entry_credential(&self, key: &str, e: &AuthEntry) -> Result<Credential, AuthError> {
        if let Some(t) = e.identitytoken.as_ref().or(e.registrytoken.as_ref()) {
            if !t.is_empty() {
                return Ok(Credential::Token(t.clone()));
            }
        }
        if let (Some(u), Some(p)) = (&e.username, &e.password) {
            return Ok(Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            });
        }
        if let Some(a) = &e.auth {
            let bad = || AuthError::BadAuth {
                path: self.path.clone().unwrap_or_default(),
                registry: key.to_string(),
            };
            let raw = base64::engine::general_purpose::STANDARD
                .decode(a.trim())
                .map_err(|_| bad())?;
            let s = String::from_utf8(raw).map_err(|_| bad())?;
            let (u, p) = s.split_once(':').ok_or_else(bad)?;
            return Ok(Credential::Basic {
                username: u.to_string(),
                password: p.to_string(),
            });
        }
        Ok(Credential::Anonymous)
    }
}

fn normalize_key(key: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let host = k.split('/').next().unwrap_or(k);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

fn run_helper(helper: &str, registry: &str) -> Result<Credential, AuthError> {
    let err = |message: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(registry.as_bytes())
            .map_err(|e| err(e.to_string()))?;
    }
    let out = child.wait_with_output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stdout).trim().to_string()));
    }
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let r: Reply = serde_json::from_slice(&out.stdout).map_err(|e| err(e.to_string()))?;
    // Docker's convention: the user "<token>" means the secret is an identity token.
    if r.username == "<token>" {
        Ok(Credential::Token(r.secret))
    } else {
        Ok(Credential::Basic {
            username: r.username,
            password: r.secret,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_and_helpers() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYXNz"},"127.0.0.1:5000":{"username":"a","password":"b"}}}"#,
        )
        .unwrap();
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(
            c.credential_for("docker.io").unwrap(),
            Credential::Basic {
                username: "user".into(),
                password: "pass".into()
            }
        );
        assert_eq!(
            c.credential_for("127.0.0.1:5000").unwrap(),
            Credential::Basic {
                username: "a".into(),
                password: "b".into()
            }
        );
        assert_eq!(c.credential_for("quay.io").unwrap(), Credential::Anonymous);
        assert!(!format!("{:?}", c.credential_for("docker.io").unwrap()).contains("pass"));
    }
}
