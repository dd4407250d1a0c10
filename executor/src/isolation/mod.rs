//! Running RUN steps without touching anything but the build's own files.
//!
//! [`Isolation`] is the seam: the build engine asks it to run a command on a
//! root and gets back the exit status and what changed. `--isolation=auto`
//! climbs down a ladder of rungs, chosen once per build by [`select`] and
//! logged in one line that names the rung and why the stronger ones were not
//! available:
//!
//! 1. [`Namespaces`]: mount/pid/uts/ipc namespaces over an overlay whose
//!    upper directory *is* the step's diff (cost follows the change). Needs
//!    `CAP_SYS_ADMIN` and a seccomp profile that allows `unshare`/`mount`.
//!    When the work directory sits on overlayfs (which cannot host an upper
//!    dir) the build's directory gets a tmpfs of its own.
//! 2. [`InPlace`] (kaniko's model): the container's own `/` *is* the build
//!    root. Needs only root and a writable `/`: no mount, no chroot, no mknod,
//!    so it works with Docker's default capabilities and CRI-O's reduced set.
//!    RUN sees the container's real `/proc`, `/dev`, `/sys` and DNS files,
//!    which are never part of the image. The container's own files are put
//!    aside for the build and put back after it (see `in_place.rs`).
//! 3. [`Chroot`]: a private root with device nodes and DNS files provided
//!    around each step (kept out of the layer), for containers whose `/` is
//!    read-only. No `/proc`: mounting it needs `CAP_SYS_ADMIN`.

mod chroot;
mod in_place;
mod landlock;
mod namespaces;
mod network;
pub mod probe;
mod provided;
mod spawn;
pub mod spawner;
mod supervise;

pub use chroot::Chroot;
pub use in_place::{recover as recover_crashed_in_place, InPlace};
pub use namespaces::Namespaces;
pub use network::Network;
pub use probe::Environment;

use crate::snapshot::{Diff, SnapshotError};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error("starting {program:?}")]
    Spawn {
        program: String,
        #[source]
        source: io::Error,
    },
    #[error("preparing the sandbox in {path}")]
    Setup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The requested rung cannot run here; the text says what is missing and
    /// what would make it work.
    #[error("isolation {rung:?} is not available here: {why}")]
    Unavailable { rung: &'static str, why: String },
}

impl IsolationError {
    /// Maps an IO error while preparing or tearing down the sandbox in `path`.
    fn setup(path: &Path) -> impl Fn(io::Error) -> IsolationError + Copy + '_ {
        move |source| IsolationError::Setup {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// One command to run, as the container would see it.
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    /// Working directory inside the root; must exist.
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    /// `RUN --network`; `None` is enforced on every rung (`network.rs`).
    pub network: Network,
    /// Unix sockets listening in the root (absolute paths in the image):
    /// a rung that runs the step on another view of the root must keep
    /// them connectable (overlayfs does not pass a lower layer's socket
    /// through).
    pub sockets: Vec<String>,
    /// `RUN --mount=type=tmpfs` targets (absolute, present in the root as
    /// empty directories) and their size limits: a rung that can mount
    /// puts a real tmpfs there; the others leave the directory, which the
    /// build drops from the diff either way.
    pub tmpfs: Vec<(String, Option<u64>)>,
}

#[derive(Debug)]
pub struct RunOutcome {
    pub status: ExitStatus,
    /// The last lines of combined output, for error messages.
    pub tail: Vec<String>,
    /// What the command changed in the root (already applied to it).
    pub diff: Diff,
}

/// How RUN steps are executed. Implementations must never let a step see or
/// change the builder's own files, and must keep what they provide to the
/// step (`/proc`, devices, DNS files) out of the diff.
pub trait Isolation: Send + Sync {
    fn name(&self) -> &'static str;
    /// Runs `spec` with `root` as its `/`. `scratch` is an empty directory on the
    /// same filesystem as `root` for the isolation's own use. On return the
    /// root holds the command's changes and `diff` lists them; a non-zero exit
    /// is reported in `status`, not as an error.
    fn run(
        &self,
        root: &Path,
        scratch: &Path,
        spec: &RunSpec,
    ) -> Result<RunOutcome, IsolationError>;
    /// Where stage roots must be created, when the isolation needs them on a
    /// particular filesystem; `None`: anywhere in the build's work directory.
    fn roots_dir(&self) -> Option<&Path> {
        None
    }
    /// Whether `root` may itself be an overlay mount (warmed layers stacked
    /// under the build's upper dir, [`crate::lowers`]): true where RUN runs
    /// in an overlay of its own above the root, whose changes are then
    /// copied into it rather than renamed.
    fn stacks_on_overlay(&self) -> bool {
        false
    }
    /// Whether RUN steps of two stages may execute at the same time, each
    /// in its own root. The in-place rung has one `/` for every stage.
    fn concurrent_stages(&self) -> bool {
        true
    }
}

/// `--isolation`: which rung to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum IsolationKind {
    #[default]
    Auto,
    Namespaces,
    InPlace,
    Chroot,
}

