//! Everything a build needs to know, independent of how it was asked for
//! (the CLI maps kaniko's flags onto this).

use crate::isolation::IsolationKind;
use crate::layer::LayerOptions;
use kiln_common::image::Platform;
use kiln_common::registry::RegistryOptions;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `--context`: a directory, `tar://…`, `git://…`, `dir://…`.
    pub context: String,
    pub context_sub_path: Option<String>,
    /// `--git`: branch and clone options for `git://` contexts.
    pub git: crate::context::GitOptions,
    /// `--dryrun`: plan, then stop.
    pub dry_run: bool,
    /// `--cache-mounts`.
    pub cache_mounts: CacheMounts,
    /// `--cache-mount-scope`: which shared copy of a cache mount (e.g. a branch).
    pub mount_scope: String,
    /// `--cache-mount-max-size`: a cache mount larger than this is not
    /// saved to the shared cache (0: no cap).
    pub cache_mount_max_size: u64,
    /// `--secret id=…,src=…|env=…`: what `RUN --mount=type=secret` reads.
    pub secrets: std::collections::BTreeMap<String, SecretSource>,
    /// `--ssh id=<socket>`: the SSH agents `RUN --mount=type=ssh` reaches.
    pub ssh: std::collections::BTreeMap<String, PathBuf>,
    /// `--dockerfile`: as given, else relative to the context.
    pub dockerfile: PathBuf,
    pub target: Option<String>,
    /// `--build-arg K=V`, or `K` alone to take the value from the environment.
    pub build_args: Vec<(String, Option<String>)>,
    pub labels: Vec<(String, String)>,
    /// `--custom-platform`, parsed; the host's when absent.
    pub platform: Option<Platform>,
    /// Where the image goes.
    pub output: OutputOptions,
    pub layer: LayerOptions,
    pub single_snapshot: bool,
    /// `--max-parallel-stages`: stages built at once (`None`: one per core,
    /// at least two; 1 builds them one after another).
    pub max_parallel_stages: Option<usize>,
    pub isolation: IsolationKind,
    /// `--ignore-path`: paths RUN never touches in the in-place rung.
    pub ignore_paths: Vec<PathBuf>,
    /// `--force`: allow the in-place rung outside a detected container.
    pub force: bool,
    /// `--snapshot-mode=full`: the rungs without an overlay walk the whole
    /// root after every RUN (see [`crate::snapshot::RootWatch`]).
    pub full_walks: bool,
    /// Where each build gets its own private directory (`--kaniko-dir`).
    pub work_dir: PathBuf,
    pub registry: RegistryOptions,
    pub image_fs_extract_retry: u32,
    /// Build every stage, not just those the target needs (`--skip-unused-stages=false`).
    pub build_unused_stages: bool,
    /// JSON build report path (`--report`).
    pub report_path: Option<PathBuf>,
    /// `--cache`: the shared layer cache, when on.
    pub cache: Option<CacheOptions>,
    /// `--cache-dir`: base images warmed by the warmer.
    pub cache_dir: Option<PathBuf>,
    /// `--attest`: provenance and SBOM attached to the image.
    pub attest: crate::attest::AttestOptions,
}

#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// `--cache-repo`: a registry repository, or `oci:/path`; read first,
    /// the only one written.
    pub repo: String,
    /// `--cache-from`: repositories (or `oci:` layouts) only read, in
    /// order, for the keys `repo` lacks.
    pub from: Vec<String>,
    /// `--cache-from-record`: a hit from `from` is recorded into `repo`.
    pub record_from: bool,
    /// `--cache-trust key=value`: what a hit's recorded writer must be.
    pub trust: Vec<(String, String)>,
    /// `--cache-ttl`: older entries are misses (and get replaced).
    pub ttl: Option<std::time::Duration>,
    /// `--cache-run-layers`.
    pub run_layers: bool,
    /// `--cache-copy-layers`.
    pub copy_layers: bool,
    /// Write entries back (`--no-push-cache` turns this off).
    pub push: bool,
    /// `--cache-lookup-timeout`: a lookup (and a record read) not answered
    /// by then is a miss.
    pub lookup_timeout: std::time::Duration,
    /// `--cache-push-timeout`: the longest the build waits at its end for
    /// entries still being written; what is not saved by then is listed.
    pub push_timeout: std::time::Duration,
}

