//! Dockerfile parser.
//!
//! Hand-written because no maintained crate handles the whole syntax users write:
//! parser directives, a configurable escape character, comment lines inside
//! continuations, JSON vs shell forms and heredocs (`RUN <<EOF`, `COPY <<EOF`).
//!
//! The parser is one file: logical-line assembly, heredoc bodies, flag
//! parsing and the per-instruction forms are one grammar whose rules
//! depend on each other (a heredoc ends a logical line; a directive is only a
//! directive before the first instruction). What it produces — the
//! instruction model — is in [`model`]; the tests in `tests.rs`.
//! Variable substitution is *not* done here: its values depend on ARG/ENV at
//! each instruction, so the builder expands words with [`crate::shell_lex`].

mod model;
pub use model::*;

use crate::shell_lex::{LexError, Lexer};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[error("{file}:{line}: {instruction}: {message}")]
pub struct DockerfileError {
    pub file: String,
    pub line: usize,
    pub instruction: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Syntax(#[from] DockerfileError),
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

struct Logical {
    line: usize,
    text: String,
}

/// Parses Dockerfile text; `file` only names the source in errors.
pub fn parse(text: &str, file: &str) -> Result<Dockerfile, DockerfileError> {
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    let err = |line: usize, instruction: &str, message: String| DockerfileError {
        file: file.to_string(),
        line,
        instruction: instruction.to_string(),
        message,
    };

    // Parser directives: only at the very top, before any other comment or line.
    let mut escape = '\\';
    let mut syntax = None;
    let mut i = 0;
    while i < lines.len() {
        let l = lines[i].trim();
        let Some(rest) = l.strip_prefix('#') else {
            break;
        };
        let Some((k, v)) = rest.split_once('=') else {
            break;
        };
        let key = k.trim().to_ascii_lowercase();
        if key.is_empty() || key.contains(char::is_whitespace) {
            break;
        }
        match key.as_str() {
            "escape" => {
                let v = v.trim();
                escape = match v {
                    "\\" => '\\',
                    "`" => '`',
                    _ => {
                        return Err(err(
                            i + 1,
                            "# escape",
                            format!("invalid escape token {v:?}: must be ` or \\"),
                        ))
                    }
                }
            }
            "syntax" => syntax = Some(v.trim().to_string()),
            "check" => {}
            _ => break,
        }
        i += 1;
    }
    let lexer = Lexer::new(escape);

    let mut df = Dockerfile {
        escape,
        syntax,
        global_args: Vec::new(),
        stages: Vec::new(),
    };

    while i < lines.len() {
        let raw = lines[i];
        let trimmed = raw.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            i += 1;
            continue;
        }
        // Join continuation lines; comment lines inside a continuation are dropped.
        let start = i + 1;
        let mut text = String::new();
        let mut cur = raw.to_string();
        loop {
            let t = cur.trim_end();
            if let Some(body) = t.strip_suffix(escape) {
                text.push_str(body);
                i += 1;
                loop {
                    if i >= lines.len() {
                        cur = String::new();
                        break;
                    }
                    let nt = lines[i].trim_start();
                    if nt.starts_with('#') {
                        i += 1;
                        continue;
                    }
                    cur = lines[i].to_string();
                    break;
                }
                if i >= lines.len() {
                    break;
                }
                if cur.trim().is_empty() {
                    // An empty line ends nothing inside a continuation (Docker warns).
                    continue;
                }
            } else {
                text.push_str(&cur);
                i += 1;
                break;
            }
        }
        let logical = Logical {
            line: start,
            text: text.trim().to_string(),
        };
        let (keyword, args) = match logical.text.find(char::is_whitespace) {
            Some(p) => (&logical.text[..p], logical.text[p..].trim_start()),
            None => (logical.text.as_str(), ""),
        };
        let kw = keyword.to_ascii_uppercase();

        // Heredocs: bodies follow the instruction line.
        let mut heredocs = Vec::new();
        if matches!(kw.as_str(), "RUN" | "COPY" | "ADD") {
            for (name, strip_tabs, expand) in heredoc_markers(args) {
                let mut content = String::new();
                let mut closed = false;
                while i < lines.len() {
                    let l = lines[i];
                    i += 1;
                    let cmp = if strip_tabs {
                        l.trim_start_matches('\t')
                    } else {
                        l
                    };
                    if cmp == name {
                        closed = true;
                        break;
                    }
                    content.push_str(if strip_tabs {
                        l.trim_start_matches('\t')
                    } else {
                        l
                    });
                    content.push('\n');
                }
                if !closed {
                    return Err(err(
                        logical.line,
                        &kw,
                        format!("heredoc <<{name} is not terminated"),
                    ));
                }
                heredocs.push(Heredoc {
                    name,
                    content,
                    expand,
                });
            }
        }

        let e = |m: String| err(logical.line, &kw, m);
        let lex = |r: Result<Vec<String>, LexError>| r.map_err(|x| e(x.to_string()));
        let kind = match kw.as_str() {
            "FROM" => {
                let (flags, rest) = parse_flags(args, &["platform"]).map_err(e)?;
                let words = lex(lexer.split_raw(rest))?;
                let (base, name) = match words.as_slice() {
                    [b] => (b.clone(), None),
                    [b, as_, n] if as_.eq_ignore_ascii_case("as") => (b.clone(), Some(n.clone())),
                    _ => {
                        return Err(e(
                            "expected FROM [--platform=...] <image> [AS <name>]".into()
                        ))
                    }
                };
                if let Some(n) = &name {
                    if !n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                        || !n
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
                    {
                        return Err(e(format!("invalid stage name {n:?}")));
                    }
                    if df
                        .stages
                        .iter()
                        .any(|s| s.name.as_deref().is_some_and(|x| x.eq_ignore_ascii_case(n)))
                    {
                        return Err(e(format!("duplicate stage name {n:?}")));
                    }
                }
                df.stages.push(Stage {
                    index: df.stages.len(),
                    name: name.map(|n| n.to_ascii_lowercase()),
                    base,
                    platform: flags.get("platform").map(str::to_string),
                    line: logical.line,
                    instructions: Vec::new(),
                });
                continue;
            }
            "ARG" => {
                let words = lex(lexer.split_raw(args))?;
                if words.is_empty() {
                    return Err(e("ARG requires at least one argument".into()));
                }
                let mut out = Vec::new();
                for w in words {
                    match w.split_once('=') {
                        Some((k, v)) => out.push((k.to_string(), Some(v.to_string()))),
                        None => out.push((w, None)),
                    }
                }
                for (k, _) in &out {
                    if !valid_name(k) {
                        return Err(e(format!("invalid ARG name {k:?}")));
                    }
                }
                Kind::Arg(out)
            }
            "ENV" | "LABEL" => {
                let pairs = parse_pairs(&lexer, args, kw == "ENV").map_err(e)?;
                if kw == "ENV" {
                    Kind::Env(pairs)
                } else {
                    Kind::Label(pairs)
                }
            }
            "RUN" => {
                let (flags, rest) =
                    parse_flags(args, &["mount", "network", "security"]).map_err(e)?;
                if rest.is_empty() && heredocs.is_empty() {
                    return Err(e("RUN requires a command".into()));
                }
                Kind::Run {
                    flags,
                    cmd: parse_cmd(rest).map_err(e)?,
                    heredocs,
                }
            }
            "COPY" | "ADD" => {
                let allowed: &[&str] = if kw == "COPY" {
                    &["from", "chown", "chmod", "link", "parents", "exclude"]
                } else {
                    &[
                        "chown",
                        "chmod",
                        "link",
                        "checksum",
                        "keep-git-dir",
                        "exclude",
                    ]
                };
                let (flags, rest) = parse_flags(args, allowed).map_err(e)?;
                let (mut words, json) = match json_array(rest).map_err(e)? {
                    Some(v) => (v, true),
                    None => (lex(lexer.split_raw(rest))?, false),
                };
                if words.len() < 2 {
                    return Err(e(format!(
                        "{kw} requires at least two arguments: source(s) and destination"
                    )));
                }
                let dest = words.pop().unwrap_or_default();
                let spec = CopySpec {
                    flags,
                    srcs: words,
                    dest,
                    heredocs,
                    json,
                };
                if kw == "COPY" {
                    Kind::Copy(spec)
                } else {
                    Kind::Add(spec)
                }
            }
            "WORKDIR" => Kind::Workdir(one_arg(args).map_err(e)?),
            "USER" => Kind::User(one_arg(args).map_err(e)?),
            "STOPSIGNAL" => Kind::StopSignal(one_arg(args).map_err(e)?),
            "MAINTAINER" => Kind::Maintainer(nonempty(args).map_err(e)?),
            "EXPOSE" => Kind::Expose(lex(lexer.split_raw(nonempty(args).map_err(e)?.as_str()))?),
            "VOLUME" => Kind::Volume(match json_array(args).map_err(e)? {
                Some(v) => v,
                None => lex(lexer.split_raw(nonempty(args).map_err(e)?.as_str()))?,
            }),
            "ENTRYPOINT" => Kind::Entrypoint(parse_cmd(args).map_err(e)?),
            "CMD" => Kind::Cmd(parse_cmd(args).map_err(e)?),
            "SHELL" => match json_array(args).map_err(e)? {
                Some(v) if !v.is_empty() => Kind::Shell(v),
                _ => return Err(e("SHELL requires the arguments to be in JSON form".into())),
            },
            "HEALTHCHECK" => {
                let (flags, rest) = parse_flags(
                    args,
                    &[
                        "interval",
                        "timeout",
                        "start-period",
                        "start-interval",
                        "retries",
                    ],
                )
                .map_err(e)?;
                let (word, tail) = match rest.find(char::is_whitespace) {
                    Some(p) => (&rest[..p], rest[p..].trim_start()),
                    None => (rest, ""),
                };
                if word.eq_ignore_ascii_case("NONE") {
                    if !tail.is_empty() || !flags.0.is_empty() {
                        return Err(e("HEALTHCHECK NONE takes no other arguments".into()));
                    }
                    Kind::Healthcheck(HealthcheckSpec { flags, cmd: None })
                } else if word.eq_ignore_ascii_case("CMD") && !tail.is_empty() {
                    Kind::Healthcheck(HealthcheckSpec {
                        flags,
                        cmd: Some(parse_cmd(tail).map_err(e)?),
                    })
                } else {
                    return Err(e(
                        "expected HEALTHCHECK [OPTIONS] CMD command, or HEALTHCHECK NONE".into(),
                    ));
                }
            }
            "ONBUILD" => {
                let inner = nonempty(args).map_err(e)?;
                let ikw = inner
                    .split_whitespace()
                    .next()
                    .unwrap_or("")
                    .to_ascii_uppercase();
                if matches!(ikw.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(e(format!("{ikw} isn't allowed as an ONBUILD trigger")));
                }
                Kind::Onbuild(inner)
            }
            _ => return Err(e(format!("unknown instruction {keyword:?}"))),
        };
        let instr = Instruction {
            line: logical.line,
            original: format!("{kw} {args}").trim_end().to_string(),
            kind,
        };
        match df.stages.last_mut() {
            Some(stage) => stage.instructions.push(instr),
            None => {
                match instr.kind {
                    Kind::Arg(_) => df.global_args.push(instr),
                    _ => return Err(e(
                        "no FROM before this instruction: only ARG may come before the first FROM"
                            .into(),
                    )),
                }
            }
        }
    }
    if df.stages.is_empty() {
        return Err(err(
            lines.len().max(1),
            "FROM",
            "the Dockerfile has no FROM instruction".into(),
        ));
    }
    Ok(df)
}

fn valid_name(k: &str) -> bool {
    !k.is_empty() && !k.contains(char::is_whitespace)
}

fn nonempty(args: &str) -> Result<String, String> {
    if args.trim().is_empty() {
        Err("requires an argument".into())
    } else {
        Ok(args.trim().to_string())
    }
}

fn one_arg(args: &str) -> Result<String, String> {
    nonempty(args)
}

/// `--name=value` / `--name` flags at the start of the arguments.
fn parse_flags<'a>(args: &'a str, allowed: &[&str]) -> Result<(Flags, &'a str), String> {
    let mut flags = Flags::default();
    let mut rest = args.trim_start();
    while let Some(body) = rest.strip_prefix("--") {
        let end = body.find(char::is_whitespace).unwrap_or(body.len());
        let word = &body[..end];
        if word.is_empty() {
            // A lone "--" ends the flags.
            rest = body.trim_start();
            break;
        }
        let (k, v) = match word.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (word.to_string(), None),
        };
        if !allowed.contains(&k.as_str()) {
            return Err(format!("unknown flag: --{k}"));
        }
        flags.0.push((k, v));
        rest = body[end..].trim_start();
    }
    Ok((flags, rest))
}

