//! `registry://host/repo`: an existing registry as the store, read-through
//! and write-through. The server's repository `R` is the upstream's
//! `repo/R`, so what the cache holds stays an ordinary image any client can
//! pull from the upstream directly; blobs are kept once, in `repo` itself,
//! and mounted into `repo/R` when a manifest there needs them. The memory
//! and disk tiers in front make repeated reads local.
//!
//! Registries keep no last-use times that a client can read, so expiry,
//! LRU eviction and GC are the upstream's business here (`has_times` is
//! false); deletes are refused rather than half done.
//!
//! Credentials come from the Docker config (`DOCKER_CONFIG`), as for the
//! executor; `?insecure=true` reaches the upstream over plain HTTP.

use super::{Backend, Meta, StorageError};
use crate::keys::{Key, Prefix};
use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use kiln_common::auth::DockerConfig;
use kiln_common::registry::{Registry, RegistryError, RegistryOptions};
use kiln_common::Digest;
use oci_client::Reference;
use std::ops::Range;
use std::path::Path;

pub struct RegistryBackend {
    registry: Registry,
    host: String,
    base: String,
}

fn now_meta(key: &Key, size: u64) -> Meta {
    Meta {
        key: key.clone(),
        size,
        modified: chrono::Utc::now(),
    }
}

impl RegistryBackend {
    /// `rest` is `host/repo[?insecure=true]`.
    pub fn open(rest: &str, deadlines: super::Deadlines) -> Result<RegistryBackend, StorageError> {
        let bad = |message: &str| StorageError::Upstream {
            op: "open",
            path: rest.to_string(),
            source: message.to_string().into(),
        };
        let (target, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (host, base) = target
            .split_once('/')
            .filter(|(h, b)| !h.is_empty() && !b.is_empty())
            .ok_or_else(|| bad("expected registry://host/repository"))?;
        let insecure = query
            .split('&')
            .any(|p| p == "insecure=true" || p == "insecure");
        let opts = RegistryOptions {
            insecure_hosts: if insecure {
                vec![host.to_string()]
            } else {
                Vec::new()
            },
            stall_timeout: Some(deadlines.stall),
            ..Default::default()
        };
        let creds = DockerConfig::load_default().map_err(|e| bad(&e.to_string()))?;
        Ok(RegistryBackend {
            registry: Registry::new(opts, creds).map_err(|e| StorageError::Upstream {
                op: "open",
                path: rest.to_string(),
                source: Box::new(e),
            })?,
            host: host.to_string(),
            base: base.trim_matches('/').to_string(),
        })
    }

    fn reference(
        &self,
        repo: Option<&str>,
        tag: Option<&str>,
        digest: Option<&Digest>,
    ) -> Reference {
        let repository = match repo {
            Some(r) => format!("{}/{r}", self.base),
            None => self.base.clone(),
        };
        match (tag, digest) {
            (_, Some(d)) => Reference::with_digest(self.host.clone(), repository, d.to_string()),
            (Some(t), None) => Reference::with_tag(self.host.clone(), repository, t.to_string()),
            (None, None) => Reference::with_tag(self.host.clone(), repository, "latest".into()),
        }
    }

    fn err<'a>(op: &'static str, key: &'a Key) -> impl Fn(RegistryError) -> StorageError + 'a {
        move |e| StorageError::Upstream {
            op,
            path: key.to_string(),
            source: Box::new(e),
        }
    }

    /// Where a blob may be: the named repository (images pushed upstream by
    /// other tools keep their blobs there), then the shared blob repository.
    fn blob_places(&self, key: &Key) -> Vec<(Option<String>, Digest)> {
        match key {
            Key::Blob(d) => vec![(None, d.clone())],
            Key::RepoBlob { repo, digest } => {
                vec![(Some(repo.clone()), digest.clone()), (None, digest.clone())]
            }
            _ => Vec::new(),
        }
    }

    async fn find_blob(
        &self,
        key: &Key,
        range: Option<&Range<u64>>,
    ) -> Result<Option<kiln_common::registry::BlobStream>, StorageError> {
        let (offset, len) = match range {
            Some(r) => (r.start, Some(r.end - r.start)),
            None => (0, None),
        };
        for (repo, d) in self.blob_places(key) {
            let r = self.reference(repo.as_deref(), None, Some(&d));
            let found = self
                .registry
                .blob_stream(&r, &d, offset, len)
                .await
                .map_err(Self::err("get", key))?;
            if found.is_some() {
                return Ok(found);
            }
        }
        Ok(None)
    }

    fn unsupported(&self, op: &'static str) -> StorageError {
        StorageError::Unsupported {
            op,
            backend: self.describe(),
        }
    }
}

fn media_type_of(bytes: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
    match v.get("mediaType").and_then(|m| m.as_str()) {
        Some(m) => m.to_string(),
        None if v.get("manifests").is_some() => kiln_common::image::OCI_INDEX.to_string(),
        None => kiln_common::image::OCI_MANIFEST.to_string(),
    }
}

#[async_trait::async_trait]
impl Backend for RegistryBackend {
    fn describe(&self) -> String {
        format!("registry://{}/{}", self.host, self.base)
    }

    fn has_times(&self) -> bool {
        false
    }

    fn blob_read_key(&self, repo: &str, d: &Digest) -> Key {
        Key::repo_blob(repo, d)
    }

