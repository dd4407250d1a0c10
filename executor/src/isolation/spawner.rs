//! Steps are started by a small process forked when the executor starts.
//!
//! Forking copies the forking process's page tables, and the copy is torn
//! down again at exec and at the supervisor's exit, so starting a step from
//! the executor costs time in proportion to the executor's memory: with a
//! 100,000-file root it holds ~85 MB (the snapshot index, the allocator's
//! arenas) and a step took 5.7 ms to start against 1.8 ms at 20,000 files
//! (`benches/RESULTS.md`). The spawner is forked before the build has
//! allocated anything, so the forks it makes stay as cheap as at start-up,
//! whatever the build holds.
//!
//! It shares the executor's namespaces, credentials, umask and working
//! directory (forked after they are set) and takes one step per message on
//! a `SOCK_SEQPACKET` pair: a JSON [`Launch`] with the step's descriptors
//! (`SCM_RIGHTS`): both output pipes, the supervisor's report pipe, a reply
//! pipe and, for the chroot rung, the Landlock ruleset. It forks the step
//! as the executor would ([`Launch::command`]: the supervisor, then the
//! command) and writes on the reply pipe 0 once the command has exec'd or
//! the errno that stopped it, then the supervisor's wait status. It dies
//! with the executor (`PR_SET_PDEATHSIG`) and when the socket closes; the
//! supervisors of running steps then kill them, as they did when the
//! executor itself was their parent.
//!
//! Where it cannot run (other threads already exist, a library caller
//! never started it, a request larger than one message, the spawner gone),
//! steps are forked from the executor as before: the same behaviour, at the
//! cost of forking the larger process. The namespaces rung forks from the
//! executor always: its steps set up mounts between fork and exec that are
//! not plain data.

use super::spawn::{Launch, Started};
use super::{IsolationError, RunSpec};
use nix::sys::socket::{
    recvmsg, sendmsg, socketpair, AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags,
    SockFlag, SockType,
};
use std::fs::File;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

/// The largest request sent in one message (a socket's default send
/// buffer holds about 200 KiB); a longer RUN line is forked directly.
const MAX_REQUEST: usize = 128 << 10;

static SPAWNER: OnceLock<Spawner> = OnceLock::new();

