//! `cache-server`: parse flags (and an optional config file), set up
//! logging, dispatch to `serve` or `gc`.

mod cmd;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let no_ca = kiln_common::tls::startup();
    let cli = cmd::Cli::parse();
    cmd::logging(&cli);
    kiln_common::tls::warn(no_ca);
    if let Err(e) = cmd::run(cli).await {
        eprintln!("error: {}", kiln_common::report::Report(&*e));
        return std::process::ExitCode::FAILURE;
    }
    std::process::ExitCode::SUCCESS
}
