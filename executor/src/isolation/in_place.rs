//! kaniko's model: the build container's own `/` is the root a step runs in.
//! It needs no mount, no chroot and no mknod — only root and a writable `/` —
//! so it works under Docker's default capabilities and CRI-O's reduced set,
//! and a step sees the container's real `/proc`, `/dev`, `/sys`, DNS files
//! and hostname, none of which is ever part of the image.
//!
//! Longer than ~600 lines on purpose: the stash, the per-step swap in and
//! out, the scan and crash recovery share one invariant (every path is in
//! exactly one of: the container, the stash, the root) and are only safe
//! read together.
//!
//! How the container's files are kept safe, unlike kaniko (which deletes
//! them and leaves the image's files behind for the next build):
//!
//! * **Ignored paths** are never moved, scanned or written: `/proc`, `/sys`,
//!   `/dev`, every mount point (volumes, secrets, the DNS files), Kiln's own
//!   directories (`/kiln`, `/kaniko`, `/busybox`, the binary, the work
//!   directory, credentials, `--ignore-path`). A directory with an ignored
//!   path beneath it (`/etc`, `/var/run`) is *kept*: it stays in place and
//!   only its other entries move.
//! * At the first RUN, the container's other files are **stashed** by
//!   `rename(2)` into a state directory on the root filesystem
//!   (`/.kiln-inplace-<pid>`), and put back when the build ends — also after
//!   a failed build; a crashed one is put back by the next executor started
//!   in the container. The stage roots live in that directory too, so that
//!   moving them is a rename, never a copy.
//! * For each RUN the stage's root is **swapped in** (its entries renamed into
//!   `/`), the step runs with `/` as its root, the change is found by a stat
//!   scan of `/` that skips ignored paths, and the entries are **swapped out**
//!   again. Directory times disturbed by the renames are restored, so the
//!   diff is the step's, file for file what the namespaces rung sees.
//!
//! Costs: two stat scans of the image per RUN (as the chroot rung); renames
//! per top-level entry; while a build runs the container's own files are
//! aside (nothing but the executor should run in it, as with kaniko). An
//! image path that a volume hides is reported, not silently dropped.

use super::probe::Environment;
use super::spawn::wait_for;
use super::spawner::start_in;
use super::supervise::Report;
use super::{Isolation, IsolationError, RunOutcome, RunSpec, SelectOptions};
use crate::snapshot::{Changes, RootWatches};
use crate::tree::{copy_entry, copy_meta, mkdir_like, set_mtime, sorted_entries};
use kiln_layers::extract::remove_any;
use std::collections::BTreeSet;
use std::fs::Metadata;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

const STATE_PREFIX: &str = ".kiln-inplace-";
/// Inside the state directory: the container's files while a build runs.
const STASH: &str = "stash";
/// Inside the state directory: the stage roots (same filesystem as `/`).
const ROOTS: &str = "roots";
/// Inside the state directory: present once all of the container's own
/// files are in the stash.
const STASHED: &str = "stashed";
/// Inside the state directory: `/`'s access and modification times before
/// the state directory was made, for a recovery to put back.
const ROOT_TIMES: &str = "root-times";

pub struct InPlace {
    state: PathBuf,
    roots: PathBuf,
    /// `/`'s times before the state directory was made in it.
    root_times: Option<std::fs::Metadata>,
    ignored: Ignored,
    /// Whether the container's files are in the stash; the lock also makes
    /// steps of one build run one at a time over `/`.
    stashed: Mutex<bool>,
    /// Each stage root's index, kept current from step to step.
    watches: RootWatches,
    /// The kept directories, relative: a different inode in `/` (the
    /// container's) than in the stage root between steps, so no watch
    /// follows them; their entries are looked at on every step.
    kept: Vec<PathBuf>,
    /// A lock on `/` itself, held for the build: one in-place build per
    /// container at a time.
    _lock: nix::fcntl::Flock<std::fs::File>,
}