impl BuildOptions {
    /// `--dockerfile` as given when it exists, else inside the context
    /// (`ctx_dir` once prepared, else `--context` as a directory).
    pub fn dockerfile_path(&self, ctx_dir: Option<&std::path::Path>) -> PathBuf {
        let p = &self.dockerfile;
        if p.is_absolute() || p.exists() {
            return p.clone();
        }
        let in_ctx = match ctx_dir {
            Some(d) => d.join(p),
            None => std::path::Path::new(&self.context).join(p),
        };
        if in_ctx.exists() {
            in_ctx
        } else {
            p.clone()
        }
    }
}

impl CacheOptions {
    /// A layer cache in the `oci:` directory `dir`, read and written, with
    /// the default timeouts: what the platforms of one build share when
    /// no `--cache` was asked for ([`crate::multi`]).
    pub fn local(dir: &std::path::Path) -> CacheOptions {
        CacheOptions {
            repo: format!("oci:{}", dir.display()),
            from: Vec::new(),
            record_from: false,
            trust: Vec::new(),
            ttl: None,
            run_layers: true,
            copy_layers: true,
            push: true,
            lookup_timeout: std::time::Duration::from_secs(10),
            push_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// `--cache-mounts`: where `RUN --mount=type=cache` content lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum CacheMounts {
    /// In the work directory, and with `--cache` on a registry, restored
    /// from and saved to the cache repository.
    #[default]
    Shared,
    /// In the work directory only.
    Local,
    /// Empty for every RUN, kept nowhere.
    Off,
}

pub use crate::layer::ImageFormat;

/// Where a built image goes and which files describe it afterwards.
#[derive(Debug, Clone, Default)]
pub struct OutputOptions {
    /// `--destination`, in order; the first names the OCI layout's tag.
    pub destinations: Vec<String>,
    pub no_push: bool,
    pub tar_path: Option<PathBuf>,
    pub oci_layout_path: Option<PathBuf>,
    pub digest_file: Option<PathBuf>,
    pub image_name_with_digest_file: Option<PathBuf>,
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    pub format: ImageFormat,
    /// `--annotation`: on the image manifest.
    pub annotations: std::collections::BTreeMap<String, String>,
    /// `--push-ignore-immutable-tag-errors`.
    pub ignore_immutable_tags: bool,
    /// Push the manifest by its digest, leaving the destinations' tags
    /// alone: one platform of a multi-platform build, whose index then
    /// takes the tags ([`crate::index`]).
    pub by_digest: bool,
}

/// Where a `--secret` comes from.
#[derive(Debug, Clone)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
}

/// `SOURCE_DATE_EPOCH`, as BuildKit takes it: a `--build-arg` (with a
/// value, or by name from the environment), else the environment
/// variable (`env`). Seconds since 1970.
pub fn source_date_epoch(
    build_args: &[(String, Option<String>)],
    env: Option<String>,
) -> Result<Option<u64>, String> {
    const NAME: &str = "SOURCE_DATE_EPOCH";
    let from_arg = build_args
        .iter()
        .rev()
        .find(|(k, _)| k == NAME)
        .map(|(_, v)| v.clone().or_else(|| env.clone()));
    let value = match from_arg {
        Some(v) => v,
        None => env,
    };
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| format!("{NAME}={v:?}: expected whole seconds since 1970")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_date_epoch_from_a_build_arg_or_the_environment() {
        let arg = |v: Option<&str>| vec![("SOURCE_DATE_EPOCH".to_string(), v.map(str::to_string))];
        assert_eq!(source_date_epoch(&[], None), Ok(None));
        assert_eq!(
            source_date_epoch(&[], Some("1700000000".into())),
            Ok(Some(1_700_000_000))
        );
        assert_eq!(
            source_date_epoch(&arg(Some("5")), Some("7".into())),
            Ok(Some(5))
        );
        assert_eq!(source_date_epoch(&arg(None), Some("7".into())), Ok(Some(7)));
        assert!(source_date_epoch(&arg(Some("yesterday")), None).is_err());
    }
}
