//! Outputs checked by other tools: OCI layouts by oci-image-tool and umoci,
//! docker archives by skopeo, pushed images by skopeo and buildah (which also
//! runs the result); plus compression, reproducibility and snapshot modes.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

/// The manifest of the first image in an OCI layout, as Kiln wrote it.
fn layout_manifest(layout: &std::path::Path) -> serde_json::Value {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let digest = index["manifests"][0]["digest"].as_str().unwrap();
    let blob = layout
        .join("blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    serde_json::from_slice(&std::fs::read(blob).unwrap()).unwrap()
}

fn sample_context(base: &str) -> tempfile::TempDir {
    let ctx = context_with(&format!(
            "FROM {base}\nCOPY app/ /app/\nRUN <<EOF\nset -e\necho built > /app/built.txt\nrm /var/log/old.log\nEOF\nCOPY <<-EOT /etc/app.conf\n\tname=$NAME\n\tEOT\nCOPY <<'RAW' /etc/raw.conf\nname=$NAME\nRAW\nRUN cat <<EOF > /app/fed.txt\nfed by the shell\nEOF\nENV NAME=kiln\nCMD [\"cat\", \"/app/built.txt\"]\n"
        ));
    write(ctx.path(), "app/main.sh", "echo main\n");
    ctx
}

#[test]
fn oci_layout_docker_archive_and_heredocs() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = sample_context(&base);
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("layout");
    let tarball = out.path().join("image.tar");
    let digest_file = out.path().join("digest");
    build_to_layout(
        ctx.path(),
        &layout,
        &[
            "--destination",
            "example.com/app:v1",
            "--tar-path",
            tarball.to_str().unwrap(),
            "--digest-file",
            digest_file.to_str().unwrap(),
        ],
    );
    let v = run(Command::new("oci-image-tool")
        .args(["validate", "--type", "image"])
        .arg(&layout));
    assert!(v.contains("Validation succeeded"), "{v}");
    let img = unpack(&format!("oci:{}:v1", layout.display()));
    let root = img.rootfs();
    assert_eq!(
        std::fs::read_to_string(root.join("app/built.txt")).unwrap(),
        "built\n"
    );
    assert!(!root.join("var/log/old.log").exists());
    // <<- strips tabs, unquoted heredocs expand (NAME is not set yet), quoted ones do not.
    assert_eq!(
        std::fs::read_to_string(root.join("etc/app.conf")).unwrap(),
        "name=\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("etc/raw.conf")).unwrap(),
        "name=$NAME\n"
    );
    assert_eq!(
        std::fs::read_to_string(root.join("app/fed.txt")).unwrap(),
        "fed by the shell\n"
    );
    let digest = std::fs::read_to_string(&digest_file).unwrap();
    assert!(digest.starts_with("sha256:"));

    // The docker archive holds the same image.
    let from_tar = unpack(&format!("docker-archive:{}", tarball.display()));
    assert_eq!(tree(&from_tar.rootfs()), tree(&root));
    assert_eq!(
        from_tar.config["config"]["Cmd"],
        img.config["config"]["Cmd"]
    );
}

#[test]
fn pushed_image_runs_under_buildah() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = sample_context(&base);
    let dest = format!("{}/app:v1", reg.addr);
    let dest2 = format!("{}/other/app:v2", reg.addr);
    let work = tempfile::tempdir().unwrap();
    must_build(
        ctx.path(),
        work.path(),
        &[
            "--destination",
            &dest,
            "--destination",
            &dest2,
            "--insecure",
            "--push-retry=2",
        ],
    );
    // Both destinations hold the image; skopeo reads it.
    let a = unpack(&format!("docker://{dest}"));
    let b = unpack(&format!("docker://{dest2}"));
    assert_eq!(tree(&a.rootfs()), tree(&b.rootfs()));
    let bh = Buildah::new();
    let mut from = bh.cmd();
    from.args(["from", "--tls-verify=false", "--name", "kiln-run"])
        .arg(format!("docker://{dest}"));
    run(&mut from);
    let mut r = bh.cmd();
    r.args([
        "run",
        "--isolation",
        "chroot",
        "kiln-run",
        "--",
        "cat",
        "/app/built.txt",
    ]);
    assert_eq!(run(&mut r), "built\n");
}

