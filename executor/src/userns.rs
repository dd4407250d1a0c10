//! Building as a user other than root, where the kernel allows an
//! unprivileged user namespace (Kubernetes with a seccomp profile that
//! permits it, a plain Linux host, a CI runner's shell executor).
//!
//! Without root and without `CAP_SYS_ADMIN` no rung can run. The executor
//! then makes a user namespace of its own at start-up, before any thread
//! exists, in which its uid and gid are mapped to 0: it is root there, with
//! the capabilities the namespaces rung needs over namespaces it owns
//! (mounts, overlay, a pid namespace). Other ids come from the setuid
//! helpers `newuidmap` and `newgidmap` with the ranges `/etc/subuid` and
//! `/etc/subgid` give the user (as rootless BuildKit and Podman do; Kiln's
//! image ships both files and helpers): ids 1 to the range's size are then
//! usable, so `chown`, `USER` for RUN and apt's `_apt` sandbox work. Where
//! the helpers, the ranges or the setuid bit are missing or refused
//! (`no_new_privs`), the namespace holds one id (0), and a base image file
//! owned by another user, a `COPY --chown` to one, or a RUN that switches
//! user fails with an error that says so. Overlay mounts there use `userxattr` (overlayfs keeps its
//! marks in `user.overlay.*`, since `trusted.*` needs real root), and
//! roots are never stacked on warmed layers, whose marks are `trusted.*`.
//!
//! Where the namespace is refused (Docker's and containerd's default
//! seccomp profiles refuse `unshare(CLONE_NEWUSER)` without
//! `CAP_SYS_ADMIN`), the refusal and its errno join the one error that
//! says what is missing.

use kiln_layers::ids::{self, active};
use nix::sched::{unshare, CloneFlags};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

static REFUSED: OnceLock<String> = OnceLock::new();

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
    let helper = Helper::prepare(uid, gid);
    let result = unshare(CloneFlags::CLONE_NEWUSER).map_err(|e| {
        let hint = if e == nix::errno::Errno::EPERM {
            " (a seccomp profile such as Docker's or containerd's default refuses it, or \
             the kernel's user.max_user_namespaces / unprivileged_userns_clone is 0)"
        } else {
            ""
        };
        format!("unshare(CLONE_NEWUSER) refused: {e:?}{hint}")
    });
    let result = match (result, helper) {
        (Err(why), Ok(h)) => {
            h.abandon();
            Err(why)
        }
        (Err(why), Err(_)) => Err(why),
        (Ok(()), helper) => map_ids(uid, gid, helper),
    };
    match result {
        Ok((uids, gids)) => {
            ids::record(uids, gids);
            Some((uid, gid))
        }
        Err(why) => {
            let _ = REFUSED.set(why);
            None
        }
    }
}

/// A process forked before the namespace is made, still in the parent
/// namespace, that runs `newuidmap` and `newgidmap` on this one once it
/// exists: a process cannot map ids for itself from inside.
struct Helper {
    pid: nix::unistd::Pid,
    go: OwnedFd,
    answer: OwnedFd,
    ranges: (u32, u32),
}

/// The first range `/etc/subuid` or `/etc/subgid` (`text`) gives the user
/// `name` or the id `id`: (first subordinate id, count).
pub fn subordinate_range(text: &str, id: u32, name: Option<&str>) -> Option<(u64, u32)> {
    text.lines().find_map(|line| {
        let mut f = line.trim().split(':');
        let (who, start, count) = (f.next()?, f.next()?, f.next()?);
        let ours = who == id.to_string() || name.is_some_and(|n| n == who);
        let (start, count) = (start.parse::<u64>().ok()?, count.parse::<u32>().ok()?);
        (ours && count > 0 && start + u64::from(count) <= u64::from(u32::MAX))
            .then_some((start, count))
    })
}

/// The name `/etc/passwd` gives `uid` (by hand: a static executor has no
/// NSS to ask).
fn user_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|l| {
        let mut f = l.split(':');
        let name = f.next()?;
        (f.nth(1)? == uid.to_string()).then(|| name.to_string())
    })
}

/// `name` on `PATH`, else where Kiln's images and distributions put it.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            [
                "/kaniko/bin",
                "/kiln/bin",
                "/usr/bin",
                "/usr/sbin",
                "/bin",
                "/sbin",
            ]
            .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_absolute() && p.is_file())
}

