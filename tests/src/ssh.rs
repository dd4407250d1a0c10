//! A real `ssh-agent` holding one fresh key, and a static client of the
//! agent protocol that a RUN step in a busybox image can execute, for the
//! `RUN --mount=type=ssh` tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

/// `ssh-agent` in the foreground on a socket of the test's, with one key.
pub struct SshAgent {
    child: Child,
    pub socket: PathBuf,
    /// The key's private half as written by ssh-keygen, to search artifacts for.
    pub private_key: String,
}

impl SshAgent {
    /// Starts the agent listening at `socket` (its directory must exist).
    pub fn start(socket: &Path) -> SshAgent {
        let keys = tempfile::tempdir().unwrap();
        let key = keys.path().join("id");
        crate::run(
            Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-f"])
                .arg(&key),
        );
        let child = Command::new("ssh-agent")
            .arg("-D")
            .arg("-a")
            .arg(socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("ssh-agent");
        for _ in 0..100 {
            if socket.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        crate::run(
            Command::new("ssh-add")
                .arg("-q")
                .arg(&key)
                .env("SSH_AUTH_SOCK", socket),
        );
        SshAgent {
            child,
            socket: socket.to_path_buf(),
            private_key: std::fs::read_to_string(&key).unwrap(),
        }
    }
}

impl Drop for SshAgent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asks the agent at `$SSH_AUTH_SOCK` for its identities (the protocol's
/// REQUEST_IDENTITIES) and prints how many it holds.
const AGENT_KEYS_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <sys/socket.h>
#include <sys/un.h>
static int readn(int fd, unsigned char *b, int n) {
    int got = 0;
    while (got < n) { int r = read(fd, b + got, n - got); if (r <= 0) return -1; got += r; }
    return 0;
}
int main(void) {
    const char *path = getenv("SSH_AUTH_SOCK");
    if (!path) { fprintf(stderr, "SSH_AUTH_SOCK not set\n"); return 2; }
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un a; memset(&a, 0, sizeof a); a.sun_family = AF_UNIX;
    strncpy(a.sun_path, path, sizeof a.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&a, sizeof a) != 0) { perror("connect"); return 3; }
    unsigned char req[5] = {0, 0, 0, 1, 11};
    if (write(fd, req, 5) != 5) { perror("write"); return 4; }
    unsigned char h[9];
    if (readn(fd, h, 9) != 0 || h[4] != 12) { fprintf(stderr, "bad answer\n"); return 5; }
    printf("%u\n", (h[5] << 24) | (h[6] << 16) | (h[7] << 8) | h[8]);
    return 0;
}
"#;

/// Compiles the agent client as a static binary at `to`.
pub fn agent_keys_binary(to: &Path) {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("agent-keys.c");
    std::fs::write(&src, AGENT_KEYS_C).unwrap();
    crate::run(
        Command::new("gcc")
            .args(["-static", "-O1", "-o"])
            .arg(to)
            .arg(&src),
    );
}
