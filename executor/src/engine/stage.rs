//! One stage, start to end: its base, the planned steps (a pure fold of
//! [`StageConfig::apply`] over the instructions), the cache plan, then
//! execution step by step.

use super::config::{FsOp, Scope, StageConfig, Step};
use super::error::{At, BuildError, StepError};
use super::plan::{self, CachePlan, Decision, Planned};
use super::sources::{self, Resolved};
use super::stage_run::{StageOut, StageRun};
use super::Builder;
use crate::cache::RecordedStep;
use crate::cache_key;
use crate::context::BuildContext;
use crate::model::BuiltImage;
use crate::outcome::{FirstMiss, StepReport};
use crate::snapshot::ScanIndex;
use kiln_common::dockerfile::{Dockerfile, Instruction, Kind, Stage};
use kiln_common::image::{ImageConfig, Platform};
use kiln_common::shell_lex::Lexer;
use kiln_common::Digest;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

/// One planned instruction.
struct Entry<'i> {
    ins: &'i Instruction,
    step: Step,
    /// COPY/ADD sources, resolved once for both the key and the copy.
    sources: Vec<Resolved>,
}

impl Entry<'_> {
    /// A RUN step: it reads the root's files.
    fn runs(&self) -> bool {
        matches!(&self.step, Step::Fs(fs) if matches!(fs.op, FsOp::Run(_)))
    }
}

/// The inputs of [`Builder::build_stage`] that stay the same for every stage.
pub(super) struct Shared<'a> {
    pub df: &'a Dockerfile,
    pub global: &'a [(String, String)],
    pub lexer: Lexer,
    pub ctx: &'a BuildContext,
    pub file: &'a str,
    /// The stage whose image the build produces: no other stage reads it.
    pub target: usize,
    /// Base images two or more of the needed stages start from
    /// (`shared_base.rs`).
    pub shared_bases: std::collections::BTreeSet<String>,
}

impl Builder {
    /// A stage's `FROM`, expanded: the base's name (an image, an earlier
    /// stage or `scratch`) and the platform it is built for.
    pub(super) fn stage_base(
        &self,
        sh: &Shared<'_>,
        stage: &Stage,
    ) -> Result<(String, Platform), BuildError> {
        let from_ins = from_instruction(stage);
        let at_from = At {
            file: sh.file,
            ins: &from_ins,
        };
        let expand = |w: &str| {
            sh.lexer
                .process_word(w, &sh.global.to_vec())
                .map_err(|source| {
                    at_from.err(StepError::Expand {
                        word: w.to_string(),
                        source,
                    })
                })
        };
        let base_name = expand(&stage.base)?;
        let platform = match &stage.platform {
            Some(p) => Platform::parse(&expand(p)?).map_err(|e| {
                at_from.err(StepError::Parse {
                    what: "--platform".into(),
                    source: Box::new(e),
                })
            })?,
            None => self.platform.clone(),
        };
        Ok((base_name, platform))
    }

