//! TLS like kaniko and containerd: a docker-registry serving HTTPS from a
//! private CA made in the test. Without the CA the build fails naming the
//! certificate problem (never a panic); `--registry-certificate`,
//! `--skip-tls-verify-registry` and `certs.d` each make it work for that
//! host only; an image without any CA bundle still builds against
//! plain-HTTP registries.

mod common;
use common::*;
use kiln_common::image::Platform;
use kiln_common::registry::RegistryOptions;
use kiln_testkit::*;

fn tls_registry() -> (tempfile::TempDir, std::path::PathBuf, Registry, String) {
    let (dir, ca, cert, key) = private_ca();
    let reg = Registry::start_tls(&cert, &key);
    let base = push_busybox(&reg, "busybox:tls");
    (dir, ca, reg, base)
}

#[test]
fn a_private_ca_per_registry() {
    let (_dir, ca, reg, base) = tls_registry();
    let ctx = context_with(&format!("FROM {base}\nRUN echo tls > /tls\n"));
    let dest = format!("{}/built:tls", reg.addr);

    // Unknown CA: a clear error, exit 1 (not a panic's 101).
    let work = tempfile::tempdir().unwrap();
    let out = build(ctx.path(), work.path(), &["--destination", &dest]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&reg.addr) && err.to_lowercase().contains("certificate"),
        "{err}"
    );

    // That host's CA: pulls and pushes over verified TLS.
    let ca_flag = format!("{}={}", reg.addr, ca.display());
    must_build(
        ctx.path(),
        work.path(),
        &["--destination", &dest, "--registry-certificate", &ca_flag],
    );
    let pushed = run(std::process::Command::new("skopeo")
        .args(["inspect", "--tls-verify=false"])
        .arg(format!("docker://{dest}")));
    assert!(pushed.contains("\"Digest\""), "{pushed}");

    // Verification skipped for that host only.
    must_build(
        ctx.path(),
        work.path(),
        &["--no-push", "--skip-tls-verify-registry", &reg.addr],
    );
    // …and a CA for another host does not make this one trusted.
    let other = format!("other.example:443={}", ca.display());
    let out = build(
        ctx.path(),
        work.path(),
        &["--no-push", "--registry-certificate", &other],
    );
    assert_eq!(out.status.code(), Some(1));
}

/// Docker's `/etc/docker/certs.d/<host:port>/ca.crt`, through the library
/// (the test must not write the machine's /etc).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_d_holds_the_ca_for_its_host() {
    let (_dir, ca, reg, base) = tls_registry();
    let certs_d = tempfile::tempdir().unwrap();
    let host_dir = certs_d.path().join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    std::fs::copy(&ca, host_dir.join("ca.crt")).unwrap();
    let client = |certs_d: Option<std::path::PathBuf>| {
        registry_client(RegistryOptions {
            certs_d,
            ..Default::default()
        })
    };
    let resolved = client(Some(certs_d.path().to_path_buf()))
        .resolve(&base, &Platform::host())
        .await;
    assert!(resolved.is_ok(), "{:?}", resolved.err());
    let e = client(None)
        .resolve(&base, &Platform::host())
        .await
        .expect_err("no CA, no trust");
    assert!(
        kiln_common::report::Report(&e)
            .to_string()
            .to_lowercase()
            .contains("certificate"),
        "{e:?}"
    );
}

