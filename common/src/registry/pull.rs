//! Blobs from a registry: into a file (verified while streamed, resumed by
//! Range from a `.partial` file held under a flock, renamed when complete)
//! or as a stream.

use super::{Registry, RegistryError, RemoteKind};
use crate::digest::Digest;
use crate::image::Descriptor;
use futures_util::StreamExt;
use oci_client::Reference;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How far a blob being fetched has got, for a reader that follows the
/// file as it grows (extraction overlapping the download). Bytes are
/// untrusted until `done` is `Some(true)`: the whole blob matched its
/// digest.
#[derive(Debug, Clone, Default)]
pub struct Landed {
    /// The file the bytes land in; it keeps its contents when renamed into
    /// place, so an open handle stays valid.
    pub path: Option<PathBuf>,
    /// Bytes written and flushed, readable through another handle. It can
    /// fall back to 0 when a registry ignores a range and the transfer
    /// restarts; the bytes that come again are the same blob's.
    pub flushed: u64,
    /// `Some(true)`: complete and verified; `Some(false)`: the fetch failed.
    pub done: Option<bool>,
}

/// Where a fetch publishes its [`Landed`] state.
pub type LandedTx = tokio::sync::watch::Sender<Landed>;

/// Flushed bytes are published in steps of this size (a reader waits for
/// them; smaller steps mean more write calls).
const PUBLISH_STEP: u64 = 256 << 10;

impl Registry {
    /// Streams a blob into `dest`, verifying its digest; `dest` appears only
    /// complete (temp file in the same directory, fsync, rename).
    pub async fn fetch_blob(
        &self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
    ) -> Result<u64, RegistryError> {
        self.fetch_blob_progress(r, desc, dest, None, None).await
    }

    /// Fetches a blob into `dest`, verified, adding the bytes received to
    /// `progress` as they arrive (for a progress display). A transfer that breaks part-way
    /// is resumed from the bytes already received (a Range request), not
    /// restarted, within this call and after a crash: bytes land in
    /// `.partial-<hex>` beside `dest`, held under an exclusive `flock`, and a
    /// later call picks up where it stopped (a concurrent one, finding it
    /// locked, downloads privately instead). A registry that ignores the
    /// range sends the whole blob and the partial bytes are discarded. A
    /// whole-blob stream is verified by oci-client as it arrives (one hash
    /// pass); a resumed file is hashed once complete. `follow`, when given,
    /// is told where the bytes land and how far they have got.
    pub async fn fetch_blob_progress(
        &self,
        r: &Reference,
        desc: &Descriptor,
        dest: &Path,
        progress: Option<&std::sync::atomic::AtomicU64>,
        follow: Option<&LandedTx>,
    ) -> Result<u64, RegistryError> {
        let res = async {
            use std::io::Seek;
            let io = |source| RegistryError::Io {
                path: dest.to_path_buf(),
                source,
            };
            let dir = dest.parent().unwrap_or(Path::new("."));
            let partial_path = dir.join(format!(".partial-{}", desc.digest.hex()));
            let mut private = None;
            let (mut file, path, lock) = match open_partial(&partial_path) {
                Some((f, lock)) => (f, partial_path.clone(), Some(lock)),
                None => {
                    let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
                    let (f, p) = tmp.into_parts();
                    let path = p.to_path_buf();
                    private = Some(p);
                    (f, path, None)
                }
            };
            let start = file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
            if start > 0 {
                tracing::info!(
                    "resuming {} from an earlier run at byte {start}",
                    desc.digest
                );
            }
            if let Some(tx) = follow {
                tx.send_modify(|l| {
                    l.path = Some(path.clone());
                    l.flushed = start;
                });
            }
            let partial = tokio::sync::Mutex::new(PartialBlob {
                w: std::io::BufWriter::with_capacity(1 << 20, file),
                written: start,
                resumed: false,
                follow,
                published: start,
            });
            self.retry("pulling a layer", self.opts.layer_retries, || async {
                let mut p = partial.lock().await;
                self.fetch_more(r, desc, &mut p, dest, progress).await
            })
            .await?;
            let p = partial.into_inner();
            let file = p.w.into_inner().map_err(|e| io(e.into_error()))?;
            file.sync_all().map_err(io)?;
            if p.resumed {
                let (digest, _) = crate::digest::digest_file(&path).map_err(io)?;
                if let Err(source) = desc.digest.verify(&digest) {
                    let _ = std::fs::remove_file(&path);
                    return Err(RegistryError::Digest {
                        reference: r.whole(),
                        digest: desc.digest.clone(),
                        source,
                    });
                }
            }
            match private {
                Some(tmp) => tmp.persist(dest).map_err(|e| io(e.error))?,
                None => std::fs::rename(&path, dest).map_err(io)?,
            }
            drop(lock);
            Ok(p.written)
        }
        .await;
        if let Some(tx) = follow {
            tx.send_modify(|l| l.done = Some(res.is_ok()));
        }
        res
    }

