//! Cache mounts that follow the build from pod to pod: with the layer cache
//! in a registry (the Kiln cache server or any registry), a `RUN
//! --mount=type=cache` directory is restored from it at the first RUN that
//! uses it in a fresh work directory, and saved back after the build when
//! it changed. BuildKit keeps these in one builder's local storage, so on
//! ephemeral CI runners they start empty every time.
//!
//! Stored as an ordinary image in the cache repository, tagged
//! `mount-<sha256(scope, id)>`: a config blob listing the tree (paths,
//! kinds, modes, owners, sizes, digests, link targets) and one blob per
//! distinct file content, referenced as layers so a registry's GC keeps
//! them. A save uploads only the files whose content the repository does
//! not have yet — O(change), not the whole cache again. Each file is
//! verified when restored; the tag is pushed last, so a reader sees a
//! previous complete save or this one, never a partial one.

use futures_util::{StreamExt, TryStreamExt};
use kiln_common::digest::{digest_file, Digest};
use kiln_common::image::{Descriptor, Manifest};
use kiln_common::registry::{Registry, RegistryError};
use oci_client::Reference;
use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

const FORMAT: &str = "kiln-cache-mount-v1";
const CONFIG_TYPE: &str = "application/vnd.kiln.cache-mount.config.v1+json";
const FILE_TYPE: &str = "application/vnd.kiln.cache-mount.file";
const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// Files fetched or uploaded at once; each is one small request.
const TRANSFER_CONCURRENCY: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum MountCacheError {
    #[error("cache mount {id:?} in {repo}")]
    Registry {
        id: String,
        repo: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cache mount {id:?}: stored listing is not usable")]
    Listing {
        id: String,
        #[source]
        source: serde_json::Error,
    },
}

/// One entry of a cache mount's tree.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Entry {
    pub path: String,
    /// `f`ile, `d`irectory or `l`ink.
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<Digest>,
    #[serde(default)]
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Listing {
    format: String,
    entries: Vec<Entry>,
}

/// Where cache mounts are shared: the cache repository and a scope.
pub struct MountCache {
    registry: std::sync::Arc<Registry>,
    repo: Reference,
    scope: String,
    /// The build's target platform (`os/arch[/variant]`), part of the key.
    platform: String,
}

/// What a restore or a save moved.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct Moved {
    pub files: u64,
    pub bytes: u64,
}

impl MountCache {
    pub fn new(
        registry: std::sync::Arc<Registry>,
        repo: Reference,
        scope: &str,
        platform: &kiln_common::image::Platform,
    ) -> MountCache {
        MountCache {
            registry,
            repo,
            scope: scope.to_string(),
            platform: platform.to_string(),
        }
    }

    /// `mount-<scope>-<hash of scope, platform and id>`: the scope readable
    /// (made tag-safe, at most 40 characters) so that tag lists and the
    /// cache server's metrics can tell scopes apart; the hash keeps ids and
    /// platforms apart (a cache of arm64 binaries is no use to amd64).
    fn tag(&self, id: &str) -> Reference {
        let name = Digest::sha256_of(format!("{}\0{}\0{id}", self.scope, self.platform).as_bytes());
        Reference::with_tag(
            self.repo.registry().to_string(),
            self.repo.repository().to_string(),
            format!("mount-{}-{}", tag_safe(&self.scope), &name.hex()[..40]),
        )
    }

