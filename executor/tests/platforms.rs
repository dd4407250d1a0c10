//! Multi-platform images: one invocation builds linux/amd64 and
//! linux/arm64 (arm64's RUN steps through QEMU registered in binfmt_misc
//! by the test) into one index; the platform is in every cache key;
//! `executor index` joins single-platform builds and refuses a wrong
//! platform claim; without a handler, the error says how to register one.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

const DOCKERFILE: &str = "FROM --platform=$BUILDPLATFORM {base} AS tools\n\
RUN echo built-on-$(uname -m) > /tools\n\
FROM {base}\n\
ARG TARGETPLATFORM\n\
ARG TARGETARCH\n\
ARG BUILDPLATFORM\n\
COPY --from=tools /tools /tools\n\
RUN uname -m > /arch && echo \"$TARGETPLATFORM $TARGETARCH $BUILDPLATFORM\" > /args\n";

/// A real two-platform base: host busybox for amd64, Debian's arm64
/// busybox-static for arm64.
fn base(reg: &Registry) -> String {
    let (amd, arm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    busybox_rootfs(amd.path());
    busybox_rootfs_arm64(arm.path());
    let base = format!("{}/base:multi", reg.addr);
    push_platform_index(
        &reg.addr,
        &base,
        &[("amd64", amd.path()), ("arm64", arm.path())],
    );
    base
}

/// The index at `image`: (platform, manifest digest) of each entry.
fn index_of(image: &str) -> Vec<(String, String)> {
    let name = if image.starts_with("oci:") {
        image.to_string()
    } else {
        format!("docker://{image}")
    };
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", "--tls-verify=false", &name]));
    let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(
        v["mediaType"], "application/vnd.oci.image.index.v1+json",
        "{raw}"
    );
    v["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let p = &m["platform"];
            (
                format!(
                    "{}/{}",
                    p["os"].as_str().unwrap(),
                    p["architecture"].as_str().unwrap()
                ),
                m["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn read(img: &Unpacked, path: &str) -> String {
    std::fs::read_to_string(img.rootfs().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn one_invocation_builds_both_platforms_into_one_index() {
    let reg = Registry::start();
    let base = base(&reg);
    let ctx = context_with(&DOCKERFILE.replace("{base}", &base));
    let dest = format!("{}/app:multi", reg.addr);
    let cache = format!("{}/cache", reg.addr);
    let build_multi = |report: &std::path::Path| {
        let work = tempfile::tempdir_in("/dev/shm").unwrap();
        let digest_file = work.path().join("digest");
        let layout = report.with_extension("oci");
        let log = must_build(
            ctx.path(),
            &work.path().join("k"),
            &[
                "--oci-layout-path",
                layout.to_str().unwrap(),
                "--destination",
                &dest,
                "--insecure",
                "--insecure-pull",
                "--custom-platform",
                "linux/amd64,linux/arm64",
                "--cache",
                "--cache-repo",
                &cache,
                "--report",
                report.to_str().unwrap(),
                "--digest-file",
                digest_file.to_str().unwrap(),
            ],
        );
        (log, std::fs::read_to_string(digest_file).unwrap())
    };

    // Without an aarch64 handler: one clear error, not `exec format error`.
    {
        let _off = Binfmt::disabled();
        let work = tempfile::tempdir_in("/dev/shm").unwrap();
        let out = build(
            ctx.path(),
            work.path(),
            &["--no-push", "--insecure-pull", "--platform", "linux/arm64"],
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            err.contains("RUN for linux/arm64 needs an emulator")
                && err.contains("qemu-user-static"),
            "{err}"
        );
    }

    let _qemu = Binfmt::aarch64();
    let t = tempfile::tempdir().unwrap();
    let (log1, digest) = build_multi(&t.path().join("r1.json"));
    // Every entry saved: the fully cached build below depends on it (a lost
    // write shows here, not as a miss there).
    assert!(
        !log1.contains("cache write failed") && !log1.contains("were not saved"),
        "{log1}"
    );
    // The $BUILDPLATFORM stage ran once: the second platform took it from
    // the cache the first filled.
    let r1: serde_json::Value =
        serde_json::from_slice(&std::fs::read(t.path().join("r1.json")).unwrap()).unwrap();
    let tools_run = |p: &serde_json::Value| {
        p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| {
                s["stage"] == "tools" && s["instruction"].as_str().unwrap().starts_with("RUN")
            })
            .map(|s| s["cache"].as_str().unwrap_or("").to_string())
            .unwrap()
    };
    let platforms_built = r1["platforms"].as_array().unwrap();
    assert_eq!(tools_run(&platforms_built[0]), "miss");
    assert_eq!(tools_run(&platforms_built[1]), "hit");
    let entries = index_of(&dest);
    let platforms: Vec<&str> = entries.iter().map(|(p, _)| p.as_str()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    // The OCI layout holds the same index, tagged as the destination.
    let layout = format!("oci:{}:multi", t.path().join("r1.oci").display());
    assert_eq!(index_of(&layout), entries);
    let copied = tempfile::tempdir().unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        &layout,
        &format!("oci:{}:x", copied.path().display()),
    ]));
    let raw = run(Command::new("skopeo").args([
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{dest}"),
    ]));
    assert_eq!(
        digest.trim(),
        format!("sha256:{}", sha256_hex(raw.as_bytes())),
        "--digest-file names the index"
    );
    for (arch, uname) in [("amd64", "x86_64"), ("arm64", "aarch64")] {
        let img = unpack_with(&format!("docker://{dest}"), &["--override-arch", arch]);
        assert_eq!(read(&img, "arch").trim(), uname, "{arch}");
        assert_eq!(
            read(&img, "args").trim(),
            format!("linux/{arch} {arch} linux/amd64"),
            "BuildKit's platform ARGs"
        );
        // The $BUILDPLATFORM stage ran on the build platform for both.
        assert_eq!(read(&img, "tools").trim(), "built-on-x86_64");
        assert_eq!(img.config["architecture"], arch);
    }

    // Again: all hits for both platforms; the platform is in the keys.
    let r2 = t.path().join("r2.json");
    build_multi(&r2);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&r2).unwrap()).unwrap();
    let reports = r["platforms"].as_array().unwrap();
    assert_eq!(reports.len(), 2);
    let mut keys = Vec::new();
    for p in reports {
        assert_eq!(p["cache_misses"], 0, "{p}");
        assert!(p["cache_hits"].as_u64().unwrap() > 0, "{p}");
        let run_key = p["steps"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["instruction"].as_str().unwrap().starts_with("RUN uname"))
            .map(|s| s["key"].clone())
            .unwrap();
        keys.push(run_key);
    }
    assert_ne!(
        keys[0], keys[1],
        "one platform's cache entry would serve the other"
    );
}

#[test]
fn executor_index_joins_native_builds_and_checks_their_platforms() {
    let reg = Registry::start();
    let base = base(&reg);
    // COPY only: each platform's image without emulation, as native
    // runners would build them.
    let ctx = context_with(&format!("FROM {base}\nCOPY f /f\n"));
    write(ctx.path(), "f", "f\n");
    for (p, tag) in [("linux/amd64", "amd"), ("linux/arm64", "arm")] {
        let work = tempfile::tempdir_in("/dev/shm").unwrap();
        must_build(
            ctx.path(),
            work.path(),
            &[
                "--destination",
                &format!("{}/app:{tag}", reg.addr),
                "--insecure",
                "--insecure-pull",
                "--custom-platform",
                p,
            ],
        );
    }
    let index = |args: &[String]| {
        executor()
            .arg("index")
            .args(["--insecure", "--destination"])
            .arg(format!("{}/joined:1", reg.addr))
            .args(args)
            .output()
            .unwrap()
    };
    let wrong = index(&[
        format!("{}/app:amd=linux/arm64", reg.addr),
        format!("{}/app:arm", reg.addr),
    ]);
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(
        err.contains("claims linux/arm64 but is built for linux/amd64"),
        "{err}"
    );

    let ok = index(&[
        format!("{}/app:amd=linux/amd64", reg.addr),
        format!("{}/app:arm=linux/arm64", reg.addr),
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let joined = format!("{}/joined:1", reg.addr);
    let entries = index_of(&joined);
    assert_eq!(entries.len(), 2);
    // Blobs were mounted into the new repository: skopeo copies it all.
    let out = tempfile::tempdir().unwrap();
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--all",
        "--src-tls-verify=false",
        &format!("docker://{joined}"),
        &format!("oci:{}:x", out.path().display()),
    ]));
    for (_, d) in &entries {
        assert!(out.path().join("blobs/sha256").join(&d[7..]).exists());
    }
    assert!(
        reg.log().contains("mount="),
        "blobs were copied, not mounted"
    );
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(b))
}

