//! `RUN --mount` with BuildKit's semantics: cache mounts kept between
//! builds and never in a layer, secrets that appear nowhere but in the
//! command's view, bind mounts from the context, tmpfs; a mount shadows
//! what the image has at its target and leaves it untouched. (The same
//! Dockerfile runs on the in-place rung in `containers.rs`.)

mod common;
use common::*;
use kiln_testkit::*;

fn token() -> String {
    format!("kiln-secret-{:016x}", rand_u64())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    u64::from_le_bytes(b)
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap();
                // Layers are compressed: look inside them too.
                let plain = {
                    let mut v = Vec::new();
                    let _ = std::io::Read::read_to_end(
                        &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                        &mut v,
                    );
                    v
                };
                if [bytes.as_slice(), plain.as_slice()]
                    .iter()
                    .any(|b| b.windows(needle.len()).any(|w| w == needle))
                {
                    out.push(p);
                }
            }
        }
    }
    out
}

#[test]
fn mounts_follow_buildkit_and_leave_nothing_behind() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let secret = token();
    let dir = tempfile::tempdir().unwrap();
    let secret_file = dir.path().join("token");
    std::fs::write(&secret_file, &secret).unwrap();
    let ctx = context_with(&format!(
        r#"FROM {base}
RUN --mount=type=cache,target=/var/log,id=logs sh -c 'ls /var/log > /seen-logs; date +%N >> /var/log/runs'
RUN --mount=type=secret,id=tok test "$(cat /run/secrets/tok)" = "$(cat /run/secrets/tok)" && test -s /run/secrets/tok && echo file-ok > /secret-file
RUN --mount=type=secret,id=tok,env=TOK sh -c 'test -n "$TOK" && echo env-ok > /secret-env'
RUN --mount=type=bind,source=data,target=/mnt/data cat /mnt/data/f > /bound && echo changed > /mnt/data/f
RUN --mount=type=tmpfs,target=/scratch sh -c 'echo x > /scratch/y && ls /scratch > /tmpfs-seen'
RUN --mount=type=tmpfs,target=/small,size=1m sh -c 'if head -c 2000000 /dev/zero > /small/big; then exit 1; fi; rm /small/big; head -c 500000 /dev/zero > /small/fits && echo limited > /tmpfs-limit'
"#
    ));
    write(ctx.path(), "data/f", "from the context\n");
    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let report = out.path().join("report.json");
    let secret_flag = format!("id=tok,src={}", secret_file.display());
    let args = [
        "--no-push",
        "--insecure-pull",
        "-v",
        "trace",
        "--secret",
        secret_flag.as_str(),
        "--oci-layout-path",
        layout.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    let log1 = must_build(ctx.path(), work.path(), &args);
    // The same work dir (a pod's emptyDir): the cache mount is kept.
    let log2 = must_build(ctx.path(), work.path(), &args);
    let img = unpack(&format!("oci:{}:latest", layout.display()));
    let root = img.rootfs();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();

    // Cache: the second build saw the first one's file; the image keeps its
    // own /var/log, untouched, and no cache content.
    assert!(read("seen-logs").contains("runs"), "{}", read("seen-logs"));
    assert!(!read("seen-logs").contains("old.log"));
    assert_eq!(read("var/log/old.log"), "old\n");
    assert!(!root.join("var/log/runs").exists());
    // Secrets: the command saw them; the image has no /run/secrets.
    assert_eq!(read("secret-file"), "file-ok\n");
    assert_eq!(read("secret-env"), "env-ok\n");
    assert!(!root.join("run/secrets").exists());
    // Bind: content read, writes discarded, no mount point left.
    assert_eq!(read("bound"), "from the context\n");
    assert!(!root.join("mnt").exists());
    assert_eq!(
        std::fs::read_to_string(ctx.path().join("data/f")).unwrap(),
        "from the context\n"
    );
    // tmpfs: empty at start, gone after.
    assert_eq!(read("tmpfs-seen"), "y\n");
    assert!(!root.join("scratch").exists());
    // tmpfs size: a real limit on the namespaces rung (this machine's).
    assert_eq!(read("tmpfs-limit"), "limited\n");
    assert!(!root.join("small").exists());

    // The secret's value is nowhere: blobs, layout, report, logs at trace.
    let found = files_containing(out.path(), secret.as_bytes());
    assert!(found.is_empty(), "secret found in {found:?}");
    for log in [&log1, &log2] {
        assert!(!log.contains(&secret), "secret in the log");
    }
}

