//! TLS like kaniko and containerd: a docker-registry serving HTTPS from a
//! private CA made in the test. Without the CA the build fails naming the
//! certificate problem (never a panic); `--registry-certificate`,
//! `--skip-tls-verify-registry` and `certs.d` each make it work for that
//! host only; an image without any CA bundle still builds against
//! plain-HTTP registries.

mod common;
use common::*;
use kiln_common::auth::DockerConfig;
use kiln_common::image::Platform;
use kiln_common::registry::{Registry as Client, RegistryOptions};
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
        Client::new(
            RegistryOptions {
                certs_d,
                ..Default::default()
            },
            DockerConfig::default(),
        )
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
