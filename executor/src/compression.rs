//! Layer compression: sniffed on read, chosen by flags on write.

use std::io::{self, BufRead, BufReader, Read, Write};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub enum Compression {
    #[default]
    Gzip,
    Zstd,
    None,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "gzip" => Ok(Compression::Gzip),
            "zstd" => Ok(Compression::Zstd),
            "none" | "uncompressed" => Ok(Compression::None),
            _ => Err(format!(
                "unknown compression {s:?}: expected gzip, zstd or none"
            )),
        }
    }
}

impl Compression {
    pub fn name(self) -> &'static str {
        match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::None => "none",
        }
    }

    /// Media type of a layer, in OCI or Docker flavour.
    pub fn media_type(self, docker: bool) -> &'static str {
        use kiln_common::image::*;
        match (self, docker) {
            (Compression::Gzip, false) => OCI_LAYER_GZIP,
            (Compression::Gzip, true) => DOCKER_LAYER_GZIP,
            (Compression::Zstd, _) => OCI_LAYER_ZSTD,
            (Compression::None, false) => OCI_LAYER_TAR,
            (Compression::None, true) => DOCKER_LAYER_TAR,
        }
    }

    /// Wraps a writer in an encoder. `level` None means the codec's default.
    pub fn encoder<'a, W: Write + 'a>(
        self,
        w: W,
        level: Option<i32>,
    ) -> io::Result<Box<dyn FinishWrite<W> + 'a>> {
        Ok(match self {
            Compression::Gzip => Box::new(crate::pgzip::ParallelGzip::new(
                w,
                level.unwrap_or(6).clamp(0, 9) as u32,
            )),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(w, level.unwrap_or(3))?;
                // zstd's own workers, one per core: the output does not
                // depend on how many there are (tested below), so layer
                // digests stay the same across machines.
                e.multithread(zstd_workers())?;
                Box::new(e)
            }
            Compression::None => Box::new(Plain(w)),
        })
    }
}

fn zstd_workers() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// An encoder that can be finished to get the inner writer back.
pub trait FinishWrite<W>: Write {
    fn finish_box(self: Box<Self>) -> io::Result<W>;
}

impl<'a, W: Write> FinishWrite<W> for zstd::stream::write::Encoder<'a, W> {
    fn finish_box(self: Box<Self>) -> io::Result<W> {
        self.finish()
    }
}

struct Plain<W>(W);

impl<W: Write> Write for Plain<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0.write(b)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

impl<W: Write> FinishWrite<W> for Plain<W> {
    fn finish_box(self: Box<Self>) -> io::Result<W> {
        Ok(self.0)
    }
}

/// Opens a possibly compressed stream, detecting the format by its magic
/// bytes: gzip and zstd (layers), and for ADD's archives also bzip2 and xz,
/// as Docker and BuildKit extract them.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<Box<dyn Read + 'a>> {
    let mut br = BufReader::with_capacity(1 << 20, r);
    let head = br.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Box::new(flate2::bufread::MultiGzDecoder::new(br))
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Box::new(zstd::stream::read::Decoder::with_buffer(br)?)
    } else if head.starts_with(b"BZh") {
        Box::new(bzip2::bufread::MultiBzDecoder::new(br))
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Box::new(liblzma::bufread::XzDecoder::new_multi_decoder(br))
    } else {
        Box::new(br)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn zstd_with(workers: u32, data: &[u8]) -> Vec<u8> {
        let mut e = zstd::stream::write::Encoder::new(Vec::new(), 3).unwrap();
        e.multithread(workers).unwrap();
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// Layer digests must not depend on the machine: multithreaded zstd
    /// gives the same bytes with 1 worker as with 4, over several jobs of
    /// mixed compressible and random data, and they decompress back.
    #[test]
    fn zstd_output_does_not_depend_on_the_worker_count() {
        let mut data = Vec::with_capacity(48 << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while data.len() < 48 << 20 {
            if (data.len() >> 20) % 3 == 0 {
                data.extend_from_slice(format!("line {} of text\n", data.len()).as_bytes());
            } else {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                data.extend_from_slice(&x.to_le_bytes());
            }
        }
        let one = zstd_with(1, &data);
        assert_eq!(one, zstd_with(4, &data));
        let mut back = Vec::new();
        decompress(&one[..])
            .unwrap()
            .read_to_end(&mut back)
            .unwrap();
        assert!(back == data);
    }
}