#[test]
fn zstd_reproducible_and_single_snapshot() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = sample_context(&base);
    let out = tempfile::tempdir().unwrap();
    let mut digests = Vec::new();
    for i in 0..2 {
        let layout = out.path().join(format!("l{i}"));
        let df = out.path().join(format!("d{i}"));
        build_to_layout(
            ctx.path(),
            &layout,
            &[
                "--reproducible",
                "--compression=zstd",
                "--digest-file",
                df.to_str().unwrap(),
            ],
        );
        digests.push(std::fs::read_to_string(&df).unwrap());
        let manifest = layout_manifest(&layout);
        let layers = manifest["layers"].as_array().unwrap();
        assert!(layers[1..]
            .iter()
            .all(|l| l["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"));
        // kaniko's --reproducible rewrote the base's layers too; Kiln keeps
        // them as the registry has them.
        let upstream: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
            .args(["inspect", "--tls-verify=false"])
            .arg(format!("docker://{base}"))))
        .unwrap();
        assert_eq!(
            layers[0]["digest"], upstream["Layers"][0],
            "the base layer was rewritten"
        );
        // skopeo decodes the zstd layers (recompressing for umoci) and the content is right.
        let img = unpack_with(
            &format!("oci:{}:latest", layout.display()),
            &["--dest-compress", "--dest-compress-format", "gzip"],
        );
        assert_eq!(
            std::fs::read_to_string(img.rootfs().join("app/built.txt")).unwrap(),
            "built\n"
        );
        std::thread::sleep(std::time::Duration::from_millis(1100));
        // Touch the context: mtimes must not matter for a reproducible build.
        write(ctx.path(), "app/main.sh", "echo main\n");
    }
    assert_eq!(digests[0], digests[1], "--reproducible builds differ");

    let layout = out.path().join("single");
    build_to_layout(ctx.path(), &layout, &["--single-snapshot"]);
    let img = unpack(&format!("oci:{}:latest", layout.display()));
    assert_eq!(
        img.manifest["layers"].as_array().unwrap().len(),
        2,
        "base layer + one snapshot"
    );
    assert!(!img.rootfs().join("var/log/old.log").exists());
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("app/built.txt")).unwrap(),
        "built\n"
    );
}

#[test]
fn thousands_of_files_and_a_path_the_ci_workspace_also_uses() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        write(
            ctx.path(),
            &format!("many/d{}/f{i}.txt", i % 30),
            &format!("{i}\n"),
        );
    }
    // The image writes to the very directory the build runs from (like
    // /home/jenkins in the seeds): it must end up in the image, and the
    // builder's own copy must be left alone.
    let host_ws = ctx.path().to_str().unwrap().to_string();
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {base}\nCOPY many /data/many\nRUN mkdir -p {host_ws}/.m2 && echo in-image > {host_ws}/.m2/settings && ls /data/many/d0 | wc -l > /data/count\n"),
    );
    let (_, img) = build_unpacked(ctx.path(), &["--no-push", "--insecure-pull"]);
    let t = tree(&img.rootfs());
    assert_eq!(
        t.keys()
            .filter(|k| k.starts_with("data/many/") && k.ends_with(".txt"))
            .count(),
        3000
    );
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("data/count"))
            .unwrap()
            .trim(),
        "100"
    );
    let rel = host_ws.trim_start_matches('/');
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join(rel).join(".m2/settings")).unwrap(),
        "in-image\n"
    );
    assert!(
        !ctx.path().join(".m2").exists(),
        "the build wrote into the builder's own filesystem"
    );
}

#[test]
fn progress_on_a_terminal_plain_lines_otherwise() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!("FROM {base}\nRUN true\n"));
    let work = tempfile::tempdir().unwrap();
    // Not a terminal: no carriage returns, no escape codes.
    let plain = must_build(ctx.path(), work.path(), &["--no-push", "--insecure-pull"]);
    assert!(
        !plain.contains('\r') && !plain.contains("\x1b["),
        "{plain:?}"
    );
    // A pseudo-terminal from util-linux's `script`: a live progress line.
    let cmd = format!(
        "{} --context {} --kaniko-dir {} --no-push --insecure-pull",
        env!("CARGO_BIN_EXE_executor"),
        ctx.path().display(),
        work.path().display()
    );
    let out = run(Command::new("script").args(["-qec", &cmd, "/dev/null"]));
    assert!(
        out.contains(&format!("pulling {base}:")) && out.contains("MB (100%)"),
        "{out:?}"
    );
}

