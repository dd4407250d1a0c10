//! The containers' fixture: the Dockerfiles built in every container, the
//! Kiln image they run, the reference trees (the namespaces rung on the
//! test machine) and the container calls the tests make.

use super::common::*;
use kiln_testkit::*;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// What a step must see, as under kaniko (each check fails the build).
pub(super) const RUN_ENV: &str = r#"FROM {BASE}
RUN echo hi > /hi && ls /proc/self/ >/dev/null && echo proc-ok
RUN echo "supervised by $(cat /proc/$PPID/comm 2>/dev/null)"
RUN test -r /proc/cpuinfo && grep -q MemTotal /proc/meminfo && test -n "$(readlink /proc/self/exe)" && test -e /proc/self/status
RUN for d in null zero full random urandom tty; do test -c /dev/$d || { echo "no /dev/$d"; exit 1; }; done
RUN test "$(head -c 8 /dev/zero | wc -c)" = 8 && test "$(head -c 8 /dev/urandom | wc -c)" = 8 && ! (echo x > /dev/full) 2>/dev/null && echo x > /dev/null
RUN echo s > /dev/shm/s && echo t > /tmp/t && rm /tmp/t && test -w /tmp
RUN test -f /etc/resolv.conf && grep -q localhost /etc/hosts && test -n "$(hostname)"
RUN echo written > /etc/resolv.conf.copy && mkdir -p /app && echo a > /app/a && rm /var/log/old.log
"#;

/// `RUN --mount` of every type: staged in the root the rung runs in, and
/// nothing of it left in the image or in the container.
pub(super) const MOUNTS: &str = r#"FROM {BASE}
RUN --mount=type=cache,target=/var/log,id=logs sh -c 'ls /var/log > /seen-logs; echo x >> /var/log/runs'
RUN --mount=type=secret,id=tok test -s /run/secrets/tok && echo file-ok > /secret-file
RUN --mount=type=bind,source=data,target=/mnt/data cat /mnt/data/f > /bound
RUN --mount=type=tmpfs,target=/scratch sh -c 'echo x > /scratch/y && ls /scratch > /tmpfs-seen'
"#;

/// `RUN --network`: the default reaches a server on the host's loopback;
/// `none` reaches nothing (its own namespace on the full rung, a seccomp
/// filter on the others); `host` is the default again.
pub(super) const NETWORK: &str = r#"FROM {BASE}
RUN wget -q -O /online {HTTP}/f
RUN --network=none sh -c 'if wget -q -O /dev/null {HTTP}/f; then echo reached the network; exit 1; fi; echo offline > /offline'
RUN --network=host wget -q -O /host {HTTP}/f
"#;

/// `RUN --mount=type=ssh`: the step reaches a real agent on the test
/// machine (its socket in the context's directory) through the relay.
pub(super) const SSH: &str = r#"FROM {BASE}
RUN --mount=type=bind,source=agent-keys,target=/usr/local/bin/agent-keys --mount=type=ssh sh -c 'agent-keys > /keys && test "$(cat /keys)" = 1'
"#;

/// `/root` (the image's, where Kiln's own image has none), directories
/// replaced by a file and by a link.
pub(super) const ROOT_AND_REPLACED: &str = r#"FROM {BASE}
RUN echo x > /root/file && mkdir -p /root/.cache/pip && echo y > /root/.cache/pip/z && ls -a /root > /root-listing
RUN mkdir -p /a/d/sub /a/e && echo 1 > /a/d/f && echo 2 > /a/d/sub/g && echo 3 > /a/e/h
RUN rm -rf /a/d && echo now-a-file > /a/d && rm -rf /a/e && ln -s /tmp /a/e
"#;

/// Steps that leave processes behind (holding the output, detached with
/// `setsid`, a daemon that double-forks and writes after the step), and
/// steps that print megabytes: each step ends when its main process does,
/// nothing it started survives it, and nothing written after it ends gets
/// into a layer.
pub(super) const PROCESSES: &str = r#"FROM {BASE}
RUN sleep 120 &
RUN (setsid sleep 121 >/dev/null 2>&1 &) ; true
RUN sh -c '(setsid sh -c "sleep 1; while true; do date > /late; sleep 0.1; done" >/dev/null 2>&1 &)'
RUN sleep 2 && test ! -e /late && echo clean > /clean
RUN seq 1 300000 && seq 1 300000 >&2 && echo printed > /printed
"#;

