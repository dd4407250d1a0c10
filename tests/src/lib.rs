//! Real components for Kiln's integration tests: a `docker-registry` on a free
//! loopback port, base images made locally from busybox-static (pushed with
//! umoci and skopeo, never fetched from the internet), and filesystem/config
//! views of an image obtained through skopeo and umoci — tools no one here
//! wrote — so that Kiln is never checked with its own code.
//!
//! Every server and directory is cleaned up in `Drop`.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command, panicking with its output when it fails.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A `docker-registry` (distribution) on 127.0.0.1, port chosen by the kernel.
pub struct Registry {
    child: Child,
    pub addr: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl Registry {
    pub fn start() -> Registry {
        Self::start_with_auth(None)
    }

    /// A registry that requires basic auth (htpasswd, bcrypt) for `(user, password)`.
    pub fn start_with_auth(auth: Option<(&str, &str)>) -> Registry {
        Self::start_with(auth, None)
    }

    /// A registry serving HTTPS with this certificate and key (PEM).
    pub fn start_tls(cert: &Path, key: &Path) -> Registry {
        Self::start_with(None, Some((cert, key, None)))
    }

    /// A registry serving HTTPS that refuses any client without a
    /// certificate issued by `client_ca` (mutual TLS).
    pub fn start_mtls(cert: &Path, key: &Path, client_ca: &Path) -> Registry {
        Self::start_with(None, Some((cert, key, Some(client_ca))))
    }

    fn start_with(
        auth: Option<(&str, &str)>,
        tls: Option<(&Path, &Path, Option<&Path>)>,
    ) -> Registry {
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = dir.path().join("config.yml");
        let mut auth_cfg = String::new();
        if let Some((u, p)) = auth {
            let line = run(Command::new("htpasswd").args(["-Bbn", u, p]));
            let hp = dir.path().join("htpasswd");
            std::fs::write(&hp, line.trim()).expect("htpasswd file");
            auth_cfg = format!(
                "auth:\n  htpasswd:\n    realm: kiln-test\n    path: {}\n",
                hp.display()
            );
        }
        let tls_cfg = tls
            .map(|(c, k, client_ca)| {
                let clientcas = client_ca
                    .map(|ca| format!("    clientcas:\n      - {}\n", ca.display()))
                    .unwrap_or_default();
                format!(
                    "  tls:\n    certificate: {}\n    key: {}\n{clientcas}",
                    c.display(),
                    k.display()
                )
            })
            .unwrap_or_default();
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: debug\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:0\n{tls_cfg}{auth_cfg}",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = dir.path().join("registry.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&cfg)
            .stdout(logf.try_clone().expect("dup"))
            .stderr(logf)
            .spawn()
            .expect("docker-registry must be installed (Debian package docker-registry)");
        let deadline = Instant::now() + Duration::from_secs(20);
        let addr = loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Some(i) = text.find("listening on ") {
                let rest = &text[i + "listening on ".len()..];
                let end = rest.find(['"', ' ', ',', '\n']).unwrap_or(rest.len());
                break rest[..end].to_string();
            }
            if Instant::now() > deadline {
                panic!("docker-registry did not start:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        Registry {
            child,
            addr,
            dir,
            log,
        }
    }

    /// SIGSTOP: connections are accepted, nothing is answered (a hung registry).
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }

    /// The registry's log so far (access lines included), to count requests.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Builds a small root filesystem from the host's busybox-static binary.
pub fn busybox_rootfs(dir: &Path) {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    std::fs::copy("/bin/busybox", bin.join("busybox"))
        .expect("busybox-static must be installed (/bin/busybox)");
    let list = run(Command::new("/bin/busybox").arg("--list"));
    for applet in list.lines() {
        if applet != "busybox" && !applet.is_empty() {
            let _ = std::os::unix::fs::symlink("busybox", bin.join(applet));
        }
    }
    for d in ["etc", "tmp", "root", "home/app", "usr/bin", "var/log"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    std::fs::write(dir.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534::/:/bin/false\n").unwrap();
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\napp:x:1000:\nstaff:x:50:\nnogroup:x:65534:\n",
    )
    .unwrap();
    std::fs::write(dir.join("etc/os-release"), "NAME=kiln-test\n").unwrap();
    std::fs::write(dir.join("var/log/old.log"), "old\n").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777)).unwrap();
    let _ = std::os::unix::fs::chown(dir.join("home/app"), Some(1000), Some(1000));
}

