//! Kiln's cache server as a child process, and its metrics.

use super::*;

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
