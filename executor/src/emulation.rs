//! RUN steps for a foreign platform execute through the kernel's
//! `binfmt_misc`: QEMU user emulation registered for the architecture's ELF
//! binaries (Debian's `qemu-user-static`, or `tonistiigi/binfmt`), as
//! BuildKit relies on. The registration must carry the F flag ("fix
//! binary": the interpreter is opened when registered), since the step
//! runs in a root that has no QEMU of its own. Without one, the step would
//! fail with `exec format error`; this says what is missing and how to
//! register it instead.

use kiln_common::image::Platform;
use std::path::Path;

/// Where the kernel lists its handlers.
pub const BINFMT_DIR: &str = "/proc/sys/fs/binfmt_misc";

#[derive(Debug, thiserror::Error)]
pub enum EmulationError {
    #[error(
        "RUN for {platform} needs an emulator: no binfmt_misc handler for {handler} is registered \
         (or enabled) on this machine. Register QEMU user emulation with the F flag, e.g. \
         `apt-get install qemu-user-static` (Debian registers qemu-{handler}), or \
         `docker run --privileged --rm tonistiigi/binfmt --install {arch}`"
    )]
    Missing {
        platform: String,
        handler: &'static str,
        arch: String,
    },
    #[error(
        "RUN for {platform}: the binfmt_misc handler {name} is registered without the F flag, so \
         its interpreter cannot be found inside the build's root; register it again with F \
         (flags: F, or OCF)"
    )]
    NoFixFlag { platform: String, name: String },
    #[error("RUN for {platform}: Kiln knows no emulator for the architecture {arch}")]
    Unknown { platform: String, arch: String },
}

/// The QEMU name of an OCI architecture's ELF machine.
fn qemu_name(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "arm64" => "aarch64",
        "arm" => "arm",
        "ppc64le" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        "mips64le" => "mips64el",
        "loong64" => "loongarch64",
        "386" => "i386",
        "amd64" => "x86_64",
        _ => return None,
    })
}

/// Whether binaries of `target` run on `host` without emulation.
pub fn native(host: &Platform, target: &Platform) -> bool {
    host.architecture == target.architecture
        || (host.architecture == "amd64" && target.architecture == "386")
}

/// What one registration file says: enabled, and with which flags.
fn parse_entry(text: &str) -> (bool, String) {
    let enabled = text.lines().next().is_some_and(|l| l.trim() == "enabled");
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .unwrap_or("")
        .trim()
        .to_string();
    (enabled, flags)
}

/// Ok when RUN steps for `target` can execute here: natively, or through
/// an enabled handler with the F flag in `dir` (`/proc/sys/fs/binfmt_misc`).
pub fn check(host: &Platform, target: &Platform, dir: &Path) -> Result<(), EmulationError> {
    if native(host, target) {
        return Ok(());
    }
    let Some(q) = qemu_name(&target.architecture) else {
        return Err(EmulationError::Unknown {
            platform: target.to_string(),
            arch: target.architecture.clone(),
        });
    };
    let mut without_f = None;
    for name in [format!("qemu-{q}"), q.to_string()] {
        let Ok(text) = std::fs::read_to_string(dir.join(&name)) else {
            continue;
        };
        match parse_entry(&text) {
            (true, flags) if flags.contains('F') => return Ok(()),
            (true, _) => without_f = Some(name),
            (false, _) => {}
        }
    }
    Err(match without_f {
        Some(name) => EmulationError::NoFixFlag {
            platform: target.to_string(),
            name,
        },
        None => EmulationError::Missing {
            platform: target.to_string(),
            handler: q,
            arch: target.architecture.clone(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Platform {
        Platform::parse(s).unwrap()
    }

    #[test]
    fn a_handler_must_be_enabled_and_fix_its_binary() {
        let dir = tempfile::tempdir().unwrap();
        let (host, arm) = (p("linux/amd64"), p("linux/arm64"));
        assert!(check(&host, &host, dir.path()).is_ok());
        assert!(check(&host, &p("linux/386"), dir.path()).is_ok());
        let e = check(&host, &arm, dir.path()).unwrap_err();
        assert!(
            e.to_string().contains("linux/arm64") && e.to_string().contains("qemu-user-static"),
            "{e}"
        );
        let entry = |state: &str, flags: &str| {
            format!("{state}\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: {flags}\noffset 0\nmagic 7f454c46\n")
        };
        std::fs::write(dir.path().join("qemu-aarch64"), entry("disabled", "OCF")).unwrap();
        assert!(matches!(
            check(&host, &arm, dir.path()),
            Err(EmulationError::Missing { .. })
        ));
        std::fs::write(dir.path().join("qemu-aarch64"), entry("enabled", "P")).unwrap();
        assert!(matches!(
            check(&host, &arm, dir.path()),
            Err(EmulationError::NoFixFlag { .. })
        ));
        std::fs::write(dir.path().join("qemu-aarch64"), entry("enabled", "POCF")).unwrap();
        assert!(check(&host, &arm, dir.path()).is_ok());
        assert!(matches!(
            check(&host, &p("linux/sparc"), dir.path()),
            Err(EmulationError::Unknown { .. })
        ));
    }
}
