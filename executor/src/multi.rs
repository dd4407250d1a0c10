//! A build for several platforms: one builder per platform, at once (each
//! on a thread driving it on the caller's runtime: a build blocks its
//! thread while RUN steps execute; with a layer cache the first platform
//! goes first, see below), each platform's manifest pushed by digest, then
//! one index to the destinations' tags ([`crate::index`]).
//! `--digest-file` and the `--image-name*-digest-file`s name the index;
//! `--report` holds every platform's report.

use crate::index::{self, IndexError};
use crate::{BuildError, BuildOptions, BuildResult, Builder};
use kiln_common::image::{Descriptor, Platform};
use kiln_common::registry::Registry;
use kiln_common::Digest;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error(transparent)]
    Archive(#[from] crate::layout_archive::ArchiveError),
    #[error(transparent)]
    Output(#[from] Box<crate::output::OutputError>),
    #[error("--dryrun plans one platform: give one --custom-platform")]
    DryRun,
    #[error("building for {platform}")]
    Build {
        platform: String,
        #[source]
        source: Box<BuildError>,
    },
    #[error("the build for {platform} panicked (a bug in Kiln)")]
    Panicked { platform: String },
    #[error(transparent)]
    Index(#[from] IndexError),
    #[error(transparent)]
    Attest(#[from] crate::attest::AttestError),
    #[error("writing {}", path.display())]
    Write {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MultiError {
    /// The build error behind this one, if a platform's build failed.
    pub fn build_error(&self) -> Option<&BuildError> {
        match self {
            MultiError::Build { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// What a multi-platform build made.
pub struct MultiBuilt {
    pub index_digest: Digest,
    /// One per platform, in the order given.
    pub results: Vec<BuildResult>,
}

pub async fn build_platforms(
    opts: BuildOptions,
    platforms: &[Platform],
    registry: Arc<Registry>,
) -> Result<MultiBuilt, MultiError> {
    let out = &opts.output;
    // `--tar-path` is the joined layout as a tarball: without
    // `--oci-layout-path`, the layout is made in the work directory.
    let archive_layout = match (&out.tar_path, &out.oci_layout_path) {
        (Some(_), None) => Some(scratch_dir(&opts.work_dir, "platforms-layout-")?),
        _ => None,
    };
    let layout_path = out
        .oci_layout_path
        .clone()
        .or_else(|| archive_layout.as_ref().map(|d| d.path().to_path_buf()));
    // Each platform writes its own layout beside the one asked for; they
    // are joined into it under one index at the end.
    let layouts = match &layout_path {
        Some(p) => {
            let parent = p.parent().filter(|d| !d.as_os_str().is_empty());
            let parent = parent.unwrap_or(std::path::Path::new("."));
            Some(
                tempfile::Builder::new()
                    .prefix(".kiln-platforms-")
                    .tempdir_in(parent)
                    .map_err(|source| MultiError::Write {
                        path: parent.to_path_buf(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    if opts.dry_run {
        return Err(MultiError::DryRun);
    }
    // Build-platform stages without `--cache`: the builders share a layer
    // cache of their own for this build, so such a stage runs once.
    let shared = match &opts.cache {
        None if platforms.len() > 1 && reads_build_platform(&opts) => {
            Some(scratch_dir(&opts.work_dir, "platforms-cache-")?)
        }
        _ => None,
    };
    let mut builders = Vec::new();
    for p in platforms {
        let mut o = opts.clone();
        if let Some(d) = &shared {
            o.cache = Some(crate::options::CacheOptions::local(d.path()));
        }
        o.platform = Some(p.clone());
        o.output.by_digest = true;
        o.output.digest_file = None;
        o.output.image_name_with_digest_file = None;
        o.output.image_name_tag_with_digest_file = None;
        o.report_path = None;
        o.output.tar_path = None;
        o.output.oci_layout_path = layouts
            .as_ref()
            .map(|d| d.path().join(p.to_string().replace('/', "-")));
        let b = Builder::new(o, registry.clone()).map_err(|e| MultiError::Build {
            platform: p.to_string(),
            source: Box::new(e),
        })?;
        tracing::info!("{p}: isolation {}", b.isolation_name());
        builders.push((p.clone(), b));
    }
    // With a layer cache, the first platform builds first and the others
    // after it, at once: a stage built for the build platform
    // (`FROM --platform=$BUILDPLATFORM`, the cross-compile pattern) has the
    // same keys in every platform's build, so it runs once and the others
    // take it from the cache.
    let cached = opts.cache.is_some() || shared.is_some();
    let (first, rest) = match (cached, builders.split_first()) {
        (true, Some((first, rest))) if !rest.is_empty() => {
            tracing::info!(
                "{}: built first; the other platforms then at once, reusing its build-platform stages from the cache",
                first.0
            );
            (std::slice::from_ref(first), rest)
        }
        _ => (&builders[..0], &builders[..]),
    };
    let mut outcomes = build_at_once(first);
    if outcomes.iter().all(|(_, o)| matches!(o, Ok(Ok(_)))) {
        outcomes.extend(build_at_once(rest));
    }
    let mut results = Vec::new();
    for (p, outcome) in outcomes {
        match outcome {
            Ok(Ok(r)) => results.push(r),
            Ok(Err(e)) => {
                return Err(MultiError::Build {
                    platform: p.to_string(),
                    source: Box::new(e),
                })
            }
            Err(_) => {
                return Err(MultiError::Panicked {
                    platform: p.to_string(),
                })
            }
        }
    }
    let entries: Vec<Descriptor> = results
        .iter()
        .map(|r| {
            let mut d = Descriptor::new(&r.media_type, r.manifest_digest.clone(), r.manifest_size);
            d.platform = Some(r.platform.clone());
            d
        })
        .collect();
    let index_digest = if out.no_push || out.destinations.is_empty() {
        let (bytes, _) = index::index_bytes(&entries, out.format);
        Digest::sha256_of(&bytes)
    } else {
        index::push_index(&registry, &out.destinations, &entries, out.format).await?
    };
    if let (Some(dir), Some(layouts)) = (&layout_path, &layouts) {
        join_layouts(dir, layouts.path(), &entries, out)?;
        if let Some(tar) = &out.tar_path {
            let members: Vec<_> = results
                .iter()
                .map(|r| (r.platform.clone(), r.manifest_digest.clone()))
                .collect();
            crate::layout_archive::write(
                dir,
                tar,
                &members,
                &Platform::host(),
                &crate::output::docker_repo_tags(&out.destinations),
            )?;
        }
    }
    write_outputs(&opts, &index_digest, &results)?;
    Ok(MultiBuilt {
        index_digest,
        results,
    })
}

/// Whether the Dockerfile (when it can be read before the context is
/// prepared: a local one) has a stage `FROM --platform=$BUILDPLATFORM`.
fn reads_build_platform(opts: &BuildOptions) -> bool {
    let path = opts.dockerfile_path(None);
    kiln_common::dockerfile::Dockerfile::from_path(&path).is_ok_and(|df| {
        df.stages.iter().any(|s| {
            s.platform
                .as_deref()
                .is_some_and(|p| p.contains("BUILDPLATFORM"))
        })
    })
}

/// A directory of the build's (the platforms' shared layer cache, the
/// layout a `--tar-path` is made of) in the work directory, removed with
/// the build.
fn scratch_dir(work_dir: &std::path::Path, prefix: &str) -> Result<tempfile::TempDir, MultiError> {
    std::fs::create_dir_all(work_dir)
        .and_then(|()| tempfile::Builder::new().prefix(prefix).tempdir_in(work_dir))
        .map_err(|source| MultiError::Write {
            path: work_dir.to_path_buf(),
            source,
        })
}

/// Joins the platforms' layouts under `from` into the layout `dir`: their
/// blobs, and one index naming every platform's manifest, tagged as the
/// first destination (or `latest`).
fn join_layouts(
    dir: &std::path::Path,
    from: &std::path::Path,
    entries: &[Descriptor],
    out: &crate::options::OutputOptions,
) -> Result<(), MultiError> {
    let io = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| MultiError::Write { path, source }
    };
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io(&blobs))?;
    let mut attestations = Vec::new();
    for platform in std::fs::read_dir(from).map_err(io(from))? {
        let platform = platform.map_err(io(from))?.path();
        attestations.extend(crate::attest::attach::listed_in_layout(&platform));
        let src = platform.join("blobs/sha256");
        for b in std::fs::read_dir(&src).map_err(io(&src))? {
            let b = b.map_err(io(&src))?.path();
            let Some(d) = b
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| format!("sha256:{n}").parse::<Digest>().ok())
            else {
                continue;
            };
            crate::output::link_blob(&blobs, &d, &b).map_err(Box::new)?;
        }
    }
    let (bytes, media_type) = index::index_bytes(entries, out.format);
    let digest = Digest::sha256_of(&bytes);
    let path = blobs.join(digest.hex());
    std::fs::write(&path, &bytes).map_err(io(&path))?;
    let desc = Descriptor::new(media_type, digest, bytes.len() as u64);
    crate::output::add_to_layout(dir, desc, out.destinations.first().map(String::as_str))
        .map_err(Box::new)?;
    // Each platform's attestations, beside the index (their subjects are
    // the platforms' manifests).
    crate::attest::attach::list_in_layout(dir, attestations)?;
    Ok(())
}

type Outcome = (
    Platform,
    std::thread::Result<Result<BuildResult, BuildError>>,
);

/// Runs `builders` at once, each on a thread driving it on this runtime.
fn build_at_once(builders: &[(Platform, Builder)]) -> Vec<Outcome> {
    let handle = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        std::thread::scope(|scope| {
            let threads: Vec<_> = builders
                .iter()
                .map(|(p, b)| {
                    let handle = handle.clone();
                    (p, scope.spawn(move || handle.block_on(b.build())))
                })
                .collect();
            threads
                .into_iter()
                .map(|(p, t)| (p.clone(), t.join()))
                .collect()
        })
    })
}

fn write_outputs(
    opts: &BuildOptions,
    index_digest: &Digest,
    results: &[BuildResult],
) -> Result<(), MultiError> {
    let out = &opts.output;
    let write = |p: &std::path::Path, text: String| {
        std::fs::write(p, text).map_err(|source| MultiError::Write {
            path: p.to_path_buf(),
            source,
        })
    };
    crate::output::write_digest_files(out, index_digest).map_err(Box::new)?;
    if let Some(p) = &opts.report_path {
        let json = serde_json::json!({
            "index_digest": index_digest,
            "platforms": results,
        });
        write(p, serde_json::to_string_pretty(&json).unwrap_or_default())?;
    }
    Ok(())
}
