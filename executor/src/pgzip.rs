//! Gzip at the speed of the machine: the stream is cut into blocks that
//! are deflated in parallel, each primed with the 32 KiB before it (so the
//! ratio stays that of one stream) and ended with a sync flush (so the
//! pieces concatenate into one valid deflate stream), as pigz does. A block
//! whose trial shows it will not shrink — random bytes, media, archives —
//! is stored instead of searched: deflate's match search is what makes
//! incompressible data crawl at ~20 MB/s per core. Output depends only on
//! the input and the level, never on thread timing, so layers stay
//! reproducible. flate2 writes gzip; it has no parallel or store-if-no-gain
//! mode, hence this module. Blocks are deflated by zlib itself
//! ([`crate::zlib`]): zlib-rs, which Kiln reads with, compresses worse.

use crate::zlib::RawDeflate;
use flate2::Crc;
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::thread::JoinHandle;

/// Input bytes per block.
const BLOCK: usize = 128 << 10;
/// Deflate's window: what a block may refer back to.
const DICT: usize = 32 << 10;
/// How much of a block the incompressibility trial looks at.
const TRIAL: usize = 8 << 10;

/// A deflated block and the CRC of its input, or why it failed.
type Deflated = io::Result<(Vec<u8>, Crc)>;

struct Job {
    index: u64,
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

/// A gzip encoder that deflates blocks on worker threads.
pub struct ParallelGzip<W: Write> {
    inner: Option<W>,
    crc: Crc,
    block: Vec<u8>,
    /// The last `DICT` bytes handed out, the next block's dictionary.
    tail: Vec<u8>,
    next_index: u64,
    next_to_write: u64,
    done: BTreeMap<u64, Deflated>,
    in_flight: usize,
    max_in_flight: usize,
    jobs: Option<mpsc::Sender<Job>>,
    results: mpsc::Receiver<(u64, Deflated)>,
    workers: Vec<JoinHandle<()>>,
    header_written: bool,
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(inner: W, level: u32) -> ParallelGzip<W> {
        let threads = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, 8);
        let (job_tx, job_rx) = mpsc::channel::<Job>();
        let job_rx = std::sync::Arc::new(std::sync::Mutex::new(job_rx));
        let (res_tx, res_rx) = mpsc::channel();
        let workers = (0..threads)
            .map(|_| {
                let (rx, tx) = (job_rx.clone(), res_tx.clone());
                // The worker's zlib streams, made once, reset per block.
                let mut streams = Streams::default();
                std::thread::spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(r) => r.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    // Each block's CRC on its worker; they combine in order.
                    let out = deflate_block(&job, level, &mut streams).map(|d| {
                        let mut crc = Crc::new();
                        crc.update(&job.data);
                        (d, crc)
                    });
                    if tx.send((job.index, out)).is_err() {
                        return;
                    }
                })
            })
            .collect();
        ParallelGzip {
            inner: Some(inner),
            crc: Crc::new(),
            block: Vec::with_capacity(BLOCK),
            tail: Vec::new(),
            next_index: 0,
            next_to_write: 0,
            done: BTreeMap::new(),
            in_flight: 0,
            max_in_flight: threads * 8,
            jobs: Some(job_tx),
            results: res_rx,
            workers,
            header_written: false,
        }
    }

    fn inner(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // Magic, deflate, no flags, mtime 0, no extra flags, OS unknown:
            // the same bytes whatever the machine.
            let h = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
            self.inner()?.write_all(&h)?;
            self.header_written = true;
        }
        Ok(())
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let dict = std::mem::take(&mut self.tail);
        let keep = data.len().min(DICT);
        let mut tail = dict[dict.len().saturating_sub(DICT - keep)..].to_vec();
        tail.extend_from_slice(&data[data.len() - keep..]);
        self.tail = tail;
        let job = Job {
            index: self.next_index,
            dict,
            data,
            last,
        };
        self.next_index += 1;
        self.jobs
            .as_ref()
            .ok_or_else(|| io::Error::other("gzip workers stopped"))?
            .send(job)
            .map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.in_flight += 1;
        while self.in_flight >= self.max_in_flight {
            self.collect_one()?;
        }
        Ok(())
    }

    /// Waits for one finished block and writes whatever is now in order.
    fn collect_one(&mut self) -> io::Result<()> {
        let (i, out) = self
            .results
            .recv()
            .map_err(|_| io::Error::other("gzip workers stopped"))?;
        self.in_flight -= 1;
        self.done.insert(i, out);
        self.header()?;
        while let Some(out) = self.done.remove(&self.next_to_write) {
            let (bytes, crc) = out?;
            self.crc.combine(&crc);
            self.inner()?.write_all(&bytes)?;
            self.next_to_write += 1;
        }
        Ok(())
    }

    /// Ends the stream (last block, CRC, size) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        while self.in_flight > 0 {
            self.collect_one()?;
        }
        let (crc, len) = (self.crc.sum(), self.crc.amount());
        let w = self.inner()?;
        w.write_all(&crc.to_le_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        self.inner
            .take()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }
}

