//! The warmed base-image directory: one OCI image layout shared by the warmer
//! and executors (often a PVC mounted by many CI pods).
//!
//! Blobs live once under `blobs/sha256/<hex>` however many images use them;
//! each warmed reference and platform is one entry of `index.json`. Writers
//! put blobs by temp file + fsync + rename (a crash leaves no partial blob
//! under its digest) and change `index.json` only under an exclusive `flock`
//! on `.kiln.lock`, by rewrite + rename, so several warmers and executors can
//! share the directory and readers never see a torn index.

use crate::digest::Digest;
use crate::image::{Descriptor, Index, Platform};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

pub const ANN_REF: &str = "org.opencontainers.image.ref.name";
pub const ANN_SOURCE: &str = "dev.kiln.warm.reference";
pub const ANN_FETCHED: &str = "dev.kiln.warm.fetched";
pub const ANN_USED: &str = "dev.kiln.warm.last-used";
/// What the reference resolved to at the top (an index digest for multi-platform tags).
pub const ANN_TOP: &str = "dev.kiln.warm.top-digest";

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("cache dir {path}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cache dir {path}: index.json")]
    Index {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// One warmed reference for one platform.
#[derive(Debug, Clone)]
pub struct WarmEntry {
    pub reference: String,
    pub platform: Platform,
    pub manifest: Descriptor,
    pub fetched: Option<chrono::DateTime<chrono::Utc>>,
    pub last_used: Option<chrono::DateTime<chrono::Utc>>,
    pub top: Option<Digest>,
}

pub struct CacheDir {
    root: PathBuf,
}

/// Holds the directory's exclusive lock until dropped.
pub struct Locked<'a> {
    dir: &'a CacheDir,
    _lock: nix::fcntl::Flock<File>,
}

impl CacheDir {
    pub fn open(root: &Path) -> Result<CacheDir, LayoutError> {
        let io = |source| LayoutError::Io {
            path: root.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(root.join("blobs/sha256")).map_err(io)?;
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_atomic(&layout, br#"{"imageLayoutVersion":"1.0.0"}"#).map_err(io)?;
        }
        let d = CacheDir {
            root: root.to_path_buf(),
        };
        if !root.join("index.json").exists() {
            let l = d.lock()?;
            if !root.join("index.json").exists() {
                l.write_index(&Index::empty())?;
            }
        }
        Ok(d)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }

    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.blobs().join(d.hex())
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Stores a small blob (manifest, config) atomically.
    pub fn put_blob(&self, data: &[u8]) -> Result<Digest, LayoutError> {
        let d = Digest::sha256_of(data);
        let p = self.blob_path(&d);
        if !p.exists() {
            write_atomic(&p, data).map_err(|source| LayoutError::Io {
                path: p.clone(),
                source,
            })?;
        }
        Ok(d)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>, LayoutError> {
        let p = self.blob_path(d);
        let b = std::fs::read(&p).map_err(|source| LayoutError::Io {
            path: p.clone(),
            source,
        })?;
        // Untrusted until the digest matches, even on our own disk.
        let actual = Digest::sha256_of(&b);
        if &actual != d {
            return Err(LayoutError::Io {
                path: p,
                source: std::io::Error::other(format!("blob hashes to {actual}")),
            });
        }
        Ok(b)
    }

    pub fn lock(&self) -> Result<Locked<'_>, LayoutError> {
        let p = self.root.join(".kiln.lock");
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|source| LayoutError::Io {
                path: p.clone(),
                source,
            })?;
        let lock =
            nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusive).map_err(|(_, e)| {
                LayoutError::Io {
                    path: p,
                    source: e.into(),
                }
            })?;
        Ok(Locked {
            dir: self,
            _lock: lock,
        })
    }

    pub fn read_index(&self) -> Result<Index, LayoutError> {
        let p = self.root.join("index.json");
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b).map_err(|source| LayoutError::Index {
                path: self.root.clone(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Index::empty()),
            Err(source) => Err(LayoutError::Io { path: p, source }),
        }
    }

    pub fn entries(&self) -> Result<Vec<WarmEntry>, LayoutError> {
        Ok(self
            .read_index()?
            .manifests
            .iter()
            .filter_map(entry_of)
            .collect())
    }

    /// The entry for `reference` on `platform`.
    /// The warmed copy of `reference` for `platform`. A digest-pinned
    /// reference (`repo@sha256:…`) is content, whatever name it was warmed
    /// under: it matches any entry whose manifest has that digest, or whose
    /// index (the top digest) has it and whose platform matches — so
    /// `FROM repo@sha256:…` builds offline from a tag the warmer fetched.
    pub fn find(
        &self,
        reference: &str,
        platform: &Platform,
    ) -> Result<Option<WarmEntry>, LayoutError> {
        let entries = self.entries()?;
        let pinned: Option<Digest> = reference.rsplit_once('@').and_then(|(_, d)| d.parse().ok());
        let by_name = |e: &&WarmEntry| e.reference == reference && platform.matches(&e.platform);
        let by_digest = |e: &&WarmEntry| match &pinned {
            Some(d) => {
                e.manifest.digest == *d
                    || (e.top.as_ref() == Some(d) && platform.matches(&e.platform))
            }
            None => false,
        };
        let found = entries
            .iter()
            .find(by_name)
            .or_else(|| entries.iter().find(by_digest));
        Ok(found.cloned())
    }
}

