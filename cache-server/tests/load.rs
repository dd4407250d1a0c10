//! Load (issue 14): 20 executor builds at once through one cache server
//! over moto S3 on this two-core machine, twice (a cold round of misses
//! that share base layers and cache keys, then a warm round of hits), and
//! the same through two replicas behind nginx balancing every request.
//! Every build must succeed, every blob left in the bucket must hash to its
//! name, and the server's per-step counters must equal the sum of the
//! builds' reports. Throughput and the lookup's p99 are printed (for
//! benches/RESULTS.md); they are not asserted.

mod common;
use common::*;
use kiln_testkit::*;
use std::time::Instant;

const BUILDS: usize = 20;

/// Four Dockerfiles sharing a base and their first step; each built by
/// five builds at once (identical keys racing), with a fifth of the builds
/// adding a step of their own.
fn contexts(base: &str) -> Vec<tempfile::TempDir> {
    (0..BUILDS)
        .map(|i| {
            let ctx = tempfile::tempdir().unwrap();
            let kind = i % 4;
            let own = if i % 5 == 0 {
                format!("RUN echo own-{i} > /own\n")
            } else {
                String::new()
            };
            std::fs::write(
                ctx.path().join("Dockerfile"),
                format!(
                    "FROM {base}\nRUN echo shared > /shared\n\
                     RUN head -c 200000 /dev/urandom > /kind-{kind}\nCOPY f /f\n{own}"
                ),
            )
            .unwrap();
            std::fs::write(ctx.path().join("f"), format!("kind {kind}\n")).unwrap();
            ctx
        })
        .collect()
}

struct Round {
    seconds: f64,
    hits: u64,
    misses: u64,
}

/// Runs every build at once against `repo`; panics naming any that failed.
fn round(contexts: &[tempfile::TempDir], registry: &str, repo: &str) -> Round {
    let t = Instant::now();
    let children: Vec<_> = contexts
        .iter()
        .map(|ctx| {
            let work = tempfile::tempdir().unwrap();
            let report = work.path().join("report.json");
            let child = executor_build(ctx.path(), work.path(), registry, repo, &report)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("executor (built with the workspace)");
            (work, report, child)
        })
        .collect();
    let (mut hits, mut misses) = (0, 0);
    for (i, (_work, report, child)) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "build {i} failed under load:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        hits += r["cache_hits"].as_u64().unwrap();
        misses += r["cache_misses"].as_u64().unwrap();
    }
    Round {
        seconds: t.elapsed().as_secs_f64(),
        hits,
        misses,
    }
}

/// The lookup's p99 from the servers' latency histograms, in seconds.
fn lookup_p99(servers: &[&CacheServer]) -> f64 {
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    for s in servers {
        for line in s.metrics().lines() {
            let Some(rest) = line.strip_prefix("kiln_cache_request_duration_seconds_bucket{")
            else {
                continue;
            };
            if !rest.contains("route=\"kiln_lookup\"") {
                continue;
            }
            let le = rest.split("le=\"").nth(1).and_then(|x| x.split('"').next());
            let count = line.rsplit(' ').next().and_then(|c| c.parse::<f64>().ok());
            if let (Some(le), Some(count)) = (le, count) {
                let le = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().unwrap()
                };
                match buckets.iter_mut().find(|(l, _)| *l == le) {
                    Some(b) => b.1 += count,
                    None => buckets.push((le, count)),
                }
            }
        }
    }
    buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
    let total = buckets.last().map_or(0.0, |b| b.1);
    buckets
        .iter()
        .find(|(_, c)| *c >= 0.99 * total)
        .map_or(f64::NAN, |b| b.0)
}

fn steps(servers: &[&CacheServer], result: &str) -> u64 {
    servers
        .iter()
        .map(|s| {
            s.metric(
                "kiln_cache_build_steps_total",
                &[&format!("result=\"{result}\"")],
            )
        })
        .sum::<f64>() as u64
}

fn load(replicas: usize) {
    let reg = Registry::start();
    let base = push_busybox(&reg, "base:1");
    let b = Backend::s3();
    let servers: Vec<CacheServer> = (0..replicas).map(|_| b.start(&[])).collect();
    let refs: Vec<&CacheServer> = servers.iter().collect();
    let addrs: Vec<&str> = servers.iter().map(|s| s.addr.as_str()).collect();
    let lb = (replicas > 1).then(|| RoundRobin::start(&addrs));
    let front = lb
        .as_ref()
        .map_or(servers[0].addr.clone(), |l| l.addr.clone());
    let repo = format!("{front}/cache/load");
    let ctxs = contexts(&base);

    let cold = round(&ctxs, &front, &repo);
    let warm = round(&ctxs, &front, &repo);
    assert_eq!(warm.misses, 0, "the warm round missed");
    // 4 Dockerfiles x 3 steps, plus one own step for 4 of the builds.
    assert_eq!(warm.hits as usize, BUILDS * 3 + BUILDS / 5);
    assert_eq!(cold.hits + cold.misses, warm.hits);
    assert_eq!(steps(&refs, "hit"), cold.hits + warm.hits);
    assert_eq!(steps(&refs, "miss"), cold.misses);
    let (n, bad) = match &b {
        Backend::S3(s3) => s3.verify_blobs("kiln", "cache/"),
        _ => unreachable!(),
    };
    assert!(n > 0 && bad.is_empty(), "{n} blobs, corrupt: {bad:?}");
    eprintln!(
        "load, {replicas} replica(s): {BUILDS} cold builds in {:.1} s ({:.1} builds/s), \
         {BUILDS} warm builds in {:.1} s ({:.1} builds/s); lookup p99 <= {:.3} s; {n} blobs verified",
        cold.seconds,
        BUILDS as f64 / cold.seconds,
        warm.seconds,
        BUILDS as f64 / warm.seconds,
        lookup_p99(&refs),
    );
}

#[test]
fn twenty_concurrent_builds_through_one_server() {
    load(1);
}

#[test]
fn twenty_concurrent_builds_through_two_replicas_behind_a_balancer() {
    load(2);
}
