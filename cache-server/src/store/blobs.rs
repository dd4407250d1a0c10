//! Blobs: sizes (remembered briefly), reads through the disk tier or
//! straight from the backend, verified fills, commits and deletes.

use super::*;

/// Bytes per frame of a blob body: the mapping is handed out in slices so
/// the connection takes it with backpressure.
const CHUNK: usize = 1 << 20;

impl Store {
    /// The size of a stored blob, `None` when absent.
    pub async fn blob_size(&self, repo: &str, d: &Digest) -> Result<Option<u64>, StoreError> {
        let key = self.storage.blob_read_key(repo, d);
        if let Some(s) = self.known_blobs.get(&key).await {
            return Ok(Some(s));
        }
        let m = self.call("head", self.storage.head(&key)).await?;
        if let Some(m) = &m {
            self.known_blobs.insert(key, m.size).await;
        }
        Ok(m.map(|m| m.size))
    }

    /// Streams a blob (or a range of it) from the nearest tier that has it.
    pub async fn open_blob(
        &self,
        repo: &str,
        d: &Digest,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobBody>, StoreError> {
        if let Some(p) = self.storage.local_blob_path(d) {
            return match std::fs::File::open(&p) {
                Ok(f) => {
                    self.metrics.tier("store", true);
                    Ok(Some(self.file_body(f, range, "store").await?))
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.metrics.tier("store", false);
                    Ok(None)
                }
                Err(source) => Err(StorageError::Io { path: p, source }.into()),
            };
        }
        if let Some(disk) = &self.disk {
            if let Some(f) = disk.open_blob(d).await {
                self.metrics.tier("disk", true);
                return Ok(Some(self.file_body(f, range, "disk").await?));
            }
            self.metrics.tier("disk", false);
        }
        let Some(size) = self.blob_size(repo, d).await? else {
            self.metrics.tier("store", false);
            return Ok(None);
        };
        self.metrics.tier("store", true);
        if let Some(disk) = &self.disk {
            let fill = |tmp: std::path::PathBuf| self.fetch_verified(repo, d, tmp);
            match disk.get_or_fill(d, size, fill).await {
                Ok((f, coalesced)) => {
                    if coalesced {
                        self.metrics
                            .coalesced
                            .get_or_create(&TierLabel::disk())
                            .inc();
                    }
                    return Ok(Some(self.file_body(f, range, "disk").await?));
                }
                Err(e @ TierError::Fetch(_))
                    if self.blob_size_uncached(repo, d).await?.is_none() =>
                {
                    tracing::debug!(
                        "blob {d} vanished while filling the disk tier: {}",
                        kiln_common::report::Report(&e)
                    );
                    return Ok(None);
                }
                Err(e) => {
                    // Disk full, unwritable or too small: serve from the
                    // store directly rather than fail the client.
                    self.metrics
                        .tier_requests
                        .get_or_create(&crate::metrics::TierResultLabel {
                            tier: "disk".into(),
                            result: "error".into(),
                        })
                        .inc();
                    tracing::warn!(
                        "disk tier bypassed for {d}: {}",
                        kiln_common::report::Report(&e)
                    );
                }
            }
        }
        self.remote_body(repo, d, size, range).await
    }

    pub(super) async fn blob_size_uncached(
        &self,
        repo: &str,
        d: &Digest,
    ) -> Result<Option<u64>, StoreError> {
        self.known_blobs
            .invalidate(&self.storage.blob_read_key(repo, d))
            .await;
        self.blob_size(repo, d).await
    }

    /// Streams from the store, verifying a whole-blob read as it goes: a
    /// mismatch ends the body with an error instead of a clean finish.
    pub(super) async fn remote_body(
        &self,
        repo: &str,
        d: &Digest,
        size: u64,
        range: Option<Range<u64>>,
    ) -> Result<Option<BlobBody>, StoreError> {
        let key = self.storage.blob_read_key(repo, d);
        let Some(s) = self
            .call("get", self.storage.get_stream(&key, range.clone()))
            .await?
        else {
            return Ok(None);
        };
        let metrics = self.metrics.clone();
        let verify = range.is_none();
        let expected = d.clone();
        let mut hasher = Sha256::new();
        let stream = s
            .map(move |r| r.map_err(std::io::Error::other))
            .chain(futures_util::stream::once(async { Ok(Bytes::new()) }))
            .scan(false, move |done, r| {
                if *done {
                    return futures_util::future::ready(None);
                }
                let out = match r {
                    Ok(b) if b.is_empty() => {
                        *done = true;
                        if verify {
                            let actual =
                                Digest::from_sha256(std::mem::take(&mut hasher).finalize().into());
                            if actual != expected {
                                metrics.backend_error("verify");
                                return futures_util::future::ready(Some(Err(
                                    std::io::Error::other(format!(
                                        "blob {expected} in the store hashes to {actual}"
                                    )),
                                )));
                            }
                        }
                        Ok(b)
                    }
                    Ok(b) => {
                        if verify {
                            hasher.update(&b);
                        }
                        metrics.bytes("store", "out", b.len() as u64);
                        Ok(b)
                    }
                    Err(e) => {
                        *done = true;
                        Err(e)
                    }
                };
                futures_util::future::ready(Some(out))
            })
            .boxed();
        Ok(Some(BlobBody {
            size,
            range,
            stream,
        }))
    }

    /// Fills the disk tier: the store's bytes to `tmp`, hashed as they come.
    pub(super) async fn fetch_verified(
        &self,
        repo: &str,
        d: &Digest,
        tmp: std::path::PathBuf,
    ) -> Result<(), TierError> {
        let key = self.storage.blob_read_key(repo, d);
        let s = self
            .call("get", self.storage.get_stream(&key, None))
            .await
            .map_err(|e| TierError::Fetch(kiln_common::report::Report(&e).to_string()))?;
        let Some(mut s) = s else {
            return Err(TierError::Fetch(format!("blob {d} is gone from the store")));
        };
        let io = |source| TierError::Io {
            path: tmp.clone(),
            source,
        };
        let mut f = tokio::fs::File::create(&tmp).await.map_err(io)?;
        let mut h = Sha256::new();
        let mut n = 0u64;
        while let Some(chunk) = s.next().await {
            let chunk = chunk.map_err(|e| {
                self.metrics.backend_error("get");
                TierError::Fetch(kiln_common::report::Report(&e).to_string())
            })?;
            h.update(&chunk);
            n += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.flush().await.map_err(io)?;
        f.sync_all().await.map_err(io)?;
        let actual = Digest::from_sha256(h.finalize().into());
        if &actual != d {
            self.metrics.backend_error("verify");
            return Err(TierError::Fetch(format!(
                "blob {d} in the store hashes to {actual}"
            )));
        }
        self.metrics.bytes("store", "out", n);
        self.metrics.bytes("disk", "in", n);
        Ok(())
    }

    /// A stored blob's body, from a file of the local tier or the disk
    /// tier. The file is mapped, not read: the bytes go from the page cache
    /// to the socket in one copy, as docker-registry's `sendfile` sends
    /// them, instead of through a read buffer and a blocking-pool hop per
    /// chunk (a 256 MiB GET was 0.89× docker-registry's that way).
    pub(super) async fn file_body(
        &self,
        f: std::fs::File,
        range: Option<Range<u64>>,
        tier: &'static str,
    ) -> Result<BlobBody, StoreError> {
        let io = |source| StorageError::Io {
            path: "<blob>".into(),
            source,
        };
        let size = f.metadata().map_err(io)?.len();
        let (start, len) = match &range {
            Some(r) => (r.start, r.end.min(size).saturating_sub(r.start)),
            None => (0, size),
        };
        self.metrics.bytes(tier, "out", len);
        let stream = match len {
            0 => futures_util::stream::empty().boxed(),
            _ => {
                // SAFETY: a committed blob is never written again (content
                // addressed, renamed into place whole); GC unlinks it, which
                // leaves a mapping valid. So the mapped bytes cannot change
                // or vanish under the response.
                let map = unsafe {
                    memmap2::MmapOptions::new()
                        .offset(start)
                        .len(len as usize)
                        .map(&f)
                }
                .map_err(io)?;
                let _ = map.advise(memmap2::Advice::Sequential);
                let all = Bytes::from_owner(map);
                let chunks = (0..all.len())
                    .step_by(CHUNK)
                    .map(move |at| Ok(all.slice(at..(at + CHUNK).min(all.len()))));
                futures_util::stream::iter(chunks).boxed()
            }
        };
        Ok(BlobBody {
            size,
            range,
            stream,
        })
    }

    /// Commits a verified upload.
    pub async fn commit_blob(
        &self,
        d: &Digest,
        staged: &Path,
        size: u64,
    ) -> Result<(), StoreError> {
        self.call("put_blob", self.storage.put_blob_file(d, staged))
            .await?;
        self.metrics.bytes("store", "in", size);
        self.known_blobs.insert(Key::Blob(d.clone()), size).await;
        Ok(())
    }

    pub async fn delete_blob(&self, d: &Digest) -> Result<(), StoreError> {
        // Only global keys are deleted (fronted registries refuse deletes).
        self.known_blobs.invalidate(&Key::Blob(d.clone())).await;
        if let Some(disk) = &self.disk {
            disk.remove(d).await;
        }
        self.call("delete", self.storage.delete(&Key::Blob(d.clone())))
            .await?;
        self.known_blobs.invalidate(&Key::Blob(d.clone())).await;
        Ok(())
    }
}