/// An image without a CA bundle: no panic; plain HTTP builds, with one
/// warning saying TLS registries cannot be verified.
#[test]
fn no_ca_bundle_is_a_warning_not_a_panic() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:plain");
    let ctx = context_with(&format!("FROM {base}\nRUN echo ok > /ok\n"));
    let work = tempfile::tempdir().unwrap();
    // The executor where no CA bundle can be found.
    let no_ca = |ctx: &std::path::Path, args: &[&str]| {
        executor()
            .env("SSL_CERT_FILE", "/nonexistent/ca.pem")
            .env("SSL_CERT_DIR", "/nonexistent")
            .env("KILN_DIR", work.path())
            .arg("--context")
            .arg(ctx)
            .args(args)
            .output()
            .unwrap()
    };
    let out = no_ca(ctx.path(), &["--no-push", "--insecure-pull"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert_eq!(err.matches("no CA certificates found").count(), 1, "{err}");

    let (_dir, _ca, tls, tls_base) = tls_registry();
    let ctx = context_with(&format!("FROM {tls_base}\n"));
    let out = no_ca(ctx.path(), &["--no-push"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&tls.addr), "{err}");
}

/// Mutual TLS: a docker-registry that refuses clients without a certificate
/// from the test's CA. Without one the build fails naming the host; with
/// `--registry-client-cert` it pulls nothing it should not and pushes; the
/// pushed image is read back by skopeo with the same certificate; and
/// certs.d's `client.cert`/`client.key` do the same through the library.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates() {
    let (dir, ca, cert, key) = private_ca();
    let (client_pem, client_key) = client_certificate(dir.path());
    let reg = Registry::start_mtls(&cert, &key, &ca);
    let ctx = context_with("FROM scratch\nCOPY f /f\n");
    write(ctx.path(), "f", "mtls\n");
    let dest = format!("{}/built:mtls", reg.addr);
    let ca_flag = format!("{}={}", reg.addr, ca.display());
    let work = tempfile::tempdir().unwrap();
    let run_build = |extra: &[&str]| {
        let mut args = vec![
            "--destination",
            dest.as_str(),
            "--registry-certificate",
            &ca_flag,
        ];
        args.extend_from_slice(extra);
        build(ctx.path(), work.path(), &args)
    };

    // The CA alone is not enough: the registry wants a certificate.
    let out = tokio::task::block_in_place(|| run_build(&[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    // (TLS 1.3 refuses after the handshake: the client sees the
    // connection closed, not a certificate error.)
    assert!(err.contains(&reg.addr), "{err}");

    // With the client certificate: pushed.
    let cc = format!(
        "{}={},{}",
        reg.addr,
        client_pem.display(),
        client_key.display()
    );
    let out = tokio::task::block_in_place(|| run_build(&["--registry-client-cert", &cc]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");

    // skopeo, presenting the same certificate, reads it back.
    let cert_dir = tempfile::tempdir().unwrap();
    std::fs::copy(&ca, cert_dir.path().join("ca.crt")).unwrap();
    std::fs::copy(&client_pem, cert_dir.path().join("client.cert")).unwrap();
    std::fs::copy(&client_key, cert_dir.path().join("client.key")).unwrap();
    let inspected = tokio::task::block_in_place(|| {
        run(std::process::Command::new("skopeo")
            .arg("inspect")
            .arg("--cert-dir")
            .arg(cert_dir.path())
            .arg(format!("docker://{dest}")))
    });
    assert!(inspected.contains("\"Digest\""), "{inspected}");

    // certs.d: the same directory layout, found by host.
    let certs_d = tempfile::tempdir().unwrap();
    let host_dir = certs_d.path().join(&reg.addr);
    std::fs::create_dir_all(&host_dir).unwrap();
    for f in ["ca.crt", "client.cert", "client.key"] {
        std::fs::copy(cert_dir.path().join(f), host_dir.join(f)).unwrap();
    }
    let client = registry_client(RegistryOptions {
        certs_d: Some(certs_d.path().to_path_buf()),
        ..Default::default()
    });
    let resolved = client.resolve(&dest, &Platform::host()).await;
    assert!(resolved.is_ok(), "{:?}", resolved.err());
    // Without client.cert/client.key the same CA is refused.
    std::fs::remove_file(host_dir.join("client.cert")).unwrap();
    let client = registry_client(RegistryOptions {
        certs_d: Some(certs_d.path().to_path_buf()),
        ..Default::default()
    });
    assert!(client.resolve(&dest, &Platform::host()).await.is_err());
}
