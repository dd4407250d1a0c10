//! The layer cache against a real docker-registry as the cache repo. Every
//! build runs from a fresh work directory, so the remote cache is the only
//! state shared between builds. Each scenario builds, changes one input,
//! builds again and checks at which line the second build first re-executes
//! (Docker's documented cache rules), and that every later step re-executes.

mod common;
use common::*;
use kiln_testkit::*;
use std::path::Path;

const MAIN: &str = "FROM {BASE}
ARG EARLY=1
RUN echo early $EARLY > /early
COPY app/ /app/
ENV MODE=a
RUN echo $MODE > /mode
ARG LATE=1
RUN echo late $LATE > /late
COPY tail.txt /tail.txt
RUN cat /tail.txt > /tail-copy
";

fn main_context(dir: &Path, base: &str) {
    write(dir, "Dockerfile", &MAIN.replace("{BASE}", base));
    write(dir, "app/a.txt", "a\n");
    write(dir, "app/b.sh", "echo b\n");
    write(dir, "tail.txt", "tail\n");
    write(dir, "unused.txt", "unused\n");
    write(dir, "ignored.log", "log\n");
    write(dir, ".dockerignore", "*.log\n");
}

struct Report {
    json: serde_json::Value,
}

impl Report {
    fn steps(&self) -> Vec<(u64, String, String)> {
        self.json["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|s| {
                Some((
                    s["line"].as_u64()?,
                    s["stage"].as_str()?.to_string(),
                    s["cache"].as_str()?.to_string(),
                ))
            })
            .collect()
    }
    /// (stage, line) of the first step that re-executed, per stage.
    fn first_miss(&self, stage: &str) -> Option<u64> {
        let steps: Vec<_> = self
            .steps()
            .into_iter()
            .filter(|(_, s, _)| s == stage)
            .collect();
        let first = steps
            .iter()
            .find(|(_, _, c)| c == "miss")
            .map(|(l, _, _)| *l);
        if let Some(f) = first {
            for (l, _, c) in &steps {
                if *l > f {
                    assert_eq!(
                        c,
                        "miss",
                        "line {l} should re-execute after the first miss at line {f}: {:?}",
                        self.steps()
                    );
                }
            }
        }
        first
    }
    fn u(&self, k: &str) -> u64 {
        self.json[k].as_u64().unwrap()
    }
}

fn cached_build(ctx: &Path, cache_repo: &str, extra: &[&str]) -> (Report, String) {
    let work = tempfile::tempdir().unwrap();
    let report = work.path().join("report.json");
    let mut args = vec![
        "--no-push",
        "--insecure-pull",
        "--insecure-registry",
        cache_repo.split('/').next().unwrap(),
        "--cache",
        "--cache-repo",
        cache_repo,
        "--report",
    ];
    let report_s = report.to_str().unwrap().to_string();
    args.push(&report_s);
    args.extend_from_slice(extra);
    let w2 = tempfile::tempdir().unwrap();
    let log = must_build(ctx, w2.path(), &args);
    let json = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    (Report { json }, log)
}

type Change = Box<dyn Fn(&Path, &Registry) -> Vec<String>>;

fn scenario(reg: &Registry, base: &str, name: &str, change: Change, expect: Option<u64>) {
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), base);
    let repo = format!("{}/cache-{name}", reg.addr);
    let (first, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(
        first.first_miss("0"),
        Some(3),
        "{name}: a cold build executes from its first step"
    );
    let extra = change(ctx.path(), reg);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let (second, log) = cached_build(ctx.path(), &repo, &extra);
    assert_eq!(
        second.first_miss("0"),
        expect,
        "{name}: first re-executed line\n{:?}\n{log}",
        second.steps()
    );
}

