//! Helpers for the executor's integration tests: run the real `executor`
//! binary with a private work dir.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn executor() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_executor"));
    c.env_remove("DOCKER_CONFIG");
    c
}

/// Runs a build; returns the output (stdout, stderr, status).
pub fn build(context: &Path, work: &Path, args: &[&str]) -> Output {
    let mut c = executor();
    c.arg("--context")
        .arg(context)
        .arg("--kaniko-dir")
        .arg(work)
        .args(args);
    c.output().expect("run executor")
}

pub fn must_build(context: &Path, work: &Path, args: &[&str]) -> String {
    let out = build(context, work, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "executor failed:\n{err}");
    err
}

pub fn write(dir: &Path, rel: &str, content: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

/// Builds `context` with `args` into a fresh OCI layout and unpacks the result
/// through skopeo + umoci; returns the build log and the unpacked image.
pub fn build_unpacked(context: &Path, args: &[&str]) -> (String, kiln_testkit::Unpacked) {
    let out = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let layout_s = layout.to_str().unwrap().to_string();
    let mut all = args.to_vec();
    all.extend(["--oci-layout-path", layout_s.as_str()]);
    let log = must_build(context, work.path(), &all);
    (
        log,
        kiln_testkit::unpack(&format!("oci:{}:latest", layout.display())),
    )
}