#[derive(Debug, thiserror::Error)]
pub enum SpawnerError {
    #[error("the executor already runs {0} threads: forking the spawner could deadlock it")]
    Threads(usize),
    #[error("counting the executor's threads")]
    CountThreads(#[source] io::Error),
    #[error("creating the spawner's socket")]
    Socket(#[source] nix::Error),
    #[error("forking the spawner")]
    Fork(#[source] nix::Error),
    #[error("the spawner was already started")]
    Started,
    #[error("a step of {0} bytes does not fit in one request to the spawner")]
    TooLarge(usize),
    #[error("encoding the step for the spawner")]
    Encode(#[source] serde_json::Error),
    #[error("sending the step to the spawner")]
    Send(#[source] io::Error),
    #[error("the spawner did not answer")]
    NoAnswer(#[source] io::Error),
}

/// The executor's end of the spawner.
pub struct Spawner {
    sock: Mutex<Option<OwnedFd>>,
    pid: nix::unistd::Pid,
}

impl Spawner {
    /// Forks the spawner. Refused (nothing forked) unless this process has
    /// a single thread: the spawner runs ordinary code after the fork.
    pub fn start() -> Result<(), SpawnerError> {
        let threads = std::fs::read_dir("/proc/self/task")
            .map_err(SpawnerError::CountThreads)?
            .count();
        if threads != 1 {
            return Err(SpawnerError::Threads(threads));
        }
        if SPAWNER.get().is_some() {
            return Err(SpawnerError::Started);
        }
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(SpawnerError::Socket)?;
        let parent = nix::unistd::getpid();
        // SAFETY: this process has one thread (checked above), so the child
        // may run any code.
        match unsafe { nix::unistd::fork() }.map_err(SpawnerError::Fork)? {
            nix::unistd::ForkResult::Child => {
                drop(ours);
                serve(theirs, parent)
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop(theirs);
                let spawner = Spawner {
                    sock: Mutex::new(Some(ours)),
                    pid: child,
                };
                SPAWNER.set(spawner).map_err(|_| SpawnerError::Started)
            }
        }
    }

    /// The spawner, when [`Spawner::start`] started one.
    pub fn get() -> Option<&'static Spawner> {
        SPAWNER.get()
    }

    /// Ends the spawner (closes its socket) and reaps it; steps after this
    /// are forked from the executor.
    pub fn stop() {
        if let Some(s) = SPAWNER.get() {
            let sock = s.sock.lock().map(|mut g| g.take()).unwrap_or(None);
            if sock.is_some() {
                drop(sock);
                let _ = nix::sys::wait::waitpid(s.pid, None);
            }
        }
    }

    /// Has the spawner start `launch`. The outer error: the spawner could
    /// not be asked (fork from here instead); the inner: the command did
    /// not start (as `Command::spawn` fails).
    pub(super) fn start_step(
        &self,
        launch: &Launch,
        landlock: Option<RawFd>,
        report: RawFd,
    ) -> Result<io::Result<Started>, SpawnerError> {
        let body = serde_json::to_vec(launch).map_err(SpawnerError::Encode)?;
        if body.len() > MAX_REQUEST {
            return Err(SpawnerError::TooLarge(body.len()));
        }
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| SpawnerError::Send(e.into()))
        };
        let (out_r, out_w) = pipe()?;
        let (err_r, err_w) = pipe()?;
        let (reply_r, reply_w) = pipe()?;
        let mut fds = vec![
            out_w.as_raw_fd(),
            err_w.as_raw_fd(),
            report,
            reply_w.as_raw_fd(),
        ];
        fds.extend(landlock);
        {
            let guard = self
                .sock
                .lock()
                .map_err(|_| SpawnerError::Send(io::Error::other("lock poisoned")))?;
            let sock = guard
                .as_ref()
                .ok_or_else(|| SpawnerError::Send(io::Error::other("the spawner was stopped")))?;
            sendmsg::<()>(
                sock.as_raw_fd(),
                &[IoSlice::new(&body)],
                &[ControlMessage::ScmRights(&fds)],
                MsgFlags::MSG_NOSIGNAL,
                None,
            )
            .map_err(|e| SpawnerError::Send(e.into()))?;
        }
        // Only the spawner's copies may hold the write ends: end of file
        // on them must mean the step is done.
        drop((out_w, err_w, reply_w));
        let mut reply = File::from(reply_r);
        let mut first = [0u8; 4];
        reply
            .read_exact(&mut first)
            .map_err(SpawnerError::NoAnswer)?;
        Ok(match i32::from_ne_bytes(first) {
            0 => Ok(Started::from_spawner(
                File::from(out_r),
                File::from(err_r),
                reply,
            )),
            errno => Err(io::Error::from_raw_os_error(errno)),
        })
    }
}

/// Starts the step's command as [`Launch::command`] describes: through the
/// spawner when it runs (forks whose cost does not grow with this
/// process's memory), else forked from this process.
pub(super) fn start_in(
    spec: &RunSpec,
    root: Option<&Path>,
    landlock: Option<RawFd>,
    report: RawFd,
) -> Result<Started, IsolationError> {
    let setup = |what: &str| {
        let path = PathBuf::from(what);
        move |source| IsolationError::Setup { path, source }
    };
    let launch = Launch::new(spec, root).map_err(setup("the step's root"))?;
    let spawn_error = |source| IsolationError::Spawn {
        program: launch.program().to_string(),
        source,
    };
    if let Some(spawner) = Spawner::get() {
        match spawner.start_step(&launch, landlock, report) {
            Ok(started) => return started.map_err(spawn_error),
            Err(e) => tracing::debug!(
                "{}; forking the step from the executor",
                kiln_common::report::Report(&e)
            ),
        }
    }
    let cmd = launch
        .command(landlock, report)
        .map_err(setup("seccomp filter for --network=none"))?;
    Started::spawn(cmd, launch.program())
}

/// The spawner's loop: one step per message until the socket closes.
fn serve(sock: OwnedFd, parent: nix::unistd::Pid) -> ! {
    // SAFETY: prctl with integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
        libc::prctl(libc::PR_SET_NAME, c"kiln-spawner".as_ptr(), 0, 0, 0);
    }
    if nix::unistd::getppid() != parent {
        std::process::exit(0);
    }
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    loop {
        let mut space = nix::cmsg_space!([RawFd; 5]);
        let mut iov = [IoSliceMut::new(&mut buf)];
        let (len, fds) = match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: descriptors the kernel just gave this
                            // process, owned by nothing else.
                            fds.extend(
                                raw.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                (msg.bytes, fds)
            }
            Err(nix::Error::EINTR) => continue,
            Err(_) => std::process::exit(0),
        };
        if len == 0 && fds.is_empty() {
            // The executor closed its end.
            std::process::exit(0);
        }
        serve_one(&buf[..len], fds);
    }
}

/// Starts one step; answers on its reply pipe. A malformed request gets
/// `EINVAL` when it carries a reply pipe, nothing otherwise.
fn serve_one(body: &[u8], fds: Vec<OwnedFd>) {
    let mut fds = fds.into_iter();
    let (Some(out), Some(err), Some(report), Some(reply)) =
        (fds.next(), fds.next(), fds.next(), fds.next())
    else {
        return;
    };
    let landlock = fds.next();
    let mut reply = File::from(reply);
    let launch: Launch = match serde_json::from_slice(body) {
        Ok(l) => l,
        Err(_) => {
            let _ = reply.write_all(&libc::EINVAL.to_ne_bytes());
            return;
        }
    };
    let spawned = launch
        .command(
            landlock.as_ref().map(AsRawFd::as_raw_fd),
            report.as_raw_fd(),
        )
        .and_then(|mut cmd| {
            cmd.stdin(std::process::Stdio::null())
                .stdout(out)
                .stderr(err);
            cmd.spawn()
        });
    // This process's copies of the report pipe and the ruleset go now; the
    // output pipes went with the command.
    drop((report, landlock));
    match spawned {
        Ok(mut child) => {
            if reply.write_all(&0i32.to_ne_bytes()).is_err() {
                let _ = child.kill();
            }
            std::thread::spawn(move || {
                use std::os::unix::process::ExitStatusExt;
                // A wait that fails reports "killed": the step did not end well.
                let raw = child.wait().map(|s| s.into_raw()).unwrap_or(libc::SIGKILL);
                let _ = reply.write_all(&raw.to_ne_bytes());
            });
        }
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EINVAL);
            let _ = reply.write_all(&errno.to_ne_bytes());
        }
    }
}
