//! Uploads: blobs (skipped when present, mounted across repositories when
//! possible, streamed from disk otherwise) and manifests.

use super::pull::tokio_util_stream;
use super::{Registry, RegistryError, RemoteKind};
use crate::digest::Digest;
use oci_client::{Reference, RegistryOperation};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

impl Registry {
    /// Pushes a small blob held in memory (configs); layers use [`Self::push_blob_file`].
    pub async fn push_blob_bytes(
        &self,
        r: &Reference,
        data: &[u8],
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(data);
        if self.blob_exists(r, &digest).await? {
            return Ok(digest);
        }
        let data = data.to_vec();
        let d = digest.clone();
        self.retry("uploading a blob", self.opts.push_retries, || {
            let data = data.clone();
            let d = d.clone();
            async move {
                self.client(r)?
                    .push_blob(r, data, d.as_str())
                    .await
                    .map_err(|e| RegistryError::remote_err(r, e))?;
                Ok(())
            }
        })
        .await?;
        Ok(digest)
    }

    /// Obtains push credentials (a bearer token with push scope, where the
    /// registry uses tokens) for `r`'s repository.
    pub(super) async fn auth_push(&self, r: &Reference) -> Result<(), RegistryError> {
        let key = (r.resolve_registry().to_string(), r.repository().to_string());
        let fresh = |logins: &HashMap<(String, String), Instant>| {
            logins
                .get(&key)
                .is_some_and(|at| at.elapsed() < super::PUSH_LOGIN_REUSE)
        };
        if fresh(&self.push_logins.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        let _turn = self.push_login_gate.lock().await;
        if fresh(&self.push_logins.lock().unwrap_or_else(|p| p.into_inner())) {
            return Ok(());
        }
        let auth = self.auth_for(r).await?;
        let client = self.client(r)?;
        client
            .auth(r, &auth, RegistryOperation::Push)
            .await
            .map_err(|e| RegistryError::remote_err(r, e))?;
        // oci-client keeps tokens per operation and checks blobs (HEAD)
        // with the pull one: without it, every check asks `/v2/` again.
        // Best effort: a push-only login checks blobs as before.
        let _ = client.auth(r, &auth, RegistryOperation::Pull).await;
        self.push_logins
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, Instant::now());
        Ok(())
    }

    /// Forgets every push authorization (after a 401); whether there was one.
    pub(super) fn forget_push_logins(&self) -> bool {
        let mut logins = self.push_logins.lock().unwrap_or_else(|p| p.into_inner());
        let had = !logins.is_empty();
        logins.clear();
        had
    }

    pub async fn blob_exists(&self, r: &Reference, digest: &Digest) -> Result<bool, RegistryError> {
        self.retry("checking for a blob", self.opts.push_retries, || async {
            self.auth_push(r).await?;
            self.client(r)?
                .blob_exists(r, digest.as_str())
                .await
                .map_err(|e| RegistryError::remote_err(r, e))
        })
        .await
    }

    /// Cross-repository mount; `Ok(false)` when the registry declined.
    pub async fn mount_blob(
        &self,
        r: &Reference,
        from: &Reference,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        if r.resolve_registry() != from.resolve_registry() {
            return Ok(false);
        }
        // A refusal means "upload it instead"; a broken connection is retried.
        self.retry("mounting a blob", self.opts.push_retries, || async {
            self.auth_push(r).await?;
            match self.client(r)?.mount_blob(r, from, digest.as_str()).await {
                Ok(()) => Ok(true),
                Err(e) => {
                    let e = RegistryError::remote_err(r, e);
                    if e.is_transient() {
                        Err(e)
                    } else {
                        Ok(false)
                    }
                }
            }
        })
        .await
    }

    /// Streams a file as a blob: one monolithic PUT of known size (see
    /// [`client_config`]).
    pub async fn push_blob_file(
        &self,
        r: &Reference,
        path: &Path,
        digest: &Digest,
        size: u64,
    ) -> Result<(), RegistryError> {
        self.retry("uploading a layer", self.opts.push_retries, || async {
            self.auth_push(r).await?;
            // Never through a link: the file is one Kiln wrote or listed
            // itself, and a link there was put by someone else.
            let file = tokio::fs::OpenOptions::new()
                .read(true)
                .custom_flags(nix::libc::O_NOFOLLOW)
                .open(path)
                .await
                .map_err(|source| RegistryError::Io {
                    path: path.to_path_buf(),
                    source,
                })?;
            let stream = tokio_util_stream(file);
            self.client(r)?
                .push_blob_stream(r, stream, digest.as_str(), Some(size))
                .await
                .map_err(|e| RegistryError::remote_err(r, e))?;
            Ok(())
        })
        .await
    }

    pub async fn push_manifest(
        &self,
        r: &Reference,
        body: Vec<u8>,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let digest = Digest::sha256_of(&body);
        let body = bytes::Bytes::from(body);
        self.retry("pushing the manifest", self.opts.push_retries, || async {
            self.auth_push(r).await?;
            let ct = media_type.parse().map_err(|_| {
                RegistryError::remote(r, RemoteKind::Other, format!("bad media type {media_type}"))
            })?;
            self.client(r)?
                .push_manifest_raw(r, body.clone(), ct)
                .await
                .map_err(|e| RegistryError::remote_err(r, e))?;
            Ok(())
        })
        .await?;
        Ok(digest)
    }
}
