//! A root without its files, for the target stage's COPY-only tail.
//!
//! When every step left in the target stage is a COPY, ADD or WORKDIR
//! (no RUN; no later stage reads this root), the steps only resolve paths
//! in the root and make directories: the layer they write holds what they
//! copy and its parent directories, never the files the base and the
//! cached layers already hold. So the root is unpacked as a skeleton
//! ([`Extent::Skeleton`]): directories, symlinks and whiteouts exactly as in
//! full, `/etc/passwd` and `/etc/group` in full (`--chown` and USER names),
//! other files left out. This is what a one-file change costs on a fresh
//! runner: the cached layers above the base were written in full before,
//! thousands of files for a venv or a `node_modules`, to be read by nobody.
//!
//! A step that writes where a left-out file is, or beneath one (the
//! skeleton has no file there to replace or to fail on), is done again on
//! the root in full: the skipped layers are applied again, whole, and the
//! step repeated, so that overwrites, type conflicts and errors are exactly
//! those of a full root. WORKDIR is checked before it runs. Files the layers
//! delete or replace later stay on the list: the check is conservative,
//! never wrong. Directory times may differ from a full root's where a later
//! layer wrote into a directory without listing it: there a full
//! extraction leaves the time of the extraction, no value of the image's.

use crate::model::ImageLayer;
use kiln_layers::extract::Extent;
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Files a skeleton root keeps: what naming a user or group reads.
const KEEP: [&str; 2] = ["etc/passwd", "etc/group"];

/// A root unpacked without its files.
pub(super) struct SkeletonRoot {
    /// Where the left-out files would be (relative to the root).
    skipped: BTreeSet<PathBuf>,
    /// The layers unpacked as a skeleton, in order (warmed lowers stacked
    /// under the root are whole and not among them).
    layers: Vec<ImageLayer>,
}

impl SkeletonRoot {
    pub fn extent() -> Extent {
        Extent::Skeleton {
            keep: KEEP.iter().map(PathBuf::from).collect(),
        }
    }

    pub fn new(skipped: Vec<PathBuf>, layers: Vec<ImageLayer>) -> SkeletonRoot {
        SkeletonRoot {
            skipped: skipped.into_iter().collect(),
            layers,
        }
    }

    pub fn files_left_out(&self) -> usize {
        self.skipped.len()
    }

    /// Whether one of `paths` (relative to the root) is a left-out file or
    /// lies beneath one.
    pub fn meets_any<'p>(&self, mut paths: impl Iterator<Item = &'p Path>) -> bool {
        paths.any(|p| meets(&self.skipped, p))
    }

    /// The layers to apply whole to make the root full.
    pub fn layers(&self) -> &[ImageLayer] {
        &self.layers
    }
}

/// Whether `path` (relative to the root) is a left-out file or lies
/// beneath one.
fn meets(skipped: &BTreeSet<PathBuf>, path: &Path) -> bool {
    path.ancestors()
        .any(|a| !a.as_os_str().is_empty() && skipped.contains(a))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(paths: &[&str]) -> BTreeSet<PathBuf> {
        paths.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn a_path_meets_a_left_out_file_at_or_above_it() {
        let s = set(&["etc/hostname", "app/d/f", "usr/lib/libx.so"]);
        let p = Path::new;
        assert!(meets(&s, p("etc/hostname")));
        assert!(meets(&s, p("etc/hostname/x")));
        assert!(meets(&s, p("app/d/f/g/h")));
        // Directories holding left-out files, and neighbours, do not.
        assert!(!meets(&s, p("app")));
        assert!(!meets(&s, p("app/d")));
        assert!(!meets(&s, p("app/d/g")));
        assert!(!meets(&s, p("app/d/f2")));
        assert!(!meets(&s, p("usr/lib/libx")));
        assert!(!meets(&s, p("")));
        assert!(!meets(&BTreeSet::new(), p("etc/hostname")));
    }
}
