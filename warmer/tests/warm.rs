//! The warmer against a real docker-registry holding images that share base
//! layers; the directory is checked with oci-image-tool and skopeo.

use kiln_testkit::*;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn warmer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_warmer"));
    c.env_remove("DOCKER_CONFIG");
    c
}

/// Three images: a busybox base and two images built on it (same base layer).
fn images(reg: &Registry) -> Vec<String> {
    let base = push_busybox(reg, "base:1");
    let mut out = vec![base.clone()];
    for name in ["one", "two"] {
        let r = format!("{}/{name}:1", reg.addr);
        push_derived(&base, &r, &[(name, name)]);
        out.push(r);
    }
    out
}

fn all_blobs_verify(dir: &Path) {
    for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with(".tmp") || name.starts_with(".partial-") {
            // A download cut short by SIGKILL: never under a digest name, and
            // removed by retention once old.
            continue;
        }
        let got = run(Command::new("sha256sum").arg(&p));
        assert!(
            got.starts_with(&name),
            "blob {name} does not match its digest"
        );
    }
}

/// Pushes busybox plus a file of `len` incompressible bytes, so its one
/// layer is big enough to interrupt a transfer inside.
fn push_with_noise(dest: &str, seed: u64, len: usize) {
    let t = tempfile::tempdir().unwrap();
    busybox_rootfs(t.path());
    std::fs::write(t.path().join("noise.bin"), noise(seed, len)).unwrap();
    push_rootfs(t.path(), dest, &["sh"]);
}

/// The digest of an image's first layer, as skopeo reads it.
fn first_layer(reference: &str) -> String {
    first_layer_of(reference, 0)
}

/// The GET requests for `blob` a proxy forwarded, their heads lower-cased.
fn blob_gets(requests: Vec<String>, blob: &str) -> Vec<String> {
    requests
        .into_iter()
        .filter(|r| r.starts_with("GET ") && r.contains(blob))
        .map(|r| r.to_ascii_lowercase())
        .collect()
}

fn validate(dir: &Path) {
    let v = run(Command::new("oci-image-tool")
        .args(["validate", "--type", "image"])
        .arg(dir));
    assert!(v.contains("Validation succeeded"), "{v}");
}

#[test]
fn shared_blobs_are_fetched_and_stored_once() {
    let reg = Registry::start();
    let imgs = images(&reg);
    let cache = tempfile::tempdir().unwrap();
    let report = cache.path().join("report.json");
    let before = reg.log().len();
    let dir = cache.path().join("cache");
    warm_all(&dir, &imgs, &["--report", report.to_str().unwrap()]);
    validate(&dir);
    all_blobs_verify(&dir);
    let log = reg.log()[before..].to_string();
    // Every layer blob was downloaded exactly once, however many images share it.
    let mut gets = std::collections::BTreeMap::new();
    for l in log
        .lines()
        .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
    {
        let d = l
            .split("/blobs/")
            .nth(1)
            .unwrap()
            .split([' ', '"'])
            .next()
            .unwrap()
            .to_string();
        *gets.entry(d).or_insert(0) += 1;
    }
    let r: serde_json::Value = serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
    let fetched: u64 = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["bytes_fetched"].as_u64().unwrap())
        .sum();
    let reused: u64 = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["bytes_reused"].as_u64().unwrap())
        .sum();
    let on_disk: u64 = std::fs::read_dir(dir.join("blobs/sha256"))
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().len())
        .sum();
    assert!(
        fetched > 0 && fetched <= on_disk,
        "fetched {fetched}, on disk {on_disk}"
    );
    // busybox's layer is shared by all three: fetched once, reused twice.
    assert!(
        gets.values().all(|n| *n == 1),
        "a blob was downloaded more than once: {gets:?}"
    );
    assert!(reused > 0, "shared layers should be reused: {r}");
    // skopeo reads each warmed image out of the directory.
    for i in &imgs {
        let u = unpack(&format!("oci:{}:{i}", dir.display()));
        assert!(u.rootfs().join("bin/busybox").exists());
    }
    // A second run within the TTL makes no registry call at all.
    let before = reg.log().len();
    warm_all(&dir, &imgs, &[]);
    assert!(
        !reg.log()[before..].contains("GET /v2/"),
        "fresh entries must not be fetched again"
    );
}

