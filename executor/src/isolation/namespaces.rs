//! The full rung: new mount, pid, uts and ipc namespaces (and a network
//! namespace with only loopback for `--network=none`); the root is the
//! lower layer of an overlay whose upper directory *is* the step's diff, so
//! snapshot cost follows the size of the change. /proc, a minimal /dev, a
//! read-only /sys, /etc/hosts, /etc/resolv.conf and /etc/hostname are
//! provided by mounts that never reach the image.

use super::network::{loopback_up, Network};
use super::provided::{etc_files, DEVICES};
use super::spawn::{base_command, drop_privileges, wait_for, Started};
use super::supervise::{fork_supervisor, Report};
use super::{Isolation, IsolationError, RunOutcome, RunSpec};
use crate::snapshot;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::unistd::{chdir, chroot};
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

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
    for (name, content) in etc_files(&spec.hostname) {
        std::fs::write(host_files.join(name), content)?;
    }
    Ok(provided)
}

impl Isolation for Namespaces {
    fn name(&self) -> &'static str {
        "namespaces"
    }

    fn stacks_on_overlay(&self) -> bool {
        true
    }

    fn run(
        &self,
        root: &Path,
        scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError> {
        if !kiln_layers::ids::holds(spec.uid, spec.gid) {
            return Err(IsolationError::Unavailable {
                rung: "namespaces",
                why: format!(
                    "RUN as {}:{}: {}",
                    spec.uid,
                    spec.gid,
                    kiln_layers::ids::limit(spec.uid, spec.gid)
                ),
            });
        }
        let setup = IsolationError::setup(scratch);
        let provided = prepare_provided(root, scratch, spec).map_err(setup)?;
        let upper = scratch.join("upper");
        let work = scratch.join("work");
        let merged = scratch.join("merged");
        for d in [&upper, &work, &merged] {
            std::fs::create_dir_all(d).map_err(setup)?;
        }
        let opts = format!(
            "lowerdir={}:{},upperdir={},workdir={}{}",
            provided.display(),
            root.display(),
            upper.display(),
            work.display(),
            crate::userns::overlay_options()
        );
        let files = scratch.join("files");
        // Each live socket, bound from the root over its overlay view.
        let sockets: Vec<(PathBuf, PathBuf)> = spec
            .sockets
            .iter()
            .map(|s| {
                let rel = s.trim_start_matches('/');
                (root.join(rel), merged.join(rel))
            })
            .collect();
        let tmpfs: Vec<(PathBuf, String)> = spec
            .tmpfs
            .iter()
            .map(|(t, size)| {
                let opts = match size {
                    Some(n) => format!("mode=1777,size={n}"),
                    None => "mode=1777".to_string(),
                };
                (merged.join(t.trim_start_matches('/')), opts)
            })
            .collect();
        let report = Report::new().map_err(setup)?;
        let report_fd = report.fd();
        let mut cmd = base_command(spec);
        let cwd = spec.cwd.clone();
        let hostname = spec.hostname.clone();
        let (uid, gid) = (spec.uid, spec.gid);
        // `--network=none`: a network namespace of its own, loopback only.
        let net = match spec.network {
            Network::None => CloneFlags::CLONE_NEWNET,
            Network::Default => CloneFlags::empty(),
        };
        // SAFETY: between fork and exec this closure only makes system calls;
        // the intermediate process and the namespace's init become
        // supervisors (`fork_supervisor`) and exit with the step.
        unsafe {
            cmd.pre_exec(move || {
                unshare(
                    CloneFlags::CLONE_NEWNS
                        | CloneFlags::CLONE_NEWPID
                        | CloneFlags::CLONE_NEWUTS
                        | CloneFlags::CLONE_NEWIPC
                        | net,
                )
                .map_err(io::Error::from)?;
                if !net.is_empty() {
                    loopback_up()?;
                }
                mount(
                    None::<&str>,
                    "/",
                    None::<&str>,
                    MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                    None::<&str>,
                )
                .map_err(io::Error::from)?;
                // A new pid namespace applies to children: fork once more;
                // this process stays outside as a supervisor relaying the
                // exit status, its child is the namespace's init.
                fork_supervisor(report_fd)?;
                let _ = nix::unistd::sethostname(hostname.as_str());
                mount(
                    Some("overlay"),
                    &merged,
                    Some("overlay"),
                    MsFlags::empty(),
                    Some(opts.as_str()),
                )
                .map_err(io::Error::from)?;
                let proc = merged.join("proc");
                // A fresh proc for the new pid namespace; inside a user
                // namespace under a runtime that masks parts of /proc the
                // kernel refuses that, and the container's own is bound.
                if mount(
                    Some("proc"),
                    &proc,
                    Some("proc"),
                    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                    None::<&str>,
                )
                .is_err()
                {
                    mount(
                        Some("/proc"),
                        &proc,
                        None::<&str>,
                        MsFlags::MS_BIND | MsFlags::MS_REC,
                        None::<&str>,
                    )
                    .map_err(io::Error::from)?;
                }
                let dev = merged.join("dev");
                mount(
                    Some("tmpfs"),
                    &dev,
                    Some("tmpfs"),
                    MsFlags::MS_NOSUID,
                    Some("mode=755,size=65536k"),
                )
                .map_err(io::Error::from)?;
                for (n, _, _) in DEVICES {
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
                for (from, to) in &sockets {
                    mount(
                        Some(from.as_path()),
                        to,
                        None::<&str>,
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                    .map_err(io::Error::from)?;
                }
                for (at, opts) in &tmpfs {
                    mount(
                        Some("tmpfs"),
                        at,
                        Some("tmpfs"),
                        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
                        Some(opts.as_str()),
                    )
                    .map_err(io::Error::from)?;
                }
                chroot(&merged).map_err(io::Error::from)?;
                chdir(cwd.as_str()).map_err(io::Error::from)?;
                // The init supervises the step inside the namespace, so
                // what it leaves is counted as on the other rungs.
                fork_supervisor(report_fd)?;
                drop_privileges(uid, gid)
            });
        }
        let t0 = std::time::Instant::now();
        let started = Started::spawn(cmd, &spec.args[0])?;
        let (status, tail) = wait_for(started, &spec.args[0], &report)?;
        let t1 = std::time::Instant::now();
        // The mounts died with the namespace; what the command wrote is in `upper`.
        let diff = snapshot::merge_upper(&upper, root)?;
        let _ = std::fs::remove_dir_all(scratch);
        tracing::debug!("run: command {:?}, merge {:?}", t1 - t0, t1.elapsed());
        Ok(RunOutcome { status, tail, diff })
    }
}
