//! The same suite against each storage backend: local disk (`file://`), a
//! real S3 API server (moto) on loopback, and a docker-registry fronted as
//! the store (`registry://`, read-through and write-through). Clients no one here wrote
//! (skopeo, umoci) check what the server holds; raw protocol checks use
//! reqwest so statuses and headers are seen as sent.

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

macro_rules! suite {
    ($($backend:ident),*) => {$(
        mod $backend {
            use super::*;
            #[test]
            fn skopeo_round_trip() {
                super::skopeo_round_trip(Backend::$backend());
            }
            #[test]
            fn chunked_upload_range_mount_tags_delete() {
                super::chunked_upload_range_mount_tags_delete(Backend::$backend());
            }
            #[test]
            fn lying_clients_and_bad_manifests_leave_nothing() {
                super::lying_clients_and_bad_manifests_leave_nothing(Backend::$backend());
            }
            #[test]
            fn a_busy_session_is_refused_under_another_repository() {
                super::a_busy_session_is_refused_under_another_repository(Backend::$backend());
            }
            #[test]
            fn batch_lookup_metrics_expiry_and_gc() {
                super::batch_lookup_metrics_expiry_and_gc(Backend::$backend());
            }
        }
    )*};
}

suite!(file, s3, registry);

fn layout_manifest_digest(layout: &std::path::Path) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    idx["manifests"][0]["digest"].as_str().unwrap().to_string()
}

fn skopeo_round_trip(b: Backend) {
    let s = b.start(&[]);
    let big = noise(7, 3 << 20);
    let pushed = push_image_layout(
        &format!("{}/team/app:v1", s.addr),
        &[("data.bin", &big)],
        &[],
    );
    let out = tempfile::tempdir().unwrap();
    let dest = out.path().join("out");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/team/app:v1", s.addr))
        .arg(format!("oci:{}:v1", dest.display())));
    assert_eq!(
        pushed,
        layout_manifest_digest(&dest),
        "the manifest comes back byte for byte"
    );
    for e in std::fs::read_dir(dest.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let data = std::fs::read(e.path()).unwrap();
        assert_eq!(
            sha(&data),
            format!("sha256:{}", e.file_name().to_string_lossy())
        );
    }
    // The content itself, through umoci.
    let bundle = out.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--rootless", "--image"])
        .arg(format!("{}:v1", dest.display()))
        .arg(&bundle));
    assert_eq!(std::fs::read(bundle.join("rootfs/data.bin")).unwrap(), big);
    let tags = run(Command::new("skopeo")
        .args(["list-tags", "--tls-verify=false"])
        .arg(format!("docker://{}/team/app", s.addr)));
    assert!(tags.contains("\"v1\""), "{tags}");
    let rt = rt();
    rt.block_on(async {
        let (st, _, body) = get(&format!("{}/v2/_catalog", s.url())).await;
        if b.full() {
            assert_eq!(st, 200);
            assert!(String::from_utf8_lossy(&body).contains("team/app"));
        } else {
            assert_eq!(st, 405, "a fronted registry cannot list repositories");
        }
    });
    if let Backend::Registry(up, _) = &b {
        // Write-through: the upstream holds an ordinary image, byte for byte.
        let direct = tempfile::tempdir().unwrap();
        let d2 = direct.path().join("out");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/kiln-cache/team/app:v1", up.addr))
            .arg(format!("oci:{}:v1", d2.display())));
        assert_eq!(layout_manifest_digest(&d2), layout_manifest_digest(&dest));
    }
    if let Backend::Registry(up, _) = &b {
        // Read-through: an image pushed to the upstream by another tool
        // (blobs in its own repository) is served, content verified.
        let direct = noise(11, 256 << 10);
        let pushed = push_image_layout(
            &format!("{}/kiln-cache/direct/app:v2", up.addr),
            &[("d", &direct)],
            &[],
        );
        let out3 = tempfile::tempdir().unwrap();
        let dest3 = out3.path().join("out");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{}/direct/app:v2", s.addr))
            .arg(format!("oci:{}:v2", dest3.display())));
        assert_eq!(layout_manifest_digest(&dest3), pushed);
        let bundle = out3.path().join("bundle");
        run(Command::new("umoci")
            .args(["unpack", "--rootless", "--image"])
            .arg(format!("{}:v2", dest3.display()))
            .arg(&bundle));
        assert_eq!(std::fs::read(bundle.join("rootfs/d")).unwrap(), direct);
    }
    // A second replica over the same store, with empty tiers, gives the same
    // answers: the store is the truth, each replica's tiers are caches.
    let s2 = CacheServer::start(bin(), Some(&b.storage_of(&s)), &[], &b.env());
    let out2 = tempfile::tempdir().unwrap();
    let dest2 = out2.path().join("out");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/team/app:v1", s2.addr))
        .arg(format!("oci:{}:v1", dest2.display())));
    assert_eq!(
        layout_manifest_digest(&dest2),
        layout_manifest_digest(&dest)
    );
}

