//! `.dockerignore` with Docker's own matching rules, which differ from
//! gitignore's: patterns are anchored at the context root, `*` never crosses
//! `/`, `**` matches any number of directories, a pattern that matches a
//! directory excludes everything under it, and the last matching pattern wins
//! (`!` re-includes). Hand-written because globset/ignore implement gitignore
//! semantics (unanchored names, different `!` rules).

use std::path::Path;

#[derive(Debug, Clone)]
struct Pattern {
    segments: Vec<String>,
    exclusion: bool,
}

#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    pub fn parse(text: &str) -> DockerIgnore {
        let mut patterns = Vec::new();
        for line in text.lines() {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let (exclusion, body) = match l.strip_prefix('!') {
                Some(b) => (true, b.trim()),
                None => (false, l),
            };
            let segments: Vec<String> = clean(body)
                .split('/')
                .filter(|s| !s.is_empty() && *s != ".")
                .map(str::to_string)
                .collect();
            if segments.is_empty() {
                continue;
            }
            patterns.push(Pattern {
                segments,
                exclusion,
            });
        }
        DockerIgnore { patterns }
    }

    pub fn load(context: &Path, dockerfile: Option<&Path>) -> std::io::Result<DockerIgnore> {
        // BuildKit prefers <Dockerfile>.dockerignore beside the Dockerfile.
        if let Some(df) = dockerfile {
            let mut n = df.as_os_str().to_owned();
            n.push(".dockerignore");
            if let Ok(t) = std::fs::read_to_string(Path::new(&n)) {
                return Ok(DockerIgnore::parse(&t));
            }
        }
        match std::fs::read_to_string(context.join(".dockerignore")) {
            Ok(t) => Ok(DockerIgnore::parse(&t)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(DockerIgnore::default()),
            Err(e) => Err(e),
        }
    }

    /// Whether a context-relative path is excluded. A path is matched by a
    /// pattern when the pattern matches it or any of its parent directories.
    pub fn excluded(&self, rel: &str) -> bool {
        let parts: Vec<&str> = rel
            .split('/')
            .filter(|s| !s.is_empty() && *s != ".")
            .collect();
        let mut excluded = false;
        for p in &self.patterns {
            let hit = (1..=parts.len()).any(|n| match_segments(&p.segments, &parts[..n]));
            if hit {
                excluded = !p.exclusion;
            }
        }
        excluded
    }

    /// Whether a walk of the context can skip `rel` entirely: it is excluded
    /// and, if a directory, no `!` pattern re-includes anything under it.
    /// `is_dir` is asked only for excluded paths, so walks stat nothing extra.
    pub fn prunes(&self, rel: &str, is_dir: impl FnOnce() -> bool) -> bool {
        self.excluded(rel) && !(is_dir() && self.may_reinclude_under(rel))
    }

    /// Whether some `!` pattern could re-include something under `dir`, so an
    /// excluded directory must still be walked.
    pub fn may_reinclude_under(&self, dir: &str) -> bool {
        let parts: Vec<&str> = dir.split('/').filter(|s| !s.is_empty()).collect();
        self.patterns.iter().filter(|p| p.exclusion).any(|p| {
            // The pattern's leading segments must be compatible with `dir`.
            prefix_compatible(&p.segments, &parts)
        })
    }
}

fn clean(p: &str) -> String {
    let p = p.trim_start_matches('/');
    let mut out: Vec<&str> = Vec::new();
    for s in p.split('/') {
        match s {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            s => out.push(s),
        }
    }
    out.join("/")
}

fn prefix_compatible(pat: &[String], dir: &[&str]) -> bool {
    if dir.is_empty() {
        return true;
    }
    match pat.first() {
        None => false,
        Some(s) if s == "**" => true,
        Some(s) => glob_segment(s, dir[0]) && prefix_compatible(&pat[1..], &dir[1..]),
    }
}

