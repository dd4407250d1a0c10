//! The build engine (named so, not `build/`, which tools take for output):
//! stages in dependency order, each instruction applied to the
//! stage's config and root, one layer per step that changed files.
//!
//! | file | what |
//! |---|---|
//! | `mod.rs` | [`Builder`]: set-up, the whole build, cache writes and records |
//! | `stages.rs` | which stages are needed and what each reads; global and platform ARGs |
//! | `graph.rs` | the stage graph, run concurrently |
//! | `base.rs` | a stage's base image: warmed directory or registry |
//! | `config.rs` | pure: an instruction applied to the config → a [`config::Step`] |
//! | `plan.rs` | the cache plan: keys, batch lookup, hit/miss per step |
//! | `records.rs` | cache entries written as steps finish; the build record |
//! | `roots.rs` | stage roots: made, stacked on warmed layers, removed |
//! | `skeleton.rs` | a root without its files for a COPY-only tail, filled when a step needs them |
//! | `stage.rs` | one stage, start to end (the driver) |
//! | `exec.rs` | the root: unpack, RUN, directories, layers, hits |
//! | `copy_step.rs` | COPY/ADD: sources resolved once, then copied |
//! | `mount_spec.rs`, `mounts.rs` | `RUN --mount`: parsed (pure), then staged into the root |
//! | `dry_run.rs` | `--dryrun`: the plan without pulling or executing |
//! | `attestations.rs` | `--attest`: provenance and SBOM made and attached |
//! | `report.rs`, `error.rs` | what a build reports; its errors |

mod agent;
mod attestations;
mod base;
pub mod config;
mod copy_step;
mod dry_run;
mod error;
mod exec;
mod graph;
mod mount_spec;
mod mounts;
mod plan;
mod records;
mod report;
mod roots;
mod shared_base;
mod skeleton;
mod sources;
mod stage;
mod stage_run;
mod stages;

pub use crate::outcome::{BuildResult, FirstMiss, StepReport};
pub use error::{BuildError, StepError};
pub use mounts::SecretSource;

use crate::blobs::BlobStore;
use crate::cache::{CacheChain, LayerCache};
use crate::context::BuildContext;
use crate::fetch::LayerFetcher;
use crate::isolation::{self, Isolation};
use crate::layer::Layer;
use crate::options::BuildOptions;
use crate::output;
use config::Scope;
use kiln_common::dockerfile::Dockerfile;
use kiln_common::image::Platform;
use kiln_common::registry::Registry;
use kiln_common::report::Report;
use kiln_common::shell_lex::Lexer;
use report::Counters;
use stage::Shared;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// One build: its private work directory, blob store and isolation.
pub struct Builder {
    opts: BuildOptions,
    isolation: Box<dyn Isolation>,
    /// Why this rung, for the log line.
    isolation_reason: String,
    /// Roots mounted over warmed, extracted layers ([`crate::lowers`]);
    /// unmounted (field order) before the tmpfs below and the work dir go.
    stacked: Mutex<Vec<crate::isolation::probe::Mounted>>,
    /// Dropped after `isolation` (field order) and before `work`: a tmpfs
    /// over the build directory, when the work dir cannot host an overlay.
    _tmpfs: Option<isolation::probe::Mounted>,
    work: WorkDir,
    fetcher: LayerFetcher,
    platform: Platform,
    cache: Option<Arc<CacheChain>>,
    /// Background entry writes, by key.
    cache_writes: Mutex<Vec<(kiln_common::Digest, CacheWrite)>>,
    counters: Counters,
    /// The previous build of the same destination, for miss explanations.
    last_record: tokio::sync::OnceCell<Option<crate::cache::BuildRecord>>,
    this_record: Mutex<Vec<crate::cache::RecordedStep>>,
    /// Removing the stages' roots once the last step ran, beside the push;
    /// joined before the work directory goes.
    roots_removal: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Shared cache mounts (`--cache-mounts=shared` with a registry cache).
    mount_cache: Option<crate::cache_mounts::MountCache>,
    /// Cache mounts this build used, by id: their directory and what was
    /// restored into it (a save compares against it).
    mounts_used: Mutex<BTreeMap<String, mounts::MountUse>>,
    /// Set when a stage failed: the others stop before their next step.
    cancelled: std::sync::atomic::AtomicBool,
    /// When the builder was made: step reports say when they started.
    epoch: Instant,
    /// Base images resolved in this build, by name and platform.
    bases: Mutex<BTreeMap<String, BaseCell>>,
    /// One turn at a time per cache mount id, for stages running at once.
    mount_turns: crate::gates::Gates<String>,
    /// One extraction per shared base layer (by diff id).
    lower_gates: crate::gates::Gates<kiln_common::Digest>,
}

