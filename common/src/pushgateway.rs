//! Pushing a cron job's figures to a Prometheus Pushgateway (the warmer's
//! runs, the cache server's `gc`): the job ends, its metrics stay there for
//! Prometheus to scrape and for "has not run" alerts.

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

/// How a push treats the metrics already in the job's group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// PUT: the group becomes exactly this push.
    Replace,
    /// POST: metrics of the same names are replaced, others kept (a failed
    /// run's push keeps the last success's time).
    Update,
}

/// Sends `body` (Prometheus text format) to `url`.
pub async fn push(url: &str, body: String, mode: Mode) -> Result<(), PushError> {
    crate::tls::install_crypto_provider();
    let err = |source| PushError::Request {
        url: url.to_string(),
        source,
    };
    let client = crate::tls::client_builder()
        .timeout(Duration::from_secs(15))
        .build()
        .map_err(err)?;
    let req = match mode {
        Mode::Replace => client.put(url),
        Mode::Update => client.post(url),
    };
    let resp = req
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

/// `<gateway>/metrics/job/<job>`: the group a job's figures replace on each push.
pub fn job_url(gateway: &str, job: &str) -> String {
    format!("{}/metrics/job/{job}", gateway.trim_end_matches('/'))
}
