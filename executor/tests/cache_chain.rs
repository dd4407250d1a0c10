//! The cache chain (`--cache-repo` written, `--cache-from` only read),
//! against docker-registry and against Kiln's cache server (one batch
//! lookup for the chain): a branch build reads the main scope and hits
//! every step, moves no layer bytes, records the hits into its own scope
//! (the next branch build hits there without `--cache-from`), and never
//! writes the main scope; cache mounts restore along the chain; a failed
//! build saves no cache mount.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

const DOCKERFILE: &str = "FROM {BASE}
RUN echo one > /one
COPY a.txt /a.txt
ARG V=1
RUN cat /a.txt > /copy && echo two-$V > /two
";

fn context(base: &str) -> tempfile::TempDir {
    let ctx = context_with(&DOCKERFILE.replace("{BASE}", base));
    write(ctx.path(), "a.txt", "a\n");
    ctx
}

/// `(cache, cache_from)` of each step that has a cache outcome.
fn outcomes(report: &serde_json::Value) -> Vec<(String, Option<String>)> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| {
            Some((
                s["cache"].as_str()?.to_string(),
                s["cache_from"].as_str().map(str::to_string),
            ))
        })
        .collect()
}

/// The tags of `repo` on `host` (empty when the repository does not exist).
fn tags(host: &str, repo: &str) -> Vec<String> {
    let o = Command::new("curl")
        .args(["-s", &format!("http://{host}/v2/{repo}/tags/list")])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
    v["tags"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| Some(t.as_str()?.to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// Main builds, then two branch builds; returns the first branch build's
/// report.
fn main_then_branch(host: &str, base: &str) -> serde_json::Value {
    let ctx = context(base);
    let main = format!("{host}/app/main");
    let branch = format!("{host}/app/branch-x");
    let (first, _) = cached_build_report(ctx.path(), &main, &[]);
    assert_eq!(first["cache_misses"], 3, "{first}");
    let main_tags = tags(host, "app/main");

    // The branch: its own scope is empty, main's has every step.
    let (b1, log) = cached_build_report(ctx.path(), &branch, &["--cache-from", &main]);
    assert_eq!(b1["cache_hits"], 3, "{b1}\n{log}");
    assert_eq!(b1["cache_misses"], 0, "{b1}");
    assert_eq!(b1["bytes_pushed_cache"], 0, "layer bytes uploaded: {b1}");
    assert_eq!(b1["bytes_pulled"], 0, "layer bytes fetched: {b1}");
    for (cache, from) in outcomes(&b1) {
        assert_eq!(cache, "hit");
        assert_eq!(from.as_deref(), Some(main.as_str()), "{b1}");
    }
    assert!(log.contains(&format!("(3 from {main})")), "{log}");
    // Nothing was written into main's scope.
    assert_eq!(tags(host, "app/main"), main_tags);

    // The hits were recorded into the branch's scope: without
    // `--cache-from` the next branch build hits there.
    let (b2, log) = cached_build_report(ctx.path(), &branch, &[]);
    assert_eq!(b2["cache_hits"], 3, "{b2}\n{log}");
    for (cache, from) in outcomes(&b2) {
        assert_eq!((cache.as_str(), from), ("hit", None), "{b2}");
    }

    // A change on the branch misses there and is written only there.
    let (b3, _) = cached_build_report(
        ctx.path(),
        &branch,
        &["--cache-from", &main, "--build-arg", "V=2"],
    );
    assert_eq!(b3["cache_misses"], 1, "{b3}");
    assert_eq!(tags(host, "app/main"), main_tags);
    b1
}

#[test]
fn a_branch_reads_main_and_writes_only_its_own_scope_on_docker_registry() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    main_then_branch(&reg.addr, &base);
}

#[test]
fn the_cache_server_answers_the_chain_in_one_lookup_and_counts_fallback_hits() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let server = CacheServer::start(&cache_server_bin(), None, &[], &[]);
    let lookups = |s: &CacheServer| {
        metric_sum(
            &s.metrics(),
            "kiln_cache_request_duration_seconds_count",
            &["route=\"kiln_lookup\""],
        )
    };
    let manifest_gets = |s: &CacheServer| {
        metric_sum(
            &s.metrics(),
            "kiln_cache_request_duration_seconds_count",
            &["route=\"manifest\"", "method=\"GET\""],
        )
    };
    let ctx = context(&base);
    let main = format!("{}/app/main", server.addr);
    let branch = format!("{}/app/branch-y", server.addr);
    cached_build_report(ctx.path(), &main, &[]);
    let (l0, m0) = (lookups(&server), manifest_gets(&server));
    let (b, log) = cached_build_report(ctx.path(), &branch, &["--cache-from", &main]);
    assert_eq!(b["cache_hits"], 3, "{b}\n{log}");
    // One batch request for the stage's keys along the whole chain, and
    // no lookup by manifest GET.
    assert_eq!(lookups(&server) - l0, 1.0);
    assert_eq!(manifest_gets(&server), m0);
    let m = server.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "kiln_cache_fallback_hits_total",
            &["repo=\"app/branch-y\"", "source=\"app/main\""]
        ),
        3.0,
        "{m}"
    );
    let (b2, _) = cached_build_report(ctx.path(), &branch, &["--cache-from", &main]);
    for (cache, from) in outcomes(&b2) {
        assert_eq!((cache.as_str(), from), ("hit", None), "{b2}");
    }
}

