//! Mirror mode against a real docker-registry upstream behind a proxy that
//! records every request: concurrent pulls through the mirror cost the
//! upstream one manifest GET and one GET per blob; pulls within the
//! revalidation window cost nothing, after it one HEAD; a moved tag is
//! served after the window; `ns=` routes like a repository name; routed
//! names are read-only; with the upstream gone the kept copy is served,
//! marked stale, and an uncached tag fails naming the upstream.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

const HOST: &str = "up.example";

fn skopeo_digest(image: &str) -> String {
    let out = run(Command::new("skopeo").args([
        "inspect",
        "--tls-verify=false",
        "--format",
        "{{.Digest}}",
        &format!("docker://{image}"),
    ]));
    out.trim().to_string()
}

fn count(reqs: &[String], method: &str, part: &str) -> usize {
    reqs.iter()
        .filter(|r| r.starts_with(&format!("{method} ")) && r.contains(part))
        .count()
}

/// The HTTP status of starting a blob upload into `repo`.
fn upload_status(addr: &str, repo: &str) -> String {
    run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "-X",
        "POST",
        &format!("http://{addr}/v2/{repo}/blobs/uploads/"),
    ]))
}

/// `curl -sI` of `url`: the status line and headers.
fn head(url: &str) -> String {
    run(Command::new("curl").args([
        "-sI",
        "-H",
        "Accept: application/vnd.oci.image.manifest.v1+json",
        url,
    ]))
}

#[test]
fn pulls_through_the_mirror_cost_the_upstream_once_and_survive_it() {
    let up = Registry::start();
    let image = push_busybox(&up, "busybox:latest");
    let want = skopeo_digest(&image);
    let proxy = CuttingProxy::start(&up.addr, "no request contains this", 0);
    let s = Backend::file().start(&[
        "--mirror",
        &format!("{HOST}=http://{}", proxy.addr),
        "--mirror-revalidate",
        "2s",
    ]);
    let through = format!("{}/{HOST}/busybox:latest", s.addr);

    // Five concurrent pulls of a base nobody pulled yet.
    std::thread::scope(|sc| {
        for _ in 0..5 {
            sc.spawn(|| skopeo_pull(&through));
        }
    });
    assert_eq!(skopeo_digest(&through), want);
    let reqs = proxy.requests();
    assert_eq!(count(&reqs, "GET", "/manifests/latest"), 1, "{reqs:#?}");
    // busybox's config and its one layer: one GET each.
    assert_eq!(count(&reqs, "GET", "/blobs/sha256:"), 2, "{reqs:#?}");

    // Within the window: nothing upstream.
    let before = proxy.requests().len();
    skopeo_pull(&through);
    assert_eq!(proxy.requests().len(), before, "{:#?}", proxy.requests());

    // After it: one HEAD, no GET (the tag did not move).
    std::thread::sleep(std::time::Duration::from_millis(2200));
    skopeo_pull(&through);
    let reqs = proxy.requests();
    assert_eq!(
        count(&reqs[before..], "HEAD", "/manifests/latest"),
        1,
        "{reqs:#?}"
    );
    assert_eq!(count(&reqs[before..], "GET", "/manifests/"), 0, "{reqs:#?}");

    // A pull by digest keeps the manifest under an internal tag, so GC
    // keeps what is pulled by digest too.
    assert_eq!(
        skopeo_digest(&format!("{}/{HOST}/busybox@{want}", s.addr)),
        want
    );
    let kept = s
        .dir
        .path()
        .join("store/repos/_mirror")
        .join(HOST)
        .join("busybox/_tags")
        .join(want.replace(':', "-"));
    assert!(kept.exists(), "{}", kept.display());

    // containerd's `ns=`: the upstream's own repository name.
    let h = head(&format!(
        "http://{}/v2/busybox/manifests/latest?ns={HOST}",
        s.addr
    ));
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(
        h.to_lowercase()
            .contains(&format!("docker-content-digest: {want}")),
        "{h}"
    );

    // Routed names are read-only.
    assert_eq!(upload_status(&s.addr, &format!("{HOST}/busybox")), "403");
    // Referrers are not proxied: a 404, which sends clients to the tag
    // schema (never a 403, which would fail their discovery).
    let referrers = run(Command::new("curl").args([
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &format!("http://{}/v2/{HOST}/busybox/referrers/{want}", s.addr),
    ]));
    assert_eq!(referrers, "404");

    // The tag moves upstream: served after the window.
    let t = tempfile::tempdir().unwrap();
    busybox_rootfs(t.path());
    std::fs::write(t.path().join("moved"), "new content\n").unwrap();
    push_rootfs(t.path(), &image, &["sh"]);
    let moved = skopeo_digest(&image);
    assert_ne!(moved, want);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    assert_eq!(skopeo_digest(&through), moved);
    skopeo_pull(&through);

    // The upstream goes away: the kept copy is served, marked stale; a tag
    // never pulled fails with the upstream named.
    drop(proxy);
    drop(up);
    std::thread::sleep(std::time::Duration::from_millis(2200));
    let h = head(&format!(
        "http://{}/v2/{HOST}/busybox/manifests/latest",
        s.addr
    ));
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(h.to_lowercase().contains("x-kiln-stale: true"), "{h}");
    // Within the window the upstream is not asked again, and the copy is
    // still said to be stale.
    let h = head(&format!(
        "http://{}/v2/{HOST}/busybox/manifests/latest",
        s.addr
    ));
    assert!(h.to_lowercase().contains("x-kiln-stale: true"), "{h}");
    skopeo_pull(&through);
    let o = Command::new("curl")
        .args([
            "-s",
            "-w",
            "\n%{http_code}",
            &format!("http://{}/v2/{HOST}/busybox/manifests/nope", s.addr),
        ])
        .output()
        .unwrap();
    let body = String::from_utf8_lossy(&o.stdout);
    assert!(body.ends_with("502"), "{body}");
    assert!(body.contains(HOST), "{body}");
    let m = s.metrics();
    assert!(
        metric_sum(
            &m,
            "kiln_cache_mirror_manifests_served_total",
            &["from=\"stale\""]
        ) >= 1.0,
        "{m}"
    );
    assert!(
        metric_sum(
            &m,
            "kiln_cache_mirror_upstream_requests_total",
            &[
                &format!("upstream=\"{HOST}\""),
                "kind=\"blob\"",
                "result=\"ok\""
            ]
        ) >= 2.0,
        "{m}"
    );
}

