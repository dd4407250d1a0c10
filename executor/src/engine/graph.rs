//! The stage graph, run concurrently: a stage starts as soon as the stages
//! it reads are built, up to a limit, as BuildKit solves its graph; a
//! Dockerfile with independent builder stages waits for the longest, not
//! the sum. Each stage's result is what the sequential build gives (its
//! keys and layers depend only on its inputs), and reports are merged in
//! stage order, so the image and every digest are the same either way.
//!
//! Stages run on scoped threads, each driving its stage on the build's
//! runtime: a RUN step blocks its thread (`block_in_place`), and the
//! snapshot and layer writes that follow are CPU work, so stages need
//! threads of their own to overlap. A failing stage stops the others at
//! their next step (a RUN in flight finishes first); the first failure is
//! the build's error.
//!
//! Every base image (and `COPY --from=<image>` image) the needed stages
//! use is resolved from the start, beside the first stages' work, not when
//! its stage starts. Without a layer cache (with one, hits may never need
//! them) the layers of images a stage will want later — the base of a
//! stage waiting on others, a `COPY --from` image — are downloaded too; a
//! stage that starts at once fetches its own base (extracting it as it
//! arrives), and a failed prefetch only leaves the fetch to the stage.

use super::error::BuildError;
use super::stage::Shared;
use super::stage_run::StageOut;
use super::Builder;
use crate::outcome::StepReport;
use kiln_common::dockerfile::Kind;
use kiln_common::image::Platform;
use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

/// What ran: each stage's output, and every step's report in stage order.
pub(super) type Built = (BTreeMap<usize, StageOut>, Vec<StepReport>);

/// The order and limit the stages run in (pure): `needed` in Dockerfile
/// order, each with the stages it reads.
pub(super) struct Graph {
    pub needed: Vec<usize>,
    pub deps: BTreeMap<usize, Vec<usize>>,
    /// Stages at once; 1 runs them one after another.
    pub limit: usize,
}

impl Graph {
    /// The first not-yet-started stage whose inputs are all in `built`.
    fn next_ready(&self, pending: &[usize], built: &dyn Fn(usize) -> bool) -> Option<usize> {
        pending
            .iter()
            .position(|i| self.deps.get(i).is_none_or(|d| d.iter().all(|&j| built(j))))
    }
}

impl Builder {
    pub(super) fn run_graph(&self, sh: &Shared<'_>, g: &Graph) -> Result<Built, BuildError> {
        let handle = tokio::runtime::Handle::current();
        tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                let (tx, rx) = std::sync::mpsc::channel();
                let mut outs: BTreeMap<usize, StageOut> = BTreeMap::new();
                let mut reports: BTreeMap<usize, Vec<StepReport>> = BTreeMap::new();
                let mut pending = g.needed.clone();
                let mut running = 0usize;
                let mut failure: Option<BuildError> = None;
                for (name, platform, download) in self.images_used(sh, g) {
                    let handle = handle.clone();
                    scope.spawn(move || handle.block_on(self.prefetch(&name, &platform, download)));
                }
                loop {
                    while failure.is_none() && running < g.limit.max(1) {
                        let Some(pos) = g.next_ready(&pending, &|j| outs.contains_key(&j)) else {
                            break;
                        };
                        let idx = pending.remove(pos);
                        let done = outs.clone();
                        let (tx, handle) = (tx.clone(), handle.clone());
                        scope.spawn(move || {
                            let mut steps = Vec::new();
                            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                                handle.block_on(self.build_stage(
                                    sh,
                                    &sh.df.stages[idx],
                                    &done,
                                    &mut steps,
                                ))
                            }))
                            .unwrap_or_else(|_| {
                                Err(BuildError::StagePanicked {
                                    stage: stage_label(sh, idx),
                                })
                            });
                            let _ = tx.send((idx, r, steps));
                        });
                        running += 1;
                    }
                    if running == 0 {
                        break;
                    }
                    // Every spawned stage sends exactly once (panics included).
                    let Ok((idx, r, steps)) = rx.recv() else {
                        break;
                    };
                    running -= 1;
                    reports.insert(idx, steps);
                    match r {
                        Ok(out) => {
                            outs.insert(idx, out);
                        }
                        Err(e) => {
                            self.cancelled.store(true, Ordering::SeqCst);
                            // The first real failure, not a stage it stopped.
                            if failure
                                .as_ref()
                                .is_none_or(|f| matches!(f, BuildError::Cancelled { .. }))
                            {
                                failure = Some(e);
                            }
                        }
                    }
                }
                match failure {
                    Some(e) => Err(e),
                    None => Ok((outs, reports.into_values().flatten().collect())),
                }
            })
        })
    }
}

