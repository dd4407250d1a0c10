//! Settings reach the server from flags, environment variables and a config
//! file, in that order of precedence; mistakes are reported, not ignored.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

#[test]
fn config_file_environment_and_flags() {
    let t = tempfile::tempdir().unwrap();
    let cfg = t.path().join("kiln.json");
    // The file caps manifests at 1 KiB; the environment raises it to 2 KiB.
    std::fs::write(&cfg, r#"{"max-manifest-size": "1KiB", "ttl": "1h"}"#).unwrap();
    let cfg_s = cfg.display().to_string();
    let s = CacheServer::start(bin(), None, &["--config", &cfg_s], &[]);
    let s_env = CacheServer::start(
        bin(),
        None,
        &["--config", &cfg_s],
        &[("KILN_MAX_MANIFEST_SIZE", "2KiB".into())],
    );
    let body = format!("{{\"schemaVersion\":2,\"pad\":\"{}\"}}", "x".repeat(1500));
    rt().block_on(async {
        let r = put_manifest(&s.url(), "x", "t", body.as_bytes()).await;
        assert_eq!(r.status().as_u16(), 413, "limit from the file");
        let r = put_manifest(&s_env.url(), "x", "t", body.as_bytes()).await;
        assert_ne!(
            r.status().as_u16(),
            413,
            "the environment overrides the file"
        );
    });
    // Unknown keys and bad values are errors that name them.
    std::fs::write(&cfg, r#"{"max-manifest-sise": "1KiB"}"#).unwrap();
    let out = Command::new(bin())
        .args(["serve", "--config", &cfg_s])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("max-manifest-sise"));
    let out = Command::new(bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--ttl", "soon"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ttl"));
}

#[test]
fn online_gc_runs_on_its_interval() {
    let s = CacheServer::start(
        bin(),
        None,
        &["--ttl", "1s", "--gc-interval", "1s", "--gc-grace", "0s"],
        &[],
    );
    let rt = rt();
    let (_, layer) = rt.block_on(push_entry(&s.url(), "c/app", "old", 1, 10 << 10));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.metric("kiln_cache_gc_deleted_total", &["kind=\"blob\""]) < 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no GC deleted the expired entry:\n{}",
            s.metrics()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(s.metric("kiln_cache_gc_runs_total", &[]) >= 1.0);
    assert_eq!(
        rt.block_on(get(&format!("{}/v2/c/app/blobs/{}", s.url(), sha(&layer))))
            .0,
        404
    );
    assert!(!s.dir.path().join("store/repos/c/app/_tags/old").exists());
}

#[test]
fn stored_figures_are_known_at_startup() {
    let mut s = CacheServer::start(bin(), None, &["--gc-interval", "0"], &[]);
    let rt = rt();
    rt.block_on(push_entry(&s.url(), "c/app", "k", 1, 10 << 10));
    s.restart();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.metric("kiln_cache_stored_blobs", &[]) < 2.0 {
        assert!(std::time::Instant::now() < deadline, "{}", s.metrics());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert_eq!(s.metric("kiln_cache_stored_entries", &[]), 1.0);
    assert!(s.metric("kiln_cache_stored_bytes", &[]) > (10 << 10) as f64);
    assert_eq!(
        s.metric("kiln_cache_gc_runs_total", &[]),
        0.0,
        "a census deletes nothing and is not a GC run"
    );
}

/// A tag whose blobs were deleted from outside (a bucket lifecycle rule)
/// is a miss that is counted as damage, not taken for expiry.
#[test]
fn damaged_entries_are_misses_and_counted() {
    let mut s = Backend::file().start(&[]);
    push_image_layout(&format!("{}/damaged/app:k", s.addr), &[], &[]);
    let blobs = s.dir.path().join("store/blobs/sha256");
    let mut removed = 0;
    for e in std::fs::read_dir(&blobs).unwrap().flatten() {
        std::fs::remove_file(e.path()).unwrap();
        removed += 1;
    }
    assert!(removed >= 2, "{removed}");
    // A fresh process: nothing remembered of the blobs.
    s.restart();
    let out = std::process::Command::new("curl")
        .args([
            "-s",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"repository":"damaged/app","keys":["k"]}"#,
            &format!("{}/v2/_kiln/lookup", s.url()),
        ])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["entries"].as_object().unwrap().is_empty(), "{v}");
    let m = s.metrics();
    assert_eq!(
        metric_sum(
            &m,
            "kiln_cache_damaged_entries_total",
            &["repo=\"damaged/app\""]
        ),
        1.0,
        "{m}"
    );
}
