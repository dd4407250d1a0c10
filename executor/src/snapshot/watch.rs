//! A stat index of a root kept current by inotify, so that a step's diff
//! costs what the step changed instead of what the root holds.
//!
//! Why: the rungs with no overlay (in-place, chroot) used to walk the whole
//! root twice per RUN — 0.1 s per 10,000 files on a container's overlayfs,
//! paid by every RUN of a Dockerfile. inotify needs no privilege: every
//! directory of the root is watched once, when the first step of a stage
//! runs, and afterwards only the paths the kernel names in events are
//! stat'ed again (with the root's own entries, the caller's `always`
//! directories and every file with several links, which a write through
//! another name changes without an event here). Each is compared with the
//! index by the full walk's own rule ([`super::scan`]), so the diff is the
//! one a full walk gives; `tests` run both on the same changes.
//!
//! The full walk is still taken — and the diff is still right — when the
//! kernel's event queue overflowed (a step that touched more paths than
//! `fs.inotify.max_queued_events`), or once for good when a watch is refused
//! (the user's `fs.inotify.max_user_watches`, shared by every process of the
//! container's user).
//!
//! What inotify does not name, and so this index does not see: a change
//! made only through a shared writable memory map (no `write(2)`,
//! `truncate` or `chmod` after it), and a file changed through a second
//! hard link made in *another* directory and removed again within the same
//! step (a link in the same directory, as dpkg's `.dpkg-tmp` backups, is
//! seen: a name that came and went makes its whole directory looked at).
//! Package managers, compilers and installers do neither;
//! `--snapshot-mode=full` walks the whole root after every step for a build
//! that does.

use super::scan::{add_deletes, is_added, scan, stamp, Stamp};
use super::{io_err, Change, Diff, SnapshotError};
use nix::errno::Errno;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::Bound;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The events that a change to a directory's entries raises on it.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_ATTRIB
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_DONT_FOLLOW
        | AddWatchFlags::IN_ONLYDIR
}

/// What a root held when the index was last brought up to date, and the
/// watches that say what changed since.
pub struct RootWatch {
    /// `None` once a watch was refused: every diff is a full walk.
    inotify: Option<Inotify>,
    index: BTreeMap<PathBuf, Stamp>,
    /// The relative directory each watch is on (the last place it was seen).
    dirs: HashMap<WatchDescriptor, PathBuf>,
    /// Paths with more than one hard link.
    linked: BTreeSet<PathBuf>,
    /// Files found with a new second name since the last diff: a link
    /// raises no event on the directory of the first name, so the index
    /// entries of the same inode are looked at too.
    new_links: Vec<(u64, PathBuf)>,
    /// Directories where a name came and went within the step: all their
    /// entries are looked at.
    transient_in: BTreeSet<PathBuf>,
    /// Events were lost: the next diff walks everything.
    lost: bool,
    /// Paths the last diff added that did not exist before it.
    new: BTreeSet<PathBuf>,
}

/// What a [`RootWatch`] diff cost: for the log and the benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Walk {
    /// Only the paths named by events were looked at.
    Changed(usize),
    /// The whole root was walked.
    Full,
}

impl RootWatch {
    /// Indexes `root` (every path but what `skip` names, as
    /// [`super::ScanIndex::capture_filtered`]) and watches its directories.
    pub fn start(root: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<RootWatch, SnapshotError> {
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC) {
            Ok(i) => Some(i),
            Err(e) => {
                tracing::debug!("no inotify ({e}): every RUN walks the whole root");
                None
            }
        };
        let mut w = RootWatch {
            inotify,
            index: BTreeMap::new(),
            dirs: HashMap::new(),
            linked: BTreeSet::new(),
            new_links: Vec::new(),
            transient_in: BTreeSet::new(),
            lost: false,
            new: BTreeSet::new(),
        };
        // The first index: nothing to compare with, so only what the index
        // keeps is recorded (no diff, no "new" set: a third of the work of
        // a rewalk on a large root).
        w.watch(root, Path::new(""));
        scan(root, Path::new(""), skip, &mut |rel, m| {
            w.index.insert(rel.to_path_buf(), stamp(m));
            w.note_links(rel, m);
            if m.is_dir() {
                w.watch(root, rel);
            }
        })?;
        w.new_links.clear();
        Ok(w)
    }

