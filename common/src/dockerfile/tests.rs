/// BuildKit decodes the first JSON value and ignores what follows;
/// non-string elements are an error; an invalid array is shell form.
#[test]
fn json_form_follows_buildkit() {
    let df = parse(
            "FROM scratch\nCMD [\"a\", \"b\"] # a comment\nENTRYPOINT [\"x\"] trailing\nRUN [not json]\n",
            "Dockerfile",
        )
        .unwrap();
    let ins = &df.stages[0].instructions;
    assert!(matches!(&ins[0].kind, Kind::Cmd(Cmd::Exec(v)) if v == &["a", "b"]));
    assert!(matches!(&ins[1].kind, Kind::Entrypoint(Cmd::Exec(v)) if v == &["x"]));
    assert!(matches!(&ins[2].kind, Kind::Run { cmd: Cmd::Shell(s), .. } if s == "[not json]"));
    assert!(parse("FROM scratch\nCMD [1, 2]\n", "Dockerfile").is_err());
}

use super::*;

#[test]
fn full_syntax() {
    let text = r#"# syntax=docker/dockerfile:1
# escape=\
ARG BASE=busybox
FROM --platform=linux/amd64 ${BASE} AS build
# a comment
RUN echo a \
    # inside continuation
    && echo b
RUN <<EOF
echo heredoc
EOF
COPY <<-"CONF" /etc/app.conf
	key=$VALUE
	CONF
ENV A=1 B="two words"
ENV LEGACY value with spaces
LABEL "com.example"="x y" other=z
COPY --from=build --chown=1:2 --chmod=0755 ["a b", "/dst/"]
HEALTHCHECK --interval=5s CMD ["true"]
ONBUILD RUN echo later
FROM build
CMD echo done
"#;
    let df = parse(text, "Dockerfile").unwrap();
    assert_eq!(df.syntax.as_deref(), Some("docker/dockerfile:1"));
    assert_eq!(df.global_args.len(), 1);
    assert_eq!(df.stages.len(), 2);
    let s = &df.stages[0];
    assert_eq!(s.name.as_deref(), Some("build"));
    assert_eq!(s.platform.as_deref(), Some("linux/amd64"));
    assert_eq!(s.base, "${BASE}");
    match &s.instructions[0].kind {
        Kind::Run {
            cmd: Cmd::Shell(c), ..
        } => assert_eq!(c, "echo a     && echo b"),
        k => panic!("{k:?}"),
    }
    assert_eq!(s.instructions[0].line, 6);
    match &s.instructions[1].kind {
        Kind::Run { heredocs, .. } => assert_eq!(heredocs[0].content, "echo heredoc\n"),
        k => panic!("{k:?}"),
    }
    match &s.instructions[2].kind {
        Kind::Copy(c) => {
            assert_eq!(c.heredocs[0].content, "key=$VALUE\n");
            assert!(!c.heredocs[0].expand);
            assert_eq!(c.dest, "/etc/app.conf");
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(
        s.instructions[3].kind,
        Kind::Env(vec![
            ("A".into(), "1".into()),
            ("B".into(), "\"two words\"".into())
        ])
    );
    assert_eq!(
        s.instructions[4].kind,
        Kind::Env(vec![("LEGACY".into(), "value with spaces".into())])
    );
    match &s.instructions[6].kind {
        Kind::Copy(c) => {
            assert_eq!(c.flags.get("from"), Some("build"));
            assert_eq!(c.srcs, vec!["a b"]);
            assert!(c.json);
        }
        k => panic!("{k:?}"),
    }
    assert_eq!(df.stage_index("BUILD"), Some(0));
}

#[test]
fn errors_name_the_line() {
    let e = parse("FROM scratch\n\nFOO bar\n", "Dockerfile").unwrap_err();
    assert_eq!(e.line, 3);
    assert!(e.to_string().starts_with("Dockerfile:3: FOO:"), "{e}");
    let e = parse("FROM a\nRUN <<EOF\necho\n", "D").unwrap_err();
    assert_eq!(e.line, 2);
    let e = parse("RUN x\n", "D").unwrap_err();
    assert!(e.message.contains("FROM"));
    let e = parse("FROM a\nCOPY --bogus=1 a b\n", "D").unwrap_err();
    assert!(e.message.contains("--bogus"));
    assert!(parse("# just a comment\n", "D").is_err());
}

#[test]
fn shift_operators_are_not_heredocs() {
    let df = parse(
        "FROM a\nRUN echo $((1<<2)) && cat <<<x\nRUN cat <<EOF\nbody\nEOF\n",
        "D",
    )
    .unwrap();
    let ins = &df.stages[0].instructions;
    assert_eq!(ins.len(), 2);
    match &ins[0].kind {
        Kind::Run { heredocs, .. } => assert!(heredocs.is_empty()),
        k => panic!("{k:?}"),
    }
    match &ins[1].kind {
        Kind::Run { heredocs, .. } => assert_eq!(heredocs[0].content, "body\n"),
        k => panic!("{k:?}"),
    }
}

#[test]
fn backtick_escape_directive() {
    let df = parse("# escape=`\nFROM scratch\nRUN a `\n  b\n", "D").unwrap();
    assert_eq!(df.escape, '`');
    match &df.stages[0].instructions[0].kind {
        Kind::Run {
            cmd: Cmd::Shell(c), ..
        } => assert_eq!(c, "a   b"),
        k => panic!("{k:?}"),
    }
}
