//! Warmed base layers kept extracted, used as overlay lower directories.
//!
//! Unpacking a base image is most of a cold build's cost, and all of it for a
//! build that changes one file. The warmer (`--extract-layers`) can keep each
//! base layer extracted in the shared cache directory under
//! `extracted/sha256/<diff id>`: written into a temporary directory, its
//! uncompressed stream hashed while extracted and compared with the image
//! config's diff id, then renamed into place — so a directory under a diff id
//! is complete and verified, or absent. Whiteouts are kept in overlayfs's own
//! format, so the directories stack as they are.
//!
//! A build whose isolation runs RUN in an overlay above the root (the
//! executor's `stacked` module) then mounts its root
//! as an overlay of those directories (read-only lowers: nothing the build
//! does reaches them) under an upper directory of its own, and unpacks only
//! the layers that are not there. Where anything of that cannot be done, the
//! build unpacks as before.

use crate::extract::{self, ExtractError};
use kiln_common::Digest;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LowerError {
    #[error("extracting layer {diff_id} from {}", blob.display())]
    Extract {
        diff_id: Digest,
        blob: PathBuf,
        #[source]
        source: Box<ExtractError>,
    },
    #[error("layer {} unpacks to {actual}, but its image's config says {expected}", blob.display())]
    Mismatch {
        blob: PathBuf,
        expected: Digest,
        actual: Digest,
    },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> LowerError + 'a {
    move |source| LowerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Where a cache directory keeps extracted layers.
pub fn extracted_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("extracted").join("sha256")
}

/// The directory of the layer whose uncompressed digest is `diff_id`.
pub fn layer_dir(cache_dir: &Path, diff_id: &Digest) -> PathBuf {
    extracted_dir(cache_dir).join(diff_id.hex())
}

/// Extracts the layer blob at `blob` as `diff_id` into `cache_dir`, unless
/// it is there. Returns whether it extracted. Needs root (owners, device
/// whiteouts, `trusted.` xattrs).
pub fn extract_layer(cache_dir: &Path, blob: &Path, diff_id: &Digest) -> Result<bool, LowerError> {
    let dest = layer_dir(cache_dir, diff_id);
    if dest.is_dir() {
        return Ok(false);
    }
    let parent = extracted_dir(cache_dir);
    std::fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(TMP_PREFIX)
        .tempdir_in(&parent)
        .map_err(io_err("creating a directory in", &parent))?;
    let f = std::fs::File::open(blob).map_err(io_err("opening", blob))?;
    let (_, actual) =
        extract::extract_overlay_layer(tmp.path(), f).map_err(|source| LowerError::Extract {
            diff_id: diff_id.clone(),
            blob: blob.to_path_buf(),
            source: Box::new(source),
        })?;
    if &actual != diff_id {
        return Err(LowerError::Mismatch {
            blob: blob.to_path_buf(),
            expected: diff_id.clone(),
            actual,
        });
    }
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .map_err(io_err("setting the mode of", tmp.path()))?;
    let tmp = tmp.keep();
    match std::fs::rename(&tmp, &dest) {
        Ok(()) => Ok(true),
        // Another warmer finished the same layer first: keep theirs.
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(false)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io_err("renaming into", &dest)(e))
        }
    }
}

/// An extraction in progress (or interrupted) is a directory named so; it
/// becomes `<diff id hex>` only once complete and verified.
const TMP_PREFIX: &str = ".tmp-";

/// Bytes of each complete extracted layer (its regular files' lengths), by
/// diff id (hex); empty when nothing is extracted. For the warmer's
/// `--max-size`, which counts them with the blobs they came from.
pub fn sizes(cache_dir: &Path) -> std::collections::HashMap<String, u64> {
    fn du(p: &Path) -> u64 {
        let Ok(rd) = std::fs::read_dir(p) else {
            return 0;
        };
        rd.flatten()
            .map(|e| match e.file_type() {
                Ok(t) if t.is_dir() => du(&e.path()),
                Ok(t) if t.is_file() => e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => 0,
            })
            .sum()
    }
    let Ok(rd) = std::fs::read_dir(extracted_dir(cache_dir)) else {
        return Default::default();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (!name.starts_with(TMP_PREFIX)).then(|| (name, du(&e.path())))
        })
        .collect()
}

/// Removes extracted layers whose diff id `keep` does not accept, and
/// interrupted extractions (`.tmp-*`) older than `grace`. Returns the names
/// removed (or, with `dry_run`, that would be).
pub fn retain(
    cache_dir: &Path,
    keep: impl Fn(&str) -> bool,
    grace: std::time::Duration,
    dry_run: bool,
) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(extracted_dir(cache_dir)) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let young = e
            .metadata()
            .ok()
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.elapsed().ok())
            .is_none_or(|a| a < grace);
        if young || (!name.starts_with(TMP_PREFIX) && keep(&name)) {
            continue;
        }
        if dry_run || std::fs::remove_dir_all(e.path()).is_ok() {
            removed.push(name);
        }
    }
    removed
}

/// Whether a directory at `p` can be a stacked root's lower: not on
/// overlayfs, where a root stacked on it could not carry RUN's own overlay
/// (the kernel allows two levels); unknown counts as no.
pub fn can_be_lower(p: &Path) -> bool {
    nix::sys::statfs::statfs(p)
        .is_ok_and(|s| s.filesystem_type() != nix::sys::statfs::OVERLAYFS_SUPER_MAGIC)
}

/// The extracted directories for the bottom layers of an image, bottom
/// first, as far as they go without a gap. Directories on overlayfs are not
/// offered ([`can_be_lower`]).
pub fn available(cache_dir: &Path, diff_ids: &[Digest]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for id in diff_ids {
        let d = layer_dir(cache_dir, id);
        if !d.is_dir() || !can_be_lower(&d) {
            break;
        }
        out.push(d);
    }
    out
}
