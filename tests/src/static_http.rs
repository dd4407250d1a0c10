//! A static HTTP file server on loopback.

use super::*;

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
