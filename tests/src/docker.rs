//! A Docker Engine of the test's own, for running the executor in real
//! containers with the engine's default capabilities and seccomp profile.

use crate::{free_port, run};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A Docker Engine (Debian's `docker.io`) of the test's own: data and exec
/// roots on tmpfs, no bridge and no iptables (containers use the host's
/// loopback with `--network host`), reached through a private socket with the
/// engine's own client `/usr/bin/docker`. Stopped and removed on drop.
pub struct DockerEngine {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
}

impl DockerEngine {
    pub fn start() -> DockerEngine {
        Self::start_with(&[])
    }

    /// An engine whose `dockerd` also gets `args` (e.g. `--registry-mirror`).
    pub fn start_with(args: &[&str]) -> DockerEngine {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        // Short paths: the socket's must fit in sun_path.
        let dir = base.join(format!("kd-{}-{}", std::process::id(), free_port()));
        std::fs::create_dir_all(&dir).expect("docker dir");
        let sock = dir.join("d.sock");
        let log = std::fs::File::create(dir.join("dockerd.log")).expect("log");
        let child = Command::new("dockerd")
            .arg("--data-root")
            .arg(dir.join("data"))
            .arg("--exec-root")
            .arg(dir.join("exec"))
            .arg("--pidfile")
            .arg(dir.join("d.pid"))
            .arg("-H")
            .arg(format!("unix://{}", sock.display()))
            .args(["--bridge=none", "--iptables=false", "--ip-masq=false"])
            .args(args)
            .stdout(log.try_clone().expect("dup"))
            .stderr(log)
            .spawn()
            .expect("dockerd must be installed (Debian package docker.io)");
        let d = DockerEngine { child, dir, sock };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = d
                .cmd()
                .arg("version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                panic!("dockerd did not start:\n{}", d.log());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// The engine's API socket (for raw API calls such as BuildKit builds).
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default()
    }

    /// The engine's own client, talking to this engine.
    pub fn cmd(&self) -> Command {
        let mut c = Command::new("/usr/bin/docker");
        c.env("DOCKER_HOST", format!("unix://{}", self.sock.display()));
        c
    }

    /// Imports `root` as image `tag` (no registry can be pulled from here).
    pub fn import(&self, root: &Path, tag: &str, changes: &[&str]) {
        let mut tar = Command::new("tar")
            .arg("-C")
            .arg(root)
            .args(["-cf", "-", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("tar");
        let mut c = self.cmd();
        c.arg("import");
        for ch in changes {
            c.args(["-c", ch]);
        }
        c.args(["-", tag])
            .stdin(tar.stdout.take().expect("tar stdout"));
        run(&mut c);
        assert!(
            tar.wait().expect("tar").success(),
            "tar of {}",
            root.display()
        );
    }
}

impl Drop for DockerEngine {
    fn drop(&mut self) {
        // Remove leftover containers first, so that their mounts go away.
        if let Ok(out) = self.cmd().args(["ps", "-aq"]).output() {
            let ids = String::from_utf8_lossy(&out.stdout).into_owned();
            let ids: Vec<&str> = ids.split_whitespace().collect();
            if !ids.is_empty() {
                let _ = self
                    .cmd()
                    .args(["rm", "-f"])
                    .args(&ids)
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
        }
        let _ = nix_kill(self.child.id());
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // dockerd leaves mounts under its exec root (the netns nsfs);
        // detach them, deepest first, so that the directory can go.
        let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').nth(4).map(str::to_string))
            .filter(|m| Path::new(m).starts_with(&self.dir))
            .collect();
        mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in mounts {
            let _ = Command::new("umount")
                .args(["-l", &m])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nix_kill(pid: u32) -> std::io::Result<()> {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if st.success() {
        Ok(())
    } else {
        Err(std::io::Error::other("kill failed"))
    }
}
