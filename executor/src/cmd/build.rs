//! The build command: flags → [`BuildOptions`] → [`Builder`] → summary.

use super::Cli;
use anyhow::{bail, Context};
use kiln_common::auth::DockerConfig;
use kiln_common::image::Platform;
use kiln_common::registry::{parse_reference, ClientCert, Registry, RegistryOptions};
use kiln_executor::layer::LayerOptions;
use kiln_executor::options::{CacheMounts, ImageFormat, OutputOptions};
use kiln_executor::{BuildOptions, Builder};
use std::collections::HashMap;
use std::sync::Arc;

fn kv(s: &str, flag: &str) -> anyhow::Result<(String, String)> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .with_context(|| format!("{flag} {s:?}: expected KEY=VALUE"))
}

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
    let format = match cli.image_format.as_str() {
        "oci" => ImageFormat::Oci,
        "docker" => ImageFormat::Docker,
        f => bail!("--image-format {f:?}: expected oci or docker"),
    };
    let compression = cli.compression.parse().map_err(anyhow::Error::msg)?;
    if format == ImageFormat::Docker && compression == kiln_executor::compression::Compression::Zstd
    {
        bail!("zstd layers need --image-format oci");
    }
    let mut insecure_hosts: Vec<String> = cli.insecure_registry.clone();
    if cli.insecure.unwrap_or(false) {
        // kaniko's --insecure covers where images and cache entries are pushed.
        let cache_repo = cli.cache_repo.iter().filter(|r| !r.starts_with("oci:"));
        for d in cli.destination.iter().chain(cache_repo) {
            insecure_hosts.push(parse_reference(d)?.resolve_registry().to_string());
        }
    }
    let mut registry_map: HashMap<String, Vec<String>> = HashMap::new();
    for m in &cli.registry_map {
        let (k, v) = kv(m, "--registry-map")?;
        registry_map
            .entry(k)
            .or_default()
            .extend(v.split(';').map(str::to_string));
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
        host_cas: host_cas(&cli.registry_certificate)?,
        skip_verify_hosts: cli.skip_tls_verify_registry.clone(),
        client_certs: client_certs(&cli.registry_client_cert)?,
        logins: Some(
            kiln_common::auth::parse_credential_helpers(&cli.credential_helpers)
                .context("--credential-helpers")?,
        ),
        certs_d: Some("/etc/docker/certs.d".into()),
        stall_timeout: Some(
            kiln_common::duration::parse(&cli.transfer_stall_timeout)
                .context("--transfer-stall-timeout")?,
        ),
    };
    let insecure_pull = cli.insecure_pull.unwrap_or(false);
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
        cache_mounts: match cli.cache_mounts.as_str() {
            "shared" => CacheMounts::Shared,
            "local" => CacheMounts::Local,
            "off" => CacheMounts::Off,
            m => bail!("--cache-mounts {m:?}: expected shared, local or off"),
        },
        mount_scope: cli.cache_mount_scope.clone(),
        cache_mount_max_size: kiln_common::units::parse_size(&cli.cache_mount_max_size)
            .with_context(|| {
                format!(
                    "--cache-mount-max-size {:?}: expected a size such as 4GiB",
                    cli.cache_mount_max_size
                )
            })?,
        secrets: secrets(&cli.secret)?,
        ssh: ssh_agents(&cli.ssh)?,
        dockerfile: cli.dockerfile.clone(),
        target: cli.target.clone(),
        build_args: cli
            .build_arg
            .iter()
            .map(|a| match a.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (a.clone(), None),
            })
            .collect(),
        labels: cli
            .label
            .iter()
            .map(|l| kv(l, "--label"))
            .collect::<anyhow::Result<_>>()?,
        platform: cli
            .custom_platform
            .as_deref()
            .map(Platform::parse)
            .transpose()
            .context("--custom-platform")?,
        output: OutputOptions {
            destinations: cli.destination.clone(),
            no_push,
            tar_path: cli.tar_path.clone(),
            oci_layout_path: cli.oci_layout_path.clone(),
            digest_file: cli.digest_file.clone(),
            image_name_with_digest_file: cli.image_name_with_digest_file.clone(),
            image_name_tag_with_digest_file: cli.image_name_tag_with_digest_file.clone(),
            format,
            annotations: cli
                .annotation
                .iter()
                .map(|a| kv(a, "--annotation"))
                .collect::<anyhow::Result<_>>()?,
            ignore_immutable_tags: cli.push_ignore_immutable_tag_errors.unwrap_or(false),
        },
        layer: LayerOptions {
            compression,
            level: cli.compression_level,
            reproducible: cli.reproducible.unwrap_or(false),
            format,
        },
        single_snapshot: cli.single_snapshot.unwrap_or(false),
        isolation: cli.isolation.parse().map_err(anyhow::Error::msg)?,
        ignore_paths: cli.ignore_path.clone(),
        force: cli.force.unwrap_or(false),
        work_dir: cli.kaniko_dir.clone(),
        registry: registry_opts.clone(),
        image_fs_extract_retry: cli.image_fs_extract_retry.unwrap_or(0),
        build_unused_stages: !cli.skip_unused_stages,
        report_path: cli.report.clone(),
        cache: cache_options(&cli)?,
        cache_dir: cli.cache_dir.clone(),
    };
    let mut reg_opts = registry_opts;
    if insecure_pull {
        // Pulls over HTTP from any registry the Dockerfile names.
        reg_opts.insecure_hosts.push("*".into());
    }
    let creds = DockerConfig::load_default()?;
    let registry = Arc::new(Registry::new(reg_opts, creds)?);
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
    eprintln!("\nSummary ({:.1}s):", result.seconds);
    for s in &result.steps {
        let layer = match &s.layer_digest {
            Some(d) => format!("{} bytes {}", s.layer_size, &d.as_str()[..19]),
            None => "no layer".into(),
        };
        eprintln!(
            "  [{}] line {:>3}  {:>7.2}s  {:<28}  {}",
            s.stage,
            s.line,
            s.seconds,
            layer,
            truncate(&s.instruction, 60)
        );
    }
    if result.cache_hits + result.cache_misses + result.cache_errors > 0 {
        eprintln!(
            "  cache: {} hits, {} misses, {} errors; {} layer bytes pulled, {} pushed to the cache",
            result.cache_hits,
            result.cache_misses,
            result.cache_errors,
            result.bytes_pulled,
            result.bytes_pushed_cache
        );
    }
    eprintln!("  {}", kiln_executor::summary::one_line(&result));
    eprintln!("  image {}", result.manifest_digest);
    for p in &result.pushed {
        eprintln!("  pushed {p}");
    }
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
    let ttl = kiln_common::duration::parse(&cli.cache_ttl).context("--cache-ttl")?;
    Ok(Some(kiln_executor::CacheOptions {
        repo,
        ttl: if ttl.is_zero() { None } else { Some(ttl) },
        run_layers: cli.cache_run_layers,
        copy_layers: cli.cache_copy_layers,
        push: !cli.no_push_cache.unwrap_or(false),
        lookup_timeout: kiln_common::duration::parse(&cli.cache_lookup_timeout)
            .context("--cache-lookup-timeout")?,
        push_timeout: kiln_common::duration::parse(&cli.cache_push_timeout)
            .context("--cache-push-timeout")?,
    }))
}

