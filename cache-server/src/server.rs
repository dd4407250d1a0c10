//! Startup and shutdown, top to bottom: open the store, the tiers, the
//! staging area and the access policy; bind; serve until the one cancel
//! signal; then stop accepting, let in-flight requests (uploads included)
//! finish until the drain deadline, and return.

use crate::api::{self, App};
use crate::auth::Auth;
use crate::gc::{self, GcOptions};
use crate::metrics::Metrics;

use crate::store::{Store, StoreConfig};
use crate::uploads::Uploads;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Storage(#[from] crate::backend::StorageError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Upload(#[from] crate::uploads::UploadError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error("listen on {addr}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    Mirror(#[from] crate::mirror::MirrorError),
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub storage: String,
    /// Staging area and disk tier; defaults beside a `file://` store, else
    /// under the system temp dir.
    pub data_dir: Option<PathBuf>,
    pub store: StoreConfig,
    pub auth_file: Option<PathBuf>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub gc: GcOptions,
    /// Online GC runs this often; `None` leaves it to `cache-server gc`.
    pub gc_interval: Option<Duration>,
    pub shutdown_timeout: Duration,
    /// Pull-through mirror mode (`--mirror`); `None`: a cache only.
    pub mirror: Option<crate::mirror::MirrorConfig>,
}

impl ServerConfig {
    pub fn new(listen: SocketAddr, storage: &str) -> ServerConfig {
        ServerConfig {
            listen,
            storage: storage.to_string(),
            data_dir: None,
            store: StoreConfig::default(),
            auth_file: None,
            tls: None,
            gc: GcOptions {
                ttl: StoreConfig::default().ttl,
                max_size: None,
                max_size_per_repo: None,
                grace: Duration::from_secs(3600),
                dry_run: false,
            },
            gc_interval: None,
            shutdown_timeout: Duration::from_secs(30),
            mirror: None,
        }
    }
}

/// Opens the store as a server or `cache-server gc` does.
pub async fn open_store(
    cfg: &ServerConfig,
    metrics: Arc<Metrics>,
) -> Result<(Store, PathBuf), ServerError> {
    let storage = crate::backend::open(
        &cfg.storage,
        crate::backend::Deadlines {
            stall: cfg.store.transfer_stall_timeout,
            total: cfg.store.transfer_timeout,
        },
    )?;
    let data_dir = match (&cfg.data_dir, storage.local_root()) {
        (Some(d), _) => d.clone(),
        (None, Some(root)) => root.join(".kiln"),
        (None, None) => std::env::temp_dir().join("kiln-cache-server"),
    };
    metrics.store_budget_bytes.set(
        cfg.gc
            .max_size
            .map_or(0, |b| i64::try_from(b).unwrap_or(i64::MAX)),
    );
    let mut store_cfg = cfg.store.clone();
    store_cfg.disk_dir = Some(data_dir.join("blobs"));
    let store = Store::new(storage, store_cfg, metrics).await?;
    Ok((store, data_dir))
}

