//! Paths inside a build root. Every write the executor makes on behalf of an
//! image or a Dockerfile goes through [`resolve`], so that no `..`, absolute
//! symlink or symlink chain can move it outside the root.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("path {path:?} escapes the build root")]
    Escape { path: String },
    #[error("too many levels of symbolic links resolving {path:?}")]
    Loop { path: String },
    #[error("{path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("user {user:?} not found in {root}/etc/passwd")]
    NoUser { user: String, root: PathBuf },
    #[error("group {group:?} not found in {root}/etc/group")]
    NoGroup { group: String, root: PathBuf },
}

/// Splits an image path into its normal components; `..` is an error rather than
/// clamped, because a layer or Dockerfile path containing it is suspicious.
pub fn clean_components<P: AsRef<Path> + ?Sized>(path: &P) -> Result<Vec<&OsStr>, RootError> {
    let path = path.as_ref();
    let mut out = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
            Component::ParentDir => {
                if out.pop().is_none() {
                    return Err(RootError::Escape {
                        path: path.display().to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

/// Resolves `path` (an absolute image path) to a host path inside `root`.
///
/// Symlinks among the parent components are followed as the container would see
/// them: absolute targets restart at `root`; a `..` that would climb above the
/// root is an error. The last component is never followed when `follow_last` is
/// false, so a write replaces a symlink instead of writing through it.
pub fn resolve<P: AsRef<Path> + ?Sized>(
    root: &Path,
    path: &P,
    follow_last: bool,
) -> Result<PathBuf, RootError> {
    let path = path.as_ref();
    let mut parts: Vec<Vec<u8>> = Vec::new();
    let mut pending: Vec<Vec<u8>> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.as_bytes().to_vec()),
            Component::ParentDir => Some(b"..".to_vec()),
            _ => None,
        })
        .rev()
        .collect();
    let mut links = 0;
    while let Some(c) = pending.pop() {
        if c == b".." {
            if parts.pop().is_none() {
                return Err(RootError::Escape {
                    path: path.display().to_string(),
                });
            }
            continue;
        }
        let is_last = pending.is_empty();
        let mut candidate = root.to_path_buf();
        for p in &parts {
            candidate.push(OsStr::from_bytes(p));
        }
        candidate.push(OsStr::from_bytes(&c));
        if is_last && !follow_last {
            parts.push(c);
            break;
        }
        match std::fs::symlink_metadata(&candidate) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > 40 {
                    return Err(RootError::Loop {
                        path: path.display().to_string(),
                    });
                }
                let target = std::fs::read_link(&candidate).map_err(|source| RootError::Io {
                    path: candidate.clone(),
                    source,
                })?;
                let tb = target.as_os_str().as_bytes();
                if tb.starts_with(b"/") {
                    parts.clear();
                }
                for t in target.components().rev() {
                    match t {
                        Component::Normal(n) => pending.push(n.as_bytes().to_vec()),
                        Component::ParentDir => pending.push(b"..".to_vec()),
                        _ => {}
                    }
                }
            }
            _ => parts.push(c),
        }
    }
    let mut out = root.to_path_buf();
    for p in &parts {
        out.push(OsStr::from_bytes(p));
    }
    Ok(out)
}

