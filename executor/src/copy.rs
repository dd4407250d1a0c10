//! COPY/ADD file semantics: glob sources, Docker's destination rules, ownership
//! and mode flags, hardlinks kept within one copy, and a record of every path
//! written so the step's layer needs no scan.

use crate::dockerignore::{glob_segment, DockerIgnore};
use crate::snapshot::{Change, Diff};
use kiln_layers::rootfs::{self, RootError};
use std::collections::HashMap;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("{src}: no such file or directory in {place}")]
    NotFound { src: String, place: String },
    #[error("{0}")]
    Root(#[from] RootError),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(
        "when copying several sources, the destination {dest:?} must be a directory and end with /"
    )]
    DestNotDir { dest: String },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CopyError + '_ {
    move |source| CopyError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Owner {
    Fixed(u32, u32),
    /// Keep the source's owner (COPY --from, ADD of an archive).
    Preserve,
}

#[derive(Debug, Clone, Copy)]
pub struct CopyOptions {
    pub owner: Owner,
    pub chmod: Option<u32>,
    /// Regular files get a placeholder of their size in the root (sparse,
    /// so nothing is written) and the layer reads their content from the
    /// source. Only for steps after which nothing reads the root's files:
    /// copying a GiB into the root would otherwise cost more than writing
    /// its layer.
    pub defer_contents: bool,
}

/// A source matched in a source tree.
#[derive(Debug, Clone)]
pub struct SourceMatch {
    /// Path relative to the source tree, `/`-separated.
    pub rel: String,
    pub path: PathBuf,
}

/// Expands one COPY source (possibly a glob) in `base`, skipping excluded paths.
pub fn match_sources(
    base: &Path,
    src: &str,
    ignore: Option<&DockerIgnore>,
    place: &str,
) -> Result<Vec<SourceMatch>, CopyError> {
    let comps = rootfs::clean_components(src)?;
    let segs: Vec<String> = comps
        .iter()
        .map(|c| c.to_string_lossy().into_owned())
        .collect();
    let mut found = Vec::new();
    if segs.is_empty() {
        found.push(SourceMatch {
            rel: String::new(),
            path: base.to_path_buf(),
        });
    } else {
        glob_walk(base, "", &segs, &mut found);
    }
    let excluded = |rel: &str| ignore.is_some_and(|i| !rel.is_empty() && i.excluded(rel));
    found.retain(|m| !excluded(&m.rel));
    if found.is_empty() {
        return Err(CopyError::NotFound {
            src: src.to_string(),
            place: place.to_string(),
        });
    }
    Ok(found)
}

