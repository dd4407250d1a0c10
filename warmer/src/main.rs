//! `warmer`: flags → [`kiln_warmer::WarmOptions`] → warm, retain, report.
//! Meant to run as a Kubernetes CronJob over a volume shared with the build pods.

mod cmd;

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let no_ca = kiln_common::tls::startup();
    let cli = cmd::Cli::parse();
    cmd::logging(&cli);
    kiln_common::tls::warn(no_ca);
    match cmd::run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", kiln_common::report::Report(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}