    /// Takes in what changed since the last call without reporting it: the
    /// builder's own writes between steps (COPY, WORKDIR), the isolation's
    /// own moves.
    pub fn refresh(
        &mut self,
        root: &Path,
        skip: &dyn Fn(&Path) -> bool,
        always: &[PathBuf],
    ) -> Result<Walk, SnapshotError> {
        self.diff(root, skip, always).map(|(_, walk)| walk)
    }

    /// The changes since the last call (or since [`start`](Self::start)),
    /// exactly as [`super::ScanIndex::diff_filtered`] would give them.
    /// `always`: directories whose own entries are looked at whatever the
    /// events say (a directory that is a different inode between steps, as
    /// the in-place rung's kept directories).
    pub fn diff(
        &mut self,
        root: &Path,
        skip: &dyn Fn(&Path) -> bool,
        always: &[PathBuf],
    ) -> Result<(Diff, Walk), SnapshotError> {
        let touched = self.take_events();
        self.new.clear();
        let mut diff = Diff::default();
        let mut deleted = Vec::new();
        if self.lost || self.inotify.is_none() {
            self.lost = false;
            self.rewalk(root, Path::new(""), skip, &mut deleted, &mut diff)?;
            self.new_links.clear();
            let index = &self.index;
            add_deletes(&mut diff, deleted, |p| {
                index.get(p).is_some_and(|s| !s.is_dir())
            });
            return Ok((diff, Walk::Full));
        }
        let mut touched = touched;
        touched.extend(self.linked.iter().cloned());
        for dir in std::iter::once(Path::new("")).chain(always.iter().map(PathBuf::as_path)) {
            if !dir.as_os_str().is_empty() {
                touched.insert(dir.to_path_buf());
            }
            if let Ok(rd) = std::fs::read_dir(root.join(dir)) {
                for e in rd.flatten() {
                    touched.insert(dir.join(e.file_name()));
                }
            }
        }
        let looked = touched.len();
        // Parents first: a directory walked whole covers what is beneath it.
        let mut walked: Option<PathBuf> = None;
        for rel in touched {
            if rel.as_os_str().is_empty()
                || walked.as_ref().is_some_and(|w| rel.starts_with(w))
                || rel.ancestors().any(skip)
            {
                continue;
            }
            if self.look_at(root, &rel, skip, &mut deleted, &mut diff)? {
                walked = Some(rel);
            }
        }
        for dir in std::mem::take(&mut self.transient_in) {
            if let Ok(rd) = std::fs::read_dir(root.join(&dir)) {
                for e in rd.flatten() {
                    let rel = dir.join(e.file_name());
                    if !rel.ancestors().any(skip) && !e.file_type().is_ok_and(|t| t.is_dir()) {
                        self.look_at(root, &rel, skip, &mut deleted, &mut diff)?;
                    }
                }
            }
        }
        while let Some((ino, rel)) = self.new_links.pop() {
            let others: Vec<PathBuf> = (self.index.iter())
                .filter(|(p, s)| s.ino == ino && !s.is_dir() && **p != rel)
                .map(|(p, _)| p.clone())
                .collect();
            for p in others {
                self.look_at(root, &p, skip, &mut deleted, &mut diff)?;
            }
        }
        let index = &self.index;
        add_deletes(&mut diff, deleted, |p| {
            index.get(p).is_some_and(|s| !s.is_dir())
        });
        if self.lost {
            // A watch could not be set on a new directory mid-diff: the diff
            // above is complete (the directory was walked), the next is not.
            tracing::debug!("events may be lost: the next RUN walks the whole root");
        }
        Ok((diff, Walk::Changed(looked)))
    }

