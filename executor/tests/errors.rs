//! Bad input gets a clear error, and nothing is written outside the build root.

mod common;
use common::*;
use kiln_testkit::*;

fn stderr_of(ctx: &std::path::Path, args: &[&str]) -> (bool, String) {
    let work = tempfile::tempdir().unwrap();
    let out = build(ctx, work.path(), args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn malformed_dockerfile_names_file_and_line() {
    let ctx = context_with("FROM scratch\n# comment\nCOPY a \\\n  b\nFROOM x\n");
    let (ok, err) = stderr_of(ctx.path(), &["--no-push"]);
    assert!(!ok);
    assert!(err.contains("Dockerfile:5: FROOM"), "{err}");
    assert!(err.contains("unknown instruction"), "{err}");
}

#[test]
fn missing_base_image_and_unreachable_registry() {
    let reg = Registry::start();
    let ctx = context_with(&format!("FROM {}/nope:1\nRUN true\n", reg.addr));
    let (ok, err) = stderr_of(ctx.path(), &["--no-push", "--insecure-pull"]);
    assert!(!ok);
    assert!(err.contains("nope:1") && err.contains("stage 0"), "{err}");

    // A port nothing listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {dead}/busybox\nRUN true\n"),
    );
    let t0 = std::time::Instant::now();
    let (ok, err) = stderr_of(
        ctx.path(),
        &["--no-push", "--insecure-pull", "--image-download-retry=1"],
    );
    assert!(!ok);
    assert!(
        err.to_lowercase().contains("connect") || err.contains("refused"),
        "{err}"
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
}

#[test]
fn failing_run_reports_command_exit_code_and_output() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!(
        "FROM {base}\nRUN echo preparing && echo boom-detail >&2 && exit 7\n"
    ));
    let (ok, err) = stderr_of(ctx.path(), &["--no-push", "--insecure-pull"]);
    assert!(!ok);
    assert!(err.contains("Dockerfile:2"), "{err}");
    assert!(err.contains("exit code 7"), "{err}");
    assert!(err.contains("boom-detail"), "{err}");

    // The executor exits with the RUN's own code, as Docker, kaniko and
    // buildah do (CI scripts branch on it); other failures exit 1.
    let work = tempfile::tempdir().unwrap();
    let ctx = context_with(&format!("FROM {base}\nRUN exit 42\n"));
    let out = build(ctx.path(), work.path(), &["--no-push", "--insecure-pull"]);
    assert_eq!(out.status.code(), Some(42));
    let ctx = context_with("FROM scratch\nCOPY missing /x\n");
    let out = build(ctx.path(), work.path(), &["--no-push"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn hostile_layers_are_errors_not_writes() {
    let reg = Registry::start();
    let marker = format!("kiln-escape-{}", std::process::id());
    let outside = std::path::Path::new("/tmp").join(&marker);
    let _ = std::fs::remove_dir_all(&outside);
    let deep = "../../../../../../../../..";
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "dotdot",
            raw_tar(&[RawEntry {
                name: &format!("{deep}/tmp/{marker}"),
                kind: b'0',
                link: "",
                data: b"x",
            }]),
        ),
        (
            "symlink",
            raw_tar(&[
                RawEntry {
                    name: "evil",
                    kind: b'2',
                    link: &format!("{deep}/tmp"),
                    data: b"",
                },
                RawEntry {
                    name: &format!("evil/{marker}"),
                    kind: b'0',
                    link: "",
                    data: b"x",
                },
            ]),
        ),
        (
            "chained-symlink",
            raw_tar(&[
                RawEntry {
                    name: "a",
                    kind: b'2',
                    link: "b/../..",
                    data: b"",
                },
                RawEntry {
                    name: "b",
                    kind: b'5',
                    link: "",
                    data: b"",
                },
                RawEntry {
                    name: "c",
                    kind: b'2',
                    link: &format!("a/{deep}/tmp"),
                    data: b"",
                },
                RawEntry {
                    name: &format!("c/{marker}"),
                    kind: b'0',
                    link: "",
                    data: b"x",
                },
            ]),
        ),
        (
            "hardlink",
            raw_tar(&[RawEntry {
                name: "passwd-copy",
                kind: b'1',
                link: &format!("{deep}/etc/passwd"),
                data: b"",
            }]),
        ),
    ];
    for (name, layer) in cases {
        let dest = format!("{}/evil-{name}:1", reg.addr);
        push_raw_layers(&dest, &[layer]);
        let ctx = context_with(&format!("FROM {dest}\nRUN true\n"));
        let (ok, err) = stderr_of(ctx.path(), &["--no-push", "--insecure-pull"]);
        assert!(!ok, "{name}: a hostile layer must fail the build\n{err}");
        assert!(
            err.contains("escapes the build root") || err.contains("leaves the root"),
            "{name}: {err}"
        );
        assert!(
            exists_any(&[&outside]).is_empty(),
            "{name}: wrote outside the root"
        );
    }
}

#[test]
fn absolute_symlinks_in_layers_stay_inside_the_root() {
    let reg = Registry::start();
    let marker = format!("kiln-abs-{}", std::process::id());
    let outside = std::path::Path::new("/tmp").join(&marker);
    let layer = raw_tar(&[
        RawEntry {
            name: "tmp",
            kind: b'5',
            link: "",
            data: b"",
        },
        RawEntry {
            name: "abs",
            kind: b'2',
            link: "/tmp",
            data: b"",
        },
        RawEntry {
            name: &format!("abs/{marker}"),
            kind: b'0',
            link: "",
            data: b"inside",
        },
    ]);
    let dest = format!("{}/abs:1", reg.addr);
    push_raw_layers(&dest, &[layer]);
    let ctx = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {dest}\nCOPY f /f\n"),
    );
    write(ctx.path(), "f", "f");
    build_to_layout(ctx.path(), &layout, &[]);
    assert!(
        exists_any(&[&outside]).is_empty(),
        "wrote through an absolute symlink to the host"
    );
    let img = unpack(&format!("oci:{}:latest", layout.display()));
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("tmp").join(&marker)).unwrap(),
        "inside"
    );
}

