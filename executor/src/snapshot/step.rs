//! A step's diff on the rungs without an overlay, whichever way it is
//! taken: a [`RootWatch`] per stage root kept from step to step (the
//! default), or two full stat walks (`--snapshot-mode=full`).

use super::watch::Walk;
use super::{Diff, RootWatch, ScanIndex, SnapshotError};
use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The watches of a build's stage roots, one per root.
pub struct RootWatches {
    full_walks: bool,
    /// Keyed by the stage root's path; the inode tells a root made anew at
    /// the same path, whose watch is stale.
    idle: Mutex<HashMap<PathBuf, (u64, RootWatch)>>,
}

/// What a step's diff is taken against.
pub enum Baseline {
    Index(ScanIndex),
    Watch {
        key: PathBuf,
        ino: u64,
        watch: RootWatch,
    },
}

/// A step's changes.
pub struct Changes {
    pub diff: Diff,
    baseline: Baseline,
}

impl Changes {
    /// Whether the step added `rel` where nothing was before.
    pub fn is_new(&self, rel: &Path) -> bool {
        match &self.baseline {
            Baseline::Index(index) => !index.contains(rel),
            Baseline::Watch { watch, .. } => watch.is_new(rel),
        }
    }
}

impl RootWatches {
    pub fn new(full_walks: bool) -> RootWatches {
        RootWatches {
            full_walks,
            idle: Mutex::new(HashMap::new()),
        }
    }

    /// Right before a step: what `root` holds now, for the stage root `key`
    /// (the same directory as `root`, or the one whose entries the in-place
    /// rung moved into `/`). `skip` and `always` as [`RootWatch::diff`].
    pub fn begin(
        &self,
        key: &Path,
        root: &Path,
        skip: &dyn Fn(&Path) -> bool,
        always: &[PathBuf],
    ) -> Result<Baseline, SnapshotError> {
        if self.full_walks {
            return ScanIndex::capture_filtered(root, skip).map(Baseline::Index);
        }
        let ino = std::fs::symlink_metadata(key)
            .map_err(super::io_err(key))?
            .ino();
        let kept = (self.idle.lock().unwrap_or_else(|p| p.into_inner())).remove(key);
        let watch = match kept {
            Some((was, mut watch)) if was == ino => {
                let walk = watch.refresh(root, skip, always)?;
                tracing::debug!("snapshot baseline of {}: {walk:?}", key.display());
                watch
            }
            _ => RootWatch::start(root, skip)?,
        };
        Ok(Baseline::Watch {
            key: key.to_path_buf(),
            ino,
            watch,
        })
    }

    /// Right after the step: what it changed.
    pub fn finish(
        &self,
        baseline: Baseline,
        root: &Path,
        skip: &dyn Fn(&Path) -> bool,
        always: &[PathBuf],
    ) -> Result<Changes, SnapshotError> {
        match baseline {
            Baseline::Index(index) => Ok(Changes {
                diff: index.diff_filtered(root, skip)?,
                baseline: Baseline::Index(index),
            }),
            Baseline::Watch {
                key,
                ino,
                mut watch,
            } => {
                let (diff, walk) = watch.diff(root, skip, always)?;
                match walk {
                    Walk::Full => tracing::debug!("snapshot: the whole root was walked"),
                    Walk::Changed(n) => tracing::debug!("snapshot: {n} paths looked at"),
                }
                Ok(Changes {
                    diff,
                    baseline: Baseline::Watch { key, ino, watch },
                })
            }
        }
    }

    /// Keeps the watch of a finished step for the stage's next one.
    pub fn keep(&self, changes: Changes) -> Diff {
        if let Baseline::Watch { key, ino, watch } = changes.baseline {
            (self.idle.lock().unwrap_or_else(|p| p.into_inner())).insert(key, (ino, watch));
        }
        changes.diff
    }
}
