//! No CA bundle at all (issue 26): the executor copied alone into a
//! scratch or distroless image, no `/tmp`, no `KILN_DIR`. In a private
//! mount namespace where the system's CA store is empty and neither
//! `SSL_CERT_FILE` nor `SSL_CERT_DIR` is set: pulls, a push with basic
//! auth, and cache lookups and writes against plain-HTTP registries work;
//! an HTTPS registry fails with one clear error naming its host; nothing
//! panics.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::{Command, Output};

/// The executor with `args`, in a mount namespace of its own whose CA
/// directory is an empty tmpfs.
fn without_cas(args: &[&str], docker_config: &std::path::Path) -> Output {
    let script = "mount -t tmpfs none /etc/ssl/certs && exec \"$@\"";
    Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script, "sh"])
        .arg(env!("CARGO_BIN_EXE_executor"))
        .args(args)
        .env_remove("SSL_CERT_FILE")
        .env_remove("SSL_CERT_DIR")
        .env_remove("KILN_DIR")
        // Nowhere to write a file: /proc refuses new entries.
        .env("TMPDIR", "/proc/kiln-no-tmp")
        .env("DOCKER_CONFIG", docker_config)
        .output()
        .unwrap()
}

#[test]
fn without_a_ca_bundle_plain_http_works_and_tls_fails_clearly() {
    let plain = Registry::start();
    let base = push_busybox(&plain, "busybox:1");
    let authed = Registry::start_with_auth(Some(("kiln", "s3cret")));
    let config = tempfile::tempdir().unwrap();
    // base64 of `kiln:s3cret`.
    let auth = "a2lsbjpzM2NyZXQ=";
    std::fs::write(
        config.path().join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{auth}"}}}}}}"#, authed.addr),
    )
    .unwrap();
    let ctx = context_with(&format!("FROM {base}\nRUN echo no-ca > /f\n"));
    let work = tempfile::tempdir().unwrap();
    let kdir = work.path().join("k");
    let dest = format!("{}/app:1", authed.addr);
    let cache = format!("{}/cache/app", plain.addr);
    let args = [
        "--context",
        ctx.path().to_str().unwrap(),
        "--kaniko-dir",
        kdir.to_str().unwrap(),
        "--destination",
        &dest,
        "--cache",
        "--cache-repo",
        &cache,
    ];
    for round in ["first (cache writes)", "second (cache hits)"] {
        let o = without_cas(&args, config.path());
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{round}:\n{log}");
        assert!(log.contains("no CA certificates found"), "{log}");
        assert!(!log.contains("panicked"), "{log}");
    }
    let pushed = run(Command::new("skopeo")
        .args(["inspect", "--tls-verify=false", "--creds", "kiln:s3cret"])
        .arg(format!("docker://{dest}")));
    assert!(pushed.contains("\"Digest\""), "{pushed}");

    // A registry over TLS: one clear error naming it, no panic.
    let (_dir, _ca, cert, key) = private_ca();
    let tls = Registry::start_tls(&cert, &key);
    let ctx = context_with(&format!("FROM {}/busybox:1\n", tls.addr));
    let o = without_cas(
        &[
            "--context",
            ctx.path().to_str().unwrap(),
            "--kaniko-dir",
            kdir.to_str().unwrap(),
            "--no-push",
            "--image-download-retry=0",
        ],
        config.path(),
    );
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{log}");
    assert_ne!(o.status.code(), Some(101), "a panic's exit code:\n{log}");
    assert!(!log.contains("panicked"), "{log}");
    assert!(log.contains(&tls.addr), "the error names the host:\n{log}");
}
