//! Starting the step's command and collecting its output, shared by all rungs.

use super::network::{Network, NoNetwork};
use super::supervise::{fork_supervisor, Report};
use super::IsolationError;
use super::RunSpec;
use nix::unistd::{chdir, chroot, setgid, setgroups, setuid, Gid, Uid};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, BufRead, Read};
use std::os::fd::{OwnedFd, RawFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

const TAIL_LINES: usize = 30;
/// A line longer than this is cut in the log and the tail (a step printing
/// a megabyte without a newline must not hold it in memory).
const MAX_LINE: usize = 8 << 10;
/// How long the output is still read after the step's processes are gone
/// (a process the supervisor could not reach may hold the pipes open).
const DRAIN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A step's command that has started: its output pipes and how to wait
/// for it (the supervisor's exit, [`super::supervise`]).
pub(super) struct Started {
    stdout: File,
    stderr: File,
    waiter: Waiter,
}

enum Waiter {
    /// Forked by this process.
    Child(Child),
    /// Forked by the spawner, which writes the supervisor's wait status
    /// here (`spawner.rs`).
    Spawner(File),
}

impl Started {
    /// Forks `cmd` from this process with piped output.
    pub fn spawn(mut cmd: Command, program: &str) -> Result<Started, IsolationError> {
        let spawn_error = |source| IsolationError::Spawn {
            program: program.to_string(),
            source,
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(spawn_error)?;
        let missing = || spawn_error(io::Error::other("no output pipe"));
        let stdout = File::from(OwnedFd::from(child.stdout.take().ok_or_else(missing)?));
        let stderr = File::from(OwnedFd::from(child.stderr.take().ok_or_else(missing)?));
        Ok(Started {
            stdout,
            stderr,
            waiter: Waiter::Child(child),
        })
    }

    /// Started by the spawner: output read from `stdout`/`stderr`, the
    /// wait status (4 bytes, native order) read from `status`.
    pub(super) fn from_spawner(stdout: File, stderr: File, status: File) -> Started {
        Started {
            stdout,
            stderr,
            waiter: Waiter::Spawner(status),
        }
    }
}

impl Waiter {
    fn wait(self) -> io::Result<ExitStatus> {
        match self {
            Waiter::Child(mut c) => c.wait(),
            Waiter::Spawner(mut f) => {
                let mut raw = [0u8; 4];
                f.read_exact(&mut raw).map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => {
                        io::Error::other("the spawner exited before the step ended")
                    }
                    _ => e,
                })?;
                Ok(ExitStatus::from_raw(i32::from_ne_bytes(raw)))
            }
        }
    }
}

/// Forwards the started step's output to the log line by line while it
/// runs, keeping the tail for error messages, and waits for it and
/// everything it started (its supervisor reports how many it killed to
/// `report`).
pub(super) fn wait_for(
    started: Started,
    program: &str,
    report: &Report,
) -> Result<(ExitStatus, Vec<String>), IsolationError> {
    let tail = Arc::new(Mutex::new(VecDeque::new()));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let Started {
        stdout,
        stderr,
        waiter,
    } = started;
    let readers = 2;
    for r in [stdout, stderr] {
        let (tail, done) = (tail.clone(), done_tx.clone());
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
    let status = waiter.wait().map_err(|source| IsolationError::Spawn {
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
    command_of(&spec.args, &spec.env)
}

fn command_of(args: &[String], env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(&args[0]);
    cmd.args(&args[1..]);
    cmd.env_clear();
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

/// What the chroot and in-place rungs start for a step: plain data, so the
/// spawner can be sent it (`spawner.rs`).
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Launch {
    args: Vec<String>,
    env: Vec<(String, String)>,
    cwd: String,
    uid: u32,
    gid: u32,
    /// `chroot(2)` into this (absolute) directory; `None`: this process's `/`.
    root: Option<PathBuf>,
    no_network: bool,
}

impl Launch {
    pub fn new(spec: &RunSpec, root: Option<&Path>) -> io::Result<Launch> {
        Ok(Launch {
            args: spec.args.clone(),
            env: spec.env.clone(),
            cwd: spec.cwd.clone(),
            uid: spec.uid,
            gid: spec.gid,
            root: root.map(std::path::absolute).transpose()?,
            no_network: spec.network == Network::None,
        })
    }

    pub fn program(&self) -> &str {
        &self.args[0]
    }

    /// The command, started in the root by `chroot(2)` when there is one
    /// (else in this process's `/`), in its working directory, as its user,
    /// confined by a Landlock ruleset when one is given, and without network
    /// sockets for `--network=none` (a seccomp filter: these rungs cannot
    /// make a network namespace). Between fork and exec a supervisor is
    /// forked, reporting to `report`.
    pub fn command(&self, landlock: Option<RawFd>, report: RawFd) -> io::Result<Command> {
        let no_network = match self.no_network {
            true => Some(NoNetwork::compile()?),
            false => None,
        };
        let mut cmd = command_of(&self.args, &self.env);
        let root = self.root.clone();
        let cwd = self.cwd.clone();
        let (uid, gid) = (self.uid, self.gid);
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
