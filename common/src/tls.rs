//! TLS set-up shared by every binary.

use std::sync::OnceLock;

use rustls::pki_types::CertificateDer;

/// Installs the TLS crypto provider once per process (reqwest is built without
/// one so that ring, not aws-lc, is compiled). Every binary calls it first in
/// `main`; library entry points that make connections call it too, which is
/// harmless (only the first call installs).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The system's CA roots (its store, or `SSL_CERT_FILE`/`SSL_CERT_DIR`),
/// read once per process: each HTTP client made with reqwest's defaults
/// reads and parses the whole store again (~3.4 ms on a Debian host, the
/// file and the directory's 145 certificates), and a build made four — a
/// third of a fully cached Debian build's 65 ms (`benches/debian.sh`).
/// Only certificates that parse as trust anchors are kept (reqwest refuses
/// a list holding any other), as the platform verifier keeps them. Empty
/// when the system has none (see [`ensure_ca_roots`]).
pub fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| anchors(rustls_native_certs::load_native_certs().certs))
}

/// The certificates of `found` that parse as trust anchors.
fn anchors(found: Vec<CertificateDer<'static>>) -> Vec<CertificateDer<'static>> {
    found
        .into_iter()
        .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
        .collect()
}

/// A reqwest client builder trusting [`system_roots`] (as reqwest's
/// default does on Linux, without reading the store again); reqwest's own
/// default where the system has no roots, so the placeholder of
/// [`ensure_ca_roots`] applies. Callers add their own CAs with
/// `tls_certs_merge`.
pub fn client_builder() -> reqwest::ClientBuilder {
    install_crypto_provider();
    let b = reqwest::Client::builder();
    let roots = system_roots();
    if roots.is_empty() {
        return b;
    }
    let certs: Vec<reqwest::Certificate> = roots
        .iter()
        .filter_map(|c| reqwest::Certificate::from_der(c).ok())
        .collect();
    b.tls_certs_only(certs)
}

/// A self-signed certificate whose private key was discarded when it was
/// made: it can verify nothing, it only makes a trust store non-empty.
const PLACEHOLDER_ROOT: &str = include_str!("placeholder-root.pem");

/// Where the system has no CA bundle (a `FROM scratch` image without one,
/// or `/kaniko/executor` copied alone into a distroless image), reqwest —
/// under oci-client and object_store — cannot build a client, even for
/// plain-HTTP registries. This checks the system store (and
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`) once at start-up; when it is empty, it
/// points `SSL_CERT_FILE` at [`PLACEHOLDER_ROOT`] so clients can be built,
/// and returns the warning to log: plain HTTP works, and a TLS registry
/// fails with a verification error naming its host.
///
/// The placeholder lives in an anonymous in-memory file (`memfd_create`,
/// named through `/proc/<pid>/fd`), which needs no writable directory —
/// such images often have neither `/tmp` nor `KILN_DIR`; files in
/// `KILN_DIR`, the temp directory and `/dev/shm` are the fallbacks.
///
/// Call it first in `main`, before any thread starts (it sets a variable
/// of the process environment).
pub fn ensure_ca_roots() -> Option<String> {
    if !system_roots().is_empty() {
        return None;
    }
    let why = "no CA certificates found (system store, SSL_CERT_FILE, SSL_CERT_DIR): \
               registries over TLS cannot be verified (plain-HTTP ones work); mount a CA \
               bundle, set SSL_CERT_FILE, or pass --registry-certificate";
    match placeholder_file() {
        Ok(path) => {
            std::env::set_var("SSL_CERT_FILE", &path);
            Some(why.to_string())
        }
        Err(e) => Some(format!(
            "{why}; and no placeholder could be written ({e}), so registries cannot be reached"
        )),
    }
}

/// Where [`PLACEHOLDER_ROOT`] was put (see [`ensure_ca_roots`]).
fn placeholder_file() -> std::io::Result<std::path::PathBuf> {
    use std::io::Write;
    if let Ok(fd) =
        nix::sys::memfd::memfd_create(c"kiln-no-ca.pem", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)
    {
        let path = std::path::PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            std::os::fd::AsRawFd::as_raw_fd(&fd)
        ));
        let mut f = std::fs::File::from(fd);
        if f.write_all(PLACEHOLDER_ROOT.as_bytes()).is_ok() && std::fs::metadata(&path).is_ok() {
            // Open for the life of the process: the path names it.
            std::mem::forget(f);
            return Ok(path);
        }
    }
    let dirs = [
        std::env::var_os("KILN_DIR").map(std::path::PathBuf::from),
        Some(std::env::temp_dir()),
        Some("/dev/shm".into()),
    ];
    let mut last = std::io::Error::other("no directory to write to");
    for dir in dirs.into_iter().flatten() {
        let path = dir.join("kiln-no-ca.pem");
        match std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, PLACEHOLDER_ROOT)) {
            Ok(()) => return Ok(path),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// What every binary does first: the crypto provider, then the CA check
/// (before any thread starts). Log the returned warning with [`warn`] once
/// logging is set up.
pub fn startup() -> Option<String> {
    install_crypto_provider();
    ensure_ca_roots()
}

/// Logs [`startup`]'s warning, if any.
pub fn warn(no_ca: Option<String>) {
    if let Some(w) = no_ca {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::pem::PemObject;

    #[test]
    fn only_certificates_that_parse_as_anchors_are_kept() {
        install_crypto_provider();
        let good = CertificateDer::from_pem_slice(PLACEHOLDER_ROOT.as_bytes()).unwrap();
        // DER of an INTEGER, not of a certificate.
        let bad = CertificateDer::from(vec![0x02, 0x01, 0x00]);
        let kept = anchors(vec![bad.clone(), good.clone(), bad.clone()]);
        assert_eq!(kept, vec![good]);
        let client = |certs: &[CertificateDer<'static>]| {
            let certs: Vec<reqwest::Certificate> = certs
                .iter()
                .map(|c| reqwest::Certificate::from_der(c).unwrap())
                .collect();
            reqwest::Client::builder().tls_certs_only(certs).build()
        };
        // reqwest takes the kept list, and refuses one holding the other.
        assert!(client(&kept).is_ok());
        assert!(client(&[kept[0].clone(), bad]).is_err());
    }
}
