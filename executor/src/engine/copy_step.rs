//! COPY and ADD: their sources resolved once (before the cache key is
//! computed), then executed from that same resolution.

use super::config::CopyStep;
use super::error::StepError;
use super::sources::Resolved;
use super::stage_run::StageRun;
use crate::copy::{self, CopyOptions, Owner};
use crate::snapshot::{Change, Diff};
use kiln_common::Digest;
use kiln_layers::extract;
use kiln_layers::rootfs;
use std::path::{Path, PathBuf};

impl StageRun<'_> {
    /// Executes a COPY/ADD into the root; returns what changed. With
    /// `defer_contents` (nothing reads the root's files after this step)
    /// copied files are placeholders and the layer reads their sources.
    pub(super) async fn copy(
        &mut self,
        step: &CopyStep,
        sources: &[Resolved],
        defer_contents: bool,
    ) -> Result<Diff, StepError> {
        let first = self.copy_once(step, sources, defer_contents).await;
        let root = self.ensure_root().await?;
        match &first {
            Ok(diff) if !self.skeleton_meets(&root, diff.changes.keys().map(PathBuf::as_path)) => {
                return first
            }
            // Failed where a full root might not have.
            Err(_) if self.skeleton.is_none() => return first,
            _ => {}
        }
        // It wrote where the skeleton left a file out: again, on the full root.
        self.fill_root(&root, &step.dest_raw).await?;
        self.copy_once(step, sources, defer_contents).await
    }

    async fn copy_once(
        &mut self,
        step: &CopyStep,
        sources: &[Resolved],
        defer_contents: bool,
    ) -> Result<Diff, StepError> {
        let root = self.ensure_root().await?;
        let owner = match &step.chown {
            Some(c) => {
                let (u, g) = rootfs::lookup_user(&root, c).map_err(|source| StepError::Root {
                    op: "looking up --chown user",
                    path: c.clone(),
                    source,
                })?;
                if !kiln_layers::ids::holds(u, g) {
                    return Err(StepError::Invalid(format!(
                        "--chown={c} ({u}:{g}): {}",
                        kiln_layers::ids::limit(u, g)
                    )));
                }
                Owner::Fixed(u, g)
            }
            None => Owner::Fixed(0, 0),
        };
        let opts = CopyOptions {
            owner,
            chmod: step.chmod,
            defer_contents,
        };
        // BuildKit keeps the owner of files copied from another stage or image.
        let from_opts = CopyOptions {
            owner: if step.chown.is_none() {
                Owner::Preserve
            } else {
                owner
            },
            ..opts
        };
        let mut from_root: Option<PathBuf> = None;
        let mut diff = Diff::default();
        let dest = &step.dest;
        for s in sources {
            match s {
                Resolved::Heredoc { name, content } => {
                    let target = if dest.ends_with('/') {
                        format!("{dest}{name}")
                    } else {
                        dest.clone()
                    };
                    let target = resolve_in(&root, &target)?;
                    copy::write_file(&root, &target, content.as_bytes(), 0o644, &opts, &mut diff)
                        .map_err(StepError::Copy)?;
                }
                Resolved::Url(url) => {
                    let want = step.checksum.as_ref();
                    self.add_url(&root, url, dest, want, &opts, &mut diff)
                        .await?;
                }
                Resolved::Stage { src, .. } | Resolved::Image { src, .. } => {
                    let fr = match &from_root {
                        Some(r) => r.clone(),
                        None => {
                            let r = self.source_root(s).await?;
                            from_root = Some(r.clone());
                            r
                        }
                    };
                    let m = copy::match_sources(&fr, src, None, "the source stage")
                        .map_err(StepError::Copy)?;
                    copy::copy_sources(&root, &fr, &m, dest, None, &from_opts, &mut diff)
                        .map_err(StepError::Copy)?;
                }
                Resolved::Context(matches) => {
                    for m in matches {
                        if step.is_add && m.path.is_file() && is_archive(&m.path) {
                            self.add_archive(&root, &m.path, dest, &opts, &mut diff)?;
                        } else {
                            copy::copy_sources(
                                &root,
                                &self.ctx.dir,
                                std::slice::from_ref(m),
                                dest,
                                Some(&self.ctx.ignore),
                                &opts,
                                &mut diff,
                            )
                            .map_err(StepError::Copy)?;
                        }
                    }
                }
            }
        }
        Ok(diff)
    }

    /// The root a `--from` source reads: the stage's own root when it has
    /// one, else its (or the image's) layers unpacked afresh.
    pub(super) async fn source_root(&self, s: &Resolved) -> Result<PathBuf, StepError> {
        match s {
            Resolved::Stage { index, .. } => match self.done.get(index) {
                Some(out) => match &out.root {
                    Some(r) => Ok(r.clone()),
                    None => self.unpack(&out.image.layers, &out.base_name).await,
                },
                None => Err(StepError::Invalid(format!("stage {index} is not built"))),
            },
            Resolved::Image { name, .. } => {
                let (img, _) = self
                    .b
                    .base(name, &self.b.platform)
                    .await
                    .map_err(|source| StepError::Pull {
                        image: name.clone(),
                        source: Box::new(source),
                    })?;
                self.unpack(&img.layers, name).await
            }
            _ => Err(StepError::Invalid("not a --from source".into())),
        }
    }

    async fn unpack(
        &self,
        layers: &[crate::model::ImageLayer],
        name: &str,
    ) -> Result<PathBuf, StepError> {
        let root = self.b.new_root("from-")?;
        self.b
            .fetcher
            .unpack(&root, layers, name)
            .await
            .map_err(StepError::from)?;
        Ok(root)
    }

    /// ADD of a local archive: unpacked (owners kept unless --chown) into `dest`.
    fn add_archive(
        &self,
        root: &Path,
        archive: &Path,
        dest: &str,
        opts: &CopyOptions,
        diff: &mut Diff,
    ) -> Result<(), StepError> {
        let work = self.b.work_path();
        let tmp =
            tempfile::tempdir_in(work).map_err(StepError::io("creating a directory in", work))?;
        let f = std::fs::File::open(archive).map_err(StepError::io("opening", archive))?;
        extract::apply_archive(tmp.path(), f).map_err(|source| StepError::Archive {
            path: archive.to_path_buf(),
            source,
        })?;
        let m =
            copy::match_sources(tmp.path(), "", None, "the archive").map_err(StepError::Copy)?;
        let dest = if dest.ends_with('/') {
            dest.to_string()
        } else {
            format!("{dest}/")
        };
        let mut o = *opts;
        if matches!(opts.owner, Owner::Fixed(0, 0)) {
            o.owner = Owner::Preserve;
        }
        // The unpacked archive goes when this returns: its files cannot be
        // read later for the layer.
        o.defer_contents = false;
        copy::copy_sources(root, tmp.path(), &m, &dest, None, &o, diff).map_err(StepError::Copy)
    }

    /// ADD of a URL: downloaded into the work directory (hashed while it
    /// streams, checked against `--checksum`), then placed with the mtime of
    /// the response's `Last-Modified`, as Docker documents.
    async fn add_url(
        &self,
        root: &Path,
        url: &str,
        dest: &str,
        checksum: Option<&Digest>,
        opts: &CopyOptions,
        diff: &mut Diff,
    ) -> Result<(), StepError> {
        let download = |source| StepError::Download {
            url: url.to_string(),
            source,
        };
        let client = kiln_common::tls::client_builder()
            .danger_accept_invalid_certs(self.b.opts.registry.skip_tls_verify)
            .build()
            .map_err(download)?;
        let resp = client.get(url).send().await.map_err(download)?;
        if !resp.status().is_success() {
            return Err(StepError::HttpStatus {
                url: url.to_string(),
                status: resp.status().as_u16(),
            });
        }
        let modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| chrono::DateTime::parse_from_rfc2822(v).ok());
        let work = self.b.work_path();
        let tmp = tempfile::NamedTempFile::new_in(work)
            .map_err(StepError::io("creating a file in", work))?;
        let got = {
            use futures_util::StreamExt;
            use std::io::Write;
            let mut f =
                kiln_common::digest::HashingWriter::new(std::io::BufWriter::new(tmp.as_file()));
            let mut s = resp.bytes_stream();
            while let Some(chunk) = s.next().await {
                let chunk = chunk.map_err(download)?;
                f.write_all(&chunk)
                    .map_err(StepError::io("writing", tmp.path()))?;
            }
            f.flush().map_err(StepError::io("writing", tmp.path()))?;
            let (_, got, _) = f.finish();
            got
        };
        if let Some(want) = checksum {
            if &got != want {
                return Err(StepError::Invalid(format!(
                    "{url} hashes to {got}, --checksum expects {want}"
                )));
            }
        }
        let name = url
            .split(['?', '#'])
            .next()
            .unwrap_or(url)
            .rsplit('/')
            .next()
            .filter(|s| !s.is_empty())
            .unwrap_or("index.html");
        let target = if dest.ends_with('/') {
            format!("{dest}{name}")
        } else {
            dest.to_string()
        };
        let target = resolve_in(root, &target)?;
        if let Some(p) = target.parent() {
            copy::mkdir_all(root, p, opts, diff).map_err(StepError::Copy)?;
        }
        extract::remove_any(&target).map_err(StepError::io("replacing", &target))?;
        std::fs::copy(tmp.path(), &target).map_err(StepError::io("writing", &target))?;
        if let Owner::Fixed(u, g) = opts.owner {
            let _ = std::os::unix::fs::lchown(&target, Some(u), Some(g));
        }
        std::fs::set_permissions(
            &target,
            std::os::unix::fs::PermissionsExt::from_mode(opts.chmod.unwrap_or(0o600)),
        )
        .map_err(StepError::io("setting the mode of", &target))?;
        if let Some(t) = modified {
            let ft = filetime::FileTime::from_unix_time(t.timestamp(), 0);
            filetime::set_file_mtime(&target, ft)
                .map_err(StepError::io("setting the mtime of", &target))?;
        }
        diff.add(
            target.strip_prefix(root).unwrap_or(&target).to_path_buf(),
            Change::Add,
        );
        Ok(())
    }
}

/// A path of the image resolved inside `root` (symlinks followed inside it).
pub(super) fn resolve_in(root: &Path, path: &str) -> Result<PathBuf, StepError> {
    rootfs::resolve(root, path, false).map_err(|source| StepError::Root {
        op: "resolving",
        path: path.to_string(),
        source,
    })
}

/// A tar archive, possibly compressed: ADD unpacks it.
fn is_archive(p: &Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(p) else {
        return false;
    };
    let Ok(mut r) = kiln_layers::decompress(f) else {
        return false;
    };
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < 512 {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return false,
        }
    }
    n == 512 && &head[257..262] == b"ustar"
}
