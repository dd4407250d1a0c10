//! What this process may do, found by asking the kernel, so that the chosen
//! rung and the reasons against the others name concrete causes: a missing
//! capability, a refused syscall and its errno, a filesystem that cannot host
//! an overlay.

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{fork, ForkResult};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// Capability numbers from `linux/capability.h` that the rungs care about.
pub const CAP_MKNOD: u32 = 27;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_SYS_CHROOT: u32 = 18;
pub const CAP_SETUID: u32 = 7;
pub const CAP_SETGID: u32 = 6;

const OVERLAYFS_SUPER_MAGIC: i64 = 0x794c_7630;

/// Facts about the process and its container, read once per build.
#[derive(Debug, Clone)]
pub struct Environment {
    pub euid: u32,
    /// The effective capability set (`CapEff` in /proc/self/status).
    pub caps: u64,
    /// Whether this looks like a container (Docker's `/.dockerenv`,
    /// Podman/CRI-O's `/run/.containerenv`, a Kubernetes pod's environment).
    pub in_container: bool,
}

impl Environment {
    pub fn read() -> Environment {
        let caps = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("CapEff:"))
                    .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            })
            .unwrap_or(0);
        let in_container = Path::new("/.dockerenv").exists()
            || Path::new("/run/.containerenv").exists()
            || std::env::var_os("KUBERNETES_SERVICE_HOST").is_some()
            || std::env::var_os("container").is_some();
        Environment {
            euid: nix::unistd::geteuid().as_raw(),
            caps,
            in_container,
        }
    }

    pub fn has_cap(&self, cap: u32) -> bool {
        self.caps & (1u64 << cap) != 0
    }

    /// What would make a build possible, for the error when no rung works.
    pub fn remedy(&self) -> String {
        if self.euid != 0 {
            let tried = crate::userns::refused()
                .map(|why| format!(" A user namespace of its own was tried: {why}."))
                .unwrap_or_default();
            format!(
                "Kiln runs as uid {} without the capabilities a build needs.{tried} Any one of \
                 these makes it work: run the build container as root (Kubernetes \
                 securityContext.runAsUser: 0, `docker run -u 0`); or run it in a user namespace \
                 (Kubernetes `hostUsers: false`, rootless Docker or Podman), or with a seccomp \
                 profile that allows unshare and mount (then Kiln makes a user namespace itself); \
                 or add CAP_SYS_ADMIN",
                self.euid
            )
        } else {
            "Any one of these makes it work: a writable root filesystem (drop --read-only / \
             readOnlyRootFilesystem) for the in-place rung; CAP_SYS_CHROOT for the chroot rung; \
             CAP_SYS_ADMIN for the namespaces rung"
                .to_string()
        }
    }
}

fn errno_name(e: nix::errno::Errno) -> String {
    format!("{e:?}")
}

/// A mount this process made for a build (a tmpfs over the build
/// directory, a root stacked on warmed layers); unmounted (lazily: nothing
/// may still use it after the build) when dropped.
#[derive(Debug)]
pub struct Mounted {
    path: PathBuf,
    /// What it is, for the warning if unmounting fails.
    what: &'static str,
}