#[test]
fn first_reexecuted_step_follows_docker_cache_rules() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let cases: Vec<(&str, Change, Option<u64>)> = vec![
        ("nothing", Box::new(|_, _| vec![]), None),
        (
            "mtimes",
            Box::new(|d, _| {
                for f in ["app/a.txt", "app/b.sh", "tail.txt", "Dockerfile"] {
                    filetime::set_file_mtime(
                        d.join(f),
                        filetime::FileTime::from_unix_time(1_000_000, 0),
                    )
                    .unwrap();
                }
                vec![]
            }),
            None,
        ),
        (
            "ignored-file",
            Box::new(|d, _| {
                write(d, "ignored.log", "changed\n");
                vec![]
            }),
            None,
        ),
        (
            "uncopied-file",
            Box::new(|d, _| {
                write(d, "unused.txt", "changed\n");
                vec![]
            }),
            None,
        ),
        (
            "copied-content",
            Box::new(|d, _| {
                write(d, "app/a.txt", "changed\n");
                vec![]
            }),
            Some(4),
        ),
        (
            "copied-mode",
            Box::new(|d, _| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    d.join("app/b.sh"),
                    std::fs::Permissions::from_mode(0o755),
                )
                .unwrap();
                vec![]
            }),
            Some(4),
        ),
        (
            "new-file-in-copied-dir",
            Box::new(|d, _| {
                write(d, "app/new.txt", "new\n");
                vec![]
            }),
            Some(4),
        ),
        (
            "env-value",
            Box::new(|d, _| {
                let t = std::fs::read_to_string(d.join("Dockerfile"))
                    .unwrap()
                    .replace("ENV MODE=a", "ENV MODE=b");
                write(d, "Dockerfile", &t);
                vec![]
            }),
            Some(6),
        ),
        (
            "late-arg",
            Box::new(|_, _| vec!["--build-arg".into(), "LATE=2".into()]),
            Some(8),
        ),
        (
            "early-arg",
            Box::new(|_, _| vec!["--build-arg".into(), "EARLY=2".into()]),
            Some(3),
        ),
        (
            "run-text",
            Box::new(|d, _| {
                let t = std::fs::read_to_string(d.join("Dockerfile"))
                    .unwrap()
                    .replace("echo late $LATE", "echo later $LATE");
                write(d, "Dockerfile", &t);
                vec![]
            }),
            Some(8),
        ),
        (
            "copied-near-end",
            Box::new(|d, _| {
                write(d, "tail.txt", "changed\n");
                vec![]
            }),
            Some(9),
        ),
        (
            "renamed-file",
            Box::new(|d, _| {
                std::fs::rename(d.join("app/a.txt"), d.join("app/renamed.txt")).unwrap();
                vec![]
            }),
            Some(4),
        ),
    ];
    for (name, change, expect) in cases {
        scenario(&reg, &base, name, change, expect);
    }
}

#[test]
fn base_tag_moving_to_a_new_digest_misses_at_the_first_step() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "moving:latest");
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), &base);
    let repo = format!("{}/cache-moving", reg.addr);
    cached_build(ctx.path(), &repo, &[]);
    // Same tag, new content.
    let t = tempfile::tempdir().unwrap();
    busybox_rootfs(t.path());
    std::fs::write(t.path().join("etc/os-release"), "NAME=kiln-test-v2\n").unwrap();
    push_rootfs(t.path(), &base, &["sh"]);
    let (second, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(second.first_miss("0"), Some(3));
}

