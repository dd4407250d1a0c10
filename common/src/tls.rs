//! TLS set-up shared by every binary.

/// Installs the TLS crypto provider once per process (reqwest is built without
/// one so that ring, not aws-lc, is compiled). Every binary calls it first in
/// `main`; library entry points that make connections call it too, which is
/// harmless (only the first call installs).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