#[test]
fn concurrent_and_interrupted_warmers_leave_a_valid_directory() {
    let reg = Registry::start();
    // One image with a big layer so that a kill lands mid-download.
    let big_ref = format!("{}/big:1", reg.addr);
    push_with_noise(&big_ref, 1, 48 << 20);
    let imgs = images(&reg);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");

    let mut c = warmer();
    c.arg("--cache-dir")
        .arg(&dir)
        .args(["--insecure-pull", "--image", &big_ref]);
    let mut child = c.spawn().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    all_blobs_verify(&dir);

    // Two warmers at once on the same directory.
    let spawn = || {
        let mut c = warmer();
        c.arg("--cache-dir")
            .arg(&dir)
            .arg("--insecure-pull")
            .args(["--image", &big_ref]);
        for i in &imgs {
            c.args(["--image", i]);
        }
        c.spawn().unwrap()
    };
    let (a, b) = (spawn(), spawn());
    assert!(a.wait_with_output().unwrap().status.success());
    assert!(b.wait_with_output().unwrap().status.success());
    validate(&dir);
    all_blobs_verify(&dir);
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    assert_eq!(
        index["manifests"].as_array().unwrap().len(),
        4,
        "one entry per image: {index}"
    );
}

/// `image` is used by a build a second after the warmer ran; the others
/// stay unused.
fn used_by_a_build_a_second_later(dir: &Path, image: &str) {
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let d = kiln_common::layout::CacheDir::open(dir).unwrap();
    d.lock()
        .unwrap()
        .touch(image, &kiln_common::image::Platform::host())
        .unwrap();
}

fn retain_unused_for_half_a_second(dir: &Path, dry_run: bool) -> kiln_warmer::Retention {
    kiln_warmer::retain(
        dir,
        Some(std::time::Duration::from_millis(500)),
        None,
        std::time::Duration::ZERO,
        dry_run,
    )
    .unwrap()
}

#[test]
fn retention_removes_exactly_the_unused() {
    let reg = Registry::start();
    let imgs = images(&reg);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    warm_all(&dir, &imgs, &[]);
    let d = kiln_common::layout::CacheDir::open(&dir).unwrap();
    used_by_a_build_a_second_later(&dir, &imgs[1]);
    let blobs_before = std::fs::read_dir(d.blobs()).unwrap().count();
    let dry = retain_unused_for_half_a_second(&dir, true);
    assert_eq!(dry.removed_entries.len(), 2, "{dry:?}");
    assert_eq!(
        std::fs::read_dir(d.blobs()).unwrap().count(),
        blobs_before,
        "--dry-run removed something"
    );
    let done = retain_unused_for_half_a_second(&dir, false);
    assert_eq!(done.removed_entries, dry.removed_entries);
    let left = d.entries().unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].reference, imgs[1]);
    // The kept image is complete and valid; the removed images' own blobs are gone.
    validate(&dir);
    assert_eq!(done.removed_blobs, dry.removed_blobs);
    assert!(done.removed_blobs >= 4, "{done:?}");
    let u = unpack(&format!("oci:{}:{}", dir.display(), imgs[1]));
    assert!(u.rootfs().join("one").exists());
}

#[test]
fn warmed_images_reach_a_shared_registry_and_metrics_a_pushgateway() {
    let reg = Registry::start();
    let shared = Registry::start();
    let imgs = images(&reg);
    let gw = Pushgateway::start();
    let cache = tempfile::tempdir().unwrap();
    let mut c = warmer();
    c.arg("--cache-dir")
        .arg(cache.path().join("cache"))
        .args([
            "--insecure-pull",
            "--insecure-registry",
            &shared.addr,
            "--cache-server",
            &format!("{}/mirror", shared.addr),
        ])
        .arg("--pushgateway")
        .arg(&gw.url);
    for i in &imgs {
        c.args(["--image", i]);
    }
    succeeds(&mut c);
    // Every image is in the shared registry, identical to its source.
    for i in &imgs {
        let repo_tag = i.split_once('/').unwrap().1;
        let a = unpack(&format!("docker://{i}"));
        let b = unpack(&format!("docker://{}/mirror/{repo_tag}", shared.addr));
        assert_eq!(tree(&a.rootfs()), tree(&b.rootfs()), "{i}");
        assert_eq!(
            a.manifest, b.manifest,
            "{i}: the manifest is copied byte for byte"
        );
    }
    let metrics = run(Command::new("curl")
        .args(["-sf"])
        .arg(format!("{}/metrics", gw.url)));
    assert!(
        metrics.contains("kiln_warmer_images{") && metrics.contains("status=\"fetched\""),
        "{metrics}"
    );
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kiln_warmer_images{") && l.contains("fetched"))
        .unwrap();
    assert!(line.trim_end().ends_with(" 3"), "3 images fetched: {line}");
}

#[test]
fn a_transfer_cut_mid_blob_resumes_from_where_it_broke() {
    let reg = Registry::start();
    // A base whose one layer is big and incompressible enough to cut inside.
    push_with_noise(&format!("{}/big:1", reg.addr), 2, 6 << 20);
    let layer = first_layer(&format!("{}/big:1", reg.addr));
    let proxy = CuttingProxy::start(&reg.addr, &format!("/blobs/{layer}"), 3 << 20);
    let cache = tempfile::tempdir().unwrap();
    let out = warmer()
        .arg("--cache-dir")
        .arg(cache.path().join("cache"))
        .args(["--insecure-pull", "--image"])
        .arg(format!("{}/big:1", proxy.addr))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    let layer_gets = blob_gets(proxy.requests(), &layer);
    assert_eq!(
        layer_gets.len(),
        2,
        "one cut transfer, one resumed: {layer_gets:?}"
    );
    let resumed = &layer_gets[1];
    assert!(
        resumed.contains("range: bytes="),
        "the second request asks for the rest: {resumed}"
    );
    assert!(
        !resumed.contains("range: bytes=0-"),
        "not from the start: {resumed}"
    );
    all_blobs_verify(&cache.path().join("cache"));
    validate(&cache.path().join("cache"));
}

#[test]
fn a_blob_whose_bytes_do_not_match_its_digest_is_refused() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "tampered:1");
    let layer = first_layer(&base);
    let hex = layer.trim_start_matches("sha256:");
    // Flip bytes in the registry's stored copy: it serves files as they are.
    let data = reg
        .dir
        .path()
        .join("data/docker/registry/v2/blobs/sha256")
        .join(&hex[..2])
        .join(hex)
        .join("data");
    let mut bytes = std::fs::read(&data).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&data, bytes).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let out = warmer()
        .arg("--cache-dir")
        .arg(cache.path().join("cache"))
        .args(["--insecure-pull", "--image", &base])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(log.to_lowercase().contains("digest"), "{log}");
    assert!(
        !cache.path().join("cache/blobs/sha256").join(hex).exists(),
        "a corrupt blob must never be stored under its digest"
    );
}

