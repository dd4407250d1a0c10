//! `--warm-mirror`: the warmer warms a Kiln cache server in mirror mode by
//! pulling through it, keeping nothing locally; the fleet's pulls after it
//! cost the upstream nothing.

use kiln_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;

fn cache_server_bin() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_warmer")).with_file_name("cache-server");
    assert!(
        p.exists(),
        "{} missing: build the workspace first",
        p.display()
    );
    p
}

#[test]
fn the_warmer_warms_the_mirror_without_copies() {
    let hub = Registry::start();
    push_hub_images(&hub);
    let proxy = HttpProxy::start(&hub.addr);
    let server = CacheServer::start(
        &cache_server_bin(),
        None,
        &["--mirror", &format!("docker.io=http://{}", proxy.addr)],
        &[],
    );
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let report = work.path().join("report.json");
    let out = Command::new(env!("CARGO_BIN_EXE_warmer"))
        .env_remove("DOCKER_CONFIG")
        .args(["--warm-mirror", &server.addr, "--insecure-pull"])
        .args([
            "--image",
            "busybox:stable",
            "--image",
            "docker.io/library/tools:1",
        ])
        .arg("--cache-dir")
        .arg(&cache)
        .arg("--report")
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    for img in r["images"].as_array().unwrap() {
        assert_eq!(img["status"], "warmed", "{img}");
        assert!(img["bytes_fetched"].as_u64().unwrap() > 0, "{img}");
    }
    assert!(!cache.exists(), "nothing is kept locally");
    // The mirror fetched each image once, blobs included.
    assert_eq!(
        proxy.count("GET", "/manifests/stable"),
        1,
        "{:#?}",
        proxy.requests()
    );
    assert_eq!(
        proxy.count("GET", "/manifests/1"),
        1,
        "{:#?}",
        proxy.requests()
    );
    let upstream = proxy.requests().len();

    // A pull of each through the mirror now costs the upstream nothing.
    for name in ["library/busybox:stable", "library/tools:1"] {
        let d = tempfile::tempdir().unwrap();
        run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{}/docker.io/{name}", server.addr),
            &format!("oci:{}:x", d.path().display()),
        ]));
    }
    assert_eq!(proxy.requests().len(), upstream, "{:#?}", proxy.requests());

    // An image the upstream lacks: reported failed, naming it.
    let out = Command::new(env!("CARGO_BIN_EXE_warmer"))
        .env_remove("DOCKER_CONFIG")
        .args(["--warm-mirror", &server.addr, "--insecure-pull"])
        .args(["--image", "busybox:missing"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("busybox:missing"), "{err}");
}
