//! What every rung gives a step besides the image: the pod's DNS files and
//! hostname, and the device nodes programs expect. None of it reaches a layer.

use std::path::Path;

/// The device nodes a step sees, with their (major, minor) numbers.
pub const DEVICES: [(&str, u64, u64); 6] = [
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// The files a step sees under `/etc` in place of the image's own, as
/// Docker's bind mounts do: (name, content).
pub fn etc_files(hostname: &str) -> [(&'static str, Vec<u8>); 3] {
    [
        (
            "hosts",
            format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n")
                .into_bytes(),
        ),
        ("hostname", format!("{hostname}\n").into_bytes()),
        // The pod's resolver: a step resolves names as the build container does.
        (
            "resolv.conf",
            std::fs::read(Path::new("/etc/resolv.conf")).unwrap_or_default(),
        ),
    ]
}
