//! A RUN step ends when its main process exits, and everything it started
//! goes with it — as Docker and BuildKit end a step and kill what is left in
//! its sandbox. Between fork and exec, the process that would have become
//! the command forks once more ([`fork_supervisor`]) and stays behind as the
//! step's supervisor:
//!
//! - it is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so every process of
//!   the step that is orphaned — `cmd &`, a daemon that double-forks and
//!   calls `setsid` — is re-parented to it, never to the executor or to
//!   init; nothing can leave the tree it watches;
//! - it waits for the main process, reaping orphans as they exit;
//! - then it SIGKILLs every child it still has (listed in
//!   `/proc/thread-self/children`; the killed ones' own children come to it
//!   in turn) until it has none, and reports how many it reaped to the
//!   executor through a pipe;
//! - when the executor dies (even by SIGKILL), the kernel tells it
//!   (`PR_SET_PDEATHSIG` with a signal it catches): it kills the whole tree
//!   at once and exits, so no step outlives its build.
//!
//! Only plain system calls run in the supervisor, on buffers on its stack:
//! it is a fork of a multi-threaded process. It closes every descriptor but
//! its report pipe and the step's output, so the standard library's
//! exec-status pipe reaches end-of-file as soon as the command has exec'd:
//! `spawn` returns then, and the output is read while the step runs.
//!
//! On the namespaces rung the step's pid namespace would kill what is left
//! anyway; a supervisor runs there too, as the namespace's init, so the
//! count is the same on every rung.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

/// The pipe the supervisors write their counts into.
pub(super) struct Report {
    read: OwnedFd,
    write: OwnedFd,
}

impl Report {
    /// Non-blocking on both ends: a supervisor's 4-byte write never waits,
    /// and the executor reads what is there once they are gone.
    pub fn new() -> io::Result<Report> {
        let (read, write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
        Ok(Report { read, write })
    }

    /// The write end, for the pre-exec code.
    pub fn fd(&self) -> RawFd {
        self.write.as_raw_fd()
    }

    /// Processes the supervisors killed, once they have exited.
    pub fn killed(&self) -> u32 {
        let mut total = 0u32;
        let mut buf = [0u8; 4];
        while let Ok(4) = nix::unistd::read(&self.read, &mut buf) {
            total = total.saturating_add(u32::from_le_bytes(buf));
        }
        total
    }
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// Between fork and exec: forks; the calling process becomes the step's
/// supervisor and never returns, and the new process returns `Ok` to go on
/// towards exec as the step's main process (in a process group of its own).
///
/// # Safety
/// Only to be called in a forked child before exec (a `pre_exec` closure);
/// `report` must be the write end of a [`Report`].
pub(super) unsafe fn fork_supervisor(report: RawFd) -> io::Result<()> {
    // Before the fork: an orphan of the step must never find another reaper.
    if libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0 {
        return Err(last_error());
    }
    // Told when the executor (its spawning thread) dies: a handler that
    // does nothing, installed without SA_RESTART, so that the wait below
    // returns EINTR and the whole tree is killed.
    let mut act: libc::sigaction = std::mem::zeroed();
    act.sa_sigaction = on_parent_death as *const () as libc::sighandler_t;
    if libc::sigaction(PARENT_DIED, &act, std::ptr::null_mut()) != 0
        || libc::prctl(libc::PR_SET_PDEATHSIG, PARENT_DIED, 0, 0, 0) != 0
    {
        return Err(last_error());
    }
    let parent = libc::getppid();
    let me = libc::getpid();
    match libc::fork() {
        -1 => Err(last_error()),
        0 => {
            let _ = libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            // The supervisor died before the signal was armed. (The init of
            // a new pid namespace sees its parent as 0 and cannot tell.)
            let parent = libc::getppid();
            if parent != me && parent != 0 {
                libc::_exit(255);
            }
            let _ = libc::setpgid(0, 0);
            Ok(())
        }
        main => supervise(main, parent, report),
    }
}

/// The signal a supervisor gets when its parent dies.
const PARENT_DIED: libc::c_int = libc::SIGUSR1;

extern "C" fn on_parent_death(_: libc::c_int) {}

/// The exit code a shell would give for a wait status.
fn code_of(status: libc::c_int) -> libc::c_int {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        255
    }
}

unsafe fn supervise(main: libc::pid_t, parent: libc::pid_t, report: RawFd) -> ! {
    close_all_but(report);
    let mut code = 255;
    let mut status: libc::c_int = 0;
    loop {
        let r = libc::waitpid(-1, &mut status, 0);
        if r == main {
            code = code_of(status);
            break;
        }
        if r == -1 && *libc::__errno_location() != libc::EINTR {
            break;
        }
        // The executor is gone: the main process goes with the rest.
        if libc::getppid() != parent {
            break;
        }
    }
    let mut killed: u32 = 0;
    let mut buf = [0u8; 4096];
    loop {
        if !kill_children(&mut buf) {
            // No /proc to list children: the main process's group is all
            // that can be reached; what is reapable now is reaped.
            let _ = libc::kill(-main, libc::SIGKILL);
            while libc::waitpid(-1, &mut status, libc::WNOHANG) > 0 {
                killed += 1;
            }
            break;
        }
        let r = libc::waitpid(-1, &mut status, 0);
        if r > 0 {
            killed += 1;
        } else if *libc::__errno_location() != libc::EINTR {
            break;
        }
    }
    let bytes = killed.to_le_bytes();
    let _ = libc::write(report, bytes.as_ptr().cast(), bytes.len());
    libc::_exit(code)
}

/// Closes every descriptor from 3 up but `keep`: the exec-status pipe
/// among them, and whatever else the executor had open.
unsafe fn close_all_but(keep: RawFd) {
    let keep = keep as libc::c_uint;
    let ranges = [(3, keep.saturating_sub(1)), (keep + 1, libc::c_uint::MAX)];
    for (first, last) in ranges {
        if first > last {
            continue;
        }
        if libc::syscall(libc::SYS_close_range, first, last, 0) == 0 {
            continue;
        }
        // No close_range (kernel before 5.9, or a seccomp profile that
        // refuses it): one close per possible descriptor.
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur.min(1 << 20) as libc::c_uint
        } else {
            1024
        };
        let mut fd = first;
        while fd <= last && fd < max {
            libc::close(fd as libc::c_int);
            fd += 1;
        }
    }
}

/// SIGKILLs every child of this (single-threaded) process; `false` when
/// they cannot be listed.
unsafe fn kill_children(buf: &mut [u8; 4096]) -> bool {
    let fd = libc::open(
        c"/proc/thread-self/children".as_ptr(),
        libc::O_RDONLY | libc::O_CLOEXEC,
    );
    if fd < 0 {
        return false;
    }
    let mut pid: libc::pid_t = 0;
    let mut digits = false;
    loop {
        let n = libc::read(fd, buf.as_mut_ptr().cast(), buf.len());
        if n <= 0 {
            break;
        }
        for &b in &buf[..n as usize] {
            if b.is_ascii_digit() {
                pid = pid
                    .saturating_mul(10)
                    .saturating_add((b - b'0') as libc::pid_t);
                digits = true;
            } else {
                if digits {
                    libc::kill(pid, libc::SIGKILL);
                }
                pid = 0;
                digits = false;
            }
        }
    }
    if digits {
        libc::kill(pid, libc::SIGKILL);
    }
    libc::close(fd);
    true
}
