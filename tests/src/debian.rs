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

/// A real Debian base (mmdebstrap, see the test kit's `debian.rs`): apt
/// from a local `file:` repository with its `_apt` sandbox, `dpkg -i`,
/// `apt-get purge`, pip into a venv from a wheelhouse, `useradd`, `chown`
/// and `USER`, merged-/usr writes through `/bin`, `/root`, a directory
/// replaced by a link. `SOURCE_DATE_EPOCH` makes Python's byte code
/// hash-based, so two builds compare byte for byte.
pub const DEBIAN_DOCKERFILE: &str = r#"FROM {DEBIAN}
COPY repo /repo
COPY wheels /wheels
RUN rm -f /etc/apt/sources.list.d/debian.sources /etc/apt/sources.list && echo 'deb [trusted=yes] file:/repo ./' > /etc/apt/sources.list.d/local.list && apt-get update -q && apt-get install -y -q --no-install-recommends jq && jq --version > /jq-version
RUN dpkg -i /repo/hello_*.deb && hello > /hello-out
RUN apt-get purge -y -q jq && apt-get autoremove -y -q && rm -rf /var/lib/apt/lists/*
RUN export SOURCE_DATE_EPOCH=1 PIP_DISABLE_PIP_VERSION_CHECK=1 && python3 -m venv /venv && /venv/bin/pip install -q --no-cache-dir --no-index --find-links /wheels six && /venv/bin/python -c 'import six; print(six.__version__)' > /six-version
RUN useradd -m -u 1001 -s /bin/sh app && mkdir -p /srv/app && chown app:app /srv/app && echo x > /root/.kiln-profile
RUN printf '#!/bin/sh\necho tool\n' > /bin/kiln-tool && chmod 755 /bin/kiln-tool && mkdir -p /usr/local/share/d/sub && echo 1 > /usr/local/share/d/f
RUN rm -rf /usr/local/share/d && ln -s /tmp /usr/local/share/d
USER app
RUN id > /srv/app/id && echo hi > /home/app/hi && kiln-tool > /home/app/tool
"#;

/// A context for [`DEBIAN_DOCKERFILE`] (its base left as `{DEBIAN}`): the
/// Dockerfile, the kit's repository and wheelhouse.
pub fn debian_context() -> tempfile::TempDir {
    let kit = debian_kit();
    let c = tempfile::tempdir().unwrap();
    std::fs::write(c.path().join("Dockerfile"), DEBIAN_DOCKERFILE).unwrap();
    run(Command::new("cp")
        .arg("-a")
        .arg(&kit.repo)
        .arg(c.path().join("repo")));
    run(Command::new("cp")
        .arg("-a")
        .arg(&kit.wheels)
        .arg(c.path().join("wheels")));
    c
}

/// Files whose content differs between any two builds of the Debian
/// context, whoever builds (times and caches, as test-recipes.md lists
/// them; `/etc/shadow`, whose `useradd` entry holds the day of the change,
/// so two builds either side of midnight differ): kept in the comparison
/// with their type, mode and owner, content left out.
pub fn without_noise(mut tree: BTreeMap<String, Entry>) -> BTreeMap<String, Entry> {
    for (p, e) in tree.iter_mut() {
        let noise = p == "var/cache/ldconfig/aux-cache"
            || (p.starts_with("var/cache/apt/") && p.ends_with(".bin"))
            || p == "var/log/dpkg.log"
            || p == "var/log/alternatives.log"
            || p.starts_with("var/log/apt/")
            || p == "etc/shadow";
        if noise {
            e.data = "(noise)".into();
        }
    }
    tree
}