fn chunked_upload_range_mount_tags_delete(b: Backend) {
    let s = b.start(&[]);
    let url = s.url();
    rt().block_on(async {
        let data = noise(1, 5 << 20);
        let d = sha(&data);
        let c = client();
        let loc = start_upload(&url, "a/b").await;
        let loc = patch_chunks(&url, loc, &data, 2 << 20, std::time::Duration::ZERO)
            .await
            .unwrap();
        // A chunk that does not continue where the upload is: refused.
        let r = c
            .patch(format!("{url}{loc}"))
            .header("Content-Range", "5-9")
            .body(vec![0u8; 5])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 416);
        // Not visible before it is committed.
        assert_eq!(head(&format!("{url}/v2/a/b/blobs/{d}")).await, 404);
        let r = c
            .put(format!("{url}{loc}?digest={d}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201, "{:?}", r.text().await);

        let (st, h, body) = get(&format!("{url}/v2/a/b/blobs/{d}")).await;
        assert_eq!(st, 200);
        assert_eq!(h["docker-content-digest"].to_str().unwrap(), d);
        assert_eq!(sha(&body), d);
        let r = c
            .get(format!("{url}/v2/a/b/blobs/{d}"))
            .header("Range", "bytes=1000-1999")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        assert_eq!(
            r.headers()["content-range"].to_str().unwrap(),
            format!("bytes 1000-1999/{}", data.len())
        );
        assert_eq!(&r.bytes().await.unwrap()[..], &data[1000..2000]);
        let r = c
            .get(format!("{url}/v2/a/b/blobs/{d}"))
            .header("Range", format!("bytes={}-", data.len()))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 416);

        // Cross-repository mount: no bytes move.
        let r = c
            .post(format!("{url}/v2/other/blobs/uploads/?mount={d}&from=a/b"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
        assert_eq!(
            r.headers()["location"].to_str().unwrap(),
            format!("/v2/other/blobs/{d}")
        );

        // Tags, pagination, delete.
        let config = b"{}".to_vec();
        assert_eq!(put_blob(&url, "a/b", &config).await, 201);
        let m = manifest_json(&config, &[&data]);
        for t in ["t1", "t2", "t3"] {
            assert_eq!(
                put_manifest(&url, "a/b", t, &m).await.status().as_u16(),
                201
            );
        }
        let (st, h, body) = get(&format!("{url}/v2/a/b/tags/list?n=2")).await;
        assert_eq!(st, 200);
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["tags"], serde_json::json!(["t1", "t2"]));
        assert!(h["link"].to_str().unwrap().contains("last=t2"));
        let (_, _, body) = get(&format!("{url}/v2/a/b/tags/list?n=2&last=t2")).await;
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["tags"], serde_json::json!(["t3"]));
        let (st, h, body) = get(&format!("{url}/v2/a/b/manifests/t2")).await;
        assert_eq!(st, 200);
        assert_eq!(body, m);
        assert_eq!(h["docker-content-digest"].to_str().unwrap(), sha(&m));
        assert_eq!(
            h["content-type"].to_str().unwrap(),
            "application/vnd.oci.image.manifest.v1+json"
        );
        let r = c
            .delete(format!("{url}/v2/a/b/manifests/t1"))
            .send()
            .await
            .unwrap();
        if !b.full() {
            assert_eq!(
                r.status().as_u16(),
                405,
                "deletes are refused, not half done"
            );
            return;
        }
        assert_eq!(r.status().as_u16(), 202);
        assert_eq!(get(&format!("{url}/v2/a/b/manifests/t1")).await.0, 404);
        let r = c
            .delete(format!("{url}/v2/a/b/manifests/{}", sha(&m)))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202);
        assert_eq!(get(&format!("{url}/v2/a/b/manifests/t3")).await.0, 404);
        assert_eq!(
            get(&format!("{url}/v2/a/b/manifests/{}", sha(&m))).await.0,
            404
        );
    });
}

