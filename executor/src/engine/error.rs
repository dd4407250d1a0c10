//! The build's errors. A step's error says where (file, line, instruction)
//! and what was being done; the cause stays a typed `#[source]`, so callers
//! can decide on it and the binary prints the whole chain once.

use crate::fetch::FetchError;
use kiln_common::dockerfile::Instruction;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Dockerfile(#[from] kiln_common::dockerfile::ParseError),
    /// A step failed for a reason other than its command's exit code.
    #[error("{file}:{line}: {instruction}")]
    Step {
        file: String,
        line: usize,
        instruction: String,
        #[source]
        source: Box<StepError>,
    },
    #[error(
        "{file}:{line}: RUN {command:?} failed with exit code {code}\n--- last output ---\n{tail}"
    )]
    RunFailed {
        file: String,
        line: usize,
        command: String,
        code: i32,
        tail: String,
    },
    #[error("base image {image:?} (stage {stage})")]
    BaseImage {
        image: String,
        stage: String,
        #[source]
        source: Box<kiln_common::registry::RegistryError>,
    },
    #[error("target stage {0:?} not found in the Dockerfile")]
    NoTarget(String),
    /// Another stage failed; this one stopped before its next step.
    #[error("stage {stage} stopped: another stage failed")]
    Cancelled { stage: String },
    #[error("stage {stage} panicked (a bug in Kiln)")]
    StagePanicked { stage: String },
    #[error(transparent)]
    Context(#[from] crate::context::ContextError),
    #[error("{op} {}", path.display())]
    Work {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Isolation(#[from] crate::isolation::IsolationError),
    #[error(transparent)]
    Output(#[from] Box<crate::output::OutputError>),
    #[error(transparent)]
    Blob(#[from] crate::blobs::BlobError),
    #[error(transparent)]
    Attest(#[from] crate::attest::AttestError),
    #[error(transparent)]
    Fetch(#[from] Box<FetchError>),
}

impl From<crate::output::OutputError> for BuildError {
    fn from(e: crate::output::OutputError) -> Self {
        BuildError::Output(Box::new(e))
    }
}

/// Why one instruction failed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The Dockerfile breaks a rule; the message is the whole story.
    #[error("{0}")]
    Invalid(String),
    /// A RUN for a platform this machine cannot execute.
    #[error(transparent)]
    Emulation(#[from] crate::emulation::EmulationError),
    #[error("expanding {word:?}")]
    Expand {
        word: String,
        #[source]
        source: kiln_common::shell_lex::LexError,
    },
    #[error("{what}")]
    Parse {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{op} {path:?} in the root")]
    Root {
        op: &'static str,
        path: String,
        #[source]
        source: kiln_layers::rootfs::RootError,
    },
    #[error(transparent)]
    Copy(crate::copy::CopyError),
    #[error("hashing the sources for the cache key")]
    Key(#[source] crate::cache_key::KeyError),
    #[error("{op} {}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("downloading {url}")]
    Download {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("downloading {url}: HTTP {status}")]
    HttpStatus { url: String, status: u16 },
    #[error("extracting {}", path.display())]
    Archive {
        path: PathBuf,
        #[source]
        source: kiln_layers::extract::ExtractError,
    },
    /// The command ran and failed; reported as [`BuildError::RunFailed`].
    #[error("exited with code {code}")]
    Exit { code: i32, tail: String },
    #[error("running the command")]
    Isolation(#[source] crate::isolation::IsolationError),
    #[error("snapshotting the root")]
    Snapshot(#[source] crate::snapshot::SnapshotError),
    #[error("writing the layer")]
    Layer(#[source] crate::layer::LayerError),
    #[error("unpacking the source image")]
    Fetch(#[source] Box<FetchError>),
    #[error("extracting a layer of a base several stages share")]
    Lower(#[source] Box<kiln_layers::lowers::LowerError>),
    #[error("pulling {image:?}")]
    Pull {
        image: String,
        #[source]
        source: Box<kiln_common::registry::RegistryError>,
    },
}

impl From<FetchError> for StepError {
    fn from(e: FetchError) -> Self {
        StepError::Fetch(Box::new(e))
    }
}

impl StepError {
    pub fn io(op: &'static str, path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| StepError::Io { op, path, source }
    }
}

/// Where a step is: what every [`BuildError::Step`] names.
#[derive(Debug, Clone, Copy)]
pub struct At<'a> {
    pub file: &'a str,
    pub ins: &'a Instruction,
}

impl At<'_> {
    pub fn err(&self, source: StepError) -> BuildError {
        BuildError::Step {
            file: self.file.to_string(),
            line: self.ins.line,
            instruction: self
                .ins
                .original
                .split_whitespace()
                .next()
                .unwrap_or("")
                .to_string(),
            source: Box::new(source),
        }
    }
}
