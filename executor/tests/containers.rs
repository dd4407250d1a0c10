//! The executor inside real containers started by Docker Engine, as kaniko's
//! users run it: the engine's default capabilities and seccomp profile,
//! CRI-O's smaller capability set, `CAP_SYS_ADMIN` with the work dir on the
//! container's overlay, a non-root user and a read-only root; busybox bases
//! and a real Debian one (apt, dpkg, pip, useradd). Every image is
//! compared, file for file, with the full (namespaces) rung's build of the
//! same Dockerfile on the test machine; the container's own files must be the
//! same after the builds as before. The in-place rung only ever runs inside
//! these containers.

mod common;
#[path = "containers/fixture.rs"]
mod fixture;
use fixture::*;
use kiln_testkit::*;
use std::path::{Path, PathBuf};
use std::process::Command;

const CRIO_CAPS: [&str; 20] = [
    "--cap-drop",
    "ALL",
    "--cap-add",
    "CHOWN",
    "--cap-add",
    "DAC_OVERRIDE",
    "--cap-add",
    "FSETID",
    "--cap-add",
    "FOWNER",
    "--cap-add",
    "SETGID",
    "--cap-add",
    "SETUID",
    "--cap-add",
    "SETPCAP",
    "--cap-add",
    "NET_BIND_SERVICE",
    "--cap-add",
    "KILL",
];

#[test]
fn engine_default_capabilities_build_in_place() {
    let names = [
        "runenv",
        "config",
        "files",
        "multistage",
        "leak",
        "noleak",
        "mounts",
        "network",
        "ssh",
        "rootdir",
        "processes",
        "debian",
    ];
    let f = setup(&names);
    matrix(&f, &[], "in-place", &names);
    // The reason names what made the full rung unavailable.
    let out = out_dir();
    let id = f.container(&[], out.path());
    let (ok, log) = f.build(&id, "runenv", &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("namespaces: unshare(")
            && log.contains("EPERM")
            && log.contains("CAP_SYS_ADMIN"),
        "{log}"
    );
    // The step's supervisor was forked by the spawner made at start-up
    // (isolation/spawner.rs), not by the executor: its cost does not grow
    // with the executor's memory.
    assert!(log.contains("supervised by kiln-spawner"), "{log}");
}

#[test]
fn crio_capabilities_build_in_place() {
    let names = [
        "runenv",
        "config",
        "files",
        "multistage",
        "rootdir",
        "processes",
        "debian",
    ];
    let f = setup(&names);
    matrix(&f, &CRIO_CAPS, "in-place", &names);
}

#[test]
fn sys_admin_with_work_dir_on_overlay_uses_the_full_rung() {
    let names = ["runenv", "config", "processes"];
    let f = setup(&names);
    matrix(&f, &["--cap-add", "SYS_ADMIN"], "namespaces", &names);
    let out = out_dir();
    let id = f.container(&["--cap-add", "SYS_ADMIN"], out.path());
    let (ok, log) = f.build(&id, "runenv", &[]);
    assert!(ok, "{log}");
    assert!(log.contains("overlayfs") && log.contains("tmpfs"), "{log}");
}

#[test]
fn read_only_root_builds_with_chroot() {
    // Without /proc, the RUN-environment Dockerfile cannot pass here.
    let names = [
        "config",
        "files",
        "multistage",
        "mounts",
        "network",
        "ssh",
        "processes",
    ];
    let f = setup(&names);
    let caps = ["--read-only", "--tmpfs", "/kiln/work:exec,mode=755"];
    matrix(&f, &caps, "chroot", &names);
    // Root steps are confined to their root with Landlock: the engine's
    // default seccomp profile lets the executor use it.
    let out = out_dir();
    let id = f.container(&caps, out.path());
    let (ok, log) = f.build(&id, "config", &[]);
    assert!(ok, "{log}");
    assert!(!log.contains("Landlock is not available"), "{log}");
}