/// busybox with every file owned by root (the test busybox has /home/app
/// owned by 1000), pushed to `reg` as `busybox:root-owned`: a base that a
/// user namespace holding one id can unpack.
pub fn push_root_owned_busybox(reg: &Registry) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    busybox_rootfs(dir.path());
    std::os::unix::fs::chown(dir.path().join("home/app"), Some(0), Some(0)).expect("chown");
    let dest = format!("{}/busybox:root-owned", reg.addr);
    push_rootfs(dir.path(), &dest, &["/bin/sh"]);
    dest
}

/// Pushes an image whose root is `rootfs` to `dest` (`host:port/repo:tag`)
/// with umoci and skopeo.
pub fn push_rootfs(rootfs: &Path, dest: &str, cmd: &[&str]) {
    push_rootfs_with(rootfs, dest, cmd, &[]);
}

/// As [`push_rootfs`], with extra `skopeo copy` flags (e.g. `--dest-creds`);
/// returns the pushed manifest's digest, as skopeo reports it.
pub fn push_rootfs_with(rootfs: &Path, dest: &str, cmd: &[&str], skopeo_flags: &[&str]) -> String {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(&layout));
    let img = format!("{}:base", layout.display());
    run(Command::new("umoci").args(["new", "--image", &img]));
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(&bundle));
    // The bundle's rootfs is empty: fill it.
    run(Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", rootfs.display()))
        .arg(bundle.join("rootfs")));
    run(Command::new("umoci")
        .args(["repack", "--image", &img])
        .arg(&bundle));
    let mut c = Command::new("umoci");
    c.args([
        "config",
        "--image",
        &img,
        "--config.env",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ]);
    for a in cmd {
        c.arg(format!("--config.cmd={a}"));
    }
    run(&mut c);
    let digest_file = t.path().join("digest");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .args(skopeo_flags)
        .arg("--digestfile")
        .arg(&digest_file)
        .arg(format!("oci:{img}"))
        .arg(format!("docker://{dest}")));
    std::fs::read_to_string(&digest_file)
        .unwrap()
        .trim()
        .to_string()
}

/// Makes and pushes the busybox base image; returns its reference.
pub fn push_busybox(reg: &Registry, repo_tag: &str) -> String {
    push_busybox_to(&reg.addr, repo_tag)
}

/// [`push_busybox`] to any registry at `addr` (plain HTTP), such as the
/// cache server.
pub fn push_busybox_to(addr: &str, repo_tag: &str) -> String {
    let t = tempfile::tempdir().unwrap();
    busybox_rootfs(t.path());
    let r = format!("{addr}/{repo_tag}");
    push_rootfs(t.path(), &r, &["sh"]);
    r
}

/// One filesystem entry as seen by an outside tool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub kind: char,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// sha256 of the content for files, the target for symlinks.
    pub data: String,
    /// Other paths sharing this inode (sorted), for hardlink groups.
    pub links: Vec<String>,
}

/// The differences between two trees, each line naming the side (`a`, `b`)
/// that has an entry alone or how the entries differ; empty when identical.
pub fn tree_diffs(
    a: &BTreeMap<String, Entry>,
    b: &BTreeMap<String, Entry>,
    (an, bn): (&str, &str),
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (p, e) in a {
        match b.get(p) {
            None => diffs.push(format!("only {an}: {p} {e:?}")),
            Some(f) if f != e => diffs.push(format!("differs: {p}\n  {an}: {e:?}\n  {bn}: {f:?}")),
            _ => {}
        }
    }
    for (p, e) in b {
        if !a.contains_key(p) {
            diffs.push(format!("only {bn}: {p} {e:?}"));
        }
    }
    diffs
}

/// Walks an unpacked root into comparable entries.
pub fn tree(root: &Path) -> BTreeMap<String, Entry> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    fn walk(
        root: &Path,
        rel: &str,
        out: &mut BTreeMap<String, Entry>,
        inodes: &mut BTreeMap<(u64, u64), Vec<String>>,
    ) {
        let dir = if rel.is_empty() {
            root.to_path_buf()
        } else {
            root.join(rel)
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        for n in names {
            let r = if rel.is_empty() {
                n.to_string_lossy().into_owned()
            } else {
                format!("{rel}/{}", n.to_string_lossy())
            };
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let (kind, data) = if ft.is_dir() {
                ('d', String::new())
            } else if ft.is_symlink() {
                (
                    'l',
                    std::fs::read_link(&p)
                        .unwrap()
                        .to_string_lossy()
                        .into_owned(),
                )
            } else if ft.is_file() {
                let mut h = sha2::Sha256::default();
                let mut f = std::fs::File::open(&p).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let k = f.read(&mut buf).unwrap();
                    if k == 0 {
                        break;
                    }
                    sha2::Digest::update(&mut h, &buf[..k]);
                }
                ('f', hex::encode(sha2::Digest::finalize(h)))
            } else if ft.is_fifo() {
                ('p', String::new())
            } else {
                ('c', format!("{}", m.rdev()))
            };
            if kind == 'f' && m.nlink() > 1 {
                inodes
                    .entry((m.dev(), m.ino()))
                    .or_default()
                    .push(r.clone());
            }
            out.insert(
                r.clone(),
                Entry {
                    kind,
                    mode: m.mode() & 0o7777,
                    uid: m.uid(),
                    gid: m.gid(),
                    data,
                    links: Vec::new(),
                },
            );
            if ft.is_dir() {
                walk(root, &r, out, inodes);
            }
        }
    }
    walk(root, "", &mut out, &mut inodes);
    for group in inodes.values() {
        if group.len() > 1 {
            for p in group {
                if let Some(e) = out.get_mut(p) {
                    e.links = group.iter().filter(|x| *x != p).cloned().collect();
                }
            }
        }
    }
    out
}

