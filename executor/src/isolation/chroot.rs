//! The last rung: `chroot(2)` into the private root, for containers whose own
//! `/` is read-only. Nothing can be mounted here, so what a step needs besides
//! the image is put into the root around the step and taken out again:
//! a fresh `/dev` (device nodes by `mknod` where `CAP_MKNOD` allows; else a
//! regular file stands in for `/dev/null`, which keeps `> /dev/null`
//! working), and the pod's `/etc/hosts`, `/etc/resolv.conf` and
//! `/etc/hostname`. The image's own versions are moved aside and put back,
//! and those paths never enter the diff. There is no `/proc`.

use super::probe::{Environment, CAP_MKNOD};
use super::provided::{etc_files, DEVICES};
use super::spawn::wait_for;
use super::spawner::start_in;
use super::supervise::Report;
use super::{Isolation, IsolationError, RunOutcome, RunSpec};
use crate::snapshot::RootWatches;
use kiln_layers::extract::remove_any;
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub struct Chroot {
    mknod: bool,
    /// Landlock's absence is said once per build, not once per step.
    landlock_warned: std::sync::atomic::AtomicBool,
    /// Each stage root's index, kept current from step to step.
    watches: RootWatches,
}

impl Chroot {
    /// Device nodes need `CAP_MKNOD`, and a work directory not mounted
    /// `nodev` (Docker's `--tmpfs` default), where they could not be opened.
    pub fn new(env: &Environment, build_dir: &Path, full_walks: bool) -> Chroot {
        let nodev = nix::sys::statvfs::statvfs(build_dir)
            .is_ok_and(|s| s.flags().contains(nix::sys::statvfs::FsFlags::ST_NODEV));
        Chroot {
            mknod: env.has_cap(CAP_MKNOD) && !nodev,
            landlock_warned: std::sync::atomic::AtomicBool::new(false),
            watches: RootWatches::new(full_walks),
        }
    }

    fn warn_once(&self, e: &std::io::Error) {
        if !self
            .landlock_warned
            .swap(true, std::sync::atomic::Ordering::Relaxed)
        {
            tracing::warn!(
                "Landlock is not available ({e}): a RUN step as root could leave its chroot"
            );
        }
    }
}

const ETC_FILES: [&str; 3] = ["etc/hosts", "etc/hostname", "etc/resolv.conf"];

/// Paths the chroot rung provides; never part of a diff. `/dev` is wholly the
/// rung's (Docker mounts a tmpfs there during RUN: nothing under it persists).
fn provided_path(rel: &Path) -> bool {
    rel.starts_with("dev") || ETC_FILES.iter().any(|f| rel == Path::new(f))
}

/// What was changed in the root to provide the step's environment, and how
/// to put the image's own files back.
struct Provided {
    root: PathBuf,
    saved: PathBuf,
    /// `etc`'s mtime before and right after the files were put in: if the
    /// step leaves it alone, the original is restored.
    etc_times: Option<(filetime::FileTime, filetime::FileTime)>,
    created_etc: bool,
}

fn mtime(p: &Path) -> Option<filetime::FileTime> {
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| filetime::FileTime::from_last_modification_time(&m))
}

impl Provided {
    fn install(
        root: &Path,
        scratch: &Path,
        spec: &RunSpec,
        mknod_ok: bool,
    ) -> io::Result<Provided> {
        let saved = scratch.join("saved");
        std::fs::create_dir_all(saved.join("etc"))?;
        let dev = root.join("dev");
        if std::fs::symlink_metadata(&dev).is_ok() {
            std::fs::rename(&dev, saved.join("dev"))?;
        }
        std::fs::create_dir(&dev)?;
        std::fs::set_permissions(&dev, std::fs::Permissions::from_mode(0o755))?;
        for (name, major, minor) in DEVICES {
            let p = dev.join(name);
            let made = mknod_ok
                && mknod(
                    &p,
                    SFlag::S_IFCHR,
                    Mode::from_bits_truncate(0o666),
                    makedev(major, minor),
                )
                .is_ok();
            if made {
                // mknod obeys the umask.
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666))?;
            } else if name == "null" {
                std::fs::write(&p, b"")?;
                std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666))?;
            }
        }
        let shm = dev.join("shm");
        std::fs::create_dir(&shm)?;
        std::fs::set_permissions(&shm, std::fs::Permissions::from_mode(0o1777))?;
        for (name, target) in [
            ("fd", "/proc/self/fd"),
            ("stdin", "/proc/self/fd/0"),
            ("stdout", "/proc/self/fd/1"),
            ("stderr", "/proc/self/fd/2"),
        ] {
            std::os::unix::fs::symlink(target, dev.join(name))?;
        }
        let etc = root.join("etc");
        let created_etc = std::fs::symlink_metadata(&etc).is_err();
        if created_etc {
            std::fs::create_dir(&etc)?;
        }
        let before = mtime(&etc);
        for (name, content) in etc_files(&spec.hostname) {
            let p = etc.join(name);
            if std::fs::symlink_metadata(&p).is_ok() {
                std::fs::rename(&p, saved.join("etc").join(name))?;
            }
            std::fs::write(&p, content)?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644))?;
        }
        let etc_times = before.zip(mtime(&etc));
        Ok(Provided {
            root: root.to_path_buf(),
            saved,
            etc_times,
            created_etc,
        })
    }

    fn remove(self) -> io::Result<()> {
        let dev = self.root.join("dev");
        remove_any(&dev)?;
        if std::fs::symlink_metadata(self.saved.join("dev")).is_ok() {
            std::fs::rename(self.saved.join("dev"), &dev)?;
        }
        let etc = self.root.join("etc");
        let after_step = mtime(&etc);
        for f in ["hosts", "hostname", "resolv.conf"] {
            let p = etc.join(f);
            let _ = remove_any(&p);
            let s = self.saved.join("etc").join(f);
            if std::fs::symlink_metadata(&s).is_ok() {
                std::fs::rename(&s, &p)?;
            }
        }
        if self.created_etc && std::fs::read_dir(&etc)?.next().is_none() {
            std::fs::remove_dir(&etc)?;
        } else if let (Some((before, installed)), Some(after)) = (self.etc_times, after_step) {
            // Keep the directory's time as the step left it: the original if
            // the step did not touch /etc.
            let t = if after == installed { before } else { after };
            filetime::set_file_mtime(&etc, t)?;
        }
        Ok(())
    }
}

impl Isolation for Chroot {
    fn name(&self) -> &'static str {
        "chroot"
    }

    fn run(
        &self,
        root: &Path,
        scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError> {
        let setup = IsolationError::setup(root);
        let provided = Provided::install(root, scratch, spec, self.mknod).map_err(setup)?;
        let baseline = self.watches.begin(root, root, &provided_path, &[])?;
        // A root step could leave the chroot; Landlock keeps it in its root.
        let confinement = match spec.uid {
            0 => match super::landlock::Confinement::beneath(root) {
                Ok(c) => Some(c),
                Err(e) => {
                    self.warn_once(&e);
                    None
                }
            },
            _ => None,
        };
        let fd = confinement.as_ref().map(|c| c.raw());
        let spawned = Report::new().map_err(setup).and_then(|report| {
            start_in(spec, Some(root), fd, report.fd())
                .and_then(|started| wait_for(started, &spec.args[0], &report))
        });
        drop(confinement);
        let changes = self.watches.finish(baseline, root, &provided_path, &[]);
        provided.remove().map_err(setup)?;
        let (status, tail) = spawned?;
        Ok(RunOutcome {
            status,
            tail,
            diff: self.watches.keep(changes?),
        })
    }
}
