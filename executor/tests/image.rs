//! Kiln's own image, laid out as kaniko's: built by Kiln from this
//! machine's binaries (`deploy/image/context.sh` + `deploy/Containerfile`,
//! no network), loaded into a real Docker Engine, and driven the way the
//! seeds' pipelines drive kaniko's `:debug` image — an idle container
//! (`/busybox/cat`) with credentials mounted at `/kaniko/.docker`, and two
//! builds in a row with `--cleanup && mkdir -p /workspace`.

mod common;
use common::*;
use kiln_testkit::*;

fn inspect(engine: &DockerEngine, image: &str, format: &str) -> String {
    run(engine
        .cmd()
        .args(["image", "inspect", "--format", format, image]))
    .trim()
    .to_string()
}

#[test]
fn kilns_image_runs_the_seeds_pipelines() {
    let out = kiln_image_tars(&[("debug", "kiln:debug"), ("executor", "kiln:latest")]);
    let engine = DockerEngine::start();
    for target in ["debug", "executor"] {
        run(engine
            .cmd()
            .arg("load")
            .arg("-i")
            .arg(out.path().join(format!("{target}.tar"))));
    }

    // kaniko's layout and environment; the default target has no shell.
    for image in ["kiln:latest", "kiln:debug"] {
        assert_eq!(
            inspect(
                &engine,
                image,
                "{{json .Config.Entrypoint}} {{.Config.WorkingDir}}"
            ),
            r#"["/kaniko/executor"] /workspace"#
        );
        let env = inspect(&engine, image, "{{json .Config.Env}}");
        for want in [
            "DOCKER_CONFIG=/kaniko/.docker/",
            "SSL_CERT_DIR=/kaniko/ssl/certs",
        ] {
            assert!(env.contains(want), "{image}: {env}");
        }
    }
    let help =
        run(engine
            .cmd()
            .args(["run", "--rm", "--network", "host", "kiln:latest", "--help"]));
    assert!(help.contains("--destination"), "{help}");
    let no_shell = engine
        .cmd()
        .args([
            "run",
            "--rm",
            "--network",
            "host",
            "--entrypoint",
            "/busybox/sh",
        ])
        .args(["kiln:latest", "-c", "true"])
        .output()
        .unwrap();
    assert!(!no_shell.status.success(), "the default target has a shell");

    // A base image, and a destination that wants the credentials mounted
    // at /kaniko/.docker/config.json.
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:base");
    let dest_reg = Registry::start_with_auth(Some(("ci", "s3cret")));
    let docker_cfg = tempfile::tempdir().unwrap();
    std::fs::write(
        docker_cfg.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"auth":"Y2k6czNjcmV0"}}}}}}"#,
            dest_reg.addr
        ),
    )
    .unwrap();
    let app = context_with(&format!(
        "FROM {base}\nRUN test ! -e /leak && echo built > /leak\nCOPY app.txt /app.txt\n"
    ));
    write(app.path(), "app.txt", "app\n");

    // The Jenkins agent pod: an idle container, steps run in it with sh.
    let id = run(engine
        .cmd()
        .args([
            "run",
            "-d",
            "-i",
            "--network",
            "host",
            "--entrypoint",
            "/busybox/cat",
        ])
        .arg("-v")
        .arg(format!("{}:/src:ro", app.path().display()))
        .arg("-v")
        .arg(format!(
            "{}:/kaniko/.docker:ro",
            docker_cfg.path().display()
        ))
        .arg("kiln:debug"))
    .trim()
    .to_string();
    for tag in ["latest", "v2"] {
        let step = format!(
            "/kaniko/executor --context /src --dockerfile /src/Dockerfile \
             --destination {}/app:{tag} --insecure --insecure-pull --cleanup && mkdir -p /workspace",
            dest_reg.addr
        );
        let o = engine
            .cmd()
            .args(["exec", &id, "sh", "-c", &step])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{tag}:\n{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    for tag in ["latest", "v2"] {
        let img = unpack_with(
            &format!("docker://{}/app:{tag}", dest_reg.addr),
            &["--src-creds", "ci:s3cret"],
        );
        assert_eq!(
            std::fs::read_to_string(img.rootfs().join("leak")).unwrap(),
            "built\n"
        );
    }
    // The container is as it was: no build's files left in it.
    let left = run(engine.cmd().args(["exec", &id, "ls", "-A", "/"]));
    assert!(
        !left.contains("leak") && !left.contains("app.txt"),
        "{left}"
    );

    // runAsUser: 1000 where user namespaces are allowed: the image's
    // newuidmap/newgidmap and /etc/subuid give the build a full id range
    // (the base has /home/app owned by 1000, RUN chowns to other ids).
    let owners = context_with(&format!(
        "FROM {base}\nRUN mkdir /d && chown 2000:3000 /d && stat -c 'owner %u:%g' /d /home/app\n"
    ));
    {
        use std::os::unix::fs::PermissionsExt;
        let open = std::fs::Permissions::from_mode(0o755);
        std::fs::set_permissions(owners.path(), open).unwrap();
    }
    let o = engine
        .cmd()
        .args(["run", "--rm", "--network", "host", "-u", "1000"])
        // SYS_ADMIN in the bounding set only (uid 1000 has no effective
        // capability): this kernel refuses newuidmap's range without it
        // (see containers.rs, non_root_with_subordinate_ids_…).
        .args([
            "--security-opt",
            "seccomp=unconfined",
            "--cap-add",
            "SYS_ADMIN",
        ])
        .args(["--tmpfs", "/kaniko/work:exec,mode=1777", "-v"])
        .arg(format!("{}:/src:ro", owners.path().display()))
        .args([
            "kiln:latest",
            "--context",
            "/src",
            "--no-push",
            "--insecure-pull",
        ])
        .output()
        .unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{log}");
    assert!(log.contains("uids 0-65536 and gids 0-65536"), "{log}");
    assert!(
        log.contains("owner 2000:3000") && log.contains("owner 1000:1000"),
        "{log}"
    );
}
