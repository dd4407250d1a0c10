//! The executor's images against `buildah bud` builds of the same Dockerfile
//! on the same base: same filesystem and same config, compared through
//! skopeo + umoci (never through Kiln's own code).

mod common;
use common::*;
use kiln_testkit::*;
use std::collections::BTreeMap;
use std::path::Path;

/// Mount points that buildah's chroot isolation leaves behind as empty files
/// or directories; they are not part of what the Dockerfile built.
const SANDBOX_LEFTOVERS: &[&str] = &[
    "dev",
    "proc",
    "sys",
    "run",
    "etc/hosts",
    "etc/resolv.conf",
    "etc/hostname",
];
const EMPTY_SHA: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

fn drop_leftovers(a: &mut BTreeMap<String, Entry>, b: &mut BTreeMap<String, Entry>) {
    fn leftover(x: &BTreeMap<String, Entry>, y: &BTreeMap<String, Entry>, p: &str) -> bool {
        let empty = x
            .get(p)
            .is_some_and(|e| (e.kind == 'f' && e.data == EMPTY_SHA) || e.kind == 'd');
        let has_children = x.keys().any(|k| k.starts_with(&format!("{p}/")));
        empty && !has_children && !y.contains_key(p)
    }
    for p in SANDBOX_LEFTOVERS {
        if leftover(a, b, p) {
            a.remove(*p);
        }
        if leftover(b, a, p) {
            b.remove(*p);
        }
    }
}

fn compare(name: &str, ctx: &Path, extra_args: &[&str]) {
    let reg = Registry::start();
    let base = push_busybox(&reg, "busybox:latest");
    let df = std::fs::read_to_string(ctx.join("Dockerfile"))
        .unwrap()
        .replace("{BASE}", &base);
    std::fs::write(ctx.join("Dockerfile"), df).unwrap();

    let work = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let layout = out.path().join("oci");
    let mut args = vec![
        "--no-push",
        "--insecure-pull",
        "--oci-layout-path",
        layout.to_str().unwrap(),
    ];
    args.extend_from_slice(extra_args);
    must_build(ctx, work.path(), &args);
    let ours = unpack(&format!("oci:{}:latest", layout.display()));

    let buildah = Buildah::new();
    let theirs_ref = buildah.bud(ctx, &ctx.join("Dockerfile"), extra_args);
    let theirs = unpack(&theirs_ref);

    let mut a = tree(&ours.rootfs());
    let mut b = tree(&theirs.rootfs());
    drop_leftovers(&mut a, &mut b);
    // buildah creates a VOLUME's directory; BuildKit, Docker's builder and
    // Kiln's reference, does not (buildkit.rs compares that case).
    if let Some(vols) = theirs.config["config"]["Volumes"].as_object() {
        for v in vols.keys() {
            let p = v.trim_matches('/');
            let empty = b.get(p).is_some_and(|e| e.kind == 'd')
                && !b.keys().any(|k| k.starts_with(&format!("{p}/")));
            if empty && !a.contains_key(p) {
                b.remove(p);
            }
        }
    }
    let diffs = tree_diffs(&a, &b, ("kiln", "buildah"));
    assert!(
        diffs.is_empty(),
        "{name}: filesystems differ:\n{}",
        diffs.join("\n")
    );
    assert_eq!(
        config_fields(&ours.config, &CONFIG_FIELDS[..9]),
        config_fields(&theirs.config, &CONFIG_FIELDS[..9]),
        "{name}: configs differ"
    );
}

#[test]
fn config_instructions_and_run_semantics() {
    let ctx = context_config();
    compare("config", ctx.path(), &["--build-arg", "LATE=from-cli"]);
}

#[test]
fn files_whiteouts_permissions_and_links() {
    // Thousands of files, compared entry by entry too.
    let ctx = context_files(2500);
    compare("files", ctx.path(), &[]);
}

#[test]
fn multi_stage_and_dockerignore() {
    let ctx = context_multistage();
    compare("multistage", ctx.path(), &[]);
}