#[test]
fn copy_from_an_earlier_stage_follows_that_stage() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    write(
        ctx.path(),
        "Dockerfile",
        &format!("FROM {base} AS build\nCOPY lib/ /lib-src/\nRUN cat /lib-src/* > /built\nFROM {base}\nRUN echo start > /start\nCOPY --from=build /built /built\nRUN cat /built\n"),
    );
    write(ctx.path(), "lib/x", "x1\n");
    let repo = format!("{}/cache-multi", reg.addr);
    cached_build(ctx.path(), &repo, &[]);
    let (same, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(same.first_miss("build"), None);
    assert_eq!(same.first_miss("1"), None);
    write(ctx.path(), "lib/x", "x2\n");
    let (second, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(second.first_miss("build"), Some(2));
    assert_eq!(second.first_miss("1"), Some(6), "{:?}", second.steps());
}

/// Layer-blob GETs in a slice of the registry's access log.
fn layer_gets(log: &str, layers: &[String]) -> usize {
    log.lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
        .filter(|l| layers.iter().any(|d| l.contains(d.as_str())))
        .count()
}

#[test]
fn fully_cached_rebuild_moves_no_layer_bytes_and_gives_the_same_layers() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), &base);
    let repo = format!("{}/app/cache", reg.addr);
    let dest = format!("{}/app:v1", reg.addr);
    let push = ["--destination", dest.as_str(), "--insecure"];
    let run = |args: &[&str]| {
        let work = tempfile::tempdir().unwrap();
        let report = work.path().join("r.json");
        let mut a = vec![
            "--cache",
            "--insecure-pull",
            "--report",
            report.to_str().unwrap(),
        ];
        a.extend_from_slice(args);
        let w2 = tempfile::tempdir().unwrap();
        must_build(ctx.path(), w2.path(), &a);
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&report).unwrap()).unwrap()
    };
    // --cache-repo defaults to <destination repo>/cache.
    let r1 = run(&push);
    let img1 = unpack(&format!("docker://{dest}"));
    let layers1: Vec<String> = img1.manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(r1["cache_misses"], 6);
    // The entries are ordinary tags in the default cache repo, readable by skopeo.
    let tags: serde_json::Value = serde_json::from_str(&kiln_testkit::run(
        std::process::Command::new("skopeo")
            .args(["list-tags", "--tls-verify=false"])
            .arg(format!("docker://{repo}")),
    ))
    .unwrap();
    let tags: Vec<&str> = tags["Tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .collect();
    assert_eq!(
        tags.iter().filter(|t| t.len() == 64).count(),
        6,
        "one entry per step: {tags:?}"
    );
    assert_eq!(
        tags.iter().filter(|t| t.starts_with("last-")).count(),
        1,
        "one record of the last build: {tags:?}"
    );
    let before = reg.log().len();
    let r2 = run(&push);
    let log = reg.log()[before..].to_string();
    assert_eq!(r2["cache_hits"], 6, "{r2}");
    // The report names the same layer per step whether built or taken from the cache.
    let per_step = |r: &serde_json::Value| -> Vec<(u64, Option<String>)> {
        r["steps"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|s| s["cache"].is_string())
            .map(|s| {
                (
                    s["line"].as_u64().unwrap(),
                    s["layer_digest"].as_str().map(str::to_string),
                )
            })
            .collect()
    };
    assert_eq!(per_step(&r1), per_step(&r2));
    assert_eq!(r2["cache_misses"], 0);
    assert_eq!(r2["bytes_pulled"], 0);
    assert_eq!(
        layer_gets(&log, &layers1),
        0,
        "a fully cached build downloaded layers:\n{log}"
    );
    let img2 = unpack(&format!("docker://{dest}"));
    let layers2: Vec<String> = img2.manifest["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(layers1, layers2);
    assert_eq!(tree(&img1.rootfs()), tree(&img2.rootfs()));
    // Sanity of the measurement: a build that must execute the last step does fetch layers.
    write(ctx.path(), "tail.txt", "changed\n");
    let before = reg.log().len();
    let r3 = run(&push);
    let log = reg.log()[before..].to_string();
    assert!(r3["bytes_pulled"].as_u64().unwrap() > 0);
    assert!(layer_gets(&log, &layers1) > 0);
}

#[test]
fn ttl_no_push_cache_and_oci_layout_caches() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), &base);

    // --no-push-cache: nothing is written, so the next build misses too.
    let repo = format!("{}/cache-nopush", reg.addr);
    let (a, _) = cached_build(ctx.path(), &repo, &["--no-push-cache"]);
    assert_eq!(a.u("cache_misses"), 6);
    let (b, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(b.u("cache_misses"), 6, "--no-push-cache wrote entries");
    let (c, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(c.u("cache_hits"), 6);

    // --cache-ttl: old entries are misses and get replaced.
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let (d, _) = cached_build(ctx.path(), &repo, &["--cache-ttl", "1s"]);
    assert_eq!(d.u("cache_misses"), 6, "expired entries must miss");
    let (e, _) = cached_build(ctx.path(), &repo, &["--cache-ttl", "1h"]);
    assert_eq!(e.u("cache_hits"), 6, "expired entries are replaced");

    // oci: cache repos keep the cache in a local layout.
    let dir = tempfile::tempdir().unwrap();
    let spec = format!("oci:{}", dir.path().join("cache").display());
    let run = |ctx: &Path| {
        let work = tempfile::tempdir().unwrap();
        let report = work.path().join("r.json");
        let w2 = tempfile::tempdir().unwrap();
        must_build(
            ctx,
            w2.path(),
            &[
                "--no-push",
                "--insecure-pull",
                "--cache",
                "--cache-repo",
                &spec,
                "--report",
                report.to_str().unwrap(),
            ],
        );
        serde_json::from_slice::<serde_json::Value>(&std::fs::read(&report).unwrap()).unwrap()
    };
    assert_eq!(run(ctx.path())["cache_misses"], 6);
    let r = run(ctx.path());
    assert_eq!(r["cache_hits"], 6, "{r}");
    write(ctx.path(), "tail.txt", "changed\n");
    let r = run(ctx.path());
    assert_eq!(r["cache_hits"], 4);
}

#[test]
fn a_cache_registry_that_goes_away_degrades_to_misses() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let mut cache_reg = Registry::start();
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), &base);
    let repo = format!("{}/cache", cache_reg.addr);
    cached_build(ctx.path(), &repo, &[]);
    cache_reg.stop();
    let t0 = std::time::Instant::now();
    let (r, log) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(r.u("cache_hits"), 0);
    assert_eq!(r.u("cache_misses"), 6);
    assert!(r.u("cache_errors") >= 6, "{}", r.json);
    assert!(log.contains("cache lookup failed"), "{log}");
    assert!(t0.elapsed() < std::time::Duration::from_secs(60));
}