/// The exec (JSON) form, by BuildKit's rule (`parseJSON` in its
/// `line_parsers.go`): the first JSON value of the line is decoded and any
/// text after it ignored (`CMD ["x"] # note` is `["x"]`); an array holding
/// something other than strings is an error; anything that does not decode
/// as an array is the shell form (`None`).
fn json_array(args: &str) -> Result<Option<Vec<String>>, String> {
    let t = args.trim_start();
    if !t.starts_with('[') {
        return Ok(None);
    }
    let first = serde_json::Deserializer::from_str(t)
        .into_iter::<serde_json::Value>()
        .next();
    let Some(Ok(serde_json::Value::Array(items))) = first else {
        return Ok(None);
    };
    items
        .into_iter()
        .map(|v| match v {
            serde_json::Value::String(s) => Ok(s),
            other => Err(format!("the JSON form must hold only strings, not {other}")),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

fn parse_cmd(args: &str) -> Result<Cmd, String> {
    Ok(match json_array(args)? {
        Some(v) => Cmd::Exec(v),
        None => Cmd::Shell(args.to_string()),
    })
}

/// ENV/LABEL: `key=value ...` or the legacy `key value` form.
fn parse_pairs(
    lexer: &Lexer,
    args: &str,
    legacy_ok: bool,
) -> Result<Vec<(String, String)>, String> {
    let words = lexer.split_raw(args).map_err(|e| e.to_string())?;
    if words.is_empty() {
        return Err("requires at least one argument".into());
    }
    if !words[0].contains('=') {
        if !legacy_ok && words.len() < 2 {
            return Err("requires key=value".into());
        }
        let key = words[0].clone();
        let value = args.trim_start()[key.len()..].trim().to_string();
        if value.is_empty() {
            return Err(format!("{key} must have a value (key=value or key value)"));
        }
        return Ok(vec![(key, value)]);
    }
    let mut out = Vec::new();
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(format!("{w:?} is not key=value"));
        };
        if k.is_empty() {
            return Err(format!("{w:?} has an empty key"));
        }
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

/// Heredoc markers on an instruction line: `(name, strip leading tabs, expand)`.
fn heredoc_markers(args: &str) -> Vec<(String, bool, bool)> {
    let mut out = Vec::new();
    let b = args.as_bytes();
    let mut i = 0;
    let mut quote: Option<u8> = None;
    while i + 1 < b.len() {
        let c = b[i];
        if let Some(q) = quote {
            if c == q {
                quote = None;
            }
            i += 1;
            continue;
        }
        if (c == b'\'' || c == b'"')
            && !(i >= 2 && &b[i - 2..i] == b"<<")
            && !(i >= 3 && &b[i - 3..i] == b"<<-")
        {
            quote = Some(c);
            i += 1;
            continue;
        }
        // As BuildKit: a heredoc is a word that starts with `<<` (so `$((1<<2))`
        // and `cat<<<x` are not).
        let word_start = i == 0 || b[i - 1].is_ascii_whitespace();
        if word_start && c == b'<' && b[i + 1] == b'<' && !(i + 2 < b.len() && b[i + 2] == b'<') {
            let mut j = i + 2;
            let strip = j < b.len() && b[j] == b'-';
            if strip {
                j += 1;
            }
            let q = if j < b.len() && (b[j] == b'"' || b[j] == b'\'') {
                Some(b[j])
            } else {
                None
            };
            if q.is_some() {
                j += 1;
            }
            let s = j;
            while j < b.len()
                && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] == b'-' || b[j] == b'.')
            {
                j += 1;
            }
            if j > s {
                let name = args[s..j].to_string();
                if let Some(qc) = q {
                    if j < b.len() && b[j] == qc {
                        j += 1;
                    }
                }
                out.push((name, strip, q.is_none()));
                i = j;
                continue;
            }
        }
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests;
