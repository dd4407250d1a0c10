//! Kiln's executor: builds an image from a Dockerfile without a daemon.
//!
//! Data flow: [`context`] → [`build`] (per stage: base layers unpacked by
//! [`extract`] into a private root; RUN through [`isolation`], COPY/ADD through
//! [`copy`]; each step's [`snapshot::Diff`] written by [`layer`] into the
//! [`blobs`] store) → [`output`] (registries, OCI layout, docker archive).

pub mod blobs;
pub mod build;
pub mod cache;
pub mod cache_key;
pub mod compression;
pub mod context;
pub mod copy;
pub mod dockerignore;
pub mod extract;
pub mod fetch;
pub mod isolation;
pub mod kaniko_flags;
pub mod layer;
pub mod model;
pub mod options;
pub mod output;
mod pgzip;
pub mod progress;
pub mod rootfs;
pub mod snapshot;
mod tree;

pub use build::{BuildError, BuildResult, Builder};
pub use options::{BuildOptions, CacheOptions};
