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

/// Asserts that a finished command succeeded, showing its stderr if not.
pub fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn must_build(context: &Path, work: &Path, args: &[&str]) -> String {
    let out = build(context, work, args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "executor failed:\n{err}");
    err
}

/// A fresh build context holding only this Dockerfile (more files can be
/// written into it).
pub fn context_with(dockerfile: &str) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write(ctx.path(), "Dockerfile", dockerfile);
    ctx
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
    let layout = out.path().join("oci");
    let mut all = vec!["--oci-layout-path", layout.to_str().unwrap()];
    all.extend_from_slice(args);
    let work = tempfile::tempdir().unwrap();
    let log = must_build(context, work.path(), &all);
    (
        log,
        kiln_testkit::unpack(&format!("oci:{}:latest", layout.display())),
    )
}

/// Builds `context` without pushing (the base pulled over plain HTTP) into
/// the OCI layout `layout`, in a work dir of its own, with `extra` flags;
/// returns the log.
pub fn build_to_layout(context: &Path, layout: &Path, extra: &[&str]) -> String {
    let mut all = vec![
        "--no-push",
        "--insecure-pull",
        "--oci-layout-path",
        layout.to_str().unwrap(),
    ];
    all.extend_from_slice(extra);
    let work = tempfile::tempdir().unwrap();
    must_build(context, work.path(), &all)
}

/// Config instructions, ARGs, USER, WORKDIR and RUN semantics (`{BASE}` in
/// its Dockerfile stands for the base image).
pub fn context_config() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        r#"# syntax=docker/dockerfile:1
ARG GREETING=hello
FROM {BASE}
ARG GREETING
ARG LATE=late-default
ENV APP_HOME=/opt/app \
    MODE="two words"
LABEL org.example.name="kiln test" version=1
WORKDIR $APP_HOME
RUN echo "$GREETING $MODE" > greeting.txt && mkdir -p data && echo x > data/x
USER app
RUN id -u > /tmp/whoami && touch /home/app/made-by-app
USER root
EXPOSE 8080 9090/udp
VOLUME ["/data"]
STOPSIGNAL SIGTERM
SHELL ["/bin/sh", "-c"]
RUN echo ${LATE:-none} ${UNSET:-fallback} ${APP_HOME:+set} > /opt/app/subst.txt
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo hi"]
"#,
    );
    ctx
}

/// COPY/ADD, whiteouts, modes, owners, links, fifos; `many` files in `src/many`.
pub fn context_files(many: usize) -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        r#"FROM {BASE}
COPY src/ /app/src/
COPY --chown=app:staff --chmod=0640 secret.txt /app/
COPY script.sh /usr/local/bin/
RUN rm -rf /var/log && mkdir -p /var/log && echo new > /var/log/new.log
RUN rm /etc/os-release && ln -s /app/src/a.txt /app/link && ln /app/src/a.txt /app/hard
RUN mkdir -p /opt/empty /opt/x/y && chmod 0700 /opt/x && chown 1000:50 /opt/x/y && mkfifo /opt/fifo
RUN chmod 4755 /usr/local/bin/script.sh
ADD archive.tar /unpacked/
"#,
    );
    write(ctx.path(), "src/a.txt", "a\n");
    for i in 0..many {
        write(
            ctx.path(),
            &format!("src/many/d{}/f{i}", i % 25),
            &format!("{i}\n"),
        );
    }
    write(ctx.path(), "src/nested/b.txt", "b\n");
    write(ctx.path(), "secret.txt", "s3cret\n");
    write(ctx.path(), "script.sh", "#!/bin/sh\necho hi\n");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        ctx.path().join("script.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    // An archive for ADD, made with the system tar.
    let a = tempfile::tempdir().unwrap();
    write(a.path(), "inner/file.txt", "inside\n");
    kiln_testkit::run(
        std::process::Command::new("tar")
            .arg("-C")
            .arg(a.path())
            .arg("-cf")
            .arg(ctx.path().join("archive.tar"))
            .arg("inner"),
    );
    ctx
}

/// Multi-stage with an unused stage and a `.dockerignore`.
pub fn context_multistage() -> tempfile::TempDir {
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        r#"FROM {BASE} AS build
WORKDIR /src
COPY . .
RUN set -e; mkdir -p /out; cat keep/*.txt > /out/all.txt; ls -R . > /out/listing.txt

FROM {BASE} AS unused
RUN exit 1

FROM {BASE}
COPY --from=build /out/ /result/
RUN cat /result/all.txt
"#,
    );
    write(ctx.path(), "keep/1.txt", "one\n");
    write(ctx.path(), "keep/2.txt", "two\n");
    write(ctx.path(), "keep/skip.log", "no\n");
    write(ctx.path(), "node_modules/x/index.js", "no\n");
    write(ctx.path(), "docs/a/secret.md", "no\n");
    write(ctx.path(), "docs/readme.md", "yes\n");
    write(
        ctx.path(),
        ".dockerignore",
        "**/*.log\nnode_modules\ndocs/**/secret.md\n!keep/important.log\n",
    );
    write(ctx.path(), "keep/important.log", "kept\n");
    ctx
}

/// The config fields the comparisons look at; buildah's comparison leaves
/// out the last three (Docker's own fields, which it does not keep).
pub const CONFIG_FIELDS: [&str; 12] = [
    "Env",
    "Cmd",
    "Entrypoint",
    "WorkingDir",
    "User",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "StopSignal",
    "Healthcheck",
    "Shell",
    "OnBuild",
];

