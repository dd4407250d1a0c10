//! Prometheus' own programs on loopback: a Pushgateway, and a Prometheus
//! server that scrapes given targets every second and loads given rule
//! files — Debian's `prometheus` and `prometheus-pushgateway` packages.

use crate::{free_port, wait_for_port};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// `prometheus-pushgateway` on a free loopback port. Killed in `Drop`.
pub struct Pushgateway {
    child: Child,
    pub url: String,
}

impl Pushgateway {
    pub fn start() -> Pushgateway {
        Pushgateway::start_on(free_port())
    }

    /// On a given port, for configuration that names it (a manifest's
    /// `prometheus-pushgateway…:9091`).
    pub fn start_on(port: u16) -> Pushgateway {
        let child = Command::new("prometheus-pushgateway")
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus-pushgateway (Debian package)");
        wait_for_port(port, "pushgateway", Duration::from_secs(30));
        Pushgateway {
            child,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// `host:port`, as a scrape target.
    pub fn addr(&self) -> &str {
        self.url.trim_start_matches("http://")
    }
}

impl Drop for Pushgateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Prometheus server on a free loopback port, scraping `targets` (job
/// name → `host:port`) every second, with `rule_files` loaded. Killed in
/// `Drop`; its data directory is temporary.
pub struct Prometheus {
    child: Child,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    pub fn start(targets: &[(&str, &str)], rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut cfg = String::from(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n",
        );
        for r in rule_files {
            cfg.push_str(&format!("  - {:?}\n", r.display().to_string()));
        }
        cfg.push_str("scrape_configs:\n");
        for (job, addr) in targets {
            // honor_labels: a Pushgateway's `job` label is the pushing job's.
            cfg.push_str(&format!(
                "  - job_name: {job:?}\n    honor_labels: true\n    static_configs:\n      - targets: [{addr:?}]\n"
            ));
        }
        let cfg_path = dir.path().join("prometheus.yml");
        std::fs::write(&cfg_path, cfg).expect("prometheus.yml");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", cfg_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian package)");
        wait_for_port(port, "prometheus", Duration::from_secs(30));
        // It listens before its storage is open and answers 503 until then.
        let ready = format!("http://127.0.0.1:{port}/-/ready");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !Command::new("curl")
            .args(["-sf", "--max-time", "2", "-o", "/dev/null", &ready])
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                std::time::Instant::now() < deadline,
                "prometheus never became ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            dir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `GET /api/v1/<path>` with form parameters; the decoded JSON answer.
    pub fn api(&self, path: &str, params: &[(&str, &str)]) -> serde_json::Value {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "20", "-G"]);
        for (k, v) in params {
            c.arg("--data-urlencode").arg(format!("{k}={v}"));
        }
        let out = c
            .arg(format!("{}/api/v1/{path}", self.url))
            .output()
            .expect("curl");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "prometheus /api/v1/{path}: {e}: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// An instant query's result vector (panics when the query fails).
    pub fn query(&self, expr: &str) -> Vec<serde_json::Value> {
        let v = self.api("query", &[("query", expr)]);
        assert_eq!(v["status"], "success", "{expr}: {v}");
        match &v["data"]["result"] {
            serde_json::Value::Array(a) => a.clone(),
            // A scalar answer: one sample.
            other if !other.is_null() => vec![serde_json::json!({ "value": other })],
            _ => Vec::new(),
        }
    }

    /// Waits until `expr` returns a sample whose value is `want`.
    pub fn wait_for(&self, expr: &str, want: f64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self
                .query(expr)
                .first()
                .and_then(|s| s["value"][1].as_str().map(str::to_string))
                .and_then(|s| s.parse::<f64>().ok());
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{expr}: {got:?}, want {want}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
