//! Reading a blob while it is still being fetched, so a base layer is
//! extracted as it arrives instead of after it has landed: one pass over
//! the bytes, with the download and the extraction overlapping.
//!
//! The fetch ([`kiln_common::registry::Registry::fetch_blob_progress`])
//! publishes how many bytes it has flushed to its file; [`Follow`] reads
//! that file up to there and waits for more. The bytes are untrusted until
//! the fetch reports the whole blob verified, which is when [`Follow`]
//! returns end-of-file: a layer that fails its digest ends the reader with
//! an error, and the caller discards whatever was extracted from it.

use kiln_common::registry::Landed;
use kiln_common::Digest;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use tokio::sync::watch;

/// A blocking reader of a blob being fetched; use it off the runtime's
/// worker threads (in `spawn_blocking` or a thread of its own).
pub struct Follow {
    rx: watch::Receiver<Landed>,
    rt: tokio::runtime::Handle,
    file: Option<std::fs::File>,
    pos: u64,
    digest: Digest,
}

impl Follow {
    /// Follows the fetch of `digest` that reports to `rx`; `rt` is the
    /// runtime it runs on.
    pub fn new(rx: watch::Receiver<Landed>, rt: tokio::runtime::Handle, digest: Digest) -> Follow {
        Follow {
            rx,
            rt,
            file: None,
            pos: 0,
            digest,
        }
    }

    fn ended(&self, why: &str) -> io::Error {
        io::Error::other(format!("fetching {} {why}", self.digest))
    }
}

impl Read for Follow {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let (path, flushed, done) = {
                let l = self.rx.borrow_and_update();
                (l.path.clone(), l.flushed, l.done)
            };
            if done == Some(false) {
                return Err(self.ended("failed"));
            }
            if self.file.is_none() {
                if let Some(p) = path {
                    // A download renamed into place between the two looks:
                    // the final path is published next.
                    match std::fs::File::open(p) {
                        Ok(f) => self.file = Some(f),
                        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            if let Some(f) = &self.file {
                if flushed > self.pos && !buf.is_empty() {
                    let want = (flushed - self.pos).min(buf.len() as u64) as usize;
                    let n = f.read_at(&mut buf[..want], self.pos)?;
                    if n > 0 {
                        self.pos += n as u64;
                        return Ok(n);
                    }
                }
                if done == Some(true) && self.pos >= flushed {
                    return Ok(0);
                }
            }
            if self.rt.block_on(self.rx.changed()).is_err() {
                return Err(self.ended("stopped before it completed"));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A reader that follows a file written in steps sees every byte, in
    /// order, and ends only when the fetch says it is verified; a failed
    /// fetch is an error, not an early end.
    #[test]
    fn follows_a_growing_file_to_its_verified_end() {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("blob");
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let (tx, rx) = watch::channel(Landed::default());
        let d = Digest::sha256_of(&data);
        let reader = std::thread::spawn({
            let h = rt.handle().clone();
            move || {
                let mut out = Vec::new();
                Follow::new(rx, h, d).read_to_end(&mut out).map(|_| out)
            }
        });
        let mut f = std::fs::File::create(&path).unwrap();
        tx.send_modify(|l| l.path = Some(path.clone()));
        for (i, chunk) in data.chunks(70_000).enumerate() {
            f.write_all(chunk).unwrap();
            f.flush().unwrap();
            let n = (i * 70_000 + chunk.len()) as u64;
            tx.send_modify(|l| l.flushed = n);
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        tx.send_modify(|l| l.done = Some(true));
        assert_eq!(reader.join().unwrap().unwrap(), data);

        let (tx, rx) = watch::channel(Landed::default());
        let reader = std::thread::spawn({
            let h = rt.handle().clone();
            move || Follow::new(rx, h, Digest::sha256_of(b"")).read_to_end(&mut Vec::new())
        });
        tx.send_modify(|l| {
            l.path = Some(path.clone());
            l.flushed = 10;
        });
        tx.send_modify(|l| l.done = Some(false));
        assert!(reader.join().unwrap().is_err());

        // The fetch dropped (cancelled) without an answer: an error too.
        let (tx, rx) = watch::channel(Landed::default());
        let reader = std::thread::spawn({
            let h = rt.handle().clone();
            move || Follow::new(rx, h, Digest::sha256_of(b"")).read_to_end(&mut Vec::new())
        });
        drop(tx);
        assert!(reader.join().unwrap().is_err());
    }
}
