//! The warmer's command line. Flag names follow kaniko's warmer where it has
//! one (`--cache-dir`, `--image`, `--dockerfile`, `--build-arg`, `--force`).

mod warm;

use clap::Parser;
use std::path::PathBuf;

pub use warm::run;

#[derive(Parser, Debug)]
#[command(
    name = "warmer",
    version,
    about = "Pre-pull base images into a shared cache directory"
)]
pub struct Cli {
    /// The shared cache directory (an OCI image layout).
    #[arg(short = 'c', long, default_value = "/cache")]
    pub cache_dir: PathBuf,
    /// Image to warm (repeatable).
    #[arg(short = 'i', long)]
    pub image: Vec<String>,
    /// File with one image per line (# comments allowed).
    #[arg(long)]
    pub images_file: Option<PathBuf>,
    /// Warm every stage's base image of this Dockerfile (repeatable).
    #[arg(short = 'd', long)]
    pub dockerfile: Vec<PathBuf>,
    #[arg(long)]
    pub build_arg: Vec<String>,
    /// Platform to warm (repeatable; default the host's).
    #[arg(long)]
    pub platform: Vec<String>,
    /// Entries younger than this are trusted without a registry call.
    #[arg(long, default_value = "24h")]
    pub cache_ttl: String,
    /// Refetch everything.
    #[arg(short = 'f', long)]
    pub force: bool,
    /// Also keep every layer extracted under `extracted/sha256/<diff id>`,
    /// verified against the image's config: builds with the namespaces
    /// isolation stack their root on these instead of unpacking the base.
    /// Needs root (owners, whiteouts as overlayfs keeps them).
    #[arg(long)]
    pub extract_layers: bool,
    #[arg(long, default_value_t = 4)]
    pub jobs: usize,
    #[arg(long, default_value_t = 8)]
    pub layer_jobs: usize,
    /// Remove entries not used by a build for this long (e.g. 168h).
    #[arg(long)]
    pub keep_unused_for: Option<String>,
    /// Total size budget, e.g. 20G, 500M.
    #[arg(long)]
    pub max_size: Option<String>,
    /// Say what retention would remove, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Exit 0 even when some images failed.
    #[arg(long)]
    pub allow_partial: bool,
    /// Write a JSON report here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    #[arg(long)]
    pub insecure_pull: bool,
    #[arg(long)]
    pub skip_tls_verify_pull: bool,
    #[arg(long)]
    pub registry_mirror: Vec<String>,
    /// Extra attempts for manifests and configs (2 when not given) and for
    /// layer streams (5 when not given).
    #[arg(long)]
    pub image_download_retry: Option<u32>,
    /// Also push every warmed image to this registry (`host[:port][/prefix]`):
    /// the Kiln cache server, or any registry used as a mirror.
    #[arg(long, conflicts_with = "warm_mirror")]
    pub cache_server: Option<String>,
    /// Warm this pull-through mirror (a Kiln cache server in mirror mode,
    /// `host[:port]`) by pulling each image through it as
    /// `<mirror>/<registry>/<repo>`, every layer streamed and verified;
    /// nothing is written to the cache directory and nothing is pushed.
    #[arg(long)]
    pub warm_mirror: Option<String>,
    /// Push the run's metrics to this Prometheus Pushgateway (`http://host:9091`).
    #[arg(long)]
    pub pushgateway: Option<String>,
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: String,
}

/// Logging as every Kiln binary does it (`RUST_LOG` wins over `--verbosity`).
pub fn logging(cli: &Cli) {
    kiln_common::observability::init(&kiln_common::observability::LogOptions {
        level: cli.verbosity.clone(),
        json: false,
        color: false,
        timestamps: true,
    });
}