#[test]
fn non_root_without_user_namespaces_gets_one_clear_error() {
    let names = ["config"];
    let f = setup(&names);
    let out = out_dir();
    let id = f.container(&["-u", "1000"], out.path());
    let (ok, log) = f.build(&id, "config", &[]);
    assert!(!ok, "{log}");
    assert!(log.contains("uid 1000"), "{log}");
    assert!(
        log.contains("hostUsers: false") && log.contains("runAsUser: 0"),
        "{log}"
    );
    // It tried a user namespace of its own; the engine's seccomp refused.
    assert!(
        log.contains("unshare(CLONE_NEWUSER) refused: EPERM"),
        "{log}"
    );
    assert!(!log.contains("Permission denied"), "{log}");
    assert!(!PathBuf::from(out.path()).join("config").exists());
}

/// `-u 1000` where the seccomp profile allows user namespaces but
/// `no_new_privs` keeps the setuid id-mapping helpers from working: the
/// build runs in a namespace of Kiln's own holding one id, on the
/// namespaces rung, and the image is the namespaces rung's as root, file
/// for file.
#[test]
fn non_root_with_user_namespaces_allowed_builds() {
    let f = setup(&[]);
    // A base one id can hold (every file root's), and RUN checks of the
    // environment: /proc, devices, /dev/shm, a directory replaced.
    let base = push_root_owned_busybox(&f._reg);
    let ctx = f.ctx_dir.path().join("userns");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {base}\n\
             RUN ls /proc/self/fd > /dev/null && head -c 4 /dev/urandom > /dev/null \
                 && echo ok > /dev/shm/x && mkdir -p /a/b && echo 1 > /a/b/f && id -u > /uid\n\
             RUN rm -rf /a && mkdir /a && echo 2 > /a/g\n"
        ),
    )
    .unwrap();
    let out = out_dir();
    f.open_to_all(&[&ctx, out.path()]);
    let want = reference_tree(&ctx, &[]);
    let args = [
        "-u",
        "1000",
        "--security-opt",
        "seccomp=unconfined",
        "--security-opt",
        "no-new-privileges",
        "--tmpfs",
        "/kiln/work:exec,mode=1777",
    ];
    let id = f.container(&args, out.path());
    let (ok, log) = f.build(&id, "userns", &[]);
    assert!(ok, "{log}");
    assert!(log.contains("user namespace of its own"), "{log}");
    assert!(
        log.contains("one id in Kiln's user namespace: /kiln/bin/newuidmap"),
        "{log}"
    );
    assert!(
        log.contains("one id: files owned by other ids cannot be built"),
        "{log}"
    );
    assert!(log.contains("isolation: namespaces"), "{log}");
    let ours = assert_tree(out.path(), "userns", &want, "uid 1000");
    assert_eq!(
        std::fs::read_to_string(ours.rootfs().join("uid"))
            .unwrap()
            .trim(),
        "0"
    );
}