    /// Compares one path with the index. Returns whether it was walked whole
    /// (a directory new at this path).
    fn look_at(
        &mut self,
        root: &Path,
        rel: &Path,
        skip: &dyn Fn(&Path) -> bool,
        deleted: &mut Vec<PathBuf>,
        diff: &mut Diff,
    ) -> Result<bool, SnapshotError> {
        let path = root.join(rel);
        let m = match std::fs::symlink_metadata(&path) {
            Ok(m) => m,
            Err(e)
                if e.kind() == std::io::ErrorKind::NotFound
                    || e.raw_os_error() == Some(libc::ENOTDIR) =>
            {
                // Gone, with everything beneath it.
                if self.index.remove(rel).is_some() {
                    deleted.push(rel.to_path_buf());
                } else if let Some(dir) = rel.parent() {
                    // Made and removed within the step: maybe a second
                    // name of a file here (a backup link, as dpkg's
                    // `.dpkg-tmp`), which changed that file without an
                    // event naming it.
                    self.transient_in.insert(dir.to_path_buf());
                }
                deleted.extend(self.remove_beneath(rel).into_keys());
                self.linked.remove(rel);
                return Ok(false);
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let before = self.index.get(rel).copied();
        let same_dir = before.is_some_and(|s| s.is_dir() && s.ino == m.ino()) && m.is_dir();
        if m.is_dir() && !same_dir {
            // New here (created, moved in, or replacing something else).
            self.rewalk(root, rel, skip, deleted, diff)?;
            return Ok(true);
        }
        self.compare(rel, before, &m, diff);
        self.index.insert(rel.to_path_buf(), stamp(&m));
        self.note_links(rel, &m);
        if !m.is_dir() {
            // Was a directory: its entries went with it.
            deleted.extend(self.remove_beneath(rel).into_keys());
        }
        Ok(false)
    }

    /// Walks `top` and everything beneath it (all of the root for ""),
    /// comparing with the index, watching every directory, and recording
    /// what the index had there that is gone.
    fn rewalk(
        &mut self,
        root: &Path,
        top: &Path,
        skip: &dyn Fn(&Path) -> bool,
        deleted: &mut Vec<PathBuf>,
        diff: &mut Diff,
    ) -> Result<(), SnapshotError> {
        let mut old = self.remove_beneath(top);
        let is_top = !top.as_os_str().is_empty();
        if is_top {
            let path = root.join(top);
            let m = std::fs::symlink_metadata(&path).map_err(io_err(&path))?;
            self.see(root, top, &m, self.index.get(top).copied(), diff);
        } else {
            self.watch(root, top);
        }
        let mut seen: Vec<(PathBuf, std::fs::Metadata)> = Vec::new();
        scan(root, top, skip, &mut |rel, m| {
            seen.push((rel.to_path_buf(), m.clone()))
        })?;
        for (rel, m) in &seen {
            let before = old.remove(rel);
            self.see(root, rel, m, before, diff);
        }
        deleted.extend(old.into_keys());
        Ok(())
    }

    /// Records a path found by a walk: reported if the rule says so,
    /// indexed, and watched if it is a directory.
    fn see(
        &mut self,
        root: &Path,
        rel: &Path,
        m: &std::fs::Metadata,
        before: Option<Stamp>,
        diff: &mut Diff,
    ) {
        self.compare(rel, before, m, diff);
        self.index.insert(rel.to_path_buf(), stamp(m));
        self.note_links(rel, m);
        if m.is_dir() {
            self.watch(root, rel);
        }
    }

    fn compare(
        &mut self,
        rel: &Path,
        before: Option<Stamp>,
        m: &std::fs::Metadata,
        diff: &mut Diff,
    ) {
        if is_added(before.as_ref(), m) {
            diff.add(rel.to_path_buf(), Change::Add);
            if before.is_none() {
                self.new.insert(rel.to_path_buf());
            }
        }
    }

    /// Whether the last diff's `rel` is new: nothing was there before it.
    pub fn is_new(&self, rel: &Path) -> bool {
        self.new.contains(rel)
    }

    fn note_links(&mut self, rel: &Path, m: &std::fs::Metadata) {
        if !m.is_dir() && m.nlink() > 1 {
            if self.linked.insert(rel.to_path_buf()) {
                self.new_links.push((m.ino(), rel.to_path_buf()));
            }
        } else {
            self.linked.remove(rel);
        }
    }

    fn watch(&mut self, root: &Path, rel: &Path) {
        let Some(inotify) = &self.inotify else {
            return;
        };
        match inotify.add_watch(&root.join(rel), mask()) {
            // The same directory gives the same descriptor: it now lives here.
            Ok(wd) => {
                self.dirs.insert(wd, rel.to_path_buf());
            }
            Err(e) => {
                tracing::info!(
                    "cannot watch {} for changes ({e}; the limit is \
                     fs.inotify.max_user_watches): every RUN walks the whole root",
                    root.join(rel).display()
                );
                self.inotify = None;
                self.dirs.clear();
                self.lost = true;
            }
        }
    }

    /// Takes every entry strictly beneath `top` out of the index and
    /// returns it.
    fn remove_beneath(&mut self, top: &Path) -> BTreeMap<PathBuf, Stamp> {
        let beneath: Vec<PathBuf> = self
            .index
            .range::<Path, _>((Bound::Excluded(top), Bound::Unbounded))
            .map(|(p, _)| p)
            .take_while(|p| p.starts_with(top))
            .cloned()
            .collect();
        let mut out = BTreeMap::new();
        for p in beneath {
            self.linked.remove(&p);
            if let Some(s) = self.index.remove(&p) {
                out.insert(p, s);
            }
        }
        out
    }

    /// The paths named by the events queued since the last call.
    fn take_events(&mut self) -> BTreeSet<PathBuf> {
        let mut touched = BTreeSet::new();
        let Some(inotify) = &self.inotify else {
            return touched;
        };
        loop {
            let events = match inotify.read_events() {
                Ok(ev) => ev,
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!("reading inotify events: {e}");
                    self.lost = true;
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    self.lost = true;
                    continue;
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    self.dirs.remove(&ev.wd);
                    continue;
                }
                let Some(dir) = self.dirs.get(&ev.wd) else {
                    continue;
                };
                // A change of an entry changes its directory's times too:
                // the index keeps both current, as a full walk would.
                if let Some(name) = &ev.name {
                    touched.insert(dir.join(name));
                }
                touched.insert(dir.clone());
            }
        }
        touched
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::ScanIndex;
    use std::fs;

    /// xorshift64: the same "random" changes on every run.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn pick<'a, T>(&mut self, v: &'a [T]) -> Option<&'a T> {
            (!v.is_empty()).then(|| &v[(self.next() % v.len() as u64) as usize])
        }
    }

