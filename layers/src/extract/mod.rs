//! Applies an image layer (a tar, possibly compressed) to a build root.
//!
//! We do not use `tar::Archive::unpack`: layers need whiteouts and opaque
//! directories, and every path and hardlink target must be resolved inside the
//! root with [`crate::rootfs::resolve`] so that a malicious layer is an error,
//! never a write outside the root.

use crate::decompress::decompress;
use crate::rootfs::{self, RootError};
use kiln_common::Digest;
use nix::sys::stat::{mknod, Mode, SFlag};
use nix::unistd::{mkfifo, Gid, Uid};
use sha2::{Digest as _, Sha256};
use std::collections::HashSet;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const WHITEOUT_PREFIX: &str = ".wh.";
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";

#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("layer entry {entry:?}")]
    Path { entry: String, source: RootError },
    #[error("layer entry {entry:?}: hardlink to {target:?} leaves the root or is not a file")]
    BadLink { entry: String, target: String },
    #[error("layer entry {entry:?}")]
    Io { entry: String, source: io::Error },
    #[error("reading layer: {0}")]
    Read(io::Error),
}

impl ExtractError {
    /// An entry that tried to leave the root: retrying cannot help.
    pub fn is_hostile(&self) -> bool {
        matches!(
            self,
            ExtractError::Path { .. } | ExtractError::BadLink { .. }
        )
    }
}

/// What applying a layer did, for logs and for the uncompressed size.
#[derive(Debug, Default, Clone)]
pub struct ExtractStats {
    pub entries: u64,
    pub tar_bytes: u64,
    /// [`Extent::Skeleton`]: the files (and hard links) not written, by
    /// where they would have been in the root (relative, resolved).
    pub skipped: Vec<PathBuf>,
}

/// How much of a layer is written.
#[derive(Debug, Clone, Default)]
pub enum Extent {
    /// Everything.
    #[default]
    Full,
    /// Directories, symlinks, device nodes, FIFOs and whiteouts exactly as
    /// [`Extent::Full`] writes them; regular files and hard links only at
    /// the `keep` paths (relative, e.g. `etc/passwd`), the others listed in
    /// [`ExtractStats::skipped`]. For a root in which only paths will be
    /// resolved and directories made — the steps left are COPY and WORKDIR
    /// — where writing every file of every layer would be wasted. Whatever
    /// a lower layer had at a skipped file's place is removed, as the full
    /// extraction would replace it.
    Skeleton { keep: Vec<PathBuf> },
}

/// The files a skeleton root keeps whole: what naming a user or group
/// reads (`COPY --chown`, `WORKDIR` under `USER`). A layer's outline (the
/// executor's `outline.rs`) keeps every file of these names whole, so that a
/// skeleton unpacked from the outline is the one unpacked from the layer.
pub const SKELETON_KEEP: [&str; 2] = ["etc/passwd", "etc/group"];

impl Extent {
    /// [`Extent::Skeleton`] keeping [`SKELETON_KEEP`].
    pub fn skeleton() -> Extent {
        Extent::Skeleton {
            keep: SKELETON_KEEP.iter().map(PathBuf::from).collect(),
        }
    }
}

struct CountingReader<R> {
    inner: R,
    n: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, b: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(b)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// `rel` (a layer's parent directory) resolved in `root`. Where `parents`
/// holds the resolution of `rel`'s own parent, only the last component is
/// looked at (one lstat instead of one per component, for every new
/// directory of a deep tree); a symlink there is resolved from the root.
fn resolve_parent(
    root: &Path,
    parents: &std::collections::HashMap<PathBuf, PathBuf>,
    rel: &Path,
) -> Result<PathBuf, rootfs::RootError> {
    if let (Some(up), Some(last)) = (rel.parent(), rel.file_name()) {
        if let Some(base) = parents.get(up) {
            let candidate = base.join(last);
            match std::fs::symlink_metadata(&candidate) {
                Ok(m) if m.file_type().is_symlink() => {}
                _ => return Ok(candidate),
            }
        }
    }
    rootfs::resolve(root, rel, true)
}

/// What a `.wh.` entry means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Whiteouts {
    /// Delete what it names in the root below (applying a layer to a root).
    Apply,
    /// Nothing: an ordinary file name (plain archives).
    Literal,
    /// Keep it in overlayfs's own format (a 0/0 character device, an
    /// `opaque` xattr), so that the extracted layer can be a lower directory.
    Overlay,
}