/// `-u 1000` with user namespaces allowed and the setuid helpers working:
/// Kiln maps the range /etc/subuid and /etc/subgid give `app`, so a base
/// with files of several owners, `COPY --chown`, `chown` to other ids and
/// `USER` for RUN build — the image is the namespaces rung's as root.
///
/// `--cap-add SYS_ADMIN` only widens the bounding set (a uid-1000 process
/// has no effective capability, so Kiln still takes the user-namespace
/// path): on this kernel (6.18) newuidmap's write of a range is refused
/// without it, by Debian's shadow 4.13 and 4.17 alike (reproduced outside
/// any container by dropping it from the bounding set); Kiln then falls
/// back to one id, which `non_root_with_user_namespaces_allowed_builds`
/// covers.
#[test]
fn non_root_with_subordinate_ids_builds_other_owners() {
    use std::os::unix::fs::PermissionsExt;
    let f = setup(&[]);
    let ctx = f.ctx_dir.path().join("subids");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(ctx.join("f"), "copied\n").unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\n\
             COPY --chown=1000:50 f /home/app/f\n\
             RUN mkdir /data && chown 2000:3000 /data \
                 && echo 'web:x:1001:1001::/home/web:/bin/sh' >> /etc/passwd \
                 && mkdir -p /home/web && chown -R web:1001 /home/web && ls -ln /home/app > /owners\n\
             USER app\n\
             RUN id -u > /tmp/uid && echo mine > /home/app/mine\n\
             USER root\n\
             RUN chown 65534:65534 /tmp/uid\n",
            f.base
        ),
    )
    .unwrap();
    std::fs::set_permissions(ctx.join("f"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = out_dir();
    f.open_to_all(&[&ctx, out.path()]);
    let want = reference_tree(&ctx, &[]);
    let args = [
        "-u",
        "1000",
        "--security-opt",
        "seccomp=unconfined",
        "--cap-add",
        "SYS_ADMIN",
        "--tmpfs",
        "/kiln/work:exec,mode=1777",
    ];
    let id = f.container(&args, out.path());
    let (ok, log) = f.build(&id, "subids", &[]);
    assert!(ok, "{log}");
    assert!(
        log.contains("uids 0-65536 and gids 0-65536 mapped by newuidmap"),
        "{log}"
    );
    assert!(log.contains("isolation: namespaces"), "{log}");
    let ours = assert_tree(out.path(), "subids", &want, "uid 1000 with subordinate ids");
    // The owners are really other ids (the comparison above would also
    // pass if both had lost them).
    use std::os::unix::fs::MetadataExt;
    let owner = |p: &str| {
        let m = std::fs::symlink_metadata(ours.rootfs().join(p)).unwrap();
        (m.uid(), m.gid())
    };
    assert_eq!(owner("data"), (2000, 3000));
    assert_eq!(owner("home/app/f"), (1000, 50));
    assert_eq!(owner("home/app/mine"), (1000, 1000));
    assert_eq!(owner("tmp/uid"), (65534, 65534));
    assert_eq!(
        std::fs::read_to_string(ours.rootfs().join("tmp/uid"))
            .unwrap()
            .trim(),
        "1000"
    );
}

#[test]
fn a_killed_in_place_build_is_put_back_by_the_next_one() {
    let names = ["noleak", "slow"];
    let f = setup(&names[..1]);
    contexts(&f.base, None, &f.http.url, &names[1..], f.ctx_dir.path());
    let out = out_dir();
    let id = f.container(&[], out.path());
    // Credentials in the container's own root ($HOME/.docker): the dead build
    // spared them, so must its recovery.
    let o = f.exec(
        &id,
        &[
            "sh",
            "-c",
            "mkdir -p /root/.docker && echo '{}' > /root/.docker/config.json",
        ],
    );
    assert!(o.status.success());
    let before = f.snapshot(&id);
    assert!(before.contains("/root/.docker/config.json"));
    // Start the slow build and SIGKILL the executor while its RUN runs (the
    // container's own files are aside then).
    let mut slow = f.engine.cmd();
    slow.args([
        "exec",
        &id,
        "/kiln/executor",
        "--context",
        "/ctx/slow",
        "--no-push",
        "--insecure-pull",
    ]);
    let mut child = slow
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let o = f.exec(&id, &["test", "-e", "/started"]);
        if o.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the slow RUN never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    run(Command::new("pkill").args(["-KILL", "-f", "/kiln/executor --context /ctx/slow"]));
    let _ = child.wait();
    // The step's processes die with the executor (its supervisor is told).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while Command::new("pgrep")
        .args(["-f", "sleep 61"])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the killed build's step outlived it"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let (ok, log) = f.build(&id, "noleak", &[]);
    assert!(ok, "{log}");
    assert!(log.contains("crashed build"), "{log}");
    assert_eq!(
        before,
        f.snapshot(&id),
        "the container's files were not put back"
    );
}

/// `--cache-repo oci:/cache` on a volume of the build container, under the
/// engine's defaults (the in-place rung): the cache is written in the
/// background while later steps run, and none of it may reach the image.
#[test]
fn an_oci_cache_on_a_volume_never_enters_the_image() {
    let names = ["cachevol"];
    let f = setup(&[]);
    let ctx = f.ctx_dir.path().join("cachevol");
    std::fs::create_dir_all(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {}\n\
             RUN head -c 30000000 /dev/urandom > /big\n\
             RUN sleep 1 && echo a > /a\n\
             RUN sleep 1 && echo b > /b\n",
            f.base
        ),
    )
    .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = out_dir();
    let volume = format!("{}:/cache", cache.path().display());
    let id = f.container(&["-v", &volume], out.path());
    let (ok, log) = f.build(&id, names[0], &["--cache", "--cache-repo", "oci:/cache"]);
    assert!(ok, "{log}");
    assert!(log.contains("isolation: in-place"), "{log}");
    assert!(!log.contains("inside a volume"), "{log}");
    let img = unpack(&format!(
        "oci:{}:latest",
        out.path().join(names[0]).display()
    ));
    let root = img.rootfs();
    assert!(!root.join("cache").exists(), "{log}");
    assert_eq!(std::fs::read_to_string(root.join("b")).unwrap(), "b\n");
    // The cache itself was written, into the volume.
    let entries = std::fs::read_dir(cache.path().join("entries"))
        .unwrap()
        .count();
    assert!(entries >= 3, "{entries} entries: {log}");
}

