//! Running RUN steps inside a build root, never on the builder's own `/`.
//!
//! [`Isolation`] is the seam: the build engine asks it to run a command on a
//! root and gets back the exit status and what changed. Two implementations:
//!
//! * [`Namespaces`]: new mount, pid, uts and ipc namespaces; the root is the
//!   lower layer of an overlay whose upper directory *is* the step's diff, so
//!   snapshot cost follows the size of the change. /proc, a minimal /dev, a
//!   read-only /sys, /etc/hosts, /etc/resolv.conf and /etc/hostname are
//!   provided by mounts that never reach the image.
//! * [`Chroot`]: where namespaces or overlayfs are unavailable; the diff comes
//!   from a stat scan of the root.

use crate::snapshot::{self, Diff, ScanIndex, SnapshotError};
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, chroot, fork, setgid, setgroups, setuid, ForkResult, Gid, Uid};
use std::collections::VecDeque;
use std::io::{self, BufRead};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("starting {program:?}: {source}")]
    Spawn { program: String, source: io::Error },
    #[error("preparing the sandbox in {path}: {source}")]
    Setup { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error("isolation {0:?} is not available here: {1}")]
    Unavailable(String, String),
}

/// One command to run, as the container would see it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory inside the root; must exist.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub status: ExitStatus,
    /// The last lines of combined output, for error messages.
    pub tail: Vec<String>,
    /// What the command changed in the root (already applied to it).
    pub diff: Diff,
}

pub trait Isolation: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs `spec` with `root` as its `/`. `scratch` is an empty directory on the
    /// same filesystem as `root` for the isolation's own use. On return the
    /// root holds the command's changes and `diff` lists them; a non-zero exit
    /// is reported in `status`, not as an error.
    fn run(
        &self,
        root: &Path,
        scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError>;
}

/// `--isolation`: which implementation to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationKind {
    #[default]
    Auto,
    Namespaces,
    Chroot,
}

impl std::str::FromStr for IsolationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "namespaces" | "oci" => Ok(Self::Namespaces),
            "chroot" => Ok(Self::Chroot),
            _ => Err(format!(
                "unknown isolation {s:?}: expected auto, namespaces or chroot"
            )),
        }
    }
}

/// Picks the strongest isolation that works in `work_dir`.
pub fn select(kind: IsolationKind, work_dir: &Path) -> Result<Box<dyn Isolation>, IsolationError> {
    match kind {
        IsolationKind::Chroot => Ok(Box::new(Chroot)),
        IsolationKind::Namespaces => {
            probe_namespaces(work_dir)
                .map_err(|e| IsolationError::Unavailable("namespaces".into(), e))?;
            Ok(Box::new(Namespaces))
        }
        IsolationKind::Auto => match probe_namespaces(work_dir) {
            Ok(()) => Ok(Box::new(Namespaces)),
            Err(e) => {
                tracing::warn!(
                    "namespaces with overlayfs unavailable ({e}); using chroot isolation"
                );
                Ok(Box::new(Chroot))
            }
        },
    }
}

/// Checks, in a throwaway child, that we can unshare and mount an overlay
/// with its upper directory in `work_dir`.
fn probe_namespaces(work_dir: &Path) -> Result<(), String> {
    let t = tempfile::tempdir_in(work_dir).map_err(|e| e.to_string())?;
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(t.path().join(d)).map_err(|e| e.to_string())?;
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        t.path().join("l").display(),
        t.path().join("u").display(),
        t.path().join("w").display()
    );
    let target = t.path().join("m");
    // SAFETY: the child only makes system calls and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let ok = unshare(
                CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWPID
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC,
            )
            .is_ok()
                && mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .is_ok()
                && mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .is_ok();
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(ForkResult::Parent { child }) => match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(s) => Err(format!("probe failed: {s:?}")),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    }
}

const TAIL_LINES: usize = 30;

/// Spawns the command and forwards its output line by line to the log,
/// keeping the tail for error messages.
fn spawn_and_wait(
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

fn base_command(spec: &RunSpec) -> Command {
    let mut cmd = Command::new(&spec.args[0]);
    cmd.args(&spec.args[1..]);
    cmd.env_clear();
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    cmd
}

fn drop_privileges(uid: u32, gid: u32) -> io::Result<()> {
    let g = Gid::from_raw(gid);
    let _ = setgroups(&[g]);
    setgid(g).map_err(io::Error::from)?;
    setuid(Uid::from_raw(uid)).map_err(io::Error::from)?;
    Ok(())
}

pub struct Chroot;

impl Isolation for Chroot {
    fn name(&self) -> &'static str {
        "chroot"
    }

    fn run(
        &self,
        root: &Path,
        _scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError> {
        let index = ScanIndex::capture(root)?;
        let mut cmd = base_command(spec);
        let root_c = root.to_path_buf();
        let cwd = spec.cwd.clone();
        let (uid, gid) = (spec.uid, spec.gid);
        // SAFETY: only system calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                chroot(&root_c).map_err(io::Error::from)?;
                chdir(cwd.as_str()).map_err(io::Error::from)?;
                drop_privileges(uid, gid)
            });
        }
        let (status, tail) = spawn_and_wait(cmd, &spec.args[0])?;
        let diff = index.diff(root)?;
        Ok(RunOutcome { status, tail, diff })
    }
}

pub struct Namespaces;

