//! Building as a user other than root, where the kernel allows an
//! unprivileged user namespace (Kubernetes with a seccomp profile that
//! permits it, a plain Linux host, a CI runner's shell executor).
//!
//! Without root and without `CAP_SYS_ADMIN` no rung can run. The executor
//! then makes a user namespace of its own at start-up, before any thread
//! exists, in which its uid and gid are mapped to 0: it is root there, with
//! the capabilities the namespaces rung needs over namespaces it owns
//! (mounts, overlay, a pid namespace). What it cannot have is other ids:
//! mapping a range needs the setuid `newuidmap` helper, which restricted
//! containers do not have. So a base image file owned by another user, a
//! `COPY --chown` to one, or a RUN that switches user fails with an error
//! that says so. Overlay mounts there use `userxattr` (overlayfs keeps its
//! marks in `user.overlay.*`, since `trusted.*` needs real root), and
//! roots are never stacked on warmed layers, whose marks are `trusted.*`.
//!
//! Where the namespace is refused (Docker's and containerd's default
//! seccomp profiles refuse `unshare(CLONE_NEWUSER)` without
//! `CAP_SYS_ADMIN`), the refusal and its errno join the one error that
//! says what is missing.

use nix::sched::{unshare, CloneFlags};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

static ACTIVE: AtomicBool = AtomicBool::new(false);
static REFUSED: OnceLock<String> = OnceLock::new();

/// Why an id other than 0 cannot be used there, for errors that meet one.
pub const ONE_ID: &str = "as a user other than root Kiln builds in a user namespace of its own, \
    which holds one id (0); build as root, or where the runtime gives the container a range of \
    ids (Kubernetes hostUsers: false, rootless Podman or Docker)";

/// Whether this process runs in the user namespace [`enter_if_needed`] made.
pub fn active() -> bool {
    ACTIVE.load(Ordering::Relaxed)
}

/// Why the namespace could not be made, when [`enter`] tried and failed.
pub fn refused() -> Option<&'static str> {
    REFUSED.get().map(String::as_str)
}

/// The xattr overlayfs marks an opaque directory with, as mounted here.
pub fn overlay_opaque_xattr() -> &'static str {
    if active() {
        "user.overlay.opaque"
    } else {
        "trusted.overlay.opaque"
    }
}

/// Whether `name` is one of overlayfs's own xattrs (never part of a layer).
pub fn is_overlay_xattr(name: &str) -> bool {
    name.starts_with("trusted.overlay.") || (active() && name.starts_with("user.overlay."))
}

/// Extra overlay mount options for this process (`,userxattr` in the
/// namespace).
pub fn overlay_options() -> &'static str {
    if active() {
        ",userxattr"
    } else {
        ""
    }
}

/// Enters a user namespace of its own when this process can build nothing
/// otherwise: not root, no `CAP_SYS_ADMIN`. Returns the ids now mapped to
/// 0, or `None` when nothing was needed or it was refused ([`refused`]
/// says why). Call it first in `main`, while the process has one thread:
/// the kernel refuses `CLONE_NEWUSER` to a multithreaded process.
/// `privileged`: the process is root or holds `CAP_SYS_ADMIN` (the caller
/// reads that, so this process-wide state depends on no isolation code).
pub fn enter_if_needed(privileged: bool) -> Option<(u32, u32)> {
    if privileged {
        return None;
    }
    let (uid, gid) = (
        nix::unistd::geteuid().as_raw(),
        nix::unistd::getegid().as_raw(),
    );
    let result = unshare(CloneFlags::CLONE_NEWUSER)
        .map_err(|e| {
            let hint = if e == nix::errno::Errno::EPERM {
                " (a seccomp profile such as Docker's or containerd's default refuses it, or \
                 the kernel's user.max_user_namespaces / unprivileged_userns_clone is 0)"
            } else {
                ""
            };
            format!("unshare(CLONE_NEWUSER) refused: {e:?}{hint}")
        })
        .and_then(|()| {
            let write = |file: &str, text: String| {
                std::fs::write(format!("/proc/self/{file}"), text)
                    .map_err(|e| format!("writing /proc/self/{file} in a new user namespace: {e}"))
            };
            write("setgroups", "deny".into())?;
            write("uid_map", format!("0 {uid} 1\n"))?;
            write("gid_map", format!("0 {gid} 1\n"))
        });
    match result {
        Ok(()) => {
            ACTIVE.store(true, Ordering::Relaxed);
            Some((uid, gid))
        }
        Err(why) => {
            let _ = REFUSED.set(why);
            None
        }
    }
}