/// An image pulled out of a registry or layout with skopeo and unpacked by umoci.
pub struct Unpacked {
    pub dir: tempfile::TempDir,
    pub config: serde_json::Value,
    pub manifest: serde_json::Value,
}

impl Unpacked {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.path().join("bundle/rootfs")
    }
    /// The image config's `config` object.
    pub fn run_config(&self) -> &serde_json::Value {
        &self.config["config"]
    }
}

/// Copies `src` (a skopeo transport reference) to an OCI layout and unpacks it.
pub fn unpack(src: &str) -> Unpacked {
    unpack_with(src, &[])
}

/// As [`unpack`], with extra `skopeo copy` flags (e.g. to recompress zstd
/// layers for umoci 0.4, which reads only gzip).
pub fn unpack_with(src: &str, skopeo_flags: &[&str]) -> Unpacked {
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .args(skopeo_flags)
        .arg(src)
        .arg(format!("oci:{}:img", layout.display())));
    let img = format!("{}:img", layout.display());
    run(Command::new("umoci")
        .args(["unpack", "--image", &img])
        .arg(dir.path().join("bundle")));
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(&mdigest)).unwrap())
            .unwrap();
    let cdigest = manifest["config"]["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:")
        .to_string();
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("blobs/sha256").join(cdigest)).unwrap())
            .unwrap();
    Unpacked {
        dir,
        config,
        manifest,
    }
}

/// A `buildah` with its storage in a temp dir, so tests never touch the
/// host's container storage.
pub struct Buildah {
    pub dir: tempfile::TempDir,
}

impl Default for Buildah {
    fn default() -> Self {
        Self::new()
    }
}

impl Buildah {
    pub fn new() -> Buildah {
        Buildah {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new("buildah");
        c.arg("--root")
            .arg(self.dir.path().join("root"))
            .arg("--runroot")
            .arg(self.dir.path().join("runroot"))
            .arg("--storage-driver")
            .arg("vfs");
        c.env("BUILDAH_ISOLATION", "chroot");
        c.env("REGISTRIES_CONFIG_PATH", self.registries_conf());
        c
    }

    fn registries_conf(&self) -> PathBuf {
        let p = self.dir.path().join("registries.conf");
        if !p.exists() {
            std::fs::write(&p, "unqualified-search-registries = []\n").unwrap();
        }
        p
    }

    /// `buildah bud` of `dockerfile` in `context`; returns the image pushed to an
    /// OCI layout as a skopeo reference.
    pub fn bud(&self, context: &Path, dockerfile: &Path, args: &[&str]) -> String {
        let layout = self.dir.path().join("out");
        let mut c = self.cmd();
        c.args([
            "bud",
            "--isolation",
            "chroot",
            "--tls-verify=false",
            "--network",
            "host",
            "-f",
        ])
        .arg(dockerfile)
        .args(["-t", "localhost/kiln-compare:latest"]);
        c.args(args);
        c.arg(context);
        run(&mut c);
        let mut p = self.cmd();
        p.args([
            "push",
            "--tls-verify=false",
            "localhost/kiln-compare:latest",
        ])
        .arg(format!("oci:{}:img", layout.display()));
        run(&mut p);
        format!("oci:{}:img", layout.display())
    }
}

/// Lines of a child's stderr, for tests that look at logs.
pub fn read_lines<R: Read>(r: R) -> Vec<String> {
    BufReader::new(r).lines().map_while(Result::ok).collect()
}

/// Checks that a process is not touching `/`: returns paths under `dir` that
/// exist (used to assert that an escape attempt wrote nothing).
pub fn exists_any(paths: &[&Path]) -> Vec<PathBuf> {
    paths
        .iter()
        .filter(|p| p.symlink_metadata().is_ok())
        .map(|p| p.to_path_buf())
        .collect()
}

pub fn stdio_null() -> Stdio {
    Stdio::null()
}

/// One entry of a hand-made tar (for hostile layers that no well-behaved tool
/// would write).
pub struct RawEntry<'a> {
    pub name: &'a str,
    /// b'0' file, b'1' hardlink, b'2' symlink, b'5' directory.
    pub kind: u8,
    pub link: &'a str,
    pub data: &'a [u8],
}

