//! nginx as a load balancer on loopback that sends every request to the
//! next upstream in turn (round robin; no upstream keep-alive, so
//! per-connection stickiness cannot hide a replica that forgot state), and
//! retries a request on the next upstream when one is down.

use std::process::{Child, Command};
use std::time::Duration;

pub struct RoundRobin {
    child: Child,
    _dir: tempfile::TempDir,
    pub addr: String,
    pub url: String,
}

impl RoundRobin {
    /// Balances over `upstreams` (`host:port` each).
    pub fn start(upstreams: &[&str]) -> RoundRobin {
        Self::start_routed(upstreams, &[])
    }

    /// As [`start`](Self::start), and requests under each `(prefix,
    /// upstream)` go to that upstream instead: one origin for two servers.
    pub fn start_routed(upstreams: &[&str], routes: &[(&str, &str)]) -> RoundRobin {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().display();
        let port = crate::free_port();
        let servers: String = upstreams
            .iter()
            .map(|u| format!("    server {u} max_fails=0;\n"))
            .collect();
        let routed: String = routes
            .iter()
            .map(|(prefix, up)| {
                format!("    location {prefix} {{\n      proxy_pass http://{up};\n      proxy_set_header Host $http_host;\n    }}\n")
            })
            .collect();
        let conf = format!(
            "user root;\nworker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
             events {{ worker_connections 256; }}\n\
             http {{\n  access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  \
             proxy_temp_path {d}/proxy;\n  fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  \
             scgi_temp_path {d}/scgi;\n  client_max_body_size 0;\n  proxy_buffering off;\n  \
             upstream kiln {{\n{servers}  }}\n  \
             server {{\n    listen 127.0.0.1:{port};\n{routed}    location / {{\n      proxy_pass http://kiln;\n      \
             proxy_set_header Host $http_host;\n      \
             proxy_next_upstream error timeout non_idempotent;\n      proxy_connect_timeout 2s;\n    }}\n  }}\n}}\n"
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir.path())
            .spawn()
            .expect("nginx (apt-get install nginx-light)");
        crate::wait_for_port(port, "nginx", Duration::from_secs(10));
        RoundRobin {
            child,
            _dir: dir,
            addr: format!("127.0.0.1:{port}"),
            url: format!("http://127.0.0.1:{port}"),
        }
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its worker too.
        crate::signal(self.child.id(), "TERM");
        let _ = self.child.wait();
    }
}