#[test]
fn mount_errors_name_the_line() {
    let work = tempfile::tempdir().unwrap();
    for (df, line, word) in [
        (
            "FROM scratch\nENV A=1\nRUN --mount=type=volume,target=/v true\n",
            "Dockerfile:3",
            "volume",
        ),
        (
            "FROM scratch\nRUN --mount=type=secret,id=missing,required=true true\n",
            "Dockerfile:2",
            "missing",
        ),
    ] {
        let ctx = context_with(df);
        let out = build(ctx.path(), work.path(), &["--no-push"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains(line) && err.contains(word), "{err}");
    }
}

/// Shared cache mounts: a "package manager" RUN fetches what its cache
/// mount lacks. Pod A (fresh work dir) fetches everything and saves the
/// mount to the cache repository; pod B (fresh work dir, a change above the
/// RUN so it runs again) restores it and fetches nothing; pod C needs one
/// more file and uploads only that one.
#[test]
fn cache_mounts_follow_the_build_from_pod_to_pod() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let files: Vec<(String, String)> = (1..=22)
        .map(|i| (format!("f{i}"), format!("package {i}\n")))
        .collect();
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let http = StaticHttp::start(&refs);
    let cache = Registry::start();
    let repo = format!("{}/cache/app", cache.addr);
    let pod = |stamp: &str, n: u32, extra: &[&str]| {
        let ctx = context_with(&format!(
            "FROM {base}\nENV STAMP={stamp}\n\
             RUN --mount=type=cache,target=/var/cache/pkgs sh -c 'for i in $(seq 1 {n}); do \
             [ -f /var/cache/pkgs/f$i ] || wget -q -O /var/cache/pkgs/f$i {}/f$i; done; \
             cat /var/cache/pkgs/f{n} > /last'\n",
            http.url
        ));
        let before = http.gets();
        let (r, _) = cached_build_report(ctx.path(), &repo, extra);
        (http.gets() - before, r["cache_mounts"][0].clone())
    };
    let (fetched, m) = pod("a", 20, &[]);
    assert_eq!(fetched, 20, "{m}");
    assert_eq!(m["saved_files"], 20, "{m}");
    assert!(m["save_seconds"].as_f64().unwrap() > 0.0, "{m}");
    let (fetched, m) = pod("b", 20, &[]);
    assert_eq!(fetched, 0, "pod B fetched again: {m}");
    assert_eq!(
        (m["restored_files"].as_u64(), m["unchanged"].as_bool()),
        (Some(20), Some(true)),
        "{m}"
    );
    assert!(m["restore_seconds"].as_f64().unwrap() > 0.0, "{m}");
    // Over the size cap: kept locally, not saved, and the report says why.
    let (fetched, m) = pod("d", 22, &["--cache-mount-max-size", "100B"]);
    assert_eq!(fetched, 2, "{m}");
    assert_eq!(m["saved_files"], 0, "{m}");
    assert!(
        m["not_saved"]
            .as_str()
            .unwrap()
            .contains("--cache-mount-max-size"),
        "{m}"
    );
    let (fetched, m) = pod("c", 21, &[]);
    assert_eq!(fetched, 1, "{m}");
    assert_eq!(m["saved_files"], 1, "only the new file is uploaded: {m}");
}

/// `RUN --mount=type=ssh` against a real `ssh-agent`: the step lists the
/// agent's key through `SSH_AUTH_SOCK` (BuildKit's default target), a
/// second agent id at a target of its own; nothing of either is left in
/// the image, its config or any artifact; without `--ssh` a required mount
/// fails naming the line and an optional one is simply absent.
#[test]
fn ssh_mounts_reach_the_agent_and_leave_nothing() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let sockets = tempfile::tempdir().unwrap();
    let agent = SshAgent::start(&sockets.path().join("agent.sock"));
    let ctx = context_with(&format!(
        r#"FROM {base}
RUN --mount=type=bind,source=agent-keys,target=/usr/local/bin/agent-keys --mount=type=ssh sh -c 'agent-keys > /keys && echo "$SSH_AUTH_SOCK" > /sock-path'
RUN --mount=type=bind,source=agent-keys,target=/usr/local/bin/agent-keys --mount=type=ssh,id=deploy,target=/tmp/deploy.sock,mode=0660 sh -c 'agent-keys > /deploy-keys && stat -c %a /tmp/deploy.sock > /deploy-mode'
RUN --mount=type=ssh,id=absent sh -c 'test -z "$SSH_AUTH_SOCK" && echo none > /absent'
RUN test ! -e /run/buildkit && test ! -e /tmp/deploy.sock
"#
    ));
    agent_keys_binary(&ctx.path().join("agent-keys"));
    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let report = out.path().join("report.json");
    let deploy = format!("deploy={}", agent.socket.display());
    let mut exe = executor();
    exe.arg("--context")
        .arg(ctx.path())
        .arg("--kaniko-dir")
        .arg(work.path())
        .env("SSH_AUTH_SOCK", &agent.socket)
        .args([
            "--no-push",
            "--insecure-pull",
            "-v",
            "trace",
            "--ssh",
            "default",
            "--ssh",
            &deploy,
            "--oci-layout-path",
            layout.to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
        ]);
    let o = exe.output().unwrap();
    let log = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(o.status.success(), "{log}");
    let img = unpack(&format!("oci:{}:latest", layout.display()));
    let root = img.rootfs();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap();
    assert_eq!(read("keys"), "1\n", "{log}");
    assert_eq!(read("sock-path"), "/run/buildkit/ssh_agent.0\n");
    assert_eq!(read("deploy-keys"), "1\n");
    assert_eq!(read("deploy-mode"), "660\n");
    assert_eq!(read("absent"), "none\n");
    assert!(!root.join("run/buildkit").exists() && !root.join("usr/local/bin/agent-keys").exists());
    assert!(!img.run_config()["Env"]
        .to_string()
        .contains("SSH_AUTH_SOCK"));
    let key_line = agent.private_key.lines().nth(1).unwrap();
    assert!(files_containing(out.path(), key_line.as_bytes()).is_empty());
    assert!(!log.contains(key_line));

    // Without --ssh: `required` fails naming the line.
    let ctx = context_with(&format!(
        "FROM {base}\nRUN true\nRUN --mount=type=ssh,required=true true\n"
    ));
    let out = build(ctx.path(), work.path(), &["--no-push", "--insecure-pull"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Dockerfile:3") && err.contains("--ssh default"),
        "{err}"
    );
}