/// Writes a ustar archive byte by byte, without any path checks.
pub fn raw_tar(entries: &[RawEntry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut h = [0u8; 512];
        h[..e.name.len()].copy_from_slice(e.name.as_bytes());
        let mode = if e.kind == b'5' {
            b"0000755\0"
        } else {
            b"0000644\0"
        };
        h[100..108].copy_from_slice(mode);
        h[108..116].copy_from_slice(b"0000000\0");
        h[116..124].copy_from_slice(b"0000000\0");
        h[124..136].copy_from_slice(format!("{:011o}\0", e.data.len()).as_bytes());
        h[136..148].copy_from_slice(b"00000000000\0");
        h[156] = e.kind;
        h[157..157 + e.link.len()].copy_from_slice(e.link.as_bytes());
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(e.data);
        let pad = (512 - e.data.len() % 512) % 512;
        out.extend(std::iter::repeat_n(0u8, pad));
    }
    out.extend(std::iter::repeat_n(0u8, 1024));
    out
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b))
}

/// Pushes an image made of raw (uncompressed) layers, written as an OCI layout
/// by hand and copied with skopeo.
pub fn push_raw_layers(dest: &str, layers: &[Vec<u8>]) {
    let t = tempfile::tempdir().unwrap();
    let blobs = t.path().join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |b: &[u8]| {
        let h = sha256_hex(b);
        std::fs::write(blobs.join(&h), b).unwrap();
        format!("sha256:{h}")
    };
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for l in layers {
        let d = put(l);
        diff_ids.push(d.clone());
        descs.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": l.len()}));
    }
    let config = serde_json::json!({"architecture": "amd64", "os": "linux", "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids}});
    let cb = serde_json::to_vec(&config).unwrap();
    let cd = put(&cb);
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cb.len()}, "layers": descs});
    let mb = serde_json::to_vec(&manifest).unwrap();
    let md = put(&mb);
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mb.len(), "annotations": {"org.opencontainers.image.ref.name": "x"}}]});
    std::fs::write(
        t.path().join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        t.path().join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:x", t.path().display()))
        .arg(format!("docker://{dest}")));
}

/// The diff ids (hex, without `sha256:`) of an image's layers, from its
/// config as skopeo reads it (`docker://…`, `oci:…`).
pub fn diff_ids(image: &str) -> Vec<String> {
    let config: serde_json::Value = serde_json::from_str(&run(Command::new("skopeo")
        .args(["inspect", "--config", "--tls-verify=false"])
        .arg(image)))
    .unwrap();
    config["rootfs"]["diff_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            d.as_str()
                .unwrap()
                .trim_start_matches("sha256:")
                .to_string()
        })
        .collect()
}