/// Applies the layer read from `r` to `root`.
pub fn apply_layer<R: Read + Send>(root: &Path, r: R) -> Result<ExtractStats, ExtractError> {
    apply_layer_as(root, r, &Extent::Full)
}

/// Applies as much of the layer read from `r` to `root` as `extent` says.
pub fn apply_layer_as<R: Read + Send>(
    root: &Path,
    r: R,
    extent: &Extent,
) -> Result<ExtractStats, ExtractError> {
    apply_read_ahead(root, r, Whiteouts::Apply, false, extent).map(|(stats, _)| stats)
}

/// Unpacks a plain archive (ADD, `tar://` contexts): `.wh.` names are files.
pub fn apply_archive<R: Read>(root: &Path, r: R) -> Result<ExtractStats, ExtractError> {
    apply(
        root,
        decompress(r).map_err(ExtractError::Read)?,
        Whiteouts::Literal,
        &Extent::Full,
    )
}

/// Extracts one layer on its own into the empty directory `dir`, whiteouts
/// kept as overlayfs reads them (needs root: device nodes, `trusted.` xattrs).
/// Returns the digest of the uncompressed stream (the layer's diff id).
pub fn extract_overlay_layer<R: Read + Send>(
    dir: &Path,
    r: R,
) -> Result<(ExtractStats, Digest), ExtractError> {
    let (stats, digest) = apply_read_ahead(dir, r, Whiteouts::Overlay, true, &Extent::Full)?;
    let digest = digest.ok_or_else(|| {
        ExtractError::Read(io::Error::other("the stream ended before it was hashed"))
    })?;
    Ok((stats, digest))
}

/// Bytes inflated per message between the two threads of an extraction.
const CHUNK: usize = 256 << 10;