/// The absolute paths never moved, and the directories above them.
#[derive(Debug, Default)]
struct Ignored {
    /// Never moved, scanned or written.
    paths: BTreeSet<PathBuf>,
    /// Mount points that are not the system's or Kiln's: volumes of the build
    /// container. Never moved, but scanned: what a step writes into one is
    /// copied into the image and taken out of the volume again, where kaniko
    /// drops it silently.
    volumes: BTreeSet<PathBuf>,
}

impl Ignored {
    /// The system's paths, Kiln's own, `protected`, and the mount points of
    /// this container (volumes apart).
    fn read(protected: &[PathBuf]) -> Ignored {
        let mut ignored = Ignored::default();
        for p in ["/proc", "/sys", "/dev", "/kiln", "/kaniko", "/busybox"] {
            ignored.paths.insert(PathBuf::from(p));
        }
        for p in ["/etc/resolv.conf", "/etc/hosts", "/etc/hostname"] {
            ignored.paths.insert(PathBuf::from(p));
        }
        if let Ok(exe) = std::env::current_exe() {
            ignored.paths.insert(exe);
        }
        for p in protected {
            if p.is_absolute() {
                ignored.paths.insert(p.clone());
            }
        }
        for m in mount_points() {
            let system = [
                "/proc",
                "/sys",
                "/dev",
                "/etc/resolv.conf",
                "/etc/hosts",
                "/etc/hostname",
            ]
            .iter()
            .any(|s| m.starts_with(s))
                || ignored.is_ignored(&m);
            if system {
                ignored.paths.insert(m);
            } else {
                ignored.volumes.insert(m);
            }
        }
        ignored
    }

    fn is_ignored(&self, abs: &Path) -> bool {
        self.paths.iter().any(|p| abs.starts_with(p))
    }

    /// Never moved: ignored, or a volume's mount point.
    fn stays(&self, abs: &Path) -> bool {
        self.is_ignored(abs) || self.is_volume(abs)
    }

    fn is_volume(&self, abs: &Path) -> bool {
        self.volumes.contains(abs)
    }

    fn in_volume(&self, abs: &Path) -> bool {
        self.volumes.iter().any(|v| abs.starts_with(v))
    }

    /// A directory that stays in place because something ignored (or a
    /// volume) is beneath it.
    fn is_kept(&self, abs: &Path) -> bool {
        self.paths
            .iter()
            .chain(self.volumes.iter())
            .any(|p| p.starts_with(abs) && p != abs)
    }

    /// Every kept directory but `/`, relative to `/`.
    fn kept_dirs(&self) -> Vec<PathBuf> {
        let mut kept = BTreeSet::new();
        for p in self.paths.iter().chain(self.volumes.iter()) {
            for a in p.ancestors().skip(1) {
                if let Ok(rel) = a.strip_prefix("/") {
                    if !rel.as_os_str().is_empty() {
                        kept.insert(rel.to_path_buf());
                    }
                }
            }
        }
        kept.into_iter().collect()
    }
}