/// Docker Engine configured with `registry-mirrors` (which sends neither
/// `ns` nor a host in the name) pulls a Docker Hub image through a server
/// started with `--mirror-only`; the image is the upstream's.
#[test]
fn docker_engine_pulls_through_a_mirror_only_server() {
    let up = Registry::start();
    let image = push_busybox(&up, "library/busybox:1.36");
    let want = skopeo_digest(&image);
    let s = Backend::file().start(&[
        "--mirror",
        &format!("docker.io=http://{}", up.addr),
        "--mirror-only",
    ]);
    let engine = DockerEngine::start_with(&["--registry-mirror", &format!("http://{}", s.addr)]);
    let o = engine
        .cmd()
        .args(["pull", "busybox:1.36"])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stderr),
        engine.log()
    );
    let digests = run(engine.cmd().args([
        "image",
        "inspect",
        "--format",
        "{{json .RepoDigests}}",
        "busybox:1.36",
    ]));
    assert!(digests.contains(&want), "{digests} vs {want}");
    // Cache repositories are not served by a mirror-only server: writes
    // to any name are refused.
    assert_eq!(upload_status(&s.addr, "cache/app"), "403");
}

/// An upstream that hangs when a tag is revalidated: the kept copy is
/// served within `--mirror-timeout`, marked stale.
#[test]
fn a_hanging_upstream_serves_the_kept_copy_in_time() {
    let up = Registry::start();
    push_busybox(&up, "busybox:latest");
    let hanging = CuttingProxy::stalling(&up.addr, "HEAD /v2/busybox/manifests/latest", 0);
    let s = Backend::file().start(&[
        "--mirror",
        &format!("hanging.example=http://{}", hanging.addr),
        "--mirror-revalidate",
        "1s",
        "--mirror-timeout",
        "1s",
    ]);
    let through = format!("{}/hanging.example/busybox:latest", s.addr);
    skopeo_pull(&through);
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let started = std::time::Instant::now();
    let h = head(&format!(
        "http://{}/v2/hanging.example/busybox/manifests/latest",
        s.addr
    ));
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(h.to_lowercase().contains("x-kiln-stale: true"), "{h}");
    assert!(
        started.elapsed() < std::time::Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
    assert!(
        hanging.requests().iter().any(|r| r.starts_with("HEAD ")),
        "{:?}",
        hanging.requests()
    );
    skopeo_pull(&through);
}

/// An upstream whose stored layer is corrupted (same length, other bytes):
/// the pull through the mirror fails, and nothing is stored under the
/// layer's digest.
#[test]
fn corrupted_upstream_bytes_are_refused_and_never_stored() {
    let up = Registry::start();
    let image = push_busybox(&up, "busybox:latest");
    // The largest blob of the upstream's store is busybox's layer.
    let mut blobs = Vec::new();
    let walk = walkdir(up.dir.path());
    for p in walk {
        if p.file_name().is_some_and(|n| n == "data")
            && p.to_string_lossy().contains("/blobs/sha256/")
        {
            blobs.push((std::fs::metadata(&p).unwrap().len(), p));
        }
    }
    blobs.sort();
    let (len, layer) = blobs.pop().expect("a layer in the upstream's store");
    let hex = layer
        .parent()
        .unwrap()
        .file_name()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    std::fs::write(&layer, vec![b'x'; len as usize]).unwrap();
    let s = Backend::file().start(&["--mirror", &format!("up.example=http://{}", up.addr)]);
    let through = format!("{}/up.example/busybox:latest", s.addr);
    let d = tempfile::tempdir().unwrap();
    let o = Command::new("skopeo")
        .args([
            "copy",
            "--quiet",
            "--src-tls-verify=false",
            &format!("docker://{through}"),
            &format!("oci:{}:x", d.path().display()),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success(), "a corrupted layer was pulled: {image}");
    std::thread::sleep(std::time::Duration::from_millis(500));
    let stored = s.dir.path().join("store/blobs/sha256").join(&hex);
    assert!(!stored.exists(), "{} stored", stored.display());
    // oci-client checks the stream's digest as it ends; the mirror checks
    // it again before committing: either names the mismatch.
    let log = s.log();
    assert!(
        log.contains("mirrored blob")
            && (log.contains("Invalid digest") || log.contains("does not hash to")),
        "{log}"
    );
}

fn walkdir(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walkdir(&p));
        } else {
            out.push(p);
        }
    }
    out
}