    fn reg_err(&self, id: &str) -> impl Fn(RegistryError) -> MountCacheError + '_ {
        let id = id.to_string();
        move |e| MountCacheError::Registry {
            id: id.clone(),
            repo: self.repo.whole(),
            source: Box::new(e),
        }
    }

    /// Fills the empty directory `dir` with the last save of `id`; `None`
    /// when there is none. Returns the listing restored (what a later save
    /// compares against).
    pub async fn restore(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<Option<(Vec<Entry>, Moved)>, MountCacheError> {
        let tag = self.tag(id);
        let Some((bytes, _)) = self
            .registry
            .get_manifest(&tag)
            .await
            .map_err(self.reg_err(id))?
        else {
            return Ok(None);
        };
        let m: Manifest =
            serde_json::from_slice(&bytes).map_err(|source| MountCacheError::Listing {
                id: id.to_string(),
                source,
            })?;
        let cfg_path = dir.with_extension("listing");
        self.registry
            .fetch_blob(&tag, &m.config, &cfg_path)
            .await
            .map_err(self.reg_err(id))?;
        let raw = std::fs::read(&cfg_path).map_err(io("reading", &cfg_path))?;
        let _ = std::fs::remove_file(&cfg_path);
        let listing: Listing =
            serde_json::from_slice(&raw).map_err(|source| MountCacheError::Listing {
                id: id.to_string(),
                source,
            })?;
        let sizes: BTreeMap<&Digest, u64> = m.layers.iter().map(|d| (&d.digest, d.size)).collect();
        let safe: Vec<&Entry> = listing
            .entries
            .iter()
            .filter(|e| !e.path.split('/').any(|c| c == ".." || c.is_empty()))
            .collect();
        // Directories and links first, so files can land in any order.
        for e in safe.iter().filter(|e| e.kind != 'f') {
            let p = dir.join(&e.path);
            match (e.kind, &e.target) {
                ('d', _) => std::fs::create_dir_all(&p).map_err(io("creating", &p))?,
                ('l', Some(t)) => std::os::unix::fs::symlink(t, &p).map_err(io("linking", &p))?,
                _ => {}
            }
        }
        // Files are independent small requests: fetched concurrently, each
        // verified against its digest by `fetch_blob`.
        let files = safe
            .iter()
            .filter(|e| e.kind == 'f')
            .filter_map(|e| e.digest.as_ref().map(|d| (e, d)));
        let fetches = futures_util::stream::iter(files.map(|(e, d)| {
            let desc = Descriptor::new(FILE_TYPE, d.clone(), *sizes.get(d).unwrap_or(&e.size));
            let p = dir.join(&e.path);
            let tag = &tag;
            async move {
                self.registry
                    .fetch_blob(tag, &desc, &p)
                    .await
                    .map_err(self.reg_err(id))?;
                Ok::<u64, MountCacheError>(e.size)
            }
        }))
        .buffer_unordered(TRANSFER_CONCURRENCY);
        let fetched: Vec<u64> = fetches.try_collect().await?;
        let moved = Moved {
            files: fetched.len() as u64,
            bytes: fetched.iter().sum(),
        };
        // Owners and modes last: a read-only directory must not refuse the
        // files restored into it.
        for e in safe.iter().rev().filter(|e| e.kind != 'l') {
            let p = dir.join(&e.path);
            let _ = std::os::unix::fs::lchown(&p, Some(e.uid), Some(e.gid));
            let _ = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(e.mode));
        }
        Ok(Some((listing.entries, moved)))
    }

    /// Saves `dir` as `id`: uploads the files whose content the repository
    /// does not have (by `known` digests, then by asking), then the listing
    /// and the tag.
    pub async fn save(
        &self,
        id: &str,
        dir: &Path,
        known: &[Entry],
    ) -> Result<Moved, MountCacheError> {
        let entries = listing(dir)?;
        let tag = self.tag(id);
        let known: BTreeSet<&Digest> = known.iter().filter_map(|e| e.digest.as_ref()).collect();
        // One upload per distinct content the last restore did not list.
        let mut layers: BTreeMap<Digest, u64> = BTreeMap::new();
        let mut new: BTreeMap<&Digest, &Entry> = BTreeMap::new();
        for e in &entries {
            let Some(d) = &e.digest else { continue };
            layers.insert(d.clone(), e.size);
            if !known.contains(d) {
                new.entry(d).or_insert(e);
            }
        }
        tracing::info!(
            "cache mount {id:?}: saving ({} files to check or upload)",
            new.len()
        );
        // Independent small requests, as in `restore`: concurrent. The tag
        // is pushed only after every blob is in, so a save cut short leaves
        // the previous one readable.
        let uploads = futures_util::stream::iter(new.into_iter().map(|(d, e)| {
            let tag = &tag;
            async move {
                let present = self
                    .registry
                    .blob_exists(tag, d)
                    .await
                    .map_err(self.reg_err(id))?;
                if present {
                    return Ok::<Option<u64>, MountCacheError>(None);
                }
                let p = dir.join(&e.path);
                self.registry
                    .push_blob_file(tag, &p, d, e.size)
                    .await
                    .map_err(self.reg_err(id))?;
                Ok(Some(e.size))
            }
        }))
        .buffer_unordered(TRANSFER_CONCURRENCY);
        let uploaded: Vec<Option<u64>> = uploads.try_collect().await?;
        let moved = Moved {
            files: uploaded.iter().flatten().count() as u64,
            bytes: uploaded.iter().flatten().sum(),
        };
        let listing = serde_json::to_vec(&Listing {
            format: FORMAT.into(),
            entries,
        })
        .unwrap_or_default();
        let config = self
            .registry
            .push_blob_bytes(&tag, &listing)
            .await
            .map_err(self.reg_err(id))?;
        let manifest = Manifest {
            schema_version: 2,
            media_type: Some(MANIFEST_TYPE.into()),
            config: Descriptor::new(CONFIG_TYPE, config, listing.len() as u64),
            layers: layers
                .into_iter()
                .map(|(d, n)| Descriptor::new(FILE_TYPE, d, n))
                .collect(),
            annotations: None,
        };
        let body = serde_json::to_vec(&manifest).unwrap_or_default();
        self.registry
            .push_manifest(&tag, body, MANIFEST_TYPE)
            .await
            .map_err(self.reg_err(id))?;
        Ok(moved)
    }
}