fn mount_points() -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p != Path::new("/"))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape_mountinfo(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

/// Files mapped into this process (its binary and shared libraries).
fn mapped_files() -> BTreeSet<PathBuf> {
    std::fs::read_to_string("/proc/self/maps")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

fn io_str(what: &str, p: &Path, e: io::Error) -> String {
    format!("{what} {}: {e}", p.display())
}

impl InPlace {
    /// Checks that this rung may run here and prepares its state directory.
    pub fn open(
        build_dir: &Path,
        env: &Environment,
        opts: &SelectOptions,
    ) -> Result<InPlace, String> {
        if env.euid != 0 {
            return Err(format!(
                "needs uid 0 to own the container's root; Kiln runs as uid {}",
                env.euid
            ));
        }
        if !env.in_container && !opts.force {
            return Err("this does not look like a container (no /.dockerenv, \
                 /run/.containerenv or KUBERNETES_SERVICE_HOST), and building in / would \
                 change this machine's own files; pass --force in a container that is not \
                 detected"
                .into());
        }
        let root_dir =
            std::fs::File::open("/").map_err(|e| io_str("opening", Path::new("/"), e))?;
        let lock =
            nix::fcntl::Flock::lock(root_dir, nix::fcntl::FlockArg::LockExclusiveNonblock)
                .map_err(|_| "another in-place build is running in this container".to_string())?;
        let mut protected = opts.protected.clone();
        protected.push(build_dir.to_path_buf());
        let mut ignored = Ignored::read(&protected);
        // The executor must not need anything this rung moves aside: after a
        // crash, the next executor could not even start to put it back.
        if let Some(lib) = mapped_files()
            .into_iter()
            .find(|f| !ignored.is_ignored(f) && !ignored.in_volume(f))
        {
            return Err(format!(
                "the executor uses {} from the container's own root, which this rung moves \
                 aside during a build; use Kiln's image (everything under /kiln) or a static \
                 executor",
                lib.display()
            ));
        }
        recover_crashed(&ignored);
        // The state directory changes `/`'s times; they are put back when
        // it goes.
        let root_times = std::fs::symlink_metadata("/").ok();
        let state = PathBuf::from(format!("/{STATE_PREFIX}{}", std::process::id()));
        if state.exists() {
            remove_any(&state).map_err(|e| io_str("clearing", &state, e))?;
        }
        std::fs::create_dir(&state).map_err(|e| match e.raw_os_error() {
            Some(libc::EROFS) => "/ is read-only (EROFS)".to_string(),
            _ => io_str("creating", &state, e),
        })?;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io_str("securing", &state, e))?;
        if let Some(m) = &root_times {
            let times = format!(
                "{} {} {} {}",
                m.atime(),
                m.atime_nsec(),
                m.mtime(),
                m.mtime_nsec()
            );
            let at = state.join(ROOT_TIMES);
            std::fs::write(&at, times).map_err(|e| io_str("writing", &at, e))?;
        }
        let roots = state.join(ROOTS);
        std::fs::create_dir(&roots).map_err(|e| io_str("creating", &roots, e))?;
        ignored.paths.insert(state.clone());
        let kept = ignored.kept_dirs();
        Ok(InPlace {
            state,
            roots,
            root_times,
            ignored,
            stashed: Mutex::new(false),
            watches: RootWatches::new(opts.full_walks),
            kept,
            _lock: lock,
        })
    }

    fn stash_dir(&self) -> PathBuf {
        self.state.join(STASH)
    }

    /// Moves the container's own files (all but the ignored) into the stash.
    fn stash(&self) -> io::Result<()> {
        let stash = self.stash_dir();
        std::fs::create_dir(&stash)?;
        self.stash_dir_entries(Path::new("/"), &stash)?;
        // From here on, whatever else is in `/` belongs to the build. The
        // marker keeps this build's ignored paths: a recovery after a crash
        // must spare exactly what this build spared (its work dir,
        // credentials, --ignore-path), whatever the next executor is told.
        let mut list = String::new();
        for (kind, set) in [("p", &self.ignored.paths), ("v", &self.ignored.volumes)] {
            for p in set {
                list.push_str(&format!("{kind} {}\n", p.display()));
            }
        }
        std::fs::write(self.state.join(STASHED), list)
    }

    /// The entries of `dir` that move with the image (every one but those
    /// that stay in place), sorted, each with where it goes under `to` and
    /// its metadata.
    fn movable(&self, dir: &Path, to: &Path) -> io::Result<Vec<(PathBuf, PathBuf, Metadata)>> {
        let mut out = Vec::new();
        for e in sorted_entries(dir)? {
            let abs = dir.join(&e);
            if !self.ignored.stays(&abs) {
                let m = std::fs::symlink_metadata(&abs)?;
                out.push((abs, to.join(&e), m));
            }
        }
        Ok(out)
    }

    fn stash_dir_entries(&self, dir: &Path, to: &Path) -> io::Result<()> {
        for (abs, dst, m) in self.movable(dir, to)? {
            if m.is_dir() && self.ignored.is_kept(&abs) {
                // Stays in place; the stash keeps a copy of its metadata.
                mkdir_like(&dst, &m)?;
                self.stash_dir_entries(&abs, &dst)?;
                set_mtime(&dst, &m)?;
                continue;
            }
            match std::fs::rename(&abs, &dst) {
                Ok(()) => {}
                // A directory from a lower overlayfs layer without
                // redirect_dir: move its entries, then remove it.
                Err(err) if err.raw_os_error() == Some(libc::EXDEV) && m.is_dir() => {
                    mkdir_like(&dst, &m)?;
                    self.stash_dir_entries(&abs, &dst)?;
                    std::fs::remove_dir(&abs)?;
                    set_mtime(&dst, &m)?;
                }
                Err(err) => return Err(err),
            }
        }
        Ok(())
    }

    /// Moves the image's entries from `root` into `/`.
    fn swap_in(&self, root: &Path) -> io::Result<()> {
        let mut kept = Vec::new();
        self.swap_in_dir(root, Path::new("/"), &mut kept)?;
        // Kept directories show the image's metadata to the step.
        for (abs, m) in kept.iter().rev() {
            copy_meta(abs, m)?;
        }
        Ok(())
    }

    fn swap_in_dir(
        &self,
        from: &Path,
        dir: &Path,
        kept: &mut Vec<(PathBuf, std::fs::Metadata)>,
    ) -> io::Result<()> {
        for e in sorted_entries(from)? {
            let abs = dir.join(&e);
            let src = from.join(&e);
            if self.ignored.stays(&abs) {
                if self.ignored.is_volume(&abs) {
                    tracing::warn!(
                        "the image's {} is hidden by a volume mounted in the build container: \
                         RUN sees the volume there (what it writes there is copied into the image)",
                        abs.display()
                    );
                }
                continue;
            }
            let m = std::fs::symlink_metadata(&src)?;
            if self.ignored.is_kept(&abs) {
                let theirs = std::fs::symlink_metadata(&abs).map(|d| d.is_dir());
                if m.is_dir() && matches!(theirs, Ok(true)) {
                    self.swap_in_dir(&src, &abs, kept)?;
                    kept.push((abs, m));
                } else if !m.is_dir() {
                    tracing::warn!(
                        "the image's {} is not a directory, but the build container needs one \
                         there; RUN sees the container's",
                        abs.display()
                    );
                } else {
                    tracing::warn!(
                        "the build container's {} is not a directory, but something Kiln keeps \
                         is beneath it; RUN does not see the image's",
                        abs.display()
                    );
                }
                continue;
            }
            std::fs::rename(&src, &abs)?;
        }
        Ok(())
    }

    /// Moves the image's entries from `/` back into `root`, keeping the
    /// times the step left on kept directories.
    fn swap_out(&self, root: &Path) -> io::Result<()> {
        self.swap_out_dir(Path::new("/"), root)
    }

    fn swap_out_dir(&self, dir: &Path, to: &Path) -> io::Result<()> {
        for (abs, dst, m) in self.movable(dir, to)? {
            if m.is_dir() && self.ignored.is_kept(&abs) {
                let exists = std::fs::symlink_metadata(&dst).is_ok_and(|d| d.is_dir());
                let has_image_entries = sorted_entries(&abs)?.iter().any(|c| {
                    let p = abs.join(c);
                    !self.ignored.stays(&p)
                });
                if !exists && !has_image_entries {
                    continue;
                }
                if !exists {
                    mkdir_like(&dst, &m)?;
                }
                self.swap_out_dir(&abs, &dst)?;
                copy_meta(&dst, &m)?;
                continue;
            }
            std::fs::rename(&abs, &dst)?;
        }
        Ok(())
    }

    fn skip_filter(&self) -> impl Fn(&Path) -> bool + '_ {
        move |rel: &Path| self.ignored.is_ignored(&Path::new("/").join(rel))
    }

    /// Copies what a step wrote into volumes into `root` (so that it is in
    /// the image), then takes what it added out of the volumes again.
    fn take_from_volumes(&self, root: &Path, changes: &Changes) -> io::Result<()> {
        let mut added_top: Vec<PathBuf> = Vec::new();
        for (rel, change) in &changes.diff.changes {
            let abs = Path::new("/").join(rel);
            if !self.ignored.in_volume(&abs) || self.ignored.is_volume(&abs) {
                continue;
            }
            if *change == crate::snapshot::Change::Delete {
                continue;
            }
            tracing::warn!(
                "RUN wrote {} inside a volume of the build container; it goes into the image",
                abs.display()
            );
            let dst = root.join(rel);
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            copy_entry(&abs, &dst)?;
            if changes.is_new(rel) && !added_top.iter().any(|t| abs.starts_with(t)) {
                added_top.push(abs);
            }
        }
        for p in added_top {
            remove_any(&p)?;
        }
        Ok(())
    }

    fn run_swapped(&self, root: &Path, spec: &RunSpec) -> Result<RunOutcome, IsolationError> {
        let skip = self.skip_filter();
        let slash = Path::new("/");
        let baseline = self.watches.begin(root, slash, &skip, &self.kept)?;
        let report = Report::new().map_err(IsolationError::setup(&self.state))?;
        let started = start_in(spec, None, None, report.fd())?;
        let (status, tail) = wait_for(started, &spec.args[0], &report)?;
        let changes = self.watches.finish(baseline, slash, &skip, &self.kept)?;
        if changes
            .diff
            .changes
            .keys()
            .any(|rel| self.ignored.in_volume(&slash.join(rel)))
        {
            self.take_from_volumes(root, &changes)
                .map_err(IsolationError::setup(root))?;
        }
        let diff = self.watches.keep(changes);
        Ok(RunOutcome { status, tail, diff })
    }
}