/// [`apply`] with the stream decompressed (and, with `hash`, its
/// uncompressed bytes hashed) on a thread of its own: inflating and writing
/// files then use two cores instead of taking turns on one.
fn apply_read_ahead<R: Read + Send>(
    root: &Path,
    r: R,
    whiteouts: Whiteouts,
    hash: bool,
    extent: &Extent,
) -> Result<(ExtractStats, Option<Digest>), ExtractError> {
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<io::Result<Vec<u8>>>(8);
        let producer = s.spawn(move || -> Option<Digest> {
            let mut hasher = hash.then(Sha256::new);
            let mut d = match decompress(r) {
                Ok(d) => d,
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return None;
                }
            };
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match read_full(&mut d, &mut buf) {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return None;
                    }
                };
                if n == 0 {
                    return hasher.map(|h| Digest::from_sha256(h.finalize().into()));
                }
                buf.truncate(n);
                if let Some(h) = hasher.as_mut() {
                    h.update(&buf);
                }
                if tx.send(Ok(buf)).is_err() {
                    return None;
                }
            }
        });
        let mut chunks = ChannelReader {
            rx,
            buf: Vec::new(),
            pos: 0,
        };
        let stats = apply(root, &mut chunks, whiteouts, extent)?;
        // Past the tar's end marker: the padding belongs to the diff id too.
        io::copy(&mut chunks, &mut io::sink()).map_err(ExtractError::Read)?;
        drop(chunks);
        let digest = producer.join().map_err(|_| {
            ExtractError::Read(io::Error::other("the decompressing thread panicked"))
        })?;
        Ok((stats, digest))
    })
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The consuming end of [`apply_read_ahead`]'s channel.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<io::Result<Vec<u8>>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Applies a decompressed tar stream.
fn apply<R: Read>(
    root: &Path,
    r: R,
    whiteouts: Whiteouts,
    extent: &Extent,
) -> Result<ExtractStats, ExtractError> {
    let is_root = Uid::effective().is_root();
    let mut counter = CountingReader { inner: r, n: 0 };
    let mut stats = ExtractStats::default();
    let mut created: HashSet<PathBuf> = HashSet::new();
    // Directories this extraction made empty (`fresh`), and the parents it
    // made on the way (`implicit`): in a fresh directory nothing exists but
    // what this extraction put there, so a new name needs no lstat to know
    // it is free — one lstat per entry otherwise, which on an overlay looks
    // through every layer (most of a skeleton's time, by `perf`).
    let mut fresh: HashSet<PathBuf> = HashSet::new();
    let mut implicit: HashSet<PathBuf> = HashSet::new();
    // Device nodes this process may not make (no CAP_MKNOD: CRI-O's set,
    // user namespaces): skipped as containerd skips them there. The layer
    // itself keeps them (base layers pass through untouched), and RUN sees
    // the runtime's /dev on every rung, never the root's.
    let mut devices_skipped = 0usize;
    // Parent directories already resolved (and present), by layer path: each
    // costs an lstat per component otherwise. Anything that removes an entry
    // or adds a symlink may change a resolution, and empties it.
    let mut parents: std::collections::HashMap<PathBuf, PathBuf> = Default::default();
    // Directory times are set last: writing children would change them.
    let mut dir_times: Vec<(PathBuf, i64)> = Vec::new();
    let mut copy_buf = vec![0u8; COPY_BUF];
    {
        let mut archive = tar::Archive::new(&mut counter);
        for entry in archive.entries().map_err(ExtractError::Read)? {
            let mut entry = entry.map_err(ExtractError::Read)?;
            stats.entries += 1;
            let raw_path = entry.path_bytes().into_owned();
            let name = String::from_utf8_lossy(&raw_path).into_owned();
            let io_err = |source| ExtractError::Io {
                entry: name.clone(),
                source,
            };
            let path_err = |source| ExtractError::Path {
                entry: name.clone(),
                source,
            };
            // Names are bytes: a non-UTF-8 name is kept as it is (`name`,
            // lossy, is for messages only).
            let comps = rootfs::clean_components(std::ffi::OsStr::from_bytes(&raw_path))
                .map_err(path_err)?;
            let Some(base) = comps.last().map(|c| c.as_bytes().to_vec()) else {
                continue; // the root itself ("./")
            };
            let parent_rel: PathBuf = comps[..comps.len() - 1].iter().collect();
            let parent = match parents.get(&parent_rel) {
                Some(p) => p.clone(),
                None => resolve_parent(root, &parents, &parent_rel).map_err(path_err)?,
            };

            if let Some(hidden) = base
                .strip_prefix(WHITEOUT_PREFIX.as_bytes())
                .filter(|_| whiteouts != Whiteouts::Literal)
            {
                // A whiteout removes or (as overlayfs's) makes a name:
                // what is in its directory is no longer known.
                fresh.remove(&parent);
                if whiteouts == Whiteouts::Overlay {
                    overlay_whiteout(&parent, &base, hidden).map_err(io_err)?;
                } else if base == OPAQUE_MARKER.as_bytes() {
                    clear_dir_except(&parent, &created).map_err(io_err)?;
                } else {
                    let victim = parent.join(std::ffi::OsStr::from_bytes(hidden));
                    remove_any(&victim).map_err(io_err)?;
                }
                parents.clear();
                continue;
            }
            let entry_rel = parent_rel.join(std::ffi::OsStr::from_bytes(&base));
            if let std::collections::hash_map::Entry::Vacant(e) = parents.entry(parent_rel) {
                std::fs::create_dir_all(&parent).map_err(io_err)?;
                implicit.extend(
                    parent
                        .ancestors()
                        .take_while(|a| *a != root)
                        .map(Path::to_path_buf),
                );
                e.insert(parent.clone());
            }
            let target = parent.join(std::ffi::OsStr::from_bytes(&base));
            // Whether something may be at `target` already.
            let may_exist =
                !fresh.contains(&parent) || created.contains(&target) || implicit.contains(&target);
            let header = entry.header().clone();
            let kind = header.entry_type();
            let mode = header.mode().map_err(io_err)? & 0o7777;
            let uid = header.uid().map_err(io_err)? as u32;
            let gid = header.gid().map_err(io_err)? as u32;
            let mtime = header.mtime().unwrap_or(0) as i64;
            if let Extent::Skeleton { keep } = extent {
                let data = matches!(
                    kind,
                    tar::EntryType::Regular
                        | tar::EntryType::Continuous
                        | tar::EntryType::GNUSparse
                        | tar::EntryType::Link
                );
                let rel = target.strip_prefix(root).unwrap_or(&target);
                if data && !keep.iter().any(|k| k == rel) {
                    if may_exist && std::fs::symlink_metadata(&target).is_ok() {
                        remove_any(&target).map_err(io_err)?;
                        parents.clear();
                    }
                    stats.skipped.push(rel.to_path_buf());
                    continue;
                }
            }
            if matches!(
                kind,
                tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse
            ) {
                // Most entries: created exclusively (never through a link
                // planted at the name) and finished through the descriptor,
                // without a path lookup per metadata call.
                let f = match create_new(&target) {
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        remove_any(&target).map_err(io_err)?;
                        parents.clear();
                        create_new(&target)
                    }
                    r => r,
                };
                let mut f = f.map_err(io_err)?;
                copy_with(&mut entry, &mut f, &mut copy_buf).map_err(io_err)?;
                let owner =
                    nix::unistd::fchown(&f, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
                chown_outcome(owner, uid, gid, is_root).map_err(io_err)?;
                f.set_permissions(std::fs::Permissions::from_mode(mode))
                    .map_err(io_err)?;
                let ft = filetime::FileTime::from_unix_time(mtime, 0);
                filetime::set_file_handle_times(&f, Some(ft), Some(ft)).map_err(io_err)?;
                set_xattrs(&mut entry, &target, &name);
                created.insert(target);
                continue;
            }
            let existing = if may_exist {
                std::fs::symlink_metadata(&target).ok()
            } else {
                None
            };
            // Replace whatever is there, except a directory by a directory.
            if let Some(m) = &existing {
                if !(m.is_dir() && kind.is_dir()) {
                    remove_any(&target).map_err(io_err)?;
                    parents.clear();
                }
            }
            match kind {
                tar::EntryType::Directory => {
                    if existing.as_ref().is_none_or(|m| !m.is_dir()) {
                        std::fs::create_dir(&target).map_err(io_err)?;
                        fresh.insert(target.clone());
                    }
                    // A directory at a resolved place: its entries' parent.
                    parents.insert(entry_rel, target.clone());
                    dir_times.push((target.clone(), mtime));
                }
                tar::EntryType::Symlink => {
                    let link = entry
                        .link_name_bytes()
                        .ok_or_else(|| io_err(io::Error::other("symlink without target")))?
                        .into_owned();
                    std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(&link), &target)
                        .map_err(io_err)?;
                    parents.clear();
                }
                tar::EntryType::Link => {
                    let link = entry
                        .link_name_bytes()
                        .ok_or_else(|| io_err(io::Error::other("hardlink without target")))?
                        .into_owned();
                    let link_s = String::from_utf8_lossy(&link).into_owned();
                    let bad = || ExtractError::BadLink {
                        entry: name.clone(),
                        target: link_s.clone(),
                    };
                    let src = rootfs::resolve(root, std::ffi::OsStr::from_bytes(&link), false)
                        .map_err(|_| bad())?;
                    let m = std::fs::symlink_metadata(&src).map_err(|_| bad())?;
                    if m.is_dir() {
                        return Err(bad());
                    }
                    std::fs::hard_link(&src, &target).map_err(io_err)?;
                    created.insert(target);
                    continue; // a hardlink shares the target's metadata
                }
                tar::EntryType::Char | tar::EntryType::Block => {
                    let dev = nix::sys::stat::makedev(
                        header.device_major().ok().flatten().unwrap_or(0) as u64,
                        header.device_minor().ok().flatten().unwrap_or(0) as u64,
                    );
                    let sflag = if kind == tar::EntryType::Char {
                        SFlag::S_IFCHR
                    } else {
                        SFlag::S_IFBLK
                    };
                    if let Err(e) = mknod(&target, sflag, Mode::from_bits_truncate(mode), dev) {
                        if is_root && e != nix::errno::Errno::EPERM {
                            return Err(io_err(e.into()));
                        }
                        tracing::debug!("skipping device {name}: {e}");
                        devices_skipped += 1;
                        continue;
                    }
                }
                tar::EntryType::Fifo => {
                    mkfifo(&target, Mode::from_bits_truncate(mode))
                        .map_err(|e| io_err(e.into()))?;
                }
                tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink => continue,
                other => {
                    tracing::warn!("skipping layer entry {name} of unsupported type {other:?}");
                    continue;
                }
            }
            set_metadata(&target, kind, mode, uid, gid, mtime, is_root).map_err(io_err)?;
            set_xattrs(&mut entry, &target, &name);
            created.insert(target);
        }
    }
    for (d, t) in dir_times.into_iter().rev() {
        let ft = filetime::FileTime::from_unix_time(t, 0);
        let _ = filetime::set_symlink_file_times(&d, ft, ft);
    }
    if devices_skipped > 0 {
        tracing::info!(
            "{devices_skipped} device node(s) of a layer not made in the root (mknod is not \
             permitted here); the image keeps them, RUN sees the runtime's /dev"
        );
    }
    stats.tar_bytes = counter.n;
    Ok(stats)
}