impl Helper {
    /// Finds the helpers and ranges and forks the process that will run
    /// them; `Err` says why the namespace will hold one id.
    fn prepare(uid: u32, gid: u32) -> Result<Helper, String> {
        let newuidmap = find_tool("newuidmap").ok_or("no newuidmap")?;
        let newgidmap = find_tool("newgidmap").ok_or("no newgidmap")?;
        let name = std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| user_name(&p, uid));
        let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
        let (us, uc) = subordinate_range(&read("/etc/subuid"), uid, name.as_deref())
            .ok_or_else(|| format!("no range for uid {uid} in /etc/subuid"))?;
        let (gs, gc) = subordinate_range(&read("/etc/subgid"), uid, name.as_deref())
            .ok_or_else(|| format!("no range for uid {uid} in /etc/subgid"))?;
        let target = std::process::id().to_string();
        let uid_args = [
            "0",
            &uid.to_string(),
            "1",
            "1",
            &us.to_string(),
            &uc.to_string(),
        ]
        .map(String::from);
        let gid_args = [
            "0",
            &gid.to_string(),
            "1",
            "1",
            &gs.to_string(),
            &gc.to_string(),
        ]
        .map(String::from);
        let (go_r, go_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        let (ans_r, ans_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
        // SAFETY: called first in main, while the process has one thread;
        // the child only reads a pipe, runs two commands and exits.
        match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
            nix::unistd::ForkResult::Child => {
                drop((go_w, ans_r));
                let mut go = std::fs::File::from(go_r);
                let mut byte = [0u8; 1];
                let answer = match go.read(&mut byte) {
                    // 'U' or 'G' and why: which map was refused.
                    Ok(1) => match run_map(&newuidmap, &target, &uid_args) {
                        Err(why) => format!("U{why}"),
                        Ok(()) => match run_map(&newgidmap, &target, &gid_args) {
                            Err(why) => format!("G{why}"),
                            Ok(()) => String::new(),
                        },
                    },
                    // The namespace was not made: nothing to map.
                    _ => "Unot needed".to_string(),
                };
                let _ = std::fs::File::from(ans_w).write_all(answer.as_bytes());
                // SAFETY: a forked child leaves without running the
                // parent's destructors or atexit handlers.
                unsafe { libc::_exit(0) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                drop((go_r, ans_w));
                Ok(Helper {
                    pid: child,
                    go: go_w,
                    answer: ans_r,
                    ranges: (uc, gc),
                })
            }
        }
    }

    /// Ends the helper unused (the namespace was refused).
    fn abandon(self) {
        drop(self.go);
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }

    /// Has the helper map this (now unshared) process; the numbers of
    /// uids and gids mapped. On an error, the number of uids mapped if
    /// their map was written.
    fn map(self) -> Result<(u32, u32), (Option<u32>, String)> {
        let mut go = std::fs::File::from(self.go);
        let sent = go.write_all(b"g");
        drop(go);
        let mut answer = String::new();
        let _ = std::fs::File::from(self.answer).read_to_string(&mut answer);
        let _ = nix::sys::wait::waitpid(self.pid, None);
        sent.map_err(|e| (None, format!("the id-mapping helper: {e}")))?;
        match answer.chars().next() {
            None => Ok((self.ranges.0 + 1, self.ranges.1 + 1)),
            Some('G') => Err((Some(self.ranges.0 + 1), answer[1..].to_string())),
            Some(_) => Err((None, answer.get(1..).unwrap_or("").to_string())),
        }
    }
}

/// Maps ids in the namespace just made: a range through the helpers, else
/// the one id this process may map for itself.
fn map_ids(uid: u32, gid: u32, helper: Result<Helper, String>) -> Result<(u32, u32), String> {
    let write = |file: &str, text: String| {
        std::fs::write(format!("/proc/self/{file}"), text)
            .map_err(|e| format!("writing /proc/self/{file} in a new user namespace: {e}"))
    };
    match helper.map_err(|why| (None, why)).and_then(Helper::map) {
        Ok((uids, gids)) => Ok((uids, gids)),
        // The uids are mapped (the helper maps them first); the gids
        // become the one this process may map for itself.
        Err((Some(uids), why)) => {
            tracing::warn!("one gid in Kiln's user namespace: {why}");
            write("setgroups", "deny".into())?;
            write("gid_map", format!("0 {gid} 1\n"))?;
            Ok((uids, 1))
        }
        Err((None, why)) => {
            tracing::info!("one id in Kiln's user namespace: {why}");
            write("setgroups", "deny".into())?;
            write("uid_map", format!("0 {uid} 1\n"))?;
            write("gid_map", format!("0 {gid} 1\n"))?;
            Ok((1, 1))
        }
    }
}

fn run_map(tool: &Path, target: &str, args: &[String]) -> Result<(), String> {
    let out = std::process::Command::new(tool)
        .arg(target)
        .args(args)
        .output()
        .map_err(|e| format!("running {}: {e}", tool.display()))?;
    if out.status.success() {
        return Ok(());
    }
    Err(format!(
        "{} {target} {}: {} ({})",
        tool.display(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim(),
        out.status
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subordinate_ranges_by_name_or_id() {
        let text = "builder:100000:65536\n1000:200000:1000\nbad:line\n2000:x:5\n";
        assert_eq!(
            subordinate_range(text, 1000, Some("builder")),
            Some((100000, 65536))
        );
        assert_eq!(subordinate_range(text, 1000, None), Some((200000, 1000)));
        assert_eq!(subordinate_range(text, 2000, None), None);
        assert_eq!(subordinate_range(text, 3000, Some("other")), None);
        assert_eq!(subordinate_range("9:4294967290:100\n", 9, None), None);
    }

    #[test]
    fn user_names_from_passwd() {
        let p = "root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/home/b:/bin/sh\n";
        assert_eq!(user_name(p, 1000).as_deref(), Some("builder"));
        assert_eq!(user_name(p, 5), None);
    }
}
