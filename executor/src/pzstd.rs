//! zstd layers as a sequence of independent frames, one per 4 MiB block,
//! compressed on worker threads (as `pzstd` does). A zstd stream may hold
//! any number of frames (RFC 8878 §3.1); every decoder — zstd, Go's
//! klauspost/compress in containerd and skopeo — reads them one after the
//! other.
//!
//! Why not libzstd's own multithreaded mode: on incompressible bytes it
//! still runs its match finder over every byte and copies each block in and
//! out of its job buffers, 0.3 s per GiB on top of the two SHA-256 passes a
//! layer needs. Here a block whose byte distribution is that of random data
//! ([`crate::codec::spread`]) becomes a frame of raw blocks, written
//! by hand (a 9-byte header and 3 bytes per 128 KiB), and every other block
//! goes through libzstd at the chosen level; if that does not make it
//! smaller, the raw frame is written instead. Output depends only on the
//! input and the level: the same bytes on every machine.

use crate::block_pool::OrderedPool;
use crate::codec::Spread;
use std::io::{self, Write};

/// Input bytes per frame: big enough that independent frames cost nothing
/// measurable in ratio (level 3's window is 2 MiB), small enough that the
/// blocks in flight stay a few tens of MiB.
const BLOCK: usize = 4 << 20;
/// A raw block's largest size (the format's Block_Maximum_Size).
const RAW_BLOCK: usize = 128 << 10;
/// How much of a block the distribution test reads.
const SAMPLE: usize = 8 << 10;
const MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// One block's frame: libzstd's bytes, or the block itself to be framed
/// as raw blocks (no copy: the sink writes the headers around it).
enum Frame {
    Compressed(Vec<u8>),
    Raw(Vec<u8>),
}

pub struct ParallelZstd<W: Write> {
    inner: Option<W>,
    block: Vec<u8>,
    /// Whether any frame was written: an empty layer still needs one.
    wrote: bool,
    pool: OrderedPool<Vec<u8>, io::Result<Frame>>,
}

impl<W: Write> ParallelZstd<W> {
    pub fn new(inner: W, level: i32) -> ParallelZstd<W> {
        let pool = OrderedPool::new(
            2,
            || None::<zstd::bulk::Compressor<'static>>,
            move |cctx, block: Vec<u8>| encode(cctx, level, block),
        );
        ParallelZstd {
            inner: Some(inner),
            block: Vec::with_capacity(BLOCK),
            wrote: false,
            pool,
        }
    }

    fn submit(&mut self) -> io::Result<()> {
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(BLOCK));
        self.wrote = true;
        let inner = &mut self.inner;
        self.pool.submit(block, &mut |f| put(inner, f))
    }

    pub fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() || !self.wrote {
            self.submit()?;
        }
        let inner = &mut self.inner;
        self.pool.drain(&mut |f| put(inner, f))?;
        self.inner
            .take()
            .ok_or_else(|| io::Error::other("zstd stream already finished"))
    }
}

/// One block to one frame, on a worker.
fn encode(
    cctx: &mut Option<zstd::bulk::Compressor<'static>>,
    level: i32,
    block: Vec<u8>,
) -> io::Result<Frame> {
    let sample = &block[..block.len().min(SAMPLE)];
    if block.len() >= SAMPLE && crate::codec::spread(sample) == Spread::Random {
        return Ok(Frame::Raw(block));
    }
    let c = match cctx {
        Some(c) => c,
        empty => {
            let mut c = zstd::bulk::Compressor::new(level)?;
            // The frame records its size, so decoders can size their buffers.
            c.include_contentsize(true)?;
            empty.insert(c)
        }
    };
    let out = c.compress(&block)?;
    if out.len() >= raw_frame_len(block.len()) {
        return Ok(Frame::Raw(block));
    }
    Ok(Frame::Compressed(out))
}

fn raw_frame_len(n: usize) -> usize {
    9 + 3 * n.div_ceil(RAW_BLOCK).max(1) + n
}

/// Writes one frame, in order.
fn put<W: Write>(inner: &mut Option<W>, frame: io::Result<Frame>) -> io::Result<()> {
    let w = inner
        .as_mut()
        .ok_or_else(|| io::Error::other("zstd stream already finished"))?;
    match frame? {
        Frame::Compressed(bytes) => w.write_all(&bytes),
        Frame::Raw(block) => write_raw_frame(w, &block),
    }
}

