//! A stage's configuration as the Dockerfile evolves it — pure: no IO, no
//! cache, no root. [`StageConfig::apply`] turns one instruction into a
//! [`Step`]: metadata instructions change the config only; RUN, COPY/ADD,
//! WORKDIR and VOLUME also yield an [`FsStep`] holding every input the step
//! needs, word-expanded once, so the cache key and the execution read the
//! same values.

use super::error::StepError;
use kiln_common::dockerfile::{Cmd, CopySpec, Heredoc, Instruction, Kind};
use kiln_common::image::{Healthcheck, ImageConfig};
use kiln_common::shell_lex::Lexer;
use std::collections::BTreeMap;

/// What one instruction asks of the build.
#[derive(Debug, Clone)]
pub enum Step {
    /// ARG: only the stage's variables changed; no history entry (as Docker).
    Args,
    /// Only the config changed: one empty history entry.
    Config,
    /// The root changes (or may): a layer, or an empty history entry.
    Fs(Box<FsStep>),
}

/// A filesystem step with its inputs resolved against the config in effect.
#[derive(Debug, Clone)]
pub struct FsStep {
    /// `RUN`, `COPY`, … — the key's `instruction` field.
    pub keyword: &'static str,
    /// The container config in effect (after the instruction), as the key hashes it.
    pub config_json: String,
    pub op: FsOp,
}

#[derive(Debug, Clone)]
pub enum FsOp {
    Run(RunStep),
    Copy(CopyStep),
    /// WORKDIR: directories that must exist (0755), owned by the USER in
    /// effect (`None`: root).
    MakeDirs {
        paths: Vec<String>,
        user: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct RunStep {
    pub argv: Vec<String>,
    /// The command as shown in messages.
    pub shown: String,
    pub env: Vec<(String, String)>,
    /// `USER` in effect (name or id, resolved in the root at execution).
    pub user: String,
    pub cwd: String,
    /// The stage's ARGs as `name=value`: RUN sees them, so the key covers them.
    pub build_args: Vec<String>,
    /// `RUN --mount=…`, in order.
    pub mounts: Vec<super::mount_spec::MountSpec>,
    /// `RUN --network=…`: part of the key (a step without network can
    /// produce something else), as in BuildKit.
    pub network: crate::isolation::Network,
}

#[derive(Debug, Clone)]
pub struct CopyStep {
    pub is_add: bool,
    /// Absolute; a trailing `/` means "into this directory".
    pub dest: String,
    /// As written (expanded), for messages.
    pub dest_raw: String,
    /// `--chown`/`--chmod`/`--link` as expanded, in that order, for the key.
    pub key_flags: Vec<(&'static str, String)>,
    pub chown: Option<String>,
    pub chmod: Option<u32>,
    /// `--from`: a stage name or index, or an image reference.
    pub from: Option<String>,
    /// ADD `--checksum`: what a downloaded URL must hash to.
    pub checksum: Option<kiln_common::Digest>,
    pub sources: Vec<CopySource>,
}

#[derive(Debug, Clone)]
pub enum CopySource {
    Heredoc {
        name: String,
        content: String,
    },
    /// ADD only.
    Url(String),
    /// A path in the context, the `--from` stage or the image.
    Path(String),
}

/// What an instruction's expansion can see beyond the stage itself.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    pub lexer: Lexer,
    /// Global ARGs (and the automatic platform ARGs), for `ARG name` redeclared in a stage.
    pub global: &'a [(String, String)],
    /// `--build-arg` values, last one winning.
    pub build_args: &'a [(String, Option<String>)],
}

impl Scope<'_> {
    /// `--build-arg name`: the given value, or the environment's for `--build-arg name`.
    pub fn build_arg(&self, name: &str) -> Option<String> {
        self.build_args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(k, v)| match v {
                Some(v) => v.clone(),
                None => std::env::var(k).unwrap_or_default(),
            })
    }
}

