//! Kiln's layer compressor alone on one file, for a same-bytes comparison
//! with `gzip -6` (issue 17): prints `<seconds> <compressed bytes>`.
//!
//!   compress <gzip|zstd> <file>

use std::io::{Read, Write};

/// Counts what the compressor writes, without keeping it.
struct Count(u64);

impl Write for Count {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(codec), Some(path)) = (args.next(), args.next()) else {
        return Err("usage: compress <gzip|zstd> <file>".into());
    };
    let codec: kiln_executor::compression::Compression = codec.parse()?;
    let mut input = std::fs::File::open(&path)?;
    let start = std::time::Instant::now();
    let mut enc = codec.encoder(Count(0), None)?;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = input.read(&mut buf)?;
        if n == 0 {
            break;
        }
        enc.write_all(&buf[..n])?;
    }
    let out = enc.finish_box()?;
    println!("{:.3} {}", start.elapsed().as_secs_f64(), out.0);
    Ok(())
}