/// Whether the pattern's segments match the path's, `**` matching any
/// number of segments. Dynamic programming over (pattern, path) positions:
/// several `**` cost O(segments × depth), never backtracking (a fuzzed
/// `.dockerignore` of many `**` took exponential time before).
fn match_segments(pat: &[String], path: &[&str]) -> bool {
    // ok[j]: the pattern so far matches the first j path segments.
    let mut ok = vec![false; path.len() + 1];
    ok[0] = true;
    for seg in pat {
        let mut next = vec![false; path.len() + 1];
        if seg == "**" {
            let mut any = false;
            for j in 0..=path.len() {
                any |= ok[j];
                next[j] = any;
            }
        } else {
            for j in 1..=path.len() {
                next[j] = ok[j - 1] && glob_segment(seg, path[j - 1]);
            }
        }
        ok = next;
    }
    ok[path.len()]
}

/// One element of a segment pattern.
enum Tok {
    Star,
    Any,
    Lit(char),
    /// `[...]`: ranges, negated with `^` or `!`.
    Class(Vec<(char, char)>, bool),
}

impl Tok {
    fn matches(&self, c: char) -> bool {
        match self {
            Tok::Star | Tok::Any => true,
            Tok::Lit(l) => *l == c,
            Tok::Class(ranges, negate) => {
                ranges.iter().any(|(lo, hi)| *lo <= c && c <= *hi) != *negate
            }
        }
    }
}

/// The pattern as tokens; `None` for an unterminated class, which never
/// matches (Go's `filepath.Match` calls it a bad pattern).
fn tokens(p: &[char]) -> Option<Vec<Tok>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            // Consecutive stars are one star.
            '*' if matches!(out.last(), Some(Tok::Star)) => {}
            '*' => out.push(Tok::Star),
            '?' => out.push(Tok::Any),
            '[' => {
                i += 1;
                let negate = p.get(i).is_some_and(|&c| c == '^' || c == '!');
                if negate {
                    i += 1;
                }
                let mut ranges = Vec::new();
                let mut first = true;
                while i < p.len() && (p[i] != ']' || first) {
                    first = false;
                    let mut lo = p[i];
                    if lo == '\\' && i + 1 < p.len() {
                        i += 1;
                        lo = p[i];
                    }
                    let mut hi = lo;
                    if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
                        hi = p[i + 2];
                        i += 2;
                    }
                    ranges.push((lo, hi));
                    i += 1;
                }
                if i >= p.len() {
                    return None;
                }
                out.push(Tok::Class(ranges, negate));
            }
            '\\' if i + 1 < p.len() => {
                i += 1;
                out.push(Tok::Lit(p[i]));
            }
            c => out.push(Tok::Lit(c)),
        }
        i += 1;
    }
    Some(out)
}

