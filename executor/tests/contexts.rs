//! Build contexts other than a plain directory: `tar://` (file and stdin) and
//! `s3://` against a real S3 API server (moto) on loopback.

mod common;
use common::*;
use kiln_testkit::*;
use std::io::Write;
use std::process::{Command, Stdio};

fn context_tarball(base: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let src = context_with(&format!(
        "FROM {base}\nCOPY app/ /app/\nRUN cat /app/msg > /copied\n"
    ));
    write(src.path(), "app/msg", "from an archive\n");
    let out = tempfile::tempdir().unwrap();
    let tgz = out.path().join("context.tar.gz");
    run(Command::new("tar")
        .arg("-C")
        .arg(src.path())
        .arg("-czf")
        .arg(&tgz)
        .arg("."));
    (out, tgz)
}

fn check(layout: &std::path::Path) {
    let img = unpack(&format!("oci:{}:latest", layout.display()));
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("copied")).unwrap(),
        "from an archive\n"
    );
}

#[test]
fn tar_contexts_from_a_file_and_from_stdin() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let (dir, tgz) = context_tarball(&base);
    let layout = dir.path().join("oci1");
    let work = tempfile::tempdir().unwrap();
    let mut c = executor();
    c.arg("--context")
        .arg(format!("tar://{}", tgz.display()))
        .args(["--no-push", "--insecure-pull", "--kaniko-dir"])
        .arg(work.path())
        .arg("--oci-layout-path")
        .arg(&layout);
    let out = c.output().unwrap();
    assert_ok(&out);
    check(&layout);

    let layout = dir.path().join("oci2");
    let mut c = executor();
    c.args([
        "--context",
        "tar://stdin",
        "--no-push",
        "--insecure-pull",
        "--kaniko-dir",
    ])
    .arg(work.path())
    .arg("--oci-layout-path")
    .arg(&layout)
    .stdin(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&tgz).unwrap())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_ok(&out);
    check(&layout);
}

#[test]
fn s3_context_through_a_real_s3_api() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let s3 = S3Server::start();
    let (dir, tgz) = context_tarball(&base);
    s3.put("contexts", "team/app/context.tar.gz", &tgz);
    let layout = dir.path().join("oci");
    let work = tempfile::tempdir().unwrap();
    let mut c = executor();
    c.args([
        "--context",
        "s3://contexts/team/app/context.tar.gz",
        "--no-push",
        "--insecure-pull",
        "--kaniko-dir",
    ])
    .arg(work.path())
    .arg("--oci-layout-path")
    .arg(&layout)
    .envs(s3.env());
    let out = c.output().unwrap();
    assert_ok(&out);
    check(&layout);

    // A missing object is a clear error naming the context.
    let mut c = executor();
    c.args([
        "--context",
        "s3://contexts/nope.tar.gz",
        "--no-push",
        "--kaniko-dir",
    ])
    .arg(work.path())
    .envs(s3.env());
    let out = c.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("s3://contexts/nope.tar.gz"), "{err}");
}