/// The image config and ARGs of one stage as its instructions apply.
#[derive(Debug, Clone)]
pub struct StageConfig<'a> {
    pub image: ImageConfig,
    /// ARGs declared in this stage, with their values.
    pub args: Vec<(String, String)>,
    /// A CMD was set in this stage (ENTRYPOINT then keeps it).
    cmd_set_here: bool,
    scope: Scope<'a>,
}

impl<'a> StageConfig<'a> {
    pub fn new(image: ImageConfig, scope: Scope<'a>) -> StageConfig<'a> {
        StageConfig {
            image,
            args: Vec::new(),
            cmd_set_here: false,
            scope,
        }
    }

    /// Variables for substitution: stage ARGs, overridden by ENV.
    fn vars(&self) -> Vec<(String, String)> {
        let mut v = self.args.clone();
        v.extend(self.image.config.env_pairs());
        v
    }

    fn word(&self, w: &str) -> Result<String, StepError> {
        self.word_in(w, &self.vars())
    }

    /// Expansion against a fixed set of variables: an instruction with
    /// several pairs sees the values from before it (Docker's ENV rule).
    fn word_in(&self, w: &str, vars: &[(String, String)]) -> Result<String, StepError> {
        self.scope
            .lexer
            .process_word(w, &vars.to_vec())
            .map_err(|source| StepError::Expand {
                word: w.to_string(),
                source,
            })
    }

    fn working_dir(&self) -> String {
        self.image
            .config
            .working_dir
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into())
    }

    /// Applies one instruction to the config; returns what else it asks for.
    pub fn apply(&mut self, ins: &Instruction) -> Result<Step, StepError> {
        let c = &mut self.image.config;
        match &ins.kind {
            Kind::Arg(list) => {
                let before = self.vars();
                let mut declared = Vec::new();
                for (name, default) in list {
                    // `ARG ${name}=…`: the name is expanded too, as Docker does.
                    let name = &self.word_in(name, &before)?;
                    let v = match self.scope.build_arg(name) {
                        Some(v) => v,
                        None => match default {
                            Some(d) => self.word_in(d, &before)?,
                            None => self
                                .scope
                                .global
                                .iter()
                                .rev()
                                .find(|(k, _)| k == name)
                                .map(|(_, v)| v.clone())
                                .unwrap_or_default(),
                        },
                    };
                    declared.push((name.clone(), v));
                }
                for (name, v) in declared {
                    self.args.retain(|(k, _)| *k != name);
                    self.args.push((name, v));
                }
                return Ok(Step::Args);
            }
            Kind::Env(pairs) => {
                let before = self.vars();
                let mut set = Vec::new();
                for (k, v) in pairs {
                    set.push((self.word_in(k, &before)?, self.word_in(v, &before)?));
                }
                for (k, v) in set {
                    self.image.config.set_env(&k, &v);
                }
            }
            Kind::Label(pairs) => {
                let before = self.vars();
                let mut set = Vec::new();
                for (k, v) in pairs {
                    set.push((self.word_in(k, &before)?, self.word_in(v, &before)?));
                }
                let labels = self.image.config.labels.get_or_insert_with(BTreeMap::new);
                labels.extend(set);
            }
            Kind::Maintainer(m) => self.image.author = Some(m.clone()),
            Kind::User(u) => {
                let u = self.word(u)?;
                self.image.config.user = Some(u);
            }
            Kind::Expose(ports) => {
                for p in ports {
                    let p = self.word(p)?;
                    let p = if p.contains('/') {
                        p.to_ascii_lowercase()
                    } else {
                        format!("{p}/tcp")
                    };
                    let exposed = self
                        .image
                        .config
                        .exposed_ports
                        .get_or_insert_with(BTreeMap::new);
                    exposed.insert(p, serde_json::json!({}));
                }
            }
            Kind::StopSignal(s) => {
                let s = self.word(s)?;
                self.image.config.stop_signal = Some(s);
            }
            Kind::Shell(v) => c.shell = Some(v.clone()),
            Kind::Onbuild(t) => c.on_build.get_or_insert_with(Vec::new).push(t.clone()),
            Kind::Cmd(cmd) => {
                self.image.config.cmd = Some(self.cmd_vec(cmd));
                self.cmd_set_here = true;
            }
            Kind::Entrypoint(cmd) => {
                let v = self.cmd_vec(cmd);
                let c = &mut self.image.config;
                c.entrypoint = if v.is_empty() { None } else { Some(v) };
                if !self.cmd_set_here {
                    // Docker: ENTRYPOINT resets a CMD inherited from the base.
                    c.cmd = None;
                }
            }
            Kind::Healthcheck(h) => {
                let hc = match &h.cmd {
                    None => Healthcheck {
                        test: vec!["NONE".into()],
                        ..Default::default()
                    },
                    Some(cmd) => healthcheck(cmd, &h.flags)?,
                };
                c.healthcheck = Some(hc);
            }
            Kind::Volume(vols) => {
                // BuildKit (Docker's builder): VOLUME only declares; it
                // creates no directory, and later RUN writes under it stay.
                for v in vols {
                    let v = self.word(v)?;
                    if v.is_empty() {
                        return Err(StepError::Invalid(
                            "VOLUME specified can not be an empty string".into(),
                        ));
                    }
                    let volumes = self.image.config.volumes.get_or_insert_with(BTreeMap::new);
                    volumes.insert(v, serde_json::json!({}));
                }
            }
            Kind::Workdir(w) => {
                let w = self.word(w)?;
                let new = if w.starts_with('/') {
                    w
                } else {
                    format!("{}/{}", self.working_dir().trim_end_matches('/'), w)
                };
                let new = normalize_abs(&new);
                self.image.config.working_dir = Some(new.clone());
                let user = self.image.config.user.clone().filter(|u| !u.is_empty());
                let op = FsOp::MakeDirs {
                    paths: vec![new],
                    user,
                };
                return Ok(self.fs_step(ins, op));
            }
            Kind::Run {
                cmd,
                heredocs,
                flags,
            } => {
                let run = self.run_step(cmd, heredocs, flags)?;
                return Ok(self.fs_step(ins, FsOp::Run(run)));
            }
            Kind::Copy(spec) => {
                let copy = self.copy_step(spec, false)?;
                return Ok(self.fs_step(ins, FsOp::Copy(copy)));
            }
            Kind::Add(spec) => {
                let copy = self.copy_step(spec, true)?;
                return Ok(self.fs_step(ins, FsOp::Copy(copy)));
            }
        }
        Ok(Step::Config)
    }

