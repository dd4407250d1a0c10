//! A private CA (openssl) issuing server and client certificates.

use super::*;

/// A client certificate issued by [`private_ca`]'s CA (in its `dir`), for
/// mutual TLS: `(client.pem, client.key)`.
pub fn client_certificate(ca_dir: &Path) -> (PathBuf, PathBuf) {
    issue(
        ca_dir,
        "client",
        "/CN=kiln-builder",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
}

/// A CA and a server certificate it issued for 127.0.0.1 and
/// localhost, made with openssl: `(dir, ca.pem, server.pem, server.key)`.
pub fn private_ca() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Kiln test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    let (cert, key) = issue(
        dir.path(),
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    );
    let ca = dir.path().join("ca.pem");
    (dir, ca, cert, key)
}

/// A key and a certificate `<name>.pem`/`<name>.key` for `subject` with
/// these extensions, issued by the CA in `ca_dir`.
fn issue(ca_dir: &Path, name: &str, subject: &str, extensions: &str) -> (PathBuf, PathBuf) {
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    std::fs::write(ca_dir.join(&ext), extensions).expect("extensions file");
    openssl(
        ca_dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    );
    openssl(
        ca_dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
    (ca_dir.join(pem), ca_dir.join(key))
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}