const MOUNT: &str = "FROM {BASE}
ARG V=1
RUN --mount=type=cache,target=/c sh -c 'test -f /c/seen || echo first-$V > /c/seen; cat /c/seen > /seen; echo $V > /v'
";

fn mount_report(report: &serde_json::Value) -> serde_json::Value {
    report["cache_mounts"][0].clone()
}

#[test]
fn cache_mounts_restore_along_the_chain_and_a_failed_build_saves_none() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let main = format!("{}/app/main", reg.addr);
    let branch = format!("{}/app/branch-z", reg.addr);
    let ctx = context_with(&MOUNT.replace("{BASE}", &base));
    let (r, log) = cached_build_report(ctx.path(), &main, &[]);
    assert!(
        mount_report(&r)["saved_files"].as_u64() >= Some(1),
        "{r}\n{log}"
    );

    // The branch's step misses (another V); its mount comes from main's save.
    let (b, log) = cached_build_report(
        ctx.path(),
        &branch,
        &["--cache-from", &main, "--build-arg", "V=2"],
    );
    assert_eq!(b["cache_misses"], 1, "{b}");
    assert_eq!(
        mount_report(&b)["restored_from"],
        main.as_str(),
        "{b}\n{log}"
    );
    assert!(log.contains("restored 1 files"), "{log}");

    // A failed build's mount is not saved, though the step wrote into it.
    let failing = context_with(&format!(
        "FROM {base}\nRUN --mount=type=cache,target=/c sh -c 'echo poisoned > /c/f; exit 3'\n"
    ));
    let fresh = format!("{}/app/failed", reg.addr);
    let work = tempfile::tempdir().unwrap();
    let out = build(
        failing.path(),
        work.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--insecure-registry",
            &reg.addr,
            "--cache",
            "--cache-repo",
            &fresh,
        ],
    );
    assert!(!out.status.success());
    let saved: Vec<String> = tags(&reg.addr, "app/failed")
        .into_iter()
        .filter(|t| t.starts_with("mount-"))
        .collect();
    assert!(saved.is_empty(), "{saved:?}");
    // And a successful build into the same scope does save it (the
    // assertion above could not pass for a save that never happens).
    let ok = context_with(&format!(
        "FROM {base}\nRUN --mount=type=cache,target=/c sh -c 'echo fine > /c/f'\n"
    ));
    cached_build_report(ok.path(), &fresh, &[]);
    assert!(
        tags(&reg.addr, "app/failed")
            .iter()
            .any(|t| t.starts_with("mount-")),
        "{:?}",
        tags(&reg.addr, "app/failed")
    );
}

