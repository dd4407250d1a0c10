//! Image references (`[domain[:port]/]path[:tag][@digest]`), parsed by
//! hand to the grammar of distribution's `reference` package.
//!
//! Why not `Reference::from_str`: oci-spec checks the grammar with one
//! regular expression whose `\w` is Unicode-aware, and compiling it costs
//! ~30 ms of CPU on the first reference of every process — more than half
//! of a fully cached build (0.05 s). The grammar is small; the test below checks this
//! parser against oci-spec's on thousands of generated references.
//! Tags here are ASCII, as in Docker (Go's `\w`); oci-spec would also take
//! Unicode letters.

use oci_client::Reference;

const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_LEGACY: &str = "index.docker.io";
const NAME_MAX: usize = 255;

/// Which rule of the grammar a reference breaks (distribution's wording).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("repository name must have at least one component")]
    Empty,
    #[error("invalid reference format")]
    Format,
    #[error("repository name must not be more than 255 characters")]
    TooLong,
    #[error("unsupported digest algorithm")]
    DigestAlgorithm,
    #[error("invalid checksum digest length")]
    DigestLength,
}

/// Parses `s` to the grammar; Docker Hub names normalised as Docker does.
pub fn parse(s: &str) -> Result<Reference, ReferenceError> {
    if s.is_empty() {
        return Err(ReferenceError::Empty);
    }
    let (rest, digest) = match s.split_once('@') {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    // A ':' after the last '/' starts the tag; one before it is a port.
    let (name, tag) = match rest.rfind(':') {
        Some(i) if !rest[i..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
        _ => (rest, None),
    };
    if !valid_name(name) {
        return Err(ReferenceError::Format);
    }
    if let Some(t) = tag {
        if !valid_tag(t) {
            return Err(ReferenceError::Format);
        }
    }
    if let Some(d) = digest {
        check_digest(d)?;
    }
    let (registry, repository) = split_domain(name);
    if repository.len() > NAME_MAX {
        return Err(ReferenceError::TooLong);
    }
    Ok(match (tag, digest) {
        (Some(t), Some(d)) => {
            Reference::with_tag_and_digest(registry, repository, t.into(), d.into())
        }
        (None, Some(d)) => Reference::with_digest(registry, repository, d.into()),
        // Neither: Docker's default tag.
        (t, None) => Reference::with_tag(registry, repository, t.unwrap_or("latest").into()),
    })
}

/// `[domain/]component(/component)*`: the first of several components may
/// be a domain (with a port); every other one is a path component.
fn valid_name(name: &str) -> bool {
    let mut parts = name.split('/');
    let Some(first) = parts.next() else {
        return false;
    };
    let rest: Vec<&str> = parts.collect();
    let first_ok = if rest.is_empty() {
        valid_component(first)
    } else {
        valid_component(first) || valid_domain(first)
    };
    first_ok && rest.iter().all(|c| valid_component(c))
}

/// `[a-z0-9]+` runs joined by `.`, `_`, `__` or any number of `-`.
fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &b[start..i];
        let ok = sep == b"." || sep == b"_" || sep == b"__" || sep.iter().all(|&x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

/// Labels of letters, digits and inner hyphens joined by dots, then an
/// optional `:port`.
fn valid_domain(d: &str) -> bool {
    let (host, port) = match d.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (d, None),
    };
    let label_ok = |l: &str| {
        let b = l.as_bytes();
        !b.is_empty()
            && b[0].is_ascii_alphanumeric()
            && b[b.len() - 1].is_ascii_alphanumeric()
            && b.iter().all(|x| x.is_ascii_alphanumeric() || *x == b'-')
    };
    host.split('.').all(label_ok)
        && port.is_none_or(|p| !p.is_empty() && p.bytes().all(|x| x.is_ascii_digit()))
}

/// `[\w][\w.-]{0,127}` with Go's (ASCII) `\w`.
fn valid_tag(t: &str) -> bool {
    let word = |x: u8| x.is_ascii_alphanumeric() || x == b'_';
    let b = t.as_bytes();
    !b.is_empty()
        && b.len() <= 128
        && word(b[0])
        && b.iter().all(|&x| word(x) || x == b'.' || x == b'-')
}

/// `algorithm:hex`, the algorithm one of the three sha2 lengths.
fn check_digest(d: &str) -> Result<(), ReferenceError> {
    let Some((alg, hex)) = d.split_once(':') else {
        return Err(ReferenceError::Format);
    };
    let alg_ok = alg.split(['-', '_', '+', '.']).all(|c| {
        let b = c.as_bytes();
        !b.is_empty() && b[0].is_ascii_alphabetic() && b.iter().all(|x| x.is_ascii_alphanumeric())
    });
    if !alg_ok || hex.len() < 32 || !hex.bytes().all(|x| x.is_ascii_hexdigit()) {
        return Err(ReferenceError::Format);
    }
    let want = match alg {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(ReferenceError::DigestAlgorithm),
    };
    if hex.len() != want {
        return Err(ReferenceError::DigestLength);
    }
    Ok(())
}

/// Docker Hub's normalisation: no domain (or `index.docker.io`) is
/// `docker.io`, and its one-component names live under `library/`.
fn split_domain(name: &str) -> (String, String) {
    let (mut domain, mut rest) = match name.split_once('/') {
        Some((l, r)) if l.contains('.') || l.contains(':') || l == "localhost" => {
            (l.to_string(), r.to_string())
        }
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    if domain == DOCKER_HUB_LEGACY {
        domain = DOCKER_HUB.to_string();
    }
    if domain == DOCKER_HUB && !rest.contains('/') {
        rest = format!("library/{rest}");
    }
    (domain, rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `s` parsed; fails the test if the two parsers disagree.
    fn same_as_oci_spec(s: &str) -> bool {
        let ours = parse(s).ok();
        let theirs = s.parse::<Reference>().ok();
        assert_eq!(ours, theirs, "{s:?}");
        ours.is_some()
    }

    #[test]
    fn the_usual_forms() {
        let r = parse("busybox").unwrap();
        assert_eq!(r.whole(), "docker.io/library/busybox:latest");
        let r = parse("localhost:5000/a/b:1.0").unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("localhost:5000", "a/b", Some("1.0"))
        );
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse(&format!("index.docker.io/x@{d}")).unwrap();
        assert_eq!(
            (r.registry(), r.repository(), r.tag()),
            ("docker.io", "library/x", None)
        );
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(
            parse("UPPER/x").is_ok(),
            "an upper-case first part is a domain"
        );
        assert!(parse("Upper").is_err());
        assert!(parse("a//b").is_err());
        assert!(parse("a:").is_err());
        assert_eq!(
            parse(&format!("a@md5:{}", "0".repeat(32))),
            Err(ReferenceError::DigestAlgorithm)
        );
    }

    #[test]
    fn agrees_with_oci_spec_on_generated_references() {
        for s in [
            "test.com:tag",
            "test.com:5000",
            "test.com/repo:tag",
            "test:5000/repo",
            "a.b-c.d:1/x__y.z---w/q",
            "a_.b",
            "a___b",
            "a-.b",
            "-a",
            "a..b",
            "ex.com:/x",
            "ex.com:12a/x",
            "x:-tag",
            "x:_tag",
        ] {
            same_as_oci_spec(s);
        }
        // A small deterministic generator over the grammar's alphabet.
        let alphabet = b"abz09AZ._-/:@";
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut parsed = 0;
        for _ in 0..20_000 {
            let len = 1 + (next() % 14) as usize;
            let s: String = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize] as char)
                .collect();
            parsed += same_as_oci_spec(&s) as usize;
            // And with a well-formed digest after it.
            parsed += same_as_oci_spec(&format!("{s}@sha256:{}", "0f".repeat(32))) as usize;
        }
        // Enough of them valid that acceptance is compared, not only refusal.
        assert!(parsed > 2_000, "{parsed} parsed");
    }
}
