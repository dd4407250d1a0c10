//! `RUN --mount` staged into the step's root: the same on every isolation
//! rung, since none needs to mount anything. Before the command runs, each
//! mount's content is put at its target (what was there is set aside, and
//! missing parents are created as stubs); after it — also when it failed —
//! cache content is moved back to the cache, everything else is removed,
//! what was there is put back, stubs go, and every path under a target is
//! dropped from the step's diff, so no mount's content reaches a layer.
//!
//! Cache mounts live in `<--kaniko-dir>/cache-mounts/`, kept between builds
//! that share the directory (a pod's emptyDir, a CI runner's disk).

use super::error::StepError;
use super::mount_spec::{MountKind, MountSpec, Sharing};
use super::sources::Resolved;
use super::stage_run::StageRun;
use crate::snapshot::Diff;
use crate::tree::{copy_tree, move_tree};
use kiln_layers::extract::remove_any;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// A cache mount a build used.
#[derive(Debug, Clone, Default)]
pub struct MountUse {
    pub dir: PathBuf,
    /// The listing restored from the shared cache (`None`: local content).
    pub restored: Option<Vec<crate::cache_mounts::Entry>>,
    pub report: crate::outcome::MountReport,
}

pub use crate::options::SecretSource;

/// One mount as staged, to be undone.
struct Staged {
    /// Inside the root, resolved (symlinks followed within it).
    full: PathBuf,
    /// Relative to the root, for the diff.
    rel: PathBuf,
    /// What the image had at the target, set aside beside the root.
    shadow: Option<PathBuf>,
    /// Parent directories created for the target (deepest last), with
    /// their paths relative to the root.
    stubs: Vec<(PathBuf, PathBuf)>,
    /// A cache mount's directory, where the content goes back.
    cache: Option<PathBuf>,
    /// Held for `sharing=locked` (and `private`) until the content is back.
    _lock: Option<nix::fcntl::Flock<std::fs::File>>,
    /// An SSH mount's relay, stopped before its socket is removed.
    relay: Option<super::agent::AgentRelay>,
}

/// The mounts of one RUN while it runs.
pub(super) struct StagedMounts {
    items: Vec<Staged>,
    /// `env=` secrets and `SSH_AUTH_SOCK`, for the command's environment only.
    pub env: Vec<(String, String)>,
    /// Live sockets in the root (SSH relays), as absolute paths in the image.
    pub sockets: Vec<String>,
    /// tmpfs mounts (target, size limit) for a rung that can mount them.
    pub tmpfs: Vec<(String, Option<u64>)>,
    /// This build's hold on each cache mount the step uses: a cache's
    /// directory is moved into the root, so two stages running at once
    /// take turns with it (whatever `sharing` says between builds).
    _turns: Vec<tokio::sync::OwnedMutexGuard<()>>,
}

/// A resolved root-relative path as an absolute path in the image.
fn in_image(rel: &Path) -> String {
    format!("/{}", rel.display())
}

fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> StepError {
    StepError::io(op, p)
}