#[test]
fn chroot_isolation_gives_the_same_image() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!("FROM {base}\nRUN mkdir -p /opt/a && echo x > /opt/a/f && ln -s f /opt/a/l && rm /etc/os-release && chmod 0700 /opt/a\nUSER app\nRUN touch /home/app/mine\n"));
    let mut trees = Vec::new();
    for iso in ["chroot", "namespaces"] {
        let (log, img) = build_unpacked(
            ctx.path(),
            &["--no-push", "--insecure-pull", "--isolation", iso],
        );
        assert!(log.contains(&format!("isolation: {iso}")), "{log}");
        assert!(
            !img.rootfs().join("etc/os-release").exists(),
            "{iso}: deletion lost"
        );
        let t = tree(&img.rootfs());
        assert_eq!(t["home/app/mine"].uid, 1000, "{iso}: USER applies to RUN");
        trees.push(t);
    }
    assert_eq!(trees[0], trees[1]);
}

/// Issue 17: layers mixing incompressible bytes (stored blocks), text and
/// machine code, written by every path (a COPY the next RUN reads, the
/// RUN's own layer, a last COPY whose contents were never copied into the
/// root), are valid streams for `gzip -t` and `zstd -t`, and umoci unpacks
/// them (after skopeo) to exactly the bytes that went in.
#[test]
fn mixed_layers_pass_gzip_t_zstd_t_and_umoci() {
    use sha2::Digest as _;
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!(
        "FROM {base}\nCOPY data/ /data/\nRUN sha256sum /data/noise.bin > /data/sum\nCOPY more/ /more/\n"
    ));
    let noise = noise(17, 24 << 20);
    let text: String = (0..60_000)
        .map(|i| format!("line {i} of some ordinary text\n"))
        .collect();
    let code = std::fs::read("/bin/busybox").unwrap();
    for (rel, bytes) in [
        ("data/noise.bin", &noise[..]),
        ("data/text.txt", text.as_bytes()),
        ("more/busybox", &code[..]),
        ("more/noise.bin", &noise[..8 << 20]),
    ] {
        let p = ctx.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let sum = format!("{:x}", sha2::Sha256::digest(&noise));
    for (compression, checker) in [("gzip", "gzip"), ("zstd", "zstd")] {
        let out = tempfile::tempdir().unwrap();
        let layout = out.path().join("layout");
        build_to_layout(
            ctx.path(),
            &layout,
            &[&format!("--compression={compression}")],
        );
        // umoci reads gzip itself; zstd layers skopeo recompresses first.
        let src = format!("oci:{}:latest", layout.display());
        let img = match compression {
            "gzip" => unpack(&src),
            _ => unpack_with(&src, &["--dest-compress", "--dest-compress-format", "gzip"]),
        };
        let layers = img.manifest["layers"].as_array().unwrap().len();
        let manifest = layout_manifest(&layout);
        let own = manifest["layers"].as_array().unwrap();
        assert_eq!(own.len(), layers);
        for l in &own[1..] {
            let blob = layout
                .join("blobs/sha256")
                .join(&l["digest"].as_str().unwrap()[7..]);
            let t = Command::new(checker).arg("-t").arg(&blob).output().unwrap();
            assert!(
                t.status.success(),
                "{checker} -t {}: {}",
                blob.display(),
                String::from_utf8_lossy(&t.stderr)
            );
        }
        let root = img.rootfs();
        assert!(std::fs::read(root.join("data/noise.bin")).unwrap() == noise);
        assert_eq!(
            std::fs::read_to_string(root.join("data/text.txt")).unwrap(),
            text
        );
        assert!(std::fs::read_to_string(root.join("data/sum"))
            .unwrap()
            .starts_with(&sum));
        assert!(std::fs::read(root.join("more/busybox")).unwrap() == code);
        assert!(std::fs::read(root.join("more/noise.bin")).unwrap()[..] == noise[..8 << 20]);
    }
}
