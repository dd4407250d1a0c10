//! The instruction model the parser produces: a Dockerfile's stages and
//! instructions with their flags and forms, as written (no variable is
//! expanded here).

use super::{parse, ParseError};
use std::fmt;
use std::path::Path;

#[derive(Debug, Clone, PartialEq)]
pub struct Dockerfile {
    pub escape: char,
    pub syntax: Option<String>,
    /// ARGs declared before the first FROM: usable in FROM lines, and in a stage
    /// once re-declared there without a value.
    pub global_args: Vec<Instruction>,
    pub stages: Vec<Stage>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Stage {
    pub index: usize,
    pub name: Option<String>,
    /// The image reference as written, before ARG substitution.
    pub base: String,
    pub platform: Option<String>,
    pub line: usize,
    pub instructions: Vec<Instruction>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instruction {
    pub line: usize,
    /// The instruction as written (continuations joined), for history and errors.
    pub original: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Cmd {
    Exec(Vec<String>),
    Shell(String),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Heredoc {
    pub name: String,
    pub content: String,
    /// `<<EOF` (unquoted) bodies get variable expansion; `<<"EOF"` bodies do not.
    pub expand: bool,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Flags(pub Vec<(String, Option<String>)>);

impl Flags {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    }
    pub fn has(&self, name: &str) -> bool {
        self.0.iter().any(|(k, _)| k == name)
    }
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct CopySpec {
    pub flags: Flags,
    /// Raw words (JSON form already unquoted), expanded at build time.
    pub srcs: Vec<String>,
    pub dest: String,
    pub heredocs: Vec<Heredoc>,
    pub json: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct HealthcheckSpec {
    pub flags: Flags,
    /// `None` means `HEALTHCHECK NONE`.
    pub cmd: Option<Cmd>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    /// `(name, raw default)`.
    Arg(Vec<(String, Option<String>)>),
    /// `(raw key, raw value)` pairs.
    Env(Vec<(String, String)>),
    Label(Vec<(String, String)>),
    Run {
        flags: Flags,
        cmd: Cmd,
        heredocs: Vec<Heredoc>,
    },
    Copy(CopySpec),
    Add(CopySpec),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Entrypoint(Cmd),
    Cmd(Cmd),
    Shell(Vec<String>),
    StopSignal(String),
    Healthcheck(HealthcheckSpec),
    Onbuild(String),
    Maintainer(String),
}

impl Kind {
    pub fn keyword(&self) -> &'static str {
        match self {
            Kind::Arg(_) => "ARG",
            Kind::Env(_) => "ENV",
            Kind::Label(_) => "LABEL",
            Kind::Run { .. } => "RUN",
            Kind::Copy(_) => "COPY",
            Kind::Add(_) => "ADD",
            Kind::Workdir(_) => "WORKDIR",
            Kind::User(_) => "USER",
            Kind::Expose(_) => "EXPOSE",
            Kind::Volume(_) => "VOLUME",
            Kind::Entrypoint(_) => "ENTRYPOINT",
            Kind::Cmd(_) => "CMD",
            Kind::Shell(_) => "SHELL",
            Kind::StopSignal(_) => "STOPSIGNAL",
            Kind::Healthcheck(_) => "HEALTHCHECK",
            Kind::Onbuild(_) => "ONBUILD",
            Kind::Maintainer(_) => "MAINTAINER",
        }
    }
}

impl fmt::Display for Instruction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.original)
    }
}

impl Dockerfile {
    pub fn from_path(path: &Path) -> Result<Dockerfile, ParseError> {
        let text = std::fs::read_to_string(path).map_err(|source| ParseError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(parse(&text, &path.display().to_string())?)
    }

    /// The stage named `name` (case-insensitive, as Docker) or with that index.
    pub fn stage_index(&self, name: &str) -> Option<usize> {
        self.stages
            .iter()
            .position(|s| {
                s.name
                    .as_deref()
                    .is_some_and(|n| n.eq_ignore_ascii_case(name))
            })
            .or_else(|| {
                name.parse::<usize>()
                    .ok()
                    .filter(|&i| i < self.stages.len())
            })
    }
}