/// Files and mount points that the sandbox provides above the root.
fn prepare_provided(root: &Path, scratch: &Path, spec: &RunSpec) -> io::Result<PathBuf> {
    let provided = scratch.join("provided");
    for d in ["dev", "proc", "sys", "etc"] {
        let p = provided.join(d);
        std::fs::create_dir_all(&p)?;
        // Keep the image's own directory metadata: a copy-up takes it from here.
        if let Ok(m) = std::fs::metadata(root.join(d)) {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
            let _ = std::os::unix::fs::chown(&p, Some(m.uid()), Some(m.gid()));
        }
    }
    for f in ["hosts", "resolv.conf", "hostname"] {
        std::fs::write(provided.join("etc").join(f), "")?;
    }
    let host_files = scratch.join("files");
    std::fs::create_dir_all(&host_files)?;
    std::fs::write(
        host_files.join("hosts"),
        format!(
            "127.0.0.1\tlocalhost {0}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
            spec.hostname
        ),
    )?;
    std::fs::write(host_files.join("hostname"), format!("{}\n", spec.hostname))?;
    let resolv = std::fs::read("/etc/resolv.conf").unwrap_or_default();
    std::fs::write(host_files.join("resolv.conf"), resolv)?;
    Ok(provided)
}

impl Isolation for Namespaces {
    fn name(&self) -> &'static str {
        "namespaces"
    }

    fn run(
        &self,
        root: &Path,
        scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError> {
        let setup = |source| IsolationError::Setup {
            path: scratch.to_path_buf(),
            source,
        };
        let provided = prepare_provided(root, scratch, spec).map_err(setup)?;
        let upper = scratch.join("upper");
        let work = scratch.join("work");
        let merged = scratch.join("merged");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(setup)?;
        }
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={}",
            provided.display(),
            root.display(),
            upper.display(),
            work.display()
        );
        let files = scratch.join("files");
        let mut cmd = base_command(spec);
        let cwd = spec.cwd.clone();
        let hostname = spec.hostname.clone();
        let (uid, gid) = (spec.uid, spec.gid);
        // SAFETY: between fork and exec this closure only makes system calls;
        // the intermediate process waits for the namespace's init and exits.
        unsafe {
            cmd.pre_exec(move || {
                unshare(
                    CloneFlags::CLONE_NEWNS
                        | CloneFlags::CLONE_NEWPID
                        | CloneFlags::CLONE_NEWUTS
                        | CloneFlags::CLONE_NEWIPC,
                )
                .map_err(io::Error::from)?;
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(io::Error::from)?;
                // A new pid namespace applies to children: fork once more so
                // the command is its init, and relay its exit status.
                match fork().map_err(io::Error::from)? {
                    ForkResult::Parent { child } => {
                        let code = match waitpid(child, None) {
                            Ok(WaitStatus::Exited(_, c)) => c,
                            Ok(WaitStatus::Signaled(_, s, _)) => 128 + s as i32,
                            _ => 255,
                        };
                        libc::_exit(code);
                    }
                    ForkResult::Child => {}
                }
                let _ = nix::unistd::sethostname(hostname.as_str());
                mount(
                    Some("overlay"),
                    &merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .map_err(io::Error::from)?;
                mount(
                    Some("proc"),
                    &merged.join("proc"),
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .map_err(io::Error::from)?;
                let dev = merged.join("dev");
                mount(
                    Some("tmpfs"),
                    &dev,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID,
                    Some("mode=755,size=65536k"),
                )
                .map_err(io::Error::from)?;
                for n in ["null", "zero", "full", "random", "urandom", "tty"] {
                    let t = dev.join(n);
                    std::fs::write(&t, b"")?;
                    mount(
                        Some(Path::new("/dev").join(n).as_path()),
                        &t,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(io::Error::from)?;
                }
                std::fs::create_dir_all(dev.join("shm"))?;
                let _ = mount(
                    Some("shm"),
                    &dev.join("shm"),
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                    Some("mode=1777,size=65536k"),
                );
                std::fs::create_dir_all(dev.join("pts"))?;
                let _ = mount(
                    Some("devpts"),
                    &dev.join("pts"),
                    Some("devpts"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
                    Some("newinstance,ptmxmode=0666,mode=620"),
                );
                let _ = std::os::unix::fs::symlink("/proc/self/fd", dev.join("fd"));
                let _ = std::os::unix::fs::symlink("/proc/self/fd/0", dev.join("stdin"));
                let _ = std::os::unix::fs::symlink("/proc/self/fd/1", dev.join("stdout"));
                let _ = std::os::unix::fs::symlink("/proc/self/fd/2", dev.join("stderr"));
                let sys = merged.join("sys");
                if mount(
                    Some("/sys"),
                    &sys,
                    None::<&str>,
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    None::<&str>,
                )
                .is_ok()
                {
                    let _ = mount(
                        None::<&str>,
                        &sys,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
                        None::<&str>,
                    );
                }
                for f in ["hosts", "resolv.conf", "hostname"] {
                    mount(
                        Some(files.join(f).as_path()),
                        &merged.join("etc").join(f),
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(io::Error::from)?;
                }
                chroot(&merged).map_err(io::Error::from)?;
                chdir(cwd.as_str()).map_err(io::Error::from)?;
                drop_privileges(uid, gid)
            });
        }
        let t0 = std::time::Instant::now();
        let (status, tail) = spawn_and_wait(cmd, &spec.args[0])?;
        let t1 = std::time::Instant::now();
        // The mounts died with the namespace; what the command wrote is in `upper`.
        let diff = snapshot::merge_upper(&upper, root)?;
        let _ = std::fs::remove_dir_all(scratch);
        tracing::debug!("run: command {:?}, merge {:?}", t1 - t0, t1.elapsed());
        Ok(RunOutcome { status, tail, diff })
    }
}
