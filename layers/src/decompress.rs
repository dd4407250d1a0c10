//! Compressed streams opened by their magic bytes: one reader for image
//! layers and for ADD's local archives, whatever they are compressed with.

use std::io::{self, BufRead, BufReader, Read};

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
