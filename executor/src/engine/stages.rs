//! Which stages a build needs and the variables every stage starts from —
//! pure functions of the Dockerfile and the flags.

use super::config::Scope;
use super::error::{At, BuildError, StepError};
use super::mount_spec::MountKind;
use kiln_common::dockerfile::{Dockerfile, Kind};
use kiln_common::image::Platform;
use kiln_common::shell_lex::Lexer;
use std::collections::BTreeSet;

/// Global ARGs plus BuildKit's automatic platform args.
pub fn global_args(
    df: &Dockerfile,
    scope: &Scope,
    target: &Platform,
    file: &str,
) -> Result<Vec<(String, String)>, BuildError> {
    let host = Platform::host();
    let mut vars: Vec<(String, String)> = vec![
        ("TARGETPLATFORM".into(), target.to_string()),
        ("TARGETOS".into(), target.os.clone()),
        ("TARGETARCH".into(), target.architecture.clone()),
        (
            "TARGETVARIANT".into(),
            target.variant.clone().unwrap_or_default(),
        ),
        ("BUILDPLATFORM".into(), host.to_string()),
        ("BUILDOS".into(), host.os.clone()),
        ("BUILDARCH".into(), host.architecture.clone()),
        (
            "BUILDVARIANT".into(),
            host.variant.clone().unwrap_or_default(),
        ),
    ];
    for ins in &df.global_args {
        if let Kind::Arg(list) = &ins.kind {
            for (name, default) in list {
                let v = match (scope.build_arg(name), default) {
                    (Some(v), _) => v,
                    (None, Some(d)) => scope.lexer.process_word(d, &vars).map_err(|source| {
                        At { file, ins }.err(StepError::Expand {
                            word: d.clone(),
                            source,
                        })
                    })?,
                    (None, None) => String::new(),
                };
                vars.push((name.clone(), v));
            }
        }
    }
    Ok(vars)
}

/// The stages the target needs: its FROM chain, COPY --from sources and
/// the stages RUN mounts read.
pub fn needed_stages(
    df: &Dockerfile,
    target: usize,
    global: &[(String, String)],
    lexer: &Lexer,
) -> Vec<usize> {
    let mut need = BTreeSet::new();
    let mut todo = vec![target];
    while let Some(i) = todo.pop() {
        if need.insert(i) {
            todo.extend(stage_deps(df, i, global, lexer));
        }
    }
    need.into_iter().collect()
}

/// The earlier stages stage `i` reads: its `FROM`, `COPY --from` sources
/// and the stages its RUN mounts read (bind, or a cache's seed). A stage
/// may start once these are built.
pub fn stage_deps(
    df: &Dockerfile,
    i: usize,
    global: &[(String, String)],
    lexer: &Lexer,
) -> Vec<usize> {
    let g = global.to_vec();
    let s = &df.stages[i];
    let mut deps = BTreeSet::new();
    let base = lexer.process_word(&s.base, &g).unwrap_or_default();
    deps.extend(df.stage_index(&base).filter(|j| *j < i));
    let expand = |w: &str| lexer.process_word(w, &g).unwrap_or_else(|_| w.to_string());
    for ins in &s.instructions {
        let froms: Vec<String> = match &ins.kind {
            Kind::Copy(c) => c.flags.get("from").map(expand).into_iter().collect(),
            // A mount that does not parse fails later, naming its line.
            Kind::Run { flags, .. } => flags
                .all("mount")
                .into_iter()
                .filter_map(|m| super::mount_spec::parse(&expand(m)).ok())
                .filter_map(|m| match m.kind {
                    MountKind::Bind { from, .. } | MountKind::Cache { from, .. } => from,
                    _ => None,
                })
                .collect(),
            _ => Vec::new(),
        };
        deps.extend(
            froms
                .iter()
                .filter_map(|f| df.stage_index(f).filter(|j| *j < i)),
        );
    }
    deps.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unused_stages_are_skipped() {
        let df = kiln_common::dockerfile::parse(
            "FROM scratch AS a\nFROM scratch AS b\nFROM a AS c\nCOPY --from=b /x /x\nFROM scratch AS d\n",
            "Dockerfile",
        )
        .unwrap();
        let lexer = Lexer::new(df.escape);
        assert_eq!(needed_stages(&df, 2, &[], &lexer), vec![0, 1, 2]);
        assert_eq!(needed_stages(&df, 3, &[], &lexer), vec![3]);
        let df = kiln_common::dockerfile::parse(
            "FROM scratch AS a\nFROM scratch AS b\nFROM scratch AS c\n\
             RUN --mount=from=a,target=/a --mount=type=cache,target=/c,from=b true\n",
            "Dockerfile",
        )
        .unwrap();
        assert_eq!(needed_stages(&df, 2, &[], &lexer), vec![0, 1, 2]);
        assert_eq!(stage_deps(&df, 2, &[], &lexer), vec![0, 1]);
        assert_eq!(stage_deps(&df, 1, &[], &lexer), Vec::<usize>::new());
    }
}
