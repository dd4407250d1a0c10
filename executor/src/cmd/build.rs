//! The build command: flags → [`BuildOptions`] → [`Builder`] → summary.

use super::Cli;
use anyhow::{bail, Context};
use kiln_common::auth::DockerConfig;
use kiln_common::registry::{parse_reference, Registry, RegistryOptions};
use kiln_executor::layer::LayerOptions;
use kiln_executor::options::{ImageFormat, OutputOptions};
use kiln_executor::{BuildOptions, Builder};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    // Before anything reads the container's files (CA certificates, …).
    kiln_executor::isolation::recover_crashed_in_place();
    let no_push = cli.no_push.unwrap_or(false);
    if cli.destination.is_empty()
        && !no_push
        && !cli.dryrun.unwrap_or(false)
        && cli.tar_path.is_none()
        && cli.oci_layout_path.is_none()
    {
        bail!("no --destination given: pass one, or --no-push, --tar-path or --oci-layout-path");
    }
    let (format, compression) = (cli.image_format, cli.compression);
    if format == ImageFormat::Docker && compression == kiln_executor::compression::Compression::Zstd
    {
        bail!("zstd layers need --image-format oci");
    }
    let mut insecure_hosts: Vec<String> = cli.insecure_registry.clone();
    if cli.insecure.unwrap_or(false) {
        // kaniko's --insecure covers where images and cache entries are pushed.
        let cache_repo = cli
            .cache_repo
            .iter()
            .chain(&cli.cache_from)
            .filter(|r| !r.starts_with("oci:"));
        for d in cli.destination.iter().chain(cache_repo) {
            insecure_hosts.push(parse_reference(d)?.resolve_registry().to_string());
        }
    }
    let cache = cache_options(&cli)?;
    let mut registry_map: HashMap<String, Vec<String>> = HashMap::new();
    for (k, v) in &cli.registry_map {
        registry_map.entry(k.clone()).or_default().extend(v.clone());
    }
    let registry_opts = RegistryOptions {
        insecure_hosts,
        skip_tls_verify: cli.skip_tls_verify.unwrap_or(false)
            || cli.skip_tls_verify_pull.unwrap_or(false),
        mirrors: cli.registry_mirror.clone(),
        registry_map,
        skip_default_registry_fallback: cli.skip_default_registry_fallback.unwrap_or(false),
        pull_retries: cli.image_download_retry.unwrap_or(0),
        layer_retries: kiln_common::registry::layer_retries(
            cli.image_download_retry,
            cli.image_fs_extract_retry,
        ),
        push_retries: cli.push_retry,
        host_cas: host_cas(&cli.registry_certificate),
        skip_verify_hosts: cli.skip_tls_verify_registry.clone(),
        // The last one given for a host wins.
        client_certs: cli.registry_client_cert.iter().cloned().collect(),
        logins: Some(
            kiln_common::auth::parse_credential_helpers(&cli.credential_helpers)
                .context("--credential-helpers")?,
        ),
        certs_d: Some("/etc/docker/certs.d".into()),
        stall_timeout: Some(cli.transfer_stall_timeout),
        host_tokens: match &cache {
            Some(c) => {
                let token = super::cache_token::find(
                    cli.cache_token_file.as_deref(),
                    &cli.cache_token_audience,
                )
                .await?;
                let repos: Vec<&str> = std::iter::once(c.repo.as_str())
                    .chain(c.from.iter().map(String::as_str))
                    .collect();
                super::cache_token::for_hosts(token, &repos)
            }
            None => Default::default(),
        },
    };
    let insecure_pull = cli.insecure_pull.unwrap_or(false);
    let epoch = kiln_executor::options::source_date_epoch(
        &cli.build_arg,
        std::env::var("SOURCE_DATE_EPOCH").ok(),
    )
    .map_err(anyhow::Error::msg)?;
    let rewrite_timestamp = cli.rewrite_timestamp.unwrap_or(false);
    if rewrite_timestamp && epoch.is_none() {
        bail!("--rewrite-timestamp caps file times at SOURCE_DATE_EPOCH: set it (environment or --build-arg)");
    }
    let opts = BuildOptions {
        context: context_of(&cli),
        context_sub_path: cli.context_sub_path.clone(),
        git: cli
            .git
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)
            .context("--git")?
            .unwrap_or_default(),
        dry_run: cli.dryrun.unwrap_or(false),
        cache_mounts: cli.cache_mounts,
        mount_scope: cli.cache_mount_scope.clone(),
        cache_mount_max_size: cli.cache_mount_max_size,
        secrets: cli.secret.iter().cloned().collect(),
        ssh: cli.ssh.iter().cloned().collect(),
        dockerfile: cli.dockerfile.clone(),
        target: cli.target.clone(),
        build_args: cli.build_arg.clone(),
        labels: cli.label.clone(),
        platform: cli.custom_platform.first().cloned(),
        output: OutputOptions {
            destinations: cli.destination.clone(),
            no_push,
            tar_path: cli.tar_path.clone(),
            oci_layout_path: cli.oci_layout_path.clone(),
            digest_file: cli.digest_file.clone(),
            image_name_with_digest_file: cli.image_name_with_digest_file.clone(),
            image_name_tag_with_digest_file: cli.image_name_tag_with_digest_file.clone(),
            format,
            annotations: cli.annotation.iter().cloned().collect(),
            ignore_immutable_tags: cli.push_ignore_immutable_tag_errors.unwrap_or(false),
            by_digest: false,
        },
        layer: LayerOptions {
            compression,
            level: cli.compression_level,
            reproducible: cli.reproducible.unwrap_or(false),
            format,
            epoch,
            rewrite_timestamp,
            outline: cache.as_ref().is_some_and(|c| c.push),
        },
        single_snapshot: cli.single_snapshot.unwrap_or(false),
        max_parallel_stages: cli.max_parallel_stages,
        isolation: cli.isolation,
        ignore_paths: cli.ignore_path.clone(),
        force: cli.force.unwrap_or(false),
        full_walks: cli.snapshot_mode.unwrap_or(false),
        work_dir: cli.kaniko_dir.clone(),
        registry: registry_opts.clone(),
        image_fs_extract_retry: cli.image_fs_extract_retry.unwrap_or(0),
        build_unused_stages: !cli.skip_unused_stages,
        report_path: cli.report.clone(),
        cache,
        cache_dir: cli.cache_dir.clone(),
        attest: kiln_executor::attest::AttestOptions::parse(&cli.attest)?,
    };
    let mut reg_opts = registry_opts;
    if insecure_pull {
        // Pulls over HTTP from any registry the Dockerfile names.
        reg_opts.insecure_hosts.push("*".into());
    }
    let creds = DockerConfig::load_default()?;
    let registry = Arc::new(Registry::new(reg_opts, creds)?);
    if cli.custom_platform.len() > 1 {
        return super::index::build_platforms(&cli, opts, registry).await;
    }
    let builder = Builder::new(opts, registry)?;
    match builder.isolation_reason() {
        "" => tracing::info!("isolation: {}", builder.isolation_name()),
        why => tracing::info!("isolation: {} ({why})", builder.isolation_name()),
    }
    if builder.dry_run() {
        for line in builder.plan().await? {
            println!("{line}");
        }
        return Ok(());
    }
    let result = builder.build().await?;
    super::summary::print_summary(&result);
    if let Some(path) = &cli.summary_file {
        write_summary(path, &result)?;
    }
    Ok(())
}

