//! Multi-platform images: a build for several `--custom-platform`s, and
//! `executor index`, which joins images native runners built (the work is
//! [`kiln_executor::multi`]'s and [`kiln_executor::index`]'s).

use super::Cli;
use anyhow::Context;
use clap::Parser;
use kiln_common::auth::DockerConfig;
use kiln_common::registry::{Registry, RegistryOptions};
use kiln_executor::index::{self, Member};
use kiln_executor::multi;
use kiln_executor::options::ImageFormat;
use kiln_executor::BuildOptions;
use std::sync::Arc;

/// A build for several platforms (the work is [`multi::build_platforms`]'s).
pub async fn build_platforms(
    cli: &Cli,
    opts: BuildOptions,
    registry: Arc<Registry>,
) -> anyhow::Result<()> {
    let built = multi::build_platforms(opts, &cli.custom_platform, registry).await?;
    for r in &built.results {
        super::summary::print_summary(r);
    }
    eprintln!(
        "\n  index {} ({} platforms)",
        built.index_digest,
        built.results.len()
    );
    Ok(())
}

/// `executor index --destination repo:tag repo:tag-amd64 repo:tag-arm64=linux/arm64`
#[derive(Parser, Debug)]
#[command(
    name = "executor index",
    about = "Join single-platform images into one image index (what manifest-tool does for kaniko)"
)]
pub struct IndexCli {
    /// Where the index goes (repeatable).
    #[arg(short = 'd', long, required = true)]
    pub destination: Vec<String>,
    /// The images to join: `<reference>` or `<reference>=<os/arch[/variant]>`
    /// (the platform it must be, checked against its config).
    #[arg(required = true)]
    pub images: Vec<Member>,
    /// `docker`: a Docker manifest list instead of an OCI index.
    #[arg(long, default_value = "oci", value_parser = super::values::image_format)]
    pub image_format: ImageFormat,
    /// Registries reached over plain HTTP (repeatable).
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    /// Every registry over plain HTTP.
    #[arg(long)]
    pub insecure: bool,
    /// Write the index digest here.
    #[arg(long)]
    pub digest_file: Option<std::path::PathBuf>,
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: String,
}

/// The `index` subcommand.
pub async fn run_index(cli: IndexCli) -> anyhow::Result<()> {
    let mut insecure = cli.insecure_registry.clone();
    if cli.insecure {
        insecure.push("*".into());
    }
    let registry = Registry::new(
        RegistryOptions {
            insecure_hosts: insecure,
            certs_d: Some("/etc/docker/certs.d".into()),
            ..Default::default()
        },
        DockerConfig::load_default()?,
    )?;
    let (digest, entries) =
        index::join(&registry, &cli.destination, &cli.images, cli.image_format).await?;
    for e in &entries {
        let p = e
            .platform
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default();
        eprintln!("  {p:<16} {}", e.digest);
    }
    eprintln!("  index {digest}");
    if let Some(p) = &cli.digest_file {
        std::fs::write(p, digest.as_str()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
