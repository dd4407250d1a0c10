//! The warmer's figures in Prometheus' text format, for a Pushgateway
//! (`kiln_common::pushgateway::push`): a cron job's metrics outlive the
//! job there.

use crate::{ImageReport, Retention};

/// The run's figures in Prometheus' text format, for a Pushgateway.
pub fn metrics_text(reports: &[ImageReport], retention: Option<&Retention>) -> String {
    let mut by_status: std::collections::BTreeMap<&str, u64> = Default::default();
    for r in reports {
        *by_status.entry(r.status.as_str()).or_default() += 1;
    }
    let mut t = String::from("# TYPE kiln_warmer_images gauge\n");
    for (s, n) in &by_status {
        t.push_str(&format!("kiln_warmer_images{{status=\"{s}\"}} {n}\n"));
    }
    let fetched: u64 = reports.iter().map(|r| r.bytes_fetched).sum();
    let reused: u64 = reports.iter().map(|r| r.bytes_reused).sum();
    let secs: f64 = reports.iter().map(|r| r.seconds).fold(0.0, f64::max);
    t.push_str(&format!(
        "# TYPE kiln_warmer_bytes_fetched gauge\nkiln_warmer_bytes_fetched {fetched}\n"
    ));
    t.push_str(&format!(
        "# TYPE kiln_warmer_bytes_reused gauge\nkiln_warmer_bytes_reused {reused}\n"
    ));
    t.push_str(&format!(
        "# TYPE kiln_warmer_duration_seconds gauge\nkiln_warmer_duration_seconds {secs}\n"
    ));
    if let Some(r) = retention {
        t.push_str(&format!(
            "# TYPE kiln_warmer_removed_bytes gauge\nkiln_warmer_removed_bytes {}\n# TYPE kiln_warmer_removed_entries gauge\nkiln_warmer_removed_entries {}\n",
            r.removed_bytes,
            r.removed_entries.len()
        ));
    }
    t.push_str(&format!(
        "# TYPE kiln_warmer_last_run_timestamp_seconds gauge\nkiln_warmer_last_run_timestamp_seconds {}\n",
        chrono::Utc::now().timestamp()
    ));
    t
}
