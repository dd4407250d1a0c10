//! `cache-server`: parse flags (and an optional config file), set up
//! logging, dispatch to `serve` or `gc`.

mod cmd;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    kiln_common::tls::install_crypto_provider();
    let no_ca = kiln_common::tls::ensure_ca_roots();
    let cli = cmd::Cli::parse();
    cmd::logging(&cli);
    if let Some(w) = no_ca {
        tracing::warn!("{w}");
    }
    if let Err(e) = cmd::run(cli).await {
        eprintln!("error: {}", kiln_common::report::Report(&*e));
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
