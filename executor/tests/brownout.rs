//! A cache that hangs must never stall a build (issue 14): S3 frozen under
//! the cache server, and a registry used as cache repo frozen, each
//! mid-build (SIGSTOP: connections accepted, nothing answered). The build
//! finishes within its deadlines as misses, the server's health and metrics
//! say what happened, and once the store is back the cache works again.
//! Durations asserted here are failure-detection bounds, not speed claims.

mod common;
use common::*;
use kiln_testkit::*;
use std::time::{Duration, Instant};

fn server_bin() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_BIN_EXE_executor"))
        .parent()
        .unwrap()
        .join("cache-server")
}

/// A build of `ctx` with the cache at `repo` and short deadlines.
fn cached(
    ctx: &std::path::Path,
    repo: &str,
) -> (std::process::Output, Duration, serde_json::Value) {
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report.json");
    let host = repo.split('/').next().unwrap();
    let t = Instant::now();
    let out = build(
        ctx,
        work.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--insecure-registry",
            host,
            "--cache",
            "--cache-repo",
            repo,
            "--cache-lookup-timeout=3s",
            "--cache-push-timeout=5s",
            "--report",
            report.to_str().unwrap(),
        ],
    );
    let r = std::fs::read(&report)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(serde_json::Value::Null);
    (out, t.elapsed(), r)
}

fn app(base: &str, marker: &str) -> tempfile::TempDir {
    let ctx = context_with(&format!(
        "FROM {base}\nRUN echo {marker} > /one\nCOPY f /f\nRUN cat /f /one > /two\n"
    ));
    write(ctx.path(), "f", marker);
    ctx
}

#[test]
fn frozen_s3_under_the_cache_server_degrades_to_misses() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let s3 = S3Server::start();
    s3.create_bucket("kiln");
    let server = CacheServer::start(
        &server_bin(),
        Some("s3://kiln/cache"),
        &["--backend-timeout", "2s", "--breaker-cool-off", "4s"],
        &s3.env(),
    );
    let repo = format!("{}/cache/app", server.addr);

    let (out, _, _) = cached(app(&base, "warm").path(), &repo);
    assert_ok(&out);

    s3.freeze();
    let (out, took, report) = cached(app(&base, "frozen").path(), &repo);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(took < Duration::from_secs(40), "took {took:?}:\n{err}");
    assert_eq!(report["cache_hits"], 0, "{report}");
    assert!(report["cache_errors"].as_u64().unwrap() > 0, "{report}");
    let (status, body) = {
        let o = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/stderr", "-w", "%{http_code}"])
            .arg(format!("{}/readyz", server.url()))
            .output()
            .unwrap();
        (
            String::from_utf8_lossy(&o.stdout).to_string(),
            String::from_utf8_lossy(&o.stderr).to_string(),
        )
    };
    assert_eq!(status, "503", "{body}");
    assert!(server.metric("kiln_cache_backend_timeouts_total", &[]) >= 1.0);

    s3.thaw();
    std::thread::sleep(Duration::from_secs(5));
    let ctx = app(&base, "back");
    let (out, _, _) = cached(ctx.path(), &repo);
    assert_ok(&out);
    let (out, _, report) = cached(ctx.path(), &repo);
    assert!(out.status.success());
    assert_eq!(report["cache_hits"], 3, "{report}");
}

#[test]
fn a_frozen_registry_as_cache_repo_degrades_to_misses() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let cache = Registry::start();
    let repo = format!("{}/cache/app", cache.addr);
    let (out, _, _) = cached(app(&base, "warm").path(), &repo);
    assert_ok(&out);

    cache.freeze();
    let (out, took, report) = cached(app(&base, "frozen").path(), &repo);
    let err = String::from_utf8_lossy(&out.stderr);
    cache.thaw();
    assert!(out.status.success(), "{err}");
    assert!(took < Duration::from_secs(40), "took {took:?}:\n{err}");
    assert_eq!(report["cache_hits"], 0, "{report}");
    assert!(
        err.contains("did not answer") || err.contains("not saved"),
        "{err}"
    );
}

/// A failing RUN at step 4 still leaves entries for steps 1–3: the retry
/// starts at step 4 (BuildKit users have asked for this since 2021).
#[test]
fn a_failed_build_keeps_the_entries_of_its_completed_steps() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let cache = Registry::start();
    let repo = format!("{}/cache/app", cache.addr);
    let df = |last: &str| {
        format!("FROM {base}\nRUN echo a > /a\nRUN echo b > /b\nRUN echo c > /c\nRUN {last}\n")
    };
    let ctx = context_with(&df("exit 3"));
    let (out, _, _) = cached(ctx.path(), &repo);
    assert_eq!(out.status.code(), Some(3));
    write(ctx.path(), "Dockerfile", &df("echo d > /d"));
    let (out, _, report) = cached(ctx.path(), &repo);
    assert_ok(&out);
    assert_eq!(report["cache_hits"], 3, "{report}");
    assert_eq!(report["cache_misses"], 1, "{report}");
}