fn write_summary(path: &std::path::Path, r: &kiln_executor::BuildResult) -> anyhow::Result<()> {
    use std::io::Write;
    let format = kiln_executor::summary::SummaryFormat::for_path(path);
    let text = format.render(r);
    std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(format.appends())
        .truncate(!format.appends())
        .open(path)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .with_context(|| format!("writing the summary {}", path.display()))
}

fn cache_options(cli: &Cli) -> anyhow::Result<Option<kiln_executor::CacheOptions>> {
    if !cli.cache.unwrap_or(false) {
        return Ok(None);
    }
    let repo = match (&cli.cache_repo, cli.destination.first()) {
        (Some(r), _) => r.clone(),
        (None, Some(d)) => {
            let r = parse_reference(d)?;
            format!("{}/{}/cache", r.registry(), r.repository())
        }
        // kaniko's docs pair `--cache=true --cache-dir=… --no-push` for
        // warmed bases: build, uncached, and say so once.
        (None, None) => {
            tracing::warn!(
                "--cache: no --cache-repo and no --destination to derive one from; layers are not cached"
            );
            return Ok(None);
        }
    };
    let ttl = cli.cache_ttl;
    Ok(Some(kiln_executor::CacheOptions {
        repo,
        from: cli.cache_from.clone(),
        record_from: cli.cache_from_record,
        trust: cli.cache_trust.clone(),
        ttl: if ttl.is_zero() { None } else { Some(ttl) },
        run_layers: cli.cache_run_layers,
        copy_layers: cli.cache_copy_layers,
        push: !cli.no_push_cache.unwrap_or(false),
        lookup_timeout: cli.cache_lookup_timeout,
        push_timeout: cli.cache_push_timeout,
    }))
}

/// `--registry-certificate host=/path/ca.pem`, repeatable; a host may have several.
fn host_cas(flags: &[(String, PathBuf)]) -> HashMap<String, Vec<PathBuf>> {
    let mut m: HashMap<String, Vec<PathBuf>> = HashMap::new();
    for (host, path) in flags {
        m.entry(host.clone()).or_default().push(path.clone());
    }
    m
}

/// `--context`, or the context `--bucket` names: kaniko reads
/// `gs://<bucket>/context.tar.gz` for a bare bucket name.
fn context_of(cli: &Cli) -> String {
    match &cli.bucket {
        Some(b) if b.contains("://") => b.clone(),
        Some(b) => format!("gs://{}/context.tar.gz", b.trim_end_matches('/')),
        None => cli.context.trim_start_matches("dir://").to_string(),
    }
}