/// A frame of raw blocks: magic; a header descriptor saying "single
/// segment, 4-byte content size, no checksum, no dictionary" (0xA0); the
/// size; then blocks of at most 128 KiB, each after a 3-byte header (last
/// flag, type 0 = raw, size).
fn write_raw_frame(w: &mut dyn Write, block: &[u8]) -> io::Result<()> {
    let size = u32::try_from(block.len()).map_err(|_| io::Error::other("zstd block too large"))?;
    let mut head = [0u8; 9];
    head[..4].copy_from_slice(&MAGIC);
    head[4] = 0xA0;
    head[5..].copy_from_slice(&size.to_le_bytes());
    w.write_all(&head)?;
    if block.is_empty() {
        // One empty last block.
        return w.write_all(&[1, 0, 0]);
    }
    let n = block.len().div_ceil(RAW_BLOCK);
    for (i, part) in block.chunks(RAW_BLOCK).enumerate() {
        let last = u32::from(i + 1 == n);
        let header = last | ((part.len() as u32) << 3);
        w.write_all(&header.to_le_bytes()[..3])?;
        w.write_all(part)?;
    }
    Ok(())
}

impl<W: Write> Write for ParallelZstd<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut rest = buf;
        while !rest.is_empty() {
            let take = (BLOCK - self.block.len()).min(rest.len());
            self.block.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.block.len() == BLOCK {
                self.submit()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<W: Write> crate::codec::FinishWrite<W> for ParallelZstd<W> {
    fn finish_box(self: Box<Self>) -> io::Result<W> {
        (*self).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn encode_all(data: &[u8], write_size: usize) -> Vec<u8> {
        let mut e = ParallelZstd::new(Vec::new(), 3);
        for c in data.chunks(write_size.max(1)) {
            e.write_all(c).unwrap();
        }
        e.finish().unwrap()
    }

    fn decode(z: &[u8]) -> Vec<u8> {
        let mut back = Vec::new();
        zstd::stream::read::Decoder::new(z)
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        back
    }

    /// Mixed data (text, random, short and empty inputs) round-trips through
    /// libzstd's decoder; random blocks are stored raw, text compressed;
    /// the bytes do not depend on how the input was written.
    #[test]
    fn frames_round_trip_and_random_blocks_are_raw() {
        let mut data = Vec::new();
        for i in 0..(BLOCK * 2 / 40) {
            data.extend_from_slice(format!("line {i:>12} of ordinary text\n").as_bytes());
        }
        let text_len = data.len();
        data.extend_from_slice(&kiln_testkit::noise(5, BLOCK * 2 + 12345));
        let z = encode_all(&data, 77_777);
        assert!(decode(&z) == data);
        assert_eq!(
            z,
            encode_all(&data, BLOCK + 1),
            "output depends on write sizes"
        );
        // The random part costs its size plus headers; the text shrinks.
        let random = data.len() - text_len;
        assert!(z.len() < random + text_len / 4, "{} bytes", z.len());
        assert!(z.len() > random, "random bytes cannot shrink");
        for small in [&b""[..], b"x", &data[..SAMPLE - 1]] {
            assert_eq!(decode(&encode_all(small, 100)), small);
        }
    }

    /// The hand-written raw frame is what the zstd CLI accepts (`zstd -t`),
    /// for sizes around the 128 KiB block limit.
    #[test]
    fn raw_frames_pass_the_zstd_cli() {
        for n in [
            0usize,
            1,
            RAW_BLOCK - 1,
            RAW_BLOCK,
            RAW_BLOCK + 1,
            3 * RAW_BLOCK,
        ] {
            let block = kiln_testkit::noise(n as u64, n);
            let mut z = Vec::new();
            write_raw_frame(&mut z, &block).unwrap();
            assert_eq!(z.len(), raw_frame_len(n));
            assert!(decode(&z) == block);
            let mut child = std::process::Command::new("zstd")
                .args(["-t", "-q", "-"])
                .stdin(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(&z).unwrap();
            assert!(child.wait().unwrap().success(), "zstd -t refused {n} bytes");
        }
    }
}