    fn fs_step(&self, ins: &Instruction, op: FsOp) -> Step {
        Step::Fs(Box::new(FsStep {
            keyword: ins.kind.keyword(),
            config_json: serde_json::to_string(&self.image.config).unwrap_or_default(),
            op,
        }))
    }

    fn shell(&self) -> Vec<String> {
        self.image
            .config
            .shell
            .clone()
            .unwrap_or_else(|| vec!["/bin/sh".into(), "-c".into()])
    }

    fn cmd_vec(&self, c: &Cmd) -> Vec<String> {
        match c {
            Cmd::Exec(v) => v.clone(),
            Cmd::Shell(s) => {
                let mut v = self.shell();
                v.push(s.clone());
                v
            }
        }
    }

    fn run_step(
        &self,
        cmd: &Cmd,
        heredocs: &[Heredoc],
        flags: &kiln_common::dockerfile::Flags,
    ) -> Result<RunStep, StepError> {
        let words = flags
            .all("mount")
            .into_iter()
            .map(|m| self.word(m))
            .collect::<Result<Vec<_>, _>>()?;
        let mounts = super::mount_spec::parse_all(words.iter().map(String::as_str))?;
        let network = match flags.get("network") {
            Some(n) => self.word(n)?.parse().map_err(StepError::Invalid)?,
            None => crate::isolation::Network::Default,
        };
        match flags
            .get("security")
            .map(|n| self.word(n))
            .transpose()?
            .as_deref()
        {
            None | Some("sandbox") => {}
            Some(other) => {
                return Err(StepError::Invalid(format!(
                    "RUN --security={other} is not built (sandbox is)"
                )))
            }
        }
        let (argv, shown) = match cmd {
            Cmd::Exec(v) if v.is_empty() => {
                return Err(StepError::Invalid("RUN with an empty command".into()))
            }
            Cmd::Exec(v) => (v.clone(), v.join(" ")),
            Cmd::Shell(s) => {
                let text = run_script(s, heredocs);
                let mut v = self.shell();
                v.push(text.clone());
                (v, text)
            }
        };
        let user = self
            .image
            .config
            .user
            .clone()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".into());
        Ok(RunStep {
            argv,
            shown,
            env: self.run_env(),
            user,
            cwd: self.working_dir(),
            build_args: self.args.iter().map(|(a, b)| format!("{a}={b}")).collect(),
            mounts,
            network,
        })
    }

