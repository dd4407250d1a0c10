//! Build contexts: a local directory, `tar://` (a file or `stdin`, gzip or
//! not), `dir://` and `git://` (cloned with the `git` program). Every kind ends
//! up as a local directory that COPY reads from.

use crate::dockerignore::DockerIgnore;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("build context {context:?}: {message}")]
    Invalid { context: String, message: String },
    #[error("build context {context:?}")]
    Io { context: String, source: io::Error },
    #[error("build context {context:?}: unpacking")]
    Unpack {
        context: String,
        source: kiln_layers::extract::ExtractError,
    },
    #[error("build context {context:?}: git: {message}")]
    Git { context: String, message: String },
    #[error("context scheme {scheme}:// is not supported")]
    Unsupported { scheme: String },
    #[error("build context {context:?}: object store: {message}")]
    ObjectStore { context: String, message: String },
}

pub struct BuildContext {
    pub dir: PathBuf,
    pub ignore: DockerIgnore,
    _temp: Option<tempfile::TempDir>,
}

impl BuildContext {
    /// Prepares `spec` (kaniko's `--context`), unpacking into `work` when needed;
    /// `sub_path` is `--context-sub-path`. `.dockerignore` is read by
    /// [`Self::load_ignore`] once the Dockerfile is known, since it may have
    /// come out of the context archive and have an ignore file of its own.
    pub async fn prepare(
        spec: &str,
        sub_path: Option<&str>,
        git: &GitOptions,
        work: &Path,
    ) -> Result<BuildContext, ContextError> {
        let io_err = |source| ContextError::Io {
            context: spec.to_string(),
            source,
        };
        let (dir, temp) = if let Some(rest) = spec.strip_prefix("tar://") {
            let t = tempfile::Builder::new()
                .prefix("context-")
                .tempdir_in(work)
                .map_err(io_err)?;
            let stats = if rest == "stdin" {
                kiln_layers::extract::apply_archive(t.path(), io::stdin().lock())
            } else {
                let f = std::fs::File::open(rest).map_err(io_err)?;
                kiln_layers::extract::apply_archive(t.path(), f)
            };
            stats.map_err(|source| ContextError::Unpack {
                context: spec.to_string(),
                source,
            })?;
            (t.path().to_path_buf(), Some(t))
        } else if let Some(rest) = spec.strip_prefix("git://") {
            let t = tempfile::Builder::new()
                .prefix("context-")
                .tempdir_in(work)
                .map_err(io_err)?;
            git_clone(spec, rest, git, t.path())?;
            (t.path().to_path_buf(), Some(t))
        } else if spec.starts_with("s3://")
            || spec.starts_with("gs://")
            || spec.starts_with("az://")
        {
            let t = tempfile::Builder::new()
                .prefix("context-")
                .tempdir_in(work)
                .map_err(io_err)?;
            let archive = t.path().join(".context.tar");
            fetch_object(spec, &archive).await?;
            let f = std::fs::File::open(&archive).map_err(io_err)?;
            let root = t.path().join("root");
            std::fs::create_dir(&root).map_err(io_err)?;
            kiln_layers::extract::apply_archive(&root, f).map_err(|source| {
                ContextError::Unpack {
                    context: spec.to_string(),
                    source,
                }
            })?;
            let _ = std::fs::remove_file(&archive);
            (root, Some(t))
        } else if let Some(rest) = spec.strip_prefix("dir://") {
            (PathBuf::from(rest), None)
        } else if let Some((scheme, _)) = spec.split_once("://") {
            return Err(ContextError::Unsupported {
                scheme: scheme.to_string(),
            });
        } else {
            (PathBuf::from(spec), None)
        };
        let dir = match sub_path {
            Some(s) => dir.join(s.trim_start_matches('/')),
            None => dir,
        };
        if !dir.is_dir() {
            return Err(ContextError::Invalid {
                context: spec.to_string(),
                message: format!("{} is not a directory", dir.display()),
            });
        }
        let dir = dir.canonicalize().map_err(io_err)?;
        Ok(BuildContext {
            dir,
            ignore: DockerIgnore::default(),
            _temp: temp,
        })
    }

    /// Reads `.dockerignore` (or `<Dockerfile>.dockerignore`).
    pub fn load_ignore(&mut self, dockerfile: &Path) -> Result<(), ContextError> {
        self.ignore =
            DockerIgnore::load(&self.dir, Some(dockerfile)).map_err(|source| ContextError::Io {
                context: self.dir.display().to_string(),
                source,
            })?;
        Ok(())
    }
}

