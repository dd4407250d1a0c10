//! A real Debian base for the tests, as test-recipes.md checks it: a
//! bookworm `minbase` root made by `mmdebstrap` from Debian's package
//! registry (the machine's own apt setup), a flat `file:` apt repository of
//! a few packages fetched on the host (`apt-get download`, indexed by
//! `dpkg-scanpackages`), and a wheelhouse (`pip download`), so that RUN
//! steps install packages with no network at all.
//!
//! Made once per machine under `/dev/shm` (~200 MB, about a minute) and
//! shared by every test and test process: a file lock serialises the first
//! build, a marker says it is complete.

use super::*;

/// Where the kit lives; the suffix changes when its content does.
const KIT: &str = "/dev/shm/kiln-debian-kit-1";

/// Packages of the local repository: `jq` (with its libraries, for
/// `apt-get install` and `purge`) and `hello` (for `dpkg -i`).
const DEBS: &[&str] = &["jq", "libjq1", "libonig5", "hello"];
const WHEEL: &str = "six==1.16.0";

pub struct DebianKit {
    /// The base as an OCI layout image (`oci:` reference for skopeo).
    pub layout: String,
    /// The flat repository: `*.deb` and `Packages`.
    pub repo: PathBuf,
    /// The wheelhouse.
    pub wheels: PathBuf,
}

/// The kit, made first if this machine has none yet.
pub fn debian_kit() -> DebianKit {
    let dir = Path::new(KIT);
    std::fs::create_dir_all(dir).expect("creating the Debian kit's directory");
    let lock = std::fs::File::create(dir.join(".lock")).expect("the kit's lock");
    lock.lock().expect("locking the Debian kit");
    let kit = DebianKit {
        layout: format!("{}:bookworm", dir.join("layout").display()),
        repo: dir.join("repo"),
        wheels: dir.join("wheels"),
    };
    if !dir.join("complete").exists() {
        make(dir, &kit);
        std::fs::write(dir.join("complete"), "").expect("marking the Debian kit complete");
    }
    kit
}

/// Pushes the Debian base to `reg` as `debian:bookworm`; returns the
/// reference.
pub fn push_debian(reg: &Registry) -> String {
    let kit = debian_kit();
    let dest = format!("{}/debian:bookworm", reg.addr);
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}", kit.layout))
        .arg(format!("docker://{dest}")));
    dest
}

fn make(dir: &Path, kit: &DebianKit) {
    for d in ["rootfs", "layout", "repo", "wheels"] {
        let _ = std::fs::remove_dir_all(dir.join(d));
    }
    let rootfs = dir.join("rootfs");
    run(Command::new("mmdebstrap")
        .args(["--quiet", "--variant=minbase"])
        .arg("--include=python3,python3-venv,ca-certificates")
        .arg("bookworm")
        .arg(&rootfs));
    let layout = dir.join("layout");
    rootfs_layout(&rootfs, &layout, "bookworm", &["bash"]);
    std::fs::remove_dir_all(&rootfs).expect("removing the Debian root");

    std::fs::create_dir_all(&kit.repo).unwrap();
    run(Command::new("apt-get")
        .args(["download", "-q"])
        .args(DEBS)
        .current_dir(&kit.repo));
    let packages = run(Command::new("dpkg-scanpackages")
        .args([".", "/dev/null"])
        .current_dir(&kit.repo));
    std::fs::write(kit.repo.join("Packages"), packages).unwrap();

    run(Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "--only-binary=:all:",
            WHEEL,
            "-d",
        ])
        .arg(&kit.wheels));
}
