//! Pushing a run's figures to a Prometheus Pushgateway: a cron job's
//! metrics outlive the job there.

use crate::{ImageReport, Retention};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("pushing metrics to {url}")]
    Request {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("pushing metrics to {url}: HTTP {status}")]
    Status { url: String, status: u16 },
}

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

/// PUTs `body` (Prometheus text format) to `url`.
pub async fn push(url: &str, body: String) -> Result<(), PushError> {
    kiln_common::tls::install_crypto_provider();
    let err = |source| PushError::Request {
        url: url.to_string(),
        source,
    };
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(err)?;
    let resp = client
        .put(url)
        .header("Content-Type", "text/plain; version=0.0.4")
        .body(body)
        .send()
        .await
        .map_err(err)?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(PushError::Status {
            url: url.to_string(),
            status: resp.status().as_u16(),
        })
    }
}
