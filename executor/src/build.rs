//! The build: stages in dependency order, each instruction applied to the
//! stage's config and root, one layer per step that changed files.

use crate::blobs::BlobStore;
use crate::cache::{CacheHit, LayerCache};
use crate::cache_key::{self, KeyBuilder};
use crate::context::BuildContext;
use crate::copy::{self, CopyOptions, Owner};
use crate::extract;
use crate::isolation::{self, Isolation, RunSpec};
use crate::layer::{self, Layer};
use crate::options::BuildOptions;
use crate::output;
use crate::rootfs;
use crate::snapshot::{Diff, ScanIndex};
use kiln_common::dockerfile::{Cmd, CopySpec, Dockerfile, Instruction, Kind, Stage};
use kiln_common::image::{Descriptor, Healthcheck, History, ImageConfig, Platform};
use kiln_common::registry::Registry;
use kiln_common::shell_lex::Lexer;
use kiln_common::Digest;
use oci_client::Reference;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Dockerfile(#[from] kiln_common::dockerfile::ParseError),
    #[error("{file}:{line}: {instruction}: {message}")]
    Step {
        file: String,
        line: usize,
        instruction: String,
        message: String,
    },
    #[error(
        "{file}:{line}: RUN {command:?} failed with exit code {code}\n--- last output ---\n{tail}"
    )]
    RunFailed {
        file: String,
        line: usize,
        command: String,
        code: i32,
        tail: String,
    },
    #[error("base image {image:?} (stage {stage}): {source}")]
    BaseImage {
        image: String,
        stage: String,
        source: Box<kiln_common::registry::RegistryError>,
    },
    #[error("target stage {0:?} not found in the Dockerfile")]
    NoTarget(String),
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error("work directory {path}: {source}")]
    Work {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Isolation(#[from] crate::isolation::IsolationError),
    #[error(transparent)]
    Output(#[from] Box<output::OutputError>),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    #[error("extracting layer {digest} of {image}: {source}")]
    Extract {
        image: String,
        digest: Digest,
        source: Box<extract::ExtractError>,
    },
}

impl From<output::OutputError> for BuildError {
    fn from(e: output::OutputError) -> Self {
        BuildError::Output(Box::new(e))
    }
}

/// Where a layer's bytes can be found.
#[derive(Debug, Clone)]
pub enum LayerSource {
    /// In the build's blob store.
    Local,
    /// In a registry repository (a base image's or the cache's), fetched on demand.
    Remote(Reference),
    /// In a local `sha256/<hex>` directory (an `oci:` cache).
    Path(PathBuf),
}

#[derive(Debug, Clone)]
pub struct ImageLayer {
    pub descriptor: Descriptor,
    pub diff_id: Digest,
    pub source: LayerSource,
}

/// Per-step figures for the closing summary and the JSON report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub stage: String,
    pub line: usize,
    pub instruction: String,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<Digest>,
    pub layer_size: u64,
    /// `hit`, `miss`, `uncached` (step not cacheable by flags) or absent (cache off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Digest>,
    /// Layer bytes downloaded during this step (base or cached layers it needed).
    pub bytes_pulled: u64,
    /// Layer bytes sent to the cache for this step.
    pub bytes_pushed: u64,
}

/// A finished image: config, layers, and where the blobs are.
#[derive(Debug, Clone)]
pub struct BuiltImage {
    pub config: ImageConfig,
    pub layers: Vec<ImageLayer>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildResult {
    pub manifest_digest: Digest,
    pub config_digest: Digest,
    pub media_type: String,
    pub pushed: Vec<String>,
    pub steps: Vec<StepReport>,
    pub seconds: f64,
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Lookups or writes the cache could not answer (each a warning).
    pub cache_errors: u64,
    /// Layer bytes downloaded (base and cached layers needed to execute steps).
    pub bytes_pulled: u64,
    /// Layer bytes uploaded to the cache.
    pub bytes_pushed_cache: u64,
}

struct StageOut {
    image: BuiltImage,
    /// The stage's root, kept for `COPY --from` (absent when never unpacked).
    root: Option<PathBuf>,
    base_name: String,
    /// The last key of the stage's chain, where `FROM <stage>` continues.
    final_key: Digest,
}

/// One build: its private work directory, blob store and isolation.
pub struct Builder {
    opts: BuildOptions,
    registry: Arc<Registry>,
    isolation: Box<dyn Isolation>,
    /// Why this rung, for the log line.
    isolation_reason: String,
    /// Dropped after `isolation` (field order) and before `work`: a tmpfs
    /// over the build directory, when the work dir cannot host an overlay.
    _tmpfs: Option<isolation::probe::TmpfsMount>,
    work: tempfile::TempDir,
    store: BlobStore,
    platform: Platform,
    cache: Option<Arc<LayerCache>>,
    cache_writes: Mutex<Vec<tokio::task::JoinHandle<Result<u64, crate::cache::CacheError>>>>,
    counters: Counters,
    /// The previous build of the same destination, for miss explanations.
    last_record: tokio::sync::OnceCell<Option<crate::cache::BuildRecord>>,
    this_record: Mutex<Vec<crate::cache::RecordedStep>>,
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    /// Execution time the hits' entries recorded, in milliseconds.
    saved_ms: AtomicU64,
    misses: AtomicU64,
    errors: AtomicU64,
    pulled: AtomicU64,
    pushed_cache: AtomicU64,
}

impl Builder {
    pub fn new(opts: BuildOptions, registry: Arc<Registry>) -> Result<Builder, BuildError> {
        let env = isolation::precheck(opts.isolation)?;
        std::fs::create_dir_all(&opts.work_dir).map_err(|source| BuildError::Work {
            path: opts.work_dir.clone(),
            source,
        })?;
        // Each build has its own directory: several builds in one process or
        // container never see each other's files, and nothing needs --cleanup.
        let work = tempfile::Builder::new()
            .prefix("build-")
            .tempdir_in(&opts.work_dir)
            .map_err(|source| BuildError::Work {
                path: opts.work_dir.clone(),
                source,
            })?;
        // Chosen before anything is written in the build directory: the
        // namespaces rung may mount a tmpfs over it.
        let selection = isolation::select(
            opts.isolation,
            &env,
            work.path(),
            &isolation::SelectOptions {
                protected: protected_paths(&opts),
                force: opts.force,
            },
        )?;
        let store = BlobStore::open(&work.path().join("blobs"))?;
        let platform = match &opts.platform {
            Some(p) => Platform::parse(p).map_err(|e| BuildError::Step {
                file: "--custom-platform".into(),
                line: 0,
                instruction: String::new(),
                message: e.to_string(),
            })?,
            None => Platform::host(),
        };
        let cache = match &opts.cache {
            Some(c) if !opts.single_snapshot => {
                match LayerCache::open(&c.repo, registry.clone(), c.ttl) {
                    Ok(lc) => Some(Arc::new(lc)),
                    Err(e) => {
                        tracing::warn!("layer cache disabled: {e}");
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
        Ok(Builder {
            opts,
            registry,
            isolation: selection.isolation,
            isolation_reason: selection.reason,
            _tmpfs: selection.tmpfs,
            work,
            store,
            platform,
            cache,
            cache_writes: Mutex::new(Vec::new()),
            counters: Counters::default(),
            last_record: tokio::sync::OnceCell::new(),
            this_record: Mutex::new(Vec::new()),
        })
    }

    pub fn isolation_name(&self) -> &'static str {
        self.isolation.name()
    }

    /// Why the rung was chosen: what made the stronger ones unavailable.
    pub fn isolation_reason(&self) -> &str {
        &self.isolation_reason
    }

    pub async fn build(&self) -> Result<BuildResult, BuildError> {
        let started = Instant::now();
        let mut ctx = BuildContext::prepare(
            &self.opts.context,
            self.opts.context_sub_path.as_deref(),
            self.work.path(),
        )
        .await?;
        let df_path = self.dockerfile_path(Some(&ctx.dir));
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
        let global = self.global_args(&df, &lexer, &file)?;
        let needed = if self.opts.build_unused_stages {
            (0..=target).collect()
        } else {
            needed_stages(&df, target, &global, &lexer)
        };
        let mut outs: BTreeMap<usize, StageOut> = BTreeMap::new();
        let mut steps = Vec::new();
        for idx in needed {
            let stage = &df.stages[idx];
            let out = self
                .build_stage(&df, stage, &global, &lexer, &ctx, &file, &outs, &mut steps)
                .await?;
            outs.insert(idx, out);
        }
        let mut image = outs
            .remove(&target)
            .map(|o| o.image)
            .ok_or_else(|| BuildError::NoTarget(target.to_string()))?;
        // --label applies to the final image only.
        for (k, v) in &self.opts.labels {
            image
                .config
                .config
                .labels
                .get_or_insert_with(BTreeMap::new)
                .insert(k.clone(), v.clone());
        }
        let written = output::write_image(&self.store, &image, self.opts.docker_format)?;
        let pushed =
            output::deliver(&self.opts, &self.registry, &self.store, &image, &written).await?;
        self.finish_cache_writes().await;
        self.save_record().await;
        let c = &self.counters;
        if let Some(cache) = &self.cache {
            cache
                .report(
                    c.hits.load(Ordering::Relaxed),
                    c.misses.load(Ordering::Relaxed),
                    c.saved_ms.load(Ordering::Relaxed) as f64 / 1000.0,
                )
                .await;
        }
        let result = BuildResult {
            manifest_digest: written.manifest_digest.clone(),
            config_digest: written.config_digest.clone(),
            media_type: written.media_type.clone(),
            pushed,
            steps,
            seconds: started.elapsed().as_secs_f64(),
            cache_hits: c.hits.load(Ordering::Relaxed),
            cache_misses: c.misses.load(Ordering::Relaxed),
            cache_errors: c.errors.load(Ordering::Relaxed),
            bytes_pulled: c.pulled.load(Ordering::Relaxed),
            bytes_pushed_cache: c.pushed_cache.load(Ordering::Relaxed),
        };
        if let Some(p) = &self.opts.report_path {
            let json = serde_json::to_vec_pretty(&result).unwrap_or_default();
            std::fs::write(p, json).map_err(|source| BuildError::Work {
                path: p.clone(),
                source,
            })?;
        }
        Ok(result)
    }

    /// Whose build this is, for miss explanations: the first destination, else the Dockerfile.
    fn record_name(&self) -> String {
        self.opts
            .destinations
            .first()
            .cloned()
            .unwrap_or_else(|| format!("dockerfile:{}", self.dockerfile_path(None).display()))
    }

    async fn previous_record(&self) -> Option<&crate::cache::BuildRecord> {
        let cache = self.cache.clone()?;
        let name = self.record_name();
        let dir = self.work_path().to_path_buf();
        self.last_record
            .get_or_init(|| async move { cache.load_record(&name, &dir).await })
            .await
            .as_ref()
    }

    async fn save_record(&self) {
        let (Some(cache), Some(c)) = (&self.cache, &self.opts.cache) else {
            return;
        };
        if !c.push {
            return;
        }
        let steps = self
            .this_record
            .lock()
            .map(|v| v.clone())
            .unwrap_or_default();
        let record = crate::cache::BuildRecord {
            format: cache_key::CACHE_FORMAT.into(),
            steps,
        };
        if let Err(e) = cache.store_record(&self.record_name(), &record).await {
            tracing::warn!("could not record this build for miss explanations: {e}");
        }
    }

    /// Waits for background cache writes; a failed write is a warning.
    async fn finish_cache_writes(&self) {
        let handles: Vec<_> = match self.cache_writes.lock() {
            Ok(mut v) => v.drain(..).collect(),
            Err(_) => Vec::new(),
        };
        for h in handles {
            match h.await {
                Ok(Ok(n)) => {
                    self.counters.pushed_cache.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    self.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cache write failed (the build goes on): {e}");
                }
                Err(e) => tracing::warn!("cache write task: {e}"),
            }
        }
    }

    /// `--dockerfile` as given when it exists, else inside the (prepared) context.
    fn dockerfile_path(&self, ctx_dir: Option<&Path>) -> PathBuf {
        let p = &self.opts.dockerfile;
        if p.is_absolute() || p.exists() {
            return p.clone();
        }
        let in_ctx = match ctx_dir {
            Some(d) => d.join(p),
            None => Path::new(&self.opts.context).join(p),
        };
        if in_ctx.exists() {
            in_ctx
        } else {
            p.clone()
        }
    }

    fn build_arg(&self, name: &str) -> Option<String> {
        self.opts
            .build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(k, v)| match v {
                Some(v) => v.clone(),
                None => std::env::var(k).unwrap_or_default(),
            })
    }

    /// Global ARGs plus BuildKit's automatic platform args.
    fn global_args(
        &self,
        df: &Dockerfile,
        lexer: &Lexer,
        file: &str,
    ) -> Result<Vec<(String, String)>, BuildError> {
        let host = Platform::host();
        let mut vars: Vec<(String, String)> = vec![
            ("TARGETPLATFORM".into(), self.platform.to_string()),
            ("TARGETOS".into(), self.platform.os.clone()),
            ("TARGETARCH".into(), self.platform.architecture.clone()),
            (
                "TARGETVARIANT".into(),
                self.platform.variant.clone().unwrap_or_default(),
            ),
            ("BUILDPLATFORM".into(), host.to_string()),
            ("BUILDOS".into(), host.os.clone()),
            ("BUILDARCH".into(), host.architecture.clone()),
            (
                "BUILDVARIANT".into(),
                host.variant.clone().unwrap_or_default(),
            ),
        ];
        for ins in &df.global_args {
            if let Kind::Arg(list) = &ins.kind {
                for (name, default) in list {
                    let v = match self.build_arg(name) {
                        Some(v) => v,
                        None => match default {
                            Some(d) => lexer
                                .process_word(d, &vars)
                                .map_err(|e| step_err(file, ins, e))?,
                            None => String::new(),
                        },
                    };
                    vars.push((name.clone(), v));
                }
            }
        }
        Ok(vars)
    }

    #[allow(clippy::too_many_arguments)]
    async fn build_stage(
        &self,
        df: &Dockerfile,
        stage: &Stage,
        global: &[(String, String)],
        lexer: &Lexer,
        ctx: &BuildContext,
        file: &str,
        done: &BTreeMap<usize, StageOut>,
        steps: &mut Vec<StepReport>,
    ) -> Result<StageOut, BuildError> {
        let stage_name = stage
            .name
            .clone()
            .unwrap_or_else(|| stage.index.to_string());
        let from_ins = Instruction {
            line: stage.line,
            original: format!("FROM {}", stage.base),
            kind: Kind::Maintainer(String::new()),
        };
        let base_name = lexer
            .process_word(&stage.base, &global.to_vec())
            .map_err(|e| step_err(file, &from_ins, e))?;
        let platform = match &stage.platform {
            Some(p) => {
                let p = lexer
                    .process_word(p, &global.to_vec())
                    .map_err(|e| step_err(file, &from_ins, e))?;
                Platform::parse(&p).map_err(|e| step_err(file, &from_ins, e))?
            }
            None => self.platform.clone(),
        };
        tracing::info!("stage {stage_name}: FROM {base_name}");
        let (mut image, base_id) = if base_name.eq_ignore_ascii_case("scratch") {
            (
                BuiltImage {
                    config: ImageConfig::scratch(&platform),
                    layers: Vec::new(),
                },
                "scratch".to_string(),
            )
        } else if let Some(prev) = df
            .stage_index(&base_name)
            .filter(|i| *i < stage.index)
            .and_then(|i| done.get(&i))
        {
            (prev.image.clone(), prev.final_key.to_string())
        } else {
            let (img, d) = self.pull_base(&base_name, &platform, &stage_name).await?;
            (img, d.to_string())
        };
        let chain = cache_key::stage_start(
            &base_id,
            &platform.to_string(),
            &format!(
                "{}:{:?}:{}",
                self.opts.layer.compression.name(),
                self.opts.layer.level,
                self.opts.layer.reproducible
            ),
        );
        // History of the base stays; the config's creation time is ours, and
        // so is its platform (the one we built for).
        image.config.created = None;
        image.config.os = platform.os.clone();
        image.config.architecture = platform.architecture.clone();
        image.config.variant = platform.variant.clone();

        let mut st = StageState {
            b: self,
            df,
            file,
            lexer: *lexer,
            ctx,
            done,
            root: None,
            args: Vec::new(),
            global,
            image,
            scratch_n: 0,
            stage_name: stage_name.clone(),
            base_name: base_name.clone(),
            set_cmd_here: false,
            single: None,
            chain,
            dry: false,
            planned: Vec::new(),
            fs_idx: 0,
            hits: HashMap::new(),
            missed: false,
            current: None,
            last_cache: None,
            last_hit_layer: None,
        };
        let onbuild = st.image.config.config.on_build.take().unwrap_or_default();
        let mut triggers = Vec::new();
        for t in &onbuild {
            let parsed = kiln_common::dockerfile::parse(
                &format!("FROM scratch\n{t}\n"),
                &format!("ONBUILD of {base_name}"),
            )
            .map_err(|e| BuildError::Step {
                file: file.into(),
                line: stage.line,
                instruction: "ONBUILD".into(),
                message: e.to_string(),
            })?;
            for mut ins in parsed.stages.into_iter().flat_map(|s| s.instructions) {
                ins.line = stage.line;
                triggers.push(ins);
            }
        }
        let needs_root = triggers.iter().chain(stage.instructions.iter()).any(|i| {
            matches!(
                i.kind,
                Kind::Run { .. }
                    | Kind::Copy(_)
                    | Kind::Add(_)
                    | Kind::Workdir(_)
                    | Kind::Volume(_)
            )
        });
        if self.cache.is_some() {
            st.plan(&triggers, &stage.instructions).await?;
        }
        if needs_root && self.cache.is_none() {
            // Unpacking the base is its own step in the report, so step times
            // measure the step alone.
            let t0 = Instant::now();
            st.ensure_root().await?;
            steps.push(StepReport {
                stage: stage_name.clone(),
                line: stage.line,
                instruction: format!("FROM {base_name} (unpack {} layers)", st.image.layers.len()),
                seconds: t0.elapsed().as_secs_f64(),
                layer_digest: None,
                layer_size: 0,
                cache: None,
                key: None,
                bytes_pulled: 0,
                bytes_pushed: 0,
            });
        }
        if self.opts.single_snapshot {
            let root = st.ensure_root().await?;
            st.single = Some(ScanIndex::capture(&root).map_err(|e| BuildError::Step {
                file: file.into(),
                line: stage.line,
                instruction: "FROM".into(),
                message: e.to_string(),
            })?);
        }
        for ins in triggers.iter().chain(stage.instructions.iter()) {
            let t0 = Instant::now();
            st.last_cache = None;
            let pulled_before = self.counters.pulled.load(Ordering::Relaxed);
            let layer = st.apply(ins).await?;
            let bytes_pulled = self.counters.pulled.load(Ordering::Relaxed) - pulled_before;
            let (cache_state, key) = match st.last_cache.take() {
                Some((c, k)) => (Some(c.to_string()), Some(k)),
                None => (None, None),
            };
            let hit_layer = st.last_hit_layer.take();
            let (layer_digest, layer_size) = match (&layer, hit_layer) {
                (Some(l), _) => (Some(l.descriptor.digest.clone()), l.descriptor.size),
                (None, Some((d, n))) => (Some(d), n),
                (None, None) => (None, 0),
            };
            let secs = t0.elapsed().as_secs_f64();
            tracing::info!(
                "[{stage_name}] {} ({secs:.2}s{}{})",
                ins.original.lines().next().unwrap_or(""),
                layer_digest
                    .as_ref()
                    .map(|_| format!(", layer {layer_size} bytes"))
                    .unwrap_or_default(),
                cache_state
                    .as_ref()
                    .map(|c| format!(", cache {c}"))
                    .unwrap_or_default()
            );
            steps.push(StepReport {
                stage: stage_name.clone(),
                line: ins.line,
                instruction: ins.original.lines().next().unwrap_or("").to_string(),
                seconds: secs,
                layer_digest,
                layer_size,
                bytes_pushed: if cache_state.as_deref() == Some("miss")
                    && self.opts.cache.as_ref().is_some_and(|c| c.push)
                {
                    layer_size
                } else {
                    0
                },
                cache: cache_state,
                key,
                bytes_pulled,
            });
        }
        if let Some(index) = st.single.take() {
            if let Some(root) = st.root.clone() {
                let diff = index.diff(&root).map_err(|e| BuildError::Step {
                    file: file.into(),
                    line: stage.line,
                    instruction: "FROM".into(),
                    message: e.to_string(),
                })?;
                st.commit_layer(&root, diff.with_parents(), "single snapshot of the stage")?;
            }
        }
        st.image.config.created = Some(self.timestamp());
        Ok(StageOut {
            image: st.image,
            root: st.root,
            base_name,
            final_key: st.chain,
        })
    }

    async fn pull_base(
        &self,
        name: &str,
        platform: &Platform,
        stage: &str,
    ) -> Result<(BuiltImage, Digest), BuildError> {
        if let Some(dir) = &self.opts.cache_dir {
            if let Some(found) = self.warmed_base(dir, name, platform).await {
                return Ok(found);
            }
        }
        let resolved = self
            .registry
            .resolve(name, platform)
            .await
            .map_err(|source| BuildError::BaseImage {
                image: name.to_string(),
                stage: stage.to_string(),
                source: Box::new(source),
            })?;
        tracing::info!("resolved {name} to {}", resolved.manifest_digest);
        let diff_ids = resolved.config.rootfs.diff_ids.clone();
        let layers = resolved
            .manifest
            .layers
            .iter()
            .zip(
                diff_ids
                    .iter()
                    .chain(std::iter::repeat(&Digest::sha256_of(b""))),
            )
            .map(|(d, id)| ImageLayer {
                descriptor: d.clone(),
                diff_id: id.clone(),
                source: LayerSource::Remote(resolved.reference.clone()),
            })
            .collect();
        Ok((
            BuiltImage {
                config: resolved.config,
                layers,
            },
            resolved.manifest_digest,
        ))
    }

    /// A base image from the warmed directory: a digest-pinned reference makes
    /// no registry call; a tag costs one HEAD (and if the registry cannot
    /// answer, the warmed copy is used with a warning). `None` means pull.
    async fn warmed_base(
        &self,
        dir: &Path,
        name: &str,
        platform: &Platform,
    ) -> Option<(BuiltImage, Digest)> {
        let cd = match kiln_common::layout::CacheDir::open(dir) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("--cache-dir unusable, pulling instead: {e}");
                return None;
            }
        };
        let entry = cd.find(name, platform).ok().flatten()?;
        let r = kiln_common::registry::parse_reference(name).ok()?;
        if r.digest().is_none() {
            match self.registry.head_manifest(&r).await {
                Ok(Some(d)) if Some(&d) == entry.top.as_ref() => {}
                Ok(_) => {
                    tracing::info!("{name} changed since it was warmed: pulling it");
                    return None;
                }
                Err(e) => tracing::warn!(
                    "cannot check {name} against its registry ({e}); using the warmed copy"
                ),
            }
        }
        let load = || -> Result<BuiltImage, String> {
            let mb = cd
                .read_blob(&entry.manifest.digest)
                .map_err(|e| e.to_string())?;
            let m: kiln_common::image::Manifest =
                serde_json::from_slice(&mb).map_err(|e| e.to_string())?;
            let cb = cd.read_blob(&m.config.digest).map_err(|e| e.to_string())?;
            let config: ImageConfig = serde_json::from_slice(&cb).map_err(|e| e.to_string())?;
            let layers = m
                .layers
                .iter()
                .zip(config.rootfs.diff_ids.iter())
                .map(|(d, id)| ImageLayer {
                    descriptor: d.clone(),
                    diff_id: id.clone(),
                    source: LayerSource::Path(cd.blobs()),
                })
                .collect();
            Ok(BuiltImage { config, layers })
        };
        match load() {
            Ok(img) => {
                tracing::info!("{name}: using the warmed copy {}", entry.manifest.digest);
                if let Err(e) = cd.lock().and_then(|l| l.touch(name, platform)) {
                    tracing::debug!("recording use of {name}: {e}");
                }
                Some((img, entry.manifest.digest))
            }
            Err(e) => {
                tracing::warn!("warmed copy of {name} is unusable ({e}); pulling it");
                None
            }
        }
    }

    /// Creation times in config and history: the epoch with `--reproducible`.
    fn timestamp(&self) -> String {
        if self.opts.layer.reproducible {
            "1970-01-01T00:00:00Z".to_string()
        } else {
            chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        }
    }

    /// Unpacks `layers` into a fresh root under the work directory: blobs
    /// fetched concurrently (with progress on a terminal), applied in order.
    async fn unpack_layers(
        &self,
        layers: &[ImageLayer],
        image: &str,
        prefix: &str,
    ) -> Result<PathBuf, BuildError> {
        let work_err = |source| BuildError::Work {
            path: self.work_path().to_path_buf(),
            source,
        };
        let root = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(self.isolation.roots_dir().unwrap_or(self.work_path()))
            .map_err(work_err)?
            .keep();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(work_err)?;
        let total: u64 = layers
            .iter()
            .filter(|l| !self.store.has(&l.descriptor.digest))
            .map(|l| l.descriptor.size)
            .sum();
        let progress = crate::progress::Progress::start(&format!("pulling {image}"), total);
        let fetches = layers
            .iter()
            .map(|l| self.ensure_local_progress(l, progress.counter()));
        let paths = futures_util::future::try_join_all(fetches).await;
        progress.finish();
        for (l, p) in layers.iter().zip(paths?) {
            self.apply_layer_file(&root, l, &p, image).await?;
        }
        Ok(root)
    }

    /// Applies one layer blob to a root. I/O failures are retried
    /// `--image-fs-extract-retry` times; a hostile entry never is.
    async fn apply_layer_file(
        &self,
        root: &Path,
        l: &ImageLayer,
        p: &Path,
        image: &str,
    ) -> Result<(), BuildError> {
        let mut attempt = 0;
        loop {
            let f = std::fs::File::open(p).map_err(|source| BuildError::Work {
                path: p.to_path_buf(),
                source,
            })?;
            let root2 = root.to_path_buf();
            let res = tokio::task::spawn_blocking(move || extract::apply_layer(&root2, f))
                .await
                .map_err(|e| BuildError::Work {
                    path: p.to_path_buf(),
                    source: std::io::Error::other(e),
                })?;
            match res {
                Ok(_) => return Ok(()),
                Err(e)
                    if attempt < self.opts.image_fs_extract_retry
                        && !matches!(
                            e,
                            extract::ExtractError::Path { .. }
                                | extract::ExtractError::BadLink { .. }
                        ) =>
                {
                    attempt += 1;
                    tracing::warn!("extracting {}: {e}; retrying", l.descriptor.digest);
                }
                Err(e) => {
                    return Err(BuildError::Extract {
                        image: image.to_string(),
                        digest: l.descriptor.digest.clone(),
                        source: Box::new(e),
                    })
                }
            }
        }
    }

    /// Makes sure a layer's blob is in the local store.
    pub async fn ensure_local(&self, l: &ImageLayer) -> Result<PathBuf, BuildError> {
        self.ensure_local_progress(l, None).await
    }

    async fn ensure_local_progress(
        &self,
        l: &ImageLayer,
        progress: Option<&AtomicU64>,
    ) -> Result<PathBuf, BuildError> {
        let p = self.store.path(&l.descriptor.digest);
        if p.is_file() {
            return Ok(p);
        }
        match &l.source {
            LayerSource::Local => Err(BuildError::Work {
                path: p,
                source: std::io::Error::other("layer missing from the local store"),
            }),
            LayerSource::Path(dir) => {
                import_blob(
                    &dir.join(l.descriptor.digest.hex()),
                    &p,
                    &l.descriptor.digest,
                )
                .map_err(|source| BuildError::Work {
                    path: dir.clone(),
                    source,
                })?;
                Ok(p)
            }
            LayerSource::Remote(r) => {
                self.counters
                    .pulled
                    .fetch_add(l.descriptor.size, Ordering::Relaxed);
                self.registry
                    .fetch_blob_progress(r, &l.descriptor, &p, progress)
                    .await
                    .map_err(|source| BuildError::BaseImage {
                        image: r.whole(),
                        stage: String::new(),
                        source: Box::new(source),
                    })?;
                Ok(p)
            }
        }
    }

    fn work_path(&self) -> &Path {
        self.work.path()
    }
}

/// What RUN must never see or change when it runs in the container's own
/// root: Kiln's work directory, credentials, the warmed-image directory and
/// `--ignore-path`.
fn protected_paths(opts: &BuildOptions) -> Vec<PathBuf> {
    let mut v = vec![opts.work_dir.clone()];
    if let Some(d) = std::env::var_os("DOCKER_CONFIG") {
        v.push(PathBuf::from(d));
    }
    if let Some(h) = std::env::var_os("HOME") {
        v.push(PathBuf::from(h).join(".docker"));
    }
    v.extend(opts.cache_dir.iter().cloned());
    v.extend(opts.ignore_paths.iter().cloned());
    v.into_iter()
        .map(|p| std::path::absolute(&p).unwrap_or(p))
        .collect()
}

/// Brings a blob from a shared directory into the build's store — hard link
/// when possible, else copy — and verifies it: shared directories are
/// untrusted until the digest matches.
fn import_blob(src: &Path, dest: &Path, want: &Digest) -> std::io::Result<()> {
    let tmp = dest.with_extension("partial");
    if std::fs::hard_link(src, &tmp).is_err() {
        std::fs::copy(src, &tmp)?;
    }
    let (got, _) = kiln_common::digest::digest_file(&tmp)?;
    if &got != want {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::other(format!(
            "{} hashes to {got}, expected {want}",
            src.display()
        )));
    }
    std::fs::rename(&tmp, dest)
}

fn step_err(file: &str, ins: &Instruction, e: impl std::fmt::Display) -> BuildError {
    BuildError::Step {
        file: file.to_string(),
        line: ins.line,
        instruction: ins
            .original
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_string(),
        message: e.to_string(),
    }
}

/// The stages the target needs: its FROM chain and COPY --from sources.
fn needed_stages(
    df: &Dockerfile,
    target: usize,
    global: &[(String, String)],
    lexer: &Lexer,
) -> Vec<usize> {
    let mut need = BTreeSet::new();
    let mut todo = vec![target];
    let g = global.to_vec();
    while let Some(i) = todo.pop() {
        if !need.insert(i) {
            continue;
        }
        let s = &df.stages[i];
        let base = lexer.process_word(&s.base, &g).unwrap_or_default();
        if let Some(j) = df.stage_index(&base).filter(|j| *j < i) {
            todo.push(j);
        }
        for ins in &s.instructions {
            if let Kind::Copy(c) = &ins.kind {
                if let Some(from) = c.flags.get("from") {
                    let from = lexer
                        .process_word(from, &g)
                        .unwrap_or_else(|_| from.to_string());
                    if let Some(j) = df.stage_index(&from).filter(|j| *j < i) {
                        todo.push(j);
                    }
                }
            }
        }
    }
    need.into_iter().collect()
}

struct StageState<'a> {
    b: &'a Builder,
    df: &'a Dockerfile,
    file: &'a str,
    lexer: Lexer,
    ctx: &'a BuildContext,
    done: &'a BTreeMap<usize, StageOut>,
    root: Option<PathBuf>,
    /// ARGs declared in this stage, with their values.
    args: Vec<(String, String)>,
    global: &'a [(String, String)],
    image: BuiltImage,
    scratch_n: usize,
    stage_name: String,
    base_name: String,
    set_cmd_here: bool,
    single: Option<ScanIndex>,
    /// The cache key chain so far (last key of a filesystem step).
    chain: Digest,
    /// Planning pass: compute keys, execute nothing.
    dry: bool,
    planned: Vec<Planned>,
    fs_idx: usize,
    hits: HashMap<usize, CacheHit>,
    /// The chain has missed: every later step executes, no more lookups.
    missed: bool,
    current: Option<Planned>,
    last_cache: Option<(&'static str, Digest)>,
    /// The layer a hit contributed (digest, size), for the step report.
    last_hit_layer: Option<(Digest, u64)>,
}

#[derive(Clone)]
struct Planned {
    key: Digest,
    inputs: Vec<(String, String)>,
    cacheable: bool,
    /// When the step began executing (a miss), to record what a hit saves.
    started: Option<Instant>,
}

impl StageState<'_> {
    /// Variables for substitution: stage ARGs, overridden by ENV.
    fn vars(&self) -> Vec<(String, String)> {
        let mut v = self.args.clone();
        v.extend(self.image.config.config.env_pairs());
        v
    }

    fn err(&self, ins: &Instruction, e: impl std::fmt::Display) -> BuildError {
        step_err(self.file, ins, e)
    }

    /// The build-context paths a COPY/ADD source matches, `.dockerignore`
    /// applied: what the cache key hashes is what the copy writes.
    fn context_sources(
        &self,
        ins: &Instruction,
        src: &str,
    ) -> Result<Vec<copy::SourceMatch>, BuildError> {
        copy::match_sources(
            &self.ctx.dir,
            src,
            Some(&self.ctx.ignore),
            "the build context",
        )
        .map_err(|e| self.err(ins, e))
    }

    fn word(&self, ins: &Instruction, w: &str) -> Result<String, BuildError> {
        self.lexer
            .process_word(w, &self.vars())
            .map_err(|e| self.err(ins, e))
    }

    /// Unpacks the stage's layers into a fresh root on first use.
    async fn ensure_root(&mut self) -> Result<PathBuf, BuildError> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        let root = self
            .b
            .unpack_layers(&self.image.layers, &self.base_name, "rootfs-")
            .await?;
        self.root = Some(root.clone());
        Ok(root)
    }

    fn scratch(&mut self) -> Result<PathBuf, BuildError> {
        self.scratch_n += 1;
        let p = self
            .b
            .work_path()
            .join(format!("scratch-{}-{}", self.stage_name, self.scratch_n));
        std::fs::create_dir_all(&p).map_err(|source| BuildError::Work {
            path: p.clone(),
            source,
        })?;
        Ok(p)
    }

    fn history(&mut self, created_by: String, empty: bool) {
        let created = self.b.timestamp();
        self.image.config.history.push(History {
            created: Some(created),
            created_by: Some(created_by),
            comment: Some("kiln".into()),
            empty_layer: empty,
            ..Default::default()
        });
    }

    fn commit_layer(
        &mut self,
        root: &Path,
        diff: Diff,
        created_by: &str,
    ) -> Result<Option<Layer>, BuildError> {
        if diff.is_empty() {
            self.history(created_by.to_string(), true);
            return Ok(None);
        }
        let l =
            layer::write_layer(root, &diff, &self.b.store, &self.b.opts.layer).map_err(|e| {
                BuildError::Step {
                    file: self.file.into(),
                    line: 0,
                    instruction: created_by.into(),
                    message: e.to_string(),
                }
            })?;
        self.image.config.rootfs.diff_ids.push(l.diff_id.clone());
        self.image.layers.push(ImageLayer {
            descriptor: l.descriptor.clone(),
            diff_id: l.diff_id.clone(),
            source: LayerSource::Local,
        });
        self.history(created_by.to_string(), false);
        Ok(Some(l))
    }

    /// Applies one instruction; returns the layer it produced, if any.
    async fn apply(&mut self, ins: &Instruction) -> Result<Option<Layer>, BuildError> {
        let cfg_history = ins.original.lines().next().unwrap_or("").to_string();
        match &ins.kind {
            Kind::Arg(list) => {
                for (name, default) in list {
                    let v = match self.b.build_arg(name) {
                        Some(v) => v,
                        None => match default {
                            Some(d) => self.word(ins, d)?,
                            None => self
                                .global
                                .iter()
                                .rev()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default(),
                        },
                    };
                    self.args.retain(|(k, _)| k != name);
                    self.args.push((name.clone(), v));
                }
                Ok(None)
            }
            Kind::Env(pairs) => {
                for (k, v) in pairs {
                    let k = self.word(ins, k)?;
                    let v = self.word(ins, v)?;
                    self.image.config.config.set_env(&k, &v);
                }
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Label(pairs) => {
                for (k, v) in pairs {
                    let k = self.word(ins, k)?;
                    let v = self.word(ins, v)?;
                    self.image
                        .config
                        .config
                        .labels
                        .get_or_insert_with(BTreeMap::new)
                        .insert(k, v);
                }
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Maintainer(m) => {
                self.image.config.author = Some(m.clone());
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::User(u) => {
                let u = self.word(ins, u)?;
                self.image.config.config.user = Some(u);
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Expose(ports) => {
                let vars = self.vars();
                for p in ports {
                    let p = self
                        .lexer
                        .process_word(p, &vars)
                        .map_err(|e| self.err(ins, e))?;
                    let p = if p.contains('/') {
                        p.to_ascii_lowercase()
                    } else {
                        format!("{p}/tcp")
                    };
                    self.image
                        .config
                        .config
                        .exposed_ports
                        .get_or_insert_with(BTreeMap::new)
                        .insert(p, serde_json::json!({}));
                }
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Volume(vols) => {
                let vars = self.vars();
                let mut paths = Vec::new();
                for v in vols {
                    let v = self
                        .lexer
                        .process_word(v, &vars)
                        .map_err(|e| self.err(ins, e))?;
                    if v.is_empty() {
                        return Err(self.err(ins, "VOLUME specified can not be an empty string"));
                    }
                    self.image
                        .config
                        .config
                        .volumes
                        .get_or_insert_with(BTreeMap::new)
                        .insert(v.clone(), serde_json::json!({}));
                    paths.push(v);
                }
                if self.gate(ins, true).await? {
                    return Ok(None);
                }
                // Like kaniko and buildah, the mount point exists in the image.
                self.make_dirs(ins, &paths, cfg_history).await
            }
            Kind::StopSignal(s) => {
                let s = self.word(ins, s)?;
                self.image.config.config.stop_signal = Some(s);
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Shell(v) => {
                self.image.config.config.shell = Some(v.clone());
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Onbuild(t) => {
                self.image
                    .config
                    .config
                    .on_build
                    .get_or_insert_with(Vec::new)
                    .push(t.clone());
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Cmd(c) => {
                self.image.config.config.cmd = Some(self.cmd_vec(c));
                self.set_cmd_here = true;
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Entrypoint(c) => {
                let v = self.cmd_vec(c);
                self.image.config.config.entrypoint = if v.is_empty() { None } else { Some(v) };
                if !self.set_cmd_here {
                    // Docker: ENTRYPOINT resets a CMD inherited from the base.
                    self.image.config.config.cmd = None;
                }
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Healthcheck(h) => {
                let hc = match &h.cmd {
                    None => Healthcheck {
                        test: vec!["NONE".into()],
                        ..Default::default()
                    },
                    Some(c) => {
                        let test = match c {
                            Cmd::Exec(v) => std::iter::once("CMD".to_string())
                                .chain(v.iter().cloned())
                                .collect(),
                            Cmd::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
                        };
                        let dur = |n: &str| -> Result<Option<i64>, BuildError> {
                            h.flags
                                .get(n)
                                .map(|v| {
                                    kiln_common::duration::parse(v)
                                        .map(|d| d.as_nanos() as i64)
                                        .map_err(|e| self.err(ins, format!("--{n}: {e}")))
                                })
                                .transpose()
                        };
                        Healthcheck {
                            test,
                            interval: dur("interval")?,
                            timeout: dur("timeout")?,
                            start_period: dur("start-period")?,
                            start_interval: dur("start-interval")?,
                            retries: h
                                .flags
                                .get("retries")
                                .map(|r| {
                                    r.parse::<i64>()
                                        .map_err(|e| self.err(ins, format!("--retries: {e}")))
                                })
                                .transpose()?,
                        }
                    }
                };
                self.image.config.config.healthcheck = Some(hc);
                self.history(cfg_history, true);
                Ok(None)
            }
            Kind::Workdir(w) => {
                let w = self.word(ins, w)?;
                let cur = self
                    .image
                    .config
                    .config
                    .working_dir
                    .clone()
                    .unwrap_or_else(|| "/".into());
                let new = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{}", cur.trim_end_matches('/'), w)
                };
                let new = normalize_abs(&new);
                self.image.config.config.working_dir = Some(new.clone());
                if self.gate(ins, true).await? {
                    return Ok(None);
                }
                self.make_dirs(ins, &[new], cfg_history).await
            }
            Kind::Run { cmd, heredocs, .. } => self.run(ins, cmd, heredocs).await,
            Kind::Copy(spec) => self.copy(ins, spec, false).await,
            Kind::Add(spec) => self.copy(ins, spec, true).await,
        }
    }

    /// WORKDIR and VOLUME: create missing directories (root-owned, 0755).
    async fn make_dirs(
        &mut self,
        ins: &Instruction,
        paths: &[String],
        created_by: String,
    ) -> Result<Option<Layer>, BuildError> {
        let root = self.ensure_root().await?;
        let mut diff = Diff::default();
        let opts = CopyOptions {
            owner: Owner::Fixed(0, 0),
            chmod: None,
        };
        for p in paths {
            let dir = rootfs::resolve(&root, p, true).map_err(|e| self.err(ins, e))?;
            copy::mkdir_all(&root, &dir, &opts, &mut diff).map_err(|e| self.err(ins, e))?;
        }
        self.finish_fs_step(&root, diff, created_by)
    }

    fn finish_fs_step(
        &mut self,
        root: &Path,
        diff: Diff,
        created_by: String,
    ) -> Result<Option<Layer>, BuildError> {
        if self.single.is_some() {
            self.history(created_by, true);
            return Ok(None);
        }
        let layer = self.commit_layer(root, diff.with_parents(), &created_by)?;
        self.store_entry(layer.as_ref());
        Ok(layer)
    }

    /// Writes the executed step's cache entry in the background.
    fn store_entry(&mut self, layer: Option<&Layer>) {
        let (Some(p), Some(cache)) = (self.current.take(), self.b.cache.clone()) else {
            return;
        };
        if !self.b.opts.cache.as_ref().is_some_and(|c| c.push) {
            return;
        }
        let blob = layer.map(|l| {
            (
                self.b.store.path(&l.descriptor.digest),
                l.descriptor.clone(),
                l.diff_id.clone(),
            )
        });
        let h = tokio::spawn(async move {
            let lr = blob.as_ref().map(|(p, d, id)| (p.as_path(), d, id));
            let seconds = p.started.map(|t| t.elapsed().as_secs_f64());
            cache.store(&p.key, lr, p.inputs, seconds).await?;
            Ok(blob.map(|(_, d, _)| d.size).unwrap_or(0))
        });
        if let Ok(mut v) = self.b.cache_writes.lock() {
            v.push(h);
        }
    }

    /// The planning pass: runs every instruction in dry mode (config and ARG
    /// state evolve exactly as in the real pass, nothing executes) to get each
    /// filesystem step's key, then looks all keys up concurrently.
    async fn plan(
        &mut self,
        triggers: &[Instruction],
        instructions: &[Instruction],
    ) -> Result<(), BuildError> {
        let Some(cache) = self.b.cache.clone() else {
            return Ok(());
        };
        let saved = (
            self.image.clone(),
            self.args.clone(),
            self.set_cmd_here,
            self.chain.clone(),
        );
        self.dry = true;
        for ins in triggers.iter().chain(instructions.iter()) {
            Box::pin(self.apply(ins)).await?;
        }
        self.dry = false;
        (self.image, self.args, self.set_cmd_here, self.chain) = saved;
        self.fs_idx = 0;
        let wanted: Vec<(usize, Digest)> = self
            .planned
            .iter()
            .enumerate()
            .filter(|(_, p)| p.cacheable)
            .map(|(i, p)| (i, p.key.clone()))
            .collect();
        let keys: Vec<Digest> = wanted.iter().map(|(_, k)| k.clone()).collect();
        let results = cache.lookup_many(&keys).await;
        for ((i, _), r) in wanted.into_iter().zip(results) {
            match r {
                Ok(Some(h)) => {
                    self.hits.insert(i, h);
                }
                Ok(None) => {}
                Err(e) => {
                    self.b.counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!("cache lookup failed, treating the step as a miss: {e}");
                }
            }
        }
        Ok(())
    }

    /// With the cache on: in the planning pass records the step's key; in the
    /// real pass uses a hit while the chain has not missed. Returns true when
    /// the step needs no execution.
    async fn gate(&mut self, ins: &Instruction, cacheable: bool) -> Result<bool, BuildError> {
        if self.b.cache.is_none() || self.single.is_some() {
            return Ok(false);
        }
        let idx = self.fs_idx;
        self.fs_idx += 1;
        if self.dry {
            let (key, inputs) = self.step_key(ins)?;
            self.chain = key.clone();
            self.planned.push(Planned {
                key,
                inputs,
                cacheable,
                started: None,
            });
            return Ok(true);
        }
        let Some(p) = self.planned.get(idx).cloned() else {
            return Ok(false);
        };
        self.chain = p.key.clone();
        if let Ok(mut rec) = self.b.this_record.lock() {
            rec.push(crate::cache::RecordedStep {
                stage: self.stage_name.clone(),
                index: idx,
                line: ins.line,
                key: p.key.clone(),
                inputs: p.inputs.clone(),
            });
        }
        if !cacheable {
            self.last_cache = Some(("uncached", p.key.clone()));
            return Ok(false);
        }
        if !self.missed {
            if let Some(hit) = self.hits.remove(&idx) {
                let saved_ms = (hit.seconds * 1000.0) as u64;
                self.use_hit(ins, hit).await?;
                self.b.counters.hits.fetch_add(1, Ordering::Relaxed);
                self.b
                    .counters
                    .saved_ms
                    .fetch_add(saved_ms, Ordering::Relaxed);
                self.last_cache = Some(("hit", p.key));
                return Ok(true);
            }
            self.missed = true;
            let why = match self.b.previous_record().await {
                None => format!(
                    "no earlier build of {} is recorded in the cache",
                    self.b.record_name()
                ),
                Some(r) => match r
                    .steps
                    .iter()
                    .find(|s| s.stage == self.stage_name && s.index == idx)
                {
                    None => "the last build had no such step".to_string(),
                    Some(prev) => format!(
                        "changed since the last build of {}: {}",
                        self.b.record_name(),
                        crate::cache::explain(&prev.inputs, &p.inputs)
                    ),
                },
            };
            tracing::info!(
                "[{}] first cache miss at line {}: {} — {why}",
                self.stage_name,
                ins.line,
                ins.original.lines().next().unwrap_or(""),
            );
        }
        self.b.counters.misses.fetch_add(1, Ordering::Relaxed);
        self.last_cache = Some(("miss", p.key.clone()));
        self.current = Some(Planned {
            started: Some(Instant::now()),
            ..p
        });
        Ok(false)
    }

    /// A hit costs no layer bytes unless the root is already live (an uncached
    /// step executed earlier), in which case the layer is applied to keep it exact.
    async fn use_hit(&mut self, ins: &Instruction, hit: CacheHit) -> Result<(), BuildError> {
        let created_by = ins.original.lines().next().unwrap_or("").to_string();
        match hit.layer {
            None => self.history(created_by, true),
            Some((descriptor, diff_id, source)) => {
                let l = ImageLayer {
                    descriptor,
                    diff_id: diff_id.clone(),
                    source,
                };
                if let Some(root) = self.root.clone() {
                    let p = self.b.ensure_local(&l).await?;
                    self.b
                        .apply_layer_file(&root, &l, &p, &format!("cache entry {}", hit.key))
                        .await?;
                }
                self.image.config.rootfs.diff_ids.push(diff_id);
                self.last_hit_layer = Some((l.descriptor.digest.clone(), l.descriptor.size));
                self.image.layers.push(l);
                self.history(created_by, false);
            }
        }
        Ok(())
    }

    /// A filesystem step's key: the previous key, the instruction, the config
    /// in effect (ENV, USER, WORKDIR, SHELL, …) and what the step reads.
    fn step_key(&self, ins: &Instruction) -> Result<(Digest, Vec<(String, String)>), BuildError> {
        let mut k = KeyBuilder::new(&self.chain);
        k.field("instruction", ins.kind.keyword());
        k.field(
            "config",
            &serde_json::to_string(&self.image.config.config).unwrap_or_default(),
        );
        match &ins.kind {
            Kind::Run { cmd, heredocs, .. } => {
                let (argv, _) = self.run_argv(ins, cmd, heredocs)?;
                k.list("argv", &argv);
                let args: Vec<String> = self.args.iter().map(|(a, b)| format!("{a}={b}")).collect();
                k.list("build-args", &args);
            }
            Kind::Copy(spec) | Kind::Add(spec) => self.copy_key(ins, spec, &mut k)?,
            _ => {}
        }
        Ok(k.finish())
    }

    fn copy_key(
        &self,
        ins: &Instruction,
        spec: &CopySpec,
        k: &mut KeyBuilder,
    ) -> Result<(), BuildError> {
        let vars = self.vars();
        let w = |s: &str| {
            self.lexer
                .process_word(s, &vars)
                .map_err(|e| self.err(ins, e))
        };
        k.field("dest", &w(&spec.dest)?);
        for f in ["chown", "chmod", "link"] {
            if spec.flags.has(f) {
                k.field(f, &w(spec.flags.get(f).unwrap_or("true"))?);
            }
        }
        let from = spec.flags.get("from").map(&w).transpose()?;
        for src in &spec.srcs {
            if let Some(h) = heredoc_for(src, &spec.heredocs) {
                let c = if h.expand {
                    w(&h.content).unwrap_or_else(|_| h.content.clone())
                } else {
                    h.content.clone()
                };
                k.field(&format!("heredoc {}", h.name), &c);
                continue;
            }
            let s = w(src)?;
            if s.starts_with("http://") || s.starts_with("https://") {
                k.field("url", &s);
                continue;
            }
            match &from {
                // An earlier stage's final key stands for its whole content.
                Some(f) => match self.df.stage_index(f).and_then(|i| self.done.get(&i)) {
                    Some(out) => {
                        k.field("from-stage", out.final_key.as_str());
                        k.field("src", &s);
                    }
                    None => {
                        k.field("from-image", f);
                        k.field("src", &s);
                    }
                },
                None => {
                    let m = self.context_sources(ins, &s)?;
                    for mm in m {
                        cache_key::hash_tree(
                            &self.ctx.dir,
                            &mm.rel,
                            Some(&self.ctx.ignore),
                            false,
                            k,
                        )
                        .map_err(|e| self.err(ins, e))?;
                    }
                }
            }
        }
        Ok(())
    }

    fn shell(&self) -> Vec<String> {
        self.image
            .config
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn cmd_vec(&self, c: &Cmd) -> Vec<String> {
        match c {
            Cmd::Exec(v) => v.clone(),
            Cmd::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }

    /// The argv a RUN executes, and its text for messages.
    fn run_argv(
        &self,
        ins: &Instruction,
        cmd: &Cmd,
        heredocs: &[kiln_common::dockerfile::Heredoc],
    ) -> Result<(Vec<String>, String), BuildError> {
        Ok(match cmd {
            Cmd::Exec(v) => {
                if v.is_empty() {
                    return Err(self.err(ins, "RUN with an empty command"));
                }
                (v.clone(), v.join(" "))
            }
            Cmd::Shell(s) => {
                let text = if heredocs.len() == 1
                    && s.trim()
                        .trim_start_matches("<<-")
                        .trim_start_matches("<<")
                        .trim_matches(['"', '\''])
                        == heredocs[0].name
                {
                    // `RUN <<EOF`: the body is the script.
                    heredocs[0].content.clone()
                } else if heredocs.is_empty() {
                    s.clone()
                } else {
                    // `RUN cmd <<EOF`: let the shell feed the body, as written.
                    let mut t = s.clone();
                    for h in heredocs {
                        t.push('\n');
                        t.push_str(&h.content);
                        t.push_str(&h.name);
                    }
                    t
                };
                let mut v = self.shell();
                v.push(text.clone());
                (v, text)
            }
        })
    }

    /// RUN's environment: build args are visible; ENV wins over an ARG of the same name.
    fn run_env(&self) -> Vec<(String, String)> {
        let mut env: Vec<(String, String)> = Vec::new();
        let cfg_env = self.image.config.config.env_pairs();
        for (k, v) in &self.args {
            if !cfg_env.iter().any(|(e, _)| e == k) {
                env.push((k.clone(), v.clone()));
            }
        }
        env.extend(cfg_env);
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        env
    }

    async fn run(
        &mut self,
        ins: &Instruction,
        cmd: &Cmd,
        heredocs: &[kiln_common::dockerfile::Heredoc],
    ) -> Result<Option<Layer>, BuildError> {
        let cacheable = self.b.opts.cache.as_ref().is_none_or(|c| c.run_layers);
        if self.gate(ins, cacheable).await? {
            return Ok(None);
        }
        let root = self.ensure_root().await?;
        let (args, shown) = self.run_argv(ins, cmd, heredocs)?;
        let env = self.run_env();
        let user = self
            .image
            .config
            .config
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".into());
        let (uid, gid) = rootfs::lookup_user(&root, &user).map_err(|e| self.err(ins, e))?;
        let cwd = self
            .image
            .config
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into());
        let spec = RunSpec {
            args,
            env,
            cwd,
            uid,
            gid,
            hostname: "kiln".into(),
        };
        let scratch = self.scratch()?;
        let iso_root = root.clone();
        let b = self.b;
        let outcome = tokio::task::block_in_place(|| b.isolation.run(&iso_root, &scratch, &spec))
            .map_err(|e| self.err(ins, e))?;
        let _ = std::fs::remove_dir_all(&scratch);
        if !outcome.status.success() {
            return Err(BuildError::RunFailed {
                file: self.file.into(),
                line: ins.line,
                command: shown,
                code: outcome.status.code().unwrap_or(-1),
                tail: outcome.tail.join("\n"),
            });
        }
        // The instruction as written: a cache hit records the same history.
        let created_by = ins.original.lines().next().unwrap_or("").to_string();
        self.finish_fs_step(&root, outcome.diff, created_by)
    }

    async fn copy(
        &mut self,
        ins: &Instruction,
        spec: &CopySpec,
        is_add: bool,
    ) -> Result<Option<Layer>, BuildError> {
        let cacheable = self.b.opts.cache.as_ref().is_none_or(|c| c.copy_layers);
        if self.gate(ins, cacheable).await? {
            return Ok(None);
        }
        let root = self.ensure_root().await?;
        let vars = self.vars();
        let w = |s: &str| {
            self.lexer
                .process_word(s, &vars)
                .map_err(|e| self.err(ins, e))
        };
        let dest_raw = w(&spec.dest)?;
        let workdir = self
            .image
            .config
            .config
            .working_dir
            .clone()
            .unwrap_or_else(|| "/".into());
        let dest = if dest_raw.starts_with('/') {
            dest_raw.clone()
        } else {
            let joined = format!("{}/{}", workdir.trim_end_matches('/'), dest_raw);
            if dest_raw.ends_with('/') || dest_raw == "." || dest_raw.ends_with("/.") {
                format!("{}/", normalize_abs(&joined))
            } else {
                normalize_abs(&joined)
            }
        };
        let dest = if dest_raw == "." || dest_raw.ends_with("/.") {
            format!("{}/", dest.trim_end_matches('/'))
        } else {
            dest
        };
        let owner = match spec.flags.get("chown") {
            Some(c) => {
                let c = w(c)?;
                let (u, g) = rootfs::lookup_user(&root, &c).map_err(|e| self.err(ins, e))?;
                Owner::Fixed(u, g)
            }
            None => Owner::Fixed(0, 0),
        };
        let chmod = match spec.flags.get("chmod") {
            Some(m) => Some(
                u32::from_str_radix(&w(m)?, 8)
                    .map_err(|_| self.err(ins, format!("invalid --chmod {m:?}: expected octal")))?,
            ),
            None => None,
        };
        let opts = CopyOptions { owner, chmod };
        let mut diff = Diff::default();
        // Sources: heredocs, URLs (ADD), a stage or image (--from), or the context.
        let from = spec.flags.get("from").map(&w).transpose()?;
        let mut from_root: Option<PathBuf> = None;
        let mut from_owner = opts;
        if let Some(f) = &from {
            let idx = self.df.stage_index(f);
            match idx.and_then(|i| self.done.get(&i)) {
                Some(out) => {
                    let r = match &out.root {
                        Some(r) => r.clone(),
                        None => self.unpack_image(&out.image, &out.base_name).await?,
                    };
                    from_root = Some(r);
                }
                None => {
                    let (img, _) = self
                        .b
                        .pull_base(f, &self.b.platform, &self.stage_name)
                        .await?;
                    from_root = Some(self.unpack_image(&img, f).await?);
                }
            }
            if spec.flags.get("chown").is_none() {
                // BuildKit keeps the owner of files copied from another stage.
                from_owner.owner = Owner::Preserve;
            }
        }
        for src in &spec.srcs {
            let src_w = if let Some(h) = heredoc_for(src, &spec.heredocs) {
                let content = if h.expand {
                    w(&h.content).unwrap_or_else(|_| h.content.clone())
                } else {
                    h.content.clone()
                };
                let target_s = if dest.ends_with('/') {
                    format!("{dest}{}", h.name)
                } else {
                    dest.clone()
                };
                let target =
                    rootfs::resolve(&root, &target_s, false).map_err(|e| self.err(ins, e))?;
                copy::write_file(&root, &target, content.as_bytes(), 0o644, &opts, &mut diff)
                    .map_err(|e| self.err(ins, e))?;
                continue;
            } else {
                w(src)?
            };
            if is_add && (src_w.starts_with("http://") || src_w.starts_with("https://")) {
                self.add_url(ins, &root, &src_w, &dest, &opts, &mut diff)
                    .await?;
                continue;
            }
            match &from_root {
                Some(fr) => {
                    let m = copy::match_sources(fr, &src_w, None, "the source stage")
                        .map_err(|e| self.err(ins, e))?;
                    copy::copy_sources(&root, fr, &m, &dest, None, &from_owner, &mut diff)
                        .map_err(|e| self.err(ins, e))?;
                }
                None => {
                    let m = self.context_sources(ins, &src_w)?;
                    if (spec.srcs.len() > 1 || m.len() > 1) && !dest.ends_with('/') {
                        return Err(self.err(ins, format!("when copying several sources, the destination {dest_raw:?} must end with /")));
                    }
                    for s in &m {
                        if is_add && s.path.is_file() && is_archive(&s.path) {
                            self.add_archive(ins, &root, &s.path, &dest, &opts, &mut diff)?;
                        } else {
                            copy::copy_sources(
                                &root,
                                &self.ctx.dir,
                                std::slice::from_ref(s),
                                &dest,
                                Some(&self.ctx.ignore),
                                &opts,
                                &mut diff,
                            )
                            .map_err(|e| self.err(ins, e))?;
                        }
                    }
                }
            }
        }
        let created_by = ins.original.lines().next().unwrap_or("").to_string();
        self.finish_fs_step(&root, diff, created_by)
    }

    async fn unpack_image(&self, img: &BuiltImage, name: &str) -> Result<PathBuf, BuildError> {
        self.b.unpack_layers(&img.layers, name, "from-").await
    }

    fn add_archive(
        &self,
        ins: &Instruction,
        root: &Path,
        archive: &Path,
        dest: &str,
        opts: &CopyOptions,
        diff: &mut Diff,
    ) -> Result<(), BuildError> {
        let tmp = tempfile::tempdir_in(self.b.work_path()).map_err(|source| BuildError::Work {
            path: self.b.work_path().to_path_buf(),
            source,
        })?;
        let f = std::fs::File::open(archive).map_err(|e| self.err(ins, e))?;
        extract::apply_archive(tmp.path(), f).map_err(|e| self.err(ins, e))?;
        let m = copy::match_sources(tmp.path(), "", None, "the archive")
            .map_err(|e| self.err(ins, e))?;
        let dest = if dest.ends_with('/') {
            dest.to_string()
        } else {
            format!("{dest}/")
        };
        let mut o = *opts;
        if matches!(opts.owner, Owner::Fixed(0, 0)) {
            o.owner = Owner::Preserve;
        }
        copy::copy_sources(root, tmp.path(), &m, &dest, None, &o, diff)
            .map_err(|e| self.err(ins, e))
    }

    async fn add_url(
        &self,
        ins: &Instruction,
        root: &Path,
        url: &str,
        dest: &str,
        opts: &CopyOptions,
        diff: &mut Diff,
    ) -> Result<(), BuildError> {
        kiln_common::registry::install_crypto_provider();
        let client = reqwest::Client::builder()
            .danger_accept_invalid_certs(self.b.opts.registry.skip_tls_verify)
            .build()
            .map_err(|e| self.err(ins, e))?;
        let resp = client
            .get(url)
            .send()
            .await
            .map_err(|e| self.err(ins, format!("{url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(self.err(ins, format!("{url}: HTTP {}", resp.status())));
        }
        let tmp =
            tempfile::NamedTempFile::new_in(self.b.work_path()).map_err(|e| self.err(ins, e))?;
        {
            use futures_util::StreamExt;
            use std::io::Write;
            let mut f = std::io::BufWriter::new(tmp.as_file());
            let mut s = resp.bytes_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(|e| self.err(ins, format!("{url}: {e}")))?;
                f.write_all(&chunk).map_err(|e| self.err(ins, e))?;
            }
            f.flush().map_err(|e| self.err(ins, e))?;
        }
        let name = url
            .split(['?', '#'])
            .next()
            .unwrap_or(url)
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("index.html");
        let target_s = if dest.ends_with('/') {
            format!("{dest}{name}")
        } else {
            dest.to_string()
        };
        let target = rootfs::resolve(root, &target_s, false).map_err(|e| self.err(ins, e))?;
        if let Some(p) = target.parent() {
            copy::mkdir_all(root, p, opts, diff).map_err(|e| self.err(ins, e))?;
        }
        extract::remove_any(&target).map_err(|e| self.err(ins, e))?;
        std::fs::copy(tmp.path(), &target).map_err(|e| self.err(ins, e))?;
        if let Owner::Fixed(u, g) = opts.owner {
            let _ = std::os::unix::fs::lchown(&target, Some(u), Some(g));
        }
        std::fs::set_permissions(
            &target,
            std::os::unix::fs::PermissionsExt::from_mode(opts.chmod.unwrap_or(0o600)),
        )
        .map_err(|e| self.err(ins, e))?;
        diff.add(
            target.strip_prefix(root).unwrap_or(&target).to_path_buf(),
            crate::snapshot::Change::Add,
        );
        Ok(())
    }
}

fn heredoc_for<'h>(
    src: &str,
    heredocs: &'h [kiln_common::dockerfile::Heredoc],
) -> Option<&'h kiln_common::dockerfile::Heredoc> {
    let name = src
        .strip_prefix("<<")?
        .trim_start_matches('-')
        .trim_matches(['"', '\'']);
    heredocs.iter().find(|h| h.name == name)
}

fn is_archive(p: &Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    let Ok(mut r) = crate::compression::decompress(f) else {
        return false;
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < 512 {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return false,
        }
    }
    n == 512 && &head[257..262] == b"ustar"
}

fn normalize_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_paths() {
        assert_eq!(normalize_abs("/a/./b/../c/"), "/a/c");
    }
}
