//! What more than one Kiln binary needs: the Dockerfile parser (the warmer reads
//! FROM lines too), image references and registry access, OCI image types,
//! digests and registry credentials.

pub mod auth;
pub mod cache_api;
pub mod digest;
pub mod dockerfile;
pub mod duration;
pub mod image;
pub mod layout;
pub mod objstore;
pub mod observability;
pub mod pushgateway;
pub mod registry;
pub mod report;
pub mod shell_lex;
pub mod tls;
pub mod units;

pub use digest::Digest;
