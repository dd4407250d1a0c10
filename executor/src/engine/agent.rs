//! `RUN --mount=type=ssh`: the step reaches the SSH agent the executor was
//! given (`--ssh id=<socket>`) through a socket of its own inside the root.
//!
//! Why a relay and not the agent's socket itself: the agent usually lives
//! outside anything the step can see (the chroot rung's private root, the
//! namespaces rung's mount namespace), and a Unix socket cannot be copied.
//! The executor listens at the target path in the root and relays each
//! connection to the agent, byte for byte, so only the agent protocol
//! crosses and the keys never leave the agent. The relay lives exactly as
//! long as the step's mounts are staged.
//!
//! The listening socket is bound through `/proc/self/fd/<dir>/<name>`
//! because a build root's path can exceed the 108 bytes a socket address
//! holds.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// A relay from a socket in the build root to an SSH agent; stopped and
/// its socket left for the caller to remove when dropped.
pub struct AgentRelay {
    stop: Arc<AtomicBool>,
    /// The short path the listener is bound under (through `dir`).
    short: PathBuf,
    _dir: OwnedFd,
    thread: Option<JoinHandle<()>>,
}

impl AgentRelay {
    /// Listens at `at` (which must not exist; its parent must) and relays
    /// every connection to the agent at `agent`.
    pub fn start(at: &Path, agent: &Path) -> io::Result<AgentRelay> {
        let parent = at.parent().ok_or(io::ErrorKind::InvalidInput)?;
        let name = at.file_name().ok_or(io::ErrorKind::InvalidInput)?;
        let dir: OwnedFd = std::fs::File::open(parent)?.into();
        let short = Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name);
        let listener = UnixListener::bind(&short)?;
        let stop = Arc::new(AtomicBool::new(false));
        let agent = agent.to_path_buf();
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ssh-agent-relay".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    match UnixStream::connect(&agent) {
                        Ok(upstream) => relay(conn, upstream),
                        Err(e) => tracing::warn!(
                            "RUN --mount=type=ssh: connecting to the agent at {}: {e}",
                            agent.display()
                        ),
                    }
                }
            })?;
        Ok(AgentRelay {
            stop,
            short,
            _dir: dir,
            thread: Some(thread),
        })
    }
}

/// Copies both ways until either side closes, on two threads of its own so
/// a step may hold several connections at once.
fn relay(a: UnixStream, b: UnixStream) {
    let pair = a.try_clone().and_then(|a2| Ok((a2, b.try_clone()?)));
    let Ok((a2, b2)) = pair else { return };
    for (mut from, mut to) in [(a, b2), (b, a2)] {
        let _ = std::thread::Builder::new()
            .name("ssh-agent-copy".into())
            .spawn(move || {
                let _ = io::copy(&mut from, &mut to);
                let _ = to.shutdown(std::net::Shutdown::Write);
            });
    }
}

impl Drop for AgentRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        // Wake the blocked accept; the loop sees the flag and ends.
        let _ = UnixStream::connect(&self.short);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// An "agent" that answers each connection with what it received,
    /// reversed; reached through a relay whose path is longer than a socket
    /// address can hold.
    #[test]
    fn relays_each_connection_and_stops_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let agent_path = dir.path().join("agent.sock");
        let agent = UnixListener::bind(&agent_path).unwrap();
        std::thread::spawn(move || {
            for c in agent.incoming() {
                let mut c = c.unwrap();
                let mut buf = [0u8; 5];
                c.read_exact(&mut buf).unwrap();
                buf.reverse();
                c.write_all(&buf).unwrap();
            }
        });
        let deep = dir.path().join("x".repeat(60)).join("y".repeat(60));
        std::fs::create_dir_all(&deep).unwrap();
        let at = deep.join("ssh_agent.0");
        let relay = AgentRelay::start(&at, &agent_path).unwrap();
        for _ in 0..2 {
            let dir_fd = std::fs::File::open(&deep).unwrap();
            let short = format!("/proc/self/fd/{}/ssh_agent.0", dir_fd.as_raw_fd());
            let mut c = UnixStream::connect(short).unwrap();
            c.write_all(b"hello").unwrap();
            let mut back = [0u8; 5];
            c.read_exact(&mut back).unwrap();
            assert_eq!(&back, b"olleh");
        }
        drop(relay);
        let dir_fd = std::fs::File::open(&deep).unwrap();
        let short = format!("/proc/self/fd/{}/ssh_agent.0", dir_fd.as_raw_fd());
        assert!(UnixStream::connect(short).is_err(), "still listening");
    }
}
