//! `--cache-dir`: builds start from base images the warmer put in a shared
//! directory, without pulling.

mod common;
use common::*;
use kiln_common::image::Platform;
use kiln_testkit::*;

async fn warm(reg: &Registry, dir: &std::path::Path, images: &[String]) {
    warm_with(reg, dir, images, false).await
}

async fn warm_with(reg: &Registry, dir: &std::path::Path, images: &[String], extract_layers: bool) {
    let client = plain_http_client(&reg.addr);
    let opts = kiln_warmer::WarmOptions {
        cache_dir: dir.to_path_buf(),
        images: images.to_vec(),
        platforms: vec![Platform::host()],
        ttl: std::time::Duration::from_secs(3600),
        force: false,
        jobs: 2,
        layer_jobs: 4,
        extract_layers,
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

/// Builds `FROM <from>` plus a RUN with `--cache-dir <cache>`, checks the
/// RUN's file in the image, and returns the log.
fn build_on_warmed(cache: &std::path::Path, from: &str) -> String {
    let ctx = context_with(&format!("FROM {from}\nRUN echo warm > /w\n"));
    let (log, img) = build_unpacked(
        ctx.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--cache-dir",
            cache.to_str().unwrap(),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("w")).unwrap(),
        "warm\n",
        "{from}"
    );
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn builds_from_the_warmed_directory_without_the_registry() {
    let mut reg = Registry::start();
    let tagged = push_busybox(&reg, "busybox:latest");
    let (pinned, _) = pinned(&tagged);
    let cache = tempfile::tempdir().unwrap();
    warm(&reg, cache.path(), &[pinned.clone(), tagged.clone()]).await;

    let build_with = |from: &str| build_on_warmed(cache.path(), from);

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

/// Warmed layers kept extracted: the build stacks its root on them (nothing
/// of the base unpacked), sees the image Docker would (whiteouts of upper
/// layers applied), and nothing it does reaches the shared directories.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_root_stacked_on_extracted_warmed_layers_builds_the_same_image_and_changes_none() {
    let reg = Registry::start();
    let busybox = push_busybox(&reg, "busybox:stack");
    // A base of three layers whose last one deletes a file and a directory.
    let base2 = format!("{}/stack-base:2", reg.addr);
    let base3 = format!("{}/stack-base:3", reg.addr);
    for (df, dest) in [
        (
            format!(
                "FROM {busybox}\nRUN mkdir -p /data/keep /data/gone && echo a > /data/gone/a \
                 && echo b > /data/b && echo k > /data/keep/k\n"
            ),
            &base2,
        ),
        (
            format!("FROM {base2}\nRUN rm -rf /data/gone /data/b\n"),
            &base3,
        ),
    ] {
        let ctx = context_with(&df);
        let work = tempfile::tempdir().unwrap();
        must_build(
            ctx.path(),
            work.path(),
            &["--destination", dest, "--insecure", "--insecure-pull"],
        );
    }
    let cache = tempfile::tempdir().unwrap();
    warm_with(&reg, cache.path(), std::slice::from_ref(&base3), true).await;
    let extracted = kiln_layers::lowers::extracted_dir(cache.path());
    let before = tree(&extracted);
    let dirs: Vec<String> = std::fs::read_dir(&extracted)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut ids = diff_ids(&format!("docker://{base3}"));
    let top = extracted.join(&ids[2]);
    ids.sort();
    let mut dirs_sorted = dirs.clone();
    dirs_sorted.sort();
    assert_eq!(
        dirs_sorted, ids,
        "one directory per layer, named by diff id"
    );
    // The top layer keeps its whiteouts as overlayfs reads them.
    for gone in ["data/gone", "data/b"] {
        let m = std::fs::symlink_metadata(top.join(gone)).unwrap();
        assert!(
            std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type())
                && std::os::unix::fs::MetadataExt::rdev(&m) == 0,
            "{gone} is a 0/0 whiteout device in the top layer"
        );
    }

    let df = format!(
        "FROM {base3}\nRUN test ! -e /data/gone && test ! -e /data/b && cat /data/keep/k > /seen \
         && rm /data/keep/k && echo changed > /bin/busybox-note && rm -rf /bin\n\
         COPY f /data/keep/f\n"
    );
    let ctx = context_with(&df);
    write(ctx.path(), "f", "copied\n");
    let (log, stacked) = build_unpacked(
        ctx.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--cache-dir",
            cache.path().to_str().unwrap(),
        ],
    );
    assert!(
        log.contains("root stacked on 3 warmed layer(s) of 3"),
        "the base was not stacked:\n{log}"
    );
    let (log, unpacked) = build_unpacked(ctx.path(), &["--no-push", "--insecure-pull"]);
    assert!(!log.contains("root stacked"), "{log}");
    assert_eq!(
        std::fs::read_to_string(stacked.rootfs().join("seen")).unwrap(),
        "k\n"
    );
    // Same paths, kinds, modes, owners, contents and hardlinks as the build
    // that unpacked the base.
    let diffs = tree_diffs(
        &tree(&stacked.rootfs()),
        &tree(&unpacked.rootfs()),
        ("stacked", "unpacked"),
    );
    assert!(diffs.is_empty(), "{diffs:#?}");
    assert!(!stacked.rootfs().join("bin").exists());
    assert_eq!(
        tree(&extracted),
        before,
        "the build changed the shared extracted layers"
    );
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

/// kaniko's documented use (issue 26): the warmer fetched a tag, the
/// registry is gone, and the Dockerfile pins the base by digest — the
/// manifest's, or the index's of a multi-platform image. Both build from
/// the directory without a single request; the tag builds too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_pinned_by_digest_builds_offline_from_a_warmed_tag() {
    let mut reg = Registry::start();
    let tagged = push_busybox(&reg, "pinned/app:1");
    let (by_manifest, raw) = pinned(&tagged);
    // An index holding that manifest for this machine's platform.
    let host = Platform::host();
    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": by_manifest.rsplit_once('@').unwrap().1,
            "size": raw.len(),
            "platform": {"os": host.os, "architecture": host.architecture},
        }],
    });
    let index = serde_json::to_vec(&index).unwrap();
    let multi = format!("{}/pinned/app:multi", reg.addr);
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), &index).unwrap();
    run(std::process::Command::new("curl")
        .args(["-sSf", "-X", "PUT", "-H"])
        .arg("Content-Type: application/vnd.oci.image.index.v1+json")
        .arg("--data-binary")
        .arg(format!("@{}", body.path().display()))
        .arg(format!("http://{}/v2/pinned/app/manifests/multi", reg.addr)));
    use sha2::Digest as _;
    let by_index = format!(
        "{}/pinned/app@sha256:{}",
        reg.addr,
        hex::encode(sha2::Sha256::digest(&index))
    );
    let cache = tempfile::tempdir().unwrap();
    warm(&reg, cache.path(), &[tagged.clone(), multi.clone()]).await;
    let build_from = |from: &str| {
        let log = build_on_warmed(cache.path(), from);
        assert!(log.contains("using the warmed copy"), "{from}:\n{log}");
    };
    // Registry up: the pinned bases are not even asked about.
    for from in [&by_manifest, &by_index] {
        let before = reg.log().len();
        build_from(from);
        let log = reg.log()[before..].to_string();
        assert!(
            !log.contains("\"GET /v2/") && !log.contains("\"HEAD /v2/"),
            "{from} touched the registry:\n{log}"
        );
    }
    // Registry gone: all three build from the directory.
    reg.stop();
    for from in [&by_manifest, &by_index, &tagged] {
        build_from(from);
    }
}