/// Waits until something listens on loopback `port`; panics naming `what`
/// after `limit`.
pub fn wait_for_port(port: u16, what: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "{what} did not start");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A free loopback port (bound by the kernel, then released for a server
/// that cannot report the port it picked itself).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A real S3 API server (`moto_server` from PyPI's moto[server]) on loopback.
pub struct S3Server {
    child: Child,
    pub endpoint: String,
}

impl S3Server {
    pub fn start() -> S3Server {
        Self::start_on(free_port())
    }

    /// On a given port: to bring the "same" S3 back after an outage.
    pub fn start_on(port: u16) -> S3Server {
        Self::start_with(port, None)
    }

    /// Serving HTTPS with this certificate and key (PEM): for clients that
    /// refuse plain HTTP, as object_store's STS client does.
    pub fn start_tls(cert: &Path, key: &Path) -> S3Server {
        Self::start_with(free_port(), Some((cert, key)))
    }

    fn start_with(port: u16, tls: Option<(&Path, &Path)>) -> S3Server {
        /// moto's own server app, over TLS. moto picks the service of an
        /// unsigned request from a form body, and object_store sends its
        /// STS call (AssumeRoleWithWebIdentity, unsigned by design) as a
        /// query string, which AWS accepts too; the only addition moves
        /// that query into the body so moto routes it. moto answers it.
        const TLS_SCRIPT: &str = r#"import io, sys
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
from werkzeug.serving import run_simple
port, cert, key = int(sys.argv[1]), sys.argv[2], sys.argv[3]
app = DomainDispatcherApplication(create_backend_app)
def routed(environ, start_response):
    if 'Action=AssumeRoleWithWebIdentity' in environ.get('QUERY_STRING', ''):
        body = environ['QUERY_STRING'].encode()
        environ.update({'QUERY_STRING': '', 'CONTENT_TYPE': 'application/x-www-form-urlencoded',
                        'CONTENT_LENGTH': str(len(body)), 'wsgi.input': io.BytesIO(body)})
    return app(environ, start_response)
run_simple('127.0.0.1', port, routed, threaded=True, ssl_context=(cert, key))
"#;
        let mut cmd = Command::new("python3");
        match tls {
            Some((cert, key)) => {
                cmd.args(["-c", TLS_SCRIPT, &port.to_string()])
                    .arg(cert)
                    .arg(key);
            }
            // `python3 -m moto.server` is moto_server without relying on PATH shims.
            None => {
                cmd.args([
                    "-m",
                    "moto.server",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ]);
            }
        }
        let scheme = if tls.is_some() { "https" } else { "http" };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("moto_server must be installed (pip install 'moto[server]')");
        wait_for_port(port, "moto_server", Duration::from_secs(30));
        S3Server {
            child,
            endpoint: format!("{scheme}://127.0.0.1:{port}"),
        }
    }

    /// Creates a bucket and stores an object with boto3 (installed with moto),
    /// a client no one here wrote.
    pub fn put(&self, bucket: &str, key: &str, file: &Path) {
        const SCRIPT: &str = "import sys, boto3\n\
endpoint, bucket, key, path = sys.argv[1:5]\n\
s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
try:\n    s3.create_bucket(Bucket=bucket)\n\
except s3.exceptions.BucketAlreadyOwnedByYou:\n    pass\n\
s3.upload_file(path, bucket, key)\n";
        run(Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .arg(bucket)
            .arg(key)
            .arg(file));
    }

    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0)
    }

    /// Creates a bucket with boto3.
    pub fn create_bucket(&self, bucket: &str) {
        const SCRIPT: &str = "import sys, boto3\n\
endpoint, bucket = sys.argv[1:3]\n\
s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')\n\
s3.create_bucket(Bucket=bucket)\n";
        run(Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .arg(bucket));
    }

    /// Reads every object under `prefix` in `bucket` back with boto3 and
    /// checks that each `…/sha256/<hex>` blob hashes to its name; returns
    /// (blobs checked, keys of the ones that do not match).
    pub fn verify_blobs(&self, bucket: &str, prefix: &str) -> (usize, Vec<String>) {
        const SCRIPT: &str = r#"import sys, boto3, hashlib
endpoint, bucket, prefix = sys.argv[1:4]
s3 = boto3.client('s3', endpoint_url=endpoint, aws_access_key_id='testing', aws_secret_access_key='testing', region_name='us-east-1')
n, bad = 0, []
for page in s3.get_paginator('list_objects_v2').paginate(Bucket=bucket, Prefix=prefix):
    for o in page.get('Contents', []):
        k = o['Key']
        if '/blobs/sha256/' not in k:
            continue
        n += 1
        h = hashlib.sha256(s3.get_object(Bucket=bucket, Key=k)['Body'].read()).hexdigest()
        if h != k.rsplit('/', 1)[1]:
            bad.append(k)
print(n)
print('\n'.join(bad))
"#;
        let out = run(Command::new("python3")
            .arg("-c")
            .arg(SCRIPT)
            .arg(&self.endpoint)
            .arg(bucket)
            .arg(prefix));
        let mut lines = out.lines();
        let n = lines
            .next()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        (
            n,
            lines.filter(|l| !l.is_empty()).map(String::from).collect(),
        )
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGSTOP: connections are accepted, nothing is answered (a brownout).
    pub fn freeze(&self) {
        signal(self.child.id(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.child.id(), "CONT");
    }

    /// Environment for a client of this server (object_store reads it).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_DEFAULT_REGION", "us-east-1".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Pushes `dest`: the image `base` plus one layer holding `files` (name,
/// content), made with umoci so the base layers are shared byte for byte.
pub fn push_derived(base: &str, dest: &str, files: &[(&str, &str)]) {
    let t = tempfile::tempdir().unwrap();
    let layout = t.path().join("layout");
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false"])
        .arg(format!("docker://{base}"))
        .arg(format!("oci:{}:base", layout.display())));
    let bundle = t.path().join("bundle");
    run(Command::new("umoci")
        .args(["unpack", "--image"])
        .arg(format!("{}:base", layout.display()))
        .arg(&bundle));
    for (name, content) in files {
        std::fs::write(bundle.join("rootfs").join(name), content).unwrap();
    }
    run(Command::new("umoci")
        .args(["repack", "--image"])
        .arg(format!("{}:derived", layout.display()))
        .arg(&bundle));
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:derived", layout.display()))
        .arg(format!("docker://{dest}")));
}