/// Flags a context needs, its files under `ctx_root`.
pub(super) fn extra_args(name: &str, ctx_root: &str) -> Vec<String> {
    match name {
        "mounts" => vec![
            "--secret".into(),
            format!("id=tok,src={ctx_root}/mounts/token"),
        ],
        "ssh" => vec!["--ssh".into(), format!("default={ctx_root}/ssh/agent.sock")],
        _ => Vec::new(),
    }
}

/// The container's view of `/` outside Kiln's directories and mounts: type,
/// mode, owner and mtime of every entry (`/` and `/kiln`, which holds the
/// work directory, included), and the content of every file. (Directory
/// sizes are left out: on overlayfs they count internal entries.)
pub(super) const SNAPSHOT: &str = "stat -c '%n %F %a %u %g %Y' / /kiln; \
    P='-path /kiln -prune -o -path /ctx -prune -o -path /out -prune -o'; \
    find / -xdev -mindepth 1 $P -exec stat -c '%n %F %a %u %g %Y' {} + | sort; \
    find / -xdev -mindepth 1 $P -type f -exec md5sum {} + | sort";

pub(super) struct Fixture {
    pub(super) engine: DockerEngine,
    /// What the "network" context fetches.
    pub(super) http: StaticHttp,
    /// The agent the "ssh" context reaches.
    pub(super) _agent: Option<SshAgent>,
    pub(super) base: String,
    pub(super) _reg: Registry,
    /// Contexts by name, under one directory mounted at /ctx.
    pub(super) ctx_dir: tempfile::TempDir,
    /// Reference trees: the namespaces rung on the test machine.
    pub(super) reference: BTreeMap<String, BTreeMap<String, Entry>>,
}

pub(super) const IMAGE: &str = "kiln-executor-test:1";

pub(super) fn contexts(base: &str, debian: Option<&str>, http: &str, names: &[&str], dir: &Path) {
    for name in names {
        let ctx = match *name {
            "config" => context_config(),
            "files" => context_files(200),
            "multistage" => context_multistage(),
            "runenv" => context_with(RUN_ENV),
            "rootdir" => context_with(ROOT_AND_REPLACED),
            "processes" => context_with(PROCESSES),
            "network" => context_with(NETWORK),
            "ssh" => {
                let c = context_with(SSH);
                agent_keys_binary(&c.path().join("agent-keys"));
                c
            }
            "mounts" => {
                let c = context_with(MOUNTS);
                write(c.path(), "data/f", "bound\n");
                write(c.path(), "token", "kiln-container-secret\n");
                c
            }
            "leak" => context_with("FROM {BASE}\nRUN echo a > /leak-a && mkdir -p /leak-dir\n"),
            "noleak" => context_with("FROM {BASE}\nRUN test ! -e /leak-a && test ! -e /leak-dir && test ! -e /hi && test ! -e /app && test ! -e /started\n"),
            "slow" => context_with("FROM {BASE}\nRUN touch /started && sleep 61\n"),
            "debian" => debian_context(),
            other => panic!("no context {other}"),
        };
        let to = dir.join(name);
        run(Command::new("cp").arg("-a").arg(ctx.path()).arg(&to));
        let df = std::fs::read_to_string(to.join("Dockerfile")).unwrap();
        std::fs::write(
            to.join("Dockerfile"),
            df.replace("{BASE}", base)
                .replace("{HTTP}", http)
                .replace("{DEBIAN}", debian.unwrap_or("(no Debian base)")),
        )
        .unwrap();
    }
}

pub(super) fn setup(names: &[&str]) -> Fixture {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let http = StaticHttp::start(&[("f", "online\n")]);
    let debian = names.contains(&"debian").then(|| push_debian(&reg));
    let ctx_dir = tempfile::tempdir().unwrap();
    contexts(&base, debian.as_deref(), &http.url, names, ctx_dir.path());
    let agent = names
        .contains(&"ssh")
        .then(|| SshAgent::start(&ctx_dir.path().join("ssh/agent.sock")));
    let mut reference = BTreeMap::new();
    for name in names {
        let extra = extra_args(name, ctx_dir.path().to_str().unwrap());
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let want = reference_tree(&ctx_dir.path().join(name), &extra);
        reference.insert(name.to_string(), want);
    }
    let engine = DockerEngine::start();
    engine.import(
        image_root().path(),
        IMAGE,
        &["ENV PATH=/bin:/kiln KILN_DIR=/kiln/work", "WORKDIR /"],
    );
    Fixture {
        engine,
        http,
        _agent: agent,
        base,
        _reg: reg,
        ctx_dir,
        reference,
    }
}

