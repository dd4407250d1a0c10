//! The shape of the source tree, kept as the structure issue left it: the
//! modules of each crate read top-down (no module imports a name from a
//! module that imports it back, directly or around a longer cycle), and
//! no source file grows past 800 lines.
//!
//! Imports are read from the text (`crate::a::b`, `super::x`, and
//! `crate::{a, b::c}` groups), outside `#[cfg(test)]` modules and
//! comments; an edge between two modules is lifted to the siblings under
//! their common parent, so `engine::exec → isolation::spawn` counts as
//! `engine → isolation`. Parents and their own children may use each
//! other (a `mod.rs` re-exporting its children is not a cycle).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

const CRATES: &[&str] = &[
    "common",
    "layers",
    "executor",
    "cache-server",
    "warmer",
    "tests",
    "benches",
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The module a file under `src` defines (`a/mod.rs` and `a.rs` are `a`;
/// `lib.rs` and `main.rs` the crate root).
fn module_of(src: &Path, file: &Path) -> Module {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Module = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if m.last().is_some_and(|l| l == "mod") {
        m.pop();
    }
    if m == ["lib"] || m == ["main"] {
        m.clear();
    }
    m
}

/// The text of a file without comments and without its test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths named after `prefix::` in `code` (`crate::a::b` gives `[a, b]`;
/// `crate::{a, b::c}` gives `[a]` and `[b, c]`).
fn paths_after(code: &str, prefix: &str) -> Vec<Module> {
    let mut out = Vec::new();
    let pat = format!("{prefix}::");
    let mut rest = code;
    while let Some(i) = rest.find(&pat) {
        let before_ok = rest[..i].chars().next_back().is_none_or(|c| !is_ident(c));
        rest = &rest[i + pat.len()..];
        if !before_ok {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for part in group[..end].split(',') {
                let p: Module = part
                    .trim()
                    .split("::")
                    .map(|s| s.trim().to_string())
                    .filter(|s| !s.is_empty() && s != "self" && s != "*")
                    .collect();
                if !p.is_empty() {
                    out.push(p);
                }
            }
        } else {
            let mut p = Module::new();
            let mut s = rest;
            loop {
                let n = s.find(|c: char| !is_ident(c)).unwrap_or(s.len());
                if n == 0 {
                    break;
                }
                p.push(s[..n].to_string());
                match s[n..].strip_prefix("::") {
                    Some(more) if more.starts_with(is_ident) => s = more,
                    _ => break,
                }
            }
            out.push(p);
        }
    }
    out
}

/// The longest prefix of `path` that is a module of the crate.
fn resolve(modules: &BTreeSet<Module>, path: &[String]) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| modules.contains(m))
}

/// Module → the sibling-level modules it uses.
fn graph(src: &Path) -> BTreeMap<Module, BTreeSet<Module>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let texts: BTreeMap<Module, String> = files
        .iter()
        .map(|f| {
            (
                module_of(src, f),
                code(&std::fs::read_to_string(f).unwrap()),
            )
        })
        .collect();
    let modules: BTreeSet<Module> = texts.keys().cloned().collect();
    let mut g: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for (m, text) in &texts {
        let mut targets: Vec<Module> = paths_after(text, "crate")
            .iter()
            .filter_map(|p| resolve(&modules, p))
            .collect();
        let parent = &m[..m.len().saturating_sub(1)];
        for p in paths_after(text, "super") {
            let full: Module = parent.iter().cloned().chain(p).collect();
            targets.extend(resolve(&modules, &full));
        }
        for t in targets {
            let common = m.iter().zip(&t).take_while(|(a, b)| a == b).count();
            if common == m.len() || common == t.len() {
                continue; // an ancestor or a descendant
            }
            g.entry(m[..=common].to_vec())
                .or_default()
                .insert(t[..=common].to_vec());
        }
    }
    g
}

/// The strongly connected components of more than one module (Tarjan).
fn cycles(g: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<Module>> {
    struct State<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        out: Vec<Vec<Module>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        for w in s.g.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.stack.contains(&w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = s.stack.pop() {
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in g.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn the_cycle_finder_sees_a_cycle() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("b")).unwrap();
    std::fs::write(src.join("lib.rs"), "mod a; mod b; mod c;\n").unwrap();
    std::fs::write(src.join("a.rs"), "use crate::b::inner::X;\n").unwrap();
    std::fs::write(src.join("b/mod.rs"), "pub mod inner;\n").unwrap();
    std::fs::write(src.join("b/inner.rs"), "use crate::{c::Y, a};\n").unwrap();
    std::fs::write(
        src.join("c.rs"),
        "// use crate::a;\nuse super::a::Z;\n#[cfg(test)]\nmod t { use crate::b; }\n",
    )
    .unwrap();
    let found = cycles(&graph(&src));
    assert_eq!(found.len(), 1, "{found:?}");
    let mut names: Vec<String> = found[0].iter().map(|m| m.join("::")).collect();
    names.sort();
    assert_eq!(names, ["a", "b", "c"]);
    // Without the back edge (only in a comment and a test module) there is none.
    std::fs::write(src.join("c.rs"), "// use crate::a;\n").unwrap();
    std::fs::write(src.join("b/inner.rs"), "use crate::c::Y;\n").unwrap();
    assert!(cycles(&graph(&src)).is_empty());
}

#[test]
fn no_crate_has_an_import_cycle_between_modules() {
    let mut found = Vec::new();
    for c in CRATES {
        let src = workspace().join(c).join("src");
        for comp in cycles(&graph(&src)) {
            let names: Vec<String> = comp.iter().map(|m| m.join("::")).collect();
            found.push(format!("{c}: {}", names.join(" <-> ")));
        }
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
}

#[test]
fn no_source_file_is_past_800_lines() {
    let mut files = Vec::new();
    for c in CRATES {
        for sub in ["src", "tests", "benches"] {
            let d = workspace().join(c).join(sub);
            if d.is_dir() {
                rust_files(&d, &mut files);
            }
        }
    }
    assert!(files.len() > 100, "{} files", files.len());
    let long: Vec<String> = files
        .iter()
        .filter_map(|f| {
            let n = std::fs::read_to_string(f).unwrap().lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", f.display()))
        })
        .collect();
    assert!(long.is_empty(), "{}", long.join("\n"));
}
