//! Registry clients no one here wrote, unchanged, against the server:
//! buildah pull/push, and buildah's own layer cache (`--layers
//! --cache-to/--cache-from`) with the server as its cache repository.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

#[test]
fn buildah_pulls_pushes_and_caches_layers_through_the_server() {
    let s = Backend::file().start(&[]);
    push_image_layout(&format!("{}/base/busybox:1", s.addr), &[], &[]);

    let b = Buildah::new();
    run(b
        .cmd()
        .args(["pull", "--quiet", "--tls-verify=false"])
        .arg(format!("docker://{}/base/busybox:1", s.addr)));
    run(b
        .cmd()
        .args(["push", "--quiet", "--tls-verify=false"])
        .arg(format!("{}/base/busybox:1", s.addr))
        .arg(format!("docker://{}/copied/busybox:2", s.addr)));
    let layers = |r: &str| -> serde_json::Value {
        let out = run(Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{}/{r}", s.addr)));
        serde_json::from_str::<serde_json::Value>(&out).unwrap()["Layers"].clone()
    };
    assert_eq!(layers("base/busybox:1"), layers("copied/busybox:2"));

    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!(
            "FROM {}/base/busybox:1\nRUN echo one > /one\nRUN echo two > /two\n",
            s.addr
        ),
    )
    .unwrap();
    let cache = format!("{}/buildah/cache", s.addr);
    let bud = |b: &Buildah| {
        let mut c = b.cmd();
        c.args([
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--layers",
            "--network",
            "host",
        ])
        .args([
            "--cache-to",
            &cache,
            "--cache-from",
            &cache,
            "-t",
            "localhost/cached:1",
        ])
        .arg(ctx.path());
        run(&mut c)
    };
    let first = bud(&Buildah::new());
    assert!(!first.contains("Using cache"), "{first}");
    let tags = run(Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{cache}")));
    let n: serde_json::Value = serde_json::from_str(&tags).unwrap();
    assert!(
        n["Tags"].as_array().unwrap().len() >= 2,
        "buildah stored its cache: {tags}"
    );
    // A fresh buildah storage: only the server can supply the cache.
    let second = bud(&Buildah::new());
    assert_eq!(second.matches("Using cache").count(), 2, "{second}");
    let m = s.metrics();
    assert!(
        metric_sum(
            &m,
            "kiln_cache_lookups_total",
            &["repo=\"buildah/cache\"", "result=\"hit\""]
        ) >= 2.0,
        "{m}"
    );
}
