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
    let (json, log) = cached_build_report(ctx, cache_repo, extra);
    (Report { json }, log)
}

type Change = Box<dyn Fn(&Path) -> Vec<String>>;

/// `cache_host`: the registry holding the cache (docker-registry, or Kiln's
/// cache server).
fn scenario(cache_host: &str, base: &str, name: &str, change: Change, expect: Option<u64>) {
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), base);
    let repo = format!("{cache_host}/cache-{name}");
    let (first, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(
        first.first_miss("0"),
        Some(3),
        "{name}: a cold build executes from its first step"
    );
    let extra = change(ctx.path());
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
    for (name, change, expect) in cases() {
        scenario(&reg.addr, &base, name, change, expect);
    }
}

#[test]
fn the_same_rules_hold_with_the_kiln_cache_server_and_its_batch_lookup() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let server = CacheServer::start(&cache_server_bin(), None, &[], &[]);
    let cases = cases();
    let builds = 2.0 * cases.len() as f64;
    for (name, change, expect) in cases {
        scenario(&server.addr, &base, name, change, expect);
    }
    let m = server.metrics();
    let requests = |route: &str, method: &str| {
        metric_sum(
            &m,
            "kiln_cache_request_duration_seconds_count",
            &[
                &format!("route=\"{route}\""),
                &format!("method=\"{method}\""),
            ],
        )
    };
    // One batch lookup per build; the only manifest reads are the build
    // records that explain misses (at most one per build), none per step.
    assert_eq!(requests("kiln_lookup", "POST"), builds, "{m}");
    assert!(requests("manifest", "GET") <= builds, "{m}");
    assert_eq!(requests("manifest", "HEAD"), 0.0, "{m}");
    // Every build reported its figures; hits match what the scenarios expect.
    assert_eq!(
        metric_sum(&m, "kiln_cache_builds_total", &[]),
        builds,
        "{m}"
    );
    let hits = metric_sum(&m, "kiln_cache_build_steps_total", &["result=\"hit\""]);
    let lookups_hit = metric_sum(&m, "kiln_cache_lookups_total", &["result=\"hit\""]);
    assert!(hits > 0.0 && hits <= lookups_hit, "{m}");
    assert!(
        metric_sum(&m, "kiln_cache_build_seconds_saved_total", &[]) > 0.0,
        "{m}"
    );
}