/// The arm64 image of a multi-platform build, file for file as BuildKit
/// (Docker Engine's, `platform=linux/arm64`, through the same QEMU) builds
/// it from the same base.
#[test]
fn the_arm64_image_matches_buildkit_under_emulation() {
    let reg = Registry::start();
    let base = base(&reg);
    let df = format!("FROM {base}\nRUN uname -m > /arch && mkdir -p /opt/d && echo x > /opt/d/f && rm /etc/os-release\nCOPY f /f\n");
    let ctx = context_with(&df);
    write(ctx.path(), "f", "f\n");
    let _qemu = Binfmt::aarch64();
    let engine = DockerEngine::start();
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(ctx.path())
        .args(["-cf", "-", "."])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(engine.socket())
        .args(["-X", "POST", "-H", "Content-Type: application/x-tar"])
        .args(["--data-binary", "@-"])
        .arg("http://localhost/v1.41/build?version=2&networkmode=host&platform=linux%2Farm64&t=bk-arm:1")
        .stdin(tar.stdout.take().unwrap())
        .output()
        .unwrap();
    tar.wait().unwrap();
    let stream = String::from_utf8_lossy(&out.stdout);
    assert!(!stream.contains("\"error"), "BuildKit failed:\n{stream}");
    let saved = tempfile::tempdir().unwrap();
    let tarball = saved.path().join("bk.tar");
    run(engine
        .cmd()
        .args(["save", "-o"])
        .arg(&tarball)
        .arg("bk-arm:1"));
    let bk = unpack(&format!("docker-archive:{}", tarball.display()));

    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let layout = work.path().join("oci");
    must_build(
        ctx.path(),
        &work.path().join("k"),
        &[
            "--no-push",
            "--insecure-pull",
            "--platform",
            "linux/arm64",
            "--oci-layout-path",
            layout.to_str().unwrap(),
        ],
    );
    let kiln = unpack(&format!("oci:{}:latest", layout.display()));
    assert_eq!(read(&kiln, "arch").trim(), "aarch64");
    let mut theirs = tree(&bk.rootfs());
    // Mount points BuildKit leaves after a RUN (buildkit.rs says why).
    for l in ["dev", "proc", "sys"] {
        if theirs.get(l).is_some_and(|e| e.kind == 'd') && !tree(&kiln.rootfs()).contains_key(l) {
            theirs.remove(l);
        }
    }
    let d = tree_diffs(&tree(&kiln.rootfs()), &theirs, ("kiln", "buildkit"));
    assert!(d.is_empty(), "{}", d.join("\n"));
    assert_eq!(bk.config["architecture"], "arm64");
    assert_eq!(kiln.config["architecture"], "arm64");
}

