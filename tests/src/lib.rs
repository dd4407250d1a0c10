//! Real components for Kiln's integration tests: a `docker-registry` on a free
//! loopback port, base images made locally from busybox-static (pushed with
//! umoci and skopeo, never fetched from the internet), and filesystem/config
//! views of an image obtained through skopeo and umoci — tools no one here
//! wrote — so that Kiln is never checked with its own code.
//!
//! Every server and directory is cleaned up in `Drop`.
//!
//! | file | what |
//! |---|---|
//! | `lib.rs` | commands, ports, noise: what every module uses |
//! | `registry.rs` | `docker-registry` (plain, TLS, htpasswd, client certificates) |
//! | `images.rs` | test images: busybox roots, hostile tars, pulls through skopeo + umoci |
//! | `tree.rs` | filesystem trees as an outside view sees them, and their differences |
//! | `buildah.rs`, `docker.rs` | reference builders: buildah, Docker Engine (BuildKit) |
//! | `s3.rs` | moto's S3 (plain or TLS) |
//! | `cache_server.rs` | Kiln's cache server as a child process, its metrics |
//! | `proxies.rs` | proxies that cut, stall or rate-limit: outages on demand |
//! | `tls.rs` | a private CA issuing server and client certificates |
//! | `static_http.rs`, `nginx.rs`, `prom.rs`, `ssh.rs` | HTTP files, nginx round robin, Prometheus + Pushgateway, ssh-agent |
//! | `debian.rs` | a real Debian base (mmdebstrap), a local apt repository and a wheelhouse |

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

mod registry;
pub use registry::*;
mod images;
pub use images::*;
mod tree;
pub use tree::*;
mod buildah;
pub use buildah::*;
mod s3;
pub use s3::*;
mod cache_server;
pub use cache_server::*;
mod proxies;
pub use proxies::*;
mod tls;
pub use tls::*;
mod static_http;
pub use static_http::*;
mod docker;
pub use docker::DockerEngine;
mod debian;
pub use debian::{
    debian_context, debian_kit, push_debian, without_noise, DebianKit, DEBIAN_DOCKERFILE,
};
mod nginx;
mod oidc;
pub use oidc::{raw_token, IssuerKey, OidcIssuer};
mod prom;
pub use nginx::RoundRobin;
mod platforms;
mod ssh;
pub use platforms::{busybox_rootfs_arm64, push_platform_index, push_two_platform_index, Binfmt};
pub use prom::{Prometheus, Pushgateway};
pub use ssh::{agent_keys_binary, SshAgent};

/// Sends `sig` to `pid` with kill(1): how servers are stopped in `Drop`.
fn signal(pid: u32, sig: &str) {
    run(Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string()));
}
