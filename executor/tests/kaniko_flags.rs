//! Walks kaniko's flag table (`kiln_executor::kaniko_flags`): every flag,
//! passed as a pipeline would, to a real build. None may be a usage error
//! unless the table refuses it with its reason; accepted-without-effect
//! flags say so in one line; the last of a repeated flag wins.

mod common;
use common::*;
use kiln_executor::kaniko_flags::{Support, KANIKO_FLAGS};

/// A context `FROM scratch` with a file and a config step, and the TLS
/// files some samples name.
fn setup() -> (tempfile::TempDir, tempfile::TempDir) {
    let ctx = context_with("FROM scratch\nARG A\nENV X=1\nCOPY f /f\n");
    write(ctx.path(), "f", "content\n");
    let dir = tempfile::tempdir().unwrap();
    let ok = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=localhost"])
        .arg("-keyout")
        .arg(dir.path().join("key.pem"))
        .arg("-out")
        .arg(dir.path().join("cert.pem"))
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "openssl");
    std::fs::copy(dir.path().join("cert.pem"), dir.path().join("ca.pem")).unwrap();
    std::fs::write(dir.path().join("token"), "secret").unwrap();
    (ctx, dir)
}

#[test]
fn every_kaniko_flag_is_accepted_or_refused_with_its_reason() {
    let (ctx, dir) = setup();
    let d = dir.path().to_str().unwrap();
    let mut walked = 0;
    for k in KANIKO_FLAGS {
        if k.sample.is_empty() {
            continue; // --context: every run below passes it.
        }
        let work = tempfile::tempdir().unwrap();
        let args: Vec<String> = k.sample.iter().map(|a| a.replace("{dir}", d)).collect();
        let mut all: Vec<&str> = args.iter().map(String::as_str).collect();
        all.push("--no-push");
        let out = build(ctx.path(), work.path(), &all);
        let err = String::from_utf8_lossy(&out.stderr);
        let code = out.status.code();
        walked += 1;
        match k.support {
            Support::Refused => {
                assert_eq!(code, Some(2), "--{} must be refused:\n{err}", k.name);
                assert!(
                    err.contains("refused") && err.contains(k.note),
                    "--{}:\n{err}",
                    k.name
                );
            }
            _ => {
                assert!(
                    !err.contains("unexpected argument") && code != Some(2),
                    "--{} {args:?} is a usage error:\n{err}",
                    k.name
                );
                if k.builds_offline {
                    assert_eq!(code, Some(0), "--{} {args:?} did not build:\n{err}", k.name);
                }
                if k.support == Support::Notice {
                    let shown = match k.name {
                        "snapshotMode" => "snapshot-mode",
                        n => n,
                    };
                    assert!(
                        err.contains(&format!("--{shown}: accepted, no effect")),
                        "--{} gives no notice:\n{err}",
                        k.name
                    );
                }
            }
        }
    }
    assert!(walked >= 60, "only {walked} flags walked");
}

#[test]
fn the_last_value_wins_and_booleans_take_pflag_spellings() {
    let (ctx, dir) = setup();
    let work = tempfile::tempdir().unwrap();
    let digest = dir.path().join("digest");
    let out = build(
        ctx.path(),
        work.path(),
        &[
            "--target=nonexistent",
            "--target=0",
            "--no-push=0",
            "--no-push=T",
            "--reproducible=1",
            "--digest-file",
            digest.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let first = std::fs::read_to_string(&digest).unwrap();
    // --reproducible took effect: the same build gives the same digest.
    let out = build(
        ctx.path(),
        work.path(),
        &[
            "--no-push",
            "--reproducible",
            "--digest-file",
            digest.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    assert_eq!(std::fs::read_to_string(&digest).unwrap(), first);
}

#[test]
fn dryrun_plans_without_building() {
    let ctx = context_with(
        "FROM scratch AS base\nARG V=2\nENV A=$V\nWORKDIR /app\nCOPY f .\nFROM base\nUSER 7\n",
    );
    write(ctx.path(), "f", "x");
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("never");
    let out = build(
        ctx.path(),
        work.path(),
        &["--dryrun", "--oci-layout-path", layout.to_str().unwrap()],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ok(&out);
    assert!(stdout.contains("stage base: FROM scratch"), "{stdout}");
    assert!(
        stdout.contains("line 5: COPY f . → copy 1 source(s) to /app/"),
        "{stdout}"
    );
    assert!(stdout.contains("stage 1: FROM base"), "{stdout}");
    assert!(!layout.exists(), "a dry run wrote an image");
}

#[test]
fn cache_without_a_repository_builds_uncached_and_says_so() {
    let (ctx, _dir) = setup();
    let work = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = build(
        ctx.path(),
        work.path(),
        &[
            "--cache=true",
            "--cache-dir",
            cache.path().to_str().unwrap(),
            "--no-push",
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("layers are not cached").count(), 1, "{err}");
}
