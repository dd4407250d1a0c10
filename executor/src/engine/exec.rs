//! A stage's filesystem work: its root (unpacked on first use), RUN through
//! the isolation, WORKDIR/VOLUME directories, cache hits applied to a live
//! root, and each step's diff committed as a layer.

use super::config::RunStep;
use super::error::StepError;
use super::skeleton::SkeletonRoot;
use super::stage_run::StageRun;
use crate::cache::CacheHit;
use crate::copy::{self, CopyOptions, Owner};
use crate::isolation::RunSpec;
use crate::layer::{self, Layer};
use crate::model::{ImageLayer, LayerSource};
use crate::snapshot::Diff;
use kiln_common::image::History;
use kiln_common::Digest;
use kiln_layers::extract::Extent;
use kiln_layers::rootfs;
use std::path::{Path, PathBuf};

impl StageRun<'_> {
    /// The stage's root, its layers unpacked into a fresh directory on first use.
    pub(super) async fn ensure_root(&mut self) -> Result<PathBuf, StepError> {
        if let Some(r) = &self.root {
            return Ok(r.clone());
        }
        let t0 = std::time::Instant::now();
        let root = self.b.new_root("rootfs-")?;
        let stacked = self
            .b
            .stack_base(
                &root,
                &self.image.layers,
                self.shared_base.then_some(self.base_layers),
                self.skeleton_ok,
            )
            .await;
        let layers = &self.image.layers[stacked..];
        // A skeleton is unpacked from the layers' outlines where they
        // have them (cached layers): kilobytes instead of the layers.
        let (extent, unpacked) = match self.skeleton_ok {
            true => (
                Extent::skeleton(),
                layers.iter().map(ImageLayer::for_skeleton).collect(),
            ),
            false => (Extent::Full, layers.to_vec()),
        };
        let skipped = self
            .b
            .fetcher
            .unpack_as(&root, &unpacked, &self.base_name, &extent)
            .await
            .map_err(StepError::from)?;
        if !skipped.is_empty() {
            let sk = SkeletonRoot::new(skipped, layers.to_vec());
            let outlined = layers.iter().filter(|l| l.outline.is_some()).count();
            tracing::info!(
                "root made without the contents of {} file(s), {outlined} cached layer(s) \
                 read from their outlines: the steps left only copy into it and make directories",
                sk.files_left_out()
            );
            self.skeleton = Some(sk);
        }
        self.phases.base += t0.elapsed().as_secs_f64();
        self.root = Some(root.clone());
        Ok(root)
    }

    /// Whether the root is a skeleton on which writing `paths` (relative to
    /// `root`, as a step's diff names them) may have gone otherwise on the
    /// full root (`skeleton.rs`).
    pub(super) fn skeleton_meets<'p>(
        &self,
        root: &Path,
        paths: impl Iterator<Item = &'p Path>,
    ) -> bool {
        self.skeleton
            .as_ref()
            .is_some_and(|sk| sk.met_by(root, paths))
    }

    /// Before WORKDIR makes `dir` (absolute in the image): the root in full
    /// when `dir` is or lies beneath a left-out file.
    async fn fill_root_for_dir(&mut self, root: &Path, dir: &str) -> Result<(), StepError> {
        let lexical = PathBuf::from(dir.trim_start_matches('/'));
        let resolved = rootfs::resolve(root, dir, false)
            .ok()
            .and_then(|p| p.strip_prefix(root).ok().map(Path::to_path_buf));
        let met = self.skeleton.as_ref().is_some_and(|sk| {
            std::iter::once(lexical.as_path())
                .chain(resolved.as_deref())
                .any(|d| sk.met_by_dir(d))
        });
        if met {
            self.fill_root(root, dir).await?;
        }
        Ok(())
    }

    /// Applies the layers a skeleton root left files of, whole: the root is
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
        for l in sk.layers() {
            let blob = fetcher.ensure_local(l, None).await?;
            fetcher.apply(root, l, &blob, &self.base_name).await?;
        }
        self.phases.base += t0.elapsed().as_secs_f64();
        Ok(())
    }

    /// A fresh directory for one RUN's isolation (overlay upper, work dir).
    fn scratch(&mut self) -> Result<PathBuf, StepError> {
        self.scratch_n += 1;
        let p = self
            .b
            .work_path()
            .join(format!("scratch-{}-{}", self.stage_name, self.scratch_n));
        std::fs::create_dir_all(&p).map_err(StepError::io("creating", &p))?;
        Ok(p)
    }

    pub(super) fn history(&mut self, created_by: String, empty: bool) {
        let created = self.b.timestamp();
        self.image.config.history.push(History {
            created: Some(created),
            created_by: Some(created_by),
            comment: Some("kiln".into()),
            empty_layer: empty,
            ..Default::default()
        });
    }

    pub(super) fn commit_layer(
        &mut self,
        root: &Path,
        diff: Diff,
        created_by: &str,
    ) -> Result<Option<Layer>, StepError> {
        if diff.is_empty() {
            self.history(created_by.to_string(), true);
            return Ok(None);
        }
        let t0 = std::time::Instant::now();
        let l = layer::write_layer(root, &diff, self.b.fetcher.store(), &self.b.opts.layer)
            .map_err(StepError::Layer)?;
        self.phases.layer += t0.elapsed().as_secs_f64();
        self.image.config.rootfs.diff_ids.push(l.diff_id.clone());
        self.image.layers.push(ImageLayer {
            descriptor: l.descriptor.clone(),
            diff_id: l.diff_id.clone(),
            source: LayerSource::Local,
            outline: l.outline.clone(),
        });
        self.history(created_by.to_string(), false);
        Ok(Some(l))
    }

    /// Ends a filesystem step: its layer, or with `--single-snapshot` only
    /// a history entry (the stage's one layer comes at its end).
    pub(super) async fn finish(
        &mut self,
        diff: Diff,
        created_by: String,
    ) -> Result<Option<Layer>, StepError> {
        if self.single.is_some() {
            self.history(created_by, true);
            return Ok(None);
        }
        let root = self.ensure_root().await?;
        self.commit_layer(&root, diff.with_parents(), &created_by)
    }

    /// WORKDIR: create missing directories (0755), owned by `user` as
    /// BuildKit, kaniko and buildah do (root when no USER is set).
    pub(super) async fn make_dirs(
        &mut self,
        paths: &[String],
        user: Option<&str>,
    ) -> Result<Diff, StepError> {
        let root = self.ensure_root().await?;
        let mut diff = Diff::default();
        let (uid, gid) = match user {
            Some(u) => rootfs::lookup_user(&root, u).map_err(|source| StepError::Root {
                op: "looking up user",
                path: u.to_string(),
                source,
            })?,
            None => (0, 0),
        };
        let opts = CopyOptions {
            owner: Owner::Fixed(uid, gid),
            chmod: None,
            defer_contents: false,
        };
        for p in paths {
            self.fill_root_for_dir(&root, p).await?;
            let dir = rootfs::resolve(&root, p, true).map_err(|source| StepError::Root {
                op: "resolving",
                path: p.clone(),
                source,
            })?;
            copy::mkdir_all(&root, &dir, &opts, &mut diff).map_err(StepError::Copy)?;
        }
        Ok(diff)
    }

    /// Runs a RUN's command in the root through the build's isolation,
    /// with its mounts staged for the duration (`mounts.rs`).
    pub(super) async fn run(
        &mut self,
        step: &RunStep,
        binds: &[super::sources::Resolved],
    ) -> Result<Diff, StepError> {
        let c = &self.image.config;
        let target = kiln_common::image::Platform {
            os: c.os.clone(),
            architecture: c.architecture.clone(),
            variant: c.variant.clone(),
        };
        crate::emulation::check(
            &kiln_common::image::Platform::host(),
            &target,
            Path::new(crate::emulation::BINFMT_DIR),
        )?;
        let root = self.ensure_root().await?;
        let (uid, gid) =
            rootfs::lookup_user(&root, &step.user).map_err(|source| StepError::Root {
                op: "looking up user",
                path: step.user.clone(),
                source,
            })?;
        let mut env = step.env.clone();
        if !env.iter().any(|(k, _)| k == "HOME") {
            // Docker: HOME from the user's passwd entry when ENV sets none.
            env.push(("HOME".into(), rootfs::home_of(&root, &step.user)));
        }
        let staged = self.stage_mounts(&root, &step.mounts, binds).await?;
        env.extend(staged.env.iter().cloned());
        let spec = RunSpec {
            args: step.argv.clone(),
            env,
            cwd: step.cwd.clone(),
            uid,
            gid,
            hostname: "kiln".into(),
            network: step.network,
            sockets: staged.sockets.clone(),
            tmpfs: staged.tmpfs.clone(),
        };
        let scratch = match self.scratch() {
            Ok(s) => s,
            Err(e) => {
                let _ = self.unstage_mounts(staged, None);
                return Err(e);
            }
        };
        let isolation = &*self.b.isolation;
        let t0 = std::time::Instant::now();
        let result = tokio::task::block_in_place(|| isolation.run(&root, &scratch, &spec));
        self.phases.run += t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&scratch);
        let mut outcome = match result {
            Ok(o) => o,
            Err(e) => {
                let _ = self.unstage_mounts(staged, None);
                return Err(StepError::Isolation(e));
            }
        };
        self.unstage_mounts(staged, Some(&mut outcome.diff))?;
        if !outcome.status.success() {
            return Err(StepError::Exit {
                code: outcome.status.code().unwrap_or(-1),
                tail: outcome.tail.join("\n"),
            });
        }
        Ok(outcome.diff)
    }

    /// A hit costs no layer bytes unless the root is already live (an
    /// uncached step executed earlier), in which case the layer is applied
    /// to keep it exact. Returns the hit's layer (digest, size), if any.
    pub(super) async fn use_hit(
        &mut self,
        created_by: String,
        hit: CacheHit,
    ) -> Result<Option<(Digest, u64)>, StepError> {
        let Some(l) = hit.layer else {
            self.history(created_by, true);
            return Ok(None);
        };
        let diff_id = l.diff_id.clone();
        if let Some(root) = self.root.clone() {
            let fetcher = &self.b.fetcher;
            let p = fetcher
                .ensure_local(&l, None)
                .await
                .map_err(StepError::from)?;
            fetcher
                .apply(&root, &l, &p, &format!("cache entry {}", hit.key))
                .await
                .map_err(StepError::from)?;
        }
        let shown = (l.descriptor.digest.clone(), l.descriptor.size);
        self.image.config.rootfs.diff_ids.push(diff_id);
        self.image.layers.push(l);
        self.history(created_by, false);
        Ok(Some(shown))
    }
}
