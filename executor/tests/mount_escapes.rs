//! Shared cache mounts as an attacker would use them, against a real
//! docker-registry and against Kiln's cache server as the cache repository:
//! a stored listing rewritten to reach outside the mount through links,
//! `../` or absolute paths must change nothing on the builder (and the
//! build goes on with an empty mount); a RUN that swaps its mount target
//! for a link to a directory of the builder must get none of that
//! directory into the cache.

mod common;
use common::*;
use kiln_testkit::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn marker() -> String {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    format!("kiln-marker-{:016x}", u64::from_le_bytes(b))
}

/// Every entry under `dir`: path, type, mode, and content or link target.
fn snapshot(dir: &Path) -> Vec<(String, String, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let m = std::fs::symlink_metadata(&d).unwrap();
        let rel = d.strip_prefix(dir).unwrap().display().to_string();
        let ft = m.file_type();
        let (kind, content) = if ft.is_dir() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                todo.push(e.path());
            }
            ("dir", Vec::new())
        } else if ft.is_symlink() {
            let t = std::fs::read_link(&d).unwrap();
            ("link", t.as_os_str().as_encoded_bytes().to_vec())
        } else {
            ("file", std::fs::read(&d).unwrap())
        };
        out.push((rel, kind.to_string(), m.permissions().mode(), content));
    }
    out.sort();
    out
}

/// Whether any file under `dir` holds `needle` (compressed layers are
/// looked into).
fn holds(dir: &Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file() {
                let bytes = std::fs::read(&p).unwrap_or_default();
                let mut plain = Vec::new();
                let _ = std::io::Read::read_to_end(
                    &mut flate2::read::MultiGzDecoder::new(&bytes[..]),
                    &mut plain,
                );
                if [&bytes, &plain]
                    .iter()
                    .any(|b| b.windows(needle.len()).any(|w| w == needle))
                {
                    out.push(p);
                }
            }
        }
    }
    out
}

fn sha(b: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{:x}", sha2::Sha256::digest(b))
}

fn curl(args: &[&str]) -> String {
    run(Command::new("curl")
        .args(["-sS", "--fail-with-body"])
        .args(args))
}

/// Pushes `data` as a blob of `repo` on `addr`: a session, then one PUT.
fn push_blob(addr: &str, repo: &str, data: &[u8]) -> String {
    let d = sha(data);
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), data).unwrap();
    let headers = curl(&[
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-D",
        "-",
        &format!("http://{addr}/v2/{repo}/blobs/uploads/"),
    ]);
    let loc = headers
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .unwrap();
    let loc = match loc.starts_with('/') {
        true => format!("http://{addr}{loc}"),
        false => loc,
    };
    let sep = if loc.contains('?') { '&' } else { '?' };
    let body = format!("@{}", f.path().display());
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/octet-stream",
        "--data-binary",
        &body,
        &format!("{loc}{sep}digest={d}"),
    ]);
    d
}

/// Replaces the cache mount's stored save with `entries` (a listing as
/// Kiln writes it) and the file contents it names.
fn poison(addr: &str, repo: &str, tag: &str, entries: &serde_json::Value, files: &[&[u8]]) {
    let layers: Vec<serde_json::Value> = files
        .iter()
        .map(|f| {
            serde_json::json!({
                "mediaType": "application/vnd.kiln.cache-mount.file",
                "digest": push_blob(addr, repo, f),
                "size": f.len(),
            })
        })
        .collect();
    let listing = serde_json::to_vec(
        &serde_json::json!({"format": "kiln-cache-mount-v1", "entries": entries}),
    )
    .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.kiln.cache-mount.config.v1+json",
            "digest": push_blob(addr, repo, &listing),
            "size": listing.len(),
        },
        "layers": layers,
    });
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), serde_json::to_vec(&manifest).unwrap()).unwrap();
    let body = format!("@{}", f.path().display());
    let url = format!("http://{addr}/v2/{repo}/manifests/{tag}");
    curl(&[
        "-X",
        "PUT",
        "-H",
        "Content-Type: application/vnd.oci.image.manifest.v1+json",
        "--data-binary",
        &body,
        &url,
    ]);
}

fn file(path: &str, content: &[u8], mode: u32) -> serde_json::Value {
    serde_json::json!({"path": path, "kind": "f", "mode": mode, "uid": 0, "gid": 0,
        "digest": sha(content), "size": content.len()})
}

fn link(path: &str, target: &str) -> serde_json::Value {
    serde_json::json!({"path": path, "kind": "l", "mode": 0o777, "uid": 0, "gid": 0, "target": target})
}

fn dir(path: &str, mode: u32) -> serde_json::Value {
    serde_json::json!({"path": path, "kind": "d", "mode": mode, "uid": 0, "gid": 0})
}

