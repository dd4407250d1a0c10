//! The shared layer cache server: an OCI registry over an object store,
//! with a memory tier for manifests and tags, a disk tier for blobs, entry
//! expiry refreshed on hit, online garbage collection, a batch lookup for
//! executors, and Prometheus metrics. See ARCHITECTURE.md for the data flow.

pub mod api;
pub(crate) mod auth;
pub mod backend;
pub(crate) mod breaker;
pub mod gc;
pub(crate) mod grants;
pub(crate) mod keys;
pub mod manifest;
pub mod metrics;
pub mod mirror;
pub(crate) mod oidc;
pub(crate) mod referrers;
pub mod server;
pub mod store;
pub(crate) mod tiers;
pub(crate) mod tls;
pub(crate) mod uploads;

pub(crate) use kiln_common::units::random_id;
