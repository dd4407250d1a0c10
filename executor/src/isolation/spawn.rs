//! Starting the step's command and collecting its output, shared by all rungs.

use super::network::{Network, NoNetwork};
use super::supervise::{fork_supervisor, Report};
use super::IsolationError;
use super::RunSpec;
use nix::unistd::{chdir, chroot, setgid, setgroups, setuid, Gid, Uid};
use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::os::fd::RawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

const TAIL_LINES: usize = 30;
/// A line longer than this is cut in the log and the tail (a step printing
/// a megabyte without a newline must not hold it in memory).
const MAX_LINE: usize = 8 << 10;
/// How long the output is still read after the step's processes are gone
/// (a process the supervisor could not reach may hold the pipes open).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Spawns the command (whose pre-exec code forked a supervisor writing to
/// `report`, [`super::supervise`]), forwards its output to the log line by
/// line while it runs, keeping the tail for error messages, and waits for
/// it and everything it started.
pub(super) fn spawn_and_wait(
    mut cmd: Command,
    program: &str,
    report: &Report,
) -> Result<(ExitStatus, Vec<String>), IsolationError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|source| IsolationError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let mut readers = 0;
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
        let (tail, done) = (tail.clone(), done_tx.clone());
        readers += 1;
        std::thread::spawn(move || {
            forward_lines(r, |line| {
                tracing::info!(target: "run", "{line}");
                if let Ok(mut t) = tail.lock() {
                    t.push_back(line);
                    if t.len() > TAIL_LINES {
                        t.pop_front();
                    }
                }
            });
            let _ = done.send(());
        });
    }
    drop(done_tx);
    let status = child.wait().map_err(|source| IsolationError::Spawn {
        program: program.to_string(),
        source,
    })?;
    let killed = report.killed();
    if killed > 0 {
        tracing::info!(
            "the step's main process exited; {killed} process(es) it left running were killed"
        );
    }
    let deadline = std::time::Instant::now() + DRAIN_GRACE;
    for _ in 0..readers {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            tracing::warn!(
                "the step's output is still held open by a process outside its reach; no longer read"
            );
            break;
        }
    }
    let tail = tail
        .lock()
        .map(|t| t.iter().cloned().collect())
        .unwrap_or_default();
    Ok((status, tail))
}

/// Calls `each` with every line read from `r` (lossy UTF-8, at most
/// [`MAX_LINE`] bytes of it, a cut marked with `…`), until end of file.
fn forward_lines(r: impl io::Read, mut each: impl FnMut(String)) {
    let mut r = io::BufReader::with_capacity(64 << 10, r);
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut emit = |line: &mut Vec<u8>, cut: &mut bool| {
        let mut s = String::from_utf8_lossy(line).into_owned();
        if *cut {
            s.push('…');
        }
        each(s);
        line.clear();
        *cut = false;
    };
    loop {
        let buf = match r.fill_buf() {
            Ok([]) => break,
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let (chunk, newline) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = MAX_LINE.saturating_sub(line.len());
        line.extend_from_slice(&chunk[..chunk.len().min(room)]);
        cut |= chunk.len() > room;
        let used = chunk.len() + usize::from(newline);
        r.consume(used);
        if newline {
            emit(&mut line, &mut cut);
        }
    }
    if !line.is_empty() || cut {
        emit(&mut line, &mut cut);
    }
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
    report: RawFd,
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
    // SAFETY: only system calls between fork and exec; `report` is a
    // supervisor report's write end.
    unsafe {
        cmd.pre_exec(move || {
            fork_supervisor(report)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        forward_lines(input, |l| out.push(l));
        out
    }

    #[test]
    fn output_is_split_into_bounded_lines() {
        assert_eq!(lines(b"a\nb\n\nc"), ["a", "b", "", "c"]);
        assert_eq!(lines(b""), Vec::<String>::new());
        let long = vec![b'x'; MAX_LINE * 3];
        let got = lines(&[&long[..], b"\nafter\n"].concat());
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].chars().filter(|&c| c == 'x').count(), MAX_LINE);
        assert!(got[0].ends_with('…'));
        assert_eq!(got[1], "after");
        assert_eq!(lines(b"caf\xc3\xa9 \xff\n"), ["café \u{fffd}"]);
    }
}