/// A scope as a tag fragment: ASCII letters, digits, `.` and `_` kept,
/// anything else `-`, at most 40 characters, never empty.
fn tag_safe(scope: &str) -> String {
    let s: String = scope
        .chars()
        .take(40)
        .map(|c| match c {
            'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '_' => c,
            _ => '-',
        })
        .collect();
    match s.trim_matches(|c| c == '-' || c == '.') {
        "" => "default".into(),
        t => t.to_string(),
    }
}

fn io(op: &'static str, p: &Path) -> impl FnOnce(std::io::Error) -> MountCacheError {
    let path = p.to_path_buf();
    move |source| MountCacheError::Io { op, path, source }
}

/// The tree under `dir`, sorted, files hashed.
pub fn listing(dir: &Path) -> Result<Vec<Entry>, MountCacheError> {
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    Ok(out)
}

fn walk(base: &Path, dir: &Path, out: &mut Vec<Entry>) -> Result<(), MountCacheError> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .flatten()
        .map(|e| e.file_name())
        .collect();
    names.sort();
    for n in names {
        let p = dir.join(&n);
        let m = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
        let rel = p
            .strip_prefix(base)
            .unwrap_or(&p)
            .to_string_lossy()
            .into_owned();
        let mut e = Entry {
            path: rel,
            kind: 'f',
            mode: m.mode() & 0o7777,
            uid: m.uid(),
            gid: m.gid(),
            digest: None,
            size: 0,
            target: None,
        };
        if m.is_dir() {
            e.kind = 'd';
            out.push(e);
            walk(base, &p, out)?;
        } else if m.file_type().is_symlink() {
            e.kind = 'l';
            e.target = std::fs::read_link(&p)
                .ok()
                .map(|t| t.to_string_lossy().into_owned());
            out.push(e);
        } else if m.is_file() {
            let (d, n) = digest_file(&p).map_err(io("hashing", &p))?;
            e.digest = Some(d);
            e.size = n;
            out.push(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_scopes_get_their_own_copies() {
        let registry = std::sync::Arc::new(Registry::new(
            Default::default(),
            kiln_common::auth::DockerConfig::default(),
        ));
        let repo: Reference = "127.0.0.1:5000/cache/app".parse().unwrap();
        let cache = |scope: &str, platform: &str| {
            MountCache::new(
                registry.clone(),
                repo.clone(),
                scope,
                &kiln_common::image::Platform::parse(platform).unwrap(),
            )
        };
        let amd = cache("main", "linux/amd64").tag("/root/.cache");
        assert_eq!(amd, cache("main", "linux/amd64").tag("/root/.cache"));
        assert_ne!(amd, cache("main", "linux/arm64").tag("/root/.cache"));
        assert_ne!(amd, cache("dev", "linux/amd64").tag("/root/.cache"));
        assert_ne!(amd, cache("main", "linux/amd64").tag("/root/.npm"));
        assert!(amd.tag().unwrap().starts_with("mount-main-"));
    }

    #[test]
    fn scopes_become_tag_fragments() {
        assert_eq!(tag_safe("feature/login-form"), "feature-login-form");
        assert_eq!(tag_safe("main"), "main");
        assert_eq!(tag_safe("//"), "default");
        assert_eq!(tag_safe(&"x".repeat(90)).len(), 40);
    }

    #[test]
    fn listings_are_sorted_and_hash_files() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("b/c")).unwrap();
        std::fs::write(d.path().join("b/c/f"), "x").unwrap();
        std::fs::write(d.path().join("a"), "y").unwrap();
        std::os::unix::fs::symlink("a", d.path().join("l")).unwrap();
        let l = listing(d.path()).unwrap();
        let paths: Vec<&str> = l.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["a", "b", "b/c", "b/c/f", "l"]);
        assert_eq!(l[0].digest, Some(Digest::sha256_of(b"y")));
        assert_eq!(l[4].target.as_deref(), Some("a"));
    }
}