impl Locked<'_> {
    pub fn write_index(&self, idx: &Index) -> Result<(), LayoutError> {
        let p = self.dir.root.join("index.json");
        let b = serde_json::to_vec_pretty(idx).map_err(|source| LayoutError::Index {
            path: self.dir.root.clone(),
            source,
        })?;
        write_atomic(&p, &b).map_err(|source| LayoutError::Io { path: p, source })
    }

    /// Adds or replaces the entry for `(reference, platform)`.
    pub fn put_entry(
        &self,
        reference: &str,
        platform: &Platform,
        manifest: Descriptor,
        top: &Digest,
    ) -> Result<(), LayoutError> {
        let mut idx = self.dir.read_index()?;
        idx.manifests.retain(|d| {
            !entry_of(d).is_some_and(|e| e.reference == reference && e.platform == *platform)
        });
        let mut d = manifest;
        d.platform = Some(platform.clone());
        d.annotations = Some(BTreeMap::from([
            (ANN_REF.to_string(), reference.to_string()),
            (ANN_SOURCE.to_string(), reference.to_string()),
            (ANN_FETCHED.to_string(), now()),
            (ANN_TOP.to_string(), top.to_string()),
        ]));
        idx.manifests.push(d);
        self.write_index(&idx)
    }

    /// Marks an entry fetched now (a HEAD found it unchanged).
    pub fn refresh(&self, reference: &str, platform: &Platform) -> Result<(), LayoutError> {
        self.set_time(reference, platform, ANN_FETCHED)
    }

    /// Removes the entries `drop` selects; returns how many went.
    pub fn remove_entries(&self, drop: impl Fn(&WarmEntry) -> bool) -> Result<usize, LayoutError> {
        let mut idx = self.dir.read_index()?;
        let before = idx.manifests.len();
        idx.manifests
            .retain(|d| !entry_of(d).is_some_and(|e| drop(&e)));
        let n = before - idx.manifests.len();
        if n > 0 {
            self.write_index(&idx)?;
        }
        Ok(n)
    }

    fn set_time(&self, reference: &str, platform: &Platform, key: &str) -> Result<(), LayoutError> {
        let mut idx = self.dir.read_index()?;
        for d in &mut idx.manifests {
            if entry_of(d)
                .is_some_and(|e| e.reference == reference && platform.matches(&e.platform))
            {
                d.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .insert(key.to_string(), now());
            }
        }
        self.write_index(&idx)
    }

    /// Records that a build used an entry (for `--keep-unused-for`).
    pub fn touch(&self, reference: &str, platform: &Platform) -> Result<(), LayoutError> {
        self.set_time(reference, platform, ANN_USED)
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn entry_of(d: &Descriptor) -> Option<WarmEntry> {
    let a = d.annotations.as_ref()?;
    let parse = |k: &str| {
        a.get(k)
            .and_then(|v| chrono::DateTime::parse_from_rfc3339(v).ok())
            .map(|t| t.with_timezone(&chrono::Utc))
    };
    Some(WarmEntry {
        reference: a.get(ANN_SOURCE).or(a.get(ANN_REF))?.clone(),
        platform: d.platform.clone()?,
        manifest: d.clone(),
        fetched: parse(ANN_FETCHED),
        last_used: parse(ANN_USED),
        top: a.get(ANN_TOP).and_then(|t| t.parse().ok()),
    })
}

/// Layout `dir`'s `index.json`; an empty index when it has none (a new
/// layout) or it cannot be read.
pub fn read_layout_index(dir: &Path) -> Index {
    std::fs::read(dir.join("index.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Index>(&b).ok())
        .unwrap_or_else(Index::empty)
}

/// Replaces layout `dir`'s `index.json` with `index`, atomically.
pub fn write_layout_index(dir: &Path, index: &Index) -> std::io::Result<()> {
    let bytes = serde_json::to_vec(index).map_err(std::io::Error::other)?;
    write_atomic(&dir.join("index.json"), &bytes)
}

/// Writes `data` to `dest` via a temp file in the same directory, fsync and rename.
pub fn write_atomic(dest: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = dest.parent().unwrap_or(Path::new("."));
    let mut t = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    t.write_all(data)?;
    t.as_file().sync_all()?;
    t.persist(dest).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_round_trip_and_blobs_verify() {
        let d = tempfile::tempdir().unwrap();
        let c = CacheDir::open(d.path()).unwrap();
        let m = c.put_blob(b"{}").unwrap();
        let p = Platform::parse("linux/amd64").unwrap();
        c.lock()
            .unwrap()
            .put_entry(
                "reg/x:1",
                &p,
                Descriptor::new(crate::image::OCI_MANIFEST, m.clone(), 2),
                &m,
            )
            .unwrap();
        let e = c.find("reg/x:1", &p).unwrap().unwrap();
        assert_eq!(e.manifest.digest, m);
        assert!(c
            .find("reg/x:1", &Platform::parse("linux/arm64").unwrap())
            .unwrap()
            .is_none());
        std::fs::write(c.blob_path(&m), b"tampered").unwrap();
        assert!(c.read_blob(&m).is_err());
    }
}
