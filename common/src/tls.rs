//! TLS set-up shared by every binary.

/// Installs the TLS crypto provider once per process (reqwest is built without
/// one so that ring, not aws-lc, is compiled). Every binary calls it first in
/// `main`; library entry points that make connections call it too, which is
/// harmless (only the first call installs).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// A self-signed certificate whose private key was discarded when it was
/// made: it can verify nothing, it only makes a trust store non-empty.
const PLACEHOLDER_ROOT: &str = include_str!("placeholder-root.pem");

/// Where the system has no CA bundle (a `FROM scratch` image without one),
/// reqwest — under oci-client and object_store — panics when a client is
/// built, even for plain-HTTP registries. This checks the system store
/// (and `SSL_CERT_FILE`/`SSL_CERT_DIR`) once at start-up; when it is empty,
/// it points `SSL_CERT_FILE` at [`PLACEHOLDER_ROOT`] so clients can be built,
/// and returns the warning to log: plain HTTP works, and a TLS registry fails
/// with a verification error naming its host instead of a panic.
///
/// Call it first in `main`, before any thread starts (it sets a variable
/// of the process environment).
pub fn ensure_ca_roots() -> Option<String> {
    let found = rustls_native_certs::load_native_certs();
    if !found.certs.is_empty() {
        return None;
    }
    let dir = std::env::var_os("KILN_DIR")
        .map(std::path::PathBuf::from)
        .filter(|d| std::fs::create_dir_all(d).is_ok())
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join("kiln-no-ca.pem");
    let why = "no CA certificates found (system store, SSL_CERT_FILE, SSL_CERT_DIR): \
               registries over TLS cannot be verified (plain-HTTP ones work); mount a CA \
               bundle, set SSL_CERT_FILE, or pass --registry-certificate";
    match std::fs::write(&path, PLACEHOLDER_ROOT) {
        Ok(()) => {
            std::env::set_var("SSL_CERT_FILE", &path);
            Some(why.to_string())
        }
        Err(e) => Some(format!(
            "{why}; and {} could not be written ({e}), so any HTTP client may fail",
            path.display()
        )),
    }
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
