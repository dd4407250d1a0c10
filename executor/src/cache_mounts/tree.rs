//! A cache mount's tree on the builder's own disk. Both directions cross a
//! trust boundary: a restore writes what a stored listing says (anyone who
//! can push to the cache repository wrote it), and a save reads what a RUN
//! step left (the Dockerfile's author controls it). Neither may reach
//! outside the mount's directory, so nothing here follows a symbolic link:
//!
//! - a stored listing is checked whole before anything is written
//!   ([`check`]): relative paths of plain components only, each entry
//!   beneath a directory the listing itself creates earlier, no duplicates,
//!   so no entry can sit beneath a link;
//! - every write goes through descriptors opened component by component
//!   with `O_NOFOLLOW` from the mount's own directory ([`Beneath`]); links
//!   are created last, and owners and modes are set through descriptors
//!   (`fchown`/`fchmod`) or with `AT_SYMLINK_NOFOLLOW`;
//! - a save walks the tree the same way ([`listing`]): a link is listed as
//!   its target text and never read through, and files are hashed through
//!   descriptors opened with `O_NOFOLLOW`.
//!
//! `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` would do the walk in one
//! call, but Docker's default seccomp profile of some engine versions
//! refuses it with `EPERM` (not `ENOSYS`), which is the in-place rung's
//! home; a walk of plain `openat` calls works everywhere.

use kiln_common::digest::{Digest, HashingReader};
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::{Mode, SFlag};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// One entry of a cache mount's tree, as stored in its listing.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub path: String,
    /// `f`ile, `d`irectory or `l`ink.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Why a stored listing was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("is not a relative path of plain components")]
    NotRelative,
    #[error("is listed twice")]
    Duplicate,
    #[error("is not beneath a directory the listing creates before it")]
    NotBeneathDirectory,
    #[error("has an unknown kind {0:?}")]
    UnknownKind(char),
    #[error("is a link without a target")]
    NoTarget,
    #[error("is a file without a digest")]
    NoDigest,
}

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("entry {path:?} of the stored listing {why}")]
    Refused { path: String, why: Refusal },
    #[error("{op} {path:?} in {}", dir.display())]
    Io {
        op: &'static str,
        dir: PathBuf,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Checks a stored listing before anything of it is written: every path is
/// relative and made of plain components, listed once, and its parent is
/// the root or a directory listed before it — so no entry lies beneath a
/// link or a file, whatever order the writes take.
pub fn check(entries: &[Entry]) -> Result<(), TreeError> {
    let refuse = |e: &Entry, why| TreeError::Refused {
        path: e.path.clone(),
        why,
    };
    let mut seen: std::collections::HashMap<&str, char> = std::collections::HashMap::new();
    for e in entries {
        let plain = !e.path.is_empty()
            && e.path
                .split('/')
                .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains('\0'));
        if !plain {
            return Err(refuse(e, Refusal::NotRelative));
        }
        match (e.kind, &e.target, &e.digest) {
            ('d', _, _) => {}
            ('l', None, _) => return Err(refuse(e, Refusal::NoTarget)),
            ('f', _, None) => return Err(refuse(e, Refusal::NoDigest)),
            ('l' | 'f', _, _) => {}
            (k, _, _) => return Err(refuse(e, Refusal::UnknownKind(k))),
        }
        if let Some((parent, _)) = e.path.rsplit_once('/') {
            if seen.get(parent) != Some(&'d') {
                return Err(refuse(e, Refusal::NotBeneathDirectory));
            }
        }
        if seen.insert(&e.path, e.kind).is_some() {
            return Err(refuse(e, Refusal::Duplicate));
        }
    }
    Ok(())
}

fn errno(e: nix::Error) -> std::io::Error {
    std::io::Error::from_raw_os_error(e as i32)
}

/// A directory every operation stays beneath: paths are walked one
/// component at a time from its descriptor, none followed if it is a link.
pub struct Beneath {
    root: OwnedFd,
    dir: PathBuf,
}

