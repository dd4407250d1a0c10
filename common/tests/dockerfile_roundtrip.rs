//! Property test (issue 14): Dockerfiles generated from instructions, with
//! JSON and shell forms, continuation lines and comments, print → parse to
//! exactly those instructions; and printing the parsed instructions' text
//! again parses to the same thing (parse → print → parse).

use kiln_common::dockerfile::{parse, Cmd, Kind};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum G {
    Run(Vec<String>),
    RunExec(Vec<String>),
    Env(String, String),
    Workdir(String),
    User(String),
    Copy(Option<String>, Vec<String>, String),
    Expose(Vec<String>),
    Arg(String, Option<String>),
    Cmd(Vec<String>),
}

fn word() -> impl Strategy<Value = String> {
    "[a-z0-9_./-]{1,8}".prop_filter("no comment or flag start", |w| !w.starts_with('-'))
}

fn name() -> impl Strategy<Value = String> {
    "[A-Z][A-Z0-9_]{0,6}"
}

fn instruction() -> impl Strategy<Value = G> {
    prop_oneof![
        prop::collection::vec(word(), 1..5).prop_map(G::Run),
        prop::collection::vec("[ -~]{0,10}", 1..4).prop_map(G::RunExec),
        (name(), word()).prop_map(|(k, v)| G::Env(k, v)),
        word().prop_map(|w| G::Workdir(format!("/{w}"))),
        word().prop_map(G::User),
        (
            prop::option::of(word()),
            prop::collection::vec(word(), 1..3),
            word()
        )
            .prop_map(|(c, s, d)| G::Copy(c, s, format!("/{d}/"))),
        prop::collection::vec("[0-9]{2,5}(/tcp|/udp)?", 1..3).prop_map(G::Expose),
        (name(), prop::option::of(word())).prop_map(|(n, v)| G::Arg(n, v)),
        prop::collection::vec("[ -~]{0,10}", 1..3).prop_map(G::Cmd),
    ]
}

/// The text of one instruction; `split` puts a continuation line in.
fn print(g: &G, split: bool) -> String {
    let json = |v: &[String]| serde_json::to_string(v).unwrap();
    match g {
        G::Run(w) if split && w.len() > 1 => {
            format!("RUN {} \\\n    {}", w[0], w[1..].join(" "))
        }
        G::Run(w) => format!("RUN {}", w.join(" ")),
        G::RunExec(v) => format!("RUN {}", json(v)),
        G::Env(k, v) => format!("ENV {k}={v}"),
        G::Workdir(d) => format!("WORKDIR {d}"),
        G::User(u) => format!("USER {u}"),
        G::Copy(c, s, d) => {
            let chown = c
                .as_ref()
                .map(|c| format!("--chown={c} "))
                .unwrap_or_default();
            format!("COPY {chown}{} {d}", s.join(" "))
        }
        G::Expose(p) => format!("EXPOSE {}", p.join(" ")),
        G::Arg(n, Some(v)) => format!("ARG {n}={v}"),
        G::Arg(n, None) => format!("ARG {n}"),
        G::Cmd(v) => format!("CMD {}", json(v)),
    }
}

/// Whether a parsed instruction is the generated one.
fn same(g: &G, k: &Kind) -> bool {
    let squash = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    match (g, k) {
        (
            G::Run(w),
            Kind::Run {
                cmd: Cmd::Shell(s), ..
            },
        ) => squash(s) == w.join(" "),
        (
            G::RunExec(v),
            Kind::Run {
                cmd: Cmd::Exec(e), ..
            },
        ) => v == e,
        (G::Env(a, b), Kind::Env(pairs)) => pairs == &[(a.clone(), b.clone())],
        (G::Workdir(d), Kind::Workdir(x)) => d == x,
        (G::User(u), Kind::User(x)) => u == x,
        (G::Copy(c, s, d), Kind::Copy(spec)) => {
            spec.srcs == *s && spec.dest == *d && spec.flags.get("chown") == c.as_deref()
        }
        (G::Expose(p), Kind::Expose(x)) => p == x,
        (G::Arg(n, v), Kind::Arg(x)) => x == &[(n.clone(), v.clone())],
        (G::Cmd(v), Kind::Cmd(Cmd::Exec(e))) => v == e,
        _ => false,
    }
}

proptest! {
    #[test]
    fn generated_dockerfiles_parse_to_what_was_printed(
        body in prop::collection::vec((instruction(), any::<bool>(), any::<bool>()), 0..12)
    ) {
        let mut text = String::from("# syntax=docker/dockerfile:1\nFROM busybox AS base\n");
        for (g, split, comment) in &body {
            if *comment {
                text.push_str("# a comment\n\n");
            }
            text.push_str(&print(g, *split));
            text.push('\n');
        }
        let df = parse(&text, "Dockerfile").map_err(|e| TestCaseError::fail(format!("{e}\n{text}")))?;
        prop_assert_eq!(df.stages.len(), 1);
        let got = &df.stages[0].instructions;
        prop_assert_eq!(got.len(), body.len(), "{}", text);
        for ((g, _, _), ins) in body.iter().zip(got) {
            prop_assert!(same(g, &ins.kind), "{:?} parsed as {:?}\n{}", g, ins.kind, text);
        }
        // Printing the parsed instructions' own text parses the same again.
        let again: String = std::iter::once("FROM busybox AS base".to_string())
            .chain(got.iter().map(|i| i.original.clone()))
            .collect::<Vec<_>>()
            .join("\n");
        let df2 = parse(&again, "Dockerfile").map_err(|e| TestCaseError::fail(format!("{e}\n{again}")))?;
        let kinds = |d: &kiln_common::dockerfile::Dockerfile| d.stages[0].instructions.iter().map(|i| i.kind.clone()).collect::<Vec<_>>();
        prop_assert_eq!(kinds(&df), kinds(&df2));
    }
}
