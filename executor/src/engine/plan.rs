//! The layer cache's side of a stage: every filesystem step's key computed
//! up front from the planned steps, all keys looked up at once, then one
//! decision per step as the stage executes — a hit while the chain holds,
//! execution from the first miss on.

use super::config::{FsOp, FsStep};
use super::error::StepError;
use super::sources::{self, Resolved};
use crate::cache::{BuildRecord, CacheChain, CacheHit};
use crate::cache_key::KeyBuilder;
use crate::context::BuildContext;
use kiln_common::Digest;
use std::collections::HashMap;

/// One filesystem step's key and the readable inputs it was made of.
#[derive(Debug, Clone)]
pub struct Planned {
    pub key: Digest,
    pub inputs: Vec<(String, String)>,
    /// False when flags keep this kind of step out of the cache.
    pub cacheable: bool,
}

/// What to do with one filesystem step.
pub enum Decision {
    /// Reuse the cached layer; nothing executes.
    Hit(Box<CacheHit>),
    /// Execute and store the result; `first` is the chain's first miss.
    Miss { first: bool },
    /// Execute; flags keep the step out of the cache.
    Uncached,
}

impl Decision {
    /// The word the step report and the log use.
    pub fn label(&self) -> &'static str {
        match self {
            Decision::Hit(_) => "hit",
            Decision::Miss { .. } => "miss",
            Decision::Uncached => "uncached",
        }
    }
}

/// A stage's planned keys and the hits found for them.
pub struct CachePlan {
    steps: Vec<Planned>,
    hits: HashMap<usize, CacheHit>,
    /// The chain has missed: every later step executes, no more hits.
    missed: bool,
}

impl CachePlan {
    pub fn new(steps: Vec<Planned>) -> CachePlan {
        CachePlan {
            steps,
            hits: HashMap::new(),
            missed: false,
        }
    }

    /// Looks every cacheable key up concurrently; returns how many lookups
    /// failed (each is a miss and a warning, never a failed build).
    pub async fn lookup(&mut self, cache: &CacheChain, deadline: std::time::Duration) -> u64 {
        let wanted: Vec<(usize, Digest)> = self
            .steps
            .iter()
            .enumerate()
            .filter(|(_, p)| p.cacheable)
            .map(|(i, p)| (i, p.key.clone()))
            .collect();
        let keys: Vec<Digest> = wanted.iter().map(|(_, k)| k.clone()).collect();
        if keys.is_empty() {
            return 0;
        }
        let Ok(results) = tokio::time::timeout(deadline, cache.lookup_many(&keys)).await else {
            tracing::warn!(
                "the cache did not answer {} lookups within {deadline:?}: they are misses",
                keys.len()
            );
            return 1;
        };
        let mut errors = 0;
        for ((i, _), r) in wanted.into_iter().zip(results) {
            match r {
                Ok(Some(h)) => {
                    self.hits.insert(i, h);
                }
                Ok(None) => {}
                Err(e) => {
                    errors += 1;
                    tracing::warn!(
                        "cache lookup failed, treating the step as a miss: {}",
                        kiln_common::report::Report(&e)
                    );
                }
            }
        }
        errors
    }

    pub fn step(&self, idx: usize) -> Option<&Planned> {
        self.steps.get(idx)
    }

    /// The decision for filesystem step `idx`, in execution order.
    pub fn decide(&mut self, idx: usize) -> Decision {
        let cacheable = self.steps.get(idx).is_some_and(|p| p.cacheable);
        if !cacheable {
            return Decision::Uncached;
        }
        if self.missed {
            return Decision::Miss { first: false };
        }
        match self.hits.remove(&idx) {
            Some(hit) => Decision::Hit(Box::new(hit)),
            None => {
                self.missed = true;
                Decision::Miss { first: true }
            }
        }
    }
}

/// A filesystem step's key: the previous key, the instruction, the config
/// in effect (ENV, USER, WORKDIR, SHELL, …) and what the step reads.
pub fn step_key(
    chain: &Digest,
    step: &FsStep,
    sources: &[Resolved],
    ctx: &BuildContext,
    stage_key: impl Fn(usize) -> Digest,
) -> Result<(Digest, Vec<(String, String)>), StepError> {
    let mut k = KeyBuilder::new(chain);
    k.field("instruction", step.keyword);
    k.field("config", &step.config_json);
    match &step.op {
        FsOp::Run(run) => {
            k.list("argv", &run.argv);
            k.list("build-args", &run.build_args);
            if run.network == crate::isolation::Network::None {
                k.field("network", "none");
            }
            if !run.mounts.is_empty() {
                let m: Vec<String> = run.mounts.iter().map(|m| m.key_text()).collect();
                k.list("mounts", &m);
                // What bind mounts read is part of the key, as for COPY.
                sources::source_fields(&mut k, sources, ctx, stage_key)?;
            }
        }
        FsOp::Copy(copy) => sources::key_fields(&mut k, copy, sources, ctx, stage_key)?,
        FsOp::MakeDirs { .. } => {}
    }
    Ok(k.finish())
}

/// Why the first miss missed, from the last recorded build of the same destination.
pub fn explain_miss(
    record: Option<&BuildRecord>,
    record_name: &str,
    stage: &str,
    idx: usize,
    inputs: &[(String, String)],
) -> String {
    let Some(r) = record else {
        return format!("no earlier build of {record_name} is recorded in the cache");
    };
    match r.steps.iter().find(|s| s.stage == stage && s.index == idx) {
        None => "the last build had no such step".to_string(),
        Some(prev) => format!(
            "changed since the last build of {record_name}: {}",
            crate::cache::explain(&prev.inputs, inputs)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(n: u8, cacheable: bool) -> Planned {
        Planned {
            key: Digest::sha256_of(&[n]),
            inputs: Vec::new(),
            cacheable,
        }
    }

    #[test]
    fn the_first_miss_ends_the_hits() {
        let mut plan = CachePlan::new(vec![planned(0, true), planned(1, false), planned(2, true)]);
        // No hits recorded: the first cacheable step misses, the uncached
        // one stays uncached, and later ones miss without being "first".
        assert!(matches!(plan.decide(0), Decision::Miss { first: true }));
        assert!(matches!(plan.decide(1), Decision::Uncached));
        assert!(matches!(plan.decide(2), Decision::Miss { first: false }));
    }
}