    pub(super) async fn build_stage(
        &self,
        sh: &Shared<'_>,
        stage: &Stage,
        done: &BTreeMap<usize, StageOut>,
        steps: &mut Vec<StepReport>,
    ) -> Result<StageOut, BuildError> {
        let stage_name = stage
            .name
            .clone()
            .unwrap_or_else(|| stage.index.to_string());
        let from_ins = from_instruction(stage);
        let at_from = At {
            file: sh.file,
            ins: &from_ins,
        };
        let (base_name, platform) = self.stage_base(sh, stage)?;
        tracing::info!("stage {stage_name}: FROM {base_name}");
        let (mut image, base_id, base_layers) = if base_name.eq_ignore_ascii_case("scratch") {
            let img = BuiltImage {
                config: ImageConfig::scratch(&platform),
                layers: Vec::new(),
            };
            (img, "scratch".to_string(), 0)
        } else if let Some(prev) = sh
            .df
            .stage_index(&base_name)
            .filter(|i| *i < stage.index)
            .and_then(|i| done.get(&i))
        {
            (prev.image.clone(), prev.final_key.to_string(), 0)
        } else {
            let (img, d) =
                self.base(&base_name, &platform)
                    .await
                    .map_err(|source| BuildError::BaseImage {
                        image: base_name.clone(),
                        stage: stage_name.clone(),
                        source: Box::new(source),
                    })?;
            let n = img.layers.len();
            (img, d.to_string(), n)
        };
        let mut chain = cache_key::stage_start(
            &base_id,
            &platform.to_string(),
            &self.opts.layer.cache_settings(),
        );
        // History of the base stays; the config's creation time is ours, and
        // so is its platform (the one we built for).
        image.config.created = None;
        image.config.os = platform.os.clone();
        image.config.architecture = platform.architecture.clone();
        image.config.variant = platform.variant.clone();
        let triggers = onbuild_triggers(&mut image.config, stage.line, &base_name)
            .map_err(|e| at_from.err(e))?;
        let instructions: Vec<&Instruction> =
            triggers.iter().chain(stage.instructions.iter()).collect();

        // Plan: the config folded over every instruction, sources resolved.
        let scope = Scope {
            lexer: sh.lexer,
            global: sh.global,
            build_args: &self.opts.build_args,
        };
        let mut config = StageConfig::new(image.config.clone(), scope);
        let stage_of = |f: &str| sh.df.stage_index(f).filter(|i| done.contains_key(i));
        let mut entries = Vec::with_capacity(instructions.len());
        for ins in &instructions {
            let at = At { file: sh.file, ins };
            let step = config.apply(ins).map_err(|e| at.err(e))?;
            let sources = match &step {
                Step::Fs(fs) => match &fs.op {
                    FsOp::Copy(c) => {
                        sources::resolve(c, sh.ctx, stage_of).map_err(|e| at.err(e))?
                    }
                    FsOp::Run(r) => sources::resolve_binds(&r.mounts, sh.ctx, stage_of)
                        .map_err(|e| at.err(e))?,
                    _ => Vec::new(),
                },
                _ => Vec::new(),
            };
            entries.push(Entry { ins, step, sources });
        }
        let single = self.opts.single_snapshot;
        let mut cache_plan = match (&self.cache, single) {
            (Some(cache), false) => {
                let mut planned = Vec::new();
                let mut key = chain.clone();
                for e in &entries {
                    let Step::Fs(fs) = &e.step else { continue };
                    let stage_key = |i: usize| {
                        done.get(&i)
                            .map(|o| o.final_key.clone())
                            .unwrap_or_else(|| Digest::sha256_of(b""))
                    };
                    let (k, inputs) = plan::step_key(&key, fs, &e.sources, sh.ctx, stage_key)
                        .map_err(|err| {
                            At {
                                file: sh.file,
                                ins: e.ins,
                            }
                            .err(err)
                        })?;
                    key = k.clone();
                    let c = self.opts.cache.as_ref();
                    let cacheable = match fs.op {
                        FsOp::Run(_) => c.is_none_or(|c| c.run_layers),
                        FsOp::Copy(_) => c.is_none_or(|c| c.copy_layers),
                        FsOp::MakeDirs { .. } => true,
                    };
                    planned.push(Planned {
                        key: k,
                        inputs,
                        cacheable,
                    });
                }
                let mut p = CachePlan::new(planned);
                let deadline = self
                    .opts
                    .cache
                    .as_ref()
                    .map_or(std::time::Duration::from_secs(10), |c| c.lookup_timeout);
                let errors = p.lookup(cache, deadline).await;
                self.counters.errors.fetch_add(errors, Ordering::Relaxed);
                Some(p)
            }
            _ => None,
        };

        let mut run = StageRun {
            b: self,
            ctx: sh.ctx,
            done,
            stage_name: stage_name.clone(),
            base_name: base_name.clone(),
            base_layers,
            shared_base: sh.shared_bases.contains(&base_name),
            image,
            root: None,
            scratch_n: 0,
            single: None,
            phases: Default::default(),
            skeleton_ok: false,
            skeleton: None,
        };
        // Whether the steps from `i` on only copy into the root and make
        // directories, in the stage nothing else reads (`skeleton.rs`).
        let tail_only_copies =
            |i: usize| stage.index == sh.target && !single && !entries[i..].iter().any(Entry::runs);
        let needs_root = entries.iter().any(|e| matches!(e.step, Step::Fs(_)));
        if needs_root && self.cache.is_none() {
            // Unpacking the base is its own step in the report, so step times
            // measure the step alone.
            let t0 = Instant::now();
            run.skeleton_ok = tail_only_copies(0);
            run.ensure_root().await.map_err(|e| at_from.err(e))?;
            let mut unpack = StepReport::new(
                &stage_name,
                stage.line,
                format!(
                    "FROM {base_name} (unpack {} layers)",
                    run.image.layers.len()
                ),
                t0.elapsed().as_secs_f64(),
            );
            unpack.started = t0.duration_since(self.epoch).as_secs_f64();
            unpack.phases = std::mem::take(&mut run.phases);
            steps.push(unpack);
        }
        if single {
            let root = run.ensure_root().await.map_err(|e| at_from.err(e))?;
            let index =
                ScanIndex::capture(&root).map_err(|e| at_from.err(StepError::Snapshot(e)))?;
            run.single = Some(index);
        }

        let mut fs_idx = 0;
        for (i, e) in entries.iter().enumerate() {
            if self.cancelled.load(Ordering::SeqCst) {
                return Err(BuildError::Cancelled {
                    stage: stage_name.clone(),
                });
            }
            let at = At {
                file: sh.file,
                ins: e.ins,
            };
            let t0 = Instant::now();
            let pulled_before = self.fetcher.pulled();
            let created_by = e.ins.original.lines().next().unwrap_or("").to_string();
            let mut report = StepReport::new(&stage_name, e.ins.line, created_by.clone(), 0.0);
            report.started = t0.duration_since(self.epoch).as_secs_f64();
            let fs = match &e.step {
                Step::Args => None,
                Step::Config => {
                    run.history(created_by.clone(), true);
                    None
                }
                Step::Fs(fs) => Some(fs),
            };
            if let Some(fs) = fs {
                let idx = fs_idx;
                fs_idx += 1;
                let mut decision = None;
                if let Some(p) = &mut cache_plan {
                    let planned = p.step(idx).cloned();
                    if let Some(planned) = planned {
                        chain = planned.key.clone();
                        report.key = Some(planned.key.clone());
                        if let Ok(mut rec) = self.this_record.lock() {
                            rec.push(RecordedStep {
                                stage: stage_name.clone(),
                                index: idx,
                                line: e.ins.line,
                                key: planned.key.clone(),
                                inputs: planned.inputs.clone(),
                            });
                        }
                        let d = p.decide(idx);
                        report.cache = Some(d.label().to_string());
                        decision = Some((d, planned));
                    }
                }
                let mut miss = None;
                match decision {
                    Some((Decision::Hit(hit), _)) => {
                        let saved_ms = (hit.seconds * 1000.0) as u64;
                        report.writer = hit.writer.clone();
                        if let Some(f) = &hit.from {
                            report.cache_from = Some(f.name.clone());
                            self.adopt_hit(&hit);
                        }
                        let layer = run
                            .use_hit(created_by.clone(), *hit)
                            .await
                            .map_err(|e| at.err(e))?;
                        if let Some((d, n)) = layer {
                            report.layer_digest = Some(d);
                            report.layer_size = n;
                            self.counters.saved_bytes.fetch_add(n, Ordering::Relaxed);
                        }
                        self.counters.hits.fetch_add(1, Ordering::Relaxed);
                        self.counters
                            .saved_ms
                            .fetch_add(saved_ms, Ordering::Relaxed);
                        report.bytes_pulled = self.fetcher.pulled() - pulled_before;
                        report.seconds = t0.elapsed().as_secs_f64();
                        log_step(&report);
                        steps.push(report);
                        continue;
                    }
                    Some((Decision::Miss { first }, planned)) => {
                        if first {
                            let why = plan::explain_miss(
                                self.previous_record().await,
                                &self.record_name(),
                                &stage_name,
                                idx,
                                &planned.inputs,
                            );
                            tracing::info!(
                                "[{stage_name}] first cache miss at line {}: {created_by} — {why}",
                                e.ins.line,
                            );
                            self.counters.record_first_miss(FirstMiss {
                                stage: stage_name.to_string(),
                                line: e.ins.line,
                                instruction: created_by.clone(),
                                why,
                            });
                        }
                        self.counters.misses.fetch_add(1, Ordering::Relaxed);
                        miss = Some((planned, Instant::now()));
                    }
                    Some((Decision::Uncached, _)) | None => {}
                }
                run.skeleton_ok = tail_only_copies(i);
                let diff = match &fs.op {
                    FsOp::Run(r) => run.run(r, &e.sources).await.map_err(|err| match err {
                        StepError::Exit { code, tail } => BuildError::RunFailed {
                            file: sh.file.to_string(),
                            line: e.ins.line,
                            command: r.shown.clone(),
                            code,
                            tail,
                        },
                        other => at.err(other),
                    })?,
                    FsOp::Copy(c) => {
                        let defer = tail_only_copies(i + 1);
                        run.copy(c, &e.sources, defer)
                            .await
                            .map_err(|e| at.err(e))?
                    }
                    FsOp::MakeDirs { paths, user } => run
                        .make_dirs(paths, user.as_deref())
                        .await
                        .map_err(|e| at.err(e))?,
                };
                let layer = run
                    .finish(diff, created_by.clone())
                    .await
                    .map_err(|e| at.err(e))?;
                if let Some(l) = &layer {
                    report.layer_digest = Some(l.descriptor.digest.clone());
                    report.layer_size = l.descriptor.size;
                }
                if let Some((planned, started)) = miss {
                    if self.store_entry(planned, layer.as_ref(), started) {
                        report.bytes_pushed = report.layer_size;
                    }
                }
            }
            report.bytes_pulled = self.fetcher.pulled() - pulled_before;
            report.seconds = t0.elapsed().as_secs_f64();
            report.phases = std::mem::take(&mut run.phases);
            log_step(&report);
            steps.push(report);
        }
        if let Some(index) = run.single.take() {
            if let Some(root) = run.root.clone() {
                let diff = index
                    .diff(&root)
                    .map_err(|e| at_from.err(StepError::Snapshot(e)))?;
                run.commit_layer(&root, diff.with_parents(), "single snapshot of the stage")
                    .map_err(|e| at_from.err(e))?;
            }
        }
        // The config as the instructions left it; layers and history as executed.
        let mut config = config.image;
        config.history = std::mem::take(&mut run.image.config.history);
        config.rootfs = std::mem::take(&mut run.image.config.rootfs);
        config.created = Some(self.timestamp());
        Ok(StageOut {
            image: BuiltImage {
                config,
                layers: run.image.layers,
            },
            root: run.root,
            base_name,
            final_key: chain,
        })
    }
}