fn error_code(body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or_default();
    v["errors"][0]["code"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn lying_clients_and_bad_manifests_leave_nothing(b: Backend) {
    let s = b.start(&["--max-manifest-size", "64KiB"]);
    let url = s.url();
    rt().block_on(async {
        let c = client();
        let data = noise(3, 1 << 20);
        let claimed = sha(b"something else");
        // A digest that does not match the content.
        let r = c.post(format!("{url}/v2/x/blobs/uploads/?digest={claimed}")).body(data.clone()).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(error_code(&r.bytes().await.unwrap()), "DIGEST_INVALID");
        for d in [&claimed, &sha(&data)] {
            assert_eq!(head(&format!("{url}/v2/x/blobs/{d}")).await, 404);
        }
        // A chunk shorter than its Content-Range says.
        let r = c.post(format!("{url}/v2/x/blobs/uploads/")).send().await.unwrap();
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let r = c.patch(format!("{url}{loc}")).header("Content-Range", "0-99").body(vec![1u8; 10]).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(error_code(&r.bytes().await.unwrap()), "SIZE_INVALID");
        // A body that ends before its Content-Length: the connection drops.
        {
            use std::io::Write;
            let d = sha(&[7u8; 1000]);
            let mut t = std::net::TcpStream::connect(&s.addr).unwrap();
            write!(t, "POST /v2/x/blobs/uploads/?digest={d} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n").unwrap();
            t.write_all(&[7u8; 400]).unwrap();
            drop(t);
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            assert_eq!(head(&format!("{url}/v2/x/blobs/{d}")).await, 404);
        }
        // Manifests: unknown blob, not JSON, too big, wrong digest.
        let config = b"{\"a\":1}".to_vec();
        assert_eq!(put_blob(&url, "x", &config).await, 201);
        let m = manifest_json(&config, &[&data]);
        let r = put_manifest(&url, "x", "t", &m).await;
        assert_eq!(r.status().as_u16(), 400);
        assert_eq!(error_code(&r.bytes().await.unwrap()), "MANIFEST_BLOB_UNKNOWN");
        let r = put_manifest(&url, "x", "t", b"{not json").await;
        assert_eq!(error_code(&r.bytes().await.unwrap()), "MANIFEST_INVALID");
        let huge = format!("{{\"schemaVersion\":2,\"pad\":\"{}\"}}", "x".repeat(100 << 10));
        let r = put_manifest(&url, "x", "t", huge.as_bytes()).await;
        assert_eq!(r.status().as_u16(), 413);
        let good = manifest_json(&config, &[]);
        let r = put_manifest(&url, "x", &sha(b"not this"), &good).await;
        assert_eq!(error_code(&r.bytes().await.unwrap()), "DIGEST_INVALID");
        assert_eq!(get(&format!("{url}/v2/x/manifests/t")).await.0, 404);
        // Names and references that are not names.
        assert_eq!(get(&format!("{url}/v2/X/tags/list")).await.0, 400);
        assert_eq!(get(&format!("{url}/v2/x/blobs/sha256:123")).await.0, 400);
        // And a correct one still works.
        assert_eq!(put_manifest(&url, "x", "t", &good).await.status().as_u16(), 201);
        let m = s.metrics();
        assert_eq!(metric_sum(&m, "kiln_cache_uploads_total", &["kind=\"digest_invalid\""]), 1.0, "{m}");
    });
    if let Backend::File = b {
        assert_store_verifies(&s.dir.path().join("store"));
    }
}

/// An upload session opened in `team/a`, held busy by a PATCH whose body
/// is still arriving, is refused when another client continues it under
/// `team/b` (a chunk, the closing PUT, a status query, a cancel); the slow
/// chunk then completes and the blob lands in `team/a` only.
fn a_busy_session_is_refused_under_another_repository(b: Backend) {
    let s = b.start(&[]);
    let url = s.url();
    rt().block_on(async {
        let c = client();
        let loc = start_upload(&url, "team/a").await;
        let other = loc.replacen("/team/a/", "/team/b/", 1);
        assert_ne!(loc, other);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
        let body = futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|chunk| (chunk, rx))
        });
        tx.send(Ok(vec![1u8; 1000])).await.unwrap();
        let slow = tokio::spawn({
            let (c, target) = (c.clone(), format!("{url}{loc}"));
            async move {
                c.patch(target)
                    .header("Content-Range", "0-1999")
                    .body(reqwest::Body::wrap_stream(body))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        // The first half has reached the server: the session is busy.
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        // A request that waits for the busy session instead of being
        // refused times out: the test fails rather than hangs.
        let quick = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()
            .unwrap();
        let refused = |r: Result<reqwest::Response, reqwest::Error>, what: &str| match r {
            Ok(r) => assert_eq!(r.status().as_u16(), 404, "{what} under team/b"),
            Err(e) => panic!("{what} under team/b was not refused: {e}"),
        };
        let data = vec![2u8; 10];
        let target = format!("{url}{other}");
        let r = quick
            .patch(&target)
            .header("Content-Range", "0-9")
            .body(data.clone())
            .send()
            .await;
        refused(r, "a chunk");
        let r = quick
            .put(format!("{target}?digest={}", sha(&data)))
            .send()
            .await;
        refused(r, "a closing PUT");
        refused(quick.get(&target).send().await, "a status query");
        refused(quick.delete(&target).send().await, "a cancel");
        tx.send(Ok(vec![1u8; 1000])).await.unwrap();
        drop(tx);
        assert_eq!(slow.await.unwrap().unwrap(), 202);
        let blob = vec![1u8; 2000];
        let loc_after = c.get(format!("{url}{loc}")).send().await.unwrap();
        assert_eq!(
            loc_after.status().as_u16(),
            204,
            "the session survived in team/a"
        );
        let (st, body) = finish_upload(&url, &loc, &sha(&blob)).await;
        assert_eq!(st, 201, "{body}");
        let d = sha(&blob);
        assert_eq!(head(&format!("{url}/v2/team/a/blobs/{d}")).await, 200);
        for d in [sha(&data), sha(&[&blob[..], &data[..]].concat())] {
            assert_eq!(head(&format!("{url}/v2/team/a/blobs/{d}")).await, 404);
        }
    });
}

fn batch_lookup_metrics_expiry_and_gc(b: Backend) {
    let s = b.start(&[
        "--ttl",
        "4s",
        "--touch-after",
        "1s",
        "--gc-interval",
        "0",
        "--tag-cache-ttl",
        "100ms",
    ]);
    let url = s.url();
    let rt = rt();
    let (ma, la) = rt.block_on(push_entry(&url, "cache/app", "aaa", 1, 100 << 10));
    let (mb, lb) = rt.block_on(push_entry(&url, "cache/app", "bbb", 2, 100 << 10));
    let v = rt.block_on(lookup(&url, "cache/app", &["aaa", "bbb", "ccc"]));
    assert_eq!(v["entries"]["aaa"]["digest"], ma);
    assert_eq!(v["entries"]["bbb"]["digest"], mb);
    assert!(v["entries"].get("ccc").is_none());
    let manifest = v["entries"]["aaa"]["manifest"].as_str().unwrap();
    assert_eq!(sha(manifest.as_bytes()), ma);
    let m = s.metrics();
    let lk = |m: &str, r: &str| {
        metric_sum(
            m,
            "kiln_cache_lookups_total",
            &["repo=\"cache/app\"", &format!("result=\"{r}\"")],
        )
    };
    assert_eq!(
        (lk(&m, "hit"), lk(&m, "miss"), lk(&m, "expired")),
        (2.0, 1.0, 0.0),
        "{m}"
    );
    if !b.full() {
        // No write times upstream: no expiry, and GC refuses clearly.
        let out = Command::new(bin())
            .args(["gc", "--storage", &b.storage_of(&s), "--data-dir"])
            .arg(s.dir.path().join("gc-data"))
            .envs(b.env())
            .output()
            .unwrap();
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("not supported"));
        return;
    }

    // bbb is used again after 2.5 s (refreshing it); aaa is not. The
    // margins allow for S3's whole-second modification times.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let v = rt.block_on(lookup(&url, "cache/app", &["bbb"]));
    assert!(v["entries"].get("bbb").is_some());
    std::thread::sleep(std::time::Duration::from_millis(1800));
    let v = rt.block_on(lookup(&url, "cache/app", &["aaa", "bbb"]));
    assert!(v["entries"].get("aaa").is_none(), "aaa expired: {v}");
    assert_eq!(v["expired"], serde_json::json!(["aaa"]));
    assert!(
        v["entries"].get("bbb").is_some(),
        "a hit refreshed bbb: {v}"
    );
    let m = s.metrics();
    assert_eq!(
        (lk(&m, "hit"), lk(&m, "miss"), lk(&m, "expired")),
        (4.0, 1.0, 1.0),
        "{m}"
    );

    // One-shot GC (as the CronJob runs it) against the same store.
    let r = gc_once(&b, &s, &["--ttl", "4s", "--gc-grace", "0s"]);
    assert_eq!(
        r["tags_expired"],
        serde_json::json!(["cache/app:aaa"]),
        "{r}"
    );
    assert_eq!(r["manifests_deleted"], 1, "{r}");
    assert_eq!(r["blobs_deleted"], 2, "aaa's layer and config: {r}");
    rt.block_on(async {
        assert_eq!(
            get(&format!("{url}/v2/cache/app/blobs/{}", sha(&la)))
                .await
                .0,
            404
        );
        let (st, _, body) = get(&format!("{url}/v2/cache/app/blobs/{}", sha(&lb))).await;
        assert_eq!(st, 200);
        assert_eq!(body, lb);
    });

    // Size budget: the least recently used entries go first.
    let (_, lc) = rt.block_on(push_entry(&url, "cache/app", "ccc", 3, 1 << 20));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, ld) = rt.block_on(push_entry(&url, "cache/app", "ddd", 4, 1 << 20));
    let r = gc_once(
        &b,
        &s,
        &["--ttl", "0", "--gc-grace", "0s", "--max-size", "1500KiB"],
    );
    assert_eq!(
        r["tags_evicted"],
        serde_json::json!(["cache/app:bbb", "cache/app:ccc"]),
        "{r}"
    );
    let v = rt.block_on(lookup(&url, "cache/app", &["bbb", "ccc", "ddd"]));
    let keys: Vec<&String> = v["entries"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["ddd"], "{v}");
    rt.block_on(async {
        let (st, _, body) = get(&format!("{url}/v2/cache/app/blobs/{}", sha(&ld))).await;
        assert_eq!((st, sha(&body)), (200, sha(&ld)));
        assert_eq!(
            get(&format!("{url}/v2/cache/app/blobs/{}", sha(&lc)))
                .await
                .0,
            404
        );
    });

    // A per-repository budget: only the repository over it loses entries.
    let (_, keep) = rt.block_on(push_entry(&url, "cache/other", "eee", 6, 300 << 10));
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (_, newer) = rt.block_on(push_entry(&url, "cache/other", "fff", 7, 300 << 10));
    let (_, small) = rt.block_on(push_entry(&url, "cache/small", "ggg", 8, 100 << 10));
    let r = gc_once(
        &b,
        &s,
        &[
            "--ttl",
            "0",
            "--gc-grace",
            "0s",
            "--max-size-per-repo",
            "500KiB",
        ],
    );
    assert_eq!(
        r["tags_evicted"],
        serde_json::json!(["cache/app:ddd", "cache/other:eee"]),
        "{r}"
    );
    rt.block_on(async {
        for (blob, status) in [(&keep, 404), (&newer, 200), (&small, 200)] {
            assert_eq!(
                get(&format!("{url}/v2/cache/other/blobs/{}", sha(blob)))
                    .await
                    .0,
                status
            );
        }
    });

    // A blob uploaded but not yet named by a manifest (a push in progress)
    // is spared by the grace period, and only by it.
    let orphan = noise(5, 10 << 10);
    assert_eq!(rt.block_on(put_blob(&url, "cache/app", &orphan)), 201);
    let r = gc_once(&b, &s, &["--ttl", "0", "--gc-grace", "1h"]);
    assert_eq!(r["blobs_deleted"], 0, "{r}");
    let r = gc_once(&b, &s, &["--ttl", "0", "--gc-grace", "0s"]);
    assert_eq!(r["blobs_deleted"], 1, "{r}");
    assert_eq!(
        rt.block_on(get(&format!("{url}/v2/cache/app/blobs/{}", sha(&orphan))))
            .0,
        404
    );
}
