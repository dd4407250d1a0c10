//! `--tar-path` for a multi-platform build: the joined OCI layout (its
//! `index.json` naming the index) as one tarball, with a Docker
//! `manifest.json` beside it — the combined format `docker save` writes
//! since Docker 25. OCI tools read it as an `oci-archive:`; `docker load`
//! (any version: it decompresses layers itself) loads every platform's
//! image and tags the one for the machine's platform (or the first).

use kiln_common::image::{Manifest, Platform};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("writing the archive {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("reading {what} in the layout {}", dir.display())]
    Layout {
        what: String,
        dir: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `manifest.json` for the platforms' manifests `members` of the index in
/// `layout` (paths into `blobs/sha256/`); `tags` go on `tagged`'s entry.
fn docker_manifest(
    layout: &Path,
    members: &[(Platform, kiln_common::Digest)],
    tagged: &Platform,
    tags: &[String],
) -> Result<Vec<u8>, ArchiveError> {
    let mut entries = Vec::new();
    for (platform, digest) in members {
        let bytes = read(layout, digest)?;
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| ArchiveError::Layout {
                what: format!("manifest {digest}"),
                dir: layout.to_path_buf(),
                source,
            })?;
        let blob = |d: &kiln_common::Digest| format!("blobs/sha256/{}", d.hex());
        entries.push(serde_json::json!({
            "Config": blob(&m.config.digest),
            "RepoTags": if platform == tagged { tags.to_vec() } else { Vec::new() },
            "Layers": m.layers.iter().map(|l| blob(&l.digest)).collect::<Vec<_>>(),
        }));
    }
    Ok(serde_json::to_vec(&entries).unwrap_or_default())
}

/// One entry of the archive: mode 0644, time 0 (the same bytes give the
/// same archive).
fn append<W: Write>(
    tb: &mut tar::Builder<W>,
    name: &str,
    size: u64,
    data: impl io::Read,
) -> io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    tb.append_data(&mut h, name, data)
}

fn read(layout: &Path, d: &kiln_common::Digest) -> Result<Vec<u8>, ArchiveError> {
    let p = layout.join("blobs/sha256").join(d.hex());
    std::fs::read(&p).map_err(|source| ArchiveError::Io { path: p, source })
}

/// Writes `layout` (an OCI layout holding the index and the platforms'
/// images) to `path` as a tarball with a Docker `manifest.json`; `tags`
/// (Docker's `RepoTags` spelling) go on the image for `host` when it is
/// one of `members`, else on the first.
pub fn write(
    layout: &Path,
    path: &Path,
    members: &[(Platform, kiln_common::Digest)],
    host: &Platform,
    tags: &[String],
) -> Result<(), ArchiveError> {
    let tagged = members
        .iter()
        .map(|(p, _)| p)
        .find(|p| *p == host)
        .or_else(|| members.first().map(|(p, _)| p))
        .cloned()
        .unwrap_or_else(|| host.clone());
    let manifest = docker_manifest(layout, members, &tagged, tags)?;
    // The index as the layout has it, byte for byte.
    let index_path = layout.join("index.json");
    let index = std::fs::read(&index_path).map_err(|source| ArchiveError::Io {
        path: index_path,
        source,
    })?;
    let err = |source| ArchiveError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("partial");
    let f = std::fs::File::create(&tmp).map_err(err)?;
    let mut tb = tar::Builder::new(io::BufWriter::new(f));
    let small: [(&str, &[u8]); 3] = [
        ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#),
        ("index.json", &index),
        ("manifest.json", &manifest),
    ];
    for (name, data) in small {
        append(&mut tb, name, data.len() as u64, data).map_err(err)?;
    }
    let mut blobs: Vec<_> = std::fs::read_dir(layout.join("blobs/sha256"))
        .map_err(err)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| !n.to_string_lossy().starts_with('.'))
        })
        .collect();
    blobs.sort();
    for b in blobs {
        let name = format!(
            "blobs/sha256/{}",
            b.file_name().unwrap_or_default().to_string_lossy()
        );
        let f = std::fs::File::open(&b).map_err(err)?;
        let size = f.metadata().map_err(err)?.len();
        append(&mut tb, &name, size, f).map_err(err)?;
    }
    let mut w = tb.into_inner().map_err(err)?;
    w.flush().map_err(err)?;
    w.into_inner()
        .map_err(|e| err(e.into_error()))?
        .sync_all()
        .map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    Ok(())
}