/// A stage's `FROM` line as an instruction, for errors that name it.
fn from_instruction(stage: &Stage) -> Instruction {
    Instruction {
        line: stage.line,
        original: format!("FROM {}", stage.base),
        kind: Kind::Maintainer(String::new()),
    }
}

fn log_step(r: &StepReport) {
    tracing::info!(
        "[{}] {} ({:.2}s{}{})",
        r.stage,
        r.instruction,
        r.seconds,
        r.layer_digest
            .as_ref()
            .map(|_| format!(", layer {} bytes", r.layer_size))
            .unwrap_or_default(),
        r.cache
            .as_ref()
            .map(|c| format!(", cache {c}"))
            .unwrap_or_default()
    );
}

/// The base's ONBUILD triggers, parsed, taken out of the config (Docker
/// does not pass them on), placed at the FROM line.
fn onbuild_triggers(
    config: &mut ImageConfig,
    line: usize,
    base_name: &str,
) -> Result<Vec<Instruction>, StepError> {
    let mut triggers = Vec::new();
    for t in config.config.on_build.take().unwrap_or_default() {
        let parsed = kiln_common::dockerfile::parse(
            &format!("FROM scratch\n{t}\n"),
            &format!("ONBUILD of {base_name}"),
        )
        .map_err(|e| StepError::Parse {
            what: format!("ONBUILD trigger {t:?} of {base_name}"),
            source: Box::new(e),
        })?;
        for mut ins in parsed.stages.into_iter().flat_map(|s| s.instructions) {
            ins.line = line;
            triggers.push(ins);
        }
    }
    Ok(triggers)
}
