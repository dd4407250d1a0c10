//! As a user other than root (uid 1000, no capabilities) on a host whose
//! kernel allows unprivileged user namespaces, as this one does: the
//! executor builds in a user namespace of its own on the namespaces rung
//! (RUN in a private root, never the machine's), and the image is the same,
//! file for file, as the one built as root. What one id cannot hold — a
//! base file owned by another user, `COPY --chown`, `USER` — is an error
//! that says so, never a silently different image.

mod common;
use common::*;
use kiln_testkit::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

/// The executor as uid/gid 1000 with no supplementary groups and no
/// capabilities (setpriv, from util-linux).
fn as_uid_1000(ctx: &Path, work: &Path, layout: &Path) -> Output {
    Command::new("setpriv")
        .args([
            "--reuid=1000",
            "--regid=1000",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(env!("CARGO_BIN_EXE_executor"))
        .env_remove("DOCKER_CONFIG")
        .env("HOME", work)
        .arg("--context")
        .arg(ctx)
        .arg("--kaniko-dir")
        .arg(work)
        .args(["--no-push", "--insecure-pull", "--oci-layout-path"])
        .arg(layout)
        .output()
        .expect("setpriv (util-linux)")
}

/// A directory uid 1000 can write.
fn owned_by_1000() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::os::unix::fs::chown(d.path(), Some(1000), Some(1000)).unwrap();
    d
}

/// A context uid 1000 can read.
fn readable(dockerfile: &str) -> tempfile::TempDir {
    let ctx = context_with(dockerfile);
    write(ctx.path(), "f", "copied\n");
    std::fs::set_permissions(ctx.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    ctx
}

#[test]
fn builds_in_a_user_namespace_of_its_own_and_matches_root() {
    let reg = Registry::start();
    let base = push_root_owned_busybox(&reg);
    let ctx = readable(&format!(
        "FROM {base}\n\
         RUN mkdir -p /a/b && echo 1 > /a/b/f && echo hi > /hi && ls /proc/self/ > /dev/null \
             && head -c 4 /dev/zero > /zeros && id -u > /uid\n\
         RUN rm -rf /a && mkdir /a && echo 2 > /a/g && rm /var/log/old.log\n\
         COPY f /copied\n"
    ));
    let out = owned_by_1000();
    let work = owned_by_1000();
    let o = as_uid_1000(ctx.path(), work.path(), &out.path().join("img"));
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{log}");
    assert!(log.contains("user namespace of its own"), "{log}");
    assert!(log.contains("isolation: namespaces"), "{log}");

    let root_work = tempfile::tempdir().unwrap();
    let root_out = tempfile::tempdir().unwrap();
    must_build(
        ctx.path(),
        root_work.path(),
        &[
            "--no-push",
            "--insecure-pull",
            "--isolation",
            "namespaces",
            "--oci-layout-path",
            root_out.path().join("img").to_str().unwrap(),
        ],
    );
    let ours = unpack(&format!("oci:{}:latest", out.path().join("img").display()));
    let want = unpack(&format!(
        "oci:{}:latest",
        root_out.path().join("img").display()
    ));
    let diffs = tree_diffs(
        &tree(&ours.rootfs()),
        &tree(&want.rootfs()),
        ("uid 1000", "root"),
    );
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
    let uid = std::fs::read_to_string(ours.rootfs().join("uid")).unwrap();
    assert_eq!(uid.trim(), "0");
    assert!(!ours.rootfs().join("a/b").exists() && ours.rootfs().join("a/g").exists());
    assert!(!ours.rootfs().join("var/log/old.log").exists());
}

#[test]
fn ids_one_namespace_cannot_hold_are_clear_errors() {
    let reg = Registry::start();
    let root_owned = push_root_owned_busybox(&reg);
    // The test busybox has /home/app owned by 1000:1000.
    let mixed = push_busybox(&reg, "busybox:mixed-owners");
    for (dockerfile, what) in [
        (format!("FROM {mixed}\nRUN true\n"), "owner 1000:1000"),
        (
            format!("FROM {root_owned}\nCOPY --chown=50:50 f /f\n"),
            "--chown=50:50",
        ),
        (
            format!("FROM {root_owned}\nUSER 50\nRUN true\n"),
            "RUN as 50:",
        ),
    ] {
        let ctx = readable(&dockerfile);
        let out = owned_by_1000();
        let work = owned_by_1000();
        let o = as_uid_1000(ctx.path(), work.path(), &out.path().join("img"));
        let log = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{dockerfile}:\n{log}");
        assert!(
            log.contains(what) && log.contains("holds one id"),
            "{dockerfile}:\n{log}"
        );
        assert!(!out.path().join("img").join("index.json").exists());
    }
}