fn set_metadata(
    p: &Path,
    kind: tar::EntryType,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    is_root: bool,
) -> io::Result<()> {
    let owner = nix::unistd::fchownat(
        nix::fcntl::AT_FDCWD,
        p,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    );
    chown_outcome(owner, uid, gid, is_root)?;
    if kind != tar::EntryType::Symlink {
        // After chown: chown clears setuid bits.
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
    }
    if kind != tar::EntryType::Directory {
        let ft = filetime::FileTime::from_unix_time(mtime, 0);
        filetime::set_symlink_file_times(p, ft, ft)?;
    }
    Ok(())
}

/// What a failed chown means: nothing when not root (the owner cannot be
/// kept and need not be), the one-id limit in a user namespace, else an error.
fn chown_outcome(r: nix::Result<()>, uid: u32, gid: u32, is_root: bool) -> io::Result<()> {
    match r {
        Ok(()) => Ok(()),
        Err(e) if !is_root => {
            tracing::trace!("chown to {uid}:{gid}: {e}");
            Ok(())
        }
        Err(nix::errno::Errno::EINVAL) if crate::ids::active() => Err(io::Error::other(format!(
            "owner {uid}:{gid}: {}",
            crate::ids::limit(uid, gid)
        ))),
        Err(e) => Err(e.into()),
    }
}

