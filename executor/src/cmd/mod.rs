//! Command-line interface. Flag names and meanings follow kaniko's executor so
//! that an existing pipeline only changes the image it runs.

mod build;
mod cache_token;
pub mod index;
mod summary;
mod values;

use clap::Parser;
use kiln_common::image::Platform;
use kiln_common::registry::ClientCert;
use kiln_executor::compression::Compression;
use kiln_executor::isolation::IsolationKind;
use kiln_executor::options::{CacheMounts, ImageFormat, SecretSource};
use std::path::PathBuf;
use std::time::Duration;

/// kaniko's boolean spellings (pflag's `true/false/1/0/t/f`, any case) and more.
fn boolish() -> clap::builder::BoolishValueParser {
    clap::builder::BoolishValueParser::new()
}

#[derive(Parser, Debug)]
#[command(
    name = "executor",
    version,
    about = "Build container images from Dockerfiles without a daemon",
    // kaniko (pflag) takes the last value of a flag given twice.
    args_override_self = true
)]
pub struct Cli {
    /// Build context: a directory, tar://<path|stdin>, git://<repo>#<ref>#<commit>, dir://<path>.
    #[arg(short = 'c', long, default_value = "/workspace/")]
    pub context: String,
    /// Sub-directory of the context to use (git contexts mostly).
    #[arg(long)]
    pub context_sub_path: Option<String>,
    /// Path to the Dockerfile; relative paths are tried as given, then in the context.
    #[arg(short = 'f', long, default_value = "Dockerfile")]
    pub dockerfile: PathBuf,
    /// Registry destination (repeatable).
    #[arg(short = 'd', long)]
    pub destination: Vec<String>,
    /// Build only up to this stage.
    #[arg(long)]
    pub target: Option<String>,
    /// Build argument KEY=VALUE, or KEY to take it from the environment (repeatable).
    #[arg(long, value_parser = values::build_arg)]
    pub build_arg: Vec<(String, Option<String>)>,
    /// Label KEY=VALUE added to the final image (repeatable).
    #[arg(long, value_parser = values::key_value)]
    pub label: Vec<(String, String)>,
    /// Build for these platforms (os/arch[/variant], comma-separated or
    /// repeated; BuildKit's `--platform`). Several give one image index.
    #[arg(long, aliases = ["customPlatform", "platform"], value_parser = values::platform, value_delimiter = ',')]
    pub custom_platform: Vec<Platform>,
    /// Build but do not push.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub no_push: Option<bool>,
    /// Write a docker-archive tarball here.
    #[arg(long, alias = "tarPath")]
    pub tar_path: Option<PathBuf>,
    /// Write an OCI image layout here.
    #[arg(long)]
    pub oci_layout_path: Option<PathBuf>,
    #[arg(long)]
    pub digest_file: Option<PathBuf>,
    #[arg(long)]
    pub image_name_with_digest_file: Option<PathBuf>,
    #[arg(long)]
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    /// Layer compression: gzip (default), zstd or none.
    #[arg(long, default_value = "gzip", value_parser = values::compression)]
    pub compression: Compression,
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// Strip timestamps so that identical inputs give identical digests.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub reproducible: Option<bool>,
    /// Cap every file time in the layers Kiln writes at SOURCE_DATE_EPOCH
    /// (BuildKit's `rewrite-timestamp=true`); base layers stay untouched.
    /// SOURCE_DATE_EPOCH alone sets the config's and history's times.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub rewrite_timestamp: Option<bool>,
    /// Attestations attached to the image as OCI 1.1 artifacts whose subject
    /// is its manifest: `provenance` (SLSA v1, naming the cache entries
    /// used), `sbom` (SPDX 2.3), comma-separated; BuildKit's
    /// `type=provenance,builder-id=<uri>` is accepted too. Repeatable.
    #[arg(long)]
    pub attest: Vec<String>,
    /// One layer per stage instead of one per step.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub single_snapshot: Option<bool>,
    /// Stages built at once when they do not depend on each other (BuildKit's
    /// `max-parallelism`); default one per core, at least two; 1 builds them
    /// one after another. The in-place rung always builds one at a time.
    #[arg(long, env = "KILN_MAX_PARALLEL_STAGES", value_parser = clap::value_parser!(usize))]
    pub max_parallel_stages: Option<usize>,
    /// RUN isolation: auto (the strongest that works here), namespaces (alias oci;
    /// needs CAP_SYS_ADMIN), in-place (alias kaniko; builds in the container's own
    /// root and restores it; default capabilities suffice), chroot (private root
    /// without /proc, for read-only roots).
    #[arg(long, default_value = "auto", value_parser = values::isolation)]
    pub isolation: IsolationKind,
    /// A path RUN steps must never touch when building in the container's own
    /// root (repeatable; kaniko's flag).
    #[arg(long)]
    pub ignore_path: Vec<PathBuf>,
    /// Build in the container's own root even where no container is detected.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub force: Option<bool>,
    /// Where builds keep their private work directories.
    #[arg(long, env = "KILN_DIR", default_value = "/tmp/kiln")]
    pub kaniko_dir: PathBuf,
    /// Push to registries over plain HTTP.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub insecure: Option<bool>,
    /// Pull from registries over plain HTTP.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub insecure_pull: Option<bool>,
    /// A registry reached over plain HTTP (repeatable).
    #[arg(long)]
    pub insecure_registry: Vec<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub skip_tls_verify: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub skip_tls_verify_pull: Option<bool>,
    /// Mirror for Docker Hub images (repeatable).
    #[arg(long)]
    pub registry_mirror: Vec<String>,
    /// original=replacement[;replacement] registry mapping (repeatable).
    #[arg(long, value_parser = values::registry_map)]
    pub registry_map: Vec<(String, Vec<String>)>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub skip_default_registry_fallback: Option<bool>,
    #[arg(long, default_value_t = 0)]
    pub push_retry: u32,
    /// Extra attempts for manifests and configs (0 when not given) and for
    /// layer streams (5 when not given; see `layer_retries`).
    #[arg(long)]
    pub image_download_retry: Option<u32>,
    /// Extra extraction attempts (0 when not given); a layer's stream is
    /// also retried at least this often.
    #[arg(long)]
    pub image_fs_extract_retry: Option<u32>,
    /// Manifest format: oci (default) or docker.
    #[arg(long, default_value = "oci", value_parser = values::image_format)]
    pub image_format: ImageFormat,
    /// Build stages the target does not need too.
    #[arg(long, default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub skip_unused_stages: bool,
    /// Write a JSON build report here.
    #[arg(long)]
    pub report: Option<PathBuf>,

