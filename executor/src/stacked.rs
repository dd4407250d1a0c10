//! A stage root stacked on the warmer's extracted layers
//! ([`kiln_layers::lowers`]): an overlay mount whose lower directories are
//! the warmed layers (read-only: nothing the build does reaches them) and
//! whose upper directory is the build's own, so a build that changes one
//! file unpacks nothing of its base. Mounting is the executor's business
//! (the warmer only writes the directories), so it lives here, beside the
//! guard that unmounts it.

use crate::isolation::probe::Mounted;
use nix::mount::{mount, MsFlags};
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("creating {}", path.display())]
    Create {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting the warmed layers as the root {}", root.display())]
    Mount {
        root: PathBuf,
        #[source]
        source: nix::Error,
    },
}

/// Makes `upper` and `work` (new, on one filesystem) and mounts `root` as
/// an overlay of `lowers` (bottom first) under them; the returned guard
/// unmounts it.
pub fn stack(
    root: &Path,
    upper: &Path,
    work: &Path,
    lowers: &[PathBuf],
) -> Result<Mounted, StackError> {
    for d in [upper, work] {
        std::fs::create_dir(d).map_err(|source| StackError::Create {
            path: d.to_path_buf(),
            source,
        })?;
    }
    mount_stacked(root, upper, work, lowers)
}

/// Mounts `root` as an overlay: `lowers` (bottom first) read-only below,
/// `upper` and `work` (empty, on one filesystem) the build's own; the
/// returned guard unmounts it.
fn mount_stacked(
    root: &Path,
    upper: &Path,
    work: &Path,
    lowers: &[PathBuf],
) -> Result<Mounted, StackError> {
    let bad = |p: &Path| {
        p.as_os_str()
            .as_encoded_bytes()
            .iter()
            .any(|b| matches!(b, b':' | b',' | b'\\'))
    };
    let err = |source| StackError::Mount {
        root: root.to_path_buf(),
        source,
    };
    // The option string separates layers with ':' and options with ','.
    if lowers.is_empty() || lowers.iter().any(|p| bad(p)) || bad(upper) || bad(work) {
        return Err(err(nix::Error::EINVAL));
    }
    let lowerdir: Vec<String> = lowers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        lowerdir.join(":"),
        upper.display(),
        work.display()
    );
    mount(
        Some("overlay"),
        root,
        Some("overlay"),
        MsFlags::empty(),
        Some(opts.as_str()),
    )
    .map_err(err)?;
    Ok(Mounted::new(root, "the stacked root"))
}

/// Makes this process's mounts its own (a new mount namespace whose mounts do
/// not propagate back), so that a mount it makes cannot outlive it even when
/// it is killed. Best effort, and only while the process has one thread:
/// a mount namespace is per thread until then.
pub fn private_mount_namespace() -> Result<(), nix::Error> {
    let original = std::fs::File::open("/proc/self/ns/mnt")
        .map_err(|e| nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::ENOENT)))?;
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    let slave = mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_SLAVE,
        None::<&str>,
    );
    if let Err(e) = slave {
        // Mounts that would propagate back are worse than none of our own.
        nix::sched::setns(&original, nix::sched::CloneFlags::CLONE_NEWNS)?;
        return Err(e);
    }
    Ok(())
}