impl Drop for Builder {
    fn drop(&mut self) {
        let removal = self.roots_removal.get_mut().ok().and_then(Option::take);
        if let Some(t) = removal {
            let _ = t.join();
        }
    }
}

/// What [`Builder::parse`] gives a build and a dry run.
struct Parsed {
    ctx: BuildContext,
    df: Dockerfile,
    file: String,
    lexer: Lexer,
    global: Vec<(String, String)>,
    target: usize,
    needed: Vec<usize>,
}

/// One base image's resolution, shared by the stages that use it.
type BaseCell = Arc<tokio::sync::OnceCell<(crate::model::BuiltImage, kiln_common::Digest)>>;

type CacheWrite = tokio::task::JoinHandle<Result<u64, crate::cache::CacheError>>;

/// Each build has its own directory: several builds in one process or
/// container never see each other's files, and nothing needs --cleanup.
/// Making and removing it changes the times of the directory it is made
/// in (and of the first existing one above, when `--kaniko-dir` is new):
/// those are put back when the build's directory goes, so the container's
/// own directories (kaniko's `/kaniko`) are left as they were found.
pub(super) struct WorkDir {
    /// Removed on drop, before the times are put back.
    dir: PathBuf,
    times: Vec<(PathBuf, std::fs::Metadata)>,
}

impl WorkDir {
    fn create(opts: &BuildOptions) -> Result<WorkDir, BuildError> {
        let err = |source| BuildError::Work {
            op: "creating the work directory in",
            path: opts.work_dir.clone(),
            source,
        };
        let mut times = Vec::new();
        for p in opts.work_dir.ancestors() {
            if let Ok(m) = std::fs::symlink_metadata(p) {
                times.push((p.to_path_buf(), m));
                break;
            }
        }
        std::fs::create_dir_all(&opts.work_dir).map_err(err)?;
        if let Ok(m) = std::fs::symlink_metadata(&opts.work_dir) {
            times.push((opts.work_dir.clone(), m));
        }
        let dir = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&opts.work_dir)
            .map_err(err)?
            .keep();
        Ok(WorkDir { dir, times })
    }

    pub(super) fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = kiln_layers::extract::remove_any(&self.dir);
        for (p, m) in self.times.iter().rev() {
            let _ = crate::tree::set_mtime(p, m);
        }
    }
}

impl Builder {
    /// A build with the isolation `--isolation` selects here.
    pub fn new(opts: BuildOptions, registry: Arc<Registry>) -> Result<Builder, BuildError> {
        let env = isolation::precheck(opts.isolation)?;
        let work = WorkDir::create(&opts)?;
        // Chosen before anything is written in the build directory: the
        // namespaces rung may mount a tmpfs over it.
        let selection = isolation::select(
            opts.isolation,
            &env,
            work.path(),
            &isolation::SelectOptions {
                protected: protected_paths(&opts),
                force: opts.force,
                full_walks: opts.full_walks,
            },
        )?;
        Self::assemble(opts, registry, work, selection)
    }

    /// A build whose RUN steps go through `isolation` (a fake in tests, or
    /// one the caller chose).
    pub fn with_isolation(
        opts: BuildOptions,
        registry: Arc<Registry>,
        isolation: Box<dyn Isolation>,
    ) -> Result<Builder, BuildError> {
        let work = WorkDir::create(&opts)?;
        let selection = isolation::Selection {
            isolation,
            reason: "given by the caller".into(),
            tmpfs: None,
        };
        Self::assemble(opts, registry, work, selection)
    }

