//! Two cache-server replicas over one moto bucket behind nginx, which sends
//! every request to the next replica in turn: upload sessions live in the
//! store, so no request needs to land where the session began — chunked
//! uploads, skopeo and buildah pushes and executor builds all succeed, and a replica
//! killed mid-upload loses nothing (the other one finishes the session).

mod common;
use common::*;
use kiln_testkit::*;
use std::process::Command;

/// PATCH requests each replica answered.
fn patches(s: &CacheServer) -> f64 {
    metric_sum(
        &s.metrics(),
        "kiln_cache_request_duration_seconds_count",
        &["route=\"upload\"", "method=\"PATCH\""],
    )
}

#[test]
fn replicas_need_no_session_affinity() {
    let b = Backend::s3();
    let mut one = b.start(&[]);
    let two = b.start(&[]);
    let lb = RoundRobin::start(&[&one.addr, &two.addr]);
    let url = lb.url.clone();
    rt().block_on(async {
        // Five chunks through the balancer: they alternate replicas.
        let data = noise(7, 5 << 20);
        let d = sha(&data);
        let loc = start_upload(&url, "team/app").await;
        let loc = patch_chunks(&url, loc, &data, 1 << 20, std::time::Duration::ZERO)
            .await
            .unwrap();
        let (status, body) = finish_upload(&url, &loc, &d).await;
        assert_eq!(status, 201, "{body}");
        for s in [&one, &two] {
            let (status, _, body) = get(&format!("{}/v2/team/app/blobs/{d}", s.url())).await;
            assert_eq!((status, body == data), (200, true), "on {}", s.addr);
        }
    });
    assert!(patches(&one) >= 2.0 && patches(&two) >= 2.0);

    // skopeo through the balancer (POST, PATCH, PUT per blob), and back.
    let base = push_busybox_to(&lb.addr, "team/busybox:1");
    let out = tempfile::tempdir().unwrap();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/team/busybox:1", lb.addr))
        .arg(format!("oci:{}:1", out.path().display())));

    // buildah through the balancer: an image of its own (new blobs, so they
    // really go through upload sessions).
    let committed = |servers: [&CacheServer; 2]| -> f64 {
        servers
            .iter()
            .map(|s| {
                metric_sum(
                    &s.metrics(),
                    "kiln_cache_uploads_total",
                    &["kind=\"committed\""],
                )
            })
            .sum()
    };
    let before = committed([&one, &two]);
    let buildah = Buildah::new();
    let ctr = run(buildah.cmd().args(["from", "scratch"]));
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), noise(9, 3 << 20)).unwrap();
    run(buildah
        .cmd()
        .args(["copy", ctr.trim()])
        .arg(file.path())
        .arg("/data"));
    run(buildah
        .cmd()
        .args(["commit", "--quiet", ctr.trim(), "localhost/plain:1"]));
    run(buildah
        .cmd()
        .args(["push", "--quiet", "--tls-verify=false", "localhost/plain:1"])
        .arg(format!("docker://{}/team/plain:1", lb.addr)));
    assert!(
        committed([&one, &two]) >= before + 2.0,
        "buildah uploaded nothing"
    );
    let back = tempfile::tempdir().unwrap();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{}/team/plain:1", lb.addr))
        .arg(format!("oci:{}:1", back.path().display())));

    // Executor builds with the balancer as cache repo: the second is all hits.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM {base}\nRUN echo one > /one\nRUN head -c 3000000 /dev/urandom > /big\n"),
    )
    .unwrap();
    let mut hits = Vec::new();
    for _ in 0..2 {
        let work = tempfile::tempdir().unwrap();
        let report = work.path().join("report.json");
        let repo = format!("{}/cache/app", lb.addr);
        let o = executor_build(ctx.path(), work.path(), &lb.addr, &repo, &report)
            .output()
            .expect("executor (built with the workspace)");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let r: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
        hits.push(r["cache_hits"].as_u64());
    }
    assert_eq!(hits, [Some(0), Some(2)]);

    // A replica killed in the middle of a chunked upload: the balancer
    // sends the rest to the other one, which finishes the session.
    rt().block_on(async {
        let data = noise(8, 3 << 20);
        let d = sha(&data);
        let c = client();
        let loc = start_upload(&url, "team/app").await;
        let (first, rest) = data.split_at(1 << 20);
        let loc = patch_chunks(&url, loc, first, 1 << 20, std::time::Duration::ZERO)
            .await
            .unwrap();
        one.kill9();
        // Not visible before the closing PUT.
        let (status, _, _) = get(&format!("{url}/v2/team/app/blobs/{d}")).await;
        assert_eq!(status, 404);
        let r = c
            .patch(format!("{url}{loc}"))
            .header("Content-Range", format!("{}-{}", 1 << 20, data.len() - 1))
            .body(rest.to_vec())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{:?}", r.text().await);
        let loc = r.headers()["location"].to_str().unwrap().to_string();
        let (status, body) = finish_upload(&url, &loc, &d).await;
        assert_eq!(status, 201, "{body}");
        let (status, _, body) = get(&format!("{}/v2/team/app/blobs/{d}", two.url())).await;
        assert_eq!((status, body == data), (200, true));
    });
}
