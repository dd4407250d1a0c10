//! The sources a step reads beyond its own root — COPY/ADD sources and
//! the content of bind mounts and seeded cache mounts — resolved once,
//! before the cache key is computed (which covers them), and then used
//! from that same resolution when the step executes.

use super::config::{CopySource, CopyStep};
use super::error::StepError;
use super::mount_spec::{MountKind, MountSpec};
use crate::cache_key::{self, KeyBuilder};
use crate::context::BuildContext;
use crate::copy::{self, SourceMatch};
use kiln_common::Digest;

/// One COPY/ADD source, resolved.
#[derive(Debug, Clone)]
pub enum Resolved {
    Heredoc {
        name: String,
        content: String,
    },
    Url(String),
    /// A path in an earlier stage, whose final key stands for its content.
    Stage {
        index: usize,
        src: String,
    },
    /// A path in an image named by `--from`.
    Image {
        name: String,
        src: String,
    },
    /// What a path matches in the build context, `.dockerignore` applied.
    Context(Vec<SourceMatch>),
}

/// Resolves a step's sources: `stage_of` maps a `--from` value to an
/// earlier, built stage. Context sources are matched here, once: the key
/// hashes exactly what the copy will write.
pub fn resolve(
    step: &CopyStep,
    ctx: &BuildContext,
    stage_of: impl Fn(&str) -> Option<usize>,
) -> Result<Vec<Resolved>, StepError> {
    let from = step.from.as_deref();
    let stage = from.and_then(&stage_of);
    let mut out = Vec::new();
    // Docker: a pattern matching nothing is fine while another source of
    // the instruction matches; only when nothing matches at all is it an error.
    let mut unmatched = None;
    for s in &step.sources {
        out.push(match (s, from, stage) {
            (CopySource::Heredoc { name, content }, _, _) => Resolved::Heredoc {
                name: name.clone(),
                content: content.clone(),
            },
            (CopySource::Url(u), _, _) => Resolved::Url(u.clone()),
            (CopySource::Path(p), _, Some(index)) => Resolved::Stage {
                index,
                src: p.clone(),
            },
            (CopySource::Path(p), Some(f), None) => Resolved::Image {
                name: f.to_string(),
                src: p.clone(),
            },
            (CopySource::Path(p), None, _) => {
                match copy::match_sources(&ctx.dir, p, Some(&ctx.ignore), "the build context") {
                    Ok(m) => Resolved::Context(m),
                    Err(e @ copy::CopyError::NotFound { .. }) if copy::has_magic(p) => {
                        unmatched.get_or_insert(e);
                        Resolved::Context(Vec::new())
                    }
                    Err(e) => return Err(StepError::Copy(e)),
                }
            }
        });
    }
    let matched: usize = out
        .iter()
        .map(|r| match r {
            Resolved::Context(m) => m.len(),
            _ => 1,
        })
        .sum();
    if matched == 0 {
        if let Some(e) = unmatched {
            return Err(StepError::Copy(e));
        }
    }
    // Counted after wildcards are expanded, as Docker's builders do: a
    // wildcard that matched nothing beside one source that did is one
    // source (`COPY none* foo dest` copies the file to `dest`).
    if matched > 1 && !step.dest.ends_with('/') {
        return Err(StepError::Invalid(format!(
            "when copying several sources, the destination {:?} must end with /",
            step.dest_raw
        )));
    }
    Ok(out)
}

/// The key fields of a COPY/ADD after the common ones: destination, flags,
/// and each source (heredoc body, URL, source stage's key, image name, or
/// the hash of the context tree it matched).
pub fn key_fields(
    k: &mut KeyBuilder,
    step: &CopyStep,
    sources: &[Resolved],
    ctx: &BuildContext,
    stage_key: impl Fn(usize) -> Digest,
) -> Result<(), StepError> {
    k.field("dest", &step.dest_raw);
    for (f, v) in &step.key_flags {
        k.field(f, v);
    }
    source_fields(k, sources, ctx, stage_key)
}

/// Each resolved source's key field (heredoc body, URL, source stage's key,
/// image name, or the hash of the context tree it matched).
pub fn source_fields(
    k: &mut KeyBuilder,
    sources: &[Resolved],
    ctx: &BuildContext,
    stage_key: impl Fn(usize) -> Digest,
) -> Result<(), StepError> {
    for s in sources {
        match s {
            Resolved::Heredoc { name, content } => {
                k.field(&format!("heredoc {name}"), content);
            }
            Resolved::Url(u) => {
                k.field("url", u);
            }
            Resolved::Stage { index, src } => {
                k.field("from-stage", stage_key(*index).as_str());
                k.field("src", src);
            }
            Resolved::Image { name, src } => {
                k.field("from-image", name);
                k.field("src", src);
            }
            Resolved::Context(matches) => {
                for m in matches {
                    cache_key::hash_tree(&ctx.dir, &m.rel, Some(&ctx.ignore), false, k)
                        .map_err(StepError::Key)?;
                }
            }
        }
    }
    Ok(())
}

/// The content a mount reads — a bind mount's source, or the seed of a
/// cache mount with `from=` — resolved once (before the key, which covers
/// it as for COPY), in the order of the step's mounts: from the context, a
/// stage of this Dockerfile, or else an image of that name.
pub fn resolve_binds(
    mounts: &[MountSpec],
    ctx: &BuildContext,
    stage_of: impl Fn(&str) -> Option<usize>,
) -> Result<Vec<Resolved>, StepError> {
    let mut out = Vec::new();
    for m in mounts {
        let (from, source) = match &m.kind {
            MountKind::Bind { from, source } => (from.as_deref(), source.as_str()),
            MountKind::Cache {
                from: Some(f),
                source,
                ..
            } => (Some(f.as_str()), source.as_deref().unwrap_or("/")),
            _ => continue,
        };
        out.push(match from {
            None => Resolved::Context(
                copy::match_sources(&ctx.dir, source, Some(&ctx.ignore), "the build context")
                    .map_err(StepError::Copy)?,
            ),
            Some(f) => match stage_of(f) {
                Some(index) => Resolved::Stage {
                    index,
                    src: source.to_string(),
                },
                None => Resolved::Image {
                    name: f.to_string(),
                    src: source.to_string(),
                },
            },
        });
    }
    Ok(out)
}
