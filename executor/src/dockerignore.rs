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

fn match_segments(pat: &[String], path: &[&str]) -> bool {
    match pat.first() {
        None => path.is_empty(),
        Some(s) if s == "**" => (0..=path.len()).any(|k| match_segments(&pat[1..], &path[k..])),
        Some(s) => {
            !path.is_empty() && glob_segment(s, path[0]) && match_segments(&pat[1..], &path[1..])
        }
    }
}

/// Go's `filepath.Match` for one path segment: `*`, `?`, `[...]`, `\` escapes.
pub fn glob_segment(pat: &str, name: &str) -> bool {
    let p: Vec<char> = pat.chars().collect();
    let n: Vec<char> = name.chars().collect();
    glob_at(&p, &n)
}

fn glob_at(p: &[char], n: &[char]) -> bool {
    if p.is_empty() {
        return n.is_empty();
    }
    match p[0] {
        '*' => (0..=n.len()).any(|k| glob_at(&p[1..], &n[k..])),
        '?' => !n.is_empty() && glob_at(&p[1..], &n[1..]),
        '[' => {
            if n.is_empty() {
                return false;
            }
            let mut i = 1;
            let negate = p.get(1).is_some_and(|&c| c == '^' || c == '!');
            if negate {
                i += 1;
            }
            let mut matched = false;
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
                if lo <= n[0] && n[0] <= hi {
                    matched = true;
                }
                i += 1;
            }
            if i >= p.len() {
                return false; // unterminated class never matches
            }
            matched != negate && glob_at(&p[i + 1..], &n[1..])
        }
        '\\' if p.len() > 1 => !n.is_empty() && n[0] == p[1] && glob_at(&p[2..], &n[1..]),
        c => !n.is_empty() && n[0] == c && glob_at(&p[1..], &n[1..]),
    }
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
}