/// A CA bundle in `root`, as any real executor image has.
pub(super) fn add_ca_bundle(root: &Path) {
    let ca = root.join("etc/ssl/certs");
    std::fs::create_dir_all(&ca).unwrap();
    std::fs::copy(
        "/etc/ssl/certs/ca-certificates.crt",
        ca.join("ca-certificates.crt"),
    )
    .unwrap();
}

/// busybox, and the executor at /kiln/executor with the libraries it links
/// under /kiln/lib (interpreter and rpath set by patchelf): like kaniko's
/// static binary, it depends on nothing in the container's root, which the
/// in-place rung moves aside.
pub(super) fn image_root() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    busybox_rootfs(t.path());
    let exe = env!("CARGO_BIN_EXE_executor");
    let lib = t.path().join("kiln/lib");
    std::fs::create_dir_all(&lib).unwrap();
    // Kiln's own image has no /root (HOME=/root all the same), and its
    // work directory (KILN_DIR) exists.
    std::fs::remove_dir(t.path().join("root")).unwrap();
    std::fs::create_dir_all(t.path().join("kiln/work")).unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o1777);
        std::fs::set_permissions(t.path().join("kiln/work"), open).unwrap();
    }
    let bin = t.path().join("kiln/executor");
    std::fs::copy(exe, &bin).unwrap();
    add_ca_bundle(t.path());
    let ldd = run(Command::new("ldd").arg(exe));
    let mut interp = String::new();
    for path in ldd.split_whitespace().filter(|w| w.starts_with('/')) {
        let name = Path::new(path).file_name().unwrap();
        std::fs::copy(path, lib.join(name)).unwrap();
        if name.to_string_lossy().starts_with("ld-linux") {
            interp = format!("/kiln/lib/{}", name.to_string_lossy());
        }
    }
    run(Command::new("patchelf")
        .args(["--set-interpreter", &interp, "--set-rpath", "/kiln/lib"])
        .arg(&bin));
    add_uidmap(t.path());
    t
}

/// Debian's setuid `newuidmap`/`newgidmap` under /kiln/bin with their
/// libraries, and a range of subordinate ids for the image's user `app`
/// (uid 1000), as Kiln's image ships them (deploy/image/context.sh).
pub(super) fn add_uidmap(root: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let bin = root.join("kiln/bin");
    std::fs::create_dir_all(&bin).unwrap();
    for tool in ["newuidmap", "newgidmap"] {
        let src = Path::new("/usr/bin").join(tool);
        let dst = bin.join(tool);
        std::fs::copy(&src, &dst).expect("uidmap must be installed (.ci/setup)");
        let mut interp = String::new();
        for path in run(Command::new("ldd").arg(&src))
            .split_whitespace()
            .filter(|w| w.starts_with('/'))
        {
            let name = Path::new(path)
                .file_name()
                .unwrap()
                .to_string_lossy()
                .into_owned();
            std::fs::copy(path, root.join("kiln/lib").join(&name)).unwrap();
            if name.starts_with("ld-linux") {
                interp = format!("/kiln/lib/{name}");
            }
        }
        // DT_RPATH, not RUNPATH: it also serves the libraries' own
        // dependencies (libaudit's libcap-ng).
        run(Command::new("patchelf")
            .args([
                "--set-interpreter",
                &interp,
                "--force-rpath",
                "--set-rpath",
                "/kiln/lib",
            ])
            .arg(&dst));
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o4755)).unwrap();
    }
    for f in ["etc/subuid", "etc/subgid"] {
        std::fs::write(root.join(f), "app:100000:65536\n").unwrap();
    }
}

impl Fixture {
    /// Starts an idle container with `args` (capabilities, user, …).
    pub(super) fn container(&self, args: &[&str], out: &Path) -> String {
        self.container_of(IMAGE, args, out)
    }

    /// An idle container of `image`, the contexts at /ctx and `out` at /out.
    pub(super) fn container_of(&self, image: &str, args: &[&str], out: &Path) -> String {
        let mut c = self.engine.cmd();
        c.args(["run", "-d", "--network", "host"])
            .arg("-v")
            .arg(format!("{}:/ctx:ro", self.ctx_dir.path().display()))
            .arg("-v")
            .arg(format!("{}:/out", out.display()))
            .args(args)
            .args([image, "sleep", "3600"]);
        run(&mut c).trim().to_string()
    }

    pub(super) fn exec(&self, id: &str, args: &[&str]) -> Output {
        let mut c = self.engine.cmd();
        c.args(["exec", id]).args(args);
        c.output().expect("docker exec")
    }