/// The policy of `cache-server/tests/identity.rs`, for GitLab-shaped tokens.
fn identity_auth(dir: &std::path::Path, iss: &str) -> std::path::PathBuf {
    let p = dir.join("auth.json");
    let f = serde_json::json!({
        "issuers": [{"issuer": iss, "audience": "kiln-cache"}],
        "rules": [
            {"issuer": iss, "claims": {"ref_protected": "true"},
             "grants": [{"prefix": "cache/{project_path}/main/", "access": "write"}]},
            {"issuer": iss, "claims": {"project_path": "*"},
             "grants": [{"prefix": "cache/{project_path}/branch/{ref_slug}/", "access": "write"},
                        {"prefix": "cache/{project_path}/main/", "access": "read"}]}
        ]
    });
    std::fs::write(&p, f.to_string()).unwrap();
    p
}

fn gitlab_token(
    issuer: &OidcIssuer,
    r#ref: &str,
    protected: bool,
    dir: &std::path::Path,
) -> String {
    let t = issuer.mint(
        "rsa-1",
        serde_json::json!({
            "aud": "kiln-cache",
            "sub": format!("project_path:team/app:ref_type:branch:ref:{ref}"),
            "project_path": "team/app",
            "ref": r#ref,
            "ref_protected": protected.to_string(),
        }),
    );
    let p = dir.join(format!("token-{protected}"));
    std::fs::write(&p, &t).unwrap();
    p.to_str().unwrap().to_string()
}

/// Real builds with CI identity tokens (`--cache-token-file`): main's job
/// writes main's scope; a pull request's job hits main's entries through
/// `--cache-from`, records them into its branch scope, and cannot write
/// main's scope even when it names it as `--cache-repo` (its writes are
/// refused, the build goes on, main's tags stay as they were).
#[test]
fn ci_identities_let_a_pull_request_read_main_and_never_write_it() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let issuer = OidcIssuer::start();
    let t = tempfile::tempdir().unwrap();
    let auth = identity_auth(t.path(), &issuer.url);
    let server = CacheServer::start(
        &cache_server_bin(),
        None,
        &["--auth-file", auth.to_str().unwrap()],
        &[],
    );
    let main_file = gitlab_token(&issuer, "main", true, t.path());
    let pr_file = gitlab_token(&issuer, "refs/heads/feature/x", false, t.path());
    let main = format!("{}/cache/team/app/main/app", server.addr);
    let branch = format!("{}/cache/team/app/branch/feature-x/app", server.addr);
    let ctx = context(&base);
    let main_tags = |s: &CacheServer| {
        let o = Command::new("curl")
            .args(["-s", "-H"])
            .arg(format!(
                "Authorization: Bearer {}",
                std::fs::read_to_string(&main_file).unwrap()
            ))
            .arg(format!("{}/v2/cache/team/app/main/app/tags/list", s.url()))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };

    // Without a token nothing is written (and the build still succeeds).
    let (anon, log) = cached_build_report(ctx.path(), &main, &[]);
    assert_eq!(anon["cache_misses"], 3, "{anon}");
    assert!(log.contains("cache write failed"), "{log}");
    assert!(
        !main_tags(&server).contains("\"tags\":["),
        "{}",
        main_tags(&server)
    );

    let (m, log) = cached_build_report(ctx.path(), &main, &["--cache-token-file", &main_file]);
    assert_eq!(m["cache_misses"], 3, "{m}");
    assert!(!log.contains("cache write failed"), "{log}");
    let written = main_tags(&server);
    assert!(written.contains("\"tags\":["), "{written}");

    // The pull request: every step from main's scope, recorded into its own.
    let (pr, log) = cached_build_report(
        ctx.path(),
        &branch,
        &["--cache-token-file", &pr_file, "--cache-from", &main],
    );
    assert_eq!(pr["cache_hits"], 3, "{pr}\n{log}");
    assert!(!log.contains("cache write failed"), "{log}");
    let (pr2, _) = cached_build_report(ctx.path(), &branch, &["--cache-token-file", &pr_file]);
    assert_eq!(pr2["cache_hits"], 3, "{pr2}");

    // Naming main's scope as its cache repository writes nothing there.
    let (bad, log) = cached_build_report(
        ctx.path(),
        &main,
        &["--cache-token-file", &pr_file, "--build-arg", "V=evil"],
    );
    assert_eq!(bad["cache_misses"], 1, "{bad}");
    assert!(log.contains("cache write failed"), "{log}");
    assert_eq!(main_tags(&server), written);
    // No token reached the executor's log.
    let sig = std::fs::read_to_string(&pr_file).unwrap();
    assert!(!log.contains(sig.rsplit('.').next().unwrap()));
}