impl Beneath {
    /// Opens `dir`, which must itself be a directory and not a link.
    pub fn open(dir: &Path) -> Result<Beneath, TreeError> {
        let root =
            nix::fcntl::open(dir, dir_flags(), Mode::empty()).map_err(|e| TreeError::Io {
                op: "opening",
                dir: dir.to_path_buf(),
                path: String::new(),
                source: errno(e),
            })?;
        Ok(Beneath {
            root,
            dir: dir.to_path_buf(),
        })
    }

    fn io(&self, op: &'static str, path: &str) -> impl FnOnce(nix::Error) -> TreeError {
        let (dir, path) = (self.dir.clone(), path.to_string());
        move |e| TreeError::Io {
            op,
            dir,
            path,
            source: errno(e),
        }
    }

    /// The descriptor of `rel`'s parent directory and `rel`'s last name;
    /// every component on the way must be a directory, not a link.
    fn parent<'p>(&self, rel: &'p str) -> Result<(Option<OwnedFd>, &'p OsStr), TreeError> {
        let mut parts = rel.split('/');
        let last = parts.next_back().unwrap_or(rel);
        let mut cur: Option<OwnedFd> = None;
        for c in parts {
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            let next = nix::fcntl::openat(at, c, dir_flags(), Mode::empty())
                .map_err(self.io("opening the parent of", rel))?;
            cur = Some(next);
        }
        Ok((cur, OsStr::new(last)))
    }

    fn at<'a>(&'a self, parent: &'a Option<OwnedFd>) -> std::os::fd::BorrowedFd<'a> {
        parent.as_ref().map_or(self.root.as_fd(), |f| f.as_fd())
    }

    /// Creates directory `rel` (private until [`Self::set_owner_mode`]).
    pub fn mkdir(&self, rel: &str) -> Result<(), TreeError> {
        let (parent, name) = self.parent(rel)?;
        nix::sys::stat::mkdirat(self.at(&parent), name, Mode::from_bits_truncate(0o700))
            .map_err(self.io("creating directory", rel))
    }

    /// Creates link `rel` pointing at `target` (its text is never resolved
    /// here) with the owner given.
    pub fn symlink(&self, rel: &str, target: &str, uid: u32, gid: u32) -> Result<(), TreeError> {
        let (parent, name) = self.parent(rel)?;
        nix::unistd::symlinkat(target, self.at(&parent), name)
            .map_err(self.io("creating link", rel))?;
        // Best effort, as for files: an id the namespace does not map stays
        // the executor's.
        let _ = nix::unistd::fchownat(
            self.at(&parent),
            name,
            Some(uid.into()),
            Some(gid.into()),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        );
        Ok(())
    }

    /// Creates file `rel` (it must not exist) and returns it for writing.
    pub fn create_file(&self, rel: &str) -> Result<std::fs::File, TreeError> {
        let (parent, name) = self.parent(rel)?;
        let flags =
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(
            self.at(&parent),
            name,
            flags,
            Mode::from_bits_truncate(0o600),
        )
        .map_err(self.io("creating file", rel))?;
        Ok(std::fs::File::from(fd))
    }

    /// Moves the private file `from` (a fetched blob, outside the tree) to
    /// `rel`, which must not exist.
    pub fn take_file(&self, from: &Path, rel: &str) -> Result<(), TreeError> {
        let (parent, name) = self.parent(rel)?;
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            from,
            self.at(&parent),
            name,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(self.io("moving into place", rel))
    }

    /// Sets owner, then mode (a `chown` clears set-id bits) of the file or
    /// directory `rel`, through a descriptor opened without following.
    /// Owners are best effort (an id the namespace does not map stays the
    /// executor's); modes are not.
    pub fn set_owner_mode(
        &self,
        rel: &str,
        uid: u32,
        gid: u32,
        mode: u32,
    ) -> Result<(), TreeError> {
        let (parent, name) = self.parent(rel)?;
        let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
        let fd = nix::fcntl::openat(self.at(&parent), name, flags, Mode::empty())
            .map_err(self.io("opening", rel))?;
        let _ = nix::unistd::fchown(&fd, Some(uid.into()), Some(gid.into()));
        nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(mode & 0o7777))
            .map_err(self.io("setting the mode of", rel))
    }
}