#[test]
fn a_rate_limited_registry_is_retried_after_what_its_retry_after_asks() {
    let reg = Registry::start();
    push_busybox(&reg, "limited:1");
    // Manifests are refused for 3 s with Retry-After: 3. Exponential
    // backoff alone (0.25 + 0.5 + 1 s over three retries) would give up.
    let proxy = RateLimitProxy::start(&reg.addr, "/manifests/", Duration::from_secs(3), 3);
    let cache = tempfile::tempdir().unwrap();
    let out = warmer()
        .arg("--cache-dir")
        .arg(cache.path().join("cache"))
        .args(["--insecure-pull", "--image-download-retry", "3", "--image"])
        .arg(format!("{}/limited:1", proxy.addr))
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("retry after 3s"), "{log}");
    let reqs = proxy.requests();
    let refused: Vec<_> = reqs.iter().filter(|r| r.2).collect();
    let served = reqs
        .iter()
        .find(|r| !r.2 && r.1.contains("/manifests/"))
        .expect("a manifest request got through");
    assert!(!refused.is_empty());
    assert!(
        served.0 >= 2.9,
        "the retry waited for Retry-After: {reqs:?}"
    );
    validate(&cache.path().join("cache"));
}

#[test]
fn a_warmer_killed_mid_blob_resumes_where_it_stopped_on_the_next_run() {
    let reg = Registry::start();
    push_with_noise(&format!("{}/big:1", reg.addr), 3, 8 << 20);
    let layer = first_layer(&format!("{}/big:1", reg.addr));
    // The first transfer of the layer stalls after 4 MiB; the warmer is
    // killed then, as a node failure would.
    let proxy = CuttingProxy::stalling(&reg.addr, &format!("/blobs/{layer}"), 4 << 20);
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run_warmer = || {
        let mut c = warmer();
        c.arg("--cache-dir")
            .arg(&cache)
            .args(["--insecure-pull", "--image"])
            .arg(format!("{}/big:1", proxy.addr));
        c
    };
    let mut child = run_warmer().spawn().unwrap();
    let partial = cache
        .join("blobs/sha256")
        .join(format!(".partial-{}", layer.trim_start_matches("sha256:")));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::fs::metadata(&partial).map_or(0, |m| m.len()) < (3 << 20) {
        assert!(
            std::time::Instant::now() < deadline,
            "the download never got going"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let kept = std::fs::metadata(&partial).unwrap().len();
    assert!(kept >= 3 << 20, "the partial download survives the kill");

    let out = run_warmer().output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gets = blob_gets(proxy.requests(), &layer);
    assert_eq!(gets.len(), 2, "{gets:?}");
    assert!(
        gets[1].contains(&format!("range: bytes={kept}-")),
        "the second run asks for the rest only: {}",
        gets[1]
    );
    assert!(!partial.exists());
    all_blobs_verify(&cache);
    validate(&cache);
}

/// Warms every image of `imgs` into `dir` in one run with `extra` flags;
/// the run must succeed.
fn warm_all(dir: &Path, imgs: &[String], extra: &[&str]) {
    let mut c = warmer();
    c.arg("--cache-dir")
        .arg(dir)
        .arg("--insecure-pull")
        .args(extra);
    for i in imgs {
        c.args(["--image", i]);
    }
    succeeds(&mut c);
}

/// Runs a command that must succeed.
fn succeeds(c: &mut std::process::Command) {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn extracted(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(kiln_layers::lowers::extracted_dir(dir))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// `--extract-layers`: a layer shared by several images is extracted once,
/// a layer whose content does not match its diff id never appears (nor a
/// partial directory), and retention removes a layer's directory with the
/// last image that uses it.
#[test]
fn extracted_layers_are_verified_shared_and_retained_with_their_images() {
    let reg = Registry::start();
    let imgs = images(&reg);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    let report = cache.path().join("report.json");
    warm_all(
        &dir,
        &imgs,
        &["--extract-layers", "--report", report.to_str().unwrap()],
    );
    let ids: Vec<Vec<String>> = imgs
        .iter()
        .map(|i| diff_ids(&format!("docker://{i}")))
        .collect();
    let mut all: Vec<String> = ids.iter().flatten().cloned().collect();
    all.sort();
    all.dedup();
    assert_eq!(extracted(&dir), all, "one directory per distinct layer");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let n: u64 = r["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["layers_extracted"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(n as usize, all.len(), "the shared base extracted once: {r}");
    let one_file = kiln_layers::lowers::layer_dir(
        &dir,
        &format!("sha256:{}", ids[1].last().unwrap())
            .parse()
            .unwrap(),
    )
    .join("one");
    assert_eq!(std::fs::read_to_string(&one_file).unwrap(), "one");

    used_by_a_build_a_second_later(&dir, &imgs[1]);
    let done = retain_unused_for_half_a_second(&dir, false);
    assert_eq!(done.removed_extracted, 1, "only two's own layer: {done:?}");
    let mut kept = ids[1].clone();
    kept.sort();
    assert_eq!(extracted(&dir), kept);

    // "one"'s own layer blob replaced by a valid tar of other content.
    let own = first_layer_of(&imgs[1], 1);
    let blob = dir
        .join("blobs/sha256")
        .join(own.trim_start_matches("sha256:"));
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(
        &blob,
        raw_tar(&[RawEntry {
            name: "evil",
            kind: b'0',
            link: "",
            data: b"not the layer",
        }]),
    )
    .unwrap();
    let layer_dir = one_file.parent().unwrap().to_path_buf();
    std::fs::remove_dir_all(&layer_dir).unwrap();
    let out = warmer()
        .arg("--cache-dir")
        .arg(&dir)
        .args(["--insecure-pull", "--extract-layers", "--image", &imgs[1]])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{log}");
    assert!(
        log.contains("unpacks to") && log.contains(ids[1].last().unwrap()),
        "the error names the mismatch:\n{log}"
    );
    assert!(
        !layer_dir.exists(),
        "a layer that failed its diff id appeared"
    );
    assert_eq!(
        extracted(&dir),
        vec![ids[1][0].clone()],
        "no partial directory"
    );
}

/// The digest of an image's layer `i`, as skopeo reads it.
fn first_layer_of(reference: &str, i: usize) -> String {
    let manifest: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .args(["inspect", "--raw", "--tls-verify=false"])
        .arg(format!("docker://{reference}"))))
    .unwrap();
    manifest["layers"][i]["digest"]
        .as_str()
        .unwrap()
        .to_string()
}

/// `--max-size` counts extracted layers too: a budget that the blobs fit
/// but the blobs and their extracted copies do not drops an image.
#[test]
fn max_size_counts_extracted_layers() {
    let reg = Registry::start();
    let imgs = images(&reg);
    let cache = tempfile::tempdir().unwrap();
    let dir = cache.path().join("cache");
    warm_all(&dir, &imgs, &["--extract-layers"]);
    fn bytes(p: &Path) -> u64 {
        std::fs::read_dir(p)
            .unwrap()
            .flatten()
            .map(|e| {
                let t = e.file_type().unwrap();
                if t.is_dir() {
                    bytes(&e.path())
                } else if t.is_file() {
                    e.metadata().unwrap().len()
                } else {
                    0
                }
            })
            .sum()
    }
    let blobs = bytes(&dir.join("blobs/sha256"));
    let unpacked = bytes(&kiln_layers::lowers::extracted_dir(&dir));
    assert!(unpacked > 0);
    let grace = std::time::Duration::ZERO;
    let fits = kiln_warmer::retain(&dir, None, Some(blobs + unpacked), grace, true).unwrap();
    assert!(fits.removed_entries.is_empty(), "{fits:?}");
    let over = kiln_warmer::retain(&dir, None, Some(blobs + unpacked - 1), grace, true).unwrap();
    assert!(!over.removed_entries.is_empty(), "{over:?}");
}
