//! The closing summary a build prints (per platform in a multi-platform
//! build).

/// The closing summary of one build (one platform's, in a multi-platform
/// build).
pub(super) fn print_summary(result: &kiln_executor::BuildResult) {
    eprintln!("\nSummary, {} ({:.1}s):", result.platform, result.seconds);
    for s in &result.steps {
        let layer = match &s.layer_digest {
            Some(d) => format!("{} bytes {}", s.layer_size, &d.as_str()[..19]),
            None => "no layer".into(),
        };
        eprintln!(
            "  [{}] line {:>3}  {:>7.2}s  {:<28}  {}",
            s.stage,
            s.line,
            s.seconds,
            layer,
            truncate(&s.instruction, 60)
        );
    }
    if result.cache_hits + result.cache_misses + result.cache_errors > 0 {
        eprintln!(
            "  cache: {} hits, {} misses, {} errors; {} layer bytes pulled, {} pushed to the cache",
            result.cache_hits,
            result.cache_misses,
            result.cache_errors,
            result.bytes_pulled,
            result.bytes_pushed_cache
        );
    }
    eprintln!("  {}", kiln_executor::summary::one_line(result));
    eprintln!("  image {}", result.manifest_digest);
    for p in &result.pushed {
        eprintln!("  pushed {p}");
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}