    /// RUN's environment: build args are visible; ENV wins over an ARG of the same name.
    fn run_env(&self) -> Vec<(String, String)> {
        let cfg_env = self.image.config.env_pairs();
        let mut env: Vec<(String, String)> = self
            .args
            .iter()
            .filter(|(k, _)| !cfg_env.iter().any(|(e, _)| e == k))
            .cloned()
            .collect();
        env.extend(cfg_env);
        if !env.iter().any(|(k, _)| k == "PATH") {
            env.push((
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ));
        }
        env
    }

    fn copy_step(&self, spec: &CopySpec, is_add: bool) -> Result<CopyStep, StepError> {
        let dest_raw = self.word(&spec.dest)?;
        let dest = copy_dest(&dest_raw, &self.working_dir());
        let mut key_flags = Vec::new();
        for f in ["chown", "chmod", "link", "checksum"] {
            if spec.flags.has(f) {
                key_flags.push((f, self.word(spec.flags.get(f).unwrap_or("true"))?));
            }
        }
        let chown = spec.flags.get("chown").map(|c| self.word(c)).transpose()?;
        let chmod = match spec.flags.get("chmod") {
            Some(m) => Some(u32::from_str_radix(&self.word(m)?, 8).map_err(|_| {
                StepError::Invalid(format!("invalid --chmod {m:?}: expected octal"))
            })?),
            None => None,
        };
        let from = spec.flags.get("from").map(|f| self.word(f)).transpose()?;
        let checksum = match spec.flags.get("checksum") {
            Some(c) => Some(self.word(c)?.parse().map_err(|_| {
                StepError::Invalid(format!("invalid --checksum {c:?}: expected sha256:<hex>"))
            })?),
            None => None,
        };
        let mut sources = Vec::new();
        for src in &spec.srcs {
            if let Some(h) = heredoc_for(src, &spec.heredocs) {
                let content = if h.expand {
                    self.word(&h.content).unwrap_or_else(|_| h.content.clone())
                } else {
                    h.content.clone()
                };
                sources.push(CopySource::Heredoc {
                    name: h.name.clone(),
                    content,
                });
                continue;
            }
            let s = self.word(src)?;
            if s.starts_with("http://") || s.starts_with("https://") {
                if !is_add {
                    return Err(StepError::Invalid(format!(
                        "source can't be a URL for COPY: {s} (use ADD)"
                    )));
                }
                sources.push(CopySource::Url(s));
            } else {
                sources.push(CopySource::Path(s));
            }
        }
        Ok(CopyStep {
            is_add,
            dest,
            dest_raw,
            key_flags,
            chown,
            chmod,
            from,
            checksum,
            sources,
        })
    }
}

