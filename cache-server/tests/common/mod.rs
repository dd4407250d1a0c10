//! Helpers for the cache server's tests: a server over each storage backend
//! (local disk, a real S3 API server), and registry API calls made with
//! reqwest so each test sees the raw statuses and headers.
#![allow(dead_code)]

pub use kiln_testkit::noise;
use kiln_testkit::{CacheServer, Registry, S3Server};
use sha2::{Digest as _, Sha256};
use std::path::Path;

pub fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_cache-server"))
}

/// A storage backend the suite runs against.
pub enum Backend {
    File,
    S3(S3Server),
    /// An upstream docker-registry fronted as the store, and an empty
    /// Docker config dir (anonymous access).
    Registry(Registry, tempfile::TempDir),
}

impl Backend {
    pub fn file() -> Backend {
        Backend::File
    }
    pub fn s3() -> Backend {
        let s3 = S3Server::start();
        s3.create_bucket("kiln");
        Backend::S3(s3)
    }
    pub fn registry() -> Backend {
        Backend::Registry(Registry::start(), tempfile::tempdir().unwrap())
    }
    pub fn storage(&self) -> Option<String> {
        match self {
            Backend::File => None,
            Backend::S3(_) => Some("s3://kiln/cache".into()),
            Backend::Registry(r, _) => {
                Some(format!("registry://{}/kiln-cache?insecure=true", r.addr))
            }
        }
    }
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            Backend::File => vec![],
            Backend::S3(s) => s.env(),
            Backend::Registry(_, d) => vec![("DOCKER_CONFIG", d.path().display().to_string())],
        }
    }
    /// Whether the backend keeps write times (expiry, GC) and can list and
    /// delete; a fronted registry does neither.
    pub fn full(&self) -> bool {
        !matches!(self, Backend::Registry(..))
    }
    pub fn start(&self, args: &[&str]) -> CacheServer {
        CacheServer::start(bin(), self.storage().as_deref(), args, &self.env())
    }
    /// A storage URL and environment for `cache-server gc` against the same
    /// store as `server`.
    pub fn storage_of(&self, server: &CacheServer) -> String {
        self.storage()
            .unwrap_or_else(|| format!("file://{}", server.dir.path().join("store").display()))
    }
}