    /// Write the build's summary here for the CI's run page: Markdown
    /// (appended; pass `$GITHUB_STEP_SUMMARY`), or JUnit XML when the name
    /// ends in `.xml`.
    #[arg(long, value_name = "PATH")]
    pub summary_file: Option<PathBuf>,
    /// Log level: trace, debug, info, warn, error, fatal, panic.
    #[arg(short = 'v', long, default_value = "info")]
    pub verbosity: String,
    /// Log format: text, color or json.
    #[arg(long, default_value = "text")]
    pub log_format: String,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub log_timestamp: Option<bool>,
    /// Accepted for kaniko compatibility: Kiln builds never touch the builder's own filesystem.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub cleanup: Option<bool>,
    /// Use the shared layer cache.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub cache: Option<bool>,
    /// Cache repository (default `<first destination>/cache`); `oci:/path` for a local OCI layout.
    #[arg(long)]
    pub cache_repo: Option<String>,
    /// A cache repository only read, after `--cache-repo` (BuildKit's name;
    /// repeatable, asked in order): a branch reads the default branch's
    /// scope and writes only its own.
    #[arg(long = "cache-from")]
    pub cache_from: Vec<String>,
    /// Record hits from a `--cache-from` repository into `--cache-repo`
    /// (cross-repository mounts: no layer bytes move), so the next build
    /// hits its own scope.
    #[arg(long, default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub cache_from_record: bool,
    /// The CI job's identity token for the cache server (a projected
    /// service-account token, …); else `KILN_CACHE_TOKEN`, else GitHub
    /// Actions' token service. Sent only to the cache repositories' hosts.
    #[arg(long)]
    pub cache_token_file: Option<PathBuf>,
    /// Use only cache entries whose writer, as the Kiln cache server
    /// recorded it, has `key=value` (repeatable, all must hold): `issuer`,
    /// `subject`, `user` (a static user), or a claim of the writer's token,
    /// e.g. `ref_protected=true`. Other entries are misses.
    #[arg(long, value_parser = values::key_value)]
    pub cache_trust: Vec<(String, String)>,
    /// The audience asked of GitHub Actions' token service.
    #[arg(long, default_value = "kiln-cache")]
    pub cache_token_audience: String,
    /// Cache entries older than this are misses, e.g. `336h`, `30m` (default 2 weeks, as kaniko).
    #[arg(long, default_value = "336h", value_parser = values::duration)]
    pub cache_ttl: Duration,
    /// Cache RUN steps.
    #[arg(long, default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub cache_run_layers: bool,
    /// Cache COPY/ADD steps (kaniko's default is false; Kiln's keys cover file content, so true is safe).
    #[arg(long, default_value = "true", num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub cache_copy_layers: bool,
    /// Directory of base images warmed by `warmer` (used before pulling).
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// GCS bucket holding the context as `context.tar.gz` (or a full URL).
    #[arg(short = 'b', long)]
    pub bucket: Option<String>,
    /// `branch=…,single-branch=…,recurse-submodules=…` for git contexts.
    #[arg(long)]
    pub git: Option<String>,
    /// Manifest annotation KEY=VALUE (repeatable).
    #[arg(long, value_parser = values::key_value)]
    pub annotation: Vec<(String, String)>,
    /// Trust this CA for a registry: `host=/path/ca.pem` (repeatable).
    #[arg(long, value_parser = values::host_ca)]
    pub registry_certificate: Vec<(String, PathBuf)>,
    /// Client certificate for a registry: `host=/path/cert.pem,/path/key.pem` (repeatable).
    #[arg(long, value_parser = values::client_cert)]
    pub registry_client_cert: Vec<(String, ClientCert)>,
    /// Skip TLS verification for this registry only (repeatable).
    #[arg(long)]
    pub skip_tls_verify_registry: Vec<String>,
    /// A push refused because the tag is immutable is a warning, not a failure.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub push_ignore_immutable_tag_errors: Option<bool>,
    /// Parse and plan the build, then stop: nothing is pulled, built or pushed.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub dryrun: Option<bool>,
    /// `full`: on the rungs without an overlay, walk the whole root after
    /// every RUN instead of following the kernel's change events (`redo`,
    /// `time`: the default).
    #[arg(long, alias = "snapshotMode", value_name = "full|redo|time", value_parser = values::snapshot_full)]
    pub snapshot_mode: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub use_new_run: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub compressed_caching: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub ignore_var_run: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub whitelist_var_run: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub force_build_metadata: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub skip_push_permission_check: Option<bool>,
    /// Built-in logins to use (env, google, ecr, acr, gitlab; repeatable or
    /// comma-separated; empty turns them off). Default: all.
    #[arg(long)]
    pub credential_helpers: Vec<String>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub materialize: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub pre_cleanup: Option<bool>,
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish(), hide = true)]
    pub preserve_context: Option<bool>,
    /// A secret for `RUN --mount=type=secret`: `id=…,src=<file>` or `id=…,env=<VAR>` (repeatable).
    #[arg(long, value_parser = values::secret)]
    pub secret: Vec<(String, SecretSource)>,
    /// An SSH agent for `RUN --mount=type=ssh`: `default` (the agent at
    /// `$SSH_AUTH_SOCK`) or `<id>=<socket>` (repeatable; BuildKit's syntax).
    #[arg(long, value_parser = values::ssh_agent)]
    pub ssh: Vec<(String, PathBuf)>,
    /// A cache lookup not answered within this is a miss (the build goes on).
    #[arg(long, default_value = "10s", value_parser = values::duration)]
    pub cache_lookup_timeout: Duration,
    /// A registry transfer (pull, push, cache) that makes no progress for
    /// this long fails and is retried where the call retries (a registry
    /// that accepts and then hangs).
    #[arg(long, default_value = "30s", value_parser = values::duration)]
    pub transfer_stall_timeout: Duration,
    /// The longest the build waits at its end for cache entries still being
    /// written; entries not saved by then are listed in a warning.
    #[arg(long, default_value = "60s", value_parser = values::duration)]
    pub cache_push_timeout: Duration,
    /// Cache mounts: `shared` (restored from and saved to the cache repo
    /// when it is a registry), `local` (the work directory only) or `off`.
    #[arg(long, default_value = "shared", value_parser = values::cache_mounts)]
    pub cache_mounts: CacheMounts,
    /// Which shared copy of each cache mount to use (e.g. the branch).
    #[arg(long, default_value = "default")]
    pub cache_mount_scope: String,
    /// A cache mount larger than this is kept locally but not saved to the
    /// shared cache (`4GiB`, `500MB`, …; `0`: no cap).
    #[arg(long, default_value = "4GiB", value_parser = values::size)]
    pub cache_mount_max_size: u64,
    /// Read the cache but never write to it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true", value_parser = boolish())]
    pub no_push_cache: Option<bool>,
}

