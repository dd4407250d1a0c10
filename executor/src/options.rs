//! Everything a build needs to know, independent of how it was asked for
//! (the CLI maps kaniko's flags onto this).

use crate::isolation::IsolationKind;
use crate::layer::LayerOptions;
use kiln_common::registry::RegistryOptions;
use std::path::PathBuf;

#[derive(Debug, Clone, Default)]
pub struct BuildOptions {
    /// `--context`: a directory, `tar://…`, `git://…`, `dir://…`.
    pub context: String,
    pub context_sub_path: Option<String>,
    /// `--dockerfile`: as given, else relative to the context.
    pub dockerfile: PathBuf,
    pub destinations: Vec<String>,
    pub target: Option<String>,
    /// `--build-arg K=V`, or `K` alone to take the value from the environment.
    pub build_args: Vec<(String, Option<String>)>,
    pub labels: Vec<(String, String)>,
    /// `--custom-platform`, e.g. `linux/arm64`.
    pub platform: Option<String>,
    pub no_push: bool,
    pub tar_path: Option<PathBuf>,
    pub oci_layout_path: Option<PathBuf>,
    pub digest_file: Option<PathBuf>,
    pub image_name_with_digest_file: Option<PathBuf>,
    pub image_name_tag_with_digest_file: Option<PathBuf>,
    pub layer: LayerOptions,
    pub single_snapshot: bool,
    pub isolation: IsolationKind,
    /// `--ignore-path`: paths RUN never touches in the in-place rung.
    pub ignore_paths: Vec<PathBuf>,
    /// `--force`: allow the in-place rung outside a detected container.
    pub force: bool,
    /// Where each build gets its own private directory (`--kaniko-dir`).
    pub work_dir: PathBuf,
    pub registry: RegistryOptions,
    /// Docker schema 2 manifests instead of OCI (`--image-format docker`).
    pub docker_format: bool,
    pub image_fs_extract_retry: u32,
    /// Build every stage, not just those the target needs (`--skip-unused-stages=false`).
    pub build_unused_stages: bool,
    /// JSON build report path (`--report`).
    pub report_path: Option<PathBuf>,
    /// `--cache`: the shared layer cache, when on.
    pub cache: Option<CacheOptions>,
    /// `--cache-dir`: base images warmed by the warmer.
    pub cache_dir: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// `--cache-repo`: a registry repository, or `oci:/path`.
    pub repo: String,
    /// `--cache-ttl`: older entries are misses (and get replaced).
    pub ttl: Option<std::time::Duration>,
    /// `--cache-run-layers`.
    pub run_layers: bool,
    /// `--cache-copy-layers`.
    pub copy_layers: bool,
    /// Write entries back (`--no-push-cache` turns this off).
    pub push: bool,
}
