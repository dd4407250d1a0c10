//! Registry access over the OCI distribution API, through `oci-client`.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Registry`], its options, credentials, mirrors and `--registry-map` candidates |
//! | `error.rs` | [`RegistryError`] and [`RemoteKind`], classified once |
//! | `retry.rs` | retries with backoff, `Retry-After` for 429, one new login on 401 |
//! | `raw.rs` | requests outside oci-client for their headers (rate limits, digests), tokens kept until they expire |
//! | `resolve.rs` | references → platform manifest and config; manifests, tags |
//! | `pull.rs` | blobs to files (resumable `.partial` under a flock) or streams |
//! | `push.rs` | blob and manifest uploads, existence checks, cross-repo mounts |
//! | `reference.rs` | image references parsed by hand (no regex to compile) |
//! | `client_cert.rs` | client certificates (mutual TLS) through a loopback relay |
//! | `scheme.rs` | plain HTTP without a flag for local and private hosts (kaniko's rule) |
//!
//! `Registry` adds what a builder needs on top of the client: credentials from
//! config.json, per-host insecure (HTTP) access, mirrors and `--registry-map`,
//! platform selection in indexes, retries with backoff, and blobs streamed to a
//! temp file, verified, then renamed — never a whole layer in memory.

mod client_cert;
mod error;
mod pull;
mod push;
mod raw;
mod reference;
mod resolve;
mod retry;
mod scheme;

pub use client_cert::{ClientCert, ClientCertError};
pub use error::{RegistryError, RemoteKind};
pub use pull::{BlobStream, Landed, LandedTx};
pub use raw::{Answer, Limits};
pub use reference::ReferenceError;
pub use scheme::private_reason;

use crate::auth::{Credential, DockerConfig, Keychain, Provider, RegistryHttp};
use crate::digest::Digest;
use crate::image;
use crate::image::{ImageConfig, Manifest};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// How to reach registries; the field names follow kaniko's flags.
#[derive(Debug, Clone, Default)]
pub struct RegistryOptions {
    /// Hosts reached over plain HTTP (`--insecure`, `--insecure-registry`, `--insecure-pull`).
    pub insecure_hosts: Vec<String>,
    /// Accept any TLS certificate (`--skip-tls-verify`, `--skip-tls-verify-pull`).
    pub skip_tls_verify: bool,
    /// `--registry-mirror`: tried first for Docker Hub images.
    pub mirrors: Vec<String>,
    /// `--registry-map original=replacement`: tried first for `original` images.
    pub registry_map: HashMap<String, Vec<String>>,
    /// Fall back to the original registry when mirrors fail (kaniko's default).
    pub skip_default_registry_fallback: bool,
    /// Extra attempts for pulls of manifests and configs
    /// (`--image-download-retry`).
    pub pull_retries: u32,
    /// Extra attempts for a layer's stream, each resumed from the bytes
    /// already received: see [`layer_retries`].
    pub layer_retries: u32,
    /// Extra attempts for pushes (`--push-retry`).
    pub push_retries: u32,
    /// CAs trusted for one host, beside the system's (`--registry-certificate host=ca.pem`).
    pub host_cas: HashMap<String, Vec<PathBuf>>,
    /// Hosts whose certificates are not verified (`--skip-tls-verify-registry`).
    pub skip_verify_hosts: Vec<String>,
    /// The client certificate presented to one host
    /// (`--registry-client-cert host=cert.pem,key.pem`).
    pub client_certs: HashMap<String, ClientCert>,
    /// Docker's and containerd's per-registry directory (`/etc/docker/certs.d`):
    /// `<dir>/<host>/*.crt` are trusted for that host, and
    /// `client.cert`/`client.key` are presented to it.
    pub certs_d: Option<PathBuf>,
    /// The built-in logins tried for hosts config.json says nothing about
    /// (`--credential-helpers`); `None`: all of them.
    pub logins: Option<Vec<Provider>>,
    /// A response that makes no progress for this long fails (and is
    /// retried where the call retries): a registry that accepts and then
    /// hangs. `None`: two minutes.
    pub stall_timeout: Option<Duration>,
    /// A bearer token for one host, sent there before any other
    /// credential and to no other host: the CI job's identity token for
    /// the cache server (`--cache-token-file`).
    pub host_tokens: HashMap<String, HostToken>,
}

/// A token for one host; never printed, not even in debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct HostToken(pub String);

impl std::fmt::Debug for HostToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostToken(***)")
    }
}

/// One host's TLS settings beyond the shared client's.
struct HostTls {
    /// PEM files' contents.
    cas: Vec<Vec<u8>>,
    skip_verify: bool,
    client_cert: Option<ClientCert>,
}

