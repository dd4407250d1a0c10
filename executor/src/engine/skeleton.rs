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

use super::error::StepError;
use super::stage_run::StageRun;
use crate::model::ImageLayer;
use kiln_layers::extract::Extent;
use kiln_layers::rootfs;
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
}

/// Whether `path` (relative to the root) is a left-out file or lies
/// beneath one.
fn meets(skipped: &BTreeSet<PathBuf>, path: &Path) -> bool {
    path.ancestors()
        .any(|a| !a.as_os_str().is_empty() && skipped.contains(a))
}

impl StageRun<'_> {
    /// Whether the root is a skeleton with a left-out file at or above one
    /// of `paths` (relative to the root, as a step's diff names them).
    pub(super) fn skeleton_meets<'p>(&self, mut paths: impl Iterator<Item = &'p Path>) -> bool {
        self.skeleton
            .as_ref()
            .is_some_and(|sk| paths.any(|p| meets(&sk.skipped, p)))
    }

    /// Before WORKDIR makes `dir` (absolute in the image): the root in full
    /// when `dir` is or lies beneath a left-out file.
    pub(super) async fn fill_root_for_dir(
        &mut self,
        root: &Path,
        dir: &str,
    ) -> Result<(), StepError> {
        let lexical = PathBuf::from(dir.trim_start_matches('/'));
        let resolved = rootfs::resolve(root, dir, false)
            .ok()
            .and_then(|p| p.strip_prefix(root).ok().map(Path::to_path_buf));
        if self.skeleton_meets(std::iter::once(lexical.as_path()).chain(resolved.as_deref())) {
            self.fill_root(root, dir).await?;
        }
        Ok(())
    }

    /// Applies the layers the skeleton left files of, whole: the root is
    /// then what a full unpack makes. `why` names the path that needs it.
    pub(super) async fn fill_root(&mut self, root: &Path, why: &str) -> Result<(), StepError> {
        let Some(sk) = self.skeleton.take() else {
            return Ok(());
        };
        tracing::info!(
            "{why} meets a file the root was made without: unpacking its layers in full"
        );
        let t0 = std::time::Instant::now();
        let fetcher = &self.b.fetcher;
        for l in &sk.layers {
            let blob = fetcher.ensure_local(l, None).await?;
            fetcher.apply(root, l, &blob, &self.base_name).await?;
        }
        self.phases.base += t0.elapsed().as_secs_f64();
        Ok(())
    }
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