/// ADD <url>: a 404 fails the build naming the URL and the status;
/// `--checksum` must match what was downloaded.
#[test]
fn add_url_failures_name_the_url() {
    let http = StaticHttp::start(&[("f.txt", "content\n")]);
    let work = tempfile::tempdir().unwrap();
    let url = format!("{}/missing.txt", http.url);
    let ctx = context_with(&format!("FROM scratch\nADD {url} /m\n"));
    let (ok, err) = stderr_of(ctx.path(), &["--no-push"]);
    assert!(!ok);
    assert!(err.contains(&url) && err.contains("404"), "{err}");
    let good = "sha256:434728a410a78f56fc1b5899c3593436e61ab0c731e9072d95e96db290205e53";
    let bad = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
    for (sum, builds) in [(good, true), (bad, false)] {
        let ctx = context_with(&format!(
            "FROM scratch\nADD --checksum={sum} {}/f.txt /f\n",
            http.url
        ));
        let out = build(ctx.path(), work.path(), &["--no-push"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.success(), builds, "{sum}: {err}");
        if !builds {
            assert!(err.contains("--checksum"), "{err}");
        }
    }
}

/// A base layer is extracted while it downloads, so its bytes are used
/// before its digest can be checked. One whose bytes were altered in the
/// registry's storage must still fail the build, naming the layer, and
/// leave no blob under its digest.
#[test]
fn a_layer_that_fails_its_digest_while_extracting_fails_the_build() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:altered");
    // The registry's own copy of the (only) layer blob: flip its last byte.
    let blobs = reg.dir.path().join("data/docker/registry/v2/blobs/sha256");
    let mut altered = Vec::new();
    for prefix in std::fs::read_dir(&blobs).unwrap().flatten() {
        for blob in std::fs::read_dir(prefix.path()).unwrap().flatten() {
            let data = blob.path().join("data");
            let mut bytes = std::fs::read(&data).unwrap();
            if bytes.starts_with(&[0x1f, 0x8b]) {
                let last = bytes.len() - 1;
                bytes[last] ^= 0xff;
                std::fs::write(&data, bytes).unwrap();
                altered.push(blob.file_name().to_string_lossy().into_owned());
            }
        }
    }
    assert_eq!(altered.len(), 1, "one gzip layer in {base}");
    let ctx = context_with(&format!("FROM {base}\nRUN true\n"));
    let work = tempfile::tempdir().unwrap();
    let out = build(ctx.path(), work.path(), &["--no-push", "--insecure-pull"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&altered[0]), "{err}");
    let kept: Vec<String> = tree(work.path())
        .into_keys()
        .filter(|k| k.ends_with(&altered[0]))
        .collect();
    assert!(kept.is_empty(), "a blob under its digest: {kept:?}");
}
