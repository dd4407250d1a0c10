//! Where a built image goes: registries (`--destination`), an OCI layout
//! (`--oci-layout-path`), a docker-archive tarball (`--tar-path`), and the
//! digest files CI pipelines read afterwards.

use crate::blobs::{BlobError, BlobStore};
use crate::fetch::{FetchError, LayerFetcher};
use crate::model::{BuiltImage, LayerSource};
use crate::options::{ImageFormat, OutputOptions};
use kiln_common::digest::HashingWriter;
use kiln_common::image::{self, Descriptor, Manifest};
use kiln_common::registry::{parse_reference, RegistryError};
use kiln_common::Digest;
use oci_client::Reference;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error("pushing to {destination}")]
    Push {
        destination: String,
        source: RegistryError,
    },
    #[error(transparent)]
    Fetch(#[from] Box<FetchError>),
    #[error("encoding {what}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The config and manifest, stored as blobs.
#[derive(Debug, Clone)]
pub struct WrittenImage {
    pub config_digest: Digest,
    pub config_size: u64,
    pub manifest_digest: Digest,
    pub manifest: Vec<u8>,
    pub media_type: String,
}

pub fn write_image(
    store: &BlobStore,
    img: &BuiltImage,
    out: &OutputOptions,
) -> Result<WrittenImage, OutputError> {
    let docker = out.format == ImageFormat::Docker;
    let mut config = img.config.clone();
    config.rootfs.kind = "layers".into();
    config.rootfs.diff_ids = img.layers.iter().map(|l| l.diff_id.clone()).collect();
    let config_bytes = serde_json::to_vec(&config).map_err(|source| OutputError::Json {
        what: "config",
        source,
    })?;
    let (config_digest, config_size) = store.put(&config_bytes)?;
    let (media_type, config_type) = if docker {
        (image::DOCKER_MANIFEST, image::DOCKER_CONFIG)
    } else {
        (image::OCI_MANIFEST, image::OCI_CONFIG)
    };
    let layers = img
        .layers
        .iter()
        .map(|l| {
            let mut d = l.descriptor.clone();
            d.media_type = convert_media_type(&d.media_type, docker);
            d.annotations = None;
            d.platform = None;
            d
        })
        .collect();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(media_type.to_string()),
        config: Descriptor::new(config_type, config_digest.clone(), config_size),
        layers,
        annotations: (!out.annotations.is_empty()).then(|| out.annotations.clone()),
    };
    let bytes = serde_json::to_vec(&manifest).map_err(|source| OutputError::Json {
        what: "manifest",
        source,
    })?;
    let (manifest_digest, _) = store.put(&bytes)?;
    Ok(WrittenImage {
        config_digest,
        config_size,
        manifest_digest,
        manifest: bytes,
        media_type: media_type.to_string(),
    })
}

/// Base layers keep their compression; only the media type family changes.
fn convert_media_type(mt: &str, docker: bool) -> String {
    let gz = mt.ends_with("gzip");
    let zst = mt.ends_with("zstd");
    match (docker, gz, zst) {
        (true, true, _) => image::DOCKER_LAYER_GZIP.into(),
        (true, false, false) => image::DOCKER_LAYER_TAR.into(),
        (false, true, _) => image::OCI_LAYER_GZIP.into(),
        (false, _, true) => image::OCI_LAYER_ZSTD.into(),
        (false, false, false) => image::OCI_LAYER_TAR.into(),
        (true, _, true) => mt.into(),
    }
}

/// A destination without its tag (`r.io/app:1` → `r.io/app`; a registry
/// port is not a tag).
pub(crate) fn untagged(dest: &str) -> &str {
    dest.rsplit_once(':')
        .filter(|(_, t)| !t.contains('/'))
        .map_or(dest, |(n, _)| n)
}

/// A destination's repository: no tag, no digest.
pub(crate) fn repository_of(dest: &str) -> &str {
    let name = untagged(dest);
    name.split('@').next().unwrap_or(name)
}

