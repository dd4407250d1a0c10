//! Mirror mode when the upstream misbehaves. The upstreams are real
//! docker-registries with basic auth, each behind an HTTP proxy the test
//! switches between forwarding (with Docker Hub's rate-limit headers) and
//! answering 429 with `Retry-After`, 503, hanging, or dropping the
//! connection. Kept bases are served stale within the deadline; uncached
//! ones fail at once with what the upstream answered; a 429 holds the
//! upstream, repeated failures open a breaker; the budget is exported and
//! a low one stretches revalidation; an expired login (from the
//! `--mirror-credentials` file's helper) is refreshed on the 401.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;
use std::time::{Duration, Instant};

const ACCEPT: &str = "Accept: application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json";

/// A manifest GET: (status, headers lowercased, body).
fn get(url: &str) -> (u16, String, String) {
    let out = run(Command::new("curl").args(["-s", "-i", "--max-time", "30", "-H", ACCEPT, url]));
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((&out, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

/// A credential helper whose first answer is an expired password and
/// every later one the right password; counts its runs in `count`.
fn helper(dir: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("docker-credential-kilntest");
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\nread host\nn=$(cat {d}/count 2>/dev/null || echo 0); n=$((n+1)); echo $n > {d}/count\n\
             if [ $n -eq 1 ]; then pw=expired; else pw=s3cret; fi\n\
             printf '{{\"Username\":\"kiln\",\"Secret\":\"%s\"}}' \"$pw\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn an_upstream_that_limits_fails_hangs_or_drops_never_fails_a_kept_base() {
    let up = Registry::start_with_auth(Some(("kiln", "s3cret")));
    let rootfs = tempfile::tempdir().unwrap();
    busybox_rootfs(rootfs.path());
    for tag in ["latest", "other"] {
        push_rootfs_with(
            rootfs.path(),
            &format!("{}/busybox:{tag}", up.addr),
            &["sh"],
            &["--dest-creds", "kiln:s3cret"],
        );
    }
    // One upstream per way of failing, all in front of the same registry.
    let modes = [
        ("limited.example", Upstream::TooMany { retry_after: 30 }),
        ("failing.example", Upstream::Unavailable),
        ("hanging.example", Upstream::Hang),
        ("dropping.example", Upstream::Drop),
    ];
    let proxies: Vec<HttpProxy> = modes.iter().map(|_| HttpProxy::start(&up.addr)).collect();

    let creds = tempfile::tempdir().unwrap();
    helper(creds.path());
    let helpers: Vec<String> = proxies
        .iter()
        .map(|p| format!("\"{}\":\"kilntest\"", p.addr))
        .collect();
    std::fs::write(
        creds.path().join("config.json"),
        format!("{{\"credHelpers\":{{{}}}}}", helpers.join(",")),
    )
    .unwrap();
    let mut args = vec![
        "--mirror-credentials".to_string(),
        creds.path().join("config.json").display().to_string(),
        "--mirror-revalidate".into(),
        "1s".into(),
        "--mirror-timeout".into(),
        "2s".into(),
    ];
    for ((host, _), p) in modes.iter().zip(&proxies) {
        args.push("--mirror".into());
        args.push(format!("{host}=http://{}", p.addr));
    }
    let path = format!(
        "{}:{}",
        creds.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let s = CacheServer::start(
        bin(),
        None,
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[("PATH", path)],
    );
    let url =
        |host: &str, tag: &str| format!("http://{}/v2/{host}/busybox/manifests/{tag}", s.addr);

    // Every base pulled once while all is well. The helper's first
    // password had expired: the 401 made the server log in again.
    proxies[0].set_remaining(76);
    for (host, _) in &modes {
        skopeo_pull(&format!("{}/{host}/busybox:latest", s.addr));
    }
    let runs: u32 = std::fs::read_to_string(creds.path().join("count"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(runs >= 2, "helper ran {runs} times");
    assert!(s.log().contains("logging in again"), "{}", s.log());
    let limited = "upstream=\"limited.example\"";
    assert_eq!(
        s.metric("kiln_cache_mirror_ratelimit_remaining", &[limited]),
        76.0
    );
    assert_eq!(
        s.metric("kiln_cache_mirror_ratelimit_limit", &[limited]),
        100.0
    );

    // A low budget (under a tenth left) stretches the window fourfold:
    // after one HEAD that reports it, a pull past the 1 s window asks
    // nothing.
    proxies[0].set_remaining(5);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(get(&url("limited.example", "latest")).0, 200);
    let asked = proxies[0].requests().len();
    assert_eq!(
        s.metric("kiln_cache_mirror_ratelimit_remaining", &[limited]),
        5.0
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(get(&url("limited.example", "latest")).0, 200);
    assert_eq!(
        proxies[0].requests().len(),
        asked,
        "{:#?}",
        proxies[0].requests()
    );
    // Wait out the stretched window.
    std::thread::sleep(Duration::from_millis(2600));

    for ((_, mode), p) in modes.iter().zip(&proxies) {
        p.set(*mode);
    }
    std::thread::sleep(Duration::from_millis(1100));
    for (host, mode) in &modes {
        // The kept base: served, marked stale, within the deadline.
        let t = Instant::now();
        let (status, headers, body) = get(&url(host, "latest"));
        assert_eq!(status, 200, "{host} {mode:?}: {body}");
        assert!(headers.contains("x-kiln-stale: true"), "{host}: {headers}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{host}: {:?}",
            t.elapsed()
        );
        // An uncached one: one clear error naming the upstream.
        let (status, _, body) = get(&url(host, "other"));
        assert!(status >= 400, "{host}: {status}");
        assert!(body.contains(host), "{host}: {body}");
        match mode {
            Upstream::TooMany { .. } => {
                // Held: the kept copy was served without asking; the
                // uncached pull is refused with the upstream's wait.
                assert_eq!(status, 429, "{body}");
                assert!(body.contains("rate limited (429)"), "{body}");
            }
            Upstream::Unavailable => assert!(body.contains("answered 503"), "{body}"),
            _ => assert_eq!(status, 502, "{body}"),
        }
    }
    // The 429's Retry-After holds the upstream: no request reached it
    // after the one that was refused, and the wait is exported.
    let reqs = proxies[0].requests();
    assert_eq!(reqs.len(), asked + 1, "{reqs:#?}");
    let (status, headers, _) = get(&url("limited.example", "other"));
    assert_eq!(status, 429);
    assert!(headers.contains("retry-after: "), "{headers}");
    assert_eq!(proxies[0].requests().len(), asked + 1);
    let held = s.metric("kiln_cache_mirror_held_seconds", &[limited]);
    assert!((20.0..=30.0).contains(&held), "{held}");
    assert!(
        s.metric(
            "kiln_cache_mirror_manifests_served_total",
            &["from=\"stale\""]
        ) >= 4.0
    );

    // Failures in a row open the breaker: the upstream is no longer asked,
    // and an uncached pull says so at once.
    let failing = &proxies[1];
    for _ in 0..3 {
        let (status, _, body) = get(&url("failing.example", "other"));
        if status == 503 {
            assert!(body.contains("circuit breaker open"), "{body}");
            break;
        }
    }
    let before = failing.requests().len();
    let (status, headers, body) = get(&url("failing.example", "other"));
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("circuit breaker open"), "{body}");
    assert!(headers.contains("retry-after: "), "{headers}");
    assert_eq!(get(&url("failing.example", "latest")).0, 200);
    assert_eq!(
        failing.requests().len(),
        before,
        "{:#?}",
        failing.requests()
    );
}
