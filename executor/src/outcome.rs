//! What a build reports: per-step figures for the closing summary and the
//! JSON report (`--report`), the first miss and the cache mounts' traffic.
//! Data only, a leaf: the cache (which reports a build to the cache
//! server) and the summary read it without depending on the build.

use kiln_common::Digest;

/// Per-step figures for the closing summary and the JSON report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct StepReport {
    pub stage: String,
    pub line: usize,
    pub instruction: String,
    /// When the step started, in seconds since the build began: stages
    /// run concurrently, so steps of different stages overlap.
    pub started: f64,
    pub seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer_digest: Option<Digest>,
    pub layer_size: u64,
    /// `hit`, `miss`, `uncached` (step not cacheable by flags) or absent (cache off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// For a hit: the `--cache-from` repository that had the entry (absent
    /// when `--cache-repo` had it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cache_from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<Digest>,
    /// For a hit: who wrote the entry, where the cache server recorded it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer: Option<kiln_common::cache_api::Writer>,
    /// Layer bytes downloaded during this step (base or cached layers it needed).
    pub bytes_pulled: u64,
    /// Layer bytes sent to the cache for this step.
    pub bytes_pushed: u64,
    /// Where the step's time went, for profiles.
    #[serde(skip_serializing_if = "Phases::is_empty")]
    pub phases: Phases,
}

/// A step's time by phase, in seconds; what is left of `seconds` is the
/// step's own bookkeeping (cache lookups, COPY's file work, hits applied).
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct Phases {
    /// Making the stage's root: the base's layers fetched and extracted
    /// (the first step that needs the root pays it).
    pub base: f64,
    /// A RUN's command, with the rung's set-up and the diff of what it
    /// changed.
    pub run: f64,
    /// The step's layer written: tar, compression, digest.
    pub layer: f64,
}

impl Phases {
    pub fn is_empty(&self) -> bool {
        *self == Phases::default()
    }
}

impl StepReport {
    pub fn new(stage: &str, line: usize, instruction: String, seconds: f64) -> StepReport {
        StepReport {
            stage: stage.to_string(),
            line,
            instruction,
            started: 0.0,
            seconds,
            layer_digest: None,
            layer_size: 0,
            cache: None,
            cache_from: None,
            key: None,
            writer: None,
            bytes_pulled: 0,
            bytes_pushed: 0,
            phases: Phases::default(),
        }
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct BuildResult {
    pub manifest_digest: Digest,
    /// The manifest's size in bytes (an index entry needs it).
    pub manifest_size: u64,
    /// The platform built.
    pub platform: kiln_common::image::Platform,
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
    /// Shared cache mounts: what was restored and saved, per mount id.
    pub cache_mounts: Vec<MountReport>,
    /// Execution time the hits' entries recorded: what the cache saved.
    pub seconds_saved: f64,
    /// Layer bytes of the hits: built and pushed no more.
    pub bytes_saved: u64,
    /// The first step that missed the cache, and why; what a CI log
    /// reader wants to know first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_miss: Option<FirstMiss>,
}

/// The first cache miss of a build.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FirstMiss {
    pub stage: String,
    pub line: usize,
    pub instruction: String,
    /// What changed since the last recorded build, as far as the cache can tell.
    pub why: String,
}

/// One shared cache mount's traffic in a build.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct MountReport {
    pub id: String,
    /// The `--cache-from` repository it was restored from, when the
    /// written one had no save of it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restored_from: Option<String>,
    pub restored_files: u64,
    pub restored_bytes: u64,
    pub saved_files: u64,
    pub saved_bytes: u64,
    /// Unchanged since it was restored: nothing to save.
    pub unchanged: bool,
    /// Seconds spent restoring it and saving it.
    pub restore_seconds: f64,
    pub save_seconds: f64,
    /// Why a changed mount was not saved (over the size cap, an error, the
    /// deadline); `None` when saved or unchanged.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_saved: Option<String>,
}
