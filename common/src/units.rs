//! Sizes as people write them on command lines, one rule for every binary:
//! `K`/`KB`, `M`/`MB`, `G`/`GB`, `T`/`TB` are decimal (10³ⁿ), `Ki`/`KiB`,
//! `Mi`/`MiB`, `Gi`/`GiB`, `Ti`/`TiB` binary (2¹⁰ⁿ), case-insensitive; a bare
//! number is bytes; fractions are allowed (`1.5GiB`). So `--max-size 20G`
//! means the same budget to the warmer and to the cache server.

/// Parses a size; `None` for anything else (the caller names the flag).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" | "ki" => 1 << 10,
        "m" | "mb" => 1000 * 1000,
        "mib" | "mi" => 1 << 20,
        "g" | "gb" => 1000 * 1000 * 1000,
        "gib" | "gi" => 1 << 30,
        "t" | "tb" => 1000u64.pow(4),
        "tib" | "ti" => 1 << 40,
        _ => return None,
    };
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    Some((n * mult as f64) as u64)
}

/// A random hex id (upload sessions, temporary names) that stays unique
/// even without an entropy source.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        b[..8].copy_from_slice(&(t as u64).to_le_bytes());
        b[8..].copy_from_slice(
            &N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                .to_le_bytes(),
        );
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Some(512 << 20));
        assert_eq!(parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(parse_size("20G"), Some(20_000_000_000));
        assert_eq!(parse_size("20Gi"), Some(20 << 30));
        assert_eq!(parse_size("1024"), Some(1024));
        assert_eq!(parse_size("1.5KiB"), Some(1536));
        assert_eq!(parse_size("lots"), None);
        assert_eq!(parse_size("5 parsecs"), None);
        assert_ne!(random_id(), random_id());
    }
}
