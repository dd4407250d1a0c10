//! kaniko's rule for plain HTTP (issue 26): registries on `127.0.0.1` and
//! on RFC 1918 addresses are reached without any `--insecure*` flag —
//! pulls, pushes, the cache repository and the warmer — after TLS was
//! tried first; the log says so once per host. The private address exists
//! only inside a network namespace the test makes, so nothing leaves the
//! machine.

mod common;
use common::*;
use kiln_testkit::*;
use std::path::Path;
use std::process::{Command, Output};

fn warmer_bin() -> std::path::PathBuf {
    let p = Path::new(env!("CARGO_BIN_EXE_executor")).with_file_name("warmer");
    assert!(
        p.exists(),
        "{} missing: build the workspace first",
        p.display()
    );
    p
}

/// Pushes an image to `addr`, builds on it with a cache in `addr`, and
/// warms it: each through `cmd` (a plain command, or one in a namespace),
/// with no flag naming the registry.
fn without_flags(addr: &str, cmd: &dyn Fn(&Path) -> Command) {
    let ctx = context_with("FROM scratch\nCOPY a.txt /a.txt\n");
    write(ctx.path(), "a.txt", "first\n");
    let work = tempfile::tempdir().unwrap();
    let ok = |o: Output, what: &str| -> String {
        let log = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(o.status.success(), "{what} failed:\n{log}");
        assert!(!log.contains("InvalidContentType"), "{log}");
        log
    };
    let exe = Path::new(env!("CARGO_BIN_EXE_executor"));
    let kdir = work.path().join("k");
    let base = format!("{addr}/app:1");
    let o = cmd(exe)
        .arg("--context")
        .arg(ctx.path())
        .arg("--kaniko-dir")
        .arg(&kdir)
        .args(["--destination", &base])
        .output()
        .unwrap();
    let log = ok(o, "the push");
    assert_eq!(
        log.matches("speaking plain HTTP").count(),
        1,
        "one line for the host:\n{log}"
    );
    assert!(log.contains(addr), "{log}");

    let ctx2 = context_with(&format!("FROM {base}\nCOPY b.txt /b.txt\n"));
    write(ctx2.path(), "b.txt", "second\n");
    let layout = work.path().join("oci");
    let cache = format!("{addr}/cache/app");
    let o = cmd(exe)
        .arg("--context")
        .arg(ctx2.path())
        .arg("--kaniko-dir")
        .arg(&kdir)
        .args(["--destination", &format!("{addr}/app:2")])
        .args(["--cache", "--cache-repo", &cache, "--cache-copy-layers"])
        .arg("--oci-layout-path")
        .arg(&layout)
        .output()
        .unwrap();
    let log = ok(o, "the build on the pushed base");
    assert!(log.contains("1 misses"), "the cache was consulted:\n{log}");
    let img = unpack(&format!("oci:{}", layout.display()));
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("a.txt")).unwrap(),
        "first\n"
    );
    assert_eq!(
        std::fs::read_to_string(img.rootfs().join("b.txt")).unwrap(),
        "second\n"
    );

    let warmed = work.path().join("warm");
    let o = cmd(&warmer_bin())
        .arg("--cache-dir")
        .arg(&warmed)
        .args(["--image", &format!("{addr}/app:2")])
        .output()
        .unwrap();
    ok(o, "the warmer");
    assert!(warmed.join("index.json").exists());
}

#[test]
fn a_registry_on_loopback_needs_no_flag() {
    let reg = Registry::start();
    assert!(reg.addr.starts_with("127.0.0.1:"), "{}", reg.addr);
    without_flags(&reg.addr, &|p| Command::new(p));
}

#[test]
fn a_registry_on_a_private_address_needs_no_flag() {
    let addr = "10.213.47.9";
    let ns = NetNs::new(addr);
    let reg = Registry::start_in_netns(&ns, &format!("{addr}:5000"));
    without_flags(&reg.addr, &|p| ns.command(p));
    // A public address gets no such treatment: TLS or nothing.
    let ctx = context_with("FROM scratch\nCOPY a.txt /a.txt\n");
    write(ctx.path(), "a.txt", "x\n");
    let work = tempfile::tempdir().unwrap();
    let o = ns
        .command(Path::new(env!("CARGO_BIN_EXE_executor")))
        .arg("--context")
        .arg(ctx.path())
        .arg("--kaniko-dir")
        .arg(work.path())
        .args([
            "--destination",
            "203.0.113.9:5000/app:1",
            "--push-retry",
            "0",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "{log}");
    assert!(!log.contains("speaking plain HTTP"), "{log}");
}
