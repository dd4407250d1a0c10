//! SLSA v1 provenance in an in-toto v1 statement, made from what the build
//! knew (pure: the build hands in [`Inputs`]). Beyond what BuildKit
//! records, each cached step is a byproduct naming its cache key, the
//! layer it reused or wrote and, for a hit, the identity the cache server
//! recorded as the entry's writer: which cached layers, written by whom,
//! went into this image.
//!
//! Secrets never appear: `--secret` and `--ssh` are named by id only, and
//! build args whose names say they hold credentials (Docker's
//! `SecretsUsedInArgOrEnv` rule) are left out with their values.

use crate::outcome::StepReport;
use kiln_common::image::Platform;
use kiln_common::Digest;

pub const STATEMENT_TYPE: &str = "https://in-toto.io/Statement/v1";
pub const PREDICATE_TYPE: &str = "https://slsa.dev/provenance/v1";
/// What a Kiln Dockerfile build's parameters mean (a URN: the type is
/// Kiln's, and no web page is promised).
pub const BUILD_TYPE: &str = "urn:kiln:buildtype:dockerfile:v1";

/// What the build knew, handed in by the engine.
pub struct Inputs<'a> {
    /// The image's name (first destination without tag), or `image`.
    pub name: &'a str,
    pub manifest: &'a Digest,
    pub dockerfile_path: &'a str,
    pub dockerfile: &'a Digest,
    pub context: Option<&'a Digest>,
    /// As given: a value, or `None` for one taken from the environment.
    pub build_args: &'a [(String, Option<String>)],
    pub secrets: Vec<String>,
    pub ssh: Vec<String>,
    pub target: Option<&'a str>,
    pub platform: &'a Platform,
    pub source_date_epoch: Option<u64>,
    /// Base and `COPY --from` images: name as written, manifest digest.
    pub images: Vec<(String, Digest)>,
    pub steps: &'a [StepReport],
    /// The repository cache entries were looked up in and written to.
    pub cache_repo: Option<&'a str>,
    pub isolation: &'a str,
    pub builder_id: String,
    pub invocation_id: String,
    pub started: chrono::DateTime<chrono::Utc>,
    pub finished: chrono::DateTime<chrono::Utc>,
}

/// Whether an ARG's name says it holds a credential: one of its
/// `_`-separated words is one Docker's `SecretsUsedInArgOrEnv` check
/// looks for (`NPM_TOKEN`, `DB_PASSWORD`; not `AUTHOR` or `MONKEY`).
pub fn secret_name(name: &str) -> bool {
    const WORDS: &[&str] = &[
        "apikey",
        "auth",
        "credential",
        "credentials",
        "key",
        "password",
        "pword",
        "passwd",
        "secret",
        "token",
    ];
    name.to_ascii_lowercase()
        .split('_')
        .any(|w| WORDS.contains(&w))
}

fn sha256(d: &Digest) -> serde_json::Value {
    serde_json::json!({ "sha256": d.hex() })
}

fn time(t: &chrono::DateTime<chrono::Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// The in-toto statement.
pub fn statement(i: &Inputs) -> serde_json::Value {
    let args: serde_json::Map<String, serde_json::Value> = i
        .build_args
        .iter()
        .filter(|(k, _)| !secret_name(k))
        .map(|(k, v)| {
            (
                k.clone(),
                v.clone().map_or(serde_json::Value::Null, Into::into),
            )
        })
        .collect();
    let mut external = serde_json::json!({
        "dockerfile": {"path": i.dockerfile_path, "digest": sha256(i.dockerfile)},
        "buildArgs": args,
        "platforms": [i.platform.to_string()],
    });
    if let Some(c) = i.context {
        external["context"] = serde_json::json!({ "digest": sha256(c) });
    }
    if let Some(t) = i.target {
        external["target"] = t.into();
    }
    if !i.secrets.is_empty() {
        external["secrets"] = i.secrets.clone().into();
    }
    if !i.ssh.is_empty() {
        external["ssh"] = i.ssh.clone().into();
    }
    if let Some(e) = i.source_date_epoch {
        external["sourceDateEpoch"] = e.to_string().into();
    }
    let deps: Vec<serde_json::Value> = i
        .images
        .iter()
        .map(|(name, d)| {
            serde_json::json!({
                "uri": format!("pkg:docker/{}?platform={}", name, i.platform.to_string().replace('/', "%2F")),
                "name": name,
                "digest": sha256(d),
            })
        })
        .collect();
    let mut internal = serde_json::json!({ "isolation": i.isolation });
    if let Some(r) = i.cache_repo {
        internal["cacheRepo"] = r.into();
    }
    serde_json::json!({
        "_type": STATEMENT_TYPE,
        "subject": [{"name": i.name, "digest": sha256(i.manifest)}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": external,
                "internalParameters": internal,
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {
                    "id": i.builder_id,
                    "version": {"kiln-executor": env!("CARGO_PKG_VERSION")},
                },
                "metadata": {
                    "invocationId": i.invocation_id,
                    "startedOn": time(&i.started),
                    "finishedOn": time(&i.finished),
                },
                "byproducts": byproducts(i),
            },
        },
    })
}

