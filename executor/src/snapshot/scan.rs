//! The stat index: what a root held before a step, compared with what it
//! holds after (the rungs with no overlay upper directory to read).

use super::{io_err, Change, Diff, SnapshotError};
use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// What identifies a file's state cheaply: any write or metadata change moves
/// ctime, and a replaced file has a new inode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    pub(super) ino: u64,
    ctime: (i64, i64),
    mtime: (i64, i64),
    size: u64,
    mode: u32,
}

/// A stat index of a root, for diffing without overlayfs.
pub struct ScanIndex {
    entries: HashMap<PathBuf, Stamp>,
}

impl ScanIndex {
    pub fn capture(root: &Path) -> Result<ScanIndex, SnapshotError> {
        Self::capture_filtered(root, &|_| false)
    }

    /// Like [`capture`](Self::capture), leaving out every path for which
    /// `skip` is true, with everything beneath it (what an isolation provides
    /// to a step, or the container's own files around an in-place root).
    pub fn capture_filtered(
        root: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<ScanIndex, SnapshotError> {
        let mut entries = HashMap::new();
        scan(root, Path::new(""), skip, &mut |rel, m| {
            entries.insert(rel.to_path_buf(), stamp(m));
        })?;
        Ok(ScanIndex { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether `rel` existed when the index was taken.
    pub fn contains(&self, rel: &Path) -> bool {
        self.entries.contains_key(rel)
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The changes in `root` since this index was taken.
    pub fn diff(&self, root: &Path) -> Result<Diff, SnapshotError> {
        self.diff_filtered(root, &|_| false)
    }

    /// The changes since the index was taken, leaving out what `skip` names
    /// (use the same filter as for the capture).
    pub fn diff_filtered(
        &self,
        root: &Path,
        skip: &dyn Fn(&Path) -> bool,
    ) -> Result<Diff, SnapshotError> {
        let mut diff = Diff::default();
        let mut seen = HashSet::with_capacity(self.entries.len());
        let mut not_dirs = HashSet::new();
        scan(root, Path::new(""), skip, &mut |rel, m| {
            seen.insert(rel.to_path_buf());
            if !m.is_dir() {
                not_dirs.insert(rel.to_path_buf());
            }
            if is_added(self.entries.get(rel), m) {
                diff.add(rel.to_path_buf(), Change::Add);
            }
        })?;
        let deleted = self.entries.keys().filter(|p| !seen.contains(*p)).cloned();
        add_deletes(&mut diff, deleted.collect(), |p| not_dirs.contains(p));
        Ok(diff)
    }
}

impl Stamp {
    pub(super) fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }
}

/// Whether a path present now is part of the diff, given its stamp before
/// the step (none: it is new). The one rule both ways of diffing follow.
pub(super) fn is_added(before: Option<&Stamp>, m: &std::fs::Metadata) -> bool {
    match before {
        Some(s) if *s == stamp(m) => false,
        // A directory whose listing changed has a new mtime; report it only
        // for real metadata changes, the children say the rest.
        Some(s)
            if m.is_dir()
                && s.mode == m.mode()
                && s.ino == m.ino()
                && s.ctime != (m.ctime(), m.ctime_nsec())
                && s.mtime != (m.mtime(), m.mtime_nsec()) =>
        {
            false
        }
        _ => true,
    }
}

/// Adds the deleted paths to `diff`: only the topmost of a deleted tree, and
/// nothing beneath a path that is no longer a directory (what was beneath it
/// went with the directory it replaced, and a whiteout inside a file or a
/// link would contradict it).
pub(super) fn add_deletes(
    diff: &mut Diff,
    mut deleted: Vec<PathBuf>,
    not_dir_now: impl Fn(&Path) -> bool,
) {
    deleted.sort();
    let mut last: Option<PathBuf> = None;
    for p in deleted {
        if last.as_ref().is_some_and(|l| p.starts_with(l))
            || p.ancestors().skip(1).any(&not_dir_now)
        {
            continue;
        }
        diff.add(p.clone(), Change::Delete);
        last = Some(p);
    }
}

pub(super) fn stamp(m: &std::fs::Metadata) -> Stamp {
    Stamp {
        ino: m.ino(),
        ctime: (m.ctime(), m.ctime_nsec()),
        mtime: (m.mtime(), m.mtime_nsec()),
        size: m.size(),
        mode: m.mode(),
    }
}

pub(super) fn scan(
    root: &Path,
    rel: &Path,
    skip: &dyn Fn(&Path) -> bool,
    f: &mut dyn FnMut(&Path, &std::fs::Metadata),
) -> Result<(), SnapshotError> {
    let dir = root.join(rel);
    let rd = std::fs::read_dir(&dir).map_err(io_err(&dir))?;
    for e in rd {
        let e = e.map_err(io_err(&dir))?;
        let r = rel.join(e.file_name());
        if skip(&r) {
            continue;
        }
        // Relative to the directory's descriptor (`fstatat`/`statx`), not
        // a lookup of the whole path; symlinks not followed.
        let m = e.metadata().map_err(io_err(&e.path()))?;
        f(&r, &m);
        if m.is_dir() {
            scan(root, &r, skip, f)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::Change;

    fn changes(diff: &Diff) -> Vec<(String, Change)> {
        diff.changes
            .iter()
            .map(|(p, c)| (p.to_string_lossy().into_owned(), *c))
            .collect()
    }

    #[test]
    fn scan_diff_finds_adds_changes_and_topmost_deletes() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("a/b")).unwrap();
        std::fs::write(r.join("a/b/f"), "1").unwrap();
        std::fs::write(r.join("keep"), "1").unwrap();
        std::fs::write(r.join("mod"), "1").unwrap();
        let idx = ScanIndex::capture(r).unwrap();
        std::fs::remove_dir_all(r.join("a")).unwrap();
        std::fs::write(r.join("new"), "2").unwrap();
        std::thread::sleep(std::time::Duration::from_millis(10));
        std::fs::write(r.join("mod"), "22").unwrap();
        let got = changes(&idx.diff(r).unwrap());
        assert_eq!(
            got,
            vec![
                ("a".to_string(), Change::Delete),
                ("mod".to_string(), Change::Add),
                ("new".to_string(), Change::Add)
            ]
        );
    }

    /// A directory replaced by a file or a link is that one entry: no
    /// whiteouts for its old children (they would sit inside a file).
    #[test]
    fn a_directory_replaced_by_a_file_or_link_is_one_change() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        for n in ["f", "l"] {
            std::fs::create_dir_all(r.join("a").join(n).join("sub")).unwrap();
            std::fs::write(r.join("a").join(n).join("x"), "1").unwrap();
        }
        let idx = ScanIndex::capture(r).unwrap();
        std::fs::remove_dir_all(r.join("a/f")).unwrap();
        std::fs::write(r.join("a/f"), "now a file").unwrap();
        std::fs::remove_dir_all(r.join("a/l")).unwrap();
        std::os::unix::fs::symlink("/elsewhere", r.join("a/l")).unwrap();
        let got = changes(&idx.diff(r).unwrap());
        assert_eq!(
            got,
            vec![
                ("a/f".to_string(), Change::Add),
                ("a/l".to_string(), Change::Add),
            ]
        );
    }
}
