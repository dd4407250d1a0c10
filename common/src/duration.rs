//! Go-style durations (`30s`, `1m30s`, `500ms`, `336h`, `7d`), as kaniko's
//! flags and Dockerfile HEALTHCHECK options write them.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid duration {input:?}: {reason}")]
pub struct DurationError {
    pub input: String,
    pub reason: &'static str,
}

/// Parses a sequence of `<number><unit>`; a bare `0` is zero.
pub fn parse(s: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: s.to_string(),
        reason,
    };
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(err("empty"));
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let n = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if n == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..n].parse().map_err(|_| err("bad number"))?;
        rest = &rest[n..];
        let u = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..u] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit (use ns, us, ms, s, m, h or d)")),
        };
        total += value * secs;
        rest = &rest[u..];
    }
    // A value no Duration holds (found by fuzzing: `22…226d` panicked).
    Duration::try_from_secs_f64(total).map_err(|_| err("out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by `cargo fuzz` (fuzz/regressions/units-huge-duration).
    #[test]
    fn out_of_range_is_an_error_not_a_panic() {
        let found = include_str!("../../fuzz/regressions/units-huge-duration");
        assert_eq!(parse(found).unwrap_err().reason, "out of range");
        assert!(parse("1e400s").is_err());
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("336h").unwrap(), Duration::from_secs(336 * 3600));
        assert_eq!(parse("0").unwrap(), Duration::ZERO);
        assert!(parse("5").is_err());
        assert!(parse("5x").is_err());
        assert!(parse("").is_err());
    }
}
