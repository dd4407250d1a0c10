//! `executor`: parse kaniko-compatible flags, set up logging, dispatch.

mod cmd;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let no_ca = kiln_common::tls::startup();
    // `executor index …`: kaniko's flags have no subcommands, so this one
    // is told apart by its first word.
    if std::env::args().nth(1).as_deref() == Some("index") {
        return index_main();
    }
    let cli = cmd::Cli::parse();
    cmd::logging(&cli);
    // RUN steps start with umask 022, as Docker's containers do: an image
    // must not depend on the shell that started the build.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
    kiln_common::tls::warn(no_ca);
    cmd::check_kaniko_flags(&cli);
    // Before any thread exists (the kernel requires it): as a user other
    // than root, a user namespace in which Kiln is root.
    let env = kiln_executor::isolation::probe::Environment::read();
    let privileged = env.euid == 0 || env.has_cap(kiln_executor::isolation::probe::CAP_SYS_ADMIN);
    if let Some((uid, gid)) = kiln_executor::userns::enter_if_needed(privileged) {
        tracing::info!(
            "running as uid {uid} without CAP_SYS_ADMIN: building in a user namespace of its own \
             (uid {uid} and gid {gid} are root there; {})",
            kiln_layers::ids::ids()
        );
    }
    // Before any thread exists: mounts the build makes (a stacked root, a
    // tmpfs over the work dir) then die with the process, however it ends.
    if let Err(e) = kiln_executor::stacked::private_mount_namespace() {
        tracing::debug!("no private mount namespace ({e}): mounts are unmounted on exit");
    }
    // Before any thread exists, after the namespaces and the umask are set:
    // the process that starts RUN steps (isolation/spawner.rs).
    if let Err(e) = kiln_executor::isolation::spawner::Spawner::start() {
        tracing::debug!(
            "{}; RUN steps are forked from the executor",
            kiln_common::report::Report(&e)
        );
    }
    let code = run_async(cmd::run(cli));
    kiln_executor::isolation::spawner::Spawner::stop();
    code
}

/// Runs a command on a multi-threaded runtime; its error printed once,
/// the exit code [`exit_code`]'s.
fn run_async(f: impl std::future::Future<Output = anyhow::Result<()>>) -> std::process::ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", kiln_common::report::Report(&*e));
            exit_code(&e)
        }
    }
}

/// `executor index`: joins single-platform images into one index.
fn index_main() -> std::process::ExitCode {
    let cli = cmd::index::IndexCli::parse_from(std::env::args().skip(1));
    kiln_common::observability::init(&kiln_common::observability::LogOptions {
        level: cli.verbosity.clone(),
        json: false,
        color: false,
        timestamps: false,
    });
    run_async(cmd::index::run_index(cli))
}

/// A failed RUN's own exit code, as Docker, kaniko and buildah exit with
/// it (CI scripts branch on it); 1 for every other failure.
fn exit_code(e: &anyhow::Error) -> std::process::ExitCode {
    let build = e.downcast_ref::<kiln_executor::BuildError>().or_else(|| {
        e.downcast_ref::<kiln_executor::multi::MultiError>()
            .and_then(|m| m.build_error())
    });
    match build {
        Some(kiln_executor::BuildError::RunFailed { code, .. }) if (1..=255).contains(code) => {
            std::process::ExitCode::from(*code as u8)
        }
        _ => std::process::ExitCode::FAILURE,
    }
}
