//! `cache-server gc`: one collection over the store, report as JSON on
//! stdout, and (with `--pushgateway`) its figures for Prometheus — pushed on
//! failure too, so an alert can tell "failing" from "not run".

use kiln_cache_server::gc::{self, GcReport};
use kiln_cache_server::metrics::Metrics;
use kiln_cache_server::server::{open_store, ServerConfig};
use kiln_common::report::Report;
use std::sync::Arc;

pub async fn run(
    cfg: ServerConfig,
    dry_run: bool,
    pushgateway: Option<&str>,
) -> anyhow::Result<()> {
    let mut opts = cfg.gc.clone();
    opts.dry_run = dry_run;
    let outcome = async {
        let (store, _) = open_store(&cfg, Arc::new(Metrics::new())).await?;
        anyhow::Ok(gc::collect(&store, &opts).await?)
    }
    .await;
    if let Some(gw) = pushgateway {
        let url = kiln_common::pushgateway::job_url(gw, "kiln-cache-gc");
        let body = metrics_text(outcome.as_ref().ok(), chrono::Utc::now().timestamp());
        if let Err(e) =
            kiln_common::pushgateway::push(&url, body, kiln_common::pushgateway::Mode::Update).await
        {
            eprintln!("{} (metrics not pushed)", Report(&e));
        }
    }
    let report = outcome?;
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}

/// The run's figures; without a report (the run failed) only the time of
/// the failure. Pushed as an update, so a failure keeps the last success's
/// time and figures, and an alert compares the two.
fn metrics_text(report: Option<&GcReport>, now: i64) -> String {
    let mut t = String::new();
    let mut gauge = |name: &str, help: &str, v: String| {
        t.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
        ));
    };
    match report {
        None => gauge(
            "kiln_cache_gc_last_failure_timestamp_seconds",
            "When the last GC run failed",
            now.to_string(),
        ),
        Some(r) => {
            gauge(
                "kiln_cache_gc_last_success_timestamp_seconds",
                "When the last GC run completed",
                now.to_string(),
            );
            gauge(
                "kiln_cache_gc_deleted_bytes_last_run",
                "Blob bytes the last GC run deleted",
                r.bytes_deleted.to_string(),
            );
            gauge(
                "kiln_cache_gc_deleted_entries_last_run",
                "Cache entries (tags) the last GC run expired or evicted",
                (r.tags_expired.len() + r.tags_evicted.len()).to_string(),
            );
            gauge(
                "kiln_cache_gc_kept_bytes",
                "Blob bytes in the store after the last GC run",
                r.bytes_kept.to_string(),
            );
            gauge(
                "kiln_cache_gc_kept_entries",
                "Cache entries in the store after the last GC run",
                r.entries_kept.to_string(),
            );
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_run_pushes_only_its_failure_time() {
        let t = metrics_text(None, 1700000000);
        assert!(t.contains("kiln_cache_gc_last_failure_timestamp_seconds 1700000000\n"));
        assert!(!t.contains("success"));
        let r = GcReport {
            tags_expired: vec!["a".into()],
            tags_evicted: vec!["b".into()],
            manifests_deleted: 0,
            blobs_deleted: 1,
            bytes_deleted: 5,
            blobs_kept: 2,
            bytes_kept: 9,
            entries_kept: 3,
            dry_run: false,
        };
        let t = metrics_text(Some(&r), 7);
        for want in [
            "kiln_cache_gc_last_success_timestamp_seconds 7\n",
            "kiln_cache_gc_deleted_entries_last_run 2\n",
            "kiln_cache_gc_kept_bytes 9\n",
        ] {
            assert!(t.contains(want), "{want} in {t}");
        }
    }
}
