//! `cache-server serve`: run until SIGTERM or SIGINT, then drain.

use kiln_cache_server::server::{self, ServerConfig};
use tokio_util::sync::CancellationToken;

pub async fn run(cfg: ServerConfig) -> anyhow::Result<()> {
    let cancel = CancellationToken::new();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("no SIGTERM handler: {e}");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
        on_signal.cancel();
    });
    server::run(cfg, cancel).await?;
    Ok(())
}
