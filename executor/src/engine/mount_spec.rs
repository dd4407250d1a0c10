//! `RUN --mount=…` as BuildKit's Dockerfile reference defines it, parsed
//! into a [`MountSpec`] — pure; staging the mount into a root is
//! `mounts.rs`'s job. Unknown types and options are errors, never ignored:
//! a mount silently dropped builds a different image than the one asked for.

use super::error::StepError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sharing {
    Shared,
    Private,
    Locked,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A directory kept between builds (and, with a shared cache, between
    /// pods); never part of a layer or of the cache key.
    ///
    /// `from`/`source`: a stage or image whose path seeds the cache the
    /// first time it is created (BuildKit's "base of the cache mount").
    Cache {
        id: String,
        sharing: Sharing,
        from: Option<String>,
        source: Option<String>,
    },
    /// A file from `--secret`; its value never reaches a layer, the config,
    /// the history, the cache key, a report or a log.
    Secret {
        id: String,
        required: bool,
        /// `env=VAR`: exposed as an environment variable instead of (or as
        /// well as) a file.
        env: Option<String>,
    },
    /// Content of the context, a stage or an image, read-only unless `rw`
    /// (and then writes are discarded); part of the cache key.
    Bind {
        from: Option<String>,
        source: String,
    },
    /// An empty directory, discarded; `size` (bytes) is a real tmpfs limit
    /// where the rung can mount one (namespaces).
    Tmpfs { size: Option<u64> },
    /// A socket relaying to the SSH agent given with `--ssh <id>=…`; the
    /// step's `SSH_AUTH_SOCK` points at the first one. Never in a layer or
    /// the cache key (BuildKit's rule: a changed key does not rebuild).
    Ssh { id: String, required: bool },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountSpec {
    pub kind: MountKind,
    /// Absolute path in the image; `None` only for an env-only secret.
    pub target: Option<String>,
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub readonly: bool,
}

impl MountSpec {
    /// What the cache key hashes: the options, never a secret's value or a
    /// cache's content (bind content is hashed separately).
    pub fn key_text(&self) -> String {
        format!("{self:?}")
    }
}

fn bad(m: String) -> StepError {
    StepError::Invalid(m)
}

/// Parses every `--mount` of one RUN (already word-expanded). An SSH mount
/// without a target gets BuildKit's `/run/buildkit/ssh_agent.<N>`, N
/// counting the RUN's SSH mounts.
pub fn parse_all<'a>(
    specs: impl IntoIterator<Item = &'a str>,
) -> Result<Vec<MountSpec>, StepError> {
    let mut out = Vec::new();
    let mut ssh = 0;
    for spec in specs {
        let mut m = parse(spec)?;
        if matches!(m.kind, MountKind::Ssh { .. }) {
            m.target
                .get_or_insert_with(|| format!("/run/buildkit/ssh_agent.{ssh}"));
            ssh += 1;
        }
        out.push(m);
    }
    Ok(out)
}

/// Parses one `--mount` value (already word-expanded).
pub fn parse(spec: &str) -> Result<MountSpec, StepError> {
    let mut kv: Vec<(String, Option<String>)> = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('=') {
            Some((k, v)) => kv.push((k.to_ascii_lowercase(), Some(v.to_string()))),
            None => kv.push((part.to_ascii_lowercase(), None)),
        }
    }
    let get = |names: &[&str]| {
        kv.iter()
            .rev()
            .find(|(k, _)| names.contains(&k.as_str()))
            .map(|(_, v)| v.clone().unwrap_or_else(|| "true".into()))
    };
    let kind = get(&["type"]).unwrap_or_else(|| "bind".into());
    let allowed: &[&str] = match kind.as_str() {
        "cache" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "sharing",
            "from",
            "source",
            "src",
            "mode",
            "uid",
            "gid",
            "ro",
            "readonly",
            "rw",
            "readwrite",
        ],
        "secret" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "required",
            "mode",
            "uid",
            "gid",
            "env",
        ],
        "bind" => &[
            "type",
            "target",
            "dst",
            "destination",
            "source",
            "src",
            "from",
            "ro",
            "readonly",
            "rw",
            "readwrite",
        ],
        "tmpfs" => &["type", "target", "dst", "destination", "size"],
        "ssh" => &[
            "type",
            "id",
            "target",
            "dst",
            "destination",
            "required",
            "mode",
            "uid",
            "gid",
        ],
        other => return Err(bad(format!("unknown mount type {other:?}"))),
    };
    if let Some((k, _)) = kv.iter().find(|(k, _)| !allowed.contains(&k.as_str())) {
        return Err(bad(format!("--mount=type={kind}: unknown option {k:?}")));
    }
    let flag = |names: &[&str]| -> Result<bool, StepError> {
        match get(names).as_deref() {
            None => Ok(false),
            Some("true" | "1" | "") => Ok(true),
            Some("false" | "0") => Ok(false),
            Some(v) => Err(bad(format!(
                "--mount {}={v:?}: expected true or false",
                names[0]
            ))),
        }
    };
    let number = |name: &str, radix: u32| -> Result<Option<u32>, StepError> {
        get(&[name])
            .map(|v| {
                u32::from_str_radix(&v, radix)
                    .map_err(|_| bad(format!("--mount {name}={v:?}: not a number")))
            })
            .transpose()
    };
    let target = get(&["target", "dst", "destination"]);
    if let Some(t) = &target {
        if !t.starts_with('/') {
            return Err(bad(format!(
                "--mount target {t:?} must be an absolute path"
            )));
        }
    }
    let source = get(&["source", "src"]);
    let rw = flag(&["rw", "readwrite"])?;
    let ro = flag(&["ro", "readonly"])?;
    let kind = match kind.as_str() {
        "cache" => {
            let from = get(&["from"]);
            if source.is_some() && from.is_none() {
                return Err(bad(
                    "--mount=type=cache: source= needs from=<stage or image>".into(),
                ));
            }
            let target = target
                .clone()
                .ok_or_else(|| bad("--mount=type=cache needs a target".into()))?;
            let sharing = match get(&["sharing"]).as_deref() {
                None | Some("shared") => Sharing::Shared,
                Some("private") => Sharing::Private,
                Some("locked") => Sharing::Locked,
                Some(s) => {
                    return Err(bad(format!(
                        "--mount sharing={s:?}: expected shared, private or locked"
                    )))
                }
            };
            MountKind::Cache {
                id: get(&["id"]).unwrap_or(target),
                sharing,
                from,
                source: source.clone(),
            }
        }
        "secret" => {
            let env = get(&["env"]);
            let id = get(&["id"])
                .or_else(|| {
                    target
                        .as_ref()
                        .and_then(|t| t.rsplit('/').next().map(String::from))
                })
                .ok_or_else(|| bad("--mount=type=secret needs an id or a target".into()))?;
            MountKind::Secret {
                id,
                required: flag(&["required"])?,
                env,
            }
        }
        "bind" => {
            if target.is_none() {
                return Err(bad("--mount=type=bind needs a target".into()));
            }
            MountKind::Bind {
                from: get(&["from"]),
                source: source.unwrap_or_else(|| "/".into()),
            }
        }
        "ssh" => MountKind::Ssh {
            id: get(&["id"]).unwrap_or_else(|| "default".into()),
            required: flag(&["required"])?,
        },
        _ => {
            if target.is_none() {
                return Err(bad("--mount=type=tmpfs needs a target".into()));
            }
            let size = get(&["size"])
                .map(|v| {
                    // BuildKit reads sizes with binary units (`64m` = 64 MiB).
                    let v = v.trim().to_ascii_lowercase();
                    let binary = match v.strip_suffix('b').unwrap_or(&v) {
                        n if n.ends_with(['k', 'm', 'g', 't']) => format!("{n}i"),
                        n => n.to_string(),
                    };
                    kiln_common::units::parse_size(&binary)
                        .ok_or_else(|| bad(format!("--mount=type=tmpfs size={v:?}: not a size")))
                })
                .transpose()?;
            MountKind::Tmpfs { size }
        }
    };
    let target = match (&kind, target) {
        (MountKind::Secret { id, env: None, .. }, None) => Some(format!("/run/secrets/{id}")),
        (_, t) => t,
    };
    let readonly = match kind {
        MountKind::Bind { .. } => !rw,
        _ => ro,
    };
    Ok(MountSpec {
        kind,
        target,
        mode: number("mode", 8)?,
        uid: number("uid", 10)?,
        gid: number("gid", 10)?,
        readonly,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buildkit_options() {
        let m = parse("type=cache,target=/root/.cache,sharing=locked,uid=1000,mode=0755").unwrap();
        assert_eq!(
            m.kind,
            MountKind::Cache {
                id: "/root/.cache".into(),
                sharing: Sharing::Locked,
                from: None,
                source: None,
            }
        );
        assert_eq!((m.uid, m.mode), (Some(1000), Some(0o755)));
        let s = parse("type=secret,id=token").unwrap();
        assert_eq!(s.target.as_deref(), Some("/run/secrets/token"));
        let e = parse("type=secret,id=token,env=TOKEN").unwrap();
        assert_eq!(e.target, None);
        assert_eq!(
            parse("type=tmpfs,target=/t,size=64m").unwrap().kind,
            MountKind::Tmpfs {
                size: Some(64 << 20)
            }
        );
        assert!(parse("type=tmpfs,target=/t,size=lots").is_err());
        let b = parse("target=/src,from=build,source=/out").unwrap();
        assert!(b.readonly);
        assert!(!parse("type=bind,target=/src,rw").unwrap().readonly);
        let ssh = parse_all(["type=ssh", "type=ssh,id=gh,required", "type=ssh,target=/a"]).unwrap();
        assert_eq!(
            ssh.iter().map(|m| m.target.as_deref()).collect::<Vec<_>>(),
            [
                Some("/run/buildkit/ssh_agent.0"),
                Some("/run/buildkit/ssh_agent.1"),
                Some("/a")
            ]
        );
        assert_eq!(
            ssh[1].kind,
            MountKind::Ssh {
                id: "gh".into(),
                required: true
            }
        );
        for wrong in [
            "type=cache",
            "type=cache,target=/c,colour=blue",
            "type=volume,target=/v",
            "type=tmpfs,target=relative",
            "type=ssh,env=X",
        ] {
            assert!(parse(wrong).is_err(), "{wrong}");
        }
    }
}