/// Streams a context archive (tar, optionally gzip/zstd) from an object
/// store to `dest`. Credentials and endpoints come from the standard
/// environment (`AWS_*` including web identity, `GOOGLE_*`, `AZURE_*`).
async fn fetch_object(spec: &str, dest: &Path) -> Result<(), ContextError> {
    use futures_util::StreamExt;
    use object_store::ObjectStoreExt;
    use std::io::Write;
    let err = |message: String| ContextError::ObjectStore {
        context: spec.to_string(),
        message,
    };
    let (dir, file) = spec
        .rsplit_once('/')
        .filter(|(d, f)| {
            !f.is_empty() && d.contains("://") && !d.ends_with(':') && !d.ends_with("//")
        })
        .ok_or_else(|| err("expected <scheme>://<bucket>/<path to a tar or tar.gz>".into()))?;
    let (store, prefix) =
        kiln_common::objstore::open(dir, kiln_common::objstore::Patience::Patient)
            .map_err(|e| err(e.to_string()))?;
    let key = format!("{prefix}/{file}");
    let path = object_store::path::Path::from(key.trim_start_matches('/'));
    let mut stream = store
        .get(&path)
        .await
        .map_err(|e| err(e.to_string()))?
        .into_stream();
    let mut f =
        std::io::BufWriter::new(std::fs::File::create(dest).map_err(|e| err(e.to_string()))?);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| err(e.to_string()))?;
        f.write_all(&chunk).map_err(|e| err(e.to_string()))?;
    }
    f.flush().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// kaniko's `--git` options for git contexts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitOptions {
    /// Used when the context URL names no ref.
    pub branch: Option<String>,
    pub single_branch: bool,
    pub recurse_submodules: bool,
}

impl std::str::FromStr for GitOptions {
    type Err = String;
    /// `branch=main,single-branch=true,recurse-submodules=false`, as kaniko.
    fn from_str(s: &str) -> Result<GitOptions, String> {
        let mut g = GitOptions::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?}: expected key=value"))?;
            let yes = || match v.to_ascii_lowercase().as_str() {
                "true" | "1" | "t" => Ok(true),
                "false" | "0" | "f" => Ok(false),
                _ => Err(format!("{k}={v:?}: expected true or false")),
            };
            match k {
                "branch" => g.branch = Some(v.to_string()),
                "single-branch" => g.single_branch = yes()?,
                "recurse-submodules" => g.recurse_submodules = yes()?,
                _ => return Err(format!("unknown --git option {k:?}")),
            }
        }
        Ok(g)
    }
}

/// kaniko's git context: `git://host/org/repo.git#ref#commit`; a token comes
/// from `GIT_TOKEN`, or `GIT_USERNAME` / `GIT_PASSWORD`.
fn git_clone(spec: &str, rest: &str, git: &GitOptions, dest: &Path) -> Result<(), ContextError> {
    let mut parts = rest.split('#');
    let repo = parts.next().unwrap_or_default();
    let reference = parts
        .next()
        .filter(|s| !s.is_empty())
        .or(git.branch.as_deref());
    let commit = parts.next().filter(|s| !s.is_empty());
    let user = std::env::var("GIT_USERNAME").ok();
    let secret = std::env::var("GIT_TOKEN")
        .ok()
        .or_else(|| std::env::var("GIT_PASSWORD").ok());
    let url = match (&user, &secret) {
        (Some(u), Some(p)) => format!("https://{u}:{p}@{repo}"),
        (None, Some(t)) => format!("https://{t}@{repo}"),
        _ => format!("https://{repo}"),
    };
    let err = |message: String| ContextError::Git {
        context: spec.to_string(),
        message,
    };
    let mut clone = Command::new("git");
    clone.arg("clone").arg("--quiet");
    if commit.is_none() {
        clone.arg("--depth=1");
    } else if git.single_branch {
        clone.arg("--single-branch");
    }
    if git.recurse_submodules {
        clone.arg("--recurse-submodules");
    }
    if let Some(r) = reference {
        clone.arg("--branch").arg(
            r.trim_start_matches("refs/heads/")
                .trim_start_matches("refs/tags/"),
        );
    }
    clone.arg(&url).arg(dest);
    let out = clone.output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        // Never echo the URL: it may carry the token.
        return Err(err(format!(
            "clone of {repo} failed: {}",
            String::from_utf8_lossy(&out.stderr).replace(&url, repo)
        )));
    }
    if let Some(c) = commit {
        let out = Command::new("git")
            .arg("-C")
            .arg(dest)
            .args(["checkout", "--quiet", c])
            .output()
            .map_err(|e| err(e.to_string()))?;
        if !out.status.success() {
            return Err(err(format!(
                "checkout {c}: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_options_parse_like_kaniko() {
        let g: GitOptions = "branch=release,single-branch=true,recurse-submodules=1"
            .parse()
            .unwrap();
        assert_eq!(g.branch.as_deref(), Some("release"));
        assert!(g.single_branch && g.recurse_submodules);
        assert!("depth=1".parse::<GitOptions>().is_err());
        assert!("single-branch=maybe".parse::<GitOptions>().is_err());
    }
}
