//! `buildah` with private storage, as a reference builder.

use super::*;

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
