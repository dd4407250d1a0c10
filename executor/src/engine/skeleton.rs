//! A root without its files, for the target stage's COPY-only tail.
//!
//! When every step left in the target stage is a COPY, ADD or WORKDIR
//! (no RUN; no later stage reads this root), the steps only resolve paths
//! in the root and make directories: the layer they write holds what they
//! copy and its parent directories, never the files the base and the
//! cached layers already hold. So the root is unpacked as a skeleton
//! ([`kiln_layers::extract::Extent::Skeleton`]): directories, symlinks and
//! whiteouts exactly as in full, `/etc/passwd` and `/etc/group` in full
//! (`--chown` and USER names), other files left out. This is what a
//! one-file change costs on a fresh runner: the cached layers above the
//! base were written in full before, thousands of files for a venv or a
//! `node_modules`, to be read by nobody. A cached layer stored with its
//! outline ([`crate::outline`]) is not even fetched: the skeleton is
//! unpacked from the outline, the layer only if the root must be made whole.
//!
//! A step that writes beneath a left-out file, or leaves a directory where
//! one was (the skeleton has no file there to fail on), is done again on
//! the root in full: the skipped layers are applied again, whole, and the
//! step repeated, so that type conflicts and errors are exactly those of a
//! full root. A file written over a left-out file is the same write on
//! either root (COPY of a library directory over the base's, say). WORKDIR
//! is checked before it runs. Files the layers delete or replace later stay
//! on the list: the check is conservative, never wrong. Directory times may
//! differ from a full root's where a later layer wrote into a directory
//! without listing it: there a full extraction leaves the time of the
//! extraction, no value of the image's.

use crate::model::ImageLayer;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// A root unpacked without its files.
pub(super) struct SkeletonRoot {
    /// Where the left-out files would be (relative to the root).
    skipped: BTreeSet<PathBuf>,
    /// The layers unpacked as a skeleton, in order (warmed lowers stacked
    /// under the root are whole and not among them).
    layers: Vec<ImageLayer>,
}

impl SkeletonRoot {
    pub fn new(skipped: Vec<PathBuf>, layers: Vec<ImageLayer>) -> SkeletonRoot {
        SkeletonRoot {
            skipped: skipped.into_iter().collect(),
            layers,
        }
    }

    pub fn files_left_out(&self) -> usize {
        self.skipped.len()
    }

    /// Whether writing one of `paths` (relative to `root`, as a step's
    /// diff names them) on this skeleton may have gone otherwise on the
    /// full root ([`meets`]).
    pub fn met_by<'p>(&self, root: &Path, mut paths: impl Iterator<Item = &'p Path>) -> bool {
        paths.any(|p| {
            meets(&self.skipped, p, || {
                std::fs::symlink_metadata(root.join(p)).is_ok_and(|m| m.is_dir())
            })
        })
    }

    /// Whether making the directory `dir` (relative) may go otherwise on
    /// the full root: it is, or lies beneath, a left-out file.
    pub fn met_by_dir(&self, dir: &Path) -> bool {
        meets(&self.skipped, dir, || true)
    }

    /// The layers to apply whole to make the root full.
    pub fn layers(&self) -> &[ImageLayer] {
        &self.layers
    }
}

/// Whether a step's write at `path` (relative to the root) may differ on
/// the skeleton from the full root: a left-out file lies above it (the full
/// root has a file where the step needed a directory), or `path` is a
/// left-out file and `is_dir` says the step left a directory there. A file
/// or link written over a left-out file is the same write either way.
fn meets(skipped: &BTreeSet<PathBuf>, path: &Path, is_dir: impl FnOnce() -> bool) -> bool {
    let above = path
        .ancestors()
        .skip(1)
        .any(|a| !a.as_os_str().is_empty() && skipped.contains(a));
    above || (skipped.contains(path) && is_dir())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_write_meets_a_left_out_file_above_it_or_a_directory_over_one() {
        let s = set(&["etc/hostname", "app/d/f", "usr/lib/libx.so"]);
        let p = Path::new;
        let (dir, file) = (|| true, || false);
        // Beneath a left-out file: the full root has a file there.
        assert!(meets(&s, p("etc/hostname/x"), file));
        assert!(meets(&s, p("app/d/f/g/h"), dir));
        // A directory where a left-out file was; a file over one is the
        // same write on either root.
        assert!(meets(&s, p("etc/hostname"), dir));
        assert!(!meets(&s, p("etc/hostname"), file));
        // Directories holding left-out files, and neighbours, do not.
        assert!(!meets(&s, p("app"), dir));
        assert!(!meets(&s, p("app/d"), dir));
        assert!(!meets(&s, p("app/d/g"), file));
        assert!(!meets(&s, p("app/d/f2"), dir));
        assert!(!meets(&s, p("usr/lib/libx"), dir));
        assert!(!meets(&s, p(""), dir));
        assert!(!meets(&BTreeSet::new(), p("etc/hostname"), dir));
    }
}
