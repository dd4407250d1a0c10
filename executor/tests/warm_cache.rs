//! `--cache-dir`: builds start from base images the warmer put in a shared
//! directory, without pulling.

mod common;
use common::*;
use kiln_common::auth::DockerConfig;
use kiln_common::image::Platform;
use kiln_common::registry::{Registry as Client, RegistryOptions};
use kiln_testkit::*;
use std::sync::Arc;

async fn warm(reg: &Registry, dir: &std::path::Path, images: &[String]) {
    let client = Arc::new(Client::new(
        RegistryOptions {
            insecure_hosts: vec![reg.addr.clone()],
            ..Default::default()
        },
        DockerConfig::default(),
    ));
    let opts = kiln_warmer::WarmOptions {
        cache_dir: dir.to_path_buf(),
        images: images.to_vec(),
        platforms: vec![Platform::host()],
        ttl: std::time::Duration::from_secs(3600),
        force: false,
        jobs: 2,
        layer_jobs: 4,
    };
    let r = kiln_warmer::warm(client, &opts).await.unwrap();
    assert!(r.iter().all(|i| i.status == "fetched"), "{r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_from_the_warmed_directory_without_the_registry() {
    let mut reg = Registry::start();
    let tagged = push_busybox(&reg, "busybox:latest");
    let raw = run(std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{tagged}")));
    use sha2::Digest as _;
    let pinned = format!(
        "{}/busybox@sha256:{}",
        reg.addr,
        hex::encode(sha2::Sha256::digest(raw.as_bytes()))
    );
    let cache = tempfile::tempdir().unwrap();
    warm(&reg, cache.path(), &[pinned.clone(), tagged.clone()]).await;

    let build_with = |from: &str| {
        let ctx = tempfile::tempdir().unwrap();
        write(
            ctx.path(),
            "Dockerfile",
            &format!("FROM {from}\nRUN echo warm > /w\n"),
        );
        let (log, img) = build_unpacked(
            ctx.path(),
            &[
                "--no-push",
                "--insecure-pull",
                "--cache-dir",
                cache.path().to_str().unwrap(),
            ],
        );
        assert_eq!(
            std::fs::read_to_string(img.rootfs().join("w")).unwrap(),
            "warm\n"
        );
        log
    };

    // Registry up: a digest-pinned FROM makes no request at all; a tag one HEAD.
    let before = reg.log().len();
    build_with(&pinned);
    let log = reg.log()[before..].to_string();
    assert!(
        !log.contains("\"GET /v2/") && !log.contains("\"HEAD /v2/"),
        "pinned base touched the registry:\n{log}"
    );
    let before = reg.log().len();
    build_with(&tagged);
    let log = reg.log()[before..].to_string();
    assert_eq!(
        log.matches("\"HEAD /v2/busybox/manifests/latest").count(),
        1,
        "{log}"
    );
    assert!(!log.contains("\"GET /v2/busybox/blobs"), "{log}");

    // Registry gone: both still build from the directory.
    reg.stop();
    build_with(&pinned);
    let log = build_with(&tagged);
    assert!(log.contains("using the warmed copy"), "{log}");
}
