//! Flags shared by the subcommands, and the config file they may come from.
//! Precedence: flag, then environment variable, then config file, then default.

mod gc;
mod serve;

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand};
use kiln_cache_server::gc::GcOptions;
use kiln_cache_server::server::ServerConfig;
use kiln_common::units::parse_size;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "cache-server",
    version,
    about = "Kiln's shared layer cache: an OCI registry with tiers, expiry and hit-rate metrics"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log level (error, warn, info, debug, trace).
    #[arg(long, global = true, env = "KILN_LOG", default_value = "info")]
    pub verbosity: String,
    /// Log as JSON lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve the registry API, batch lookups and metrics.
    Serve(Common),
    /// Expire entries and delete unreferenced blobs once, then exit (for a CronJob).
    Gc {
        #[command(flatten)]
        common: Common,
        /// Report what would be deleted without deleting anything.
        #[arg(long)]
        dry_run: bool,
        /// Push the run's figures to this Prometheus Pushgateway (job
        /// `kiln-cache-gc`): a CronJob's metrics, and "GC has not run" alerts.
        #[arg(long, env = "KILN_PUSHGATEWAY")]
        pushgateway: Option<String>,
    },
}

/// Settings of both subcommands. Every one is optional here so a config
/// file can fill what flags and environment leave unset.
#[derive(Args, Debug, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Common {
    /// JSON file with any of these settings, by long flag name.
    #[arg(long, env = "KILN_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:5000].
    #[arg(long, env = "KILN_LISTEN")]
    pub listen: Option<String>,
    /// file:///dir, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix,
    /// or registry://host/repo[?insecure=true] [default: file:///var/lib/kiln-cache].
    #[arg(long, env = "KILN_STORAGE")]
    pub storage: Option<String>,
    /// Staging area and local disk tier [default: beside a file:// store, else $TMPDIR/kiln-cache-server].
    #[arg(long, env = "KILN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Disk tier size cap [default: 20GiB].
    #[arg(long, env = "KILN_DISK_CACHE_SIZE")]
    pub disk_cache_size: Option<String>,
    /// Memory tier size for manifests [default: 256MiB].
    #[arg(long, env = "KILN_MEMORY_CACHE_SIZE")]
    pub memory_cache_size: Option<String>,
    /// Expire entries unused for this long; 0 never expires [default: 336h].
    #[arg(long, env = "KILN_TTL")]
    pub ttl: Option<String>,
    /// A hit refreshes its entry's last use when older than this [default: 10m].
    #[arg(long, env = "KILN_TOUCH_AFTER")]
    pub touch_after: Option<String>,
    /// Total blob bytes to keep; least recently used entries are evicted by GC.
    #[arg(long, env = "KILN_MAX_SIZE")]
    pub max_size: Option<String>,
    /// Blob bytes each repository's entries may reference; its least
    /// recently used entries are evicted by GC beyond it.
    #[arg(long, env = "KILN_MAX_SIZE_PER_REPO")]
    pub max_size_per_repo: Option<String>,
    /// Run GC this often inside the server; 0 disables [default: 1h].
    #[arg(long, env = "KILN_GC_INTERVAL")]
    pub gc_interval: Option<String>,
    /// GC spares unreferenced blobs and untagged manifests younger than this [default: 1h].
    #[arg(long, env = "KILN_GC_GRACE")]
    pub gc_grace: Option<String>,
    /// Access policy (JSON); without it anyone may read and write.
    #[arg(long, env = "KILN_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,
    /// PEM certificate chain for HTTPS.
    #[arg(long, env = "KILN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for HTTPS.
    #[arg(long, env = "KILN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Largest manifest accepted [default: 4MiB].
    #[arg(long, env = "KILN_MAX_MANIFEST_SIZE")]
    pub max_manifest_size: Option<String>,
    /// How long tags stay in the memory tier before the store is asked again [default: 5s].
    #[arg(long, env = "KILN_TAG_CACHE_TTL")]
    pub tag_cache_ttl: Option<String>,
    /// How long in-flight requests may take to finish at shutdown [default: 30s].
    #[arg(long, env = "KILN_SHUTDOWN_TIMEOUT")]
    pub shutdown_timeout: Option<String>,
    /// Deadline of a small backend call; a lookup past it answers 503 [default: 10s].
    #[arg(long, env = "KILN_BACKEND_TIMEOUT")]
    pub backend_timeout: Option<String>,
    /// Deadline of a blob upload or listing [default: 10m].
    #[arg(long, env = "KILN_TRANSFER_TIMEOUT")]
    pub transfer_timeout: Option<String>,
    /// A blob transfer from the backend that makes no progress for this
    /// long fails (a store that accepts and then hangs) [default: 30s].
    #[arg(long, env = "KILN_TRANSFER_STALL_TIMEOUT")]
    pub transfer_stall_timeout: Option<String>,
    /// After repeated backend timeouts, skip the backend for this long [default: 30s].
    #[arg(long, env = "KILN_BREAKER_COOL_OFF")]
    pub breaker_cool_off: Option<String>,
    /// Be a pull-through mirror of a registry: `<host>=<url>`, repeatable
    /// (`docker.io=https://registry-1.docker.io`). Pulls are routed by
    /// containerd's `ns=<host>`, by a repository named `<host>/<repo>`, or
    /// (`--mirror-only`) to the first.
    #[arg(long, env = "KILN_MIRROR", value_delimiter = ',')]
    #[serde(default)]
    pub mirror: Vec<String>,
    /// Send every pull to the first `--mirror` (Docker Engine's
    /// `registry-mirrors` sends no `ns`); the server is then a mirror only.
    #[arg(long, env = "KILN_MIRROR_ONLY", num_args = 0..=1, default_missing_value = "true")]
    pub mirror_only: Option<bool>,
    /// How long a mirrored tag is served without asking the upstream (then
    /// one manifest HEAD) [default: 5m].
    #[arg(long, env = "KILN_MIRROR_REVALIDATE")]
    pub mirror_revalidate: Option<String>,
    /// The longest an upstream manifest request (or a blob's first byte)
    /// may take before the kept copy is served [default: 10s].
    #[arg(long, env = "KILN_MIRROR_TIMEOUT")]
    pub mirror_timeout: Option<String>,
    /// The upstreams' credentials: a Docker `config.json` (`auths`,
    /// `credHelpers` per upstream host). Without it, Docker's usual file
    /// (`$DOCKER_CONFIG`, `~/.docker`); `KANIKO_<HOST>_USER` / `_PASSWORD`
    /// and the cloud logins apply either way. Logins are refreshed every
    /// 30 minutes and on a 401.
    #[arg(long, env = "KILN_MIRROR_CREDENTIALS")]
    pub mirror_credentials: Option<std::path::PathBuf>,
}

