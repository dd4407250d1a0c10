//! What a build step changed, as a [`Diff`] of image paths.
//!
//! Two ways to get one: read an overlayfs upper directory (cost grows with the
//! change, not the root) and merge it into the root; or compare the root with a
//! stat index taken before the step (the in-place and chroot rungs, where no
//! overlay can be mounted) — kept current by inotify from step to step
//! ([`RootWatch`]) so that its cost, too, follows the change. COPY/ADD record
//! what they write directly.

mod scan;
mod step;
mod watch;

pub use scan::ScanIndex;
pub use step::{Baseline, Changes, RootWatches};
pub use watch::{RootWatch, Walk};

use kiln_layers::extract::remove_any;
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot of {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> SnapshotError + '_ {
    move |source| SnapshotError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Present in the root after the step (new or modified); its content and
    /// metadata are read from the root when the layer is written.
    Add,
    /// Removed: a whiteout in the layer.
    Delete,
    /// A directory whose earlier content is hidden (an opaque whiteout), and
    /// which is itself present.
    Opaque,
}

/// Changes keyed by relative image path; the map's order puts parents first.
#[derive(Debug, Default, Clone)]
pub struct Diff {
    pub changes: BTreeMap<PathBuf, Change>,
    /// Regular files whose content the layer reads from another file (a
    /// COPY source) because the root holds only a placeholder of the right
    /// size: see [`crate::copy::CopyOptions::defer_contents`].
    pub contents: BTreeMap<PathBuf, PathBuf>,
}

impl Diff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    pub fn add(&mut self, rel: PathBuf, c: Change) {
        self.contents.remove(&rel);
        self.changes.insert(rel, c);
    }

    /// A regular file added with its content still in `source`.
    pub fn add_with_content(&mut self, rel: PathBuf, source: PathBuf) {
        self.changes.insert(rel.clone(), Change::Add);
        self.contents.insert(rel, source);
    }

    /// Adds the parent directories of every change so that the layer carries
    /// their metadata, as Docker's layers do.
    pub fn with_parents(mut self) -> Diff {
        let mut parents = Vec::new();
        for p in self.changes.keys() {
            let mut cur = p.parent();
            while let Some(d) = cur {
                if d.as_os_str().is_empty() {
                    break;
                }
                parents.push(d.to_path_buf());
                cur = d.parent();
            }
        }
        for d in parents {
            self.changes.entry(d).or_insert(Change::Add);
        }
        self
    }

    pub fn merge(&mut self, other: Diff) {
        for (p, c) in other.changes {
            self.add(p, c);
        }
        self.contents.extend(other.contents);
    }
}

/// Reads an overlay upper dir into a diff, then moves its content into `root`
/// (renames within one filesystem: cheap, hardlinks preserved; a copy when
/// the root is an overlay mount of its own, see [`crate::lowers`]).
pub fn merge_upper(upper: &Path, root: &Path) -> Result<Diff, SnapshotError> {
    let mut diff = Diff::default();
    let mut links = HashMap::new();
    walk_upper(upper, Path::new(""), &mut diff)?;
    // Apply in path order: parents first.
    let mut skip_under: Option<PathBuf> = None;
    for (rel, change) in &diff.changes {
        if let Some(s) = &skip_under {
            if rel.starts_with(s) {
                continue;
            }
            skip_under = None;
        }
        let src = upper.join(rel);
        let dst = root.join(rel);
        match change {
            Change::Delete => remove_any(&dst).map_err(io_err(&dst))?,
            Change::Opaque => {
                remove_any(&dst).map_err(io_err(&dst))?;
                move_into(&src, &dst, &mut links).map_err(io_err(&dst))?;
                strip_overlay_xattrs_tree(&dst);
                skip_under = Some(rel.clone());
            }
            Change::Add => {
                let sm = std::fs::symlink_metadata(&src).map_err(io_err(&src))?;
                let dm = std::fs::symlink_metadata(&dst).ok();
                if sm.is_dir() && dm.as_ref().is_some_and(|m| m.is_dir()) {
                    copy_dir_metadata(&src, &dst, &sm).map_err(io_err(&dst))?;
                } else {
                    remove_any(&dst).map_err(io_err(&dst))?;
                    move_into(&src, &dst, &mut links).map_err(io_err(&dst))?;
                    strip_overlay_xattrs_tree(&dst);
                    if sm.is_dir() {
                        skip_under = Some(rel.clone());
                    }
                }
            }
        }
    }
    Ok(diff)
}

/// Hardlinked files already copied, by (device, inode): their first copy.
type Links = HashMap<(u64, u64), PathBuf>;

/// Moves `src` to `dst`: a rename, or where they are on different
/// filesystems a copy that keeps owners, modes, times, xattrs (overlayfs's
/// own excepted) and the hardlinks among the moved files.
fn move_into(src: &Path, dst: &Path, links: &mut Links) -> io::Result<()> {
    match std::fs::rename(src, dst) {
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => copy_tree(src, dst, links),
        r => r,
    }
}