    fn all(root: &Path) -> (Vec<PathBuf>, Vec<PathBuf>) {
        let (mut dirs, mut files) = (vec![PathBuf::new()], Vec::new());
        scan(
            root,
            Path::new(""),
            &|r| r.starts_with("skipped"),
            &mut |rel, m| {
                if m.is_dir() {
                    dirs.push(rel.to_path_buf());
                } else {
                    files.push(rel.to_path_buf());
                }
            },
        )
        .unwrap();
        (dirs, files)
    }

    /// One change of the kinds a RUN makes, at a random place.
    fn change(root: &Path, rng: &mut Rng, n: u64, last: bool) {
        let (dirs, files) = all(root);
        let dir = rng.pick(&dirs).unwrap().clone();
        let any: Vec<PathBuf> = dirs.iter().skip(1).chain(files.iter()).cloned().collect();
        let new = root.join(&dir).join(format!("n{n}"));
        let _ = match rng.next() % 13 {
            0 => fs::write(&new, b"new"),
            1 => fs::create_dir(&new).and_then(|()| fs::write(new.join("inner"), b"x")),
            2 => match rng.pick(&files) {
                Some(f) => fs::write(root.join(f), format!("changed {n}")),
                None => Ok(()),
            },
            3 => match rng.pick(&any) {
                Some(p) if !root.join(p).is_symlink() => {
                    use std::os::unix::fs::PermissionsExt;
                    fs::set_permissions(root.join(p), fs::Permissions::from_mode(0o750))
                }
                _ => Ok(()),
            },
            4 => match rng.pick(&any) {
                Some(p) => kiln_layers::extract::remove_any(&root.join(p)),
                None => Ok(()),
            },
            5 => match rng.pick(&any) {
                // A move within the root (a directory with its whole tree).
                Some(p) if !dir.starts_with(p) => fs::rename(root.join(p), &new),
                _ => Ok(()),
            },
            6 => match rng.pick(&dirs[1..]) {
                Some(d) => fs::remove_dir_all(root.join(d)).and_then(|()| {
                    if n.is_multiple_of(2) {
                        fs::write(root.join(d), b"was a directory")
                    } else {
                        std::os::unix::fs::symlink("/elsewhere", root.join(d))
                    }
                }),
                None => Ok(()),
            },
            7 => match rng.pick(&files) {
                // A second name, then a write through it.
                Some(f) if !root.join(f).is_symlink() => {
                    let link = root.join(f).with_file_name(format!("n{n}"));
                    fs::hard_link(root.join(f), &link)
                        .and_then(|()| fs::write(&link, format!("through a link {n}")))
                }
                _ => Ok(()),
            },
            // A second name in another directory, only as a step's last
            // change (the one case the module's doc says is not seen: such
            // a name removed again within the same step).
            12 if last => match rng.pick(&files) {
                Some(f) if !root.join(f).is_symlink() => fs::hard_link(root.join(f), &new)
                    .and_then(|()| fs::write(&new, format!("through a link {n}"))),
                _ => Ok(()),
            },
            8 => match rng.pick(&files) {
                Some(f) if !root.join(f).is_symlink() => {
                    let t = filetime::FileTime::from_unix_time(1_000_000 + n as i64, 0);
                    filetime::set_file_mtime(root.join(f), t)
                }
                _ => Ok(()),
            },
            9 => match rng.pick(&dirs[1..]) {
                // Away and back: the same directory, a new ctime.
                Some(d) => {
                    let away = root.join(format!("away{n}"));
                    fs::rename(root.join(d), &away).and_then(|()| fs::rename(&away, root.join(d)))
                }
                None => Ok(()),
            },
            10 => fs::write(root.join("skipped").join(format!("s{n}")), b"never seen"),
            _ => match rng.pick(&files) {
                Some(f) => fs::remove_file(root.join(f)),
                None => Ok(()),
            },
        };
    }

