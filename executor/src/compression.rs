//! Layer compression on write, chosen by flags (reading sniffs the format:
//! [`kiln_layers::decompress`]).

use crate::codec::FinishWrite;
use std::io::{self, Write};

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