    /// One attempt: appends what the registry sends from where `p` stands.
    async fn fetch_more(
        &self,
        r: &Reference,
        desc: &Descriptor,
        p: &mut PartialBlob<'_>,
        dest: &Path,
        progress: Option<&std::sync::atomic::AtomicU64>,
    ) -> Result<(), RegistryError> {
        use std::io::Seek;
        let io = |source| RegistryError::Io {
            path: dest.to_path_buf(),
            source,
        };
        let truncate = |p: &mut PartialBlob<'_>| -> Result<(), RegistryError> {
            p.w.flush().map_err(io)?;
            let f = p.w.get_mut();
            f.set_len(0).map_err(io)?;
            f.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
            p.written = 0;
            p.resumed = false;
            p.publish().map_err(io)
        };
        if desc.size > 0 && p.written >= desc.size {
            if p.written == desc.size {
                // Complete before a crash, not yet renamed: only verify.
                p.resumed = true;
                return Ok(());
            }
            truncate(p)?;
        }
        let offset = p.written;
        if offset > 0 {
            tracing::info!("resuming {} at byte {offset}", desc.digest);
        }
        let got = self
            .blob_stream(r, &desc.digest, offset, None)
            .await?
            .ok_or_else(|| {
                RegistryError::remote(r, RemoteKind::NotFound, format!("blob {}", desc.digest))
            })?;
        if offset > 0 && got.partial {
            p.resumed = true;
        } else if offset > 0 {
            // The registry ignored the range: start over.
            truncate(p)?;
        }
        let mut stream = got.stream;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            p.w.write_all(&chunk).map_err(io)?;
            p.written += chunk.len() as u64;
            if let Some(pr) = progress {
                pr.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
            if p.follow.is_some() && p.written - p.published >= PUBLISH_STEP {
                p.publish().map_err(io)?;
            }
        }
        p.publish().map_err(io)
    }

    /// A blob's bytes as a stream, from `offset` and for `length` bytes when
    /// given (a resumed or ranged read; such partial reads are not verified
    /// here, the caller hashes what it assembles). `Ok(None)` when absent.
    /// Also returns the length the registry announced.
    pub async fn blob_stream(
        &self,
        r: &Reference,
        digest: &Digest,
        offset: u64,
        length: Option<u64>,
    ) -> Result<Option<BlobStream>, RegistryError> {
        use oci_client::client::BlobResponse;
        let mut partial = false;
        let auth = self.auth_for(r).await?;
        self.client(r)?
            .store_auth_if_needed(r.resolve_registry(), &auth)
            .await;
        let res = if offset == 0 && length.is_none() {
            self.client(r)?.pull_blob_stream(r, digest.as_str()).await
        } else {
            self.client(r)?
                .pull_blob_stream_partial(r, digest.as_str(), offset, length)
                .await
                .map(|b| match b {
                    BlobResponse::Full(s) => s,
                    BlobResponse::Partial(s) => {
                        partial = true;
                        s
                    }
                })
        };
        match res {
            Ok(s) => {
                let reference = r.clone();
                let len = s.content_length;
                let stream = s
                    .stream
                    .map(move |c| c.map_err(|e| RegistryError::remote_err(&reference, e)))
                    .boxed();
                Ok(Some(BlobStream {
                    len,
                    partial,
                    stream,
                }))
            }
            Err(e) if RemoteKind::of(&e) == RemoteKind::NotFound => Ok(None),
            Err(e) => Err(RegistryError::remote_err(r, e)),
        }
    }
}

/// Opens (or creates) a partial download and takes its lock; `None` when
/// another process holds it or it cannot be opened.
fn open_partial(path: &Path) -> Option<(std::fs::File, nix::fcntl::Flock<std::fs::File>)> {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .ok()?;
    // The lock is on the open file description, shared with the clone.
    let lock = nix::fcntl::Flock::lock(
        f.try_clone().ok()?,
        nix::fcntl::FlockArg::LockExclusiveNonblock,
    )
    .ok()?;
    Some((f, lock))
}

/// A blob being fetched into a file across attempts.
struct PartialBlob<'a> {
    w: std::io::BufWriter<std::fs::File>,
    written: u64,
    /// Some bytes came from a ranged (unverified) response.
    resumed: bool,
    follow: Option<&'a LandedTx>,
    /// What `follow` was last told.
    published: u64,
}

impl PartialBlob<'_> {
    /// Flushes and tells a follower how far the file has got.
    fn publish(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.follow {
            self.w.flush()?;
            self.published = self.written;
            let n = self.written;
            tx.send_modify(|l| l.flushed = n);
        }
        Ok(())
    }
}

/// A blob being read.
pub struct BlobStream {
    /// The length the registry announced.
    pub len: Option<u64>,
    /// Whether the registry honoured a range (else this is the whole blob).
    pub partial: bool,
    pub stream: futures_util::stream::BoxStream<'static, Result<bytes::Bytes, RegistryError>>,
}

/// Streams a file in 1 MiB chunks without reading it whole.
pub(super) fn tokio_util_stream(
    file: tokio::fs::File,
) -> impl futures_util::Stream<Item = Result<bytes::Bytes, oci_client::errors::OciDistributionError>>
       + Send
       + 'static {
    use tokio::io::AsyncReadExt;
    futures_util::stream::unfold(Some(file), |state| async move {
        let mut file = state?;
        let mut buf = vec![0u8; 1 << 20];
        match file.read(&mut buf).await {
            Ok(0) => None,
            Ok(n) => {
                buf.truncate(n);
                Some((Ok(bytes::Bytes::from(buf)), Some(file)))
            }
            Err(e) => Some((
                Err(oci_client::errors::OciDistributionError::IoError(e)),
                None,
            )),
        }
    })
}
