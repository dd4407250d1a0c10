//! The Dockerfile parser and shell-word expansion on arbitrary text: never
//! a panic; every instruction's words expand or fail with an error.
#![no_main]
use kiln_common::dockerfile;
use kiln_common::shell_lex::Lexer;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(df) = dockerfile::parse(text, "Dockerfile") else {
        return;
    };
    let lexer = Lexer::new(df.escape);
    let vars: Vec<(String, String)> = vec![("A".into(), "a b".into()), ("E".into(), String::new())];
    for ins in df
        .global_args
        .iter()
        .chain(df.stages.iter().flat_map(|s| s.instructions.iter()))
    {
        let _ = lexer.process_word(&ins.original, &vars);
        let _ = lexer.process_words(&ins.original, &vars);
    }
    for s in &df.stages {
        let _ = lexer.process_word(&s.base, &vars);
    }
});