/// One-shot GC (as the CronJob runs it) against `s`'s store; its report.
pub fn gc_once(b: &Backend, s: &CacheServer, args: &[&str]) -> serde_json::Value {
    let out = kiln_testkit::run(
        std::process::Command::new(bin())
            .args(["gc", "--storage", &b.storage_of(s), "--data-dir"])
            .arg(s.dir.path().join("gc-data"))
            .args(args)
            .envs(b.env()),
    );
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

pub fn client() -> reqwest::Client {
    kiln_common::tls::install_crypto_provider();
    reqwest::Client::new()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap()
}

/// Monolithic upload (POST ?digest=). Returns the status.
pub async fn put_blob(url: &str, repo: &str, data: &[u8]) -> u16 {
    let d = sha(data);
    client()
        .post(format!("{url}/v2/{repo}/blobs/uploads/?digest={d}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

pub async fn put_manifest(
    url: &str,
    repo: &str,
    reference: &str,
    body: &[u8],
) -> reqwest::Response {
    client()
        .put(format!("{url}/v2/{repo}/manifests/{reference}"))
        .header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap()
}

pub fn manifest_json(config: &[u8], layers: &[&[u8]]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(|l| {
            serde_json::json!({
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": sha(l), "size": l.len()})
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha(config), "size": config.len()},
        "layers": layers,
    }))
    .unwrap()
}

/// A cache entry: a config, one layer, a manifest tagged `tag`. Returns
/// (manifest digest, layer bytes).
pub async fn push_entry(
    url: &str,
    repo: &str,
    tag: &str,
    seed: u64,
    layer_len: usize,
) -> (String, Vec<u8>) {
    let layer = noise(seed, layer_len);
    let config = format!("{{\"entry\":\"{tag}\",\"seed\":{seed}}}").into_bytes();
    assert_eq!(put_blob(url, repo, &layer).await, 201);
    assert_eq!(put_blob(url, repo, &config).await, 201);
    let m = manifest_json(&config, &[&layer]);
    let r = put_manifest(url, repo, tag, &m).await;
    assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);
    (sha(&m), layer)
}

/// `HEAD url`: its status.
pub async fn head(url: &str) -> u16 {
    client().head(url).send().await.unwrap().status().as_u16()
}

pub async fn get(url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = client().get(url).send().await.unwrap();
    let s = r.status().as_u16();
    let h = r.headers().clone();
    (
        s,
        h,
        r.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
    )
}

pub async fn lookup(url: &str, repo: &str, keys: &[&str]) -> serde_json::Value {
    let r = client()
        .post(format!("{url}/v2/_kiln/lookup"))
        .body(serde_json::to_vec(&serde_json::json!({"repository": repo, "keys": keys})).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

/// Every blob file under a `file://` store hashes to its name.
pub fn assert_store_verifies(store: &Path) {
    let dir = store.join("blobs/sha256");
    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha(&data),
            format!("sha256:{name}"),
            "partial or corrupt blob visible: {name}"
        );
    }
}

/// Sends `data` as PATCH chunks of `chunk` bytes to an upload session at
/// `loc`, pausing `delay` before each; checks each 202 and its Range.
/// Returns the session's final location, or what went wrong.
pub async fn patch_chunks(
    url: &str,
    mut loc: String,
    data: &[u8],
    chunk: usize,
    delay: std::time::Duration,
) -> Result<String, String> {
    let c = client();
    let mut start = 0;
    for part in data.chunks(chunk) {
        tokio::time::sleep(delay).await;
        let r = c
            .patch(format!("{url}{loc}"))
            .header(
                "Content-Range",
                format!("{}-{}", start, start + part.len() - 1),
            )
            .body(part.to_vec())
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if r.status().as_u16() != 202 {
            return Err(format!("status {}", r.status()));
        }
        start += part.len();
        let range = r
            .headers()
            .get("range")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if range != format!("0-{}", start - 1) {
            return Err(format!("range {range:?} after {start} bytes"));
        }
        loc = r.headers()["location"].to_str().unwrap().to_string();
    }
    Ok(loc)
}

/// `POST /v2/<repo>/blobs/uploads/`: the new session's location.
pub async fn start_upload(url: &str, repo: &str) -> String {
    let r = client()
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 202);
    r.headers()["location"].to_str().unwrap().to_string()
}

/// The closing `PUT <location>?digest=…` with no body: its status and body.
pub async fn finish_upload(url: &str, loc: &str, digest: &str) -> (u16, String) {
    let sep = if loc.contains('?') { '&' } else { '?' };
    let r = client()
        .put(format!("{url}{loc}{sep}digest={digest}"))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// The executor built beside the server (`cargo nextest run --workspace`
/// builds both), building `ctx` with `--cache` into `repo` on `registry`
/// (plain HTTP) and writing its `--report`.
pub fn executor_build(
    ctx: &Path,
    work: &Path,
    registry: &str,
    repo: &str,
    report: &Path,
) -> std::process::Command {
    let mut c = std::process::Command::new(bin().with_file_name("executor"));
    c.arg("--context")
        .arg(ctx)
        .arg("--kaniko-dir")
        .arg(work.join("k"))
        .args([
            "--no-push",
            "--insecure-pull",
            "--insecure-registry",
            registry,
        ])
        .args(["--cache", "--cache-repo", repo, "--report"])
        .arg(report);
    c
}

/// Pulls `image` whole (manifest, config, layers) with skopeo into a fresh
/// layout.
pub fn skopeo_pull(image: &str) {
    let d = tempfile::tempdir().unwrap();
    kiln_testkit::run(std::process::Command::new("skopeo").args([
        "copy",
        "--quiet",
        "--src-tls-verify=false",
        &format!("docker://{image}"),
        &format!("oci:{}:x", d.path().display()),
    ]));
}
