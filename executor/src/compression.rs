//! Layer compression: sniffed on read, chosen by flags on write.

use crate::codec::FinishWrite;
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
            Compression::Zstd => Box::new(crate::pzstd::ParallelZstd::new(w, level.unwrap_or(3))),
            Compression::None => Box::new(Plain(w)),
        })
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