    async fn head(&self, key: &Key) -> Result<Option<Meta>, StorageError> {
        match key {
            Key::Blob(_) | Key::RepoBlob { .. } => {
                // A GET whose body is dropped unread: oci-client exposes no
                // blob size by HEAD.
                let s = self.find_blob(key, None).await?;
                Ok(s.map(|b| now_meta(key, b.len.unwrap_or(0))))
            }
            Key::Manifest { .. } | Key::Tag { .. } => {
                Ok(self.get_small(key).await?.map(|(b, m)| Meta {
                    size: b.len() as u64,
                    ..m
                }))
            }
            Key::Probe | Key::UploadPart { .. } | Key::Writer { .. } | Key::Referrer { .. } => {
                Ok(None)
            }
        }
    }

    async fn get_small(&self, key: &Key) -> Result<Option<(Bytes, Meta)>, StorageError> {
        match key {
            Key::Manifest { repo, digest } => {
                let r = self.reference(Some(repo), None, Some(digest));
                let got = self
                    .registry
                    .get_manifest(&r)
                    .await
                    .map_err(Self::err("get", key))?;
                Ok(got.map(|(bytes, _)| {
                    let obj = crate::manifest::encode_stored(&media_type_of(&bytes), &bytes);
                    let n = obj.len() as u64;
                    (obj, now_meta(key, n))
                }))
            }
            Key::Tag { repo, tag } => {
                let r = self.reference(Some(repo), Some(tag), None);
                let got = self
                    .registry
                    .head_manifest(&r)
                    .await
                    .map_err(Self::err("get", key))?;
                Ok(got.map(|d| (Bytes::from(d.to_string()), now_meta(key, 71))))
            }
            _ => Ok(None),
        }
    }

    async fn put_small(&self, key: &Key, bytes: Bytes) -> Result<(), StorageError> {
        match key {
            Key::Manifest { repo, digest } => {
                let blob = crate::manifest::parse_stored(key, digest, &bytes).map_err(|e| {
                    StorageError::Upstream {
                        op: "put",
                        path: key.to_string(),
                        source: Box::new(e),
                    }
                })?;
                let r = self.reference(Some(repo), None, Some(digest));
                // The upstream checks that a manifest's blobs are in its
                // repository: mount them from where blobs are kept.
                let from = self.reference(None, None, None);
                for b in crate::manifest::referenced_blobs(&blob).unwrap_or_default() {
                    let mounted = self
                        .registry
                        .mount_blob(&r, &from, b)
                        .await
                        .map_err(Self::err("mount", key))?;
                    if !mounted {
                        return Err(StorageError::Upstream {
                            op: "mount",
                            path: key.to_string(),
                            source: format!("the upstream declined to mount {b}").into(),
                        });
                    }
                }
                self.registry
                    .push_manifest(&r, blob.bytes.to_vec(), &blob.media_type)
                    .await
                    .map_err(Self::err("put", key))?;
                Ok(())
            }
            Key::Tag { repo, tag } => {
                let d: Digest = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|s| s.trim().parse().ok())
                    .ok_or_else(|| StorageError::Upstream {
                        op: "put",
                        path: key.to_string(),
                        source: "tag body is not a digest".into(),
                    })?;
                let by_digest = self.reference(Some(repo), None, Some(&d));
                let (body, _) = self
                    .registry
                    .get_manifest(&by_digest)
                    .await
                    .map_err(Self::err("put", key))?
                    .ok_or_else(|| StorageError::Upstream {
                        op: "put",
                        path: key.to_string(),
                        source: format!("manifest {d} is not upstream").into(),
                    })?;
                let mt = media_type_of(&body);
                let r = self.reference(Some(repo), Some(tag), None);
                self.registry
                    .push_manifest(&r, body, &mt)
                    .await
                    .map_err(Self::err("put", key))?;
                Ok(())
            }
            _ => Err(self.unsupported("put")),
        }
    }

    async fn get_stream(
        &self,
        key: &Key,
        range: Option<Range<u64>>,
    ) -> Result<Option<BoxStream<'static, Result<Bytes, StorageError>>>, StorageError> {
        let s = self.find_blob(key, range.as_ref()).await?;
        let path = key.to_string();
        Ok(s.map(|b| {
            b.stream
                .map_err(move |e| StorageError::Upstream {
                    op: "get",
                    path: path.clone(),
                    source: Box::new(e),
                })
                .boxed()
        }))
    }

    async fn put_blob_file(&self, d: &Digest, staged: &Path) -> Result<(), StorageError> {
        let key = Key::Blob(d.clone());
        let size = tokio::fs::metadata(staged)
            .await
            .map_err(|source| StorageError::Io {
                path: staged.to_path_buf(),
                source,
            })?
            .len();
        let r = self.reference(None, None, Some(d));
        self.registry
            .push_blob_file(&r, staged, d, size)
            .await
            .map_err(Self::err("put", &key))?;
        let _ = tokio::fs::remove_file(staged).await;
        Ok(())
    }

    async fn delete(&self, _key: &Key) -> Result<(), StorageError> {
        Err(self.unsupported("delete"))
    }

    async fn list(&self, sub: &Prefix) -> Result<Vec<Meta>, StorageError> {
        let Prefix::Tags(repo) = sub else {
            return Err(self.unsupported("listing"));
        };
        let r = self.reference(Some(repo), None, None);
        let tags = self
            .registry
            .list_tags(&r)
            .await
            .map_err(Self::err("list", &Key::tag(repo, "")))?;
        Ok(tags
            .into_iter()
            .map(|t| now_meta(&Key::tag(repo, &t), 0))
            .collect())
    }

    async fn probe(&self) -> Result<(), StorageError> {
        let r = self.reference(None, Some("kiln-probe"), None);
        self.registry
            .head_manifest(&r)
            .await
            .map_err(Self::err("probe", &Key::Probe))?;
        Ok(())
    }
}