/// One resource per cached step: its outcome, key, layer and writer.
fn byproducts(i: &Inputs) -> Vec<serde_json::Value> {
    i.steps
        .iter()
        .filter_map(|s| {
            let key = s.key.as_ref()?;
            let mut a = serde_json::json!({
                "stage": s.stage,
                "line": s.line,
                "instruction": s.instruction,
                "cache": s.cache.as_deref().unwrap_or("uncached"),
                "key": key.to_string(),
            });
            if let Some(f) = s.cache_from.as_deref().or(i.cache_repo) {
                a["repository"] = f.into();
            }
            if let Some(w) = &s.writer {
                a["writer"] = serde_json::to_value(w).unwrap_or_default();
            }
            // The layer when the step made one; else the key stands for it.
            let digest = s.layer_digest.as_ref().unwrap_or(key);
            let mut r = serde_json::json!({
                "name": format!("cache/{}/line-{}", s.stage, s.line),
                "digest": sha256(digest),
                "annotations": a,
            });
            if s.layer_digest.is_some() {
                r["mediaType"] = "layer".into();
            }
            Some(r)
        })
        .collect()
}

/// Who built it: `builder-id=` of `--attest`, else the CI job's URL
/// where the CI says it (GitHub Actions, GitLab, Jenkins), else Kiln's
/// executor as a URN. `env` reads the environment (injectable for tests).
pub fn builder_id(given: Option<&str>, env: impl Fn(&str) -> Option<String>) -> String {
    if let Some(g) = given {
        return g.to_string();
    }
    if let (Some(server), Some(repo), Some(run)) = (
        env("GITHUB_SERVER_URL"),
        env("GITHUB_REPOSITORY"),
        env("GITHUB_RUN_ID"),
    ) {
        return format!("{server}/{repo}/actions/runs/{run}");
    }
    env("CI_JOB_URL")
        .or_else(|| env("BUILD_URL"))
        .unwrap_or_else(|| "urn:kiln:executor".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs<'a>(
        steps: &'a [StepReport],
        args: &'a [(String, Option<String>)],
        d: &'a Digest,
    ) -> Inputs<'a> {
        Inputs {
            name: "reg/app",
            manifest: d,
            dockerfile_path: "Dockerfile",
            dockerfile: d,
            context: Some(d),
            build_args: args,
            secrets: vec!["npmrc".into()],
            ssh: Vec::new(),
            target: None,
            platform: Box::leak(Box::new(Platform {
                os: "linux".into(),
                architecture: "amd64".into(),
                variant: None,
            })),
            source_date_epoch: Some(0),
            images: vec![("debian:bookworm".into(), d.clone())],
            steps,
            cache_repo: Some("reg/cache"),
            isolation: "namespaces",
            builder_id: "urn:kiln:executor".into(),
            invocation_id: "1".into(),
            started: chrono::DateTime::UNIX_EPOCH,
            finished: chrono::DateTime::UNIX_EPOCH,
        }
    }

    #[test]
    fn credentials_in_build_args_are_left_out() {
        let d = Digest::sha256_of(b"x");
        let args = vec![
            ("VERSION".to_string(), Some("1.2".to_string())),
            ("NPM_TOKEN".to_string(), Some("s3cr3t".to_string())),
            ("DB_PASSWORD".to_string(), Some("hunter2".to_string())),
        ];
        let s = statement(&inputs(&[], &args, &d)).to_string();
        assert!(s.contains("VERSION"));
        assert!(!s.contains("s3cr3t") && !s.contains("NPM_TOKEN"));
        assert!(!s.contains("hunter2"));
        assert!(s.contains("npmrc"), "secrets are named by id");
        assert!(secret_name("API_KEY") && secret_name("github_token") && secret_name("Auth"));
        assert!(!secret_name("AUTHOR") && !secret_name("MONKEY") && !secret_name("VERSION"));
    }

    #[test]
    fn cached_steps_become_byproducts_with_their_writer() {
        let d = Digest::sha256_of(b"x");
        let key = Digest::sha256_of(b"key");
        let mut hit = StepReport::new("build", 3, "RUN make".into(), 1.0);
        hit.cache = Some("hit".into());
        hit.key = Some(key.clone());
        hit.layer_digest = Some(d.clone());
        hit.writer = Some(kiln_common::cache_api::Writer {
            digest: d.clone(),
            issuer: Some("https://token.actions.githubusercontent.com".into()),
            subject: "repo:org/app:ref:refs/heads/main".into(),
            claims: Default::default(),
            time: "2026-01-01T00:00:00Z".into(),
        });
        let plain = StepReport::new("build", 2, "ENV A=1".into(), 0.0);
        let steps = [plain, hit];
        let v = statement(&inputs(&steps, &[], &d));
        let b = &v["predicate"]["runDetails"]["byproducts"];
        assert_eq!(b.as_array().unwrap().len(), 1);
        assert_eq!(b[0]["digest"]["sha256"], d.hex());
        assert_eq!(b[0]["annotations"]["key"], key.to_string());
        assert_eq!(b[0]["annotations"]["cache"], "hit");
        assert_eq!(
            b[0]["annotations"]["writer"]["subject"],
            "repo:org/app:ref:refs/heads/main"
        );
        assert_eq!(v["predicateType"], PREDICATE_TYPE);
        assert_eq!(
            v["predicate"]["buildDefinition"]["resolvedDependencies"][0]["uri"],
            "pkg:docker/debian:bookworm?platform=linux%2Famd64"
        );
    }

    #[test]
    fn builder_ids_from_the_ci() {
        let none = |_: &str| None;
        assert_eq!(builder_id(None, none), "urn:kiln:executor");
        assert_eq!(builder_id(Some("https://ci/x"), none), "https://ci/x");
        let gh = |k: &str| {
            Some(match k {
                "GITHUB_SERVER_URL" => "https://github.com".to_string(),
                "GITHUB_REPOSITORY" => "org/app".into(),
                "GITHUB_RUN_ID" => "42".into(),
                _ => return None,
            })
        };
        assert_eq!(
            builder_id(None, gh),
            "https://github.com/org/app/actions/runs/42"
        );
    }
}
