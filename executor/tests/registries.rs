//! Registry features against real docker-registry instances: credentials
//! from config.json, manifest lists with platform selection, mirrors.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

#[test]
fn credentials_come_from_docker_config_json() {
    let reg = Registry::start_with_auth(Some(("kiln", "s3cret")));
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path());
    let base = format!("{}/private/busybox:1", reg.addr);
    push_rootfs_with(
        rootfs.path(),
        &base,
        &["sh"],
        &["--dest-creds", "kiln:s3cret"],
    );

    let ctx = context_with(&format!("FROM {base}\nRUN echo authed > /authed\n"));
    let dest = format!("{}/private/app:1", reg.addr);

    // A push whose credentials come from `config` only.
    let work = tempfile::tempdir().unwrap();
    let path_env = std::env::var("PATH").unwrap();
    let push_with_path = |config: &std::path::Path, path: &str| {
        executor()
            .env("DOCKER_CONFIG", config)
            .env("HOME", config)
            .env("PATH", path)
            .arg("--context")
            .arg(ctx.path())
            .args([
                "--destination",
                &dest,
                "--insecure",
                "--insecure-pull",
                "--kaniko-dir",
            ])
            .arg(work.path())
            .output()
            .unwrap()
    };
    let push = |config: &std::path::Path| push_with_path(config, &path_env);

    // Without credentials: a clear refusal.
    let empty = tempfile::tempdir().unwrap();
    let out = push(empty.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let e = err.to_lowercase();
    assert!(
        e.contains("unauthorized") || e.contains("not authorized") || e.contains("401"),
        "{err}"
    );
    assert!(!err.contains("s3cret"));

    // With $DOCKER_CONFIG/config.json (the format of the seeds' Kubernetes secret).
    let cfg = tempfile::tempdir().unwrap();
    let auth = run(Command::new("sh")
        .arg("-c")
        .arg("printf kiln:s3cret | base64"));
    std::fs::write(
        cfg.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.addr,
            auth.trim()
        ),
    )
    .unwrap();
    let out = push(cfg.path());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("s3cret"), "credentials must never be logged");
    let img = unpack_with(&format!("docker://{dest}"), &["--src-creds", "kiln:s3cret"]);
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("authed")).unwrap(),
        "authed\n"
    );

    // No credentials in the file at all: `credHelpers` for this host, then
    // a `credsStore` for everything — helper programs found on PATH, as
    // Docker runs them (`docker-credential-<name> get`, host on stdin).
    let bin = tempfile::tempdir().unwrap();
    let asked = bin.path().join("asked");
    let helper = format!(
        "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread host\necho \"$host\" >> {}\n\
         echo '{{\"ServerURL\":\"'$host'\",\"Username\":\"kiln\",\"Secret\":\"s3cret\"}}'\n",
        asked.display()
    );
    for name in ["docker-credential-kilntest", "docker-credential-kilnstore"] {
        let p = bin.path().join(name);
        std::fs::write(&p, &helper).unwrap();
        run(Command::new("chmod").arg("755").arg(&p));
    }
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap()
    );
    for file in [
        format!(r#"{{"credHelpers":{{"{}":"kilntest"}}}}"#, reg.addr),
        r#"{"credsStore":"kilnstore"}"#.to_string(),
    ] {
        let cfg = tempfile::tempdir().unwrap();
        std::fs::write(cfg.path().join("config.json"), &file).unwrap();
        let _ = std::fs::remove_file(&asked);
        let out = push_with_path(cfg.path(), &path);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{file}: {err}");
        assert!(!err.contains("s3cret"), "credentials must never be logged");
        let asked = std::fs::read_to_string(&asked).unwrap_or_default();
        assert!(
            asked.contains(&reg.addr),
            "{file}: the helper was not asked: {asked:?}"
        );
    }
}

#[test]
fn manifest_lists_select_the_requested_platform() {
    let reg = Registry::start();
    // Two single-platform images that differ by a marker file, one index.
    let multi = format!("{}/multi:latest", reg.addr);
    push_two_platform_index(&reg.addr, &multi);

    for (platform, marker) in [("linux/amd64", "amd"), ("linux/arm64", "arm")] {
        let ctx = tempfile::tempdir().unwrap();
        // COPY only: no RUN, so a foreign-architecture base needs no emulator.
        write(
            ctx.path(),
            "Dockerfile",
            &format!("FROM {multi}\nCOPY f /f\n"),
        );
        write(ctx.path(), "f", "f");
        let (_, img) = build_unpacked(
            ctx.path(),
            &[
                "--no-push",
                "--insecure-pull",
                "--custom-platform",
                platform,
            ],
        );
        assert_eq!(
            std::fs::read_to_string(img.rootfs().join("etc/arch")).unwrap(),
            marker,
            "{platform}"
        );
        assert_eq!(
            img.config["architecture"],
            platform.split('/').nth(1).unwrap()
        );
    }
    let ctx = context_with(&format!("FROM {multi}\nCOPY f /f\n"));
    write(ctx.path(), "f", "f");
    let work = tempfile::tempdir().unwrap();
    let out = build(
        ctx.path(),
        work.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--custom-platform",
            "linux/s390x",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("linux/s390x") && err.contains("linux/amd64"),
        "{err}"
    );
}

