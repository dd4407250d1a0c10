//! What a stage's steps share while they execute ([`StageRun`]) and what
//! a built stage leaves for later ones ([`StageOut`]): the data every
//! step's module (COPY, mounts, RUN) works on, apart from the stage's
//! driver so those modules do not depend on it.

use super::Builder;
use crate::context::BuildContext;
use crate::model::BuiltImage;
use crate::snapshot::ScanIndex;
use kiln_common::Digest;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// A built stage, kept for later stages' `FROM` and `COPY --from`.
#[derive(Clone)]
pub(super) struct StageOut {
    pub image: BuiltImage,
    /// The stage's root (absent when never unpacked).
    pub root: Option<PathBuf>,
    pub base_name: String,
    /// The last key of the stage's chain, where `FROM <stage>` continues.
    pub final_key: Digest,
}

/// What the instructions of a stage share while they execute.
pub(super) struct StageRun<'a> {
    pub b: &'a Builder,
    pub ctx: &'a BuildContext,
    pub done: &'a BTreeMap<usize, StageOut>,
    pub stage_name: String,
    pub base_name: String,
    /// How many of `image`'s layers are the base image's own (0 for
    /// `scratch` and for a stage on another stage).
    pub base_layers: usize,
    /// Whether other needed stages start from the same base image.
    pub shared_base: bool,
    /// Layers and history as executed (the config itself is [`StageConfig`]'s).
    pub image: BuiltImage,
    pub root: Option<PathBuf>,
    pub scratch_n: usize,
    /// `--single-snapshot`: the stage's root as it was before its steps.
    pub single: Option<ScanIndex>,
    /// The current step's time by phase (taken into its report).
    pub phases: crate::outcome::Phases,
    /// Set by the driver before each step: whether the root, if it is made
    /// now, may be a skeleton (`skeleton.rs`).
    pub skeleton_ok: bool,
    /// The root was made as a skeleton (and not filled since).
    pub skeleton: Option<super::skeleton::SkeletonRoot>,
}
