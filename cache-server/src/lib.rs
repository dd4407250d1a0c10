//! The shared layer cache server: an OCI registry over an object store,
//! with a memory tier for manifests and tags, a disk tier for blobs, entry
//! expiry refreshed on hit, online garbage collection, a batch lookup for
//! executors, and Prometheus metrics. See ARCHITECTURE.md for the data flow.

pub mod api;
pub mod auth;
pub mod gc;
pub mod metrics;
pub mod server;
pub mod storage;
pub mod store;
pub mod tiers;
pub mod tls;
pub mod uploads;
pub mod upstream;

/// A random hex id for upload sessions and temporary names.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    if getrandom::fill(&mut b).is_err() {
        // No entropy source: fall back to time and a counter, still unique.
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

/// Sizes as people write them: `512MiB`, `20GB`, `1048576`.
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
    Some((n * mult as f64) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes() {
        assert_eq!(super::parse_size("512MiB"), Some(512 << 20));
        assert_eq!(super::parse_size("2GB"), Some(2_000_000_000));
        assert_eq!(super::parse_size("1024"), Some(1024));
        assert_eq!(super::parse_size("1.5KiB"), Some(1536));
        assert_eq!(super::parse_size("lots"), None);
    }
}