fn healthcheck(
    cmd: &Cmd,
    flags: &kiln_common::dockerfile::Flags,
) -> Result<Healthcheck, StepError> {
    let test = match cmd {
        Cmd::Exec(v) => std::iter::once("CMD".to_string())
            .chain(v.iter().cloned())
            .collect(),
        Cmd::Shell(s) => vec!["CMD-SHELL".to_string(), s.clone()],
    };
    let dur = |n: &str| -> Result<Option<i64>, StepError> {
        flags
            .get(n)
            .map(|v| {
                kiln_common::duration::parse(v)
                    .map(|d| d.as_nanos() as i64)
                    .map_err(|e| StepError::Parse {
                        what: format!("--{n}"),
                        source: Box::new(e),
                    })
            })
            .transpose()
    };
    Ok(Healthcheck {
        test,
        interval: dur("interval")?,
        timeout: dur("timeout")?,
        start_period: dur("start-period")?,
        start_interval: dur("start-interval")?,
        retries: flags
            .get("retries")
            .map(|r| {
                r.parse::<i64>().map_err(|e| StepError::Parse {
                    what: "--retries".into(),
                    source: Box::new(e),
                })
            })
            .transpose()?,
    })
}

/// The script a shell-form RUN executes, heredocs included.
fn run_script(s: &str, heredocs: &[Heredoc]) -> String {
    if heredocs.len() == 1
        && s.trim()
            .trim_start_matches("<<-")
            .trim_start_matches("<<")
            .trim_matches(['"', '\''])
            == heredocs[0].name
    {
        // `RUN <<EOF`: the body is the script.
        heredocs[0].content.clone()
    } else if heredocs.is_empty() {
        s.to_string()
    } else {
        // `RUN cmd <<EOF`: let the shell feed the body, as written.
        let mut t = s.to_string();
        for h in heredocs {
            t.push('\n');
            t.push_str(&h.content);
            t.push_str(&h.name);
        }
        t
    }
}

/// COPY's destination made absolute against WORKDIR; `.` and a trailing `/`
/// mean "into this directory" and keep their trailing `/`.
fn copy_dest(dest_raw: &str, workdir: &str) -> String {
    let into_dir = dest_raw == "." || dest_raw.ends_with("/.");
    let dest = if dest_raw.starts_with('/') {
        dest_raw.to_string()
    } else {
        let joined = format!("{}/{}", workdir.trim_end_matches('/'), dest_raw);
        if dest_raw.ends_with('/') || into_dir {
            format!("{}/", normalize_abs(&joined))
        } else {
            normalize_abs(&joined)
        }
    };
    if into_dir {
        format!("{}/", dest.trim_end_matches('/'))
    } else {
        dest
    }
}

fn heredoc_for<'h>(src: &str, heredocs: &'h [Heredoc]) -> Option<&'h Heredoc> {
    let name = src
        .strip_prefix("<<")?
        .trim_start_matches('-')
        .trim_matches(['"', '\'']);
    heredocs.iter().find(|h| h.name == name)
}