/// `--digest-file`, `--image-name-with-digest-file` and
/// `--image-name-tag-with-digest-file`, naming `digest` (the image's, or a
/// multi-platform build's index).
pub(crate) fn write_digest_files(opts: &OutputOptions, digest: &Digest) -> Result<(), OutputError> {
    if let Some(p) = &opts.digest_file {
        std::fs::write(p, digest.as_str()).map_err(io_err(p))?;
    }
    if let Some(p) = &opts.image_name_with_digest_file {
        let lines: String = opts
            .destinations
            .iter()
            .map(|d| format!("{}@{digest}\n", untagged(d)))
            .collect();
        std::fs::write(p, lines).map_err(io_err(p))?;
    }
    if let Some(p) = &opts.image_name_tag_with_digest_file {
        let lines: String = opts
            .destinations
            .iter()
            .map(|d| format!("{d}@{digest}\n"))
            .collect();
        std::fs::write(p, lines).map_err(io_err(p))?;
    }
    Ok(())
}

/// Pushes and writes every requested output; returns `name@digest` per push.
/// Whether pushing to `opts`' destinations can mount layers from
/// `cache_repo` (the same registry), so that the cache's uploads should
/// finish first.
pub fn mounts_from(opts: &OutputOptions, cache_repo: Option<&Reference>) -> bool {
    let Some(cache) = cache_repo else {
        return false;
    };
    !opts.no_push
        && opts.destinations.iter().any(|d| {
            parse_reference(d).map_or(true, |r| r.resolve_registry() == cache.resolve_registry())
        })
}

pub async fn deliver(
    opts: &OutputOptions,
    fetcher: &LayerFetcher,
    img: &BuiltImage,
    w: &WrittenImage,
    cache_repo: Option<&Reference>,
) -> Result<Vec<String>, OutputError> {
    let mut pushed = Vec::new();
    if !opts.no_push {
        for dest in &opts.destinations {
            push(
                fetcher,
                img,
                w,
                dest,
                cache_repo,
                opts.ignore_immutable_tags,
                opts.by_digest,
            )
            .await?;
            let name = repository_of(dest);
            tracing::info!("pushed {dest} ({})", w.manifest_digest);
            pushed.push(format!("{name}@{}", w.manifest_digest));
        }
    }
    if let Some(p) = &opts.oci_layout_path {
        write_oci_layout(
            fetcher,
            img,
            w,
            p,
            opts.destinations.first().map(String::as_str),
        )
        .await?;
    }
    if let Some(p) = &opts.tar_path {
        write_docker_archive(fetcher, img, w, p, &opts.destinations).await?;
    }
    write_digest_files(opts, &w.manifest_digest)?;
    Ok(pushed)
}

async fn push(
    fetcher: &LayerFetcher,
    img: &BuiltImage,
    w: &WrittenImage,
    dest: &str,
    cache_repo: Option<&Reference>,
    ignore_immutable_tags: bool,
    by_digest: bool,
) -> Result<(), OutputError> {
    let perr = |source| OutputError::Push {
        destination: dest.to_string(),
        source,
    };
    let (registry, store) = (fetcher.registry(), fetcher.store());
    let mut r = parse_reference(dest).map_err(perr)?;
    if by_digest {
        r = Reference::with_digest(
            r.registry().to_string(),
            r.repository().to_string(),
            w.manifest_digest.to_string(),
        );
    }
    // Layers concurrently: skip what the registry has, mount what a base
    // repository or the cache repository (whose writes are finished by
    // now) on the same registry has, stream the rest from disk.
    let uploads = img.layers.iter().map(|l| {
        let r = r.clone();
        let from = match &l.source {
            LayerSource::Remote(from) => Some(from),
            _ => cache_repo,
        }
        .filter(|f| f.resolve_registry() == r.resolve_registry());
        async move {
            if registry
                .blob_exists(&r, &l.descriptor.digest)
                .await
                .map_err(perr)?
            {
                tracing::debug!("{dest}: layer {} already present", l.descriptor.digest);
                return Ok(());
            }
            if let Some(from) = from {
                if registry
                    .mount_blob(&r, from, &l.descriptor.digest)
                    .await
                    .map_err(perr)?
                {
                    tracing::debug!(
                        "{dest}: mounted {} from {}",
                        l.descriptor.digest,
                        from.repository()
                    );
                    return Ok(());
                }
            }
            let p = fetcher.ensure_local(l, None).await.map_err(Box::new)?;
            registry
                .push_blob_file(&r, &p, &l.descriptor.digest, l.descriptor.size)
                .await
                .map_err(perr)
        }
    });
    // The config beside them: only the manifest needs every blob first.
    let config = async {
        if !registry
            .blob_exists(&r, &w.config_digest)
            .await
            .map_err(perr)?
        {
            registry
                .push_blob_file(
                    &r,
                    &store.path(&w.config_digest),
                    &w.config_digest,
                    w.config_size,
                )
                .await
                .map_err(perr)?;
        }
        Ok::<(), OutputError>(())
    };
    futures_util::future::try_join(futures_util::future::try_join_all(uploads), config).await?;
    match registry
        .push_manifest(&r, w.manifest.clone(), &w.media_type)
        .await
    {
        Err(e)
            if ignore_immutable_tags
                && e.remote_kind() == Some(&kiln_common::registry::RemoteKind::TagRefused) =>
        {
            tracing::warn!(
                "{dest}: {} (ignored: --push-ignore-immutable-tag-errors)",
                kiln_common::report::Report(&e)
            );
            Ok(())
        }
        r => r.map(|_| ()).map_err(perr),
    }
}

