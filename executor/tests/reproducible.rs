//! SOURCE_DATE_EPOCH with `--rewrite-timestamp` (BuildKit's semantics):
//! builds in different work dirs, at different times, under different
//! umasks and on different isolation rungs give the same image digest; the
//! config's and history's times are the epoch; base layers keep their
//! upstream digests; an image served from the cache is the same bytes.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

const EPOCH: &str = "1700000000";
const EPOCH_TIME: &str = "2023-11-14T22:13:20Z";

struct Built {
    report: serde_json::Value,
    layout: String,
    _work: tempfile::TempDir,
}

/// One build into a fresh layout under umask `umask` (RUN steps must not
/// inherit it), SOURCE_DATE_EPOCH in the environment unless `extra` gives
/// it as a build arg.
fn build_at(ctx: &std::path::Path, umask: &str, extra: &[&str]) -> Built {
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let report = work.path().join("report.json");
    let layout = work.path().join("oci");
    let cmd = format!(
        "umask {umask}; exec {} --context {} --kaniko-dir {} --no-push --insecure-pull \
         --rewrite-timestamp --oci-layout-path {} --report {} {}",
        env!("CARGO_BIN_EXE_executor"),
        ctx.display(),
        work.path().join("k").display(),
        layout.display(),
        report.display(),
        extra.join(" ")
    );
    let mut c = Command::new("sh");
    c.args(["-c", &cmd]).env_remove("DOCKER_CONFIG");
    if !extra.iter().any(|a| a.starts_with("SOURCE_DATE_EPOCH=")) {
        c.env("SOURCE_DATE_EPOCH", EPOCH);
    }
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Built {
        report: serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap(),
        layout: format!("oci:{}:latest", layout.display()),
        _work: work,
    }
}

#[test]
fn the_same_epoch_gives_the_same_image_anywhere() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let df = format!(
        "FROM {base}\nRUN echo hi > /hi && mkdir -p /d && touch /d/f && rm /etc/os-release\nCOPY f /f\n"
    );
    let (a, b) = (context_with(&df), context_with(&df));
    write(a.path(), "f", "same\n");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    write(b.path(), "f", "same\n");

    let epoch_arg = format!("SOURCE_DATE_EPOCH={EPOCH}");
    let first = build_at(
        a.path(),
        "022",
        &["--isolation", "namespaces", "--build-arg", &epoch_arg],
    );
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let second = build_at(b.path(), "077", &["--isolation", "chroot"]);
    let digest = &first.report["manifest_digest"];
    assert_eq!(*digest, second.report["manifest_digest"]);

    // Through the cache: the first build writes it, the second is all
    // hits; both give the digest a rebuild gives.
    let cache = format!("{}/cache", reg.addr);
    for hits in [false, true] {
        let r = build_at(
            a.path(),
            "022",
            &["--cache", "--cache-repo", &cache, "--insecure"],
        );
        assert_eq!(r.report["manifest_digest"], *digest, "hits: {hits}");
        assert_eq!(r.report["cache_misses"] == 0, hits, "{}", r.report);
    }

    // The config's and history's times are the epoch, file times are
    // capped at it, the base's layer is upstream's, RUN had umask 022.
    let img = unpack_with(&second.layout, &[]);
    assert_eq!(img.config["created"], EPOCH_TIME);
    let history = img.config["history"].as_array().unwrap();
    for h in &history[history.len() - 2..] {
        assert_eq!(h["created"], EPOCH_TIME, "{h}");
    }
    assert_eq!(
        layers(&format!("docker://{base}"))[0],
        layers(&second.layout)[0]
    );
    use std::os::unix::fs::MetadataExt;
    let hi = std::fs::symlink_metadata(img.rootfs().join("hi")).unwrap();
    assert_eq!(hi.mtime(), EPOCH.parse::<i64>().unwrap());
    assert_eq!(hi.mode() & 0o777, 0o644, "RUN ran with umask 022");
}

/// The layer digests of an image's manifest, read with skopeo.
fn layers(image: &str) -> Vec<String> {
    let m: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(image)))
    .unwrap();
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}