/// Logging as every Kiln binary does it; kaniko's `--verbosity`,
/// `--log-format` and `--log-timestamp` (`RUST_LOG` wins).
pub fn logging(cli: &Cli) {
    kiln_common::observability::init(&kiln_common::observability::LogOptions {
        level: cli.verbosity.clone(),
        json: cli.log_format == "json",
        color: cli.log_format == "color",
        timestamps: cli.log_timestamp.unwrap_or(false),
    });
}

/// Refuses what must not be ignored (exit 2, as any usage error) and says,
/// once per flag, which kaniko flags are accepted without effect.
pub fn check_kaniko_flags(cli: &Cli) {
    use kiln_executor::kaniko_flags::{lookup, Support};
    let given = [
        ("snapshot-mode", cli.snapshot_mode.is_some()),
        ("use-new-run", cli.use_new_run.is_some()),
        ("compressed-caching", cli.compressed_caching.is_some()),
        ("ignore-var-run", cli.ignore_var_run.is_some()),
        ("whitelist-var-run", cli.whitelist_var_run.is_some()),
        ("force-build-metadata", cli.force_build_metadata.is_some()),
        (
            "skip-push-permission-check",
            cli.skip_push_permission_check.is_some(),
        ),
        ("credential-helpers", !cli.credential_helpers.is_empty()),
        ("materialize", cli.materialize.is_some()),
        ("pre-cleanup", cli.pre_cleanup.is_some()),
        ("preserve-context", cli.preserve_context.is_some()),
        ("cleanup", cli.cleanup.is_some()),
        ("registry-client-cert", !cli.registry_client_cert.is_empty()),
    ];
    for (name, on) in given {
        let Some(k) = lookup(name).filter(|_| on) else {
            continue;
        };
        match k.support {
            Support::Refused => {
                use clap::CommandFactory;
                Cli::command()
                    .error(
                        clap::error::ErrorKind::ArgumentConflict,
                        format!("--{name} is refused: {}", k.note),
                    )
                    .exit()
            }
            Support::Notice => tracing::info!("--{name}: accepted, no effect: {}", k.note),
            Support::Implemented => {}
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    build::run(cli).await
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;
    use kiln_executor::kaniko_flags::KANIKO_FLAGS;

    /// The table and the command line cannot drift apart.
    #[test]
    fn every_kaniko_flag_is_on_the_command_line() {
        let cmd = Cli::command();
        for k in KANIKO_FLAGS {
            let defined = cmd.get_arguments().any(|a| {
                a.get_long() == Some(k.name)
                    || a.get_all_aliases().is_some_and(|al| al.contains(&k.name))
            });
            assert!(
                defined,
                "--{} is in the table but not on the command line",
                k.name
            );
        }
    }
}
