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
            Compression::Zstd => Box::new(crate::pzstd::ParallelZstd::new(w, level.unwrap_or(3))),
            Compression::None => Box::new(Plain(w)),
        })
    }
}

/// What a sample's byte distribution says about compressing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spread {
    /// Above 7.9 bits per byte: random, compressed, encrypted.
    Random,
    /// Below 7.2 bits per byte: text, code, binaries; entropy coding alone
    /// shrinks it.
    Redundant,
    Unsure,
}

/// Σp² of the sample's bytes (the collision probability, Rényi entropy of
/// order 2), in integers only, so a decision made on it — and so the
/// output — is the same on every machine: at most 0.0042 is
/// [`Spread::Random`], at least 0.0068 [`Spread::Redundant`].
pub fn spread(sample: &[u8]) -> Spread {
    let mut counts = [0u64; 256];
    for &b in sample {
        counts[b as usize] += 1;
    }
    let sum_sq: u64 = counts.iter().map(|c| c * c).sum();
    let n = sample.len() as u64;
    if sum_sq * 10_000 <= n * n * 42 {
        Spread::Random
    } else if sum_sq * 10_000 >= n * n * 68 {
        Spread::Redundant
    } else {
        Spread::Unsure
    }
}

/// An encoder that can be finished to get the inner writer back.
pub trait FinishWrite<W>: Write {
    fn finish_box(self: Box<Self>) -> io::Result<W>;
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

    #[test]
    fn spread_tells_random_from_redundant() {
        assert_eq!(spread(&kiln_testkit::noise(1, 8192)), Spread::Random);
        let text: Vec<u8> = (0..400)
            .flat_map(|i| format!("line {i} of text\n").into_bytes())
            .collect();
        assert_eq!(spread(&text), Spread::Redundant);
        // Half random, half a single byte: neither clearly.
        let mut mixed = kiln_testkit::noise(2, 4096);
        mixed.extend_from_slice(&[b'a'; 200]);
        assert_eq!(spread(&mixed), Spread::Unsure);
    }
}
