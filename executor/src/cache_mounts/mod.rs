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
//!
//! Restores and saves never follow a link on the builder's disk ([`tree`]):
//! a stored listing is checked whole first and a poisoned one is refused.

mod tree;
pub use tree::{listing, Entry, TreeError};

use futures_util::{StreamExt, TryStreamExt};
use kiln_common::digest::Digest;
use kiln_common::image::{Descriptor, Manifest};
use kiln_common::registry::{Registry, RegistryError};
use oci_client::Reference;
use std::collections::{BTreeMap, BTreeSet};
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
    #[error("cache mount {id:?}")]
    Tree {
        id: String,
        #[source]
        source: TreeError,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Listing {
    format: String,
    entries: Vec<Entry>,
}

/// Where cache mounts are shared: the cache repository and a scope.
pub struct MountCache {
    registry: std::sync::Arc<Registry>,
    /// `--cache-repo`: restored from first, the only one saved to.
    repo: Reference,
    /// `--cache-from` registry repositories: restored from, in order, when
    /// `repo` has no save of a mount; never written.
    fallbacks: Vec<Reference>,
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
            fallbacks: Vec::new(),
            scope: scope.to_string(),
            platform: platform.to_string(),
        }
    }

    /// `mount-<scope>-<hash of scope, platform and id>`: the scope readable
    /// (made tag-safe, at most 40 characters) so that tag lists and the
    /// cache server's metrics can tell scopes apart; the hash keeps ids and
    /// platforms apart (a cache of arm64 binaries is no use to amd64).
    fn tag(&self, id: &str) -> Reference {
        self.tag_in(&self.repo, id)
    }

    /// [`Self::tag`] in `repo`.
    fn tag_in(&self, repo: &Reference, id: &str) -> Reference {
        let name = Digest::sha256_of(format!("{}\0{}\0{id}", self.scope, self.platform).as_bytes());
        Reference::with_tag(
            repo.registry().to_string(),
            repo.repository().to_string(),
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
    /// The fallbacks (`--cache-from`) are asked in order when the written
    /// repository has no save; the answer then names the one that had it
    /// (its blobs are not in the written repository: a later save lists
    /// nothing as known).
    pub async fn restore(
        &self,
        id: &str,
        dir: &Path,
    ) -> Result<Option<(Vec<Entry>, Moved, Option<String>)>, MountCacheError> {
        for (i, repo) in std::iter::once(&self.repo)
            .chain(&self.fallbacks)
            .enumerate()
        {
            if let Some((entries, moved)) = self.restore_from(repo, id, dir).await? {
                let from = (i > 0).then(|| format!("{}/{}", repo.registry(), repo.repository()));
                return Ok(Some((entries, moved, from)));
            }
        }
        Ok(None)
    }

    /// Sets the repositories restored from after the written one.
    pub fn with_fallbacks(mut self, fallbacks: Vec<Reference>) -> MountCache {
        self.fallbacks = fallbacks;
        self
    }

    async fn restore_from(
        &self,
        repo: &Reference,
        id: &str,
        dir: &Path,
    ) -> Result<Option<(Vec<Entry>, Moved)>, MountCacheError> {
        let tag = self.tag_in(repo, id);
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
        let tree_err = |source| MountCacheError::Tree {
            id: id.to_string(),
            source,
        };
        // Refused whole before anything is written: a listing whose
        // entries could lie beneath a link (or outside `dir`) was not made
        // by a save.
        tree::check(&listing.entries).map_err(tree_err)?;
        let beneath = tree::Beneath::open(dir).map_err(tree_err)?;
        for e in listing.entries.iter().filter(|e| e.kind == 'd') {
            beneath.mkdir(&e.path).map_err(tree_err)?;
        }
        // Each distinct content is fetched once, verified against its
        // digest, into a private directory beside `dir`; files are then
        // moved (the last use) or copied into place beneath `dir`.
        let sizes: BTreeMap<&Digest, u64> = m.layers.iter().map(|d| (&d.digest, d.size)).collect();
        let files: Vec<(&Entry, &Digest)> = listing
            .entries
            .iter()
            .filter_map(|e| e.digest.as_ref().filter(|_| e.kind == 'f').map(|d| (e, d)))
            .collect();
        let mut uses: BTreeMap<&Digest, usize> = BTreeMap::new();
        for (_, d) in &files {
            *uses.entry(d).or_default() += 1;
        }
        let parent = dir.parent().unwrap_or(dir);
        let blobs = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempdir_in(parent)
            .map_err(io("creating a directory in", parent))?;
        let fetches = futures_util::stream::iter(uses.keys().map(|d| {
            let size = sizes.get(d).copied().unwrap_or_default();
            let desc = Descriptor::new(FILE_TYPE, (*d).clone(), size);
            let p = blobs.path().join(d.hex());
            let tag = &tag;
            async move {
                let n = self
                    .registry
                    .fetch_blob(tag, &desc, &p)
                    .await
                    .map_err(self.reg_err(id))?;
                Ok::<(Digest, u64), MountCacheError>((desc.digest, n))
            }
        }))
        .buffer_unordered(TRANSFER_CONCURRENCY);
        let fetched: BTreeMap<Digest, u64> = fetches.try_collect().await?;
        let mut moved = Moved::default();
        for (e, d) in &files {
            let blob = blobs.path().join(d.hex());
            let left = uses.get_mut(d).map_or(0, |n| {
                *n -= 1;
                *n
            });
            if left == 0 {
                beneath.take_file(&blob, &e.path).map_err(tree_err)?;
            } else {
                let mut to = beneath.create_file(&e.path).map_err(tree_err)?;
                std::fs::File::open(&blob)
                    .and_then(|mut from| std::io::copy(&mut from, &mut to))
                    .map_err(io("copying", &blob))?;
            }
            moved.files += 1;
            moved.bytes += fetched.get(*d).copied().unwrap_or_default();
        }
        // Links last, so nothing is ever written through one.
        for e in listing.entries.iter().filter(|e| e.kind == 'l') {
            let target = e.target.as_deref().unwrap_or_default();
            beneath
                .symlink(&e.path, target, e.uid, e.gid)
                .map_err(tree_err)?;
        }
        // Owners and modes last, deepest first: a read-only directory must
        // not refuse what is restored into it.
        for e in listing.entries.iter().rev().filter(|e| e.kind != 'l') {
            beneath
                .set_owner_mode(&e.path, e.uid, e.gid, e.mode)
                .map_err(tree_err)?;
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
        let entries = listing(dir).map_err(|source| MountCacheError::Tree {
            id: id.to_string(),
            source,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_scopes_get_their_own_copies() {
        let registry = std::sync::Arc::new(
            Registry::new(
                Default::default(),
                kiln_common::auth::DockerConfig::default(),
            )
            .unwrap(),
        );
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
}