/// kaniko's documented way to add tools: `/kaniko/executor` copied alone
/// into an image of one's own, here a distro-like root with its own
/// `/lib` (the glibc of this machine, as a Debian image has). The static
/// executor needs nothing from that root, so under the engine's defaults
/// it takes the in-place rung (a dynamically linked one would use that
/// `/lib` and be refused it), and the image equals the namespaces rung's.
#[test]
fn a_static_executor_copied_into_a_distro_image_builds_in_place() {
    let names = ["runenv", "config"];
    let f = setup(&names);
    let exe = static_executor();
    let file = run(Command::new("file").arg(&exe));
    assert!(
        file.contains("statically linked") || file.contains("static-pie"),
        "{file}"
    );
    let root = tempfile::tempdir().unwrap();
    busybox_rootfs(root.path());
    // The root's own C library, as in a distro image.
    for lib in ["lib/x86_64-linux-gnu", "lib64"] {
        let from = Path::new("/").join(lib);
        if from.exists() {
            std::fs::create_dir_all(root.path().join(lib).parent().unwrap()).unwrap();
            run(Command::new("cp")
                .arg("-a")
                .arg(&from)
                .arg(root.path().join(lib)));
        }
    }
    let kaniko = root.path().join("kaniko");
    std::fs::create_dir_all(&kaniko).unwrap();
    std::fs::create_dir_all(root.path().join("kiln/work")).unwrap();
    std::fs::copy(&exe, kaniko.join("executor")).unwrap();
    add_ca_bundle(root.path());
    let image = "kiln-static-test:1";
    // The work directory where the other tests keep it (the snapshot
    // leaves /kiln out: cache mounts persist there between builds).
    f.engine.import(
        root.path(),
        image,
        &["ENV PATH=/bin KILN_DIR=/kiln/work", "WORKDIR /"],
    );
    let out = out_dir();
    let id = f.container_of(image, &[], out.path());
    let before = f.snapshot(&id);
    for name in names {
        let args = [
            "/kaniko/executor",
            "--context",
            &format!("/ctx/{name}"),
            "--no-push",
            "--insecure-pull",
            "--oci-layout-path",
            &format!("/out/{name}"),
        ];
        let o = f.exec(&id, &args);
        let log = String::from_utf8_lossy(&o.stderr);
        assert!(o.status.success(), "{name}:\n{log}");
        assert!(log.contains("isolation: in-place"), "{name}:\n{log}");
        f.assert_same(out.path(), name, "static executor, in-place");
    }
    assert_eq!(before, f.snapshot(&id), "the container's files changed");
}