impl Isolation for InPlace {
    fn name(&self) -> &'static str {
        "in-place"
    }

    fn roots_dir(&self) -> Option<&Path> {
        Some(&self.roots)
    }

    fn concurrent_stages(&self) -> bool {
        false
    }

    fn run(
        &self,
        root: &Path,
        _scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError> {
        let setup = IsolationError::setup(&self.state);
        let mut stashed = self.stashed.lock().unwrap_or_else(|p| p.into_inner());
        if !*stashed {
            self.stash().map_err(setup)?;
            *stashed = true;
        }
        let outcome = match self.swap_in(root) {
            Ok(()) => self.run_swapped(root, spec),
            Err(e) => Err(setup(e)),
        };
        // Whatever happened, the image's entries leave `/` again.
        self.swap_out(root).map_err(setup)?;
        outcome
    }
}

impl Drop for InPlace {
    fn drop(&mut self) {
        let stashed = *self.stashed.lock().unwrap_or_else(|p| p.into_inner());
        if stashed {
            if let Err(e) = restore(&self.stash_dir(), Path::new("/")) {
                tracing::error!(
                    "restoring the container's own files from {}: {e}",
                    self.stash_dir().display()
                );
                return; // Keep the stash: the next executor retries.
            }
        }
        if let Err(e) = remove_any(&self.state) {
            tracing::warn!("removing {}: {e}", self.state.display());
        }
        if let Some(m) = &self.root_times {
            let _ = set_mtime(Path::new("/"), m);
        }
    }
}

