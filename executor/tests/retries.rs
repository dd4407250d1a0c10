//! Retries where CI pods see resets: a connection cut at each point of a
//! pull (`--image-download-retry`) and of a push (`--push-retry`), through
//! a proxy in front of a real docker-registry. Each build succeeds, the cut
//! request was really made again, and the log names the operation retried.

mod common;
use common::*;
use kiln_testkit::*;

/// The digests of an image's config and first layer, as skopeo reads them.
fn config_and_layer(image: &str) -> (String, String) {
    let raw = run(std::process::Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{image}")));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let digest = |v: &serde_json::Value| v["digest"].as_str().unwrap().to_string();
    (digest(&m["config"]), digest(&m["layers"][0]))
}

#[test]
fn a_reset_at_each_point_of_pull_and_push_is_retried() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "base:1");
    let (config, layer) = config_and_layer(&base);
    // (what is cut, the request it matches, bytes let through, log words)
    let points: [(&str, String, usize, &str); 7] = [
        (
            "manifest",
            "GET /v2/base/manifests/1".into(),
            0,
            "resolving the image",
        ),
        (
            "config",
            format!("GET /v2/base/blobs/{config}"),
            0,
            "resolving the image",
        ),
        (
            "layer mid-way",
            format!("GET /v2/base/blobs/{layer}"),
            200_000,
            "pulling a layer",
        ),
        (
            "existence check",
            "HEAD /v2/{repo}/blobs/".into(),
            0,
            "checking for a blob",
        ),
        ("mount", "mount=".into(), 0, "mounting a blob"),
        (
            "upload",
            "PUT /v2/{repo}/blobs/uploads/".into(),
            0,
            "uploading a",
        ),
        (
            "manifest push",
            "PUT /v2/{repo}/manifests/".into(),
            0,
            "pushing the manifest",
        ),
    ];
    for (i, (what, needle, after, op)) in points.iter().enumerate() {
        // A fresh repository each time: nothing of an earlier push is there.
        let repo = format!("app{i}");
        let needle = &needle.replace("{repo}", &repo);
        let proxy = CuttingProxy::start(&reg.addr, needle, *after);
        let ctx = context_with(&format!(
            "FROM {}/base:1\nRUN echo {i} > /step\n",
            proxy.addr
        ));
        let work = tempfile::tempdir().unwrap();
        let dest = format!("{}/{repo}:1", proxy.addr);
        let out = build(
            ctx.path(),
            work.path(),
            &[
                "--destination",
                &dest,
                "--insecure",
                "--insecure-pull",
                "--push-retry=2",
                "--image-download-retry=2",
            ],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: the build failed:\n{err}");
        let seen = proxy
            .requests()
            .iter()
            .filter(|r| r.contains(needle.as_str()))
            .count();
        assert!(
            seen >= 2,
            "{what}: {needle:?} was asked {seen} times:\n{err}"
        );
        assert!(
            err.contains(op),
            "{what}: no retry line naming {op:?}:\n{err}"
        );
        let pushed = run(std::process::Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{}/{repo}:1", reg.addr)));
        assert!(pushed.contains("\"Digest\""), "{what}: {pushed}");
    }
}

/// A registry that sends part of a layer and then hangs (the connection
/// open, nothing more for two minutes): the pull gives up on that response
/// after `--transfer-stall-timeout`, retries, and the build succeeds in
/// seconds.
#[test]
fn a_stalled_layer_download_is_abandoned_and_retried() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "base:1");
    let (_, layer) = config_and_layer(&base);
    let needle = format!("GET /v2/base/blobs/{layer}");
    let proxy = CuttingProxy::stalling(&reg.addr, &needle, 200_000);
    let ctx = context_with(&format!("FROM {}/base:1\nRUN echo ok > /ok\n", proxy.addr));
    let work = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let out = build(
        ctx.path(),
        work.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--image-download-retry=2",
            "--transfer-stall-timeout=2s",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    // A failure-detection bound, far below the proxy's 120 s stall.
    assert!(
        t.elapsed() < std::time::Duration::from_secs(40),
        "{:?}",
        t.elapsed()
    );
    let gets = proxy
        .requests()
        .iter()
        .filter(|r| r.contains(&needle))
        .count();
    assert!(gets >= 2, "{gets} GETs of the layer:\n{err}");
}

/// A connection reset halfway through a layer (issue 26), once and then
/// twice: with no retry flag at all (layer streams are retried by default)
/// and with only `--image-fs-extract-retry` (what kaniko's users set for
/// this), the build succeeds and the layer is resumed from where it broke
/// (a Range request); with both flags at 0 it fails naming the layer.
#[test]
fn a_reset_mid_layer_is_resumed_by_default_and_under_the_extract_flag() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "base:1");
    let (_, layer) = config_and_layer(&base);
    let needle = format!("GET /v2/base/blobs/{layer}");
    let cases: [(usize, &[&str], bool); 4] = [
        (1, &[], true),
        (2, &[], true),
        (
            2,
            &["--image-download-retry=0", "--image-fs-extract-retry=2"],
            true,
        ),
        (
            1,
            &["--image-download-retry=0", "--image-fs-extract-retry=0"],
            false,
        ),
    ];
    for (cuts, flags, succeeds) in cases {
        let proxy = CuttingProxy::cutting(&reg.addr, &needle, 200_000, cuts);
        let ctx = context_with(&format!("FROM {}/base:1\nRUN echo ok > /ok\n", proxy.addr));
        let work = tempfile::tempdir().unwrap();
        let mut args = vec!["--no-push", "--insecure-pull"];
        args.extend_from_slice(flags);
        let out = build(ctx.path(), work.path(), &args);
        let err = String::from_utf8_lossy(&out.stderr);
        let gets: Vec<String> = proxy
            .requests()
            .into_iter()
            .filter(|r| r.contains(&needle))
            .collect();
        if succeeds {
            assert!(out.status.success(), "{cuts} cuts, {flags:?}:\n{err}");
            assert_eq!(gets.len(), cuts + 1, "{cuts} cuts, {flags:?}: {gets:?}");
            assert!(
                gets[1..]
                    .iter()
                    .all(|g| g.to_ascii_lowercase().contains("range: bytes=")),
                "{cuts} cuts, {flags:?}: not resumed: {gets:?}"
            );
            assert_eq!(
                err.matches("pulling a layer").count(),
                cuts,
                "one line per retry:\n{err}"
            );
        } else {
            assert!(!out.status.success(), "{flags:?}:\n{err}");
            assert!(err.contains(&layer), "the error names the layer:\n{err}");
            assert_eq!(gets.len(), 1, "{gets:?}");
        }
    }
}
