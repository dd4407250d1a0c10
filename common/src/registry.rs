//! Registry access over the OCI distribution API, through `oci-client`.
//!
//! `Registry` adds what a builder needs on top of the client: credentials from
//! config.json, per-host insecure (HTTP) access, mirrors and `--registry-map`,
//! platform selection in indexes, retries with backoff, and blobs streamed to a
//! temp file, verified, then renamed — never a whole layer in memory.

use crate::auth::{Credential, DockerConfig};
use crate::digest::{Digest, DigestError};
use crate::image::{self, Descriptor, ImageConfig, ImageError, Manifest, ManifestKind, Platform};
use futures_util::StreamExt;
use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("invalid image reference {reference:?}: {message}")]
    BadReference { reference: String, message: String },
    /// The registry (or the way to it) failed; `kind` says how, so callers
    /// decide on it rather than on the text.
    #[error("{reference}: {kind}")]
    Remote {
        reference: String,
        kind: RemoteKind,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{reference}")]
    Image {
        reference: String,
        #[source]
        source: ImageError,
    },
    #[error("{reference}: blob {digest}")]
    Digest {
        reference: String,
        digest: Digest,
        #[source]
        source: DigestError,
    },
    #[error("{}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
}

/// How a registry request failed, classified once from oci-client's typed
/// errors (status codes and the distribution spec's error codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RemoteKind {
    /// The manifest, blob or repository does not exist.
    NotFound,
    /// No or wrong credentials.
    Unauthorized,
    /// Credentials accepted, access refused.
    Denied,
    /// HTTP 429 / TOOMANYREQUESTS: retried after what `Retry-After` asks
    /// (the URL is where to ask).
    RateLimited { url: String },
    /// Connection, timeout, 5xx: worth retrying.
    Transient,
    /// Anything else: a protocol or content problem retrying will not fix.
    Other,
}

impl std::fmt::Display for RemoteKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RemoteKind::NotFound => "not found",
            RemoteKind::Unauthorized => "unauthorized",
            RemoteKind::Denied => "access denied",
            RemoteKind::RateLimited { .. } => "rate limited by the registry",
            RemoteKind::Transient => "request failed",
            RemoteKind::Other => "registry error",
        })
    }
}

impl RemoteKind {
    /// Worth another attempt.
    pub fn is_transient(&self) -> bool {
        matches!(self, RemoteKind::Transient | RemoteKind::RateLimited { .. })
    }

    fn of(e: &(dyn std::error::Error + 'static)) -> RemoteKind {
        use oci_client::errors::{OciDistributionError as E, OciErrorCode as C};
        let Some(oe) = e.downcast_ref::<E>() else {
            return match e.downcast_ref::<reqwest::Error>() {
                Some(r) if r.status().is_some_and(|s| !s.is_server_error()) => RemoteKind::Other,
                _ => RemoteKind::Transient,
            };
        };
        match oe {
            E::ServerError { code: 429, url, .. } => RemoteKind::RateLimited { url: url.clone() },
            E::ServerError { code: 404, .. } | E::ImageManifestNotFoundError(_) => {
                RemoteKind::NotFound
            }
            E::ServerError { code: 401, .. }
            | E::UnauthorizedError { .. }
            | E::AuthenticationFailure(_) => RemoteKind::Unauthorized,
            E::ServerError { code: 403, .. } => RemoteKind::Denied,
            E::ServerError { code, .. } if *code >= 500 => RemoteKind::Transient,
            E::ServerError { .. } => RemoteKind::Other,
            E::RegistryError { envelope, url } => {
                let codes: Vec<&C> = envelope.errors.iter().map(|x| &x.code).collect();
                if codes.contains(&&C::Toomanyrequests) {
                    RemoteKind::RateLimited { url: url.clone() }
                } else if codes.iter().any(|c| {
                    matches!(
                        c,
                        C::ManifestUnknown
                            | C::BlobUnknown
                            | C::NameUnknown
                            | C::NotFound
                            | C::ManifestBlobUnknown
                    )
                }) {
                    RemoteKind::NotFound
                } else if codes.contains(&&C::Unauthorized) {
                    RemoteKind::Unauthorized
                } else if codes.contains(&&C::Denied) {
                    RemoteKind::Denied
                } else {
                    RemoteKind::Other
                }
            }
            E::RequestError(r) if r.status().is_some_and(|s| !s.is_server_error()) => {
                RemoteKind::Other
            }
            E::RequestError(_) | E::IoError(_) => RemoteKind::Transient,
            _ => RemoteKind::Other,
        }
    }
}

impl RegistryError {
    /// A failure Kiln itself detected (no underlying error).
    fn remote(reference: &Reference, kind: RemoteKind, what: impl std::fmt::Display) -> Self {
        RegistryError::Remote {
            reference: reference.whole(),
            kind,
            source: Some(what.to_string().into()),
        }
    }