/// Puts back what a crashed in-place build left in this container, if any.
/// Runs first thing at startup: until then the container's own files (CA
/// certificates, libraries) may be missing.
pub fn recover() {
    if nix::unistd::geteuid().is_root() {
        let any = std::fs::read_dir("/").is_ok_and(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(STATE_PREFIX))
        });
        if any {
            recover_crashed(&Ignored::read(&[]));
        }
    }
}

/// Puts back what a crashed in-place build left: its image entries leave `/`
/// and the container's files come back from its stash.
fn recover_crashed(ignored: &Ignored) {
    let Ok(rd) = std::fs::read_dir("/") else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix(STATE_PREFIX) else {
            continue;
        };
        let alive = pid.parse::<i32>().is_ok_and(|p| {
            p as u32 != std::process::id()
                && nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok()
        });
        if alive {
            continue;
        }
        let state = e.path();
        if let Ok(list) = std::fs::read_to_string(state.join(STASHED)) {
            // Everything of the container's is in the stash: what else is
            // in `/` (outside what either build spares) is the dead build's,
            // including what its last step created.
            let mut spared = Ignored {
                paths: ignored.paths.clone(),
                volumes: ignored.volumes.clone(),
            };
            for l in list.lines() {
                match l.split_once(' ') {
                    Some(("p", p)) => spared.paths.insert(PathBuf::from(p)),
                    Some(("v", p)) => spared.volumes.insert(PathBuf::from(p)),
                    _ => false,
                };
            }
            if let Err(err) = clear_build_entries(Path::new("/"), &spared) {
                tracing::error!("clearing a crashed build's files from /: {err}");
                continue;
            }
        }
        let stash = state.join(STASH);
        if stash.exists() {
            if let Err(err) = restore(&stash, Path::new("/")) {
                tracing::error!(
                    "restoring a crashed build's stash {}: {err}",
                    stash.display()
                );
                continue;
            }
        }
        tracing::warn!("put back the container's files left aside by a crashed build ({name})");
        let times = std::fs::read_to_string(state.join(ROOT_TIMES));
        let _ = remove_any(&state);
        if let Some((a, m)) = times.ok().as_deref().and_then(parse_times) {
            let _ = filetime::set_symlink_file_times("/", a, m);
        }
    }
}

