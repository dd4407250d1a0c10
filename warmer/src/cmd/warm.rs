//! One warmer run: images from the flags, files and Dockerfiles → warm →
//! optional push to a cache server → retention → report and metrics.

use super::Cli;
use anyhow::Context;
use kiln_common::auth::DockerConfig;
use kiln_common::image::Platform;
use kiln_common::registry::{Registry, RegistryOptions};
use kiln_common::report::Report;
use kiln_common::units::parse_size;
use kiln_warmer::{images_from_dockerfile, retain, warm, WarmOptions};
use std::sync::Arc;
use std::time::Duration;

fn duration(s: &str) -> anyhow::Result<Duration> {
    Ok(kiln_common::duration::parse(s)?)
}

pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
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
    if cli.extract_layers && !nix::unistd::Uid::effective().is_root() {
        anyhow::bail!("--extract-layers needs root: layers keep their owners and device whiteouts");
    }
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
            pull_retries: cli.image_download_retry.unwrap_or(2),
            layer_retries: kiln_common::registry::layer_retries(cli.image_download_retry, None),
            // Docker's per-host CAs and client certificates, as the executor.
            certs_d: Some("/etc/docker/certs.d".into()),
            ..Default::default()
        },
        DockerConfig::load_default()?,
    )?);
    if let Some(mirror) = &cli.warm_mirror {
        let reports =
            kiln_warmer::warm_through(registry, mirror, &images, &platforms, cli.jobs).await;
        return finish(&cli, &reports, None).await;
    }
    let opts = WarmOptions {
        cache_dir: cli.cache_dir.clone(),
        images,
        platforms,
        ttl: duration(&cli.cache_ttl)?,
        force: cli.force,
        jobs: cli.jobs,
        layer_jobs: cli.layer_jobs,
        extract_layers: cli.extract_layers,
    };
    let reports = warm(registry.clone(), &opts).await?;
    if let Some(target) = &cli.cache_server {
        match kiln_warmer::push_to(&registry, &cli.cache_dir, target, &reports).await {
            Ok(pushed) => eprintln!("  pushed {} images to {target}", pushed.len()),
            Err(e) => {
                eprintln!("  pushing to {target} failed: {}", Report(&e));
                if !cli.allow_partial {
                    return Ok(std::process::ExitCode::FAILURE);
                }
            }
        }
    }
    let keep = cli.keep_unused_for.as_deref().map(duration).transpose()?;
    let max = cli
        .max_size
        .as_deref()
        .map(|s| {
            parse_size(s)
                .with_context(|| format!("--max-size {s:?}: expected a size such as 20GB or 20GiB"))
        })
        .transpose()?;
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
    finish(&cli, &reports, retention.as_ref()).await
}

/// Prints, pushes the metrics of and reports a run; its exit code.
async fn finish(
    cli: &Cli,
    reports: &[kiln_warmer::ImageReport],
    retention: Option<&kiln_warmer::Retention>,
) -> anyhow::Result<std::process::ExitCode> {
    let mut failed = 0;
    for r in reports {
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
    if let Some(ret) = retention {
        let verb = if cli.dry_run {
            "would remove"
        } else {
            "removed"
        };
        eprintln!(
            "  retention {verb} {} entries, {} blobs, {} bytes, {} extracted layers",
            ret.removed_entries.len(),
            ret.removed_blobs,
            ret.removed_bytes,
            ret.removed_extracted
        );
        for e in &ret.removed_entries {
            eprintln!("    {e}");
        }
    }
    if let Some(gw) = &cli.pushgateway {
        let url = kiln_common::pushgateway::job_url(gw, "kiln-warmer");
        let body = kiln_warmer::metrics_text(reports, retention);
        if let Err(e) =
            kiln_common::pushgateway::push(&url, body, kiln_common::pushgateway::Mode::Replace)
                .await
        {
            eprintln!("  {} (metrics not pushed)", Report(&e));
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