async fn write_oci_layout(
    fetcher: &LayerFetcher,
    img: &BuiltImage,
    w: &WrittenImage,
    dir: &Path,
    name: Option<&str>,
) -> Result<(), OutputError> {
    let store = fetcher.store();
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).map_err(io_err(&blobs))?;
    let mut digests: Vec<(Digest, PathBuf)> = Vec::new();
    for l in &img.layers {
        digests.push((
            l.descriptor.digest.clone(),
            fetcher.ensure_local(l, None).await.map_err(Box::new)?,
        ));
    }
    digests.push((w.config_digest.clone(), store.path(&w.config_digest)));
    digests.push((w.manifest_digest.clone(), store.path(&w.manifest_digest)));
    for (d, src) in digests {
        link_blob(&blobs, &d, &src)?;
    }
    let desc = Descriptor::new(
        &w.media_type,
        w.manifest_digest.clone(),
        w.manifest.len() as u64,
    );
    add_to_layout(dir, desc, name)
}

/// Puts blob `d` (at `src`) into a layout's `blobs/sha256`: a hard link
/// when on the same filesystem, else a copy through a temp file.
pub(crate) fn link_blob(blobs: &Path, d: &Digest, src: &Path) -> Result<(), OutputError> {
    let dst = blobs.join(d.hex());
    if dst.exists() {
        return Ok(());
    }
    if std::fs::hard_link(src, &dst).is_err() {
        let tmp = blobs.join(format!(".tmp-{}", d.hex()));
        std::fs::copy(src, &tmp).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &dst).map_err(io_err(&dst))?;
    }
    Ok(())
}

/// Names `desc` (whose blobs are in the layout) in the layout's
/// `index.json` under the tag of `name` (`latest` when none), keeping the
/// other images there and replacing one with the same tag.
pub(crate) fn add_to_layout(
    dir: &Path,
    mut desc: Descriptor,
    name: Option<&str>,
) -> Result<(), OutputError> {
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err(dir))?;
    let tag = name
        .and_then(|n| {
            n.rsplit_once(':')
                .filter(|(_, t)| !t.contains('/'))
                .map(|(_, t)| t.to_string())
        })
        .unwrap_or_else(|| "latest".into());
    desc.annotations = Some(BTreeMap::from([(
        "org.opencontainers.image.ref.name".to_string(),
        tag,
    )]));
    let mut index = kiln_common::layout::read_layout_index(dir);
    index
        .manifests
        .retain(|m| m.annotations != desc.annotations);
    index.manifests.push(desc);
    kiln_common::layout::write_layout_index(dir, &index).map_err(io_err(&dir.join("index.json")))
}

