//! Landlock (Linux ≥ 5.13, unprivileged, allowed by the default seccomp
//! profiles of current runtimes) for the chroot rung: a root RUN step can
//! leave a chroot (`chroot` into a subdirectory, then `..`) and read the
//! builder's credentials; confined to its root's hierarchy, it cannot.
//!
//! Why not the in-place rung: there the step's root *is* the container's
//! `/`, and Landlock can only allow hierarchies, never carve one out of an
//! allowed one — protecting `/kaniko/.docker` would mean taking every right
//! on `/` itself away, so a step could not read what it creates under a new
//! top-level directory. The namespaces rung needs nothing: the step's mount
//! namespace has only its own root. Written with raw system calls because
//! the restriction happens between fork and exec, where nothing may
//! allocate.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

const CREATE_RULESET_VERSION: u32 = 1;
const RULE_PATH_BENEATH: u32 = 1;

#[repr(C)]
struct RulesetAttr {
    handled_access_fs: u64,
}

#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: i32,
}

/// Every filesystem right the kernel's Landlock ABI knows.
fn all_fs_rights(abi: i64) -> u64 {
    match abi {
        i64::MIN..=0 => 0,
        1 => (1 << 13) - 1,
        2 => (1 << 14) - 1,
        3 | 4 => (1 << 15) - 1,
        _ => (1 << 16) - 1,
    }
}

/// A ruleset that allows everything beneath one directory and nothing
/// else, ready to be applied in a child with [`restrict_self`].
pub struct Confinement(OwnedFd);

impl Confinement {
    /// `Err` says why Landlock is not available (kernel, seccomp profile).
    pub fn beneath(root: &Path) -> io::Result<Confinement> {
        // SAFETY: the version query takes no pointer.
        let abi = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                std::ptr::null::<RulesetAttr>(),
                0usize,
                CREATE_RULESET_VERSION,
            )
        };
        if abi < 1 {
            return Err(io::Error::last_os_error());
        }
        let rights = all_fs_rights(abi);
        let attr = RulesetAttr {
            handled_access_fs: rights,
        };
        // SAFETY: attr is a valid ruleset attribute of the size passed.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_landlock_create_ruleset,
                &attr as *const RulesetAttr,
                std::mem::size_of::<RulesetAttr>(),
                0u32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this descriptor to us.
        let ruleset = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
        let dir = std::fs::File::open(root)?;
        let beneath = PathBeneathAttr {
            allowed_access: rights,
            parent_fd: dir.as_raw_fd(),
        };
        // SAFETY: valid descriptors and a rule of the documented layout.
        let r = unsafe {
            libc::syscall(
                libc::SYS_landlock_add_rule,
                ruleset.as_raw_fd(),
                RULE_PATH_BENEATH,
                &beneath as *const PathBeneathAttr,
                0u32,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Confinement(ruleset))
    }

    pub fn raw(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Applies a ruleset to the calling process: only system calls, for use
/// between fork and exec. `no_new_privs` is required without
/// `CAP_SYS_ADMIN`; it is set only for steps running as root, which gain
/// nothing from set-uid programs anyway.
pub fn restrict_self(ruleset: RawFd) -> io::Result<()> {
    // SAFETY: prctl and landlock_restrict_self with integer arguments.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, 0u32) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Where the kernel offers Landlock: a confined child reads inside its
    /// directory and is refused outside it.
    #[test]
    fn a_confined_child_cannot_read_outside_its_root() {
        let inside = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(inside.path().join("in"), "in").unwrap();
        std::fs::write(outside.path().join("secret"), "s").unwrap();
        // The machine's kernel (6.x) has Landlock: not having it is a failure.
        let c = Confinement::beneath(inside.path()).expect("Landlock on this kernel");
        let fd = c.raw();
        // A static busybox inside the allowed tree: nothing outside it runs.
        let bb = inside.path().join("busybox");
        std::fs::copy("/bin/busybox", &bb).unwrap();
        let mut cmd = std::process::Command::new(&bb);
        cmd.arg("cat")
            .arg(inside.path().join("in"))
            .arg(outside.path().join("secret"));
        // SAFETY: only system calls between fork and exec.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || restrict_self(fd));
        }
        let out = cmd.output().unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "in");
        assert!(String::from_utf8_lossy(&out.stderr).contains("ermission denied"));
    }
}
