//! `--dryrun`: the Dockerfile parsed and every needed stage planned — ARGs
//! expanded, the config folded, each step's inputs resolved — without
//! pulling, executing or pushing anything. Base images are not pulled, so
//! their ENV/WORKDIR/USER are unknown to the plan (it says so).

use super::config::{FsOp, Scope, StageConfig, Step};
use super::error::{At, BuildError};
use super::{stages, Builder};
use crate::context::BuildContext;
use kiln_common::dockerfile::Dockerfile;
use kiln_common::image::ImageConfig;
use kiln_common::shell_lex::Lexer;
use std::collections::BTreeMap;

impl Builder {
    pub fn dry_run(&self) -> bool {
        self.opts.dry_run
    }

    /// The build's plan, one line per stage and step.
    pub async fn plan(&self) -> Result<Vec<String>, BuildError> {
        let ctx = BuildContext::prepare(
            &self.opts.context,
            self.opts.context_sub_path.as_deref(),
            &self.opts.git,
            self.work.path(),
        )
        .await?;
        let df_path = self.dockerfile_path(Some(&ctx.dir));
        let df = Dockerfile::from_path(&df_path)?;
        let file = df_path.display().to_string();
        let target = match &self.opts.target {
            Some(t) => df
                .stage_index(t)
                .ok_or_else(|| BuildError::NoTarget(t.clone()))?,
            None => df.stages.len() - 1,
        };
        let lexer = Lexer::new(df.escape);
        let scope = Scope {
            lexer,
            global: &[],
            build_args: &self.opts.build_args,
        };
        let global = stages::global_args(&df, &scope, &self.platform, &file)?;
        let needed = if self.opts.build_unused_stages {
            (0..=target).collect()
        } else {
            stages::needed_stages(&df, target, &global, &lexer)
        };
        let scope = Scope {
            global: &global,
            ..scope
        };
        let mut configs: BTreeMap<usize, ImageConfig> = BTreeMap::new();
        let mut out = Vec::new();
        for idx in needed {
            let stage = &df.stages[idx];
            let base = lexer
                .process_word(&stage.base, &global.to_vec())
                .unwrap_or_else(|_| stage.base.clone());
            let name = stage.name.clone().unwrap_or_else(|| idx.to_string());
            let from_stage = df
                .stage_index(&base)
                .filter(|i| *i < idx)
                .and_then(|i| configs.get(&i).cloned());
            let note = match (&from_stage, base.eq_ignore_ascii_case("scratch")) {
                (Some(_), _) | (None, true) => "",
                (None, false) => " (not pulled: its config is not part of this plan)",
            };
            out.push(format!("stage {name}: FROM {base}{note}"));
            let base_config = from_stage.unwrap_or_else(|| ImageConfig::scratch(&self.platform));
            let mut config = StageConfig::new(base_config, scope);
            for ins in &stage.instructions {
                let step = config
                    .apply(ins)
                    .map_err(|e| At { file: &file, ins }.err(e))?;
                let what = match step {
                    Step::Args | Step::Config => "config".to_string(),
                    Step::Fs(fs) => match fs.op {
                        FsOp::Run(r) => format!("run {:?} as {} in {}", r.argv, r.user, r.cwd),
                        FsOp::Copy(c) => {
                            format!("copy {} source(s) to {}", c.sources.len(), c.dest)
                        }
                        FsOp::MakeDirs { paths, .. } => format!("directories {}", paths.join(" ")),
                    },
                };
                let first = ins.original.lines().next().unwrap_or("");
                out.push(format!("  line {}: {first} → {what}", ins.line));
            }
            configs.insert(idx, config.image);
        }
        Ok(out)
    }
}