impl StageRun<'_> {
    /// Puts every mount of a RUN in place in `root`.
    pub(super) async fn stage_mounts(
        &mut self,
        root: &Path,
        mounts: &[MountSpec],
        binds: &[Resolved],
    ) -> Result<StagedMounts, StepError> {
        // Taken in id order, all before any is staged: two stages whose
        // steps use the same caches never each hold one the other waits for.
        let mut ids: Vec<&str> = mounts
            .iter()
            .filter_map(|m| match &m.kind {
                MountKind::Cache { id, .. } => Some(id.as_str()),
                _ => None,
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let mut turns = Vec::with_capacity(ids.len());
        for id in ids {
            turns.push(self.b.mount_turn(id).lock_owned().await);
        }
        let mut staged = StagedMounts {
            items: Vec::new(),
            env: Vec::new(),
            sockets: Vec::new(),
            tmpfs: Vec::new(),
            _turns: turns,
        };
        let mut binds = binds.iter();
        for (n, m) in mounts.iter().enumerate() {
            let r = self.stage_one(root, n, m, &mut binds, &mut staged).await;
            if let Err(e) = r {
                // Undo what was already staged before failing.
                let _ = self.unstage_mounts(staged, None);
                return Err(e);
            }
        }
        Ok(staged)
    }

    async fn stage_one<'r>(
        &mut self,
        root: &Path,
        n: usize,
        m: &MountSpec,
        binds: &mut impl Iterator<Item = &'r Resolved>,
        staged: &mut StagedMounts,
    ) -> Result<(), StepError> {
        if let MountKind::Secret { id, required, env } = &m.kind {
            let value = match self.b.opts.secrets.get(id) {
                Some(SecretSource::File(p)) => {
                    Some(std::fs::read(p).map_err(io("reading the secret", p))?)
                }
                Some(SecretSource::Env(v)) => std::env::var_os(v).map(|v| v.into_encoded_bytes()),
                None => None,
            };
            let Some(value) = value else {
                if *required {
                    return Err(StepError::Invalid(format!(
                        "secret {id:?} is required and was not given (--secret id={id},src=…)"
                    )));
                }
                return Ok(());
            };
            if let Some(var) = env {
                staged
                    .env
                    .push((var.clone(), String::from_utf8_lossy(&value).into_owned()));
            }
            let Some(target) = &m.target else {
                return Ok(());
            };
            let mut s = self.prepare_target(root, n, target)?;
            std::fs::write(&s.full, &value).map_err(io("writing a secret into", &s.full))?;
            let mode = m.mode.unwrap_or(0o400);
            std::fs::set_permissions(&s.full, std::fs::Permissions::from_mode(mode))
                .map_err(io("setting the mode of", &s.full))?;
            let _ = std::os::unix::fs::lchown(&s.full, m.uid.or(Some(0)), m.gid.or(Some(0)));
            s.cache = None;
            staged.items.push(s);
            return Ok(());
        }
        if let MountKind::Ssh { id, required } = &m.kind {
            return self.stage_ssh(root, n, m, id, *required, staged);
        }
        let Some(target) = &m.target else {
            return Ok(());
        };
        let mut s = self.prepare_target(root, n, target)?;
        match &m.kind {
            MountKind::Cache {
                id, sharing, from, ..
            } => {
                let (dir, lock) = self.cache_dir(id, sharing)?;
                self.b.restore_cache_mount(id, &dir).await;
                let seed = from.as_ref().and_then(|_| binds.next());
                if dir.exists() {
                    move_tree(&dir, &s.full).map_err(io("restoring the cache mount", &dir))?;
                } else if seed.is_some() {
                    // A new cache starts as a copy of its `from`.
                    let seed = self.mount_source(seed).await?;
                    copy_tree(&seed, &s.full).map_err(io("seeding the cache mount from", &seed))?;
                } else {
                    std::fs::create_dir(&s.full).map_err(io("creating", &s.full))?;
                    let mode = m.mode.unwrap_or(0o755);
                    std::fs::set_permissions(&s.full, std::fs::Permissions::from_mode(mode))
                        .map_err(io("setting the mode of", &s.full))?;
                    let _ = std::os::unix::fs::lchown(&s.full, m.uid, m.gid);
                }
                s.cache = Some(dir);
                s._lock = lock;
            }
            MountKind::Bind { .. } => {
                let src = self.mount_source(binds.next()).await?;
                copy_tree(&src, &s.full).map_err(io("binding", &src))?;
            }
            MountKind::Tmpfs { size } => {
                // The resolved path: mounting follows symlinks, and one in the
                // image must not point the mount outside the root.
                staged.tmpfs.push((in_image(&s.rel), *size));
                std::fs::create_dir(&s.full).map_err(io("creating", &s.full))?;
                std::fs::set_permissions(&s.full, std::fs::Permissions::from_mode(0o1777))
                    .map_err(io("setting the mode of", &s.full))?;
            }
            MountKind::Secret { .. } | MountKind::Ssh { .. } => {}
        }
        staged.items.push(s);
        Ok(())
    }

    /// An SSH mount: a relay to the agent `--ssh <id>=…` named, listening
    /// at the target with the mount's mode and owner; the first one is the
    /// step's `SSH_AUTH_SOCK`.
    fn stage_ssh(
        &mut self,
        root: &Path,
        n: usize,
        m: &MountSpec,
        id: &str,
        required: bool,
        staged: &mut StagedMounts,
    ) -> Result<(), StepError> {
        let (Some(agent), Some(target)) = (self.b.opts.ssh.get(id), &m.target) else {
            if required {
                return Err(StepError::Invalid(format!(
                    "SSH agent {id:?} is required and was not given (--ssh {id}=<socket>)"
                )));
            }
            return Ok(());
        };
        let mut s = self.prepare_target(root, n, target)?;
        let relay = super::agent::AgentRelay::start(&s.full, agent)
            .map_err(io("listening for the SSH agent at", &s.full))?;
        s.relay = Some(relay);
        let mode = m.mode.unwrap_or(0o600);
        std::fs::set_permissions(&s.full, std::fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", &s.full))?;
        let _ = std::os::unix::fs::lchown(&s.full, m.uid.or(Some(0)), m.gid.or(Some(0)));
        if !staged.env.iter().any(|(k, _)| k == "SSH_AUTH_SOCK") {
            staged.env.push(("SSH_AUTH_SOCK".into(), target.clone()));
        }
        staged.sockets.push(in_image(&s.rel));
        staged.items.push(s);
        Ok(())
    }

    /// Where a resolved mount source is on disk: in the context, or in the
    /// root of the stage or image it names.
    async fn mount_source(&self, resolved: Option<&Resolved>) -> Result<PathBuf, StepError> {
        match resolved {
            Some(Resolved::Context(found)) => found
                .first()
                .map(|f| f.path.clone())
                .ok_or_else(|| StepError::Invalid("mount source matched nothing".into())),
            Some(s @ (Resolved::Stage { src, .. } | Resolved::Image { src, .. })) => {
                let root = self.source_root(s).await?;
                kiln_layers::rootfs::resolve(&root, src, true).map_err(|source| StepError::Root {
                    op: "resolving the mount source",
                    path: src.clone(),
                    source,
                })
            }
            _ => Err(StepError::Invalid("mount source not resolved".into())),
        }
    }

    /// Makes room at `target`: missing parents become stubs, what is there
    /// is set aside beside the root.
    fn prepare_target(&mut self, root: &Path, n: usize, target: &str) -> Result<Staged, StepError> {
        let full = kiln_layers::rootfs::resolve(root, target, false).map_err(|source| {
            StepError::Root {
                op: "resolving the mount target",
                path: target.to_string(),
                source,
            }
        })?;
        let rel = full.strip_prefix(root).unwrap_or(&full).to_path_buf();
        let mut stubs = Vec::new();
        let mut missing = Vec::new();
        let mut cur = full.parent();
        while let Some(p) = cur {
            if p == root || p.exists() {
                break;
            }
            missing.push(p.to_path_buf());
            cur = p.parent();
        }
        for p in missing.into_iter().rev() {
            std::fs::create_dir(&p).map_err(io("creating", &p))?;
            let rel = p.strip_prefix(root).unwrap_or(&p).to_path_buf();
            stubs.push((p, rel));
        }
        let shadow = if std::fs::symlink_metadata(&full).is_ok() {
            self.scratch_n += 1;
            let parent = root.parent().unwrap_or(root);
            let aside = parent.join(format!(".mount-shadow-{}-{n}", self.scratch_n));
            std::fs::rename(&full, &aside).map_err(io("setting aside", &full))?;
            Some(aside)
        } else {
            None
        };
        Ok(Staged {
            full,
            rel,
            shadow,
            stubs,
            cache: None,
            _lock: None,
            relay: None,
        })
    }

    /// The directory a cache mount's content lives in between builds, and
    /// the lock `sharing` asks for.
    fn cache_dir(
        &self,
        id: &str,
        sharing: &Sharing,
    ) -> Result<(PathBuf, Option<nix::fcntl::Flock<std::fs::File>>), StepError> {
        use nix::fcntl::{Flock, FlockArg};
        let base = self.b.opts.work_dir.join("cache-mounts");
        std::fs::create_dir_all(&base).map_err(io("creating", &base))?;
        if self.b.opts.cache_mounts == crate::options::CacheMounts::Off {
            // Empty for this RUN, kept nowhere (the directory does not exist).
            let own = tempfile::Builder::new()
                .prefix("cache-off-")
                .tempdir_in(&base)
                .map_err(io("creating", &base))?
                .keep();
            let _ = std::fs::remove_dir(&own);
            return Ok((own, None));
        }
        // Each platform its own copy: an arm64 stage's packages are no
        // use to an amd64 one (the shared copies are per platform too).
        let c = &self.image.config;
        let platform = format!(
            "{}/{}/{}",
            c.os,
            c.architecture,
            c.variant.as_deref().unwrap_or("")
        );
        let name = kiln_common::Digest::sha256_of(format!("{platform}\0{id}").as_bytes());
        let dir = base.join(name.hex());
        if *sharing == Sharing::Shared {
            return Ok((dir, None));
        }
        let lock_path = base.join(format!("{}.lock", name.hex()));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io("opening", &lock_path))?;
        let how = if *sharing == Sharing::Locked {
            FlockArg::LockExclusive
        } else {
            FlockArg::LockExclusiveNonblock
        };
        match Flock::lock(f, how) {
            Ok(l) => Ok((dir, Some(l))),
            // `private`: another build holds it; this one gets its own,
            // discarded afterwards.
            Err(_) => {
                let own = tempfile::Builder::new()
                    .prefix("cache-private-")
                    .tempdir_in(&base)
                    .map_err(io("creating", &base))?
                    .keep();
                let _ = std::fs::remove_dir(&own);
                Ok((own, None))
            }
        }
    }

    /// Undoes [`Self::stage_mounts`] and drops the mounts from `diff`:
    /// everything under a target, and the stubs that end up removed.
    pub(super) fn unstage_mounts(
        &self,
        staged: StagedMounts,
        diff: Option<&mut Diff>,
    ) -> Result<(), StepError> {
        let mut first_err = None;
        let mut targets: Vec<PathBuf> = Vec::new();
        let mut removed_stubs: Vec<PathBuf> = Vec::new();
        for mut s in staged.items.into_iter().rev() {
            drop(s.relay.take());
            let r = (|| -> Result<(), StepError> {
                match &s.cache {
                    Some(dir) => {
                        remove_any(dir).map_err(io("replacing", dir))?;
                        keep_cache_content(&s.full, &s.rel, dir)?;
                    }
                    None => remove_any(&s.full).map_err(io("removing", &s.full))?,
                }
                if let Some(aside) = &s.shadow {
                    std::fs::rename(aside, &s.full).map_err(io("putting back", &s.full))?;
                }
                Ok(())
            })();
            // A stub the command left empty goes; one it filled stays.
            for (full, rel) in s.stubs.iter().rev() {
                if std::fs::remove_dir(full).is_ok() {
                    removed_stubs.push(rel.clone());
                }
            }
            targets.push(s.rel.clone());
            if let Err(e) = r {
                first_err.get_or_insert(e);
            }
        }
        if let Some(diff) = diff {
            diff.changes.retain(|p, _| {
                !removed_stubs.contains(p) && !targets.iter().any(|t| p.starts_with(t))
            });
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Moves what a RUN left at a cache mount's target back to the cache's
/// directory. Only a directory is kept: a step that replaced the target by
/// a link (to anywhere on the builder) or a file leaves an empty cache and
/// a warning, so nothing later reads through what the step made.
fn keep_cache_content(full: &Path, rel: &Path, dir: &Path) -> Result<(), StepError> {
    let is_dir = std::fs::symlink_metadata(full).map(|m| m.is_dir());
    match is_dir {
        Ok(true) => move_tree(full, dir).map_err(io("saving the cache mount", dir)),
        found => {
            let what = match found {
                Ok(_) => "is no longer a directory (a link or a file)",
                Err(_) => "is gone",
            };
            tracing::warn!(
                "cache mount at {}: the step's target {what}; the cache is kept empty",
                in_image(rel)
            );
            remove_any(full).map_err(io("removing", full))?;
            std::fs::create_dir(dir).map_err(io("creating", dir))
        }
    }
}

impl super::Builder {
    /// The first time a build uses cache mount `id` and the work directory
    /// has no copy: restore it from the shared cache. A failure is a
    /// warning (the mount starts empty), never a failed build.
    pub(super) async fn restore_cache_mount(&self, id: &str, dir: &Path) {
        let first = self
            .mounts_used
            .lock()
            .map(|mut m| {
                let new = !m.contains_key(id);
                m.entry(id.to_string()).or_insert_with(|| MountUse {
                    dir: dir.to_path_buf(),
                    report: crate::outcome::MountReport {
                        id: id.to_string(),
                        ..Default::default()
                    },
                    ..Default::default()
                });
                new
            })
            .unwrap_or(false);
        let Some(shared) = &self.mount_cache else {
            return;
        };
        if !first || dir.exists() {
            return;
        }
        let staging = dir.with_extension("restoring");
        let _ = remove_any(&staging);
        if let Err(e) = std::fs::create_dir_all(&staging) {
            tracing::warn!("cache mount {id:?}: {e}");
            return;
        }
        let deadline = self.lookup_timeout() * 6;
        let started = std::time::Instant::now();
        let restored = tokio::time::timeout(deadline, shared.restore(id, &staging)).await;
        if let Ok(mut m) = self.mounts_used.lock() {
            if let Some(u) = m.get_mut(id) {
                u.report.restore_seconds = started.elapsed().as_secs_f64();
            }
        }
        match restored {
            Ok(Ok(Some((entries, moved, from)))) => {
                if std::fs::rename(&staging, dir).is_ok() {
                    tracing::info!(
                        "cache mount {id:?}: restored {} files ({} bytes) from {}",
                        moved.files,
                        moved.bytes,
                        from.as_deref().unwrap_or("the shared cache")
                    );
                    if let Ok(mut m) = self.mounts_used.lock() {
                        if let Some(u) = m.get_mut(id) {
                            u.restored = Some(entries);
                            u.report.restored_from = from;
                            u.report.restored_files = moved.files;
                            u.report.restored_bytes = moved.bytes;
                        }
                    }
                }
            }
            Ok(Ok(None)) => tracing::info!("cache mount {id:?}: nothing shared yet"),
            Ok(Err(e)) => tracing::warn!(
                "cache mount {id:?} not restored (it starts empty): {}",
                kiln_common::report::Report(&e)
            ),
            Err(_) => tracing::warn!("cache mount {id:?}: restore took over {deadline:?}"),
        }
        let _ = remove_any(&staging);
    }

    /// After the build, and only after one that succeeded (a failed build's
    /// mounts may hold what made it fail): each shared cache mount that
    /// changed is saved to `--cache-repo` (only what the repository lacks
    /// is uploaded), within `--cache-push-timeout`.
    pub(super) async fn save_cache_mounts(&self) -> Vec<crate::outcome::MountReport> {
        let used: Vec<MountUse> = self
            .mounts_used
            .lock()
            .map(|m| m.values().cloned().collect())
            .unwrap_or_default();
        let Some(shared) = &self.mount_cache else {
            return Vec::new();
        };
        let push = self.opts.cache.as_ref().is_some_and(|c| c.push);
        let deadline = self
            .opts
            .cache
            .as_ref()
            .map_or(std::time::Duration::from_secs(60), |c| c.push_timeout);
        let mut out = Vec::new();
        for mut u in used {
            let id = u.report.id.clone();
            let now = match crate::cache_mounts::listing(&u.dir) {
                Ok(now) => now,
                Err(e) => {
                    let why = kiln_common::report::Report(&e).to_string();
                    tracing::warn!("cache mount {id:?} not saved: {why}");
                    u.report.not_saved = Some(why);
                    out.push(u.report);
                    continue;
                }
            };
            if u.restored.as_ref() == Some(&now) || !push {
                u.report.unchanged = u.restored.as_ref() == Some(&now);
                out.push(u.report);
                continue;
            }
            let size: u64 = now.iter().map(|e| e.size).sum();
            let cap = self.opts.cache_mount_max_size;
            if cap > 0 && size > cap {
                let why = format!(
                    "{size} bytes, over --cache-mount-max-size ({cap} bytes); kept locally"
                );
                tracing::warn!("cache mount {id:?} not saved: {why}");
                u.report.not_saved = Some(why);
                out.push(u.report);
                continue;
            }
            // Restored from a fallback: none of its blobs is in the written
            // repository yet.
            let known = match u.report.restored_from {
                Some(_) => Vec::new(),
                None => u.restored.clone().unwrap_or_default(),
            };
            let started = std::time::Instant::now();
            let saved = tokio::time::timeout(deadline, shared.save(&id, &u.dir, &known)).await;
            u.report.save_seconds = started.elapsed().as_secs_f64();
            match saved {
                Ok(Ok(moved)) => {
                    tracing::info!(
                        "cache mount {id:?}: saved, {} files ({} bytes) uploaded",
                        moved.files,
                        moved.bytes
                    );
                    u.report.saved_files = moved.files;
                    u.report.saved_bytes = moved.bytes;
                }
                Ok(Err(e)) => {
                    let why = kiln_common::report::Report(&e).to_string();
                    tracing::warn!("cache mount {id:?} not saved: {why}");
                    u.report.not_saved = Some(why);
                }
                Err(_) => {
                    let why = format!("not saved within --cache-push-timeout ({deadline:?})");
                    tracing::warn!("cache mount {id:?} {why}");
                    u.report.not_saved = Some(why);
                }
            }
            out.push(u.report);
        }
        out
    }
}