/// Extended attributes carried as PAX records; one the file system refuses
/// is logged, not fatal (as tar and containerd do).
fn set_xattrs<R: Read>(entry: &mut tar::Entry<R>, target: &Path, name: &str) {
    if let Ok(Some(exts)) = entry.pax_extensions() {
        for ext in exts.flatten() {
            if let Some(attr) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") {
                let attr = std::ffi::OsStr::from_bytes(attr);
                if let Err(e) = xattr::set(target, attr, ext.value_bytes()) {
                    tracing::debug!("xattr {attr:?} on {name}: {e}");
                }
            }
        }
    }
}

/// A file's content is written with one buffer reused across entries: most
/// layer files then take one write, not one per 8 KiB (`io::copy`'s).
const COPY_BUF: usize = 128 << 10;

fn create_new(p: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(p)
}

fn copy_with(r: &mut dyn Read, w: &mut std::fs::File, buf: &mut [u8]) -> io::Result<u64> {
    use std::io::Write;
    let mut n = 0u64;
    loop {
        let k = read_full(r, buf)?;
        if k == 0 {
            return Ok(n);
        }
        w.write_all(&buf[..k])?;
        n += k as u64;
    }
}

/// The overlayfs form of a whiteout in `parent`: an opaque directory is
/// marked with `trusted.overlay.opaque=y`, a removed name is a 0/0 device.
fn overlay_whiteout(parent: &Path, base: &[u8], hidden: &[u8]) -> io::Result<()> {
    std::fs::create_dir_all(parent)?;
    if base == OPAQUE_MARKER.as_bytes() {
        return xattr::set(parent, "trusted.overlay.opaque", b"y");
    }
    let victim = parent.join(std::ffi::OsStr::from_bytes(hidden));
    remove_any(&victim)?;
    mknod(
        &victim,
        SFlag::S_IFCHR,
        Mode::empty(),
        nix::sys::stat::makedev(0, 0),
    )
    .map_err(io::Error::from)
}

/// Removes a file, symlink or directory tree; a missing path is fine.
pub fn remove_any(p: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(p),
        Ok(_) => std::fs::remove_file(p),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn clear_dir_except(dir: &Path, keep: &HashSet<PathBuf>) -> io::Result<()> {
    let rd = match std::fs::read_dir(dir) {
        Ok(r) => r,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in rd {
        let p = e?.path();
        if !keep.contains(&p) {
            remove_any(&p)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