impl Common {
    /// Fills unset settings from the config file.
    fn merged(mut self) -> anyhow::Result<Common> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text =
            std::fs::read(&path).with_context(|| format!("config file {}", path.display()))?;
        let f: Common = serde_json::from_slice(&text)
            .with_context(|| format!("config file {}", path.display()))?;
        macro_rules! fill {
            ($($f:ident),*) => { $( if self.$f.is_none() { self.$f = f.$f; } )* };
        }
        fill!(
            listen,
            storage,
            data_dir,
            disk_cache_size,
            memory_cache_size,
            ttl,
            touch_after,
            max_size,
            max_size_per_repo,
            gc_interval,
            gc_grace,
            auth_file,
            tls_cert,
            tls_key,
            max_manifest_size,
            tag_cache_ttl,
            shutdown_timeout,
            backend_timeout,
            transfer_timeout,
            transfer_stall_timeout,
            breaker_cool_off,
            mirror_only,
            mirror_revalidate,
            mirror_timeout,
            mirror_credentials
        );
        if self.mirror.is_empty() {
            self.mirror = f.mirror;
        }
        Ok(self)
    }

    fn into_config(self) -> anyhow::Result<ServerConfig> {
        let c = self.merged()?;
        let listen = c.listen.as_deref().unwrap_or("127.0.0.1:5000");
        let listen = listen
            .parse()
            .with_context(|| format!("--listen {listen:?}"))?;
        let storage = c.storage.as_deref().unwrap_or("file:///var/lib/kiln-cache");
        let mut cfg = ServerConfig::new(listen, storage);
        cfg.data_dir = c.data_dir;
        cfg.auth_file = c.auth_file;
        cfg.tls = match (c.tls_cert, c.tls_key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            _ => bail!("--tls-cert and --tls-key go together"),
        };
        let size = |name: &str, v: Option<String>, default: u64| -> anyhow::Result<u64> {
            match v {
                None => Ok(default),
                Some(s) => parse_size(&s)
                    .with_context(|| format!("--{name} {s:?}: expected a size such as 512MiB")),
            }
        };
        let dur = |name: &str, v: Option<String>, default: &str| -> anyhow::Result<Duration> {
            let s = v.unwrap_or_else(|| default.to_string());
            kiln_common::duration::parse(&s).with_context(|| format!("--{name} {s:?}"))
        };
        cfg.store.disk_bytes = size("disk-cache-size", c.disk_cache_size, 20 << 30)?;
        cfg.store.memory_bytes = size("memory-cache-size", c.memory_cache_size, 256 << 20)?;
        cfg.store.max_manifest_bytes =
            size("max-manifest-size", c.max_manifest_size, 4 << 20)? as usize;
        let ttl = dur("ttl", c.ttl, "336h")?;
        cfg.store.ttl = (!ttl.is_zero()).then_some(ttl);
        cfg.store.touch_after = dur("touch-after", c.touch_after, "10m")?;
        cfg.store.tag_cache_ttl = dur("tag-cache-ttl", c.tag_cache_ttl, "5s")?;
        cfg.shutdown_timeout = dur("shutdown-timeout", c.shutdown_timeout, "30s")?;
        cfg.store.backend_timeout = dur("backend-timeout", c.backend_timeout, "10s")?;
        cfg.store.transfer_timeout = dur("transfer-timeout", c.transfer_timeout, "10m")?;
        cfg.store.transfer_stall_timeout =
            dur("transfer-stall-timeout", c.transfer_stall_timeout, "30s")?;
        cfg.store.breaker_cool_off = dur("breaker-cool-off", c.breaker_cool_off, "30s")?;
        cfg.gc = GcOptions {
            ttl: cfg.store.ttl,
            max_size: c
                .max_size
                .map(|s| size("max-size", Some(s), 0))
                .transpose()?,
            max_size_per_repo: c
                .max_size_per_repo
                .map(|s| size("max-size-per-repo", Some(s), 0))
                .transpose()?,
            grace: dur("gc-grace", c.gc_grace, "1h")?,
            dry_run: false,
        };
        let every = dur("gc-interval", c.gc_interval, "1h")?;
        cfg.gc_interval = (!every.is_zero()).then_some(every);
        if !c.mirror.is_empty() {
            let upstreams = c
                .mirror
                .iter()
                .map(|m| m.parse().map_err(anyhow::Error::msg))
                .collect::<anyhow::Result<Vec<kiln_cache_server::mirror::Upstream>>>()?;
            cfg.mirror = Some(kiln_cache_server::mirror::MirrorConfig {
                upstreams,
                only: c.mirror_only.unwrap_or(false),
                revalidate: dur("mirror-revalidate", c.mirror_revalidate, "5m")?,
                timeout: dur("mirror-timeout", c.mirror_timeout, "10s")?,
                credentials: c.mirror_credentials,
            });
        } else if c.mirror_only.unwrap_or(false) {
            bail!("--mirror-only needs a --mirror");
        }
        Ok(cfg)
    }
}

/// Logging as every Kiln binary does it (`RUST_LOG` wins over `--verbosity`).
pub fn logging(cli: &Cli) {
    kiln_common::observability::init(&kiln_common::observability::LogOptions {
        level: cli.verbosity.clone(),
        json: cli.log_json,
        color: false,
        timestamps: true,
    });
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(c) => serve::run(c.into_config()?).await,
        Command::Gc {
            common,
            dry_run,
            pushgateway,
        } => gc::run(common.into_config()?, dry_run, pushgateway.as_deref()).await,
    }
}
