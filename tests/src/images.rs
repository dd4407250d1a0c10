//! Test images made locally: busybox-static roots pushed with umoci and skopeo,
//! hand-made (hostile) tars, and images pulled back out with skopeo and umoci.

use super::*;

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
    let img = rootfs_layout(rootfs, &t.path().join("layout"), "base", cmd);
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

/// An OCI layout at `layout` holding one image, tagged `tag`, whose root is
/// `rootfs` (one layer, made by umoci); returns `layout:tag`.
pub fn rootfs_layout(rootfs: &Path, layout: &Path, tag: &str, cmd: &[&str]) -> String {
    let t = tempfile::tempdir_in(layout.parent().unwrap_or(Path::new("/tmp"))).unwrap();
    run(Command::new("umoci")
        .arg("init")
        .arg("--layout")
        .arg(layout));
    let img = format!("{}:{tag}", layout.display());
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
    img
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

/// Two Docker Hub-named images sharing a base layer, as a fleet pulls
/// them: `library/busybox:stable` and `library/tools:1` (busybox plus a
/// file). Returns their references.
pub fn push_hub_images(reg: &Registry) -> (String, String) {
    let base = push_busybox(reg, "library/busybox:stable");
    let tools = format!("{}/library/tools:1", reg.addr);
    push_derived(&base, &tools, &[("tool", "t\n")]);
    (base, tools)
}