/// Numeric ids for a USER / --chown spec, looked up in the root's own
/// /etc/passwd and /etc/group (never the builder's).
pub fn lookup_user(root: &Path, spec: &str) -> Result<(u32, u32), RootError> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let passwd = read_db(root, "etc/passwd");
    let (uid, primary_gid) = match user.parse::<u32>() {
        Ok(n) => (
            n,
            passwd
                .iter()
                .find(|f| f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n))
                .and_then(|f| f.get(3).and_then(|x| x.parse().ok()))
                .unwrap_or(0),
        ),
        Err(_) => match passwd
            .iter()
            .find(|f| f.first().map(String::as_str) == Some(user))
        {
            Some(f) => (
                f.get(2).and_then(|x| x.parse().ok()).unwrap_or(0),
                f.get(3).and_then(|x| x.parse().ok()).unwrap_or(0),
            ),
            // BuildKit knows `root` without a passwd entry (`FROM scratch`).
            None if user == "root" => (0, 0),
            None => {
                return Err(RootError::NoUser {
                    user: user.to_string(),
                    root: root.to_path_buf(),
                })
            }
        },
    };
    let gid = match group {
        None => primary_gid,
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => read_db(root, "etc/group")
                .iter()
                .find(|f| f.first().map(String::as_str) == Some(g))
                .and_then(|f| f.get(2).and_then(|x| x.parse().ok()))
                .or((g == "root").then_some(0))
                .ok_or_else(|| RootError::NoGroup {
                    group: g.to_string(),
                    root: root.to_path_buf(),
                })?,
        },
    };
    Ok((uid, gid))
}

/// The home directory Docker gives RUN when the config sets no `HOME`: the
/// user's passwd entry, else `/` (moby's `oci.WithUser` / BuildKit).
pub fn home_of(root: &Path, spec: &str) -> String {
    let user = spec.split(':').next().unwrap_or(spec);
    let passwd = read_db(root, "etc/passwd");
    let entry = match user.parse::<u32>() {
        Ok(n) => passwd
            .iter()
            .find(|f| f.get(2).and_then(|x| x.parse::<u32>().ok()) == Some(n)),
        Err(_) => passwd
            .iter()
            .find(|f| f.first().map(String::as_str) == Some(user)),
    };
    entry
        .and_then(|f| f.get(5))
        .filter(|h| !h.is_empty())
        .cloned()
        .unwrap_or_else(|| "/".to_string())
}

fn read_db(root: &Path, rel: &str) -> Vec<Vec<String>> {
    // Resolve inside the root: /etc may itself be a symlink in an image.
    let Ok(p) = resolve(root, rel, true) else {
        return Vec::new();
    };
    std::fs::read_to_string(p)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.split(':').map(str::to_string).collect())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn symlinks_stay_inside() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        std::fs::create_dir_all(r.join("real/sub")).unwrap();
        symlink("/real", r.join("abs")).unwrap();
        symlink("../../../../..", r.join("up")).unwrap();
        symlink("real/sub", r.join("rel")).unwrap();
        symlink("loop2", r.join("loop1")).unwrap();
        symlink("loop1", r.join("loop2")).unwrap();
        assert_eq!(
            resolve(r, "/abs/sub/f", false).unwrap(),
            r.join("real/sub/f")
        );
        assert_eq!(resolve(r, "rel/f", false).unwrap(), r.join("real/sub/f"));
        assert_eq!(resolve(r, "/abs", false).unwrap(), r.join("abs"));
        assert!(matches!(
            resolve(r, "up/etc/passwd", false),
            Err(RootError::Escape { .. })
        ));
        assert!(matches!(
            resolve(r, "../x", false),
            Err(RootError::Escape { .. })
        ));
        assert!(matches!(
            resolve(r, "loop1/x", false),
            Err(RootError::Loop { .. })
        ));
    }

    #[test]
    fn users_from_the_root() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("etc")).unwrap();
        std::fs::write(
            d.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(d.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        assert_eq!(lookup_user(d.path(), "app").unwrap(), (1000, 1001));
        assert_eq!(lookup_user(d.path(), "app:staff").unwrap(), (1000, 50));
        assert_eq!(lookup_user(d.path(), "1234:5").unwrap(), (1234, 5));
        assert!(lookup_user(d.path(), "nobody").is_err());
        assert!(lookup_user(d.path(), "app:nogroup").is_err());
        // No /etc/passwd (`FROM scratch`): `root` is still uid 0, as in
        // BuildKit; other names are errors.
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(lookup_user(empty.path(), "root").unwrap(), (0, 0));
        assert_eq!(lookup_user(empty.path(), "root:root").unwrap(), (0, 0));
        assert!(lookup_user(empty.path(), "app").is_err());
        assert!(lookup_user(empty.path(), "root:staff").is_err());
    }
}