    pub(super) fn snapshot(&self, id: &str) -> String {
        let o = self.exec(id, &["sh", "-c", SNAPSHOT]);
        assert_ok(&o);
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Builds context `name` in container `id` into /out/<name>; returns the log.
    pub(super) fn build(&self, id: &str, name: &str, extra: &[&str]) -> (bool, String) {
        let mut args = vec![
            "/kiln/executor".to_string(),
            "--context".into(),
            format!("/ctx/{name}"),
            "--no-push".into(),
            "--insecure-pull".into(),
            "--oci-layout-path".into(),
            format!("/out/{name}"),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = self.exec(id, &a);
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }

    /// Opens the contexts' directory and `dirs` to every user (mode 0777),
    /// for a build as a user other than root.
    pub(super) fn open_to_all(&self, dirs: &[&Path]) {
        use std::os::unix::fs::PermissionsExt;
        for d in [self.ctx_dir.path()].iter().chain(dirs) {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
    }

    /// Asserts that `out/<name>` holds the same filesystem as the reference.
    pub(super) fn assert_same(&self, out: &Path, name: &str, how: &str) {
        assert_tree(out, name, &self.reference[name], how);
    }
}

/// The reference for the context at `ctx`: the namespaces rung, as root,
/// on this machine, with `extra` flags.
pub(super) fn reference_tree(ctx: &Path, extra: &[&str]) -> BTreeMap<String, Entry> {
    let mut args = vec!["--no-push", "--insecure-pull", "--isolation", "namespaces"];
    args.extend_from_slice(extra);
    let (log, img) = build_unpacked(ctx, &args);
    assert!(log.contains("isolation: namespaces"), "{log}");
    without_noise(tree(&img.rootfs()))
}

/// Asserts that the image built into `out/<name>` holds `want`'s files
/// (build-to-build noise aside); returns it unpacked for further checks.
pub(super) fn assert_tree(
    out: &Path,
    name: &str,
    want: &BTreeMap<String, Entry>,
    how: &str,
) -> Unpacked {
    let img = unpack(&format!("oci:{}:latest", out.join(name).display()));
    let ours = without_noise(tree(&img.rootfs()));
    let diffs = tree_diffs(&ours, want, (how, "namespaces"));
    assert!(diffs.is_empty(), "{name} ({how}):\n{}", diffs.join("\n"));
    img
}

pub(super) fn out_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("kiln-out")
        .tempdir()
        .unwrap()
}

/// Builds every context in one container, in a row, and checks the images,
/// the log line naming the rung and that the container is left as it was.
pub(super) fn matrix(f: &Fixture, caps: &[&str], rung: &str, names: &[&str]) {
    let out = out_dir();
    let id = f.container(caps, out.path());
    let before = f.snapshot(&id);
    for name in names {
        let extra = extra_args(name, "/ctx");
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let (ok, log) = f.build(&id, name, &extra);
        assert!(ok, "{name} under {caps:?} failed:\n{log}");
        assert!(log.contains(&format!("isolation: {rung}")), "{log}");
        f.assert_same(out.path(), name, rung);
    }
    // Nothing the builds started is left: the container's own `sleep 3600`
    // is its only process.
    let top = f
        .engine
        .cmd()
        .args(["top", &id, "-eo", "pid,args"])
        .output()
        .unwrap();
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    let procs: Vec<&str> = top.lines().skip(1).collect();
    assert_eq!(procs.len(), 1, "processes left under {caps:?}:\n{top}");
    // What a step wrote into the /out volume went into the image (compared
    // above) and not into the volume.
    assert!(!out.path().join("all.txt").exists() && !out.path().join("listing.txt").exists());
    let after = f.snapshot(&id);
    let (b, a): (Vec<&str>, Vec<&str>) = (before.lines().collect(), after.lines().collect());
    let gone: Vec<&&str> = b.iter().filter(|l| !a.contains(l)).collect();
    let new: Vec<&&str> = a.iter().filter(|l| !b.contains(l)).collect();
    assert!(
        gone.is_empty() && new.is_empty() && b.len() > 100,
        "the container's own files changed under {caps:?}:\nbefore only: {gone:?}\nafter only: {new:?}"
    );
}

/// The statically linked executor `.ci/setup` builds
/// (`deploy/image/static.sh`).
pub(super) fn static_executor() -> PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_executor"))
        .parent()
        .and_then(Path::parent)
        .map(|t| t.join("static/x86_64-unknown-linux-gnu/release/executor"))
        .unwrap();
    assert!(
        p.exists(),
        "{} missing: run `bash .ci/setup` (deploy/image/static.sh builds it)",
        p.display()
    );
    p
}