/// The listings an attacker with write access to the cache repository
/// could store, each aimed at `outside` (a directory of the builder).
fn poisoned_listings(outside: &Path) -> Vec<(&'static str, serde_json::Value, Vec<&'static [u8]>)> {
    let out = outside.display().to_string();
    let (pwned, keep): (&[u8], &[u8]) = (b"pwned\n", b"poisoned keep\n");
    vec![
        (
            "a link, then files written and a mode changed through it",
            serde_json::json!([
                link("x", &out),
                file("x/pwned", pwned, 0o755),
                file("x/keep.txt", keep, 0o777)
            ]),
            vec![pwned, keep],
        ),
        (
            "files first, the link after them",
            serde_json::json!([file("x/pwned", pwned, 0o755), link("x", &out)]),
            vec![pwned],
        ),
        (
            "a directory entry at the link's path (a chmod through it)",
            serde_json::json!([link("x", &out), dir("x", 0o777)]),
            vec![],
        ),
        (
            "a link to a link",
            serde_json::json!([
                link("x", &out),
                link("y", "x"),
                file("y/pwned", pwned, 0o644)
            ]),
            vec![pwned],
        ),
        (
            "../ paths",
            serde_json::json!([
                dir("d", 0o755),
                file(
                    &format!("d/../../../../../../../../../..{out}/pwned"),
                    pwned,
                    0o644
                )
            ]),
            vec![pwned],
        ),
        (
            "an absolute path",
            serde_json::json!([file(&format!("{out}/pwned"), pwned, 0o644)]),
            vec![pwned],
        ),
    ]
}

enum Cache {
    Registry(Registry),
    Server(CacheServer),
}

impl Cache {
    fn addr(&self) -> &str {
        match self {
            Cache::Registry(r) => &r.addr,
            Cache::Server(s) => &s.addr,
        }
    }
    /// Where the cache keeps its bytes.
    fn storage(&self) -> &Path {
        match self {
            Cache::Registry(r) => r.dir.path(),
            Cache::Server(s) => s.dir.path(),
        }
    }
}

fn caches() -> Vec<(&'static str, Cache)> {
    vec![
        ("docker-registry", Cache::Registry(Registry::start())),
        (
            "cache server",
            Cache::Server(CacheServer::start(&cache_server_bin(), None, &[], &[])),
        ),
    ]
}

fn mount_tag(addr: &str, repo: &str) -> String {
    let tags: serde_json::Value =
        serde_json::from_str(&curl(&[&format!("http://{addr}/v2/{repo}/tags/list")])).unwrap();
    let tags: Vec<&str> = tags["tags"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t.as_str())
        .filter(|t| t.starts_with("mount-"))
        .collect();
    assert_eq!(tags.len(), 1, "{tags:?}");
    tags[0].to_string()
}

#[test]
fn a_poisoned_listing_changes_nothing_outside_the_mount() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let ctx = context_with(&format!(
        "FROM {base}\nARG STAMP\n\
         RUN --mount=type=cache,id=c,target=/var/cache/c sh -c 'ls -A /var/cache/c | wc -l; echo saved > /var/cache/c/own'\n"
    ));
    for (name, cache) in caches() {
        let repo = "cache/app";
        let full = format!("{}/{repo}", cache.addr());
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep.txt"), "original\n").unwrap();
        std::fs::set_permissions(
            outside.path().join("keep.txt"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        std::fs::create_dir(outside.path().join("sub")).unwrap();
        std::fs::set_permissions(outside.path(), std::fs::Permissions::from_mode(0o750)).unwrap();
        let before = snapshot(outside.path());
        // A first pod saves the mount, so its tag exists.
        let (r, _) = cached_build_report(ctx.path(), &full, &["--build-arg", "STAMP=first"]);
        assert_eq!(r["cache_mounts"][0]["saved_files"], 1, "{name}: {r}");
        let tag = mount_tag(cache.addr(), repo);
        for (n, (what, entries, files)) in poisoned_listings(outside.path()).into_iter().enumerate()
        {
            poison(cache.addr(), repo, &tag, &entries, &files);
            let stamp = format!("STAMP=poison{n}");
            let (r, log) = cached_build_report(ctx.path(), &full, &["--build-arg", &stamp]);
            assert_eq!(
                snapshot(outside.path()),
                before,
                "{name}, {what}: the builder's directory changed"
            );
            let m = &r["cache_mounts"][0];
            assert_eq!(m["restored_files"], 0, "{name}, {what}: {m}\n{log}");
            assert!(
                log.contains("cache mount \"c\" not restored")
                    && log.contains("of the stored listing"),
                "{name}, {what}: the refusal names the mount and the entry:\n{log}"
            );
        }
        assert!(!outside.path().join("pwned").exists());
        // The cache still works for an honest save after all that.
        let (r, _) = cached_build_report(ctx.path(), &full, &["--build-arg", "STAMP=honest"]);
        assert_eq!(r["cache_mounts"][0]["restored_files"], 1, "{name}: {r}");
    }
}

#[test]
fn a_step_that_swaps_its_mount_for_a_link_uploads_nothing_of_the_builder() {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    for (name, cache) in caches() {
        let full = format!("{}/cache/app", cache.addr());
        let secret_dir = tempfile::tempdir().unwrap();
        let token = marker();
        std::fs::write(secret_dir.path().join("config.json"), &token).unwrap();
        let before = snapshot(secret_dir.path());
        let ctx = context_with(&format!(
            "FROM {base}\n\
             RUN --mount=type=cache,id=c,target=/var/cache/c sh -c 'rmdir /var/cache/c; ln -s {} /var/cache/c'\n",
            secret_dir.path().display()
        ));
        let (r, log) = cached_build_report(ctx.path(), &full, &[]);
        let found = holds(cache.storage(), token.as_bytes());
        assert!(
            found.is_empty(),
            "{name}: the builder's file reached the cache: {found:?}"
        );
        assert!(
            log.contains("is no longer a directory"),
            "{name}: the swap is warned about:\n{log}"
        );
        assert_eq!(r["cache_mounts"][0]["saved_files"], 0, "{name}: {r}");
        assert_eq!(snapshot(secret_dir.path()), before, "{name}");
    }
}