/// `--cache-trust`: with a misconfigured policy that lets every token of
/// the project write main's scope, an entry a pull request planted there
/// is a hit for a build that trusts anyone and a miss for one that
/// demands a protected writer (whose own entries still hit).
#[test]
fn cache_trust_turns_entries_of_untrusted_writers_into_misses() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let issuer = OidcIssuer::start();
    let t = tempfile::tempdir().unwrap();
    let auth = t.path().join("auth.json");
    let f = serde_json::json!({
        "issuers": [{"issuer": issuer.url, "audience": "kiln-cache"}],
        "rules": [{"issuer": issuer.url, "claims": {"project_path": "*"},
                   "grants": [{"prefix": "cache/{project_path}/", "access": "write"}]}]
    });
    std::fs::write(&auth, f.to_string()).unwrap();
    let server = CacheServer::start(
        &cache_server_bin(),
        None,
        &["--auth-file", auth.to_str().unwrap()],
        &[],
    );
    let main_file = gitlab_token(&issuer, "main", true, t.path());
    let pr_file = gitlab_token(&issuer, "refs/heads/evil", false, t.path());
    let main = format!("{}/cache/team/app/main", server.addr);
    let ctx = context(&base);
    // Main writes every step with V=1; the pull request plants V=2's last step.
    cached_build_report(ctx.path(), &main, &["--cache-token-file", &main_file]);
    let (planted, _) = cached_build_report(
        ctx.path(),
        &main,
        &["--cache-token-file", &pr_file, "--build-arg", "V=2"],
    );
    assert_eq!(planted["cache_misses"], 1, "{planted}");
    // Trusting anyone, main's next V=2 build takes the planted entry.
    let (trusting, _) = cached_build_report(
        ctx.path(),
        &main,
        &[
            "--cache-token-file",
            &main_file,
            "--build-arg",
            "V=2",
            "--no-push-cache",
        ],
    );
    assert_eq!(trusting["cache_hits"], 3, "{trusting}");
    // Demanding a protected writer: main's own entries hit, the planted one
    // is a miss and the step runs again.
    let (careful, log) = cached_build_report(
        ctx.path(),
        &main,
        &[
            "--cache-token-file",
            &main_file,
            "--build-arg",
            "V=2",
            "--cache-trust",
            "ref_protected=true",
            "--cache-trust",
            &format!("issuer={}", issuer.url),
        ],
    );
    assert_eq!(careful["cache_hits"], 2, "{careful}\n{log}");
    assert_eq!(careful["cache_misses"], 1, "{careful}");
    assert!(log.contains("does not satisfy --cache-trust"), "{log}");
    assert!(log.contains("refs/heads/evil"), "{log}");
    // Its re-execution replaced the entry: now written by main.
    let (after, _) = cached_build_report(
        ctx.path(),
        &main,
        &[
            "--cache-token-file",
            &main_file,
            "--build-arg",
            "V=2",
            "--cache-trust",
            "ref_protected=true",
        ],
    );
    assert_eq!(after["cache_hits"], 3, "{after}");
}
