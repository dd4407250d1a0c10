//! Raw deflate through zlib itself (libz-sys, the bundled stock zlib built
//! statically), for the blocks [`crate::pgzip`] compresses.
//!
//! Why not flate2's backend: Kiln reads layers through flate2 on zlib-rs,
//! the fastest inflate available, but zlib-rs's deflate makes compressible
//! layers 2–20% larger than `gzip -6` at the same level (measured: 2.4% on
//! a tree of binaries and Perl modules, 20% on repetitive text), and layer
//! size is what every later pull pays for. flate2 takes one backend per
//! build, so the writing side calls zlib directly here. The bundled zlib
//! is one fixed version, so the same input gives the same bytes (and layer
//! digest) on every machine.

use libz_sys as z;
use std::io;
use std::os::raw::c_int;

/// zlib's allocation hooks, as its default allocator does (`calloc`,
/// `free`); libz-sys declares the hooks non-nullable, so they are given.
extern "C" fn zalloc(_opaque: z::voidpf, items: z::uInt, size: z::uInt) -> z::voidpf {
    // SAFETY: plain calloc; zlib checks for NULL.
    unsafe { calloc(items as usize, size as usize) }
}

extern "C" fn zfree(_opaque: z::voidpf, address: z::voidpf) {
    // SAFETY: `address` came from `zalloc` (calloc).
    unsafe { free(address) }
}

unsafe extern "C" {
    fn calloc(n: usize, size: usize) -> z::voidpf;
    fn free(p: z::voidpf);
}

/// A raw-deflate stream (no zlib or gzip wrapper), reusable block after
/// block with [`reset`](Self::reset).
pub struct RawDeflate {
    // Boxed: zlib keeps a pointer to the stream in its state, so it must
    // not move.
    strm: Box<z::z_stream>,
}

// SAFETY: the stream is only touched through `&mut self`; zlib keeps no
// thread-local state.
unsafe impl Send for RawDeflate {}

fn check(what: &str, code: c_int) -> io::Result<c_int> {
    if code < 0 && code != z::Z_BUF_ERROR {
        Err(io::Error::other(format!("zlib {what} failed: code {code}")))
    } else {
        Ok(code)
    }
}

impl RawDeflate {
    /// `level` 0 (stored) to 9; 32 KiB window, default memory level and
    /// strategy, as `gzip -<level>`.
    pub fn new(level: u32) -> io::Result<RawDeflate> {
        let mut strm = Box::new(z::z_stream {
            next_in: std::ptr::null_mut(),
            avail_in: 0,
            total_in: 0,
            next_out: std::ptr::null_mut(),
            avail_out: 0,
            total_out: 0,
            msg: std::ptr::null_mut(),
            state: std::ptr::null_mut(),
            zalloc,
            zfree,
            opaque: std::ptr::null_mut(),
            data_type: 0,
            adler: 0,
            reserved: 0,
        });
        // SAFETY: `strm` is initialised as zlib requires (hooks set, no
        // input yet) and outlives the stream (freed in Drop).
        let code = unsafe {
            z::deflateInit2_(
                &mut *strm,
                level.min(9) as c_int,
                z::Z_DEFLATED,
                -15,
                8,
                z::Z_DEFAULT_STRATEGY,
                z::zlibVersion(),
                std::mem::size_of::<z::z_stream>() as c_int,
            )
        };
        check("deflateInit2", code)?;
        Ok(RawDeflate { strm })
    }

    /// Starts a new stream with the same settings, primed with `dict` (the
    /// bytes just before this block; empty for none).
    pub fn reset(&mut self, dict: &[u8]) -> io::Result<()> {
        // SAFETY: the stream was initialised in `new`.
        check("deflateReset", unsafe { z::deflateReset(&mut *self.strm) })?;
        if !dict.is_empty() {
            // SAFETY: zlib reads `dict.len()` bytes and copies them.
            let code = unsafe {
                z::deflateSetDictionary(&mut *self.strm, dict.as_ptr(), dict.len() as z::uInt)
            };
            check("deflateSetDictionary", code)?;
        }
        Ok(())
    }

    /// Deflates all of `input` into `out` (appended), ending with a sync
    /// flush, or with the final block when `finish`.
    pub fn deflate(&mut self, input: &[u8], out: &mut Vec<u8>, finish: bool) -> io::Result<()> {
        let flush = if finish { z::Z_FINISH } else { z::Z_SYNC_FLUSH };
        // zlib's own bound for one call, plus the flush marker.
        let bound = input.len() + input.len() / 1000 + 64;
        self.strm.next_in = input.as_ptr().cast_mut();
        self.strm.avail_in = input.len() as z::uInt;
        loop {
            if out.capacity() - out.len() < 256 {
                out.reserve(bound.max(64 << 10));
            }
            let spare = out.capacity() - out.len();
            let before = self.strm.total_out;
            // SAFETY: `next_out` points at `spare` writable bytes of `out`'s
            // allocation; `next_in` at `input`, alive for this call.
            let code = unsafe {
                self.strm.next_out = out.as_mut_ptr().add(out.len());
                self.strm.avail_out = spare as z::uInt;
                z::deflate(&mut *self.strm, flush)
            };
            let code = check("deflate", code)?;
            let wrote = (self.strm.total_out - before) as usize;
            // SAFETY: zlib initialised `wrote` bytes past the old length.
            unsafe { out.set_len(out.len() + wrote) };
            let done = if finish {
                code == z::Z_STREAM_END
            } else {
                self.strm.avail_in == 0 && self.strm.avail_out > 0
            };
            if done {
                break;
            }
        }
        self.strm.next_in = std::ptr::null_mut();
        self.strm.avail_in = 0;
        Ok(())
    }
}

impl Drop for RawDeflate {
    fn drop(&mut self) {
        // SAFETY: initialised in `new`, ended once.
        unsafe { z::deflateEnd(&mut *self.strm) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn blocks_primed_and_flushed_form_one_deflate_stream() {
        let text: Vec<u8> = (0..200_000u32)
            .flat_map(|i| format!("line {i} of file {}: text\n", i % 97).into_bytes())
            .collect();
        let mut d = RawDeflate::new(6).unwrap();
        let mut out = Vec::new();
        let mut prev: &[u8] = &[];
        let blocks: Vec<&[u8]> = text.chunks(100_000).collect();
        for (i, b) in blocks.iter().enumerate() {
            d.reset(&prev[prev.len().saturating_sub(32 << 10)..])
                .unwrap();
            d.deflate(b, &mut out, i + 1 == blocks.len()).unwrap();
            prev = b;
        }
        let mut back = Vec::new();
        flate2::read::DeflateDecoder::new(&out[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == text);
        // Stored (level 0) is barely larger than its input.
        let mut s = RawDeflate::new(0).unwrap();
        let mut stored = Vec::new();
        s.deflate(&text[..70_000], &mut stored, true).unwrap();
        assert!(stored.len() < 70_000 + 100, "{}", stored.len());
    }
}
