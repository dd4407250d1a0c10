//! Starting the step's command and collecting its output, shared by all rungs.

use super::network::{Network, NoNetwork};
use super::IsolationError;
use super::RunSpec;
use nix::unistd::{chdir, chroot, setgid, setgroups, setuid, Gid, Uid};
use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

const TAIL_LINES: usize = 30;

/// Spawns the command and forwards its output line by line to the log,
/// keeping the tail for error messages.
pub(super) fn spawn_and_wait(
    mut cmd: Command,
    program: &str,
) -> Result<(ExitStatus, Vec<String>), IsolationError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| IsolationError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let mut threads = Vec::new();
    for r in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tail = tail.clone();
        threads.push(std::thread::spawn(move || {
            let r = io::BufReader::new(r);
            for line in r.split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line).into_owned();
                tracing::info!(target: "run", "{line}");
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    if t.len() > TAIL_LINES {
                        t.pop_front();
                    }
                }
            }
        }));
    }
    let status = child.wait().map_err(|source| IsolationError::Spawn {
        program: program.to_string(),
        source,
    })?;
    for t in threads {
        let _ = t.join();
    }
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok((status, tail))
}

pub(super) fn base_command(spec: &RunSpec) -> Command {
    let mut cmd = Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..]);
    cmd.env_clear();
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd
}

/// The step's command, started in `root` by `chroot(2)` when given (else in
/// this process's `/`), in its working directory, as its user, confined by a
/// Landlock ruleset when one is given, and without network sockets for
/// `--network=none` (a seccomp filter: these rungs cannot make a network
/// namespace).
pub(super) fn command_in(
    spec: &RunSpec,
    root: Option<&Path>,
    landlock: Option<std::os::fd::RawFd>,
) -> Result<Command, IsolationError> {
    let no_network = match spec.network {
        Network::None => Some(
            NoNetwork::compile().map_err(|source| IsolationError::Setup {
                path: PathBuf::from("seccomp filter for --network=none"),
                source,
            })?,
        ),
        Network::Default => None,
    };
    let mut cmd = base_command(spec);
    let root = root.map(Path::to_path_buf);
    let cwd = spec.cwd.clone();
    let (uid, gid) = (spec.uid, spec.gid);
    // SAFETY: only system calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if let Some(r) = &root {
                chroot(r).map_err(io::Error::from)?;
            }
            chdir(cwd.as_str()).map_err(io::Error::from)?;
            // Before dropping root: with CAP_SYS_ADMIN the filter needs no
            // `no_new_privs`.
            if let Some(f) = &no_network {
                f.install()?;
            }
            drop_privileges(uid, gid)?;
            if let Some(fd) = landlock {
                super::landlock::restrict_self(fd)?;
            }
            Ok(())
        });
    }
    Ok(cmd)
}

pub(super) fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    let g = Gid::from_raw(gid);
    let _ = setgroups(&[g]);
    setgid(g).map_err(io::Error::from)?;
    setuid(Uid::from_raw(uid)).map_err(io::Error::from)?;
    Ok(())
}