impl Mounted {
    /// Takes charge of the mount just made at `path`.
    pub(crate) fn new(path: &Path, what: &'static str) -> Mounted {
        Mounted {
            path: path.to_path_buf(),
            what,
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Err(e) = umount2(&self.path, MntFlags::MNT_DETACH) {
            tracing::warn!("unmounting {} {}: {e}", self.what, self.path.display());
        }
    }
}

fn fs_type(p: &Path) -> Option<i64> {
    nix::sys::statfs::statfs(p)
        .ok()
        .map(|s| s.filesystem_type().0)
}

/// Checks that namespaces and an overlay with its upper dir in `build_dir`
/// work. When `build_dir` is on overlayfs, mounts a tmpfs over it first (an
/// overlay's upper dir cannot live on overlayfs) and returns that mount.
pub fn namespaces(build_dir: &Path, env: &Environment) -> Result<Option<Mounted>, String> {
    let on_overlay = fs_type(build_dir) == Some(OVERLAYFS_SUPER_MAGIC);
    if on_overlay {
        // Try namespaces alone first: their refusal is the better reason.
        overlay_probe(None, env)?;
        mount(
            Some("tmpfs"),
            build_dir,
            Some("tmpfs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0700"),
        )
        .map_err(|e| {
            format!(
                "work directory {} is on overlayfs, which cannot hold an overlay's upper dir, \
                 and mounting a tmpfs there was refused: {}",
                build_dir.display(),
                errno_name(e)
            )
        })?;
        let guard = Mounted::new(build_dir, "the build's tmpfs");
        overlay_probe(Some(build_dir), env)?;
        return Ok(Some(guard));
    }
    overlay_probe(Some(build_dir), env).map(|()| None)
}

/// Steps of the probe, reported by the child through a pipe.
const STEPS: [&str; 4] = [
    "",
    "unshare(CLONE_NEWNS|CLONE_NEWPID|CLONE_NEWUTS|CLONE_NEWIPC)",
    "mount(/, MS_REC|MS_PRIVATE)",
    "mount(overlay)",
];

/// Runs the probe in a throwaway child: unshare, make mounts private and,
/// with `dir`, mount an overlay whose upper dir is in `dir`.
fn overlay_probe(dir: Option<&Path>, env: &Environment) -> Result<(), String> {
    let t = match dir {
        Some(d) => Some(
            tempfile::tempdir_in(d)
                .map_err(|e| format!("creating a probe directory in {}: {e}", d.display()))?,
        ),
        None => None,
    };
    let mut opts = String::new();
    let mut target = PathBuf::new();
    if let Some(t) = &t {
        for d in ["l", "u", "w", "m"] {
            std::fs::create_dir(t.path().join(d)).map_err(|e| e.to_string())?;
        }
        opts = format!(
            "lowerdir={},upperdir={},workdir={}{}",
            t.path().join("l").display(),
            t.path().join("u").display(),
            t.path().join("w").display(),
            crate::userns::overlay_options()
        );
        target = t.path().join("m");
    }
    let (mut rd, wr) = std::io::pipe().map_err(|e| e.to_string())?;
    let with_overlay = t.is_some();
    // SAFETY: the child only makes system calls and exits.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            drop(rd);
            let report = |step: u8, e: nix::errno::Errno| -> ! {
                let b = [step, e as i32 as u8];
                unsafe {
                    libc::write(wr.as_raw_fd(), b.as_ptr().cast(), 2);
                    libc::_exit(1)
                }
            };
            if let Err(e) = unshare(
                CloneFlags::CLONE_NEWNS
                    | CloneFlags::CLONE_NEWPID
                    | CloneFlags::CLONE_NEWUTS
                    | CloneFlags::CLONE_NEWIPC,
            ) {
                report(1, e)
            }
            if let Err(e) = mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            ) {
                report(2, e)
            }
            if with_overlay {
                if let Err(e) = mount(
                    Some("overlay"),
                    &target,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                ) {
                    report(3, e)
                }
            }
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(wr);
            let mut b = Vec::new();
            let _ = rd.read_to_end(&mut b);
            match (waitpid(child, None), b.as_slice()) {
                (Ok(WaitStatus::Exited(_, 0)), _) => Ok(()),
                (_, [step, errno]) => {
                    let e = nix::errno::Errno::from_raw(i32::from(*errno));
                    let what = STEPS.get(usize::from(*step)).copied().unwrap_or("probe");
                    let why = match (*step, e) {
                        (1 | 2, nix::errno::Errno::EPERM) if !env.has_cap(CAP_SYS_ADMIN) => {
                            " (CAP_SYS_ADMIN is not in the effective capability set)".to_string()
                        }
                        (1 | 2, nix::errno::Errno::EPERM) => {
                            " (CAP_SYS_ADMIN is present: a seccomp profile or an LSM refused it)"
                                .to_string()
                        }
                        (3, _) => format!(
                            " (upper dir on filesystem type {:#x})",
                            dir.and_then(fs_type).unwrap_or(0)
                        ),
                        _ => String::new(),
                    };
                    Err(format!("{what} refused: {}{why}", errno_name(e)))
                }
                (s, _) => Err(format!("probe child ended with {s:?}")),
            }
        }
        Err(e) => Err(format!("fork: {}", errno_name(e))),
    }
}

/// Whether the chroot rung can run: it needs `chroot(2)`.
pub fn chroot(env: &Environment) -> Result<(), String> {
    if env.has_cap(CAP_SYS_CHROOT) {
        Ok(())
    } else {
        Err("CAP_SYS_CHROOT is not in the effective capability set".into())
    }
}