fn copy_tree(src: &Path, dst: &Path, links: &mut Links) -> io::Result<()> {
    use nix::sys::stat::{mknod, Mode, SFlag};
    use std::os::unix::fs::PermissionsExt;
    let m = std::fs::symlink_metadata(src)?;
    let ft = m.file_type();
    if ft.is_file() && m.nlink() > 1 {
        if let Some(first) = links.get(&(m.dev(), m.ino())) {
            return std::fs::hard_link(first, dst);
        }
        links.insert((m.dev(), m.ino()), dst.to_path_buf());
    }
    if ft.is_dir() {
        std::fs::create_dir(dst)?;
        for e in std::fs::read_dir(src)? {
            let e = e?;
            copy_tree(&e.path(), &dst.join(e.file_name()), links)?;
        }
    } else if ft.is_file() {
        std::fs::copy(src, dst)?;
    } else if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(src)?, dst)?;
    } else {
        let kind = if ft.is_char_device() {
            SFlag::S_IFCHR
        } else if ft.is_block_device() {
            SFlag::S_IFBLK
        } else if ft.is_fifo() {
            SFlag::S_IFIFO
        } else {
            SFlag::S_IFSOCK
        };
        mknod(dst, kind, Mode::from_bits_truncate(m.mode()), m.rdev()).map_err(io::Error::from)?;
    }
    copy_xattrs(src, dst)?;
    nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        dst,
        Some(nix::unistd::Uid::from_raw(m.uid())),
        Some(nix::unistd::Gid::from_raw(m.gid())),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)?;
    if !ft.is_symlink() {
        // After chown, which clears setuid bits.
        std::fs::set_permissions(dst, std::fs::Permissions::from_mode(m.mode() & 0o7777))?;
    }
    let t = filetime::FileTime::from_last_modification_time(&m);
    filetime::set_symlink_file_times(dst, t, t)
}

fn walk_upper(upper: &Path, rel: &Path, diff: &mut Diff) -> Result<(), SnapshotError> {
    let dir = upper.join(rel);
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .map_err(io_err(&dir))?
        .collect::<Result<_, _>>()
        .map_err(io_err(&dir))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let r = rel.join(e.file_name());
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
        let ft = m.file_type();
        if ft.is_char_device() && m.rdev() == 0 {
            diff.add(r, Change::Delete);
        } else if ft.is_dir() {
            let opaque = xattr::get(&p, crate::userns::overlay_opaque_xattr())
                .ok()
                .flatten()
                .is_some_and(|v| v == b"y");
            diff.add(r.clone(), if opaque { Change::Opaque } else { Change::Add });
            walk_upper(upper, &r, diff)?;
        } else {
            diff.add(r, Change::Add);
        }
    }
    Ok(())
}

fn copy_dir_metadata(src: &Path, dst: &Path, sm: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let _ = nix::unistd::chown(
        dst,
        Some(nix::unistd::Uid::from_raw(sm.uid())),
        Some(nix::unistd::Gid::from_raw(sm.gid())),
    );
    std::fs::set_permissions(dst, std::fs::Permissions::from_mode(sm.mode() & 0o7777))?;
    let _ = copy_xattrs(src, dst);
    let t = filetime::FileTime::from_last_modification_time(sm);
    filetime::set_file_times(dst, t, t)
}

/// Copies `src`'s xattrs to `dst`, overlayfs's own (`trusted.overlay.*`)
/// excepted. Every one is tried; the first failure is returned.
fn copy_xattrs(src: &Path, dst: &Path) -> io::Result<()> {
    let mut first = Ok(());
    for n in xattr::list(src).into_iter().flatten() {
        if crate::userns::is_overlay_xattr(&n.to_string_lossy()) {
            continue;
        }
        if let Ok(Some(v)) = xattr::get(src, &n) {
            if let Err(e) = xattr::set(dst, &n, &v) {
                first = first.and(Err(e));
            }
        }
    }
    first
}

fn strip_overlay_xattrs_tree(p: &Path) {
    let strip = |p: &Path| {
        if let Ok(names) = xattr::list(p) {
            for n in names {
                if crate::userns::is_overlay_xattr(&n.to_string_lossy()) {
                    let _ = xattr::remove(p, &n);
                }
            }
        }
    };
    strip(p);
    if std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir()) {
        let mut stack = vec![p.to_path_buf()];
        while let Some(d) = stack.pop() {
            if let Ok(rd) = std::fs::read_dir(&d) {
                for e in rd.flatten() {
                    let ep = e.path();
                    if e.file_type().is_ok_and(|t| t.is_symlink()) {
                        continue;
                    }
                    strip(&ep);
                    if e.file_type().is_ok_and(|t| t.is_dir()) {
                        stack.push(ep);
                    }
                }
            }
        }
    }
}