fn cases() -> Vec<(&'static str, Change, Option<u64>)> {
    vec![
        ("nothing", Box::new(|_| vec![]), None),
        (
            "mtimes",
            Box::new(|d| {
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
            Box::new(|d| {
                write(d, "ignored.log", "changed\n");
                vec![]
            }),
            None,
        ),
        (
            "uncopied-file",
            Box::new(|d| {
                write(d, "unused.txt", "changed\n");
                vec![]
            }),
            None,
        ),
        (
            "copied-content",
            Box::new(|d| {
                write(d, "app/a.txt", "changed\n");
                vec![]
            }),
            Some(4),
        ),
        (
            "copied-mode",
            Box::new(|d| {
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
            Box::new(|d| {
                write(d, "app/new.txt", "new\n");
                vec![]
            }),
            Some(4),
        ),
        (
            "env-value",
            Box::new(|d| {
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
            Box::new(|_| vec!["--build-arg".into(), "LATE=2".into()]),
            Some(8),
        ),
        (
            "early-arg",
            Box::new(|_| vec!["--build-arg".into(), "EARLY=2".into()]),
            Some(3),
        ),
        (
            "run-text",
            Box::new(|d| {
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
            Box::new(|d| {
                write(d, "tail.txt", "changed\n");
                vec![]
            }),
            Some(9),
        ),
        (
            "renamed-file",
            Box::new(|d| {
                std::fs::rename(d.join("app/a.txt"), d.join("app/renamed.txt")).unwrap();
                vec![]
            }),
            Some(4),
        ),
    ]
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
    let ctx = context_with(&format!("FROM {base} AS build\nCOPY lib/ /lib-src/\nRUN cat /lib-src/* > /built\nFROM {base}\nRUN echo start > /start\nCOPY --from=build /built /built\nRUN cat /built\n"));
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

#[test]
fn s3_behind_the_cache_server_stopping_mid_build_degrades_to_misses() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let mut s3 = S3Server::start();
    s3.create_bucket("kiln");
    // Tags stay in the server's memory tier for 100 ms only, so lookups
    // after the outage really reach S3.
    let server = CacheServer::start(
        &cache_server_bin(),
        Some("s3://kiln/c"),
        &["--tag-cache-ttl", "100ms"],
        &s3.env(),
    );
    let ctx = context_with(&format!(
        "FROM {base}\nRUN echo a > /a\nRUN sleep 2\nCOPY f /f\nRUN cat /f > /g\n"
    ));
    write(ctx.path(), "f", "1\n");
    let repo = format!("{}/cache", server.addr);
    let (first, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(first.u("cache_misses"), 4);
    let (warm, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(warm.u("cache_hits"), 4, "{}", warm.json);
    // Change a file before the slow step, and stop S3 while that step runs:
    // the lookups succeeded, the cache writes cannot.
    write(ctx.path(), "f", "2\n");
    let ctx_path = ctx.path().to_path_buf();
    let repo2 = repo.clone();
    let h = std::thread::spawn(move || cached_build(&ctx_path, &repo2, &["--build-arg", "X=1"]));
    std::thread::sleep(std::time::Duration::from_millis(800));
    s3.stop();
    let (mid, log) = h.join().unwrap();
    assert_eq!(
        mid.u("cache_hits") + mid.u("cache_misses"),
        4,
        "{}",
        mid.json
    );
    assert!(mid.u("cache_misses") >= 2, "{}", mid.json);
    assert!(log.contains("cache"), "{log}");
    // With S3 still down, a build runs entirely on misses, with warnings.
    let (down, log) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(down.u("cache_hits"), 0, "{}", down.json);
    assert_eq!(down.u("cache_misses"), 4);
    assert!(down.u("cache_errors") >= 1, "{}", down.json);
    assert!(log.contains("cache lookup failed"), "{log}");
    assert!(server.metric("kiln_cache_backend_errors_total", &[]) > 0.0);
}

#[test]
fn a_fully_cached_rebuild_through_the_cache_server_reads_no_layer_bytes() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let server = CacheServer::start(&cache_server_bin(), None, &[], &[]);
    let ctx = tempfile::tempdir().unwrap();
    main_context(ctx.path(), &base);
    let repo = format!("{}/app/cache", server.addr);
    let (first, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(first.u("cache_misses"), 6);
    let blob_gets = |s: &CacheServer| {
        metric_sum(
            &s.metrics(),
            "kiln_cache_request_duration_seconds_count",
            &["route=\"blob\"", "method=\"GET\""],
        )
    };
    let before = blob_gets(&server);
    let (second, _) = cached_build(ctx.path(), &repo, &[]);
    assert_eq!(second.u("cache_hits"), 6, "{}", second.json);
    assert_eq!(second.u("bytes_pulled"), 0);
    assert_eq!(
        blob_gets(&server),
        before,
        "a fully cached build fetched blobs"
    );
    let m = server.metrics();
    assert!(
        metric_sum(
            &m,
            "kiln_cache_build_steps_total",
            &["repo=\"app/cache\"", "result=\"hit\""]
        ) >= 6.0,
        "{m}"
    );
}

/// A COPY-only tail after cached layers: the root is made without their
/// files (`engine/skeleton.rs`), and the image is the one a full root gives
/// — with a COPY through a symlink those layers hold, a WORKDIR, and a COPY
/// over one of their files. A COPY of a directory onto one of their files
/// makes the root whole and fails as it does on a full root.
#[test]
fn a_copy_only_tail_on_a_root_without_files_gives_the_full_roots_image() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = tempfile::tempdir().unwrap();
    let c = ctx.path();
    let head = format!(
        "FROM {base}
RUN mkdir -p /app/d /srv && echo data > /app/d/f && ln -s /app/d /link && echo old > /srv/conf \
 && awk 'BEGIN {{ srand(7); for (i = 0; i < 200000; i++) printf \"%d\\n\", rand() * 1e9 }}' > /app/d/big
"
    );
    let tail = "COPY tail.txt /app/tail.txt
COPY into/ /link/
WORKDIR /app/w
COPY conf /srv/conf
";
    write(c, "Dockerfile", &format!("{head}{tail}"));
    write(
        c,
        "Dockerfile.dir",
        &format!("{head}COPY confdir/ /srv/conf/\n"),
    );
    write(c, "tail.txt", "1\n");
    write(c, "into/g", "g\n");
    write(c, "conf", "new\n");
    write(c, "confdir/x", "x\n");
    let repo = format!("{}/skel/cache", reg.addr);
    let reports = tempfile::tempdir().unwrap();
    let run = |tag: &str, extra: &[&str]| {
        let dest = format!("{}/skel:{tag}", reg.addr);
        let work = tempfile::tempdir().unwrap();
        let report = reports.path().join(tag);
        let mut args = vec![
            "--destination",
            dest.as_str(),
            "--insecure",
            "--insecure-pull",
            "--reproducible",
            "--report",
            report.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        (build(c, work.path(), &args), dest)
    };
    let pulled = |tag: &str| -> u64 {
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(reports.path().join(tag)).unwrap()).unwrap();
        r["bytes_pulled"].as_u64().unwrap()
    };
    let ok = |tag: &str, extra: &[&str]| {
        let (out, dest) = run(tag, extra);
        assert_ok(&out);
        (
            String::from_utf8_lossy(&out.stderr).into_owned(),
            unpack(&format!("docker://{dest}")),
        )
    };
    let cached = ["--cache", "--cache-repo", repo.as_str()];
    ok("a", &cached);
    write(c, "tail.txt", "2\n");
    let (log, img) = ok("b", &cached);
    assert!(
        log.contains("root made without the contents of")
            && log.contains("1 cached layer(s) read from their outlines"),
        "{log}"
    );
    assert!(!log.contains("meets a file"), "{log}");
    // The cached RUN layer (hundreds of kilobytes) was not fetched: only
    // the base's layer and the outline (a few kilobytes).
    let size = |i: usize| img.manifest["layers"][i]["size"].as_u64().unwrap();
    assert!(size(1) > 500_000, "{}", size(1));
    let outline_bytes = pulled("b") - size(0);
    assert!(outline_bytes < 16_384, "{outline_bytes}");
    // The same Dockerfile from nothing, every step on a full root.
    let (log_full, full) = ok("c", &[]);
    assert!(!log_full.contains("root made without"), "{log_full}");
    assert_eq!(img.manifest["layers"], full.manifest["layers"]);
    let read = |rel: &str| std::fs::read_to_string(img.rootfs().join(rel)).unwrap();
    assert_eq!(read("app/tail.txt"), "2\n");
    assert_eq!(read("app/d/g"), "g\n");
    assert_eq!(read("app/d/f"), "data\n");
    assert_eq!(read("srv/conf"), "new\n");
    assert!(img.rootfs().join("app/w").is_dir());
    // A directory copied onto a cached file: the skeleton has no file
    // there, so the root is made whole and the COPY fails as on a full root.
    let dir = ["--dockerfile", "Dockerfile.dir"];
    let (out, _) = run("d", &[&cached[..], &dir[..]].concat());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(
        err.contains("/srv/conf/ meets a file the root was made without"),
        "{err}"
    );
    assert!(err.contains("not a directory"), "{err}");
    let (out, _) = run("e", &dir);
    let full_err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && full_err.contains("not a directory"),
        "{full_err}"
    );
}
