//! What the block-parallel codecs ([`crate::pgzip`], [`crate::pzstd`])
//! share with the module that picks them ([`crate::compression`]): the
//! byte-distribution gate that tells random blocks from compressible ones,
//! and the writer that can be finished. A leaf, so the codecs and their
//! chooser read top-down.

use std::io::{self, Write};

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