/// Kiln's `cache-server` binary on a free loopback port (it binds port 0
/// and prints the port it got). Killed in `Drop`; its log stays readable.
pub struct CacheServer {
    child: Option<Child>,
    bin: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub addr: String,
    pub dir: tempfile::TempDir,
    log: PathBuf,
}

impl CacheServer {
    /// `storage` of `None` means a `file://` store in the server's temp dir.
    pub fn start(
        bin: &Path,
        storage: Option<&str>,
        args: &[&str],
        env: &[(&str, String)],
    ) -> CacheServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = storage
            .map(str::to_string)
            .unwrap_or_else(|| format!("file://{}", dir.path().join("store").display()));
        let mut all = vec![
            "serve".to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--storage".into(),
            storage,
            "--verbosity".into(),
            "debug,hyper=info,h2=info,reqwest=info".into(),
        ];
        if !args.contains(&"--data-dir") {
            all.push("--data-dir".into());
            all.push(dir.path().join("data").display().to_string());
        }
        all.extend(args.iter().map(|s| s.to_string()));
        let mut s = CacheServer {
            child: None,
            bin: bin.to_path_buf(),
            args: all,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            addr: String::new(),
            log: dir.path().join("server.log"),
            dir,
        };
        s.spawn(None);
        s
    }

    /// Starts the process; with `port`, on that port again (a restart).
    fn spawn(&mut self, port: Option<&str>) {
        let mut args = self.args.clone();
        if let Some(p) = port {
            args[2] = format!("127.0.0.1:{p}");
        }
        let out = self.dir.path().join("stdout");
        let _ = std::fs::remove_file(&out);
        let logf = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = Command::new(&self.bin)
            .args(&args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NO_COLOR", "1")
            .stdout(std::fs::File::create(&out).expect("stdout file"))
            .stderr(logf)
            .spawn()
            .expect("cache-server binary");
        let deadline = Instant::now() + Duration::from_secs(30);
        self.addr = loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            if let Some(rest) = text.strip_prefix("listening on ") {
                break rest.trim().to_string();
            }
            if Instant::now() > deadline {
                panic!("cache-server did not start:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        self.child = Some(child);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL: no chance to clean up, as in a node failure.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait: the graceful path.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
        c.wait().expect("wait")
    }

    /// Starts again on the same port and storage.
    pub fn restart(&mut self) {
        self.kill9();
        let port = self.addr.rsplit(':').next().unwrap_or_default().to_string();
        self.spawn(Some(&port));
    }

    /// The `/metrics` text, fetched with curl.
    pub fn metrics(&self) -> String {
        run(Command::new("curl").args(["-sf", &format!("{}/metrics", self.url())]))
    }

    /// Sum of a metric's samples whose labels contain all of `labels`
    /// (`name{…}` lines; `labels` like `result="hit"`).
    pub fn metric(&self, name: &str, labels: &[&str]) -> f64 {
        metric_sum(&self.metrics(), name, labels)
    }
}

/// Sums samples of `name` in Prometheus text whose label set contains every one of `labels`.
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, lbl) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name && labels.iter().all(|x| lbl.split(',').any(|p| p == *x)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

impl Drop for CacheServer {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Pushes a small image (busybox plus `files`) to `dest` through umoci and
/// skopeo; returns the manifest digest skopeo pushed.
pub fn push_image_layout(dest: &str, files: &[(&str, &[u8])], skopeo_flags: &[&str]) -> String {
    let t = tempfile::tempdir().unwrap();
    busybox_rootfs(t.path());
    for (name, content) in files {
        let p = t.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
    push_rootfs_with(t.path(), dest, &["sh"], skopeo_flags)
}

/// Pseudo-random, incompressible bytes (xorshift), different per seed.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A TCP proxy in front of a real server that cuts the first response to a
/// request containing `needle` after `cut_after` bytes (a connection that
/// breaks mid-transfer), and records every request head it forwards.
pub struct CuttingProxy {
    pub addr: String,
    requests: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What a test proxy does with a chunk a client sent.
enum ProxyAction {
    Forward,
    /// Answer here instead, then close the connection.
    Reply(Vec<u8>),
    /// Forward, and let only this many bytes of the response through
    /// before cutting (or stalling) the connection.
    LimitResponse(usize),
}

/// A loopback TCP proxy to `upstream`: each accepted connection gets its
/// own connection upstream, and `on_request` sees every chunk the client
/// sends. With `stall`, a limited response stops flowing but the connection
/// stays open (for a client to be killed during); otherwise it is cut.
/// Returns the proxy's address and the flag that stops accepting.
fn run_proxy<F>(
    upstream: &str,
    stall: bool,
    on_request: F,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicBool>)
where
    F: Fn(&str) -> ProxyAction + Send + Sync + 'static,
{
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::{Arc, Mutex};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    l.set_nonblocking(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (up, stop2, on_request) = (upstream.to_string(), stop.clone(), Arc::new(on_request));
    std::thread::spawn(move || {
        while !stop2.load(Ordering::Relaxed) {
            let (mut client, _) = match l.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let _ = client.set_nonblocking(false);
            let Ok(mut server) = std::net::TcpStream::connect(&up) else {
                continue;
            };
            let (mut c2, mut s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
            // Response bytes still allowed through, once a request is limited.
            let budget = Arc::new(Mutex::new(None::<usize>));
            let (budget_r, on_request) = (budget.clone(), on_request.clone());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = client.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    match on_request(&String::from_utf8_lossy(&buf[..n])) {
                        ProxyAction::Reply(reply) => {
                            let _ = client.write_all(&reply);
                            let _ = client.shutdown(std::net::Shutdown::Both);
                            break;
                        }
                        ProxyAction::LimitResponse(limit) => {
                            *budget_r.lock().unwrap() = Some(limit)
                        }
                        ProxyAction::Forward => {}
                    }
                    if server.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                let _ = server.shutdown(std::net::Shutdown::Both);
            });
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 64 << 10];
                while let Ok(n) = s2.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let mut b = budget.lock().unwrap();
                    let Some(left) = b.as_mut() else {
                        drop(b);
                        if c2.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        continue;
                    };
                    let room = (*left).min(n);
                    let _ = c2.write_all(&buf[..room]);
                    *left -= room;
                    if *left == 0 {
                        drop(b);
                        if stall {
                            std::thread::sleep(Duration::from_secs(120));
                        }
                        let _ = s2.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                }
                let _ = c2.shutdown(std::net::Shutdown::Both);
            });
        }
    });
    (addr, stop)
}

impl CuttingProxy {
    pub fn start(upstream: &str, needle: &str, cut_after: usize) -> CuttingProxy {
        Self::start_mode(upstream, needle, cut_after, false)
    }

    /// As [`CuttingProxy::start`], but the response stalls (the connection
    /// stays open, nothing more arrives) instead of being cut: a transfer
    /// caught mid-way, for a client to be killed during.
    pub fn stalling(upstream: &str, needle: &str, after: usize) -> CuttingProxy {
        Self::start_mode(upstream, needle, after, true)
    }

    fn start_mode(upstream: &str, needle: &str, cut_after: usize, stall: bool) -> CuttingProxy {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::{Arc, Mutex};
        let requests = Arc::new(Mutex::new(Vec::new()));
        let cut_done = AtomicBool::new(false);
        let (reqs, needle) = (requests.clone(), needle.to_string());
        let (addr, stop) = run_proxy(upstream, stall, move |text| {
            if !text.contains(" HTTP/1.1") {
                return ProxyAction::Forward;
            }
            reqs.lock().unwrap().push(text.to_string());
            if text.contains(&needle) && !cut_done.swap(true, Ordering::SeqCst) {
                ProxyAction::LimitResponse(cut_after)
            } else {
                ProxyAction::Forward
            }
        });
        CuttingProxy {
            addr,
            requests,
            stop,
        }
    }

    /// The request heads forwarded so far.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A TCP proxy in front of a real registry that answers requests whose
/// request line contains `needle` with `429 Too Many Requests` and
/// `Retry-After: <secs>` for `window` after the first such request (as a
/// rate-limited registry does), and forwards everything else. Records each
/// request line with its time and whether it was refused.
pub struct RateLimitProxy {
    pub addr: String,
    log: std::sync::Arc<std::sync::Mutex<Vec<(Instant, String, bool)>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl RateLimitProxy {
    pub fn start(
        upstream: &str,
        needle: &str,
        window: Duration,
        retry_after_secs: u64,
    ) -> RateLimitProxy {
        use std::sync::{Arc, Mutex};
        let log = Arc::new(Mutex::new(Vec::new()));
        let first: Mutex<Option<Instant>> = Mutex::new(None);
        let (log2, needle) = (log.clone(), needle.to_string());
        let (addr, stop) = run_proxy(upstream, false, move |text| {
            let Some(line) = text.lines().next().filter(|l| l.ends_with(" HTTP/1.1")) else {
                return ProxyAction::Forward;
            };
            let now = Instant::now();
            let limited = line.contains(&needle) && {
                let mut f = first.lock().unwrap();
                let start = *f.get_or_insert(now);
                now.duration_since(start) < window
            };
            log2.lock().unwrap().push((now, line.to_string(), limited));
            if !limited {
                return ProxyAction::Forward;
            }
            let body = r#"{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}"#;
            let head_only = line.starts_with("HEAD ");
            ProxyAction::Reply(
                format!(
                    "HTTP/1.1 429 Too Many Requests\r\nRetry-After: {retry_after_secs}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{}",
                    body.len(),
                    if head_only { "" } else { body }
                )
                .into_bytes(),
            )
        });
        RateLimitProxy { addr, log, stop }
    }

    /// (seconds since the first request, request line, refused with 429).
    pub fn requests(&self) -> Vec<(f64, String, bool)> {
        let log = self.log.lock().unwrap();
        let t0 = log.first().map(|e| e.0);
        log.iter()
            .map(|(t, l, r)| {
                (
                    t0.map_or(0.0, |t0| t.duration_since(t0).as_secs_f64()),
                    l.clone(),
                    *r,
                )
            })
            .collect()
    }
}

impl Drop for RateLimitProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

mod docker;
pub use docker::DockerEngine;
mod nginx;
mod prom;
pub use nginx::RoundRobin;
mod ssh;
pub use prom::{Prometheus, Pushgateway};
pub use ssh::{agent_keys_binary, SshAgent};

/// A client certificate issued by [`private_ca`]'s CA (in its `dir`), for
/// mutual TLS: `(client.pem, client.key)`.
pub fn client_certificate(ca_dir: &Path) -> (PathBuf, PathBuf) {
    issue(
        ca_dir,
        "client",
        "/CN=kiln-builder",
        "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n",
    )
}

/// A CA and a server certificate it issued for 127.0.0.1 and
/// localhost, made with openssl: `(dir, ca.pem, server.pem, server.key)`.
pub fn private_ca() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    openssl(
        dir.path(),
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=Kiln test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
    );
    let (cert, key) = issue(
        dir.path(),
        "server",
        "/CN=127.0.0.1",
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n",
    );
    let ca = dir.path().join("ca.pem");
    (dir, ca, cert, key)
}

/// A key and a certificate `<name>.pem`/`<name>.key` for `subject` with
/// these extensions, issued by the CA in `ca_dir`.
fn issue(ca_dir: &Path, name: &str, subject: &str, extensions: &str) -> (PathBuf, PathBuf) {
    let (key, csr, ext, pem) = (
        format!("{name}.key"),
        format!("{name}.csr"),
        format!("{name}.ext"),
        format!("{name}.pem"),
    );
    std::fs::write(ca_dir.join(&ext), extensions).expect("extensions file");
    openssl(
        ca_dir,
        &[
            "req", "-newkey", "rsa:2048", "-nodes", "-subj", subject, "-keyout", &key, "-out", &csr,
        ],
    );
    openssl(
        ca_dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &ext,
            "-out",
            &pem,
        ],
    );
    (ca_dir.join(pem), ca_dir.join(key))
}

fn openssl(dir: &Path, args: &[&str]) {
    run(Command::new("openssl").args(args).current_dir(dir));
}

/// A static HTTP server on loopback (python's `http.server`, which sends
/// `Last-Modified` from each file's mtime) serving `files`; for ADD <url>.
pub struct StaticHttp {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
    log: tempfile::NamedTempFile,
}

impl StaticHttp {
    pub fn start(files: &[(&str, &str)]) -> StaticHttp {
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("file");
        }
        let port = free_port();
        let log = tempfile::NamedTempFile::new().expect("log");
        let child = Command::new("python3")
            .args([
                "-m",
                "http.server",
                "--bind",
                "127.0.0.1",
                &port.to_string(),
            ])
            .current_dir(dir.path())
            .stdout(Stdio::null())
            .stderr(log.reopen().expect("log"))
            .spawn()
            .expect("python3");
        wait_for_port(port, "http.server", Duration::from_secs(10));
        StaticHttp {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
            log,
        }
    }

    /// GET requests answered so far.
    pub fn gets(&self) -> usize {
        std::fs::read_to_string(self.log.path())
            .unwrap_or_default()
            .matches("\"GET ")
            .count()
    }

    /// Where the served files are.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for StaticHttp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn signal(pid: u32, sig: &str) {
    run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()));
}