/// The config fields a Dockerfile sets, normalised for comparing builders:
/// empty and absent are the same; buildah's version label is dropped.
pub fn config_fields(v: &serde_json::Value, fields: &[&str]) -> serde_json::Value {
    let c = &v["config"];
    let mut out = serde_json::Map::new();
    for k in fields {
        let mut val = c.get(*k).cloned().unwrap_or(serde_json::Value::Null);
        if let Some(m) = val.as_object_mut() {
            m.remove("io.buildah.version");
        }
        let val = match &val {
            serde_json::Value::String(s) if s.is_empty() => serde_json::Value::Null,
            serde_json::Value::Object(m) if m.is_empty() => serde_json::Value::Null,
            serde_json::Value::Array(a) if a.is_empty() => serde_json::Value::Null,
            _ => val,
        };
        out.insert(k.to_string(), val);
    }
    serde_json::Value::Object(out)
}

/// Kiln's own images, built by Kiln from this build's binaries
/// (`deploy/image/context.sh` + `deploy/Containerfile`, no network): one
/// `docker save`-style tar per target, `<dir>/<target>.tar`, tagged `tag`.
pub fn kiln_image_tars(targets: &[(&str, &str)]) -> tempfile::TempDir {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bins = Path::new(env!("CARGO_BIN_EXE_executor")).parent().unwrap();
    for b in ["warmer", "cache-server"] {
        assert!(
            bins.join(b).exists(),
            "{b} is not built beside the executor: run the workspace's tests"
        );
    }
    let out = tempfile::tempdir().unwrap();
    let ctx = out.path().join("ctx");
    // The executor and warmer the image ships are the static ones,
    // built by .ci/setup (deploy/image/static.sh).
    let statics = bins
        .parent()
        .unwrap()
        .join("static/x86_64-unknown-linux-gnu/release");
    assert!(
        statics.join("warmer").exists(),
        "{} missing: run `bash .ci/setup` (deploy/image/static.sh)",
        statics.display()
    );
    kiln_testkit::run(
        Command::new("bash")
            .arg(repo.join("deploy/image/context.sh"))
            .arg(&ctx)
            .arg(bins)
            .arg(&statics),
    );
    let work = tempfile::tempdir().unwrap();
    let containerfile = repo.join("deploy/Containerfile");
    for (target, tag) in targets {
        let tar = out.path().join(format!("{target}.tar"));
        must_build(
            &ctx,
            work.path(),
            &[
                "--dockerfile",
                containerfile.to_str().unwrap(),
                "--target",
                target,
                "--no-push",
                "--destination",
                tag,
                "--tar-path",
                tar.to_str().unwrap(),
            ],
        );
    }
    let _ = std::fs::remove_dir_all(&ctx);
    out
}

/// Kiln's cache server binary, built beside this crate's by
/// `cargo nextest run --workspace` (or `cargo build --workspace`).
pub fn cache_server_bin() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_executor")).with_file_name("cache-server");
    assert!(
        p.exists(),
        "{} missing: build the workspace first",
        p.display()
    );
    p
}

/// A cache server (file store) whose one user `ci` with `password` may
/// write everywhere, and a Docker config dir under `dir` logging in to it.
pub fn cache_server_with_login(
    dir: &Path,
    password: &str,
) -> (kiln_testkit::CacheServer, std::path::PathBuf) {
    let auth = dir.join("auth.json");
    std::fs::write(
        &auth,
        format!(
            r#"{{"users": [{{"username": "ci", "password": "{password}", "grants": [{{"prefix": "", "access": "write"}}]}}]}}"#
        ),
    )
    .unwrap();
    let server = kiln_testkit::CacheServer::start(
        &cache_server_bin(),
        None,
        &["--auth-file", auth.to_str().unwrap()],
        &[],
    );
    use base64::Engine as _;
    let login = base64::engine::general_purpose::STANDARD.encode(format!("ci:{password}"));
    let config = dir.join("docker");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(
        config.join("config.json"),
        format!(r#"{{"auths":{{"{}":{{"auth":"{login}"}}}}}}"#, server.addr),
    )
    .unwrap();
    (server, config)
}

/// A build in a fresh work directory, `--no-push`, with `--cache` into
/// `cache_repo` (its registry reached over plain HTTP) and `extra` flags;
/// returns its `--report` and its log.
pub fn cached_build_report(
    ctx: &Path,
    cache_repo: &str,
    extra: &[&str],
) -> (serde_json::Value, String) {
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report.json");
    let mut args = vec![
        "--no-push",
        "--insecure-pull",
        "--insecure-registry",
        cache_repo.split('/').next().unwrap(),
        "--cache",
        "--cache-repo",
        cache_repo,
        "--report",
    ];
    let report_s = report.to_str().unwrap().to_string();
    args.push(&report_s);
    args.extend_from_slice(extra);
    let w2 = tempfile::tempdir().unwrap();
    let log = must_build(ctx, w2.path(), &args);
    let json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (json, log)
}

/// A registry client as the executor makes one, with `opts` and no
/// credentials.
pub fn registry_client(
    opts: kiln_common::registry::RegistryOptions,
) -> kiln_common::registry::Registry {
    kiln_common::registry::Registry::new(opts, kiln_common::auth::DockerConfig::default()).unwrap()
}

/// A client that talks plain HTTP to the registry at `addr`.
pub fn plain_http_client(addr: &str) -> std::sync::Arc<kiln_common::registry::Registry> {
    std::sync::Arc::new(registry_client(kiln_common::registry::RegistryOptions {
        insecure_hosts: vec![addr.to_string()],
        ..Default::default()
    }))
}