fn normalize_abs(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    format!("/{}", out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_common::dockerfile::parse;

    /// The filesystem operation a step asks for.
    fn fs(s: &Step) -> &FsOp {
        match s {
            Step::Fs(f) => &f.op,
            other => panic!("not a filesystem step: {other:?}"),
        }
    }

    fn steps(df: &str, build_args: &[(String, Option<String>)]) -> (Vec<Step>, ImageConfig) {
        let df = parse(df, "Dockerfile").unwrap();
        let scope = Scope {
            lexer: Lexer::new(df.escape),
            global: &[],
            build_args,
        };
        let mut cfg = StageConfig::new(ImageConfig::default(), scope);
        let steps = df.stages[0]
            .instructions
            .iter()
            .map(|i| cfg.apply(i).unwrap())
            .collect();
        (steps, cfg.image)
    }

    #[test]
    fn paths_normalize() {
        assert_eq!(normalize_abs("/a/./b/../c/"), "/a/c");
        assert_eq!(copy_dest(".", "/app"), "/app/");
        assert_eq!(copy_dest("sub/", "/app"), "/app/sub/");
        assert_eq!(copy_dest("f", "/app/"), "/app/f");
        assert!(copy_dest("/abs/.", "/app").ends_with('/'));
    }

    #[test]
    fn config_evolves_without_io() {
        let (steps, img) = steps(
            "FROM scratch\nARG V=1\nENV A=$V B=x\nWORKDIR /w\nWORKDIR sub\nUSER app\n\
             RUN echo $A\nCOPY --chmod=640 a b/\nCMD [\"c\"]\nENTRYPOINT [\"e\"]\n",
            &[("V".into(), Some("7".into()))],
        );
        assert_eq!(img.config.working_dir.as_deref(), Some("/w/sub"));
        assert_eq!(img.config.env_pairs()[0], ("A".into(), "7".into()));
        // CMD set in this stage survives ENTRYPOINT.
        assert_eq!(img.config.cmd, Some(vec!["c".to_string()]));
        let FsOp::Run(run) = fs(&steps[5]) else {
            panic!("unexpected step {:?}", steps[5]);
        };
        assert_eq!(run.user, "app");
        assert_eq!(run.cwd, "/w/sub");
        assert_eq!(run.build_args, vec!["V=7".to_string()]);
        assert!(run.env.contains(&("A".into(), "7".into())));
        let FsOp::Copy(copy) = fs(&steps[6]) else {
            panic!("unexpected step {:?}", steps[6]);
        };
        assert_eq!(copy.dest, "/w/sub/b/");
        assert_eq!(copy.chmod, Some(0o640));
        assert!(matches!(steps[0], Step::Args));
        assert!(matches!(steps[1], Step::Config));
    }

    /// Docker's ENV reference: "the values from before the instruction";
    /// the same for LABEL and ARG. `ARG ${name}=…` expands the name.
    #[test]
    fn one_instruction_sees_the_values_from_before_it() {
        let (steps, img) = steps(
            "FROM scratch\nENV a=one\nENV a=two b=$a\nLABEL x=$a y=$b\nARG n=file3\n\
             ARG ${n}=copied.txt p=$n\nUSER alice\nWORKDIR /w\nVOLUME /v\n",
            &[],
        );
        let env = img.config.env_pairs();
        assert!(env.contains(&("a".into(), "two".into())));
        assert!(env.contains(&("b".into(), "one".into())), "{env:?}");
        let labels = img.config.labels.clone().unwrap();
        assert_eq!(labels["x"], "two");
        assert_eq!(labels["y"], "one");
        // ARG file3=copied.txt and p from the ARG before.
        let FsOp::MakeDirs { paths, user } = fs(&steps[6]) else {
            panic!("unexpected step {:?}", steps[6]);
        };
        assert_eq!(
            (paths.as_slice(), user.as_deref()),
            (&["/w".to_string()][..], Some("alice"))
        );
        // BuildKit: VOLUME only declares (no directory, no layer).
        assert!(matches!(steps[7], Step::Config), "{:?}", steps[7]);
        assert!(img.config.volumes.unwrap().contains_key("/v"));
    }

    #[test]
    fn arg_names_expand() {
        let df = parse(
            "FROM scratch\nARG n=file3\nARG ${n}=copied.txt p=$n\n",
            "Dockerfile",
        )
        .unwrap();
        let scope = Scope {
            lexer: Lexer::new(df.escape),
            global: &[],
            build_args: &[],
        };
        let mut cfg = StageConfig::new(ImageConfig::default(), scope);
        for i in &df.stages[0].instructions {
            cfg.apply(i).unwrap();
        }
        assert!(
            cfg.args.contains(&("file3".into(), "copied.txt".into())),
            "{:?}",
            cfg.args
        );
        assert!(
            cfg.args.contains(&("p".into(), "file3".into())),
            "{:?}",
            cfg.args
        );
    }

    #[test]
    fn rule_breaks_are_typed() {
        let df = parse("FROM scratch\nCOPY http://x/y /\n", "Dockerfile").unwrap();
        let scope = Scope {
            lexer: Lexer::new(df.escape),
            global: &[],
            build_args: &[],
        };
        let mut cfg = StageConfig::new(ImageConfig::default(), scope);
        let e = cfg.apply(&df.stages[0].instructions[0]).unwrap_err();
        assert!(matches!(e, StepError::Invalid(_)), "{e}");
    }
}
