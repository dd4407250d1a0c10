//! `warmer`: flags → [`WarmOptions`] → warm, retain, report. Meant to run as a
//! Kubernetes CronJob over a volume shared with the build pods.

use anyhow::Context;
use clap::Parser;
use kiln_common::auth::DockerConfig;
use kiln_common::image::Platform;
use kiln_common::registry::{Registry, RegistryOptions};
use kiln_warmer::{images_from_dockerfile, retain, warm, WarmOptions};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(
    name = "warmer",
    version,
    about = "Pre-pull base images into a shared cache directory"
)]
struct Cli {
    /// The shared cache directory (an OCI image layout).
    #[arg(short = 'c', long, default_value = "/cache")]
    cache_dir: PathBuf,
    /// Image to warm (repeatable).
    #[arg(short = 'i', long)]
    image: Vec<String>,
    /// File with one image per line (# comments allowed).
    #[arg(long)]
    images_file: Option<PathBuf>,
    /// Warm every stage's base image of this Dockerfile (repeatable).
    #[arg(short = 'd', long)]
    dockerfile: Vec<PathBuf>,
    #[arg(long)]
    build_arg: Vec<String>,
    /// Platform to warm (repeatable; default the host's).
    #[arg(long)]
    platform: Vec<String>,
    /// Entries younger than this are trusted without a registry call.
    #[arg(long, default_value = "24h")]
    cache_ttl: String,
    /// Refetch everything.
    #[arg(short = 'f', long)]
    force: bool,
    #[arg(long, default_value_t = 4)]
    jobs: usize,
    #[arg(long, default_value_t = 8)]
    layer_jobs: usize,
    /// Remove entries not used by a build for this long (e.g. 168h).
    #[arg(long)]
    keep_unused_for: Option<String>,
    /// Total size budget, e.g. 20G, 500M.
    #[arg(long)]
    max_size: Option<String>,
    /// Say what retention would remove, remove nothing.
    #[arg(long)]
    dry_run: bool,
    /// Exit 0 even when some images failed.
    #[arg(long)]
    allow_partial: bool,
    /// Write a JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    #[arg(long)]
    insecure_registry: Vec<String>,
    #[arg(long)]
    insecure_pull: bool,
    #[arg(long)]
    skip_tls_verify_pull: bool,
    #[arg(long)]
    registry_mirror: Vec<String>,
    #[arg(long, default_value_t = 2)]
    image_download_retry: u32,
    /// Also push every warmed image to this registry (`host[:port][/prefix]`):
    /// the Kiln cache server, or any registry used as a mirror.
    #[arg(long)]
    cache_server: Option<String>,
    /// Push the run's metrics to this Prometheus Pushgateway (`http://host:9091`).
    #[arg(long)]
    pushgateway: Option<String>,
    #[arg(short = 'v', long, default_value = "info")]
    verbosity: String,
}

fn duration(s: &str) -> anyhow::Result<Duration> {
    Ok(kiln_common::duration::parse(s)?)
}

fn size(s: &str) -> anyhow::Result<u64> {
    let (n, mul) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    Ok(n.parse::<u64>().with_context(|| format!("size {s:?}"))? * mul)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "{},h2=warn,hyper=warn,reqwest=warn",
            cli.verbosity
        )))
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", kiln_common::report::Report(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    let build_args: Vec<(String, String)> = cli
        .build_arg
        .iter()
        .map(|a| {
            a.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .unwrap_or((a.clone(), String::new()))
        })
        .collect();
    let mut images = cli.image.clone();
    if let Some(f) = &cli.images_file {
        let text =
            std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
        images.extend(
            text.lines()
                .map(str::trim)
                .filter(|l| !l.is_empty() && !l.starts_with('#'))
                .map(str::to_string),
        );
    }
    for d in &cli.dockerfile {
        images.extend(images_from_dockerfile(d, &build_args)?);
    }
    images.dedup();
    let platforms = if cli.platform.is_empty() {
        vec![Platform::host()]
    } else {
        cli.platform
            .iter()
            .map(|p| Platform::parse(p))
            .collect::<Result<_, _>>()?
    };
    let mut insecure = cli.insecure_registry.clone();
    if cli.insecure_pull {
        insecure.push("*".into());
    }
    let registry = Arc::new(Registry::new(
        RegistryOptions {
            insecure_hosts: insecure,
            skip_tls_verify: cli.skip_tls_verify_pull,
            mirrors: cli.registry_mirror.clone(),
            pull_retries: cli.image_download_retry,
            ..Default::default()
        },
        DockerConfig::load_default()?,
    ));
    let opts = WarmOptions {
        cache_dir: cli.cache_dir.clone(),
        images,
        platforms,
        ttl: duration(&cli.cache_ttl)?,
        force: cli.force,
        jobs: cli.jobs,
        layer_jobs: cli.layer_jobs,
    };
    let reports = warm(registry.clone(), &opts).await?;
    if let Some(target) = &cli.cache_server {
        match kiln_warmer::push_to(&registry, &cli.cache_dir, target, &reports).await {
            Ok(pushed) => eprintln!("  pushed {} images to {target}", pushed.len()),
            Err(e) => {
                eprintln!("  pushing to {target} failed: {e}");
                if !cli.allow_partial {
                    return Ok(std::process::ExitCode::FAILURE);
                }
            }
        }
    }
    let keep = cli.keep_unused_for.as_deref().map(duration).transpose()?;
    let max = cli.max_size.as_deref().map(size).transpose()?;
    let retention = if keep.is_some() || max.is_some() {
        Some(retain(
            &cli.cache_dir,
            keep,
            max,
            Duration::from_secs(600),
            cli.dry_run,
        )?)
    } else {
        None
    };
    let mut failed = 0;
    for r in &reports {
        eprintln!(
            "  {:<9} {} ({}) {:.1}s, fetched {} bytes, reused {}{}",
            r.status,
            r.image,
            r.platform,
            r.seconds,
            r.bytes_fetched,
            r.bytes_reused,
            r.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        );
        if r.status == "failed" {
            failed += 1;
        }
    }
    if let Some(ret) = &retention {
        let verb = if cli.dry_run {
            "would remove"
        } else {
            "removed"
        };
        eprintln!(
            "  retention {verb} {} entries, {} blobs, {} bytes",
            ret.removed_entries.len(),
            ret.removed_blobs,
            ret.removed_bytes
        );
        for e in &ret.removed_entries {
            eprintln!("    {e}");
        }
    }
    if let Some(gw) = &cli.pushgateway {
        let url = format!("{}/metrics/job/kiln-warmer", gw.trim_end_matches('/'));
        let body = kiln_warmer::metrics_text(&reports, retention.as_ref());
        match kiln_common::registry::http_put_text(&url, body).await {
            Ok(()) => {}
            Err(e) => eprintln!("  pushgateway {url}: {e} (metrics not pushed)"),
        }
    }
    if let Some(p) = &cli.report {
        let json = serde_json::json!({ "images": reports, "retention": retention });
        std::fs::write(p, serde_json::to_vec_pretty(&json)?)
            .with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(if failed > 0 && !cli.allow_partial {
        std::process::ExitCode::FAILURE
    } else {
        std::process::ExitCode::SUCCESS
    })
}