/// Without `--cache`, a `FROM --platform=$BUILDPLATFORM` stage still runs
/// once: the platforms' builders share a layer cache of their own for the
/// build (no emulation needed: the target stages only COPY).
#[test]
fn a_build_platform_stage_runs_once_without_a_cache() {
    let reg = Registry::start();
    let base = format!("{}/base:two", reg.addr);
    push_two_platform_index(&reg.addr, &base);
    let ctx = context_with(&format!(
        "FROM --platform=$BUILDPLATFORM {base} AS tools\n\
         RUN cat /proc/sys/kernel/random/uuid > /once\n\
         FROM {base}\n\
         COPY --from=tools /once /once\n"
    ));
    let dest = format!("{}/app:once", reg.addr);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let log = must_build(
        ctx.path(),
        &work.path().join("k"),
        &[
            "--destination",
            &dest,
            "--insecure-pull",
            "--insecure-registry",
            &reg.addr,
            "--custom-platform",
            "linux/amd64,linux/arm64",
        ],
    );
    assert!(log.contains("built first"), "{log}");
    let once = |arch: &str| {
        let img = unpack_with(&format!("docker://{dest}"), &["--override-arch", arch]);
        assert_eq!(img.config["architecture"], arch);
        std::fs::read_to_string(img.rootfs().join("once")).unwrap()
    };
    let (amd, arm) = (once("amd64"), once("arm64"));
    assert_eq!(amd.trim().len(), 36, "{amd}");
    assert_eq!(amd, arm, "the build-platform stage ran twice");
    // Nothing of the shared cache is left in the work directory.
    let left: Vec<_> = std::fs::read_dir(work.path().join("k"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with("platforms-cache-")),
        "{left:?}"
    );
}