impl<W: Write> Write for ParallelGzip<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let room = BLOCK - self.block.len();
            let take = room.min(rest.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.block.len() == BLOCK {
                self.submit(false)?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for ParallelGzip<W> {
    fn drop(&mut self) {
        self.jobs.take();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A worker's zlib streams, each made when first needed.
#[derive(Default)]
struct Streams {
    /// Level 1, for the incompressibility trial.
    trial: Option<RawDeflate>,
    /// Level 0: stored blocks.
    stored: Option<RawDeflate>,
    /// The encoder's level.
    level: Option<RawDeflate>,
}

fn stream(slot: &mut Option<RawDeflate>, level: u32) -> io::Result<&mut RawDeflate> {
    match slot {
        Some(s) => Ok(s),
        empty => Ok(empty.insert(RawDeflate::new(level)?)),
    }
}

/// Deflates one block (raw deflate, primed with `dict`), ending with a
/// sync flush — or with the final block when `last`.
fn deflate_block(job: &Job, level: u32, streams: &mut Streams) -> io::Result<Vec<u8>> {
    let stored = level == 0 || incompressible(&job.data, stream(&mut streams.trial, 1)?)?;
    let s = if stored {
        stream(&mut streams.stored, 0)?
    } else {
        stream(&mut streams.level, level)?
    };
    // A stored block refers to nothing; priming it would be wasted work.
    s.reset(if stored { &[] } else { &job.dict })?;
    let mut out = Vec::with_capacity(job.data.len() / 2 + 1024);
    s.deflate(&job.data, &mut out, job.last)?;
    Ok(out)
}

/// Would deflate shrink this block at all? Decided on its first `TRIAL`
/// bytes, cheapest test first:
///
/// - their byte distribution: Σp² (collision probability, Rényi entropy of
///   order 2) at most 0.0042 (above 7.9 bits per byte: random, compressed,
///   encrypted) — nothing to gain; at least 0.0068 (below 7.2 bits:
///   text, code, binaries) — Huffman coding alone shrinks it. Integers
///   only, so the decision, and the output, is the same on every machine.
/// - in between, a level-1 deflate of the sample with the same zlib as the
///   blocks (a weaker trial would store blocks deflate would shrink).
fn incompressible(data: &[u8], trial: &mut RawDeflate) -> io::Result<bool> {
    if data.len() < TRIAL {
        return Ok(false);
    }
    let sample = &data[..TRIAL];
    let mut counts = [0u64; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let sum_sq: u64 = counts.iter().map(|c| c * c).sum();
    let n_sq = (TRIAL * TRIAL) as u64;
    if sum_sq * 10_000 <= n_sq * 42 {
        return Ok(true);
    }
    if sum_sq * 10_000 >= n_sq * 68 {
        return Ok(false);
    }
    trial.reset(&[])?;
    let mut out = Vec::with_capacity(TRIAL + 1024);
    trial.deflate(sample, &mut out, true)?;
    Ok(out.len() >= TRIAL * 97 / 100)
}

impl<W: Write> crate::compression::FinishWrite<W> for ParallelGzip<W> {
    fn finish_box(self: Box<Self>) -> io::Result<W> {
        (*self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = ParallelGzip::new(Vec::new(), level);
        // Uneven writes, across block boundaries.
        for chunk in data.chunks(77_777) {
            e.write_all(chunk).unwrap();
        }
        let gz = e.finish().unwrap();
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&gz[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        gz
    }

    /// Random bytes are stored; text and machine code are deflated (the
    /// trial once stored code blocks deflate shrinks by a third).
    #[test]
    fn the_trial_stores_only_what_deflate_cannot_shrink() {
        let mut trial = RawDeflate::new(1).unwrap();
        let random = kiln_testkit::noise(3, 64 << 10);
        assert!(incompressible(&random, &mut trial).unwrap());
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("line {i}\n").into_bytes())
            .collect();
        assert!(!incompressible(&text, &mut trial).unwrap());
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        // A stretch of this test binary's machine code, away from headers.
        let code = &exe[exe.len() / 3..exe.len() / 3 + (64 << 10)];
        assert!(!incompressible(code, &mut trial).unwrap());
    }

    #[test]
    fn one_valid_gzip_stream_whatever_the_data() {
        roundtrip(b"", 6);
        roundtrip(b"short", 6);
        let text: Vec<u8> = (0..600_000u32)
            .flat_map(|i| format!("line {i} of some text\n").into_bytes())
            .collect();
        let gz = roundtrip(&text, 6);
        // Priming each block keeps the ratio of one zlib stream at the same
        // level, what `gzip -6` writes (within 1%; the gzip frame aside).
        let mut one = Vec::new();
        RawDeflate::new(6)
            .unwrap()
            .deflate(&text, &mut one, true)
            .unwrap();
        assert!(
            gz.len() as f64 <= (one.len() + 18) as f64 * 1.01,
            "{} vs {}",
            gz.len(),
            one.len()
        );
        // Random bytes are stored, barely larger than themselves.
        let random = kiln_testkit::noise(7, 3 << 20);
        let gz = roundtrip(&random, 6);
        assert!(gz.len() < random.len() + random.len() / 100);
        // Mixed, and the same bytes always give the same stream.
        let mut mixed = text.clone();
        mixed.extend_from_slice(&random);
        assert_eq!(roundtrip(&mixed, 6), roundtrip(&mixed, 6));
    }
}