/// Go's `filepath.Match` for one path segment: `*`, `?`, `[...]`, `\`
/// escapes. Matched with one remembered star (the classic two-pointer
/// walk), so time is O(pattern × name) whatever the stars: a fuzzed
/// pattern of many stars took exponential time with backtracking.
pub fn glob_segment(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let Some(t) = tokens(&p) else {
        return false;
    };
    let (mut ti, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match t.get(ti) {
            Some(Tok::Star) => {
                star = Some((ti, ni));
                ti += 1;
            }
            Some(tok) if tok.matches(n[ni]) => {
                ti += 1;
                ni += 1;
            }
            _ => match star {
                // Let the last star take one more character and retry.
                Some((st, sn)) => {
                    ti = st + 1;
                    ni = sn + 1;
                    star = Some((st, sn + 1));
                }
                None => return false,
            },
        }
    }
    t[ti..].iter().all(|tok| matches!(tok, Tok::Star))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_rules() {
        let di =
            DockerIgnore::parse("# c\n*.log\n!keep.log\nbuild\n**/*.tmp\ndocs/**/secret\n/abs/x\n");
        assert!(di.excluded("a.log"));
        assert!(!di.excluded("keep.log"));
        assert!(
            !di.excluded("sub/a.log"),
            "* does not cross directories and patterns are anchored"
        );
        assert!(di.excluded("build"));
        assert!(
            di.excluded("build/out/bin"),
            "a matched directory excludes its content"
        );
        assert!(di.excluded("x.tmp"));
        assert!(di.excluded("deep/er/x.tmp"));
        assert!(di.excluded("docs/secret"));
        assert!(di.excluded("docs/a/b/secret"));
        assert!(di.excluded("abs/x"));
        assert!(!di.excluded("src/main.rs"));
    }

    #[test]
    fn last_match_wins_and_reinclusion() {
        let di = DockerIgnore::parse("*\n!src\nsrc/gen\n");
        assert!(di.excluded("README"));
        assert!(!di.excluded("src/lib.rs"));
        assert!(di.excluded("src/gen/x.rs"));
        let di = DockerIgnore::parse("vendor\n!vendor/keep\n");
        assert!(di.may_reinclude_under("vendor"));
        assert!(!di.excluded("vendor/keep/a"));
        assert!(di.excluded("vendor/other"));
    }

    #[test]
    fn globs() {
        assert!(glob_segment("a[0-9]?", "a5x"));
        assert!(!glob_segment("a[!0-9]", "a5"));
        assert!(glob_segment("\\*", "*"));
        assert!(!glob_segment("\\*", "a"));
    }

    /// Found by `cargo fuzz` (fuzz/artifacts/dockerignore): patterns of many
    /// stars, or many `**` segments, took exponential time. Each of these
    /// finishes at once now (a regression would hang the suite).
    #[test]
    fn many_stars_and_double_stars_do_not_backtrack() {
        // The fuzzer's input as it found it: patterns, a NUL, a path.
        let found = include_bytes!("../../fuzz/regressions/dockerignore-timeout-many-stars");
        let text = String::from_utf8_lossy(found);
        let (patterns, path) = text.split_once('\0').unwrap_or((&text, ""));
        let di = DockerIgnore::parse(patterns);
        let _ = (di.excluded(path), di.may_reinclude_under(path));
        let stars = format!("{}.{}\u{10}", "*".repeat(58), "*".repeat(20));
        assert!(!glob_segment(&stars, &"*".repeat(40)));
        assert!(glob_segment(&"*a".repeat(30), &"a".repeat(60)));
        assert!(!glob_segment(
            &"*a".repeat(30),
            &format!("{}b", "a".repeat(60))
        ));
        let deep = vec!["x"; 40].join("/");
        let di = DockerIgnore::parse(&format!("{}y", "**/x/".repeat(20)));
        assert!(!di.excluded(&deep));
        assert!(di.excluded(&format!("{deep}/y")));
    }

    /// The non-backtracking matchers agree with the plain recursive
    /// definition (kept here as the reference) on small random inputs.
    mod reference {
        use super::super::*;
        use proptest::prelude::*;

        fn glob_ref(p: &[char], n: &[char]) -> bool {
            match p.first() {
                None => n.is_empty(),
                Some('*') => (0..=n.len()).any(|k| glob_ref(&p[1..], &n[k..])),
                Some('?') => !n.is_empty() && glob_ref(&p[1..], &n[1..]),
                Some(&c) => !n.is_empty() && n[0] == c && glob_ref(&p[1..], &n[1..]),
            }
        }

        fn segments_ref(pat: &[&str], path: &[&str]) -> bool {
            match pat.first() {
                None => path.is_empty(),
                Some(&"**") => (0..=path.len()).any(|k| segments_ref(&pat[1..], &path[k..])),
                Some(s) => {
                    !path.is_empty()
                        && glob_segment(s, path[0])
                        && segments_ref(&pat[1..], &path[1..])
                }
            }
        }

        proptest! {
            #[test]
            fn globs_agree(p in "[ab*?]{0,8}", n in "[ab]{0,8}") {
                let (pc, nc): (Vec<char>, Vec<char>) = (p.chars().collect(), n.chars().collect());
                prop_assert_eq!(glob_segment(&p, &n), glob_ref(&pc, &nc));
            }

            #[test]
            fn segments_agree(pat in prop::collection::vec("a|b|\\*|\\*\\*", 0..6), path in prop::collection::vec("a|b", 0..6)) {
                let pat: Vec<String> = pat;
                let refs: Vec<&str> = pat.iter().map(String::as_str).collect();
                let path: Vec<&str> = path.iter().map(String::as_str).collect();
                prop_assert_eq!(match_segments(&pat, &path), segments_ref(&refs, &path));
            }
        }
    }
}