impl IsolationKind {
    /// The flag's value, as `--isolation` takes it.
    pub fn name(self) -> &'static str {
        match self {
            IsolationKind::Auto => "auto",
            IsolationKind::Namespaces => "namespaces",
            IsolationKind::InPlace => "in-place",
            IsolationKind::Chroot => "chroot",
        }
    }
}

impl std::str::FromStr for IsolationKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "namespaces" | "oci" => Ok(Self::Namespaces),
            "in-place" | "kaniko" => Ok(Self::InPlace),
            "chroot" => Ok(Self::Chroot),
            _ => Err(format!(
                "unknown isolation {s:?}: expected auto, namespaces, in-place or chroot"
            )),
        }
    }
}

/// What the builder's setup needs to know to choose a rung.
#[derive(Debug, Clone, Default)]
pub struct SelectOptions {
    /// Paths that RUN must never see or change in the in-place rung (Kiln's
    /// own directories, credentials, `--ignore-path`).
    pub protected: Vec<PathBuf>,
    /// `--force`: allow the in-place rung outside a detected container.
    pub force: bool,
    /// `--snapshot-mode=full`: the rungs without an overlay walk the whole
    /// root after every RUN instead of following inotify's events.
    pub full_walks: bool,
}

/// The chosen rung and the one-line reason for the choice.
pub struct Selection {
    pub isolation: Box<dyn Isolation>,
    pub reason: String,
    /// A tmpfs mounted over the build directory for the overlay's upper
    /// dirs; unmounted when dropped.
    pub tmpfs: Option<probe::Mounted>,
}

/// Reads what this process may do and fails before anything is written when
/// no rung can work at all (not root and without the capabilities any rung
/// needs), with one error that names what is missing and what would make it
/// work. The environment it returns is what [`select`] decides on.
pub fn precheck(kind: IsolationKind) -> Result<Environment, IsolationError> {
    let env = Environment::read();
    if env.euid == 0 || env.has_cap(probe::CAP_SYS_ADMIN) || env.has_cap(probe::CAP_SYS_CHROOT) {
        return Ok(env);
    }
    Err(IsolationError::Unavailable {
        rung: kind.name(),
        why: format!(
            "namespaces need CAP_SYS_ADMIN, in-place needs uid 0, chroot needs \
             CAP_SYS_CHROOT, and this process (uid {}) has none of them (CapEff {:#x}). {}",
            env.euid,
            env.caps,
            env.remedy()
        ),
    })
}

/// Picks the rung for a build whose private directory is `build_dir`.
pub fn select(
    kind: IsolationKind,
    env: &Environment,
    build_dir: &Path,
    opts: &SelectOptions,
) -> Result<Selection, IsolationError> {
    let mut refused = Vec::new();
    // In the user namespace Kiln made for itself only the namespaces rung
    // can work: the others act on the container's own files, which are
    // not its own there.
    if kiln_layers::ids::active()
        && !matches!(kind, IsolationKind::Auto | IsolationKind::Namespaces)
    {
        return Err(IsolationError::Unavailable {
            rung: kind.name(),
            why: "as a user other than root Kiln builds only on the namespaces rung, in a \
                  user namespace of its own"
                .into(),
        });
    }
    if matches!(kind, IsolationKind::Auto | IsolationKind::Namespaces) {
        match probe::namespaces(build_dir, env) {
            Ok(tmpfs) => {
                let reason = match &tmpfs {
                    Some(_) => format!(
                        "work directory {} is on overlayfs, so the build directory got its own tmpfs",
                        build_dir.display()
                    ),
                    None => "namespaces and overlayfs available".to_string(),
                };
                return Ok(Selection {
                    isolation: Box::new(Namespaces),
                    reason,
                    tmpfs,
                });
            }
            Err(why) if kind == IsolationKind::Namespaces => {
                return Err(IsolationError::Unavailable {
                    rung: "namespaces",
                    why,
                })
            }
            Err(why) => refused.push(format!("namespaces: {why}")),
        }
    }
    if matches!(kind, IsolationKind::Auto | IsolationKind::InPlace) {
        match InPlace::open(build_dir, env, opts) {
            Ok(i) => {
                return Ok(Selection {
                    isolation: Box::new(i),
                    reason: refused.join("; "),
                    tmpfs: None,
                })
            }
            Err(why) if kind == IsolationKind::InPlace => {
                return Err(IsolationError::Unavailable {
                    rung: "in-place",
                    why,
                })
            }
            Err(why) => refused.push(format!("in-place: {why}")),
        }
    }
    match probe::chroot(env) {
        Ok(()) => Ok(Selection {
            isolation: Box::new(Chroot::new(env, build_dir, opts.full_walks)),
            reason: refused.join("; "),
            tmpfs: None,
        }),
        Err(why) => {
            refused.push(format!("chroot: {why}"));
            Err(IsolationError::Unavailable {
                rung: if kind == IsolationKind::Chroot {
                    "chroot"
                } else {
                    "auto"
                },
                why: format!("{}. {}", refused.join("; "), env.remedy()),
            })
        }
    }
}