    /// A client error, classified once; the error itself stays the source.
    fn remote_err<E>(reference: &Reference, e: E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let kind = RemoteKind::of(&e);
        RegistryError::Remote {
            reference: reference.whole(),
            kind,
            source: Some(Box::new(e)),
        }
    }

    /// The remote failure's kind, when this is one.
    pub fn remote_kind(&self) -> Option<&RemoteKind> {
        match self {
            RegistryError::Remote { kind, .. } => Some(kind),
            _ => None,
        }
    }

    fn is_transient(&self) -> bool {
        match self {
            RegistryError::Remote { kind, .. } => kind.is_transient(),
            RegistryError::Io { .. } => true,
            _ => false,
        }
    }
}

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
    /// Extra attempts for pulls (`--image-download-retry`).
    pub pull_retries: u32,
    /// Extra attempts for pushes (`--push-retry`).
    pub push_retries: u32,
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
    client: Client,
    opts: RegistryOptions,
    creds: DockerConfig,
    auth_cache: Mutex<HashMap<String, RegistryAuth>>,
}

pub fn parse_reference(s: &str) -> Result<Reference, RegistryError> {
    s.parse::<Reference>()
        .map_err(|e| RegistryError::BadReference {
            reference: s.to_string(),
            message: e.to_string(),
        })
}

const ACCEPT: &[&str] = &[
    image::OCI_MANIFEST,
    image::DOCKER_MANIFEST,
    image::OCI_INDEX,
    image::DOCKER_LIST,
];