fn dir_flags() -> OFlag {
    OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC
}

/// The tree under `dir`, sorted, files hashed; `dir` itself must be a
/// directory, not a link. Nothing is followed: a link is listed with its
/// target text, and only directories and regular files are read.
pub fn listing(dir: &Path) -> Result<Vec<Entry>, TreeError> {
    let b = Beneath::open(dir)?;
    let mut out = Vec::new();
    let root = b.root.try_clone().map_err(|source| TreeError::Io {
        op: "listing",
        dir: dir.to_path_buf(),
        path: String::new(),
        source,
    })?;
    walk(&b, root, "", &mut out)?;
    Ok(out)
}

fn walk(b: &Beneath, fd: OwnedFd, prefix: &str, out: &mut Vec<Entry>) -> Result<(), TreeError> {
    let at = fd.try_clone().map_err(|source| TreeError::Io {
        op: "listing",
        dir: b.dir.clone(),
        path: prefix.to_string(),
        source,
    })?;
    let mut d = nix::dir::Dir::from_fd(fd).map_err(b.io("listing", prefix))?;
    let mut names: Vec<OsString> = Vec::new();
    for e in d.iter() {
        let e = e.map_err(b.io("listing", prefix))?;
        let n = OsStr::from_bytes(e.file_name().to_bytes());
        if n != "." && n != ".." {
            names.push(n.to_os_string());
        }
    }
    names.sort();
    for n in names {
        let rel = match prefix {
            "" => n.to_string_lossy().into_owned(),
            p => format!("{p}/{}", n.to_string_lossy()),
        };
        let st = nix::sys::stat::fstatat(&at, n.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(b.io("reading", &rel))?;
        let kind = SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits());
        let mut e = Entry {
            path: rel.clone(),
            kind: 'f',
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            digest: None,
            size: 0,
            target: None,
        };
        if kind == SFlag::S_IFDIR {
            e.kind = 'd';
            out.push(e);
            let sub = nix::fcntl::openat(&at, n.as_os_str(), dir_flags(), Mode::empty())
                .map_err(b.io("opening", &rel))?;
            walk(b, sub, &rel, out)?;
        } else if kind == SFlag::S_IFLNK {
            e.kind = 'l';
            let t =
                nix::fcntl::readlinkat(&at, n.as_os_str()).map_err(b.io("reading link", &rel))?;
            e.target = Some(t.to_string_lossy().into_owned());
            out.push(e);
        } else if kind == SFlag::S_IFREG {
            let flags = OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
            let f = nix::fcntl::openat(&at, n.as_os_str(), flags, Mode::empty())
                .map_err(b.io("opening", &rel))?;
            let mut r = HashingReader::new(std::fs::File::from(f));
            std::io::copy(&mut r, &mut std::io::sink()).map_err(|source| TreeError::Io {
                op: "hashing",
                dir: b.dir.clone(),
                path: rel.clone(),
                source,
            })?;
            let (d, size) = r.finish();
            e.digest = Some(d);
            e.size = size;
            out.push(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: char) -> Entry {
        Entry {
            path: path.into(),
            kind,
            mode: 0o755,
            uid: 0,
            gid: 0,
            digest: (kind == 'f').then(|| Digest::sha256_of(b"x")),
            size: 0,
            target: (kind == 'l').then(|| "/etc".to_string()),
        }
    }

    fn refusal(entries: &[Entry]) -> Option<(String, Refusal)> {
        match check(entries) {
            Ok(()) => None,
            Err(TreeError::Refused { path, why }) => Some((path, why)),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn listings_that_reach_outside_are_refused() {
        let ok = [
            entry("d", 'd'),
            entry("d/f", 'f'),
            entry("d/l", 'l'),
            entry("f", 'f'),
        ];
        assert_eq!(refusal(&ok), None);
        let cases: Vec<(Vec<Entry>, &str, Refusal)> = vec![
            // A file beneath a link, in either order.
            (
                vec![entry("x", 'l'), entry("x/pwned", 'f')],
                "x/pwned",
                Refusal::NotBeneathDirectory,
            ),
            (
                vec![entry("x/pwned", 'f'), entry("x", 'l')],
                "x/pwned",
                Refusal::NotBeneathDirectory,
            ),
            // A directory beneath a link (a mode change through it).
            (
                vec![entry("x", 'l'), entry("x/d", 'd')],
                "x/d",
                Refusal::NotBeneathDirectory,
            ),
            // Beneath a file.
            (
                vec![entry("f", 'f'), entry("f/g", 'f')],
                "f/g",
                Refusal::NotBeneathDirectory,
            ),
            // The same path as a link and as a directory.
            (
                vec![entry("x", 'd'), entry("x", 'l')],
                "x",
                Refusal::Duplicate,
            ),
            (
                vec![entry("x", 'l'), entry("x", 'd'), entry("x/f", 'f')],
                "x",
                Refusal::Duplicate,
            ),
            (vec![entry("../up", 'f')], "../up", Refusal::NotRelative),
            (
                vec![entry("d", 'd'), entry("d/../../up", 'f')],
                "d/../../up",
                Refusal::NotRelative,
            ),
            (
                vec![entry("/etc/passwd", 'f')],
                "/etc/passwd",
                Refusal::NotRelative,
            ),
            (vec![entry("./f", 'f')], "./f", Refusal::NotRelative),
            (vec![entry("d//f", 'f')], "d//f", Refusal::NotRelative),
            (vec![entry("", 'd')], "", Refusal::NotRelative),
            (vec![entry("p", 'p')], "p", Refusal::UnknownKind('p')),
        ];
        for (entries, path, why) in cases {
            assert_eq!(
                refusal(&entries),
                Some((path.to_string(), why)),
                "{entries:?}"
            );
        }
        let mut link = entry("l", 'l');
        link.target = None;
        assert_eq!(refusal(&[link]), Some(("l".into(), Refusal::NoTarget)));
        let mut file = entry("f", 'f');
        file.digest = None;
        assert_eq!(refusal(&[file]), Some(("f".into(), Refusal::NoDigest)));
    }

    #[test]
    fn writes_never_pass_through_a_link() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mount = d.path().join("m");
        std::fs::create_dir(&mount).unwrap();
        std::os::unix::fs::symlink(outside.path(), mount.join("x")).unwrap();
        let b = Beneath::open(&mount).unwrap();
        assert!(b.create_file("x/pwned").is_err());
        assert!(b.mkdir("x/d").is_err());
        assert!(b.set_owner_mode("x", 0, 0, 0o777).is_err());
        assert!(b.symlink("x/l", "/", 0, 0).is_err());
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
        let before = std::fs::metadata(outside.path()).unwrap();
        assert_ne!(before.permissions().mode() & 0o777, 0o777);
        // The directory itself must not be a link.
        assert!(Beneath::open(&mount.join("x")).is_err());
    }

    #[test]
    fn listings_are_sorted_hash_files_and_never_follow_links() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "marker").unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::write(d.path().join("b/c/f"), "x").unwrap();
        std::fs::write(d.path().join("a"), "y").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.path().join("out")).unwrap();
        let l = listing(d.path()).unwrap();
        let paths: Vec<&str> = l.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "b/c", "b/c/f", "l", "out"]);
        assert_eq!(l[0].digest, Some(Digest::sha256_of(b"y")));
        assert_eq!(l[4].target.as_deref(), Some("a"));
        assert_eq!((l[5].kind, l[5].digest.as_ref()), ('l', None));
        // A mount directory that is itself a link lists nothing through it.
        let link = d.path().join("b/link");
        std::os::unix::fs::symlink(outside.path(), &link).unwrap();
        assert!(matches!(listing(&link), Err(TreeError::Io { .. })));
    }
}