/// `--secret id=…[,src=<file>|,env=<VAR>]`, BuildKit's syntax; with
/// neither, the environment variable named like the id.
fn secrets(
    flags: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, kiln_executor::build::SecretSource>> {
    use kiln_executor::build::SecretSource;
    let mut out = std::collections::BTreeMap::new();
    for f in flags {
        let mut id = None;
        let mut source = None;
        for part in f.split(',') {
            let (k, v) = part
                .split_once('=')
                .with_context(|| format!("--secret {f:?}: expected id=…,src=… or id=…,env=…"))?;
            match k {
                "id" => id = Some(v.to_string()),
                "src" | "source" => source = Some(SecretSource::File(v.into())),
                "env" => source = Some(SecretSource::Env(v.to_string())),
                "type" if v == "file" || v == "env" => {}
                _ => bail!("--secret {f:?}: unknown option {k:?}"),
            }
        }
        let id = id.with_context(|| format!("--secret {f:?}: no id"))?;
        let source = source.unwrap_or_else(|| SecretSource::Env(id.clone()));
        out.insert(id, source);
    }
    Ok(out)
}

/// `--ssh <id>[=<socket>]`, BuildKit's syntax; without a socket, the
/// agent at `$SSH_AUTH_SOCK`. Only agent sockets: BuildKit also takes key
/// files and runs an agent of its own, which Kiln does not.
fn ssh_agents(
    flags: &[String],
) -> anyhow::Result<std::collections::BTreeMap<String, std::path::PathBuf>> {
    use std::os::unix::fs::FileTypeExt;
    let mut out = std::collections::BTreeMap::new();
    for f in flags {
        let (id, path) = match f.split_once('=') {
            Some((id, p)) => (id, std::path::PathBuf::from(p)),
            None => (
                f.as_str(),
                std::env::var_os("SSH_AUTH_SOCK")
                    .map(std::path::PathBuf::from)
                    .with_context(|| {
                        format!("--ssh {f}: no socket given and SSH_AUTH_SOCK is not set")
                    })?,
            ),
        };
        let meta = std::fs::metadata(&path)
            .with_context(|| format!("--ssh {f}: reading {}", path.display()))?;
        if !meta.file_type().is_socket() {
            bail!(
                "--ssh {f}: {} is not an agent socket (key files are not supported:                  load them with ssh-add and pass the agent's socket)",
                path.display()
            );
        }
        out.insert(id.to_string(), path);
    }
    Ok(out)
}

/// `--registry-certificate host=/path/ca.pem`, repeatable; a host may have several.
fn host_cas(flags: &[String]) -> anyhow::Result<HashMap<String, Vec<std::path::PathBuf>>> {
    let mut m: HashMap<String, Vec<std::path::PathBuf>> = HashMap::new();
    for f in flags {
        let (host, path) = kv(f, "--registry-certificate")?;
        let path = std::path::PathBuf::from(path);
        if !path.is_file() {
            bail!(
                "--registry-certificate {f:?}: {} is not a file",
                path.display()
            );
        }
        m.entry(host).or_default().push(path);
    }
    Ok(m)
}

/// `--registry-client-cert host=cert.pem,key.pem`, repeatable (last wins per host).
fn client_certs(flags: &[String]) -> anyhow::Result<HashMap<String, ClientCert>> {
    let mut m = HashMap::new();
    for f in flags {
        let (host, files) = kv(f, "--registry-client-cert")?;
        let Some((cert, key)) = files.split_once(',') else {
            bail!("--registry-client-cert {f:?}: expected host=cert.pem,key.pem");
        };
        let (cert, key) = (
            std::path::PathBuf::from(cert),
            std::path::PathBuf::from(key),
        );
        for p in [&cert, &key] {
            if !p.is_file() {
                bail!(
                    "--registry-client-cert {f:?}: {} is not a file",
                    p.display()
                );
            }
        }
        m.insert(host, ClientCert { cert, key });
    }
    Ok(m)
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

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
