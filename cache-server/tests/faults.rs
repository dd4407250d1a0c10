//! Faults, each against real processes: the server killed with SIGKILL in
//! the middle of many uploads, S3 going away and coming back, a full disk
//! tier, clients without the right to write, TLS, and a graceful shutdown
//! that lets an in-flight upload finish.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;
use std::time::{Duration, Instant};

macro_rules! on_backends {
    ($name:ident) => {
        mod $name {
            #[test]
            fn file() {
                super::$name(super::Backend::file());
            }
            #[test]
            fn s3() {
                super::$name(super::Backend::s3());
            }
        }
    };
}

on_backends!(kill9_during_concurrent_uploads_leaves_nothing_partial);

/// A chunked upload that trickles, so it is mid-way when the server dies.
async fn slow_upload(url: String, repo: &str, data: Vec<u8>) -> Result<u16, String> {
    let c = client();
    let r = c
        .post(format!("{url}/v2/{repo}/blobs/uploads/"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let loc = r.headers()["location"].to_str().unwrap().to_string();
    let loc = patch_chunks(&url, loc, &data, 256 << 10, Duration::from_millis(40)).await?;
    let r = c
        .put(format!("{url}{loc}?digest={}", sha(&data)))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.status().as_u16())
}

fn kill9_during_concurrent_uploads_leaves_nothing_partial(b: Backend) {
    let mut s = b.start(&[]);
    let url = s.url();
    let rt = rt();
    let done: Vec<Vec<u8>> = (0..8).map(|i| noise(100 + i, 300 << 10)).collect();
    let pending: Vec<Vec<u8>> = (0..24).map(|i| noise(200 + i, 4 << 20)).collect();
    rt.block_on(async {
        for d in &done {
            assert_eq!(put_blob(&url, "up", d).await, 201);
        }
    });
    let handles: Vec<_> = pending
        .iter()
        .map(|d| rt.spawn(slow_upload(url.clone(), "up", d.clone())))
        .collect();
    std::thread::sleep(Duration::from_millis(250));
    s.kill9();
    let results: Vec<_> = rt.block_on(futures_util::future::join_all(handles));
    assert!(
        results.iter().any(|r| !matches!(r, Ok(Ok(201)))),
        "the kill must interrupt uploads: {results:?}"
    );
    s.restart();
    let url = s.url();
    rt.block_on(async {
        for d in &done {
            let (st, _, body) = get(&format!("{url}/v2/up/blobs/{}", sha(d))).await;
            assert_eq!(st, 200, "a committed blob survives the crash");
            assert_eq!(sha(&body), sha(d));
        }
        let mut visible = 0;
        for (d, r) in pending.iter().zip(&results) {
            let (st, _, body) = get(&format!("{url}/v2/up/blobs/{}", sha(d))).await;
            match st {
                200 => {
                    // Only an upload the server answered 201 may be visible, whole.
                    assert!(
                        matches!(r, Ok(Ok(201))),
                        "visible but never committed: {r:?}"
                    );
                    assert_eq!(sha(&body), sha(d));
                    visible += 1;
                }
                404 => {}
                other => panic!("unexpected status {other}"),
            }
        }
        assert!(visible < pending.len());
    });
    if let Backend::File = b {
        assert_store_verifies(&s.dir.path().join("store"));
        // Only the restarted server's own (empty) staging dir is left.
        let dirs: Vec<_> = std::fs::read_dir(s.dir.path().join("data/uploads"))
            .unwrap()
            .flatten()
            .collect();
        assert_eq!(
            dirs.len(),
            1,
            "the dead server's staging is swept at startup"
        );
        let staged = std::fs::read_dir(dirs[0].path()).unwrap().count();
        assert_eq!(staged, 1, "only the lock file");
    }
}

#[test]
fn s3_outage_answers_503_quickly_and_recovers() {
    let mut s3 = S3Server::start();
    s3.create_bucket("kiln");
    let port = s3.port();
    let s = CacheServer::start(bin(), Some("s3://kiln/cache"), &[], &s3.env());
    let url = s.url();
    let rt = rt();
    rt.block_on(push_entry(&url, "c/app", "k1", 1, 64 << 10));
    assert_eq!(rt.block_on(get(&format!("{url}/readyz"))).0, 200);
    s3.stop();
    rt.block_on(async {
        let t = Instant::now();
        let r = client()
            .post(format!("{url}/v2/_kiln/lookup"))
            .body(r#"{"repository":"c/app","keys":["k2"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 503);
        // A failure-detection bound, not a speed claim: retries are capped.
        assert!(t.elapsed() < Duration::from_secs(15), "{:?}", t.elapsed());
        assert_eq!(put_blob(&url, "c/app", b"during the outage").await, 503);
        assert_eq!(get(&format!("{url}/readyz")).await.0, 503);
    });
    assert!(s.metric("kiln_cache_backend_errors_total", &[]) >= 2.0);
    // S3 comes back (moto keeps no data across restarts: the bucket is recreated).
    let s3 = S3Server::start_on(port);
    s3.create_bucket("kiln");
    rt.block_on(async {
        assert_eq!(get(&format!("{url}/readyz")).await.0, 200);
        let (m, layer) = push_entry(&url, "c/app", "k3", 3, 64 << 10).await;
        let v = lookup(&url, "c/app", &["k3"]).await;
        assert_eq!(v["entries"]["k3"]["digest"], m);
        let (st, _, body) = get(&format!("{url}/v2/c/app/blobs/{}", sha(&layer))).await;
        assert_eq!((st, sha(&body)), (200, sha(&layer)));
    });
}

#[test]
fn disk_tier_coalesces_fetches_and_survives_a_full_disk() {
    let s3 = S3Server::start();
    s3.create_bucket("kiln");
    // The server runs in its own mount namespace with a 1 MiB tmpfs as its
    // disk tier, so "full" is real and nothing outside the test sees it.
    let t = tempfile::tempdir().unwrap();
    let data = t.path().join("data");
    std::fs::create_dir_all(data.join("blobs")).unwrap();
    let wrapper = t.path().join("wrap.sh");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare -m --propagation private sh -c 'mount -t tmpfs -o size=1m tmpfs {}/blobs && exec {} \"$@\"' sh \"$@\"\n",
            data.display(),
            bin().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data_s = data.display().to_string();
    let s = CacheServer::start(
        &wrapper,
        Some("s3://kiln/cache"),
        &["--data-dir", &data_s],
        &s3.env(),
    );
    let url = s.url();
    let rt = rt();
    let small = noise(1, 600 << 10);
    let big = noise(2, 3 << 20);
    rt.block_on(async {
        assert_eq!(put_blob(&url, "r", &small).await, 201);
        assert_eq!(put_blob(&url, "r", &big).await, 201);
        // 16 clients want the same blob at once: one fetch from S3.
        let gets: Vec<_> = (0..16)
            .map(|_| {
                let u = format!("{url}/v2/r/blobs/{}", sha(&small));
                tokio::spawn(async move { get(&u).await })
            })
            .collect();
        for g in futures_util::future::join_all(gets).await {
            let (st, _, body) = g.unwrap();
            assert_eq!((st, sha(&body)), (200, sha(&small)));
        }
        // The big blob does not fit the full disk: served from S3 instead.
        let (st, _, body) = get(&format!("{url}/v2/r/blobs/{}", sha(&big))).await;
        assert_eq!((st, sha(&body)), (200, sha(&big)));
    });
    let m = s.metrics();
    let store_out = metric_sum(
        &m,
        "kiln_cache_tier_bytes_total",
        &["tier=\"store\"", "direction=\"out\""],
    );
    assert_eq!(
        store_out,
        (small.len() + big.len()) as f64,
        "one fetch per blob: {m}"
    );
    let disk_hits = metric_sum(
        &m,
        "kiln_cache_tier_requests_total",
        &["tier=\"disk\"", "result=\"hit\""],
    );
    let coalesced = metric_sum(
        &m,
        "kiln_cache_coalesced_requests_total",
        &["tier=\"disk\""],
    );
    assert_eq!(disk_hits + coalesced, 15.0, "{m}");
    let disk_errors = metric_sum(
        &m,
        "kiln_cache_tier_requests_total",
        &["tier=\"disk\"", "result=\"error\""],
    );
    assert_eq!(disk_errors, 1.0, "{m}");
}

fn write_auth(dir: &std::path::Path) -> std::path::PathBuf {
    let p = dir.join("auth.json");
    std::fs::write(
        &p,
        r#"{"anonymous": [{"prefix": "public/", "access": "read"}],
            "users": [
              {"username": "ci", "password": "pa55-w0rd-ci", "grants": [{"prefix": "", "access": "write"}]},
              {"username": "viewer", "password": "v13w3r-pass", "grants": [{"prefix": "", "access": "read"}]},
              {"token": "tok-ro-123", "grants": [{"prefix": "cache/", "access": "read"}]}
            ]}"#,
    )
    .unwrap();
    p
}

#[test]
fn unauthenticated_and_read_only_clients_cannot_write_and_secrets_stay_out_of_logs() {
    let t = tempfile::tempdir().unwrap();
    let auth = write_auth(t.path());
    let s = Backend::file().start(&["--auth-file", auth.to_str().unwrap()]);
    let try_push = |dest: &str, creds: Option<&str>| {
        let mut flags = vec![];
        if let Some(c) = creds {
            flags = vec!["--dest-creds", c];
        }
        std::panic::catch_unwind(|| {
            push_image_layout(dest, &[], &flags);
        })
        .is_ok()
    };
    assert!(
        !try_push(&format!("{}/cache/app:a", s.addr), None),
        "anonymous push"
    );
    assert!(
        !try_push(
            &format!("{}/cache/app:a", s.addr),
            Some("viewer:v13w3r-pass")
        ),
        "read-only push"
    );
    assert!(
        !try_push(&format!("{}/cache/app:a", s.addr), Some("ci:wrong")),
        "bad password"
    );
    assert!(try_push(
        &format!("{}/public/app:a", s.addr),
        Some("ci:pa55-w0rd-ci")
    ));
    // Anonymous reads where the policy allows them, not elsewhere.
    run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{}/public/app:a", s.addr)));
    let url = s.url();
    rt().block_on(async {
        let c = client();
        let r = c
            .post(format!("{url}/v2/cache/app/blobs/uploads/"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm="));
        let r = c
            .post(format!("{url}/v2/cache/app/blobs/uploads/"))
            .basic_auth("viewer", Some("v13w3r-pass"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let r = c
            .post(format!("{url}/v2/cache/app/blobs/uploads/"))
            .bearer_auth("tok-ro-123")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403);
        let r = c
            .post(format!("{url}/v2/_kiln/lookup"))
            .body(r#"{"repository":"cache/app","keys":["a"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401);
        let r = c
            .post(format!("{url}/v2/_kiln/lookup"))
            .bearer_auth("tok-ro-123")
            .body(r#"{"repository":"cache/app","keys":["a"]}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(get(&format!("{url}/v2/public/app/tags/list")).await.0, 200);
        assert_eq!(get(&format!("{url}/v2/")).await.0, 401);
    });
    let log = s.log();
    assert!(
        log.contains("DEBUG") || log.contains("INFO"),
        "the log is being written"
    );
    for secret in [
        "pa55-w0rd-ci",
        "v13w3r-pass",
        "tok-ro-123",
        "cGE1NS13MHJkLWNp",
    ] {
        assert!(!log.contains(secret), "{secret} appears in the log");
    }
}

#[test]
fn tls_with_rustls() {
    let t = tempfile::tempdir().unwrap();
    let (cert, key) = (t.path().join("cert.pem"), t.path().join("key.pem"));
    run(Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
        ])
        .args([
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null()));
    let s = Backend::file().start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let out = run(Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(&cert)
        .arg(format!("https://{}/v2/_kiln/info", s.addr)));
    assert!(out.contains("kiln-cache-server"), "{out}");
    // Plain HTTP is not served on the TLS port.
    let plain = Command::new("curl")
        .args(["-sf", &format!("http://{}/v2/", s.addr)])
        .status()
        .unwrap();
    assert!(!plain.success());
    // skopeo, trusting the certificate through a cert dir.
    let certs = t.path().join("certs");
    std::fs::create_dir_all(&certs).unwrap();
    std::fs::copy(&cert, certs.join("ca.crt")).unwrap();
    let certs_s = certs.display().to_string();
    push_image_layout(
        &format!("{}/tls/app:v1", s.addr),
        &[("x", b"tls")],
        &["--dest-cert-dir", &certs_s],
    );
    let raw = run(Command::new("skopeo")
        .args(["inspect", "--raw", "--cert-dir", &certs_s])
        .arg(format!("docker://{}/tls/app:v1", s.addr)));
    assert!(raw.contains("schemaVersion"));
}

#[test]
fn graceful_shutdown_lets_an_in_flight_upload_finish() {
    let mut s = Backend::file().start(&["--shutdown-timeout", "20s"]);
    let url = s.url();
    let rt = rt();
    let data = noise(9, 2 << 20);
    let d = sha(&data);
    let body_data = data.clone();
    let upload = rt.spawn(async move {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body_data
            .chunks(128 << 10)
            .map(|c| Ok(c.to_vec()))
            .collect();
        let stream = futures_util::stream::iter(chunks).then(|c| async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            c
        });
        client()
            .post(format!(
                "{url}/v2/g/blobs/uploads/?digest={}",
                sha(&body_data)
            ))
            .header("Content-Length", body_data.len())
            .body(reqwest::Body::wrap_stream(stream))
            .send()
            .await
            .map(|r| r.status().as_u16())
    });
    std::thread::sleep(Duration::from_millis(400));
    let status = s.terminate();
    assert!(status.success(), "clean exit after draining: {status:?}");
    assert_eq!(
        rt.block_on(upload).unwrap().unwrap(),
        201,
        "the upload in flight completed"
    );
    assert!(s.log().contains("shutting down"));
    s.restart();
    let (st, _, body) = rt.block_on(get(&format!("{}/v2/g/blobs/{d}", s.url())));
    assert_eq!((st, sha(&body)), (200, d));
}

use futures_util::StreamExt;

/// S3 that sends part of a blob and then hangs (connection open, nothing
/// more, for 120 s): the read is abandoned after `--transfer-stall-timeout`
/// and retried, so the client gets the whole, verified blob in seconds —
/// not after the proxy's two minutes or the ten-minute total deadline.
#[test]
fn a_stalled_store_read_is_abandoned_after_the_stall_timeout() {
    let s3 = S3Server::start();
    s3.create_bucket("kiln");
    let data = noise(3, 4 << 20);
    let d = sha(&data);
    // Written straight to moto; read through a proxy that stalls the
    // first GET of that blob after 256 KiB.
    let writer = CacheServer::start(bin(), Some("s3://kiln/cache"), &[], &s3.env());
    assert_eq!(rt().block_on(put_blob(&writer.url(), "c/app", &data)), 201);
    let needle = format!(
        "GET /kiln/cache/blobs/sha256/{}",
        d.trim_start_matches("sha256:")
    );
    let proxy = CuttingProxy::stalling(
        s3.endpoint.trim_start_matches("http://"),
        &needle,
        256 << 10,
    );
    let env: Vec<(&str, String)> = s3
        .env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ENDPOINT" => (k, format!("http://{}", proxy.addr)),
            _ => (k, v),
        })
        .collect();
    let reader = CacheServer::start(
        bin(),
        Some("s3://kiln/cache"),
        &[
            "--transfer-stall-timeout",
            "2s",
            "--transfer-timeout",
            "10m",
        ],
        &env,
    );
    rt().block_on(async {
        let t = Instant::now();
        let (status, _, body) = get(&format!("{}/v2/c/app/blobs/{d}", reader.url())).await;
        assert_eq!((status, body == data), (200, true));
        // A failure-detection bound, far below the proxy's 120 s stall.
        assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    });
    let gets = proxy
        .requests()
        .iter()
        .filter(|r| r.contains(&needle))
        .count();
    assert!(
        gets >= 2,
        "the stalled read was not abandoned and retried: {gets} GETs"
    );
}
