//! Whole-tree moves and copies that keep what a layer records (mode,
//! owner, times, symlinks, devices): the in-place rung's stash and RUN
//! mounts staged into a step's root use them.

use kiln_layers::extract::remove_any;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Copies `src` (a directory, file or symlink) to `dst`, recursively.
pub(crate) fn copy_tree(src: &Path, dst: &Path) -> io::Result<()> {
    copy_entry(src, dst)?;
    if std::fs::symlink_metadata(src)?.is_dir() {
        for e in sorted_entries(src)? {
            copy_tree(&src.join(&e), &dst.join(&e))?;
        }
        // Children changed the directory's mtime: put it back.
        set_mtime(dst, &std::fs::symlink_metadata(src)?)?;
    }
    Ok(())
}

/// Moves `src` to `dst` (which must not exist): a rename on one
/// filesystem, else a copy and a removal.
pub(crate) fn move_tree(src: &Path, dst: &Path) -> io::Result<()> {
    match std::fs::rename(src, dst) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            copy_tree(src, dst)?;
            remove_any(src)
        }
        Err(e) => Err(e),
    }
}

/// Copies one entry (not its children) with its mode, owner and times.
pub(crate) fn copy_entry(src: &Path, dst: &Path) -> io::Result<()> {
    let m = std::fs::symlink_metadata(src)?;
    if std::fs::symlink_metadata(dst).is_ok() && !m.is_dir() {
        remove_any(dst)?;
    }
    let ft = m.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
        std::os::unix::fs::lchown(dst, Some(m.uid()), Some(m.gid()))?;
        return set_mtime(dst, &m);
    }
    if ft.is_dir() {
        if std::fs::symlink_metadata(dst).is_err() {
            std::fs::create_dir(dst)?;
        }
    } else if ft.is_file() {
        std::fs::copy(src, dst)?;
    } else {
        // fifos and devices: recreated by type.
        nix::sys::stat::mknod(
            dst,
            nix::sys::stat::SFlag::from_bits_truncate(m.mode() & libc::S_IFMT),
            nix::sys::stat::Mode::from_bits_truncate(m.mode() & 0o7777),
            m.rdev(),
        )
        .map_err(io::Error::from)?;
    }
    copy_meta(dst, &m)
}

pub(crate) fn sorted_entries(dir: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let mut v: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    v.sort();
    Ok(v)
}

pub(crate) fn mkdir_like(p: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    std::fs::create_dir(p)?;
    copy_meta(p, m)
}

/// Gives directory `p` the mode, owner and times of `m`.
pub(crate) fn copy_meta(p: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    std::os::unix::fs::lchown(p, Some(m.uid()), Some(m.gid()))?;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    set_mtime(p, m)
}

pub(crate) fn set_mtime(p: &Path, m: &std::fs::Metadata) -> io::Result<()> {
    let t = filetime::FileTime::from_last_modification_time(m);
    let a = filetime::FileTime::from_last_access_time(m);
    filetime::set_symlink_file_times(p, a, t)
}