/// `atime atime_nsec mtime mtime_nsec`, as [`ROOT_TIMES`] holds them.
fn parse_times(s: &str) -> Option<(filetime::FileTime, filetime::FileTime)> {
    let n: Vec<i64> = s
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .ok()?;
    match n[..] {
        [a, an, m, mn] => Some((
            filetime::FileTime::from_unix_time(a, an as u32),
            filetime::FileTime::from_unix_time(m, mn as u32),
        )),
        _ => None,
    }
}

/// Removes everything under `dir` that is not ignored, a volume, a state
/// directory, or a kept directory (whose own entries are cleared likewise).
fn clear_build_entries(dir: &Path, ignored: &Ignored) -> io::Result<()> {
    for e in sorted_entries(dir)? {
        let abs = dir.join(&e);
        if ignored.stays(&abs)
            || (dir == Path::new("/") && e.to_string_lossy().starts_with(STATE_PREFIX))
        {
            continue;
        }
        if ignored.is_kept(&abs) && std::fs::symlink_metadata(&abs)?.is_dir() {
            clear_build_entries(&abs, ignored)?;
        } else {
            remove_any(&abs)?;
        }
    }
    Ok(())
}

/// Moves everything in `stash` back to the same place under `to`; kept
/// directories get their stashed metadata back.
fn restore(stash: &Path, to: &Path) -> io::Result<()> {
    for e in sorted_entries(stash)? {
        let src = stash.join(&e);
        let dst = to.join(&e);
        let m = std::fs::symlink_metadata(&src)?;
        let dst_dir = std::fs::symlink_metadata(&dst).is_ok_and(|d| d.is_dir());
        if m.is_dir() && dst_dir {
            restore(&src, &dst)?;
            copy_meta(&dst, &m)?;
            std::fs::remove_dir(&src)?;
        } else {
            if std::fs::symlink_metadata(&dst).is_ok() {
                remove_any(&dst)?;
            }
            std::fs::rename(&src, &dst)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_and_ignored() {
        let mut i = Ignored::default();
        i.paths.insert("/etc/hosts".into());
        i.paths.insert("/var/run/secrets/x".into());
        assert!(i.is_ignored(Path::new("/etc/hosts")));
        assert!(!i.is_ignored(Path::new("/etc/hostsx")));
        assert!(i.is_kept(Path::new("/etc")));
        assert!(i.is_kept(Path::new("/var/run")));
        assert!(i.is_kept(Path::new("/")));
        assert!(!i.is_kept(Path::new("/usr")));
        assert!(!i.is_kept(Path::new("/etc/hosts")));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(
            unescape_mountinfo("/mnt/a\\040b"),
            PathBuf::from("/mnt/a b")
        );
        assert_eq!(unescape_mountinfo("/plain"), PathBuf::from("/plain"));
    }
}