    fn assemble(
        opts: BuildOptions,
        registry: Arc<Registry>,
        work: WorkDir,
        selection: isolation::Selection,
    ) -> Result<Builder, BuildError> {
        let store = BlobStore::open(&work.path().join("blobs"))?;
        let platform = opts.platform.clone().unwrap_or_else(Platform::host);
        let cache = match &opts.cache {
            Some(c) if !opts.single_snapshot => {
                match LayerCache::open(&c.repo, registry.clone(), c.ttl) {
                    Ok(write) => {
                        let read = c
                            .from
                            .iter()
                            .filter_map(|f| match LayerCache::open(f, registry.clone(), c.ttl) {
                                Ok(lc) => Some(lc),
                                Err(e) => {
                                    tracing::warn!("--cache-from {f} not read: {}", Report(&e));
                                    None
                                }
                            })
                            .collect();
                        Some(Arc::new(CacheChain {
                            write,
                            read,
                            trust: c.trust.clone(),
                        }))
                    }
                    Err(e) => {
                        tracing::warn!("layer cache disabled: {}", Report(&e));
                        None
                    }
                }
            }
            Some(_) => {
                tracing::warn!("--single-snapshot builds are not cached");
                None
            }
            None => None,
        };
        let mount_cache = match (&cache, opts.cache_mounts) {
            (Some(c), crate::options::CacheMounts::Shared) => {
                c.write.registry_repo().map(|(r, repo)| {
                    let read = c.read.iter().filter_map(|f| f.registry_repo());
                    crate::cache_mounts::MountCache::new(r, repo, &opts.mount_scope, &platform)
                        .with_fallbacks(read.map(|(_, r)| r).collect())
                })
            }
            _ => None,
        };
        let fetcher = LayerFetcher::new(registry, store, opts.image_fs_extract_retry);
        Ok(Builder {
            opts,
            isolation: selection.isolation,
            isolation_reason: selection.reason,
            stacked: Mutex::new(Vec::new()),
            _tmpfs: selection.tmpfs,
            work,
            fetcher,
            platform,
            cache,
            cache_writes: Mutex::new(Vec::new()),
            counters: Counters::default(),
            last_record: tokio::sync::OnceCell::new(),
            this_record: Mutex::new(Vec::new()),
            mount_cache,
            mounts_used: Mutex::new(BTreeMap::new()),
            roots_removal: Mutex::new(None),
            cancelled: std::sync::atomic::AtomicBool::new(false),
            mount_turns: Default::default(),
            lower_gates: Default::default(),
            epoch: Instant::now(),
            bases: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn isolation_name(&self) -> &'static str {
        self.isolation.name()
    }

    /// Why the rung was chosen: what made the stronger ones unavailable.
    pub fn isolation_reason(&self) -> &str {
        &self.isolation_reason
    }

    /// The turn-taking lock of cache mount `id` ([`mounts`]).
    fn mount_turn(&self, id: &str) -> Arc<tokio::sync::Mutex<()>> {
        self.mount_turns.gate(&id.to_string())
    }

    /// How many of `stages` may build at once: one per core (at least two,
    /// since much of a stage is waiting on its commands), or one on a rung
    /// whose stages share a root.
    fn stage_limit(&self, stages: usize) -> usize {
        if !self.isolation.concurrent_stages() {
            if stages > 1 {
                tracing::info!(
                    "stages run one after another: the {} rung has one root for all of them",
                    self.isolation.name()
                );
            }
            return 1;
        }
        self.opts.max_parallel_stages.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .max(2)
        })
    }

    pub async fn build(&self) -> Result<BuildResult, BuildError> {
        let started = Instant::now();
        let started_at = chrono::Utc::now();
        let p = self.parse().await?;
        let (df, target) = (&p.df, p.target);
        let mut shared = Shared {
            df,
            global: &p.global,
            lexer: p.lexer,
            ctx: &p.ctx,
            file: &p.file,
            target,
            shared_bases: Default::default(),
        };
        shared.shared_bases = self.shared_bases_of(&shared, &p.needed);
        let graph = graph::Graph {
            deps: p
                .needed
                .iter()
                .map(|&i| (i, stages::stage_deps(df, i, &p.global, &p.lexer)))
                .collect(),
            needed: p.needed.clone(),
            limit: self.stage_limit(p.needed.len()),
        };
        let (outs, steps) = match self.run_graph(&shared, &graph) {
            Ok(built) => built,
            Err(e) => {
                // The steps that did complete keep their cache entries:
                // the retry starts where this build failed.
                self.finish_cache_writes().await;
                return Err(e);
            }
        };
        let mut image = outs
            .get(&target)
            .map(|o| o.image.clone())
            .ok_or_else(|| BuildError::NoTarget(target.to_string()))?;
        self.remove_roots(outs.into_values().filter_map(|o| o.root).collect());
        // --label applies to the final image only.
        let labels = image.config.config.labels.get_or_insert_with(BTreeMap::new);
        for (k, v) in &self.opts.labels {
            labels.insert(k.clone(), v.clone());
        }
        let out = &self.opts.output;
        let written = output::write_image(self.fetcher.store(), &image, out)?;
        let cache_repo = self.cache.as_ref().and_then(|c| c.write.registry_repo());
        let cache_repo = cache_repo.as_ref().map(|(_, r)| r);
        let delivered = output::deliver(out, &self.fetcher, &image, &written, cache_repo);
        let pushed = if output::mounts_from(out, cache_repo) {
            // The cache's layer uploads first: the push then mounts those
            // layers from the cache repository instead of sending them a
            // second time.
            self.finish_cache_writes().await;
            delivered.await?
        } else {
            // Nothing to mount from it: both at once.
            let (pushed, ()) = tokio::join!(delivered, self.finish_cache_writes());
            pushed?
        };
        self.attest(&p, &image, &written, &steps, started_at)
            .await?;
        let (mounts, ()) = tokio::join!(self.save_cache_mounts(), self.save_record());
        let c = &self.counters;
        let mut result = BuildResult {
            manifest_digest: written.manifest_digest.clone(),
            manifest_size: written.manifest.len() as u64,
            platform: self.platform.clone(),
            config_digest: written.config_digest.clone(),
            media_type: written.media_type.clone(),
            pushed,
            steps,
            seconds: 0.0,
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_misses: c.misses.load(Ordering::Relaxed),
            cache_errors: c.errors.load(Ordering::Relaxed),
            bytes_pulled: self.fetcher.pulled(),
            bytes_pushed_cache: c.pushed_cache.load(Ordering::Relaxed),
            cache_mounts: mounts,
            seconds_saved: c.saved_ms.load(Ordering::Relaxed) as f64 / 1000.0,
            bytes_saved: c.saved_bytes.load(Ordering::Relaxed),
            first_miss: c
                .first_miss
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        };
        if let Some(cache) = &self.cache {
            if tokio::time::timeout(self.lookup_timeout(), cache.write.report(&result))
                .await
                .is_err()
            {
                tracing::warn!("the cache server did not take the build's figures in time");
            }
        }
        // The build's time includes handing its figures to the cache server.
        result.seconds = started.elapsed().as_secs_f64();
        if let Some(p) = &self.opts.report_path {
            let json = serde_json::to_vec_pretty(&result).unwrap_or_default();
            std::fs::write(p, json).map_err(|source| BuildError::Work {
                op: "writing the report",
                path: p.clone(),
                source,
            })?;
        }
        Ok(result)
    }

