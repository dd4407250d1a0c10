//! A `docker-registry` on a free loopback port (plain, TLS, htpasswd, client certificates).

use super::*;

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

    /// A plain registry listening on `listen` inside network namespace
    /// `netns` (an address that exists only there, see [`NetNs`]).
    pub fn start_in_netns(netns: &NetNs, listen: &str) -> Registry {
        let prefix = ["ip", "netns", "exec", netns.name.as_str()];
        Self::start_full(None, None, &prefix, listen)
    }

    fn start_with(
        auth: Option<(&str, &str)>,
        tls: Option<(&Path, &Path, Option<&Path>)>,
    ) -> Registry {
        Self::start_full(auth, tls, &[], "127.0.0.1:0")
    }

    /// `prefix` runs before `docker-registry` (e.g. `ip netns exec NS`).
    fn start_full(
        auth: Option<(&str, &str)>,
        tls: Option<(&Path, &Path, Option<&Path>)>,
        prefix: &[&str],
        listen: &str,
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
                "version: 0.1\nlog:\n  level: debug\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {listen}\n{tls_cfg}{auth_cfg}",
                dir.path().join("data").display()
            ),
        )
        .expect("write registry config");
        let log = dir.path().join("registry.log");
        let logf = std::fs::File::create(&log).expect("log file");
        let mut argv: Vec<&str> = prefix.to_vec();
        argv.push("docker-registry");
        let child = Command::new(argv[0])
            .args(&argv[1..])
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

/// A network namespace of the test's own, with loopback up and `addr`
/// (e.g. an RFC 1918 address) on it: servers and clients started with
/// `ip netns exec` talk over an address that exists nowhere else, so no
/// traffic leaves the machine. Deleted on drop.
pub struct NetNs {
    pub name: String,
}

impl NetNs {
    pub fn new(addr: &str) -> NetNs {
        let name = format!("kiln-test-{}-{}", std::process::id(), free_port());
        run(Command::new("ip").args(["netns", "add", &name]));
        let ns = NetNs { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&["ip", "addr", "add", &format!("{addr}/32"), "dev", "lo"]);
        ns
    }

    /// Runs `argv` inside the namespace, panicking if it fails.
    pub fn exec(&self, argv: &[&str]) -> String {
        run(Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(argv))
    }

    /// A command run inside the namespace.
    pub fn command(&self, program: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "delete", &self.name])
            .status();
    }
}
