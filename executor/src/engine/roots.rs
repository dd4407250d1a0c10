//! Stage roots: made where the isolation wants them, stacked on warmed
//! extracted layers where it can mount them, removed beside the push once
//! the image is only its layers.

use super::*;

impl Builder {
    /// A fresh, empty root directory where the isolation wants roots.
    pub(super) fn new_root(&self, prefix: &str) -> Result<PathBuf, StepError> {
        let parent = self.isolation.roots_dir().unwrap_or(self.work_path());
        let root = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir_in(parent)
            .map_err(StepError::io("creating a root in", parent))?
            .keep();
        std::fs::set_permissions(&root, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .map_err(StepError::io("setting the mode of", &root))?;
        Ok(root)
    }

    /// Mounts `root` (new and empty) over extracted copies of the bottom
    /// `layers`, where the isolation allows a stacked root: the warmed
    /// directory's, or for a base two or more stages of the build start
    /// from (`shared`: how many of `layers` are its own, if it is such a
    /// base) the build's own, extracted once (`shared_base.rs`). A `skeleton` root
    /// uses the build's copies only where another stage already made them:
    /// extracting the whole base for it would cost more than its skeleton.
    /// Returns how many layers are thereby in place (0: unpack all).
    pub(super) async fn stack_base(
        &self,
        root: &Path,
        layers: &[crate::model::ImageLayer],
        shared: Option<usize>,
        skeleton: bool,
    ) -> usize {
        // Extracted layers carry overlayfs's `trusted.*` marks, which a
        // user namespace's overlay (`userxattr`) does not read.
        if !self.isolation.stacks_on_overlay() || kiln_layers::ids::active() {
            return 0;
        }
        let ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
        if let Some(cache_dir) = &self.opts.cache_dir {
            let lowers = kiln_layers::lowers::available(cache_dir, &ids);
            if !lowers.is_empty() {
                return self.stack(root, &lowers, layers.len(), "warmed");
            }
        }
        let own = shared.unwrap_or(0).min(layers.len());
        if own == 0 || !kiln_layers::lowers::can_be_lower(self.work_path()) {
            return 0;
        }
        match self.shared_lowers(&layers[..own], !skeleton).await {
            Ok(lowers) if !lowers.is_empty() => self.stack(root, &lowers, layers.len(), "shared"),
            Ok(_) => 0,
            Err(e) => {
                tracing::warn!(
                    "unpacking the base for this stage instead of sharing it: {}",
                    kiln_common::report::Report(&e)
                );
                0
            }
        }
    }

    /// Mounts `root` as an overlay of `lowers` (the bottom of `total`
    /// layers; `what` says whose extracted copies they are); returns how many are in
    /// place (0 when mounting failed: unpack all).
    fn stack(&self, root: &Path, lowers: &[PathBuf], total: usize, what: &str) -> usize {
        let name = root.file_name().unwrap_or_default().to_string_lossy();
        let upper = self.work_path().join(format!("{name}.upper"));
        let work = self.work_path().join(format!("{name}.work"));
        match crate::stacked::stack(root, &upper, &work, lowers) {
            Ok(guard) => {
                tracing::info!(
                    "root stacked on {} {what} layer(s) of {total}: nothing of them unpacked",
                    lowers.len(),
                );
                self.stacked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(guard);
                lowers.len()
            }
            Err(e) => {
                tracing::warn!(
                    "unpacking the base instead: {}",
                    kiln_common::report::Report(&e)
                );
                0
            }
        }
    }

    /// From here on the image is its layers: the roots are removed on a
    /// thread of their own while the cache writes and the push wait on the
    /// network (tens of thousands of unlinks for an unpacked base).
    /// Roots mounted over warmed layers stay until their mounts go.
    pub(super) fn remove_roots(&self, roots: Vec<PathBuf>) {
        let stacked = self.stacked.lock().map(|s| !s.is_empty()).unwrap_or(true);
        if stacked || roots.is_empty() {
            return;
        }
        let t = std::thread::spawn(move || {
            for r in roots {
                if let Err(e) = std::fs::remove_dir_all(&r) {
                    tracing::debug!("removing {}: {e}", r.display());
                }
            }
        });
        if let Ok(mut slot) = self.roots_removal.lock() {
            *slot = Some(t);
        }
    }
}