/// Destinations as `docker load` names images (`RepoTags`): Docker Hub's
/// without its host and `library/`.
pub(crate) fn docker_repo_tags(tags: &[String]) -> Vec<String> {
    tags.iter()
        .filter_map(|t| parse_reference(t).ok())
        .map(|r| {
            let full = if r.registry() == "docker.io" {
                r.repository().trim_start_matches("library/").to_string()
            } else {
                format!("{}/{}", r.registry(), r.repository())
            };
            format!("{full}:{}", r.tag().unwrap_or("latest"))
        })
        .collect()
}

/// `docker save` format: uncompressed layers named by diff id, so that
/// `docker load` and `skopeo copy docker-archive:` both accept it.
async fn write_docker_archive(
    fetcher: &LayerFetcher,
    img: &BuiltImage,
    w: &WrittenImage,
    path: &Path,
    tags: &[String],
) -> Result<(), OutputError> {
    let mut paths = Vec::new();
    for l in &img.layers {
        paths.push(fetcher.ensure_local(l, None).await.map_err(Box::new)?);
    }
    let store = fetcher.store();
    let tmp = path.with_extension("partial");
    let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut tb = tar::Builder::new(io::BufWriter::new(f));
    let append = |tb: &mut tar::Builder<io::BufWriter<std::fs::File>>,
                  name: &str,
                  data: &[u8]|
     -> io::Result<()> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        tb.append_data(&mut h, name, data)
    };
    let config_name = format!("{}.json", w.config_digest.hex());
    append(
        &mut tb,
        &config_name,
        &std::fs::read(store.path(&w.config_digest)).map_err(io_err(path))?,
    )
    .map_err(io_err(path))?;
    let mut layer_names = Vec::new();
    for (l, p) in img.layers.iter().zip(&paths) {
        let name = format!("{}/layer.tar", l.diff_id.hex());
        // The tar header needs the size first: one pass to count and verify.
        let size = {
            let f = std::fs::File::open(p).map_err(io_err(p))?;
            let mut r = kiln_layers::decompress(f).map_err(io_err(p))?;
            let mut hw = HashingWriter::new(io::sink());
            io::copy(&mut r, &mut hw).map_err(io_err(p))?;
            let (_, d, n) = hw.finish();
            if d != l.diff_id {
                return Err(OutputError::Io {
                    path: p.clone(),
                    source: io::Error::other(format!(
                        "layer {} uncompresses to {d}, config says {}",
                        l.descriptor.digest, l.diff_id
                    )),
                });
            }
            n
        };
        let f = std::fs::File::open(p).map_err(io_err(p))?;
        let r = kiln_layers::decompress(f).map_err(io_err(p))?;
        let mut h = tar::Header::new_gnu();
        h.set_size(size);
        h.set_mode(0o644);
        h.set_mtime(0);
        tb.append_data(&mut h, &name, r).map_err(io_err(path))?;
        layer_names.push(name);
    }
    let repo_tags = docker_repo_tags(tags);
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": repo_tags, "Layers": layer_names }]);
    append(&mut tb, "manifest.json", manifest.to_string().as_bytes()).map_err(io_err(path))?;
    let mut inner = tb.into_inner().map_err(io_err(path))?;
    inner.flush().map_err(io_err(path))?;
    std::fs::rename(&tmp, path).map_err(io_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_push_waits_for_the_cache_only_where_it_can_mount_from_it() {
        let opts = |dests: &[&str], no_push| OutputOptions {
            destinations: dests.iter().map(|d| d.to_string()).collect(),
            no_push,
            ..Default::default()
        };
        let cache = parse_reference("cache.example:5000/c").unwrap();
        let same = opts(&["other.example/app:1", "cache.example:5000/app:1"], false);
        assert!(mounts_from(&same, Some(&cache)));
        assert!(!mounts_from(&same, None));
        assert!(!mounts_from(
            &opts(&["cache.example:5000/app:1"], true),
            Some(&cache)
        ));
        assert!(!mounts_from(
            &opts(&["other.example/app:1"], false),
            Some(&cache)
        ));
        assert!(!mounts_from(&opts(&[], false), Some(&cache)));
    }
}
