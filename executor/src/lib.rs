//! Kiln's executor: builds an image from a Dockerfile without a daemon.
//!
//! Data flow: `context` → [`engine`] (per stage: base layers unpacked by
//! [`kiln_layers::extract`] into a private root; RUN through [`isolation`], COPY/ADD through
//! `copy`; each step's [`snapshot::Diff`] written by [`layer`] into the
//! [`blobs`] store) → `output` (registries, OCI layout, docker archive).
//!
//! The public surface is what the binary, the tests and the benches use:
//! [`Builder`] with [`BuildOptions`], the [`isolation`] seam, the layer
//! writer and its options, and kaniko's flag table; everything else is
//! crate-private.

pub mod attest;
pub mod blobs;
mod block_pool;
pub(crate) mod cache;
pub mod cache_key;
pub(crate) mod cache_mounts;
pub mod codec;
pub mod compression;
pub(crate) mod context;
pub mod copy;
pub mod dockerignore;
pub mod emulation;
pub mod engine;
pub(crate) mod fetch;
mod follow;
mod gates;
pub mod index;
pub mod isolation;
pub mod kaniko_flags;
pub mod layer;
pub mod layout_archive;
pub(crate) mod model;
pub mod multi;
pub mod options;
pub mod outcome;
pub mod outline;
pub(crate) mod output;
mod pgzip;
mod pipe;
pub(crate) mod progress;
mod pzstd;
pub mod snapshot;
pub mod stacked;
pub mod summary;
mod tree;
pub mod userns;
mod zlib;

pub use engine::{BuildError, BuildResult, Builder};
pub use options::{BuildOptions, CacheOptions};
