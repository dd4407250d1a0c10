//! Object stores opened from URLs (`s3://`, `gs://`, `az://`, `file://`),
//! shared by build contexts and the cache server so both read credentials and
//! endpoints the same way: the standard environment (`AWS_*` including web
//! identity, `GOOGLE_*`, `AZURE_*`), plus query options on the URL such as
//! `s3://bucket/prefix?endpoint=http://127.0.0.1:9000&allow_http=true`.

use object_store::path::Path as ObjectPath;
use object_store::{BackoffConfig, ObjectStore, RetryConfig};
use std::sync::Arc;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ObjStoreError {
    #[error("object store URL {url:?}: {message}")]
    Url { url: String, message: String },
}

/// How long a store may keep retrying before it reports an outage. A build
/// context can wait; a cache server must answer 503 quickly instead.
#[derive(Debug, Clone, Copy)]
pub enum Patience {
    Patient,
    /// For a server answering clients: few, quick retries; a request ends
    /// after `total`, and a response that makes no progress for `stall`
    /// (a hung store: connections accepted, nothing answered) fails then.
    Quick {
        stall: Duration,
        total: Duration,
    },
}

/// Opens the store named by `url` and returns it with the key prefix below
/// the bucket (empty for a bare bucket).
pub fn open(
    url: &str,
    patience: Patience,
) -> Result<(Arc<dyn ObjectStore>, ObjectPath), ObjStoreError> {
    crate::tls::install_crypto_provider();
    // Query options may carry secrets: errors name the URL without them.
    let shown = url.split('?').next().unwrap_or_default();
    let err = |message: String| ObjStoreError::Url {
        url: shown.to_string(),
        message,
    };
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, q),
        None => (url, ""),
    };
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| err("expected <scheme>://<bucket>[/<prefix>]".into()))?;
    let mut options: Vec<(String, String)> = query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (p.to_string(), "true".to_string()),
        })
        .collect();
    if scheme == "file" {
        let dir = std::path::Path::new(rest);
        if !dir.is_absolute() {
            return Err(err(
                "file:// needs an absolute path (file:///var/lib/kiln)".into()
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| err(e.to_string()))?;
        return Ok((Arc::new(store), ObjectPath::default()));
    }
    let (bucket, prefix) = match rest.split_once('/') {
        Some((b, p)) => (b, p.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err(err("no bucket name".into()));
    }
    let retry = match patience {
        Patience::Patient => RetryConfig::default(),
        Patience::Quick { stall, total } => {
            // As config keys, not ClientOptions, which would replace what
            // from_env() read (AWS_ALLOW_HTTP among it). URL options win.
            options.insert(0, ("connect_timeout".into(), "2s".into()));
            options.insert(1, ("timeout".into(), format!("{}ms", total.as_millis())));
            options.insert(
                2,
                ("read_timeout".into(), format!("{}ms", stall.as_millis())),
            );
            RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(50),
                    max_backoff: Duration::from_millis(500),
                    base: 2.0,
                },
                max_retries: 2,
                retry_timeout: Duration::from_secs(5),
            }
        }
    };
    // The three builders share no trait; the same steps for each.
    macro_rules! build {
        ($builder:expr) => {{
            let mut b = $builder;
            for (k, v) in &options {
                let key = k
                    .parse()
                    .map_err(|e: object_store::Error| err(e.to_string()))?;
                b = b.with_config(key, v);
            }
            Arc::new(
                b.with_retry(retry)
                    .build()
                    .map_err(|e| err(e.to_string()))?,
            )
        }};
    }
    let store: Arc<dyn ObjectStore> = match scheme {
        "s3" => build!(object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket)),
        "gs" => {
            build!(object_store::gcp::GoogleCloudStorageBuilder::from_env().with_bucket_name(bucket))
        }
        "az" | "azure" => {
            build!(
                object_store::azure::MicrosoftAzureBuilder::from_env().with_container_name(bucket)
            )
        }
        other => {
            return Err(err(format!(
                "unsupported scheme {other:?} (s3, gs, az, file)"
            )))
        }
    };
    Ok((store, ObjectPath::from(prefix)))
}
