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

/// `tagged` pinned by its manifest's digest, and that manifest.
fn pinned(tagged: &str) -> (String, String) {
    let raw = run(std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{tagged}")));
    use sha2::Digest as _;
    let repo = tagged.rsplit_once(':').map_or(tagged, |(r, _)| r);
    let digest = hex::encode(sha2::Sha256::digest(raw.as_bytes()));
    (format!("{repo}@sha256:{digest}"), raw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_from_the_warmed_directory_without_the_registry() {
    let mut reg = Registry::start();
    let tagged = push_busybox(&reg, "busybox:latest");
    let (pinned, _) = pinned(&tagged);
    let cache = tempfile::tempdir().unwrap();
    warm(&reg, cache.path(), &[pinned.clone(), tagged.clone()]).await;

    let build_with = |from: &str| {
        let ctx = context_with(&format!("FROM {from}\nRUN echo warm > /w\n"));
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

/// The warmed directory is shared and untrusted: a layer whose bytes no
/// longer match its digest is refused wherever a build would use it —
/// unpacked for RUN, hard-linked into an OCI layout, written into a
/// docker archive, pushed — and never reaches an output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_warmed_layer_is_refused_on_every_path() {
    let reg = Registry::start();
    let tagged = push_busybox(&reg, "busybox:tampered");
    let (pinned, raw) = pinned(&tagged);
    let manifest: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let layer = manifest["layers"][0]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let cache = tempfile::tempdir().unwrap();
    warm(&reg, cache.path(), std::slice::from_ref(&pinned)).await;
    let blob = walkdir_find(cache.path(), layer.trim_start_matches("sha256:"))
        .expect("the warmed layer blob");
    // Same name, other bytes (the file may be read-only).
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, b"not the layer").unwrap();

    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let tar = out.path().join("image.tar");
    let dest = format!("{}/tampered:out", reg.addr);
    let cases: [(&str, Vec<&str>); 4] = [
        ("RUN echo x > /y", vec!["--no-push"]),
        (
            "ENV A=1",
            vec!["--no-push", "--oci-layout-path", layout.to_str().unwrap()],
        ),
        (
            "ENV A=1",
            vec!["--no-push", "--tar-path", tar.to_str().unwrap()],
        ),
        ("ENV A=1", vec!["--destination", &dest, "--insecure"]),
    ];
    for (step, args) in cases {
        let ctx = context_with(&format!("FROM {pinned}\n{step}\n"));
        let work = tempfile::tempdir().unwrap();
        let mut all = vec![
            "--insecure-pull",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ];
        all.extend(args.iter().copied());
        let o = build(ctx.path(), work.path(), &all);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{step} {args:?} built:\n{err}");
        assert!(
            err.contains(&format!("expected {layer}")) && err.contains("hashes to"),
            "{step} {args:?}: the error names the mismatch:\n{err}"
        );
    }
    let in_layout = layout
        .join("blobs/sha256")
        .join(layer.trim_start_matches("sha256:"));
    assert!(!in_layout.exists(), "the tampered layer reached the layout");
    assert!(!tar.exists(), "a docker archive was written");
    let pushed = std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{dest}"))
        .output()
        .unwrap();
    assert!(!pushed.status.success(), "the image was pushed");
}

fn walkdir_find(dir: &std::path::Path, name: &str) -> Option<std::path::PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) && p.is_file() {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(f) = walkdir_find(&p, name) {
                return Some(f);
            }
        }
    }
    None
}