#[test]
fn registry_map_sends_pulls_to_the_mirror() {
    let mirror = Registry::start();
    push_busybox(&mirror, "library/busybox:stable");
    let ctx = tempfile::tempdir().unwrap();
    // A Docker Hub name: only the mirror can serve it here (no internet).
    write(
        ctx.path(),
        "Dockerfile",
        "FROM busybox:stable\nRUN echo mirrored > /m\n",
    );
    let (_, img) = build_unpacked(
        ctx.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--registry-mirror",
            &mirror.addr,
            "--skip-default-registry-fallback",
        ],
    );
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("m")).unwrap(),
        "mirrored\n"
    );
    assert!(mirror
        .log()
        .contains("/v2/library/busybox/manifests/stable"));
}

/// Kiln's cache server as the fleet's pull-through mirror: the executor's
/// `--registry-mirror <server>/docker.io` (kaniko's mirror-with-a-path
/// form) reaches Docker Hub's namespace through it, and a second build in
/// a fresh work dir costs the upstream nothing.
#[test]
fn the_cache_server_mirror_serves_docker_hub_names_to_builds() {
    let hub = Registry::start();
    push_busybox(&hub, "library/busybox:stable");
    let proxy = CuttingProxy::start(&hub.addr, "no request contains this", 0);
    let server = CacheServer::start(
        &cache_server_bin(),
        None,
        &["--mirror", &format!("docker.io=http://{}", proxy.addr)],
        &[],
    );
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        "FROM busybox:stable\nRUN echo mirrored > /m\n",
    );
    let mirror = format!("{}/docker.io", server.addr);
    let args = [
        "--no-push",
        "--insecure-pull",
        "--registry-mirror",
        mirror.as_str(),
        "--skip-default-registry-fallback",
    ];
    let (_, img) = build_unpacked(ctx.path(), &args);
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("m")).unwrap(),
        "mirrored\n"
    );
    let upstream = proxy.requests().len();
    assert!(upstream >= 2, "{:?}", proxy.requests());
    build_unpacked(ctx.path(), &args);
    assert_eq!(proxy.requests().len(), upstream, "{:#?}", proxy.requests());
}

/// The blobs (config and layers) of `image`'s manifest, read with skopeo.
fn blobs_of(image: &str) -> Vec<String> {
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{image}"),
    ]));
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut v = vec![m["config"]["digest"].as_str().unwrap().to_string()];
    for l in m["layers"].as_array().unwrap() {
        v.push(l["digest"].as_str().unwrap().to_string());
    }
    v
}

/// `n` builds at once, each in a fresh work dir, alternating between the
/// two contexts; all must succeed.
fn wave(n: usize, contexts: &[&std::path::Path; 2], mirror: &str) {
    std::thread::scope(|sc| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                sc.spawn(move || {
                    let work = tempfile::tempdir_in("/dev/shm").unwrap();
                    let tar = work.path().join("image.tar");
                    let out = build(
                        contexts[i % 2],
                        &work.path().join("kaniko"),
                        &[
                            "--no-push",
                            "--tar-path",
                            tar.to_str().unwrap(),
                            "--insecure-pull",
                            "--registry-mirror",
                            mirror,
                            "--skip-default-registry-fallback",
                        ],
                    );
                    assert_ok(&out);
                    assert!(tar.metadata().unwrap().len() > 0);
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    });
}

/// A fleet's cold start through the mirror: 50 concurrent builds in fresh
/// work dirs, `FROM` two Docker Hub images, cost the upstream one manifest
/// GET per image and one GET per blob; a second wave costs nothing; after
/// the window (here: a restarted server, which has validated nothing), one
/// HEAD per tag and nothing else.
#[test]
fn fifty_concurrent_builds_cost_the_upstream_one_pull_of_each_base() {
    let hub = Registry::start();
    let (base, tools) = push_hub_images(&hub);
    let mut want: Vec<String> = blobs_of(&base);
    want.extend(blobs_of(&tools));
    want.sort();
    want.dedup();
    let proxy = HttpProxy::start(&hub.addr);
    let mut server = CacheServer::start(
        &cache_server_bin(),
        None,
        &[
            "--mirror",
            &format!("docker.io=http://{}", proxy.addr),
            "--mirror-revalidate",
            "10m",
        ],
        &[],
    );
    let a = context_with("FROM busybox:stable\nCOPY f /f\n");
    let b = context_with("FROM tools:1\nCOPY f /f\n");
    write(a.path(), "f", "a\n");
    write(b.path(), "f", "b\n");
    let contexts = [a.path(), b.path()];
    let mirror = format!("{}/docker.io", server.addr);

    wave(50, &contexts, &mirror);
    let reqs = proxy.requests();
    assert_eq!(proxy.count("GET", "/manifests/stable"), 1, "{reqs:#?}");
    assert_eq!(proxy.count("GET", "/manifests/1"), 1, "{reqs:#?}");
    let mut blobs: Vec<String> = reqs
        .iter()
        .filter(|r| r.starts_with("GET ") && r.contains("/blobs/"))
        .map(|r| r.rsplit('/').next().unwrap().to_string())
        .collect();
    blobs.sort();
    assert_eq!(blobs, want, "one GET per blob: {reqs:#?}");

    let before = proxy.requests().len();
    wave(20, &contexts, &mirror);
    assert_eq!(proxy.requests().len(), before, "{:#?}", proxy.requests());

    server.restart();
    wave(20, &contexts, &mirror);
    let reqs = proxy.requests()[before..].to_vec();
    assert_eq!(reqs.len(), 2, "{reqs:#?}");
    assert_eq!(proxy.count("HEAD", "/manifests/stable"), 1, "{reqs:#?}");
    assert_eq!(proxy.count("HEAD", "/manifests/1"), 1, "{reqs:#?}");
}