/// Whether a COPY source is a pattern (Go `filepath.Match` syntax).
pub fn has_magic(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn glob_walk(base: &Path, prefix: &str, segs: &[String], out: &mut Vec<SourceMatch>) {
    let Some((first, rest)) = segs.split_first() else {
        out.push(SourceMatch {
            rel: prefix.to_string(),
            path: base.join(prefix),
        });
        return;
    };
    let join = |name: &str| {
        if prefix.is_empty() {
            name.to_string()
        } else {
            format!("{prefix}/{name}")
        }
    };
    if !has_magic(first) {
        let rel = join(first);
        // Follow symlinks only inside the tree.
        if let Ok(p) = rootfs::resolve(base, &rel, true) {
            if p.symlink_metadata().is_ok() {
                glob_walk(base, &rel, rest, out);
            }
        }
        return;
    }
    let Ok(rd) = std::fs::read_dir(base.join(prefix)) else {
        return;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        if glob_segment(first, &n) {
            glob_walk(base, &join(&n), rest, out);
        }
    }
}

/// Resolved metadata of a source after following a top-level symlink.
fn source_meta(m: &SourceMatch, base: &Path) -> Result<(PathBuf, std::fs::Metadata), CopyError> {
    let p = rootfs::resolve(base, &m.rel, true)?;
    let meta = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
    Ok((p, meta))
}

/// Copies the matched sources to `dest` (an absolute image path) in `root`.
pub fn copy_sources(
    root: &Path,
    base: &Path,
    sources: &[SourceMatch],
    dest: &str,
    ignore: Option<&DockerIgnore>,
    opts: &CopyOptions,
    diff: &mut Diff,
) -> Result<(), CopyError> {
    let dest_is_dir_hint = dest.ends_with('/');
    if sources.len() > 1 && !dest_is_dir_hint {
        return Err(CopyError::DestNotDir {
            dest: dest.to_string(),
        });
    }
    let mut links = HashMap::new();
    for s in sources {
        let (src_path, meta) = source_meta(s, base)?;
        let dest_host = rootfs::resolve(root, dest, true)?;
        if meta.is_dir() {
            mkdir_all(root, &dest_host, opts, diff)?;
            copy_dir_contents(
                root, &src_path, &s.rel, &dest_host, ignore, opts, diff, &mut links,
            )?;
        } else {
            let existing_dir = std::fs::metadata(&dest_host).is_ok_and(|m| m.is_dir());
            let target = if dest_is_dir_hint || existing_dir {
                mkdir_all(root, &dest_host, opts, diff)?;
                let name = Path::new(&s.rel)
                    .file_name()
                    .map(|n| n.to_owned())
                    .unwrap_or_default();
                dest_host.join(name)
            } else {
                if let Some(parent) = dest_host.parent() {
                    mkdir_all(root, parent, opts, diff)?;
                }
                dest_host
            };
            copy_entry(root, &src_path, &meta, &target, opts, diff, &mut links)?;
        }
    }
    Ok(())
}

/// Creates missing directories down to `dir`, recording them.
pub fn mkdir_all(
    root: &Path,
    dir: &Path,
    opts: &CopyOptions,
    diff: &mut Diff,
) -> Result<(), CopyError> {
    let rel = dir.strip_prefix(root).unwrap_or(dir).to_path_buf();
    let mut cur = root.to_path_buf();
    let mut cur_rel = PathBuf::new();
    for c in rel.components() {
        cur.push(c);
        cur_rel.push(c);
        match std::fs::symlink_metadata(&cur) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => {
                return Err(CopyError::Io {
                    path: cur.clone(),
                    source: io::Error::other("not a directory"),
                })
            }
            Err(_) => {
                std::fs::create_dir(&cur).map_err(io_err(&cur))?;
                let mode = opts.chmod.unwrap_or(0o755);
                std::fs::set_permissions(&cur, std::fs::Permissions::from_mode(mode))
                    .map_err(io_err(&cur))?;
                if let Owner::Fixed(u, g) = opts.owner {
                    let _ = std::os::unix::fs::lchown(&cur, Some(u), Some(g));
                }
                diff.add(cur_rel.clone(), Change::Add);
            }
        }
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn copy_dir_contents(
    root: &Path,
    src: &Path,
    src_rel: &str,
    dest: &Path,
    ignore: Option<&DockerIgnore>,
    opts: &CopyOptions,
    diff: &mut Diff,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), CopyError> {
    let mut entries: Vec<_> = std::fs::read_dir(src)
        .map_err(io_err(src))?
        .collect::<Result<_, _>>()
        .map_err(io_err(src))?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let name = e.file_name();
        let rel = if src_rel.is_empty() {
            name.to_string_lossy().into_owned()
        } else {
            format!("{src_rel}/{}", name.to_string_lossy())
        };
        let p = e.path();
        let m = std::fs::symlink_metadata(&p).map_err(io_err(&p))?;
        if ignore.is_some_and(|i| i.prunes(&rel, || m.is_dir())) {
            continue;
        }
        // An excluded directory is walked only for what `!` re-includes.
        let is_excluded = ignore.is_some_and(|i| i.excluded(&rel));
        let target = dest.join(&name);
        if m.is_dir() {
            if !is_excluded {
                copy_entry(root, &p, &m, &target, opts, diff, links)?;
            }
            copy_dir_contents(root, &p, &rel, &target, ignore, opts, diff, links)?;
            if is_excluded && std::fs::symlink_metadata(&target).is_err() {
                continue;
            }
            // Children changed the mtime; restore the source's.
            let t = filetime::FileTime::from_last_modification_time(&m);
            let _ = filetime::set_file_times(&target, t, t);
        } else if !is_excluded {
            copy_entry(root, &p, &m, &target, opts, diff, links)?;
        }
    }
    Ok(())
}

/// Copies one entry (not recursing), replacing what is at `target`.
fn copy_entry(
    root: &Path,
    src: &Path,
    m: &std::fs::Metadata,
    target: &Path,
    opts: &CopyOptions,
    diff: &mut Diff,
    links: &mut HashMap<(u64, u64), PathBuf>,
) -> Result<(), CopyError> {
    let ft = m.file_type();
    let mut deferred = None;
    let existing = std::fs::symlink_metadata(target).ok();
    if ft.is_dir() {
        match existing {
            Some(e) if e.is_dir() => {}
            Some(_) => {
                kiln_layers::extract::remove_any(target).map_err(io_err(target))?;
                std::fs::create_dir(target).map_err(io_err(target))?;
            }
            None => {
                // Parent chain may be missing when a dir is reincluded.
                if let Some(p) = target.parent() {
                    if !p.exists() {
                        mkdir_all(root, p, opts, diff)?;
                    }
                }
                std::fs::create_dir(target).map_err(io_err(target))?
            }
        }
    } else {
        if existing.is_some() {
            kiln_layers::extract::remove_any(target).map_err(io_err(target))?;
        }
        if let Some(p) = target.parent() {
            if !p.exists() {
                mkdir_all(root, p, opts, diff)?;
            }
        }
        if m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = links.get(&key) {
                std::fs::hard_link(first, target).map_err(io_err(target))?;
                diff.add(
                    target.strip_prefix(root).unwrap_or(target).to_path_buf(),
                    Change::Add,
                );
                return Ok(());
            }
            links.insert(key, target.to_path_buf());
        }
        if ft.is_symlink() {
            let l = std::fs::read_link(src).map_err(io_err(src))?;
            std::os::unix::fs::symlink(&l, target).map_err(io_err(target))?;
        } else if ft.is_file() && opts.defer_contents {
            let f = std::fs::File::create_new(target).map_err(io_err(target))?;
            f.set_len(m.len()).map_err(io_err(target))?;
            deferred = Some(src.to_path_buf());
        } else if ft.is_file() {
            std::fs::copy(src, target).map_err(io_err(target))?;
        } else {
            // Devices, fifos and sockets are not copied from a context.
            return Ok(());
        }
    }
    let (uid, gid) = match opts.owner {
        Owner::Fixed(u, g) => (u, g),
        Owner::Preserve => (m.uid(), m.gid()),
    };
    let _ = std::os::unix::fs::lchown(target, Some(uid), Some(gid));
    if !ft.is_symlink() {
        let mode = opts.chmod.unwrap_or(m.mode() & 0o7777);
        std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))
            .map_err(io_err(target))?;
    }
    let t = filetime::FileTime::from_last_modification_time(m);
    let _ = filetime::set_symlink_file_times(target, t, t);
    let rel = target.strip_prefix(root).unwrap_or(target).to_path_buf();
    match deferred {
        Some(source) => diff.add_with_content(rel, source),
        None => diff.add(rel, Change::Add),
    }
    Ok(())
}

/// Writes a file from bytes (heredocs, downloaded URLs), recording it.
pub fn write_file(
    root: &Path,
    dest: &Path,
    content: &[u8],
    mode: u32,
    opts: &CopyOptions,
    diff: &mut Diff,
) -> Result<(), CopyError> {
    if let Some(p) = dest.parent() {
        mkdir_all(root, p, opts, diff)?;
    }
    kiln_layers::extract::remove_any(dest).map_err(io_err(dest))?;
    std::fs::write(dest, content).map_err(io_err(dest))?;
    if let Owner::Fixed(u, g) = opts.owner {
        let _ = std::os::unix::fs::lchown(dest, Some(u), Some(g));
    }
    std::fs::set_permissions(
        dest,
        std::fs::Permissions::from_mode(opts.chmod.unwrap_or(mode)),
    )
    .map_err(io_err(dest))?;
    diff.add(
        dest.strip_prefix(root).unwrap_or(dest).to_path_buf(),
        Change::Add,
    );
    Ok(())
}
