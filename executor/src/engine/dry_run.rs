//! `--dryrun`: the Dockerfile parsed and every needed stage planned — ARGs
//! expanded, the config folded, each step's inputs resolved — without
//! pulling, executing or pushing anything. Base images are not pulled, so
//! their ENV/WORKDIR/USER are unknown to the plan (it says so).

use super::config::{FsOp, Scope, StageConfig, Step};
use super::error::{At, BuildError};
use super::Builder;
use kiln_common::image::ImageConfig;
use std::collections::BTreeMap;

impl Builder {
    pub fn dry_run(&self) -> bool {
        self.opts.dry_run
    }

    /// The build's plan, one line per stage and step.
    pub async fn plan(&self) -> Result<Vec<String>, BuildError> {
        let p = self.parse().await?;
        let (df, file, lexer, global) = (&p.df, &p.file, p.lexer, &p.global);
        let scope = Scope {
            lexer,
            global,
            build_args: &self.opts.build_args,
        };
        let mut configs: BTreeMap<usize, ImageConfig> = BTreeMap::new();
        let mut out = Vec::new();
        for &idx in &p.needed {
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
                let step = config.apply(ins).map_err(|e| At { file, ins }.err(e))?;
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