    /// The context prepared, the Dockerfile parsed, its global ARGs and the
    /// stages the target needs: what a build and a dry run start from.
    async fn parse(&self) -> Result<Parsed, BuildError> {
        let mut ctx = BuildContext::prepare(
            &self.opts.context,
            self.opts.context_sub_path.as_deref(),
            &self.opts.git,
            self.work.path(),
        )
        .await?;
        let df_path = self.opts.dockerfile_path(Some(&ctx.dir));
        let df = Dockerfile::from_path(&df_path)?;
        ctx.load_ignore(&df_path)?;
        let file = df_path.display().to_string();
        let target = match &self.opts.target {
            Some(t) => df
                .stage_index(t)
                .ok_or_else(|| BuildError::NoTarget(t.clone()))?,
            None => df.stages.len() - 1,
        };
        let lexer = Lexer::new(df.escape);
        let scope = Scope {
            lexer,
            global: &[],
            build_args: &self.opts.build_args,
        };
        let global = stages::global_args(&df, &scope, &self.platform, &file)?;
        let needed = if self.opts.build_unused_stages {
            (0..=target).collect()
        } else {
            stages::needed_stages(&df, target, &global, &lexer)
        };
        Ok(Parsed {
            ctx,
            df,
            file,
            lexer,
            global,
            target,
            needed,
        })
    }

    /// Creation times in config and history: the epoch with `--reproducible`.
    /// The config's and history's `created`: kaniko's zero time with
    /// `--reproducible`, `SOURCE_DATE_EPOCH` when given (BuildKit's rule),
    /// else now.
    fn timestamp(&self) -> String {
        let l = &self.opts.layer;
        let at = match (l.reproducible, l.epoch) {
            (true, _) => chrono::DateTime::UNIX_EPOCH,
            (false, Some(e)) => chrono::DateTime::from_timestamp(e as i64, 0)
                .unwrap_or(chrono::DateTime::UNIX_EPOCH),
            (false, None) => chrono::Utc::now(),
        };
        at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    }

    fn work_path(&self) -> &Path {
        self.work.path()
    }
}

/// What RUN must never see or change when it runs in the container's own
/// root: Kiln's work directory, credentials, the warmed-image directory, an
/// `oci:` layer cache and `--ignore-path`.
fn protected_paths(opts: &BuildOptions) -> Vec<PathBuf> {
    let mut v = vec![opts.work_dir.clone()];
    // Credentials only where there are some: a missing `$HOME/.docker`
    // must not keep `/root` in place (Kiln's image has no `/root`, and the
    // image's own would then be hidden from RUN).
    let credentials = [
        std::env::var_os("DOCKER_CONFIG").map(PathBuf::from),
        std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")),
    ];
    v.extend(
        credentials
            .into_iter()
            .flatten()
            .filter(|p| std::fs::symlink_metadata(p).is_ok()),
    );
    v.extend(opts.cache_dir.iter().cloned());
    // An `oci:` layer cache is written in the background while later steps
    // run: a step must never see (or capture) Kiln's own writes there.
    v.extend(
        opts.cache
            .as_ref()
            .and_then(|c| c.repo.strip_prefix("oci:"))
            .map(PathBuf::from),
    );
    v.extend(opts.ignore_paths.iter().cloned());
    v.into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}