/// A pod killed (SIGKILL) while it saves a cache mount: the previous save
/// stays whole and readable, since the tag that names a save is pushed only
/// after all its files are in.
#[test]
fn a_save_killed_midway_leaves_the_previous_one_readable() {
    use std::io::BufRead;
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let cache = Registry::start();
    let repo = format!("{}/cache/app", cache.addr);
    let args = |report: &std::path::Path| -> Vec<String> {
        [
            "--no-push",
            "--insecure-pull",
            "--insecure-registry",
            &cache.addr,
            "--cache",
            "--cache-repo",
            &repo,
            "--report",
            report.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec()
    };
    let pod = |run: &str| {
        let ctx = context_with(&format!(
            "FROM {base}\nRUN --mount=type=cache,target=/c {run}\n"
        ));
        let work = tempfile::tempdir().unwrap();
        let report = work.path().join("report.json");
        let mut c = executor();
        c.arg("--context")
            .arg(ctx.path())
            .arg("--kaniko-dir")
            .arg(work.path().join("k"))
            .args(args(&report));
        (ctx, work, report, c)
    };
    let (_c, _w, report, mut a) = pod("sh -c 'echo one > /c/marker'");
    assert_ok(&a.output().unwrap());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["cache_mounts"][0]["saved_files"], 1, "{r}");

    // Pod B writes 75 MB of new content and is killed as its save starts.
    let (_c, _w, _r, mut b) = pod(
        "sh -c 'echo two > /c/marker; i=0; while [ $i -lt 300 ]; do \
         head -c 262144 /dev/urandom > /c/big$i; i=$((i+1)); done'",
    );
    let mut child = b
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("executor");
    let mut seen = Vec::new();
    for line in std::io::BufReader::new(child.stderr.take().unwrap())
        .lines()
        .map_while(Result::ok)
    {
        let saving = line.contains("saving (");
        seen.push(line);
        if saving {
            child.kill().unwrap();
            break;
        }
    }
    let status = child.wait().unwrap();
    assert!(
        !status.success(),
        "pod B was not killed:\n{}",
        seen.join("\n")
    );
    assert!(!seen.iter().any(|l| l.contains(": saved,")), "{seen:?}");

    // Pod C, fresh: restores pod A's save, whole.
    let (_c, _w, report, mut c) = pod("sh -c 'cat /c/marker > /seen && ls /c | wc -l > /count'");
    assert_ok(&c.output().unwrap());
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    assert_eq!(r["cache_mounts"][0]["restored_files"], 1, "{r}");
}

/// Through Kiln's cache server: a cache mount saved under a scope and
/// restored by the next pod shows in the server's metrics by scope.
#[test]
fn the_cache_server_counts_cache_mounts_by_scope() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let server = CacheServer::start(&cache_server_bin(), None, &[], &[]);
    let repo = format!("{}/cache/app", server.addr);
    let ctx = context_with(&format!(
        "FROM {base}\nARG STAMP\n\
         RUN --mount=type=cache,target=/c sh -c 'test -f /c/f || head -c 1000 /dev/zero > /c/f'\n"
    ));
    for stamp in ["a", "b"] {
        let arg = format!("STAMP={stamp}");
        let scope = ["--cache-mount-scope", "feature/x", "--build-arg", &arg];
        cached_build_report(ctx.path(), &repo, &scope);
    }
    let m = server.metrics();
    let scoped = ["repo=\"cache/app\"", "scope=\"feature-x\""];
    let with = |extra: &'static str| {
        let mut l = scoped.to_vec();
        l.push(extra);
        l
    };
    assert_eq!(
        metric_sum(
            &m,
            "kiln_cache_mount_restores_total",
            &with("result=\"miss\"")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(
            &m,
            "kiln_cache_mount_restores_total",
            &with("result=\"hit\"")
        ),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "kiln_cache_mount_saves_total", &scoped),
        1.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "kiln_cache_mount_restored_bytes_total", &scoped),
        1000.0,
        "{m}"
    );
    assert_eq!(
        metric_sum(&m, "kiln_cache_mount_size_bytes", &scoped),
        1000.0,
        "{m}"
    );
}
