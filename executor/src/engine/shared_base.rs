//! A base image that two or more stages of one build start from, extracted
//! once.
//!
//! A Dockerfile with independent builder stages on the same base (an apt
//! stage and a pip stage on `debian:bookworm`, joined by a final stage on
//! it too) unpacked that base once per stage: three times the same tens of
//! thousands of files, two of them at once on the machine's cores. Where
//! the isolation runs RUN above an overlay and can stack a root (as for
//! the warmer's extracted layers, `roots.rs`), the first stage that needs
//! the base extracts its layers into the build's own directory in the
//! warmer's format ([`kiln_layers::lowers`]: verified against the diff id,
//! renamed into place once complete) and every stage's root is an overlay
//! on them: read-only lowers, an upper of the stage's own. A stage that
//! wants a layer another is extracting waits for it. BuildKit does the
//! same with its snapshots; the image and its digests are those of roots
//! unpacked one by one (a test compares them).

use super::error::StepError;
use super::stage::Shared;
use super::Builder;
use crate::model::ImageLayer;
use std::collections::BTreeSet;
use std::path::PathBuf;

impl Builder {
    /// The base images (by name as the stages' `FROM` expands it) two or
    /// more of the `needed` stages start from.
    pub(super) fn shared_bases_of(&self, sh: &Shared<'_>, needed: &[usize]) -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut shared = BTreeSet::new();
        for &i in needed {
            let Ok((name, _)) = self.stage_base(sh, &sh.df.stages[i]) else {
                continue;
            };
            let image = !name.eq_ignore_ascii_case("scratch") && sh.df.stage_index(&name).is_none();
            if image && !seen.insert(name.clone()) {
                shared.insert(name);
            }
        }
        shared
    }

    /// The build's extracted copies of `layers` (a shared base's), each
    /// extracted by the first stage that asks (where `extract`) and waited
    /// for by the others; bottom first, as far as they go without a gap.
    pub(super) async fn shared_lowers(
        &self,
        layers: &[ImageLayer],
        extract: bool,
    ) -> Result<Vec<PathBuf>, StepError> {
        let dir = self.work_path().join("lowers");
        for l in layers.iter().take_while(|_| extract) {
            let gate = self.lower_gates.gate(&l.diff_id);
            let _one = gate.lock().await;
            if kiln_layers::lowers::layer_dir(&dir, &l.diff_id).is_dir() {
                continue;
            }
            let blob = self.fetcher.ensure_local(l, None).await?;
            let (d, id) = (dir.clone(), l.diff_id.clone());
            tokio::task::spawn_blocking(move || kiln_layers::lowers::extract_layer(&d, &blob, &id))
                .await
                .map_err(|e| {
                    StepError::io("extracting a layer into", &dir)(std::io::Error::other(e))
                })?
                .map_err(|e| StepError::Lower(Box::new(e)))?;
        }
        let ids: Vec<_> = layers.iter().map(|l| l.diff_id.clone()).collect();
        Ok(kiln_layers::lowers::available(&dir, &ids))
    }
}
