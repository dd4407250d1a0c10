//! The stage graph runs concurrently: independent stages overlap, the
//! result is the sequential build's digest for digest, and a failing stage
//! stops the others.

mod common;
use common::*;
use kiln_testkit::*;

const GRAPH: &str = "FROM {base} AS a\n\
RUN sleep 2 && echo a > /a\n\
FROM {base} AS b\n\
RUN sleep 2 && echo b > /b\n\
FROM {base}\n\
COPY --from=a /a /a\n\
COPY --from=b /b /b\n";

/// Builds `dockerfile` into a layout with `--reproducible` and a report;
/// returns (manifest digest, report).
fn build_graph(dockerfile: &str, extra: &[&str]) -> (String, serde_json::Value) {
    let (digest, r, _) = build_graph_log(dockerfile, extra);
    (digest, r)
}

/// [`build_graph`], with the build's log.
fn build_graph_log(dockerfile: &str, extra: &[&str]) -> (String, serde_json::Value, String) {
    let ctx = context_with(dockerfile);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let layout = work.path().join("oci");
    let report = work.path().join("report.json");
    let mut args = vec![
        "--no-push",
        "--insecure-pull",
        "--reproducible",
        "--oci-layout-path",
        layout.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    let log = must_build(ctx.path(), &work.path().join("k"), &args);
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (r["manifest_digest"].as_str().unwrap().to_string(), r, log)
}

/// (start, end) of stage `stage`'s RUN step in a report.
fn run_span(r: &serde_json::Value, stage: &str) -> (f64, f64) {
    let s = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == stage && s["instruction"].as_str().unwrap().starts_with("RUN"))
        .unwrap_or_else(|| panic!("no RUN step of {stage}: {r}"));
    let start = s["started"].as_f64().unwrap();
    // The profile's phases account for the command within the step.
    let run = s["phases"]["run"].as_f64().unwrap();
    assert!(run > 0.0 && run <= s["seconds"].as_f64().unwrap(), "{s}");
    (start, start + s["seconds"].as_f64().unwrap())
}

#[test]
fn independent_stages_overlap_and_give_the_sequential_image() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let df = GRAPH.replace("{base}", &base);
    let (concurrent, r) = build_graph(&df, &[]);
    let (a, b) = (run_span(&r, "a"), run_span(&r, "b"));
    assert!(
        a.0 < b.1 && b.0 < a.1,
        "the stages' RUN steps did not overlap: a {a:?}, b {b:?}"
    );
    // Reports are in stage order whatever order stages finished in.
    let stages: Vec<&str> = r["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stage"].as_str().unwrap())
        .collect();
    let mut sorted = stages.clone();
    sorted.sort_by_key(|s| ["a", "b", "2"].iter().position(|x| x == s));
    assert_eq!(stages, sorted);

    let (sequential, r) = build_graph(&df, &["--max-parallel-stages", "1"]);
    let (a, b) = (run_span(&r, "a"), run_span(&r, "b"));
    assert!(a.1 <= b.0 + 0.05, "one at a time: a {a:?}, b {b:?}");
    assert_eq!(
        concurrent, sequential,
        "the image differs from the sequential build's"
    );
}

#[test]
fn a_failing_stage_stops_the_others() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let df = format!(
        "FROM {base} AS a\nRUN sleep 1 && exit 3\n\
         FROM {base} AS b\nRUN sleep 3\nRUN touch /never\n\
         FROM {base}\nCOPY --from=a /etc/passwd /a\nCOPY --from=b /etc/passwd /b\n"
    );
    let ctx = context_with(&df);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let out = build(ctx.path(), work.path(), &["--no-push", "--insecure-pull"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(":2: RUN") && err.contains("exit code 3"),
        "{err}"
    );
    // Stage b's step in flight finished (steps are logged as they end);
    // the next one never started.
    assert!(err.contains("[b] RUN sleep 3"), "{err}");
    assert!(!err.contains("touch /never"), "stage b went on: {err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// A stage waiting on another does not wait to resolve its base: every
/// base is resolved (and, without a cache, downloaded) from the start.
#[test]
fn bases_are_resolved_from_the_start() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let other = format!("{}/other:1", reg.addr);
    push_derived(&base, &other, &[("other", "o\n")]);
    let df = format!(
        "FROM {base} AS builder\nRUN sleep 2 && echo built > /out\n\
         FROM {other}\nCOPY --from=builder /out /out\n"
    );
    let ctx = context_with(&df);
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let err = must_build(ctx.path(), work.path(), &["--no-push", "--insecure-pull"]);
    let resolved = err
        .find(&format!("resolved {other}"))
        .unwrap_or_else(|| panic!("{err}"));
    let built = err
        .find("[builder] RUN sleep 2")
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        resolved < built,
        "{other} was resolved only after the builder stage:\n{err}"
    );
}

/// Three stages on one base (two builders and the final stage): the base
/// is extracted once and each root stacked on it (`shared_base.rs`), and
/// the image is, digest for digest, the one built from roots unpacked one
/// by one (the chroot rung cannot stack). The RUN steps change files of
/// the shared base in every way a layer records: an edit, a deletion, a
/// directory replaced whole.
#[test]
fn stages_on_one_base_share_one_extraction_and_give_the_same_image() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let df = format!(
        "FROM {base} AS a\n\
         RUN echo extra:x:5:5::/:/bin/sh >> /etc/passwd && rm /etc/group && echo a > /a\n\
         FROM {base} AS b\n\
         RUN rm -rf /var && mkdir -p /var/new && echo b > /var/new/b\n\
         FROM {base}\n\
         COPY --from=a /etc/passwd /a /from-a/\n\
         COPY --from=b /var/ /from-b/\n\
         RUN rm -rf /home && test ! -e /etc/passwd- && grep -q extra /from-a/passwd\n"
    );
    let (stacked, _, log) = build_graph_log(&df, &[]);
    assert_eq!(
        log.matches("root stacked on 1 shared layer(s) of 1")
            .count(),
        3,
        "{log}"
    );
    let (unpacked, _, log) = build_graph_log(&df, &["--isolation", "chroot"]);
    assert!(!log.contains("root stacked on"), "{log}");
    assert_eq!(stacked, unpacked, "a shared base changed the image");
}

/// A root made as a skeleton (a COPY-only tail) stacks on a shared base
/// another stage extracted, but never extracts it for itself: its
/// skeleton costs less than the whole base.
#[test]
fn a_skeleton_root_uses_a_shared_base_but_does_not_extract_it() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!(
        "FROM {base} AS a\nRUN echo a > /a\nFROM {base}\nCOPY --from=a /a /a\nCOPY f /f\n"
    ));
    let repo = format!("{}/shared/cache", reg.addr);
    let build = |f: &str| {
        write(ctx.path(), "f", f);
        let work = tempfile::tempdir_in("/dev/shm").unwrap();
        let args = [
            "--no-push",
            "--insecure-pull",
            "--cache",
            "--cache-repo",
            &repo,
        ];
        must_build(ctx.path(), work.path(), &args)
    };
    // Cold: stage a extracts the base, the final stage stacks on it.
    let log = build("1");
    assert_eq!(
        log.matches("root stacked on 1 shared layer(s) of 1")
            .count(),
        2,
        "{log}"
    );
    // Stage a from the cache: nothing extracted it, so the final stage's
    // skeleton is unpacked as it would be without another stage.
    let log = build("2");
    assert!(!log.contains("root stacked on"), "{log}");
    assert!(log.contains("root made without the contents of"), "{log}");
}
