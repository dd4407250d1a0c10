//! Multi-platform images: a build for several `--custom-platform`s, and
//! `executor index`, which joins images native runners built. The index
//! itself is [`kiln_executor::index`]'s.

use super::Cli;
use anyhow::{bail, Context};
use clap::Parser;
use kiln_common::auth::DockerConfig;
use kiln_common::image::Descriptor;
use kiln_common::registry::{Registry, RegistryOptions};
use kiln_executor::index::{self, Member};
use kiln_executor::options::ImageFormat;
use kiln_executor::{BuildOptions, Builder};
use std::sync::Arc;

/// Each platform built at once by a builder of its own, its manifest pushed
/// by digest; then one index of them all to the destinations' tags.
pub async fn build_platforms(
    cli: &Cli,
    opts: BuildOptions,
    registry: Arc<Registry>,
) -> anyhow::Result<()> {
    let out = &opts.output;
    if out.tar_path.is_some() || out.oci_layout_path.is_some() {
        bail!(
            "--tar-path and --oci-layout-path hold one platform's image: build each platform \
             on its own for them (a multi-platform build pushes one index to --destination)"
        );
    }
    if opts.dry_run {
        bail!("--dryrun plans one platform: give one --custom-platform");
    }
    let mut builders = Vec::new();
    for p in &cli.custom_platform {
        let mut o = opts.clone();
        o.platform = Some(p.clone());
        o.output.by_digest = true;
        o.output.digest_file = None;
        o.output.image_name_with_digest_file = None;
        o.output.image_name_tag_with_digest_file = None;
        o.report_path = None;
        let b = Builder::new(o, registry.clone()).with_context(|| p.to_string())?;
        tracing::info!("{p}: isolation {}", b.isolation_name());
        builders.push((p.clone(), b));
    }
    // At once, each on a thread driving it on this runtime (a build blocks
    // its thread while RUN steps execute).
    let handle = tokio::runtime::Handle::current();
    let outcomes = tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let threads: Vec<_> = builders
                .iter()
                .map(|(p, b)| {
                    let handle = handle.clone();
                    (p, scope.spawn(move || handle.block_on(b.build())))
                })
                .collect();
            threads
                .into_iter()
                .map(|(p, t)| (p.clone(), t.join()))
                .collect::<Vec<_>>()
        })
    });
    let mut results = Vec::new();
    let mut failed = None;
    for (p, outcome) in outcomes {
        match outcome {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                failed.get_or_insert(anyhow::Error::new(e).context(format!("building for {p}")));
            }
            Err(_) => {
                failed.get_or_insert(anyhow::anyhow!("the build for {p} panicked"));
            }
        }
    }
    if let Some(e) = failed {
        return Err(e);
    }
    for r in &results {
        super::build::print_summary(r);
    }
    let entries: Vec<Descriptor> = results
        .iter()
        .map(|r| {
            let mut d = Descriptor::new(&r.media_type, r.manifest_digest.clone(), r.manifest_size);
            d.platform = Some(r.platform.clone());
            d
        })
        .collect();
    let index_digest = if out.no_push || out.destinations.is_empty() {
        let (bytes, _) = index::index_bytes(&entries, out.format);
        kiln_common::Digest::sha256_of(&bytes)
    } else {
        index::push_index(&registry, &out.destinations, &entries, out.format).await?
    };
    eprintln!("\n  index {index_digest} ({} platforms)", entries.len());
    write_outputs(&opts, &index_digest, &results)?;
    Ok(())
}

/// `--digest-file` and friends name the index; `--report` holds every
/// platform's report.
fn write_outputs(
    opts: &BuildOptions,
    index_digest: &kiln_common::Digest,
    results: &[kiln_executor::BuildResult],
) -> anyhow::Result<()> {
    let out = &opts.output;
    let write = |p: &std::path::Path, text: String| {
        std::fs::write(p, text).with_context(|| format!("writing {}", p.display()))
    };
    if let Some(p) = &out.digest_file {
        write(p, index_digest.to_string())?;
    }
    let name = |d: &str| {
        d.rsplit_once(':')
            .filter(|(_, t)| !t.contains('/'))
            .map_or(d, |(n, _)| n)
            .to_string()
    };
    if let Some(p) = &out.image_name_with_digest_file {
        let lines: String = out
            .destinations
            .iter()
            .map(|d| format!("{}@{index_digest}\n", name(d)))
            .collect();
        write(p, lines)?;
    }
    if let Some(p) = &out.image_name_tag_with_digest_file {
        let lines: String = out
            .destinations
            .iter()
            .map(|d| format!("{d}@{index_digest}\n"))
            .collect();
        write(p, lines)?;
    }
    if let Some(p) = &opts.report_path {
        let json = serde_json::json!({
            "index_digest": index_digest,
            "platforms": results,
        });
        write(p, serde_json::to_string_pretty(&json)?)?;
    }
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