pub async fn run(cfg: ServerConfig, cancel: CancellationToken) -> Result<(), ServerError> {
    let metrics = Arc::new(Metrics::new());
    let (store, data_dir) = open_store(&cfg, metrics).await?;
    match store.probe().await {
        Ok(()) => tracing::info!("storage {} reachable", store.describe()),
        Err(e) => tracing::warn!(
            "storage {} not reachable yet ({e}); serving, /readyz reports it",
            store.describe()
        ),
    }
    let uploads = Uploads::open(&data_dir.join("uploads"), store.shares_uploads())?;
    tracing::info!(
        "upload sessions: {}",
        if store.shares_uploads() {
            "kept in the store (any replica continues them)"
        } else {
            "kept in this process (chunked uploads need session affinity)"
        }
    );
    let auth = match &cfg.auth_file {
        Some(p) => Auth::load(p)?,
        None => Auth::open(),
    };
    let mirror = match &cfg.mirror {
        Some(m) if !m.upstreams.is_empty() => {
            for u in &m.upstreams {
                tracing::info!("mirror of {} at {}", u.host, u.url);
            }
            Some(crate::mirror::Mirror::new(
                m.clone(),
                data_dir.join("mirror"),
            )?)
        }
        _ => None,
    };
    let app = Arc::new(App {
        store,
        uploads,
        auth,
        mirror,
    });

    let router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .fallback(api::handle)
        .with_state(app.clone());

    let tcp = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServerError::Bind {
            addr: cfg.listen,
            source,
        })?;
    let addr = tcp.local_addr().map_err(|source| ServerError::Bind {
        addr: cfg.listen,
        source,
    })?;
    let scheme = if cfg.tls.is_some() { "https" } else { "http" };
    tracing::info!("serving {scheme}://{addr} from {}", app.store.describe());
    // Tests and scripts read the bound port from this line.
    println!("listening on {addr}");

    let background = spawn_background(app.clone(), &cfg, cancel.clone());
    let drain = cancel.clone();
    let served = match &cfg.tls {
        None => tokio::spawn(
            axum::serve(tcp, router)
                .with_graceful_shutdown(async move { drain.cancelled().await })
                .into_future(),
        ),
        Some((cert, key)) => {
            let listener = crate::tls::TlsListener::new(tcp, cert, key)?;
            tokio::spawn(
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { drain.cancelled().await })
                    .into_future(),
            )
        }
    };
    tokio::pin!(served);
    tokio::select! {
        r = &mut served => {
            if let Ok(Err(e)) = r {
                tracing::error!("server stopped: {}", kiln_common::report::Report(&e));
            }
        }
        _ = cancel.cancelled() => {
            tracing::info!("shutting down: draining for up to {:?} ({} uploads open)", cfg.shutdown_timeout, app.uploads.active());
            if tokio::time::timeout(cfg.shutdown_timeout, &mut served).await.is_err() {
                tracing::warn!("drain deadline passed; closing remaining connections");
                served.abort();
            }
        }
    }
    cancel.cancel();
    let _ = background.await;
    tracing::info!("stopped");
    Ok(())
}

/// Upload sweeping and online GC, both stopping on the cancel signal.
fn spawn_background(
    app: Arc<App>,
    cfg: &ServerConfig,
    cancel: CancellationToken,
) -> tokio::task::JoinHandle<()> {
    let gc = cfg
        .gc_interval
        .filter(|_| app.store.keeps_times())
        .map(|every| (every, cfg.gc.clone()));
    let census = GcOptions {
        dry_run: true,
        ..cfg.gc.clone()
    };
    tokio::spawn(async move {
        // A dry run at startup fills the stored-bytes gauges before any GC.
        if app.store.keeps_times() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                r = gc::collect(&app.store, &census) => {
                    if let Err(e) = r {
                        tracing::warn!("startup census of the store failed: {}", kiln_common::report::Report(&e));
                    }
                }
            }
        }
        let mut sweep = tokio::time::interval(Duration::from_secs(60));
        let gc_every = gc.as_ref().map_or(Duration::from_secs(3600), |g| g.0);
        let mut gc_tick =
            tokio::time::interval_at(tokio::time::Instant::now() + gc_every, gc_every);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = sweep.tick() => app.uploads.sweep(&app.store).await,
                _ = gc_tick.tick(), if gc.is_some() => {
                    if let Some((_, opts)) = &gc {
                        match gc::collect(&app.store, opts).await {
                            Ok(r) => tracing::info!(
                                "gc: {} expired, {} evicted, {} manifests and {} blobs ({} bytes) deleted",
                                r.tags_expired.len(), r.tags_evicted.len(), r.manifests_deleted, r.blobs_deleted, r.bytes_deleted
                            ),
                            Err(e) => {
                                app.store.metrics().gc_failures.inc();
                                tracing::warn!("gc failed, will retry: {}", kiln_common::report::Report(&e));
                            }
                        }
                    }
                }
            }
        }
    })
}

async fn metrics_text(State(app): State<Arc<App>>) -> impl IntoResponse {
    (
        [(
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.store.metrics().encode(),
    )
}

async fn readyz(State(app): State<Arc<App>>) -> impl IntoResponse {
    match tokio::time::timeout(Duration::from_secs(2), app.store.probe()).await {
        Ok(Ok(())) => (StatusCode::OK, "ready".to_string()),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("storage unavailable: {}", kiln_common::report::Report(&e)),
        ),
        Err(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "storage did not answer in 2s".to_string(),
        ),
    }
}