    fn changes(d: &Diff) -> Vec<(PathBuf, Change)> {
        d.changes.iter().map(|(p, c)| (p.clone(), *c)).collect()
    }

    /// The watched index reports, round after round, exactly what a full
    /// stat walk of the root reports for the same changes.
    #[test]
    fn the_watched_diff_equals_the_full_walk() {
        for seed in [0x9E37_79B9_7F4A_7C15, 1_234_567, 0xDEAD_BEEF, 77] {
            same_as_full_walk(seed, 300);
        }
    }

    fn same_as_full_walk(seed: u64, rounds: u64) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for dir in ["a/b/c", "d/e", "skipped/x", "f"] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        for (i, f) in ["a/1", "a/b/2", "a/b/c/3", "d/4", "d/e/5", "f/6", "7"]
            .iter()
            .enumerate()
        {
            fs::write(root.join(f), format!("{i}")).unwrap();
        }
        let skip = |r: &Path| r.starts_with("skipped");
        let mut watch = RootWatch::start(root, &skip).unwrap();
        let mut rng = Rng(seed);
        let mut nonempty = 0;
        for round in 0..rounds {
            let full = ScanIndex::capture_filtered(root, &skip).unwrap();
            let count = 1 + round % 6;
            for k in 0..count {
                change(root, &mut rng, round * 10 + k, k + 1 == count);
            }
            let want = full.diff_filtered(root, &skip).unwrap();
            let (got, walk) = watch.diff(root, &skip, &[]).unwrap();
            assert_eq!(changes(&got), changes(&want), "seed {seed} round {round}");
            assert!(matches!(walk, Walk::Changed(_)), "round {round}: {walk:?}");
            nonempty += u64::from(!want.is_empty());
        }
        assert!(
            nonempty > rounds * 2 / 3,
            "the changes changed too little: {nonempty}"
        );
    }

    /// Between steps the builder writes too (COPY): a refresh takes that
    /// in, and the next diff holds only what came after.
    #[test]
    fn a_refresh_takes_in_changes_without_reporting_them() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        fs::create_dir_all(root.join("usr/bin")).unwrap();
        let mut watch = RootWatch::start(root, &|_| false).unwrap();
        fs::write(root.join("usr/bin/copied"), b"by COPY").unwrap();
        watch.refresh(root, &|_| false, &[]).unwrap();
        fs::write(root.join("usr/bin/ran"), b"by RUN").unwrap();
        let (diff, walk) = watch.diff(root, &|_| false, &[]).unwrap();
        assert_eq!(
            changes(&diff),
            vec![(PathBuf::from("usr/bin/ran"), Change::Add)]
        );
        // The root's own entries, the event's file and its directory.
        assert!(matches!(walk, Walk::Changed(n) if n <= 4), "{walk:?}");
    }
}