impl Registry {
    pub fn new(opts: RegistryOptions, creds: DockerConfig) -> Registry {
        crate::tls::install_crypto_provider();
        let config = ClientConfig {
            protocol: if opts.insecure_hosts.is_empty() {
                ClientProtocol::Https
            } else if opts.insecure_hosts.iter().any(|h| h == "*") {
                ClientProtocol::Http
            } else {
                ClientProtocol::HttpsExcept(opts.insecure_hosts.clone())
            },
            accept_invalid_certificates: opts.skip_tls_verify,
            connect_timeout: Some(Duration::from_secs(15)),
            read_timeout: Some(Duration::from_secs(120)),
            platform_resolver: None,
            ..Default::default()
        };
        Registry {
            client: Client::new(config),
            opts,
            creds,
            auth_cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    /// The credential configured for `host` (for calls outside oci-client).
    pub fn credential_for(&self, host: &str) -> Result<Credential, RegistryError> {
        Ok(self.creds.credential_for(host)?)
    }

    fn auth_for(&self, r: &Reference) -> Result<RegistryAuth, RegistryError> {
        let host = r.resolve_registry().to_string();
        if let Ok(cache) = self.auth_cache.lock() {
            if let Some(a) = cache.get(&host) {
                return Ok(a.clone());
            }
        }
        let a = match self.creds.credential_for(r.registry())? {
            Credential::Anonymous => RegistryAuth::Anonymous,
            Credential::Basic { username, password } => RegistryAuth::Basic(username, password),
            Credential::Token(t) => RegistryAuth::Bearer(t),
        };
        if let Ok(mut cache) = self.auth_cache.lock() {
            cache.insert(host, a.clone());
        }
        Ok(a)
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

    async fn retry<T, F, Fut>(&self, attempts: u32, mut f: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let mut delay = Duration::from_millis(250);
        let mut n = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if n < attempts && e.is_transient() => {
                    n += 1;
                    let shown = crate::report::Report(&e).to_string();
                    let wait = match e.remote_kind() {
                        Some(RemoteKind::RateLimited { url }) => {
                            match self.retry_after(url).await {
                                Some(w) => {
                                    tracing::warn!("{shown}; the registry asks to retry after {w:?} ({n}/{attempts})");
                                    w
                                }
                                None => {
                                    tracing::warn!("{shown}; no Retry-After, retrying in {delay:?} ({n}/{attempts})");
                                    delay
                                }
                            }
                        }
                        _ => {
                            tracing::warn!("{shown}; retrying in {delay:?} ({n}/{attempts})");
                            delay
                        }
                    };
                    tokio::time::sleep(wait).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// How long a registry that answered 429 asks to wait, from its
    /// `Retry-After` header. oci-client does not expose response headers, so
    /// the request is repeated as a HEAD (which registries, Docker Hub among
    /// them, do not count as a pull), with a token obtained as the registry's
    /// challenge describes. `None` when the registry does not say (the caller
    /// then backs off exponentially). Waits are capped at 10 minutes.
    async fn retry_after(&self, url: &str) -> Option<Duration> {
        let parsed = reqwest::Url::parse(url).ok()?;
        let host = match parsed.port() {
            Some(p) => format!("{}:{p}", parsed.host_str()?),
            None => parsed.host_str()?.to_string(),
        };
        let cred = self
            .creds
            .credential_for(&host)
            .unwrap_or(Credential::Anonymous);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .tls_danger_accept_invalid_certs(self.opts.skip_tls_verify)
            .build()
            .ok()?;
        let with_cred = |req: reqwest::RequestBuilder| match &cred {
            Credential::Basic { username, password } => req.basic_auth(username, Some(password)),
            Credential::Token(t) => req.bearer_auth(t),
            Credential::Anonymous => req,
        };
        let mut resp = with_cred(http.head(url)).send().await.ok()?;
        if resp.status() == reqwest::StatusCode::UNAUTHORIZED {
            let challenge = resp
                .headers()
                .get(reqwest::header::WWW_AUTHENTICATE)?
                .to_str()
                .ok()?
                .to_string();
            let token = bearer_token(&http, &challenge, &cred).await?;
            resp = http.head(url).bearer_auth(token).send().await.ok()?;
        }
        if resp.status() != reqwest::StatusCode::TOO_MANY_REQUESTS {
            return None;
        }
        let v = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)?
            .to_str()
            .ok()?;
        parse_retry_after(v).map(|d| d.min(Duration::from_secs(600)))
    }

    /// Resolves a reference to one platform's manifest and config.
    pub async fn resolve(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let r = parse_reference(reference)?;
        let mut last = None;
        for c in self.candidates(&r) {
            match self
                .retry(self.opts.pull_retries, || self.resolve_at(&c, platform))
                .await
            {
                Ok(img) => return Ok(img),
                Err(e) => {
                    if c != r {
                        tracing::warn!(
                            "mirror {} failed: {}",
                            c.whole(),
                            crate::report::Report(&e)
                        );
                    }
                    last = Some(e);
                }
            }
        }
        Err(last
            .unwrap_or_else(|| RegistryError::remote(&r, RemoteKind::Other, "no registry to try")))
    }

    async fn resolve_at(
        &self,
        r: &Reference,
        platform: &Platform,
    ) -> Result<ResolvedImage, RegistryError> {
        let auth = self.auth_for(r)?;
        let (bytes, digest) = self
            .client
            .pull_manifest_raw(r, &auth, ACCEPT)
            .await
            .map_err(|e| RegistryError::remote_err(r, e))?;
        let digest = checked_manifest_digest(r, &bytes, &digest)?;
        let img_err = |source| RegistryError::Image {
            reference: r.whole(),
            source,
        };
        let (manifest, manifest_digest, index_digest, at, manifest_bytes) =
            match image::parse_manifest(&bytes, None, digest.as_str()).map_err(img_err)? {
                ManifestKind::Image(m) => (m, digest, None, r.clone(), bytes.to_vec()),
                ManifestKind::Index(idx) => {
                    let d = idx.select(platform).map_err(img_err)?.clone();
                    let pr = Reference::with_digest(
                        r.registry().to_string(),
                        r.repository().to_string(),
                        d.digest.to_string(),
                    );
                    let (mb, md) = self
                        .client
                        .pull_manifest_raw(&pr, &auth, ACCEPT)
                        .await
                        .map_err(|e| RegistryError::remote_err(&pr, e))?;
                    let md = checked_manifest_digest(&pr, &mb, &md)?;
                    d.digest
                        .verify(&md)
                        .map_err(|source| RegistryError::Digest {
                            reference: pr.whole(),
                            digest: d.digest.clone(),
                            source,
                        })?;
                    match image::parse_manifest(&mb, None, md.as_str()).map_err(img_err)? {
                        ManifestKind::Image(m) => (m, md, Some(digest), pr, mb.to_vec()),
                        ManifestKind::Index(_) => {
                            return Err(RegistryError::remote(
                                &pr,
                                RemoteKind::Other,
                                "nested image index is not supported",
                            ))
                        }
                    }
                }
            };
        let mut config_bytes = Vec::new();
        self.client
            .pull_blob(&at, manifest.config.digest.as_str(), &mut config_bytes)
            .await
            .map_err(|e| RegistryError::remote_err(&at, e))?;
        manifest
            .config
            .digest
            .verify(&Digest::sha256_of(&config_bytes))
            .map_err(|source| RegistryError::Digest {
                reference: at.whole(),
                digest: manifest.config.digest.clone(),
                source,
            })?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|source| RegistryError::Image {
                reference: at.whole(),
                source: ImageError::BadConfig {
                    digest: manifest.config.digest.to_string(),
                    source,
                },
            })?;
        let media_type = manifest
            .media_type
            .clone()
            .unwrap_or_else(|| image::OCI_MANIFEST.to_string());
        Ok(ResolvedImage {
            reference: at,
            manifest_digest,
            index_digest,
            manifest,
            manifest_bytes,
            media_type,
            config,
            config_bytes,
        })
    }

    /// Fetches a manifest by tag or digest; `Ok(None)` when the registry says
    /// it does not exist (a cache miss), `Err` when the registry could not answer.
    pub async fn get_manifest(
        &self,
        r: &Reference,
    ) -> Result<Option<(Vec<u8>, Digest)>, RegistryError> {
        let auth = self.auth_for(r)?;
        match self.client.pull_manifest_raw(r, &auth, ACCEPT).await {
            Ok((bytes, _)) => {
                let d = checked_manifest_digest(r, &bytes, "")?;
                Ok(Some((bytes.to_vec(), d)))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }

    /// The digest a tag points to, by HEAD (which Docker Hub does not count as a
    /// pull). `Ok(None)` when the registry says it does not exist.
    pub async fn head_manifest(&self, r: &Reference) -> Result<Option<Digest>, RegistryError> {
        let auth = self.auth_for(r)?;
        match self.client.fetch_manifest_digest(r, &auth).await {
            Ok(d) => Ok(Some(d.parse().map_err(|source| RegistryError::Digest {
                reference: r.whole(),
                digest: Digest::sha256_of(b""),
                source,
            })?)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }

    /// Pushes a small blob held in memory (configs); layers use [`Self::push_blob_file`].
    pub async fn push_blob_bytes(
        &self,
        r: &Reference,
        data: &[u8],
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(data);
        if self.blob_exists(r, &digest).await? {
            return Ok(digest);
        }
        let data = data.to_vec();
        let d = digest.clone();
        self.retry(self.opts.push_retries, || {
            let data = data.clone();
            let d = d.clone();
            async move {
                self.client
                    .push_blob(r, data, d.as_str())
                    .await
                    .map_err(|e| RegistryError::remote_err(r, e))?;
                Ok(())
            }
        })
        .await?;
        Ok(digest)
    }

    /// Streams a blob into `dest`, verifying its digest; `dest` appears only
    /// complete (temp file in the same directory, fsync, rename).
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        self.fetch_blob_progress(r, desc, dest, None).await
    }

    /// Fetches a blob into `dest`, verified, adding the bytes received to
    /// `progress` as they arrive (for a progress display). A transfer that breaks part-way
    /// is resumed from the bytes already received (a Range request), not
    /// restarted, within this call and after a crash: bytes land in
    /// `.partial-<hex>` beside `dest`, held under an exclusive `flock`, and a
    /// later call picks up where it stopped (a concurrent one, finding it
    /// locked, downloads privately instead). A registry that ignores the
    /// range sends the whole blob and the partial bytes are discarded. A
    /// whole-blob stream is verified by oci-client as it arrives (one hash
    /// pass); a resumed file is hashed once complete.
    pub async fn fetch_blob_progress(
        &self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
        progress: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<u64, RegistryError> {
        use std::io::Seek;
        let io = |source| RegistryError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let dir = dest.parent().unwrap_or(Path::new("."));
        let partial_path = dir.join(format!(".partial-{}", desc.digest.hex()));
        let mut private = None;
        let (mut file, path, lock) = match open_partial(&partial_path) {
            Some((f, lock)) => (f, partial_path.clone(), Some(lock)),
            None => {
                let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
                let (f, p) = tmp.into_parts();
                let path = p.to_path_buf();
                private = Some(p);
                (f, path, None)
            }
        };
        let start = file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        if start > 0 {
            tracing::info!(
                "resuming {} from an earlier run at byte {start}",
                desc.digest
            );
        }
        let partial = tokio::sync::Mutex::new(PartialBlob {
            w: std::io::BufWriter::with_capacity(1 << 20, file),
            written: start,
            resumed: false,
        });
        self.retry(self.opts.pull_retries, || async {
            let mut p = partial.lock().await;
            self.fetch_more(r, desc, &mut p, dest, progress).await
        })
        .await?;
        let p = partial.into_inner();
        let file = p.w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(io)?;
        if p.resumed {
            let (digest, _) = crate::digest::digest_file(&path).map_err(io)?;
            if let Err(source) = desc.digest.verify(&digest) {
                let _ = std::fs::remove_file(&path);
                return Err(RegistryError::Digest {
                    reference: r.whole(),
                    digest: desc.digest.clone(),
                    source,
                });
            }
        }
        match private {
            Some(tmp) => tmp.persist(dest).map_err(|e| io(e.error))?,
            None => std::fs::rename(&path, dest).map_err(io)?,
        }
        drop(lock);
        Ok(p.written)
    }

    /// One attempt: appends what the registry sends from where `p` stands.
    async fn fetch_more(
        &self,
        r: &Reference,
        desc: &Descriptor,
        p: &mut PartialBlob,
        dest: &Path,
        progress: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<(), RegistryError> {
        use std::io::Seek;
        let io = |source| RegistryError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let truncate = |p: &mut PartialBlob| -> Result<(), RegistryError> {
            p.w.flush().map_err(io)?;
            let f = p.w.get_mut();
            f.set_len(0).map_err(io)?;
            f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
            p.written = 0;
            p.resumed = false;
            Ok(())
        };
        if desc.size > 0 && p.written >= desc.size {
            if p.written == desc.size {
                // Complete before a crash, not yet renamed: only verify.
                p.resumed = true;
                return Ok(());
            }
            truncate(p)?;
        }
        let offset = p.written;
        if offset > 0 {
            tracing::info!("resuming {} at byte {offset}", desc.digest);
        }
        let got = self
            .blob_stream(r, &desc.digest, offset, None)
            .await?
            .ok_or_else(|| {
                RegistryError::remote(r, RemoteKind::NotFound, format!("blob {}", desc.digest))
            })?;
        if offset > 0 && got.partial {
            p.resumed = true;
        } else if offset > 0 {
            // The registry ignored the range: start over.
            truncate(p)?;
        }
        let mut stream = got.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            p.w.write_all(&chunk).map_err(io)?;
            p.written += chunk.len() as u64;
            if let Some(pr) = progress {
                pr.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A blob's bytes as a stream, from `offset` and for `length` bytes when
    /// given (a resumed or ranged read; such partial reads are not verified
    /// here, the caller hashes what it assembles). `Ok(None)` when absent.
    /// Also returns the length the registry announced.
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<BlobStream>, RegistryError> {
        use oci_client::client::BlobResponse;
        let mut partial = false;
        let auth = self.auth_for(r)?;
        self.client
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let res = if offset == 0 && length.is_none() {
            self.client.pull_blob_stream(r, digest.as_str()).await
        } else {
            self.client
                .pull_blob_stream_partial(r, digest.as_str(), offset, length)
                .await
                .map(|b| match b {
                    BlobResponse::Full(s) => s,
                    BlobResponse::Partial(s) => {
                        partial = true;
                        s
                    }
                })
        };
        match res {
            Ok(s) => {
                let reference = r.clone();
                let len = s.content_length;
                let stream = s
                    .stream
                    .map(move |c| c.map_err(|e| RegistryError::remote_err(&reference, e)))
                    .boxed();
                Ok(Some(BlobStream {
                    len,
                    partial,
                    stream,
                }))
            }
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }

    /// The repository's tags; empty when the repository does not exist.
    pub async fn list_tags(&self, r: &Reference) -> Result<Vec<String>, RegistryError> {
        let auth = self.auth_for(r)?;
        match self.client.list_tags(r, &auth, None, None).await {
            Ok(t) => Ok(t.tags),
            Err(e) if is_not_found(&e) => Ok(Vec::new()),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }

    /// Obtains push credentials (a bearer token with push scope, where the
    /// registry uses tokens) for `r`'s repository.
    async fn auth_push(&self, r: &Reference) -> Result<(), RegistryError> {
        let auth = self.auth_for(r)?;
        self.client
            .auth(r, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| RegistryError::remote_err(r, e))?;
        Ok(())
    }

    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        self.auth_push(r).await?;
        self.client
            .blob_exists(r, digest.as_str())
            .await
            .map_err(|e| RegistryError::remote_err(r, e))
    }

    /// Cross-repository mount; `Ok(false)` when the registry declined.
    pub async fn mount_blob(
        &self,
        r: &Reference,
        from: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if r.resolve_registry() != from.resolve_registry() {
            return Ok(false);
        }
        self.auth_push(r).await?;
        Ok(self
            .client
            .mount_blob(r, from, digest.as_str())
            .await
            .is_ok())
    }

    /// Streams a file as a blob (monolithic PUT with known size).
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        self.retry(self.opts.push_retries, || async {
            self.auth_push(r).await?;
            let file = tokio::fs::File::open(path)
                .await
                .map_err(|source| RegistryError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            let stream = tokio_util_stream(file);
            self.client
                .push_blob_stream(r, stream, digest.as_str(), Some(size))
                .await
                .map_err(|e| RegistryError::remote_err(r, e))?;
            Ok(())
        })
        .await
    }

    pub async fn push_manifest(
        &self,
        r: &Reference,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(&body);
        let body = bytes::Bytes::from(body);
        self.retry(self.opts.push_retries, || async {
            self.auth_push(r).await?;
            let ct = media_type.parse().map_err(|_| {
                RegistryError::remote(r, RemoteKind::Other, format!("bad media type {media_type}"))
            })?;
            self.client
                .push_manifest_raw(r, body.clone(), ct)
                .await
                .map_err(|e| RegistryError::remote_err(r, e))?;
            Ok(())
        })
        .await?;
        Ok(digest)
    }
}

/// `Retry-After`: seconds, or an HTTP date.
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    (when.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// A token for a `Bearer realm=…,service=…,scope=…` challenge.
async fn bearer_token(
    http: &reqwest::Client,
    challenge: &str,
    cred: &Credential,
) -> Option<String> {
    let params = challenge
        .strip_prefix("Bearer ")
        .or_else(|| challenge.strip_prefix("bearer "))?;
    let mut realm = None;
    let mut query = Vec::new();
    for part in params.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        let v = v.trim_matches('"').to_string();
        if k == "realm" {
            realm = Some(v);
        } else {
            query.push((k.to_string(), v));
        }
    }
    let mut req = http.get(realm?).query(&query);
    if let Credential::Basic { username, password } = cred {
        req = req.basic_auth(username, Some(password));
    }
    let body = req.send().await.ok()?.bytes().await.ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    v.get("token")
        .or_else(|| v.get("access_token"))
        .and_then(|t| t.as_str())
        .map(str::to_string)
}

/// Opens (or creates) a partial download and takes its lock; `None` when
/// another process holds it or it cannot be opened.
fn open_partial(path: &Path) -> Option<(std::fs::File, nix::fcntl::Flock<std::fs::File>)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    // The lock is on the open file description, shared with the clone.
    let lock = nix::fcntl::Flock::lock(
        f.try_clone().ok()?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .ok()?;
    Some((f, lock))
}

/// A blob being fetched into a file across attempts.
struct PartialBlob {
    w: std::io::BufWriter<std::fs::File>,
    written: u64,
    /// Some bytes came from a ranged (unverified) response.
    resumed: bool,
}

/// A blob being read.
pub struct BlobStream {
    /// The length the registry announced.
    pub len: Option<u64>,
    /// Whether the registry honoured a range (else this is the whole blob).
    pub partial: bool,
    pub stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, RegistryError>>,
}

/// Whether oci-client's error says "not there" (as opposed to "could not ask").
fn is_not_found(e: &oci_client::errors::OciDistributionError) -> bool {
    use oci_client::errors::{OciDistributionError as E, OciErrorCode};
    match e {
        E::RegistryError { envelope, .. } => envelope.errors.iter().any(|x| {
            matches!(
                x.code,
                OciErrorCode::ManifestUnknown
                    | OciErrorCode::NameUnknown
                    | OciErrorCode::BlobUnknown
            )
        }),
        E::ImageManifestNotFoundError(_) | E::ServerError { code: 404, .. } => true,
        _ => false,
    }
}

/// Streams a file in 1 MiB chunks without reading it whole.
fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, oci_client::errors::OciDistributionError>>
       + Send
       + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((
                Err(oci_client::errors::OciDistributionError::IoError(e)),
                None,
            )),
        }
    })
}

fn checked_manifest_digest(
    r: &Reference,
    bytes: &[u8],
    claimed: &str,
) -> Result<Digest, RegistryError> {
    let actual = Digest::sha256_of(bytes);
    if let Some(want) = r.digest() {
        let want: Digest = want.parse().map_err(|source| RegistryError::Digest {
            reference: r.whole(),
            digest: actual.clone(),
            source,
        })?;
        want.verify(&actual)
            .map_err(|source| RegistryError::Digest {
                reference: r.whole(),
                digest: want.clone(),
                source,
            })?;
    }
    if !claimed.is_empty() && claimed != actual.as_str() {
        tracing::debug!(
            "{}: registry reported digest {claimed}, content hashes to {actual}",
            r.whole()
        );
    }
    Ok(actual)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remote_failures_are_classified_from_typed_errors() {
        use oci_client::errors::{OciDistributionError as E, OciEnvelope, OciError, OciErrorCode};
        let server = |code| E::ServerError {
            code,
            url: "http://r/v2/x".into(),
            message: String::new(),
        };
        let envelope = |code| E::RegistryError {
            envelope: OciEnvelope {
                errors: vec![OciError {
                    code,
                    message: "m".into(),
                    detail: serde_json::Value::Null,
                }],
            },
            url: "http://r/v2/x".into(),
        };
        let r: Reference = "r/x:1".parse().unwrap();
        let kind = |e: E| RegistryError::remote_err(&r, e).remote_kind().cloned();
        assert_eq!(kind(server(404)), Some(RemoteKind::NotFound));
        assert_eq!(kind(server(503)), Some(RemoteKind::Transient));
        assert_eq!(kind(server(403)), Some(RemoteKind::Denied));
        assert_eq!(
            kind(server(429)),
            Some(RemoteKind::RateLimited {
                url: "http://r/v2/x".into()
            })
        );
        assert_eq!(
            kind(envelope(OciErrorCode::ManifestUnknown)),
            Some(RemoteKind::NotFound)
        );
        assert_eq!(
            kind(envelope(OciErrorCode::Unauthorized)),
            Some(RemoteKind::Unauthorized)
        );
        let e = RegistryError::remote_err(&r, server(502));
        assert!(e.is_transient());
        assert!(!RegistryError::remote_err(&r, server(404)).is_transient());
        // The message names the reference and the kind; the cause stays a source.
        assert_eq!(e.to_string(), "docker.io/r/x:1: request failed");
        assert!(crate::report::Report(&e).to_string().contains("code: 502"));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        let later = chrono::Utc::now() + chrono::Duration::seconds(30);
        let d = parse_retry_after(&later.to_rfc2822()).expect("a date");
        assert!(
            d > Duration::from_secs(25) && d <= Duration::from_secs(30),
            "{d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