/// `--tar-path` for several platforms: the joined OCI layout as a tarball
/// with Docker's `manifest.json` beside it. skopeo reads the index from
/// it (`oci-archive:`, `--all`); Docker Engine's `docker load` loads it
/// and the destination's tag names the machine's platform's image.
#[test]
fn several_platforms_into_one_tarball() {
    let reg = Registry::start();
    let base = format!("{}/base:two", reg.addr);
    push_two_platform_index(&reg.addr, &base);
    let ctx = context_with(&format!("FROM {base}\nCOPY f /f\n"));
    write(ctx.path(), "f", "in the tarball\n");
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let tar = work.path().join("multi.tar");
    must_build(
        ctx.path(),
        &work.path().join("k"),
        &[
            "--no-push",
            "--destination",
            "example.test/team/app:tarred",
            "--insecure-pull",
            "--custom-platform",
            "linux/amd64,linux/arm64",
            "--tar-path",
            tar.to_str().unwrap(),
        ],
    );
    let archive = format!("oci-archive:{}:tarred", tar.display());
    let raw = run(Command::new("skopeo").args(["inspect", "--raw", &archive]));
    let index: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let mut archs: Vec<&str> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["platform"]["architecture"].as_str().unwrap())
        .collect();
    archs.sort();
    assert_eq!(archs, ["amd64", "arm64"], "{index}");
    let copy = work.path().join("copy");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--all", &archive])
        .arg(format!("oci:{}:x", copy.display())));
    // Nothing of the scratch layout is left in the work directory.
    let left: Vec<_> = std::fs::read_dir(work.path().join("k"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with("platforms-")),
        "{left:?}"
    );

    let engine = DockerEngine::start();
    run(engine.cmd().arg("load").arg("-i").arg(&tar));
    let arch = run(engine.cmd().args([
        "image",
        "inspect",
        "--format",
        "{{.Architecture}}",
        "example.test/team/app:tarred",
    ]));
    assert_eq!(arch.trim(), "amd64");
    let listing = run(engine.cmd().args([
        "run",
        "--rm",
        "--network",
        "host",
        "example.test/team/app:tarred",
        "cat",
        "/f",
    ]));
    assert_eq!(listing, "in the tarball\n");
}
