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

use crate::block_pool::OrderedPool;
use crate::codec::Spread;
use crate::zlib::RawDeflate;
use flate2::Crc;
use std::io::{self, Write};

/// Input bytes per block.
const BLOCK: usize = 128 << 10;
/// Deflate's window: what a block may refer back to.
const DICT: usize = 32 << 10;
/// How much of a block the incompressibility trial looks at.
const TRIAL: usize = 8 << 10;

/// A deflated block and the CRC of its input, or why it failed.
type Deflated = io::Result<(Vec<u8>, Crc)>;

struct Job {
    dict: Vec<u8>,
    data: Vec<u8>,
    last: bool,
}

/// A gzip encoder that deflates blocks on worker threads.
pub struct ParallelGzip<W: Write> {
    out: Out<W>,
    block: Vec<u8>,
    /// The last `DICT` bytes handed out, the next block's dictionary.
    tail: Vec<u8>,
    pool: OrderedPool<Job, Deflated>,
}

/// Where deflated blocks go, in order: the header first, CRCs combined.
struct Out<W> {
    inner: Option<W>,
    crc: Crc,
    header_written: bool,
}

impl<W: Write> Out<W> {
    fn inner(&mut self) -> io::Result<&mut W> {
        self.inner
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip stream already finished"))
    }

    fn put(&mut self, block: Deflated) -> io::Result<()> {
        if !self.header_written {
            // Magic, deflate, no flags, mtime 0, no extra flags, OS unknown:
            // the same bytes whatever the machine.
            let h = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255];
            self.inner()?.write_all(&h)?;
            self.header_written = true;
        }
        let (bytes, crc) = block?;
        self.crc.combine(&crc);
        self.inner()?.write_all(&bytes)
    }
}

impl<W: Write> ParallelGzip<W> {
    pub fn new(inner: W, level: u32) -> ParallelGzip<W> {
        // Each worker's zlib streams are made once and reset per block;
        // each block's CRC is computed on its worker and combined in order.
        let pool = OrderedPool::new(8, Streams::default, move |streams, job: Job| {
            deflate_block(&job, level, streams).map(|d| {
                let mut crc = Crc::new();
                crc.update(&job.data);
                (d, crc)
            })
        });
        ParallelGzip {
            out: Out {
                inner: Some(inner),
                crc: Crc::new(),
                header_written: false,
            },
            block: Vec::with_capacity(BLOCK),
            tail: Vec::new(),
            pool,
        }
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        let data = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        let dict = std::mem::take(&mut self.tail);
        let keep = data.len().min(DICT);
        let mut tail = dict[dict.len().saturating_sub(DICT - keep)..].to_vec();
        tail.extend_from_slice(&data[data.len() - keep..]);
        self.tail = tail;
        let out = &mut self.out;
        self.pool
            .submit(Job { dict, data, last }, &mut |b| out.put(b))
    }

    /// Ends the stream (last block, CRC, size) and returns the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        let out = &mut self.out;
        self.pool.drain(&mut |b| out.put(b))?;
        let (crc, len) = (self.out.crc.sum(), self.out.crc.amount());
        let w = self.out.inner()?;
        w.write_all(&crc.to_le_bytes())?;
        w.write_all(&len.to_le_bytes())?;
        self.out
            .inner
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
/// - their byte distribution ([`crate::codec::spread`]): random
///   bytes have nothing to gain, redundant ones shrink by Huffman coding
///   alone;
/// - in between, a level-1 deflate of the sample with the same zlib as the
///   blocks (a weaker trial would store blocks deflate would shrink).
fn incompressible(data: &[u8], trial: &mut RawDeflate) -> io::Result<bool> {
    if data.len() < TRIAL {
        return Ok(false);
    }
    let sample = &data[..TRIAL];
    match crate::codec::spread(sample) {
        Spread::Random => return Ok(true),
        Spread::Redundant => return Ok(false),
        Spread::Unsure => {}
    }
    trial.reset(&[])?;
    let mut out = Vec::with_capacity(TRIAL + 1024);
    trial.deflate(sample, &mut out, true)?;
    Ok(out.len() >= TRIAL * 97 / 100)
}

impl<W: Write> crate::codec::FinishWrite<W> for ParallelGzip<W> {
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
