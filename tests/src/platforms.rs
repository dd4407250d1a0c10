//! Foreign platforms on this machine, as test-recipes.md checks them: an
//! arm64 busybox root from Debian's `busybox-static:arm64` (fetched with a
//! private apt state, the machine's dpkg architectures untouched), and
//! QEMU user emulation registered in `binfmt_misc` for as long as a test
//! holds [`Binfmt`] (what it registered or mounted is undone on drop).

use super::*;

/// Where the arm64 busybox binary is kept between tests.
const ARM64: &str = "/dev/shm/kiln-arm64-busybox-1";

/// A busybox root like [`busybox_rootfs`], with arm64 binaries.
pub fn busybox_rootfs_arm64(dir: &Path) {
    let cache = Path::new(ARM64);
    std::fs::create_dir_all(cache).unwrap();
    let lock = std::fs::File::create(cache.join(".lock")).unwrap();
    lock.lock().unwrap();
    let bin = cache.join("busybox");
    if !bin.exists() {
        let state = cache.join("apt");
        for d in ["lists/partial", "cache/archives/partial"] {
            std::fs::create_dir_all(state.join(d)).unwrap();
        }
        let opts = |c: &mut Command| {
            c.args([
                "-q",
                "-o",
                "APT::Architecture=arm64",
                "-o",
                "APT::Architectures::=arm64",
            ])
            .arg(format!(
                "-o=Dir::State::Lists={}",
                state.join("lists").display()
            ))
            .arg(format!("-o=Dir::Cache={}", state.join("cache").display()))
            .arg("-o=Dir::State::status=/dev/null");
        };
        let mut update = Command::new("apt-get");
        opts(&mut update);
        run(update.arg("update"));
        let mut download = Command::new("apt-get");
        opts(&mut download);
        run(download
            .args(["download", "busybox-static:arm64"])
            .current_dir(cache));
        let deb = std::fs::read_dir(cache)
            .unwrap()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .expect("busybox-static arm64 deb");
        let x = cache.join("x");
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x));
        std::fs::copy(x.join("bin/busybox"), &bin).unwrap();
    }
    // The host's busybox lays out the root; the binary is swapped for
    // arm64's (the applet list is the same package's).
    busybox_rootfs(dir);
    std::fs::copy(&bin, dir.join("bin/busybox")).unwrap();
}

/// QEMU's aarch64 handler registered (from Debian's qemu-user-static, with
/// its F flag) while this lives; `disabled()` holds it off instead, for a
/// test of the error without one.
pub struct Binfmt {
    /// One test process at a time changes binfmt_misc.
    _lock: std::fs::File,
    mounted: bool,
    registered: bool,
    reenable: bool,
}

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

fn binfmt_lock() -> std::fs::File {
    let f = std::fs::File::create("/dev/shm/kiln-binfmt.lock").expect("the binfmt lock");
    f.lock().expect("locking binfmt_misc for this test");
    f
}

fn mount_binfmt() -> bool {
    if Path::new(BINFMT).join("register").exists() {
        return false;
    }
    run(Command::new("mount").args(["-t", "binfmt_misc", "binfmt_misc", BINFMT]));
    true
}

impl Binfmt {
    /// Registers the handler (if it is not already).
    pub fn aarch64() -> Binfmt {
        let _lock = binfmt_lock();
        let mounted = mount_binfmt();
        let entry = Path::new(BINFMT).join("qemu-aarch64");
        let mut registered = false;
        if !entry.exists() {
            let conf = std::fs::read_to_string("/usr/lib/binfmt.d/qemu-aarch64.conf")
                .expect("qemu-user-static must be installed");
            std::fs::write(Path::new(BINFMT).join("register"), conf.trim())
                .expect("registering qemu-aarch64");
            registered = true;
        }
        std::fs::write(&entry, "1").expect("enabling qemu-aarch64");
        Binfmt {
            _lock,
            mounted,
            registered,
            reenable: false,
        }
    }

    /// No aarch64 handler enabled while this lives (one registered before
    /// is disabled, then enabled again).
    pub fn disabled() -> Binfmt {
        let _lock = binfmt_lock();
        let mounted = mount_binfmt();
        let entry = Path::new(BINFMT).join("qemu-aarch64");
        let reenable = std::fs::read_to_string(&entry).is_ok_and(|t| t.starts_with("enabled"));
        if reenable {
            std::fs::write(&entry, "0").expect("disabling qemu-aarch64");
        }
        Binfmt {
            _lock,
            mounted,
            registered: false,
            reenable,
        }
    }
}

impl Drop for Binfmt {
    fn drop(&mut self) {
        let entry = Path::new(BINFMT).join("qemu-aarch64");
        if self.registered {
            let _ = std::fs::write(&entry, "-1");
        }
        if self.reenable {
            let _ = std::fs::write(&entry, "1");
        }
        if self.mounted {
            let _ = Command::new("umount").arg(BINFMT).status();
        }
    }
}

/// Pushes `dest`: an OCI index of one image per `(architecture, root)`
/// (linux), each pushed to `<registry>/multi-src:<arch>` first with its
/// config's architecture set. Returns (arch, manifest digest) of each.
pub fn push_platform_index(
    registry: &str,
    dest: &str,
    members: &[(&str, &Path)],
) -> Vec<(String, String)> {
    let t = tempfile::tempdir().unwrap();
    let mut descs = Vec::new();
    let mut out = Vec::new();
    let layout = t.path().join("index-layout");
    for (arch, rootfs) in members {
        let src = t.path().join(format!("src-{arch}"));
        let img = rootfs_layout(rootfs, &src, "base", &["sh"]);
        run(Command::new("umoci").args(["config", "--image", &img, "--architecture", arch]));
        let tag = format!("{registry}/multi-src:{arch}");
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{img}"))
            .arg(format!("docker://{tag}")));
        let raw = run(Command::new("skopeo")
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(format!("docker://{tag}")));
        let digest = format!(
            "sha256:{}",
            hex::encode(<sha2::Sha256 as sha2::Digest>::digest(raw.as_bytes()))
        );
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": digest, "size": raw.len(), "platform": {"os": "linux", "architecture": arch}}));
        out.push((arch.to_string(), digest));
        // Every manifest's blobs into one layout through skopeo.
        run(Command::new("skopeo")
            .args(["copy", "--quiet", "--src-tls-verify=false"])
            .arg(format!("docker://{tag}"))
            .arg(format!("oci:{}:{arch}", layout.display())));
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs});
    let ib = serde_json::to_vec(&index).unwrap();
    let id = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&ib));
    std::fs::write(layout.join("blobs/sha256").join(&id), &ib).unwrap();
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json", "digest": format!("sha256:{id}"), "size": ib.len(), "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--all", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:multi", layout.display()))
        .arg(format!("docker://{dest}")));
    out
}

/// Pushes `dest`: an index of two host-binary busybox images claiming
/// linux/amd64 and linux/arm64, told apart by `/etc/arch` (`amd`, `arm`):
/// platform selection without emulation.
pub fn push_two_platform_index(registry: &str, dest: &str) -> Vec<(String, String)> {
    let roots: Vec<tempfile::TempDir> = ["amd", "arm"]
        .iter()
        .map(|marker| {
            let r = tempfile::tempdir().unwrap();
            busybox_rootfs(r.path());
            std::fs::write(r.path().join("etc/arch"), marker).unwrap();
            r
        })
        .collect();
    push_platform_index(
        registry,
        dest,
        &[("amd64", roots[0].path()), ("arm64", roots[1].path())],
    )
}
