//! Registry credentials from Docker's `config.json`, looked up the way kaniko
//! does so existing Kubernetes secrets keep working: `$DOCKER_CONFIG/config.json`,
//! then `/kaniko/.docker/config.json`, then `~/.docker/config.json`;
//! `credHelpers` / `credsStore` run `docker-credential-<name> get`.

use super::cloud::Provider;
use super::{AuthError, Credential};
use base64::Engine as _;
use serde::Deserialize;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Default, Clone, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    auths: HashMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: HashMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
struct AuthEntry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
    registrytoken: Option<String>,
}

/// What config.json says about one registry.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup {
    /// A credential from `auths`, or one a helper program returned.
    Found(Credential),
    /// `credHelpers`/`credsStore` names a helper Kiln has built in
    /// (`ecr-login`, `gcr`, `acr-env`, …) and no such program is on `PATH`,
    /// as in kaniko's image, which shipped those helpers.
    BuiltIn(Provider),
    /// Nothing configured: the built-in logins for the host are tried.
    Nothing,
}

/// The credentials of one config.json (or none when no file exists).
#[derive(Debug, Default, Clone)]
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

    /// What is configured for a registry host (`docker.io` matches Docker
    /// Hub's legacy keys).
    pub fn lookup(&self, registry: &str) -> Result<Lookup, AuthError> {
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
                return helper(h, a);
            }
        }
        for (key, entry) in &self.file.auths {
            let host = normalize_key(key);
            if aliases.iter().any(|a| normalize_key(a) == host) {
                return self.entry_credential(key, entry).map(Lookup::Found);
            }
        }
        if let Some(store) = &self.file.creds_store {
            match helper(store, &aliases[0]) {
                Ok(found) => return Ok(found),
                Err(e) => tracing::debug!("credsStore gave nothing for {registry}: {e}"),
            }
        }
        Ok(Lookup::Nothing)
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

/// The program `docker-credential-<name>` when it is on `PATH`; otherwise
/// Kiln's own login of that name, if it has one.
fn helper(name: &str, registry: &str) -> Result<Lookup, AuthError> {
    let program = format!("docker-credential-{name}");
    let on_path = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(&program).is_file()));
    match Provider::from_helper(name) {
        Some(p) if !on_path => Ok(Lookup::BuiltIn(p)),
        _ => run_helper(name, registry).map(Lookup::Found),
    }
}

/// The longest a credential helper may take: helpers that prompt, or wait
/// on a keyring or the network, must not hang a build or the server.
const HELPER_DEADLINE: Duration = Duration::from_secs(20);

fn run_helper(helper: &str, registry: &str) -> Result<Credential, AuthError> {
    run_program(
        Path::new(&format!("docker-credential-{helper}")),
        helper,
        registry,
        HELPER_DEADLINE,
    )
}

/// `program get`, given `registry` on stdin, killed past `deadline`.
fn run_program(
    program: &Path,
    helper: &str,
    registry: &str,
    deadline: Duration,
) -> Result<Credential, AuthError> {
    let err = |message: String| AuthError::Helper {
        helper: helper.to_string(),
        registry: registry.to_string(),
        message,
    };
    let mut child = Command::new(program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| err(e.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is answered by its status.
        let _ = stdin.write_all(registry.as_bytes());
    }
    // Read on a thread, so a helper writing more than a pipe holds still
    // gets to exit.
    let mut stdout = child.stdout.take();
    let reader = std::thread::spawn(move || {
        let mut out = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = std::io::Read::read_to_end(s, &mut out);
        }
        out
    });
    let started = Instant::now();
    let status = loop {
        match child.try_wait().map_err(|e| err(e.to_string()))? {
            Some(status) => break status,
            None if started.elapsed() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(err(format!("no answer within {deadline:?}; killed")));
            }
            None => std::thread::sleep(Duration::from_millis(10)),
        }
    };
    let stdout = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(err(String::from_utf8_lossy(&stdout).trim().to_string()));
    }
    #[derive(Deserialize)]
    struct Reply {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let r: Reply = serde_json::from_slice(&stdout).map_err(|e| err(e.to_string()))?;
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
            c.lookup("docker.io").unwrap(),
            Lookup::Found(Credential::Basic {
                username: "user".into(),
                password: "pass".into()
            })
        );
        assert_eq!(
            c.lookup("127.0.0.1:5000").unwrap(),
            Lookup::Found(Credential::Basic {
                username: "a".into(),
                password: "b".into()
            })
        );
        assert_eq!(c.lookup("quay.io").unwrap(), Lookup::Nothing);
        assert!(!format!("{:?}", c.lookup("docker.io").unwrap()).contains("pass"));
    }

    #[test]
    fn a_built_in_helper_stands_in_for_a_missing_program() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(
            &p,
            r#"{"credHelpers":{"r.example":"ecr-login","g.example":"gcr","x.example":"no-such-helper"}}"#,
        )
        .unwrap();
        let c = DockerConfig::load(&p).unwrap();
        assert_eq!(
            c.lookup("r.example").unwrap(),
            Lookup::BuiltIn(Provider::Ecr)
        );
        assert_eq!(
            c.lookup("g.example").unwrap(),
            Lookup::BuiltIn(Provider::Google)
        );
        // A helper Kiln does not have is run, and its absence is an error.
        assert!(c.lookup("x.example").is_err());
    }

    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join("docker-credential-test");
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    #[test]
    fn a_helper_answers_with_the_registry_it_was_given() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(
            dir.path(),
            r#"read r; printf '{"Username":"u-%s","Secret":"s"}' "$r""#,
        );
        let c = run_program(&p, "test", "r.example", Duration::from_secs(10)).unwrap();
        assert_eq!(
            c,
            Credential::Basic {
                username: "u-r.example".into(),
                password: "s".into()
            }
        );
        let p = script(dir.path(), "echo 'credentials not found'; exit 1");
        let e = run_program(&p, "test", "r.example", Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("credentials not found"), "{e}");
    }

    #[test]
    fn a_hanging_helper_is_killed_at_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let p = script(dir.path(), "exec sleep 60");
        let t = Instant::now();
        let e = run_program(&p, "test", "r.example", Duration::from_millis(300)).unwrap_err();
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert!(e.to_string().contains("no answer within"), "{e}");
    }
}
