//! `cache-server gc`: one collection over the store, report as JSON on stdout.

use kiln_cache_server::gc;
use kiln_cache_server::metrics::Metrics;
use kiln_cache_server::server::{open_store, ServerConfig};
use std::sync::Arc;

pub async fn run(cfg: ServerConfig, dry_run: bool) -> anyhow::Result<()> {
    let (store, _) = open_store(&cfg, Arc::new(Metrics::new())).await?;
    let mut opts = cfg.gc.clone();
    opts.dry_run = dry_run;
    let report = gc::collect(&store, &opts).await?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