impl Builder {
    /// The images the needed stages start from or copy from, each once,
    /// and whether its layers are worth downloading ahead (see the
    /// module's doc).
    fn images_used(&self, sh: &Shared<'_>, g: &Graph) -> Vec<(String, Platform, bool)> {
        let mut out: Vec<(String, Platform, bool)> = Vec::new();
        let is_image = |name: &str| {
            !name.eq_ignore_ascii_case("scratch")
                && sh.df.stage_index(name).is_none()
                && name.parse::<usize>().is_err()
        };
        let mut add = |name: String, platform: Platform, download: bool| match out
            .iter_mut()
            .find(|(n, p, _)| *n == name && *p == platform)
        {
            Some(e) => e.2 |= download,
            None => out.push((name, platform, download)),
        };
        for &i in &g.needed {
            let stage = &sh.df.stages[i];
            let waits = g.deps.get(&i).is_some_and(|d| !d.is_empty());
            if let Ok((name, platform)) = self.stage_base(sh, stage) {
                if is_image(&name) {
                    add(name, platform, waits);
                }
            }
            for ins in &stage.instructions {
                let Kind::Copy(c) = &ins.kind else {
                    continue;
                };
                let Some(from) = c.flags.get("from") else {
                    continue;
                };
                if let Ok(name) = sh.lexer.process_word(from, &sh.global.to_vec()) {
                    if is_image(&name) {
                        add(name, self.platform.clone(), true);
                    }
                }
            }
        }
        out
    }

    /// Resolves `name` for the build (errors are left to the stage that
    /// uses it, which reports them) and, with `download` and no layer
    /// cache, downloads its layers into the build's store.
    async fn prefetch(&self, name: &str, platform: &Platform, download: bool) {
        let Ok((img, _)) = self.base(name, platform).await else {
            return;
        };
        if !download || self.cache.is_some() {
            return;
        }
        for l in &img.layers {
            if self.cancelled.load(Ordering::SeqCst) {
                return;
            }
            if let Err(e) = self.fetcher.ensure_local(l, None).await {
                tracing::debug!("prefetching {name}: {}", kiln_common::report::Report(&e));
                return;
            }
        }
    }
}

/// A stage's name for messages (`builder`, or its index).
pub(super) fn stage_label(sh: &Shared<'_>, idx: usize) -> String {
    sh.df.stages[idx]
        .name
        .clone()
        .unwrap_or_else(|| idx.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stage_is_ready_once_what_it_reads_is_built() {
        // 0 and 1 independent; 2 reads both; 3 reads 2.
        let g = Graph {
            needed: vec![0, 1, 2, 3],
            deps: BTreeMap::from([(0, vec![]), (1, vec![]), (2, vec![0, 1]), (3, vec![2])]),
            limit: 2,
        };
        let none = |_: usize| false;
        assert_eq!(g.next_ready(&[0, 1, 2, 3], &none), Some(0));
        assert_eq!(g.next_ready(&[1, 2, 3], &none), Some(0));
        assert_eq!(g.next_ready(&[2, 3], &none), None);
        let first = |j: usize| j == 0;
        assert_eq!(g.next_ready(&[2, 3], &first), None);
        let both = |j: usize| j < 2;
        assert_eq!(g.next_ready(&[2, 3], &both), Some(0));
    }
}