impl HostTls {
    fn is_default(&self) -> bool {
        self.cas.is_empty() && !self.skip_verify && self.client_cert.is_none()
    }
}

/// A resolved platform image: its manifest and config, and where they came from.
#[derive(Debug, Clone)]
pub struct ResolvedImage {
    /// The reference that answered (a mirror's, when one did).
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub index_digest: Option<Digest>,
    pub manifest: Manifest,
    /// The manifest exactly as served (its digest is `manifest_digest`).
    pub manifest_bytes: Vec<u8>,
    pub media_type: String,
    pub config: ImageConfig,
    pub config_bytes: Vec<u8>,
}

pub struct Registry {
    /// For hosts without TLS settings of their own; made on first use: a
    /// build that speaks only to hosts with clients of their own never
    /// needs it, and each oci-client client made still reads the system's
    /// CA store once (~3.4 ms: its constructor also makes a default reqwest
    /// client, which `tls::system_roots` cannot reach).
    client: Mutex<Option<Client>>,
    /// Per host, decided once: its own client (own CAs, or verification
    /// skipped), or `None` for the shared one.
    host_clients: Mutex<HashMap<String, Option<Client>>>,
    /// Local and private hosts, decided once: whether they speak only
    /// plain HTTP ([`scheme`]).
    plain_http: Mutex<HashMap<String, bool>>,
    /// Plain HTTP clients for calls outside oci-client, per host and
    /// timeout: made once and sharing their connections across calls.
    http_clients: Mutex<HashMap<(String, Duration), reqwest::Client>>,
    opts: RegistryOptions,
    keys: Keychain,
    /// Bearer tokens for requests outside oci-client ([`raw`]), per host
    /// and repository, until they expire.
    tokens: Mutex<HashMap<String, (String, std::time::Instant)>>,
    /// When each (host, repository) was last authorized for pushing:
    /// oci-client's `auth` asks the registry's `/v2/` (and its token
    /// server) on every call, so a push of an image's blobs and manifest
    /// would pay that round trip for each; one per [`PUSH_LOGIN_REUSE`]
    /// is enough.
    push_logins: Mutex<HashMap<(String, String), std::time::Instant>>,
    /// One push authorization at a time: a push's concurrent blob uploads
    /// wait for the first instead of each asking the registry.
    push_login_gate: tokio::sync::Mutex<()>,
}

/// How long a push authorization is reused: well within the minute a
/// registry token lives at the least (the token spec's default).
const PUSH_LOGIN_REUSE: Duration = Duration::from_secs(30);

/// The client settings every host starts from.
fn client_config(opts: &RegistryOptions) -> ClientConfig {
    ClientConfig {
        protocol: if opts.insecure_hosts.is_empty() {
            ClientProtocol::Https
        } else if opts.insecure_hosts.iter().any(|h| h == "*") {
            ClientProtocol::Http
        } else {
            ClientProtocol::HttpsExcept(opts.insecure_hosts.clone())
        },
        accept_invalid_certificates: opts.skip_tls_verify,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(opts.stall_timeout.unwrap_or(Duration::from_secs(120))),
        platform_resolver: None,
        // One PUT streaming the whole blob (the distribution spec's POST
        // then PUT): oci-client's chunked mode sends one PATCH per 1 MiB
        // read, a round trip each, which doubled the time of a 48 MB
        // layer's upload on loopback — and ECR answers a chunked upload's
        // PATCHes with 201 and drops the bodies after the first
        // (aws/containers-roadmap#2831), so tools pushing there use PUT.
        use_monolithic_push: true,
        // The system's roots read once per process (see
        // `tls::system_roots`), not by every client made.
        tls_certs_only: crate::tls::system_roots()
            .iter()
            .map(|c| Certificate {
                encoding: CertificateEncoding::Der,
                data: c.to_vec(),
            })
            .collect(),
        ..Default::default()
    }
}

/// Layer downloads retried when no flag says otherwise: a reset or a stall
/// mid-layer is common in CI, and containerd and Docker retry layer
/// downloads five times.
pub const DEFAULT_LAYER_RETRIES: u32 = 5;

/// The attempts a layer's stream gets: `--image-download-retry` when given
/// (else [`DEFAULT_LAYER_RETRIES`]), and at least `--image-fs-extract-retry`
/// — Kiln extracts while it downloads, so a reset mid-layer is also the
/// extraction failure kaniko's users set that flag for.
pub fn layer_retries(download: Option<u32>, extract: Option<u32>) -> u32 {
    download
        .unwrap_or(DEFAULT_LAYER_RETRIES)
        .max(extract.unwrap_or(0))
}

pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    reference::parse(s).map_err(|source| RegistryError::BadReference {
        reference: s.to_string(),
        source,
    })
}