/// A manifest list through the mirror: `skopeo copy --all` gets the index
/// and every platform's manifest, a pull by a platform manifest's digest
/// works, and buildah pulls through the mirror as well.
#[test]
fn manifest_lists_and_their_platform_manifests_pull_through() {
    let up = Registry::start();
    let platforms = push_two_platform_index(&up.addr, &format!("{}/multi:latest", up.addr));
    let s = Backend::file().start(&["--mirror", &format!("{HOST}=http://{}", up.addr)]);
    let all = tempfile::tempdir().unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{}/{HOST}/multi:latest", s.addr),
        &format!("oci:{}:x", all.path().display()),
    ]));
    for (arch, digest) in &platforms {
        assert!(
            all.path().join("blobs/sha256").join(&digest[7..]).exists(),
            "{arch} manifest missing from the copy"
        );
        let by_digest = format!("{}/{HOST}/multi@{digest}", s.addr);
        assert_eq!(skopeo_digest(&by_digest), *digest, "{arch}");
    }

    let b = Buildah::new();
    let image = format!("{}/{HOST}/multi:latest", s.addr);
    run(b
        .cmd()
        .args(["pull", "--quiet", "--tls-verify=false", "--arch", "arm64"])
        .arg(&image));
    let out = run(b
        .cmd()
        .args([
            "inspect",
            "--type",
            "image",
            "--format",
            "{{.FromImageDigest}}",
        ])
        .arg(&image));
    let arm = &platforms.iter().find(|(a, _)| a == "arm64").unwrap().1;
    assert_eq!(out.trim(), arm.as_str(), "buildah got another platform");
}
