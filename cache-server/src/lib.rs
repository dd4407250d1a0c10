//! The shared layer cache server: an OCI registry over an object store,
//! with a memory tier for manifests and tags, a disk tier for blobs, entry
//! expiry refreshed on hit, online garbage collection, a batch lookup for
//! executors, and Prometheus metrics. See ARCHITECTURE.md for the data flow.

pub mod api;
pub mod auth;
pub mod backend;
pub mod breaker;
pub mod gc;
pub mod keys;
pub mod manifest;
pub mod metrics;
pub mod server;
pub mod store;
pub mod tiers;
pub mod tls;
pub mod uploads;

pub use kiln_common::units::random_id;