pub(super) const ACCEPT: &[&str] = &[
    image::OCI_MANIFEST,
    image::DOCKER_MANIFEST,
    image::OCI_INDEX,
    image::DOCKER_LIST,
];

impl Registry {
    /// Makes no client yet (see [`Registry::shared_client`]).
    pub fn new(opts: RegistryOptions, creds: DockerConfig) -> Result<Registry, RegistryError> {
        crate::tls::install_crypto_provider();
        let opts_logins = opts
            .logins
            .clone()
            .unwrap_or_else(|| Provider::DEFAULT.to_vec());
        Ok(Registry {
            client: Mutex::new(None),
            host_clients: Mutex::new(HashMap::new()),
            plain_http: Mutex::new(HashMap::new()),
            http_clients: Mutex::new(HashMap::new()),
            opts,
            keys: Keychain::new(creds, opts_logins),
            tokens: Mutex::new(HashMap::new()),
            push_logins: Mutex::new(HashMap::new()),
            push_login_gate: tokio::sync::Mutex::new(()),
        })
    }

    /// The client for `r`'s registry: its own when the host has CAs
    /// (`--registry-certificate`, certs.d), skips verification, or needs a
    /// client certificate (then through [`client_cert`]'s relay).
    pub(super) fn client(&self, r: &Reference) -> Result<Client, RegistryError> {
        let host = r.resolve_registry();
        let mut clients = self.host_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(host) {
            return c.clone().map_or_else(|| self.shared_client(), Ok);
        }
        let tls = self.host_tls(host)?;
        let own = if tls.is_default() && !self.plain_http(host) {
            None
        } else if tls.is_default() {
            let mut config = client_config(&self.opts);
            config.protocol = match config.protocol {
                ClientProtocol::HttpsExcept(mut v) => {
                    v.push(host.to_string());
                    ClientProtocol::HttpsExcept(v)
                }
                _ => ClientProtocol::HttpsExcept(vec![host.to_string()]),
            };
            Some(Client::try_from(config).map_err(|e| RegistryError::remote_err(r, e))?)
        } else {
            let mut config = client_config(&self.opts);
            config.accept_invalid_certificates |= tls.skip_verify;
            config.extra_root_certificates = tls
                .cas
                .iter()
                .map(|pem| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: pem.clone(),
                })
                .collect();
            if tls.client_cert.is_some() {
                let upstream = self.http_client_with(host, &tls, None)?;
                let relay = client_cert::Relay::start(host, upstream)?;
                config.http_proxy = Some(relay.proxy_url);
                config.protocol = match config.protocol {
                    ClientProtocol::Https => ClientProtocol::HttpsExcept(vec![host.to_string()]),
                    ClientProtocol::HttpsExcept(mut v) => {
                        v.push(host.to_string());
                        ClientProtocol::HttpsExcept(v)
                    }
                    ClientProtocol::Http => ClientProtocol::Http,
                };
            }
            Some(Client::try_from(config).map_err(|e| RegistryError::remote_err(r, e))?)
        };
        clients.insert(host.to_string(), own.clone());
        own.map_or_else(|| self.shared_client(), Ok)
    }

    /// The client for hosts without TLS settings of their own. Fails only
    /// when no HTTP client can be made at all; never panics (oci-client's
    /// `Client::new` falls back to a default reqwest client, which panics
    /// without CA certificates, and drops every setting).
    fn shared_client(&self) -> Result<Client, RegistryError> {
        let mut shared = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = &*shared {
            return Ok(c.clone());
        }
        let c = Client::try_from(client_config(&self.opts)).map_err(|e| RegistryError::Client {
            source: Box::new(e),
        })?;
        *shared = Some(c.clone());
        Ok(c)
    }

    /// A plain HTTP client for calls to `host` outside oci-client, with the
    /// host's TLS settings: CAs, verification, client certificate.
    pub fn http_client(
        &self,
        host: &str,
        timeout: Duration,
    ) -> Result<reqwest::Client, RegistryError> {
        let key = (host.to_string(), timeout);
        let mut clients = self.http_clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&key) {
            return Ok(c.clone());
        }
        let tls = self.host_tls(host)?;
        let c = self.http_client_with(host, &tls, Some(timeout))?;
        clients.insert(key, c.clone());
        Ok(c)
    }

    fn http_client_with(
        &self,
        host: &str,
        tls: &HostTls,
        timeout: Option<Duration>,
    ) -> Result<reqwest::Client, RegistryError> {
        let failed = |e: reqwest::Error| RegistryError::Remote {
            reference: host.to_string(),
            kind: RemoteKind::Other,
            source: Some(Box::new(e)),
        };
        let mut b = crate::tls::client_builder()
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(self.opts.stall_timeout.unwrap_or(Duration::from_secs(120)))
            .redirect(reqwest::redirect::Policy::none())
            .tls_danger_accept_invalid_certs(self.opts.skip_tls_verify || tls.skip_verify);
        if let Some(t) = timeout {
            b = b.timeout(t);
        }
        let mut roots = Vec::new();
        for pem in &tls.cas {
            roots.extend(reqwest::Certificate::from_pem_bundle(pem).map_err(failed)?);
        }
        b = b.tls_certs_merge(roots);
        if let Some(cc) = &tls.client_cert {
            b = b.identity(cc.identity(host)?);
        }
        b.build().map_err(failed)
    }

    /// What `host` needs beyond the shared client: CAs beside the system's,
    /// skipped verification, a client certificate.
    fn host_tls(&self, host: &str) -> Result<HostTls, RegistryError> {
        let mut files: Vec<PathBuf> = self.opts.host_cas.get(host).cloned().unwrap_or_default();
        let mut client_cert = self.opts.client_certs.get(host).cloned();
        if let Some(dir) = &self.opts.certs_d {
            // Docker names the directory `host:port`, containerd may use `host`.
            for d in [
                dir.join(host),
                dir.join(host.split(':').next().unwrap_or(host)),
            ] {
                let Ok(entries) = std::fs::read_dir(&d) else {
                    continue;
                };
                let (cert, key) = (d.join("client.cert"), d.join("client.key"));
                if client_cert.is_none() && cert.is_file() && key.is_file() {
                    client_cert = Some(ClientCert { cert, key });
                }
                let mut found: Vec<PathBuf> = entries
                    .flatten()
                    .map(|e| e.path())
                    .filter(|p| p.extension().is_some_and(|x| x == "crt"))
                    .collect();
                found.sort();
                files.extend(found);
            }
        }
        files.dedup();
        let cas = files
            .into_iter()
            .map(|path| {
                std::fs::read(&path).map_err(|source| RegistryError::Io {
                    path: path.clone(),
                    source,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(HostTls {
            cas,
            skip_verify: self.opts.skip_verify_hosts.iter().any(|h| h == host),
            client_cert,
        })
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The credential for `host`: config.json, then the built-in logins.
    pub async fn credential_for(&self, host: &str) -> Result<Credential, RegistryError> {
        self.settle_scheme(host).await;
        if let Some(t) = self.opts.host_tokens.get(host) {
            return Ok(Credential::Token(t.0.clone()));
        }
        if let Some(c) = self.keys.cached(host) {
            return Ok(c);
        }
        let base = self.base_url(host);
        let make = || {
            self.http_client(host, Duration::from_secs(30))
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)
        };
        let http = RegistryHttp {
            base: &base,
            client: &make,
        };
        Ok(self.keys.credential_for(host, &http).await?)
    }

    /// `http://<host>` for a host reached over plain HTTP (`--insecure…`,
    /// or a local or private host that answers only so: [`scheme`]),
    /// `https://<host>` otherwise.
    pub fn base_url(&self, host: &str) -> String {
        let insecure = self
            .opts
            .insecure_hosts
            .iter()
            .any(|h| h == "*" || h == host)
            || self.plain_http(host);
        format!("{}://{host}", if insecure { "http" } else { "https" })
    }

    pub(super) async fn auth_for(&self, r: &Reference) -> Result<RegistryAuth, RegistryError> {
        Ok(match self.credential_for(r.registry()).await? {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
            Credential::Token(t) => RegistryAuth::Bearer(t),
        })
    }

    /// References to try for an image: mapped registries and mirrors first.
    pub fn candidates(&self, r: &Reference) -> Vec<Reference> {
        let mut out = Vec::new();
        let mut hosts: Vec<String> = Vec::new();
        if let Some(m) = self.opts.registry_map.get(r.registry()) {
            hosts.extend(m.iter().cloned());
        }
        if r.registry() == "docker.io" {
            hosts.extend(self.opts.mirrors.iter().cloned());
        }
        for h in hosts {
            let (host, prefix) = match h.split_once('/') {
                Some((a, b)) => (a.to_string(), format!("{b}/")),
                None => (h.clone(), String::new()),
            };
            let repo = format!("{prefix}{}", r.repository());
            let m = match (r.tag(), r.digest()) {
                (_, Some(d)) => Reference::with_digest(host, repo, d.to_string()),
                (Some(t), None) => Reference::with_tag(host, repo, t.to_string()),
                (None, None) => Reference::with_tag(host, repo, "latest".into()),
            };
            out.push(m);
        }
        if out.is_empty() || !self.opts.skip_default_registry_fallback {
            out.push(r.clone());
        }
        out
    }
}
