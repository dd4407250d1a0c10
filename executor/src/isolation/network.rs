//! `RUN --network`: BuildKit's `default` and `host` give the step the
//! builder's network (as kaniko always did); `none` takes it away.
//!
//! How `none` is enforced depends on the rung. The namespaces rung gives the
//! step a network namespace of its own with only its loopback interface up,
//! exactly BuildKit's `none`. The in-place and chroot rungs cannot create
//! one (that needs `CAP_SYS_ADMIN`), so the step gets a seccomp filter under
//! which creating an IP or packet socket fails with `EACCES` (and io_uring,
//! which could open sockets on its own, is refused). The one difference
//! from a namespace: there the step cannot use `127.0.0.1` either. Unix
//! sockets keep working on every rung.
//!
//! The filter is compiled by `seccompiler` before fork and installed between
//! fork and exec with two plain system calls, so nothing allocates there and
//! `no_new_privs` is set only when the kernel requires it (no
//! `CAP_SYS_ADMIN`): a root step on a privileged rung keeps set-uid programs.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule,
};
use std::collections::BTreeMap;
use std::io;

/// `RUN --network=…`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Network {
    /// `default` or `host`: the builder's network.
    #[default]
    Default,
    /// `none`: no network but loopback (see the module's note per rung).
    None,
}

impl std::str::FromStr for Network {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "default" | "host" => Ok(Self::Default),
            "none" => Ok(Self::None),
            other => Err(format!(
                "RUN --network={other}: expected default, none or host"
            )),
        }
    }
}

/// A compiled filter that denies network sockets to the process that
/// installs it and to everything it starts.
pub struct NoNetwork(BpfProgram);

#[cfg(target_arch = "x86_64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::aarch64;
#[cfg(target_arch = "riscv64")]
const ARCH: seccompiler::TargetArch = seccompiler::TargetArch::riscv64;

impl NoNetwork {
    pub fn compile() -> io::Result<NoNetwork> {
        let invalid = |e: seccompiler::BackendError| io::Error::new(io::ErrorKind::InvalidInput, e);
        let mut socket_rules = Vec::new();
        for domain in [libc::AF_INET, libc::AF_INET6, libc::AF_PACKET] {
            let cond =
                SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, domain as u64)
                    .map_err(invalid)?;
            socket_rules.push(SeccompRule::new(vec![cond]).map_err(invalid)?);
        }
        let rules = BTreeMap::from([
            (libc::SYS_socket, socket_rules),
            // Matched whatever the arguments: io_uring can open sockets.
            (libc::SYS_io_uring_setup, Vec::new()),
        ]);
        let filter = SeccompFilter::new(
            rules,
            SeccompAction::Allow,
            SeccompAction::Errno(libc::EACCES as u32),
            ARCH,
        )
        .map_err(invalid)?;
        let program: BpfProgram = filter.try_into().map_err(invalid)?;
        Ok(NoNetwork(program))
    }

    /// Installs the filter on the calling thread: only system calls, for
    /// use between fork and exec.
    pub fn install(&self) -> io::Result<()> {
        let prog = libc::sock_fprog {
            len: self.0.len() as u16,
            filter: self.0.as_ptr() as *mut libc::sock_filter,
        };
        let set = || {
            // SAFETY: `prog` points at a valid program that outlives the call;
            // the kernel copies it.
            unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    0,
                    &prog as *const libc::sock_fprog,
                )
            }
        };
        if set() == 0 {
            return Ok(());
        }
        let first = io::Error::last_os_error();
        if first.raw_os_error() != Some(libc::EACCES) {
            return Err(first);
        }
        // Without CAP_SYS_ADMIN the kernel asks for no_new_privs first.
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(io::Error::last_os_error());
        }
        match set() {
            0 => Ok(()),
            _ => Err(io::Error::last_os_error()),
        }
    }
}

/// Brings up `lo` in a fresh network namespace (it starts down): only
/// system calls, for use between fork and exec.
pub fn loopback_up() -> io::Result<()> {
    // SAFETY: plain socket and ioctl calls on a zeroed `ifreq` whose name is
    // set within its bounds; the descriptor is closed on every path.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo") {
            *d = *s as libc::c_char;
        }
        let mut r = libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req);
        if r == 0 {
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            r = libc::ioctl(fd, libc::SIOCSIFFLAGS, &req);
        }
        let err = io::Error::last_os_error();
        libc::close(fd);
        match r {
            0 => Ok(()),
            _ => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_values_follow_buildkit() {
        assert_eq!("host".parse::<Network>(), Ok(Network::Default));
        assert_eq!("default".parse::<Network>(), Ok(Network::Default));
        assert_eq!("none".parse::<Network>(), Ok(Network::None));
        assert!("bridge".parse::<Network>().is_err());
    }

    /// In a forked child: after installing the filter an IP socket is
    /// refused and a Unix socket is not.
    #[test]
    fn the_filter_denies_ip_sockets_only() {
        let filter = NoNetwork::compile().unwrap();
        // SAFETY: the child only makes system calls and exits.
        match unsafe { nix::unistd::fork() }.unwrap() {
            nix::unistd::ForkResult::Child => {
                let code = (|| {
                    if filter.install().is_err() {
                        return 2;
                    }
                    // SAFETY: plain socket calls.
                    let inet = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0) };
                    if inet >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EACCES)
                    {
                        return 3;
                    }
                    // SAFETY: as above.
                    let unix = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM, 0) };
                    if unix < 0 {
                        return 4;
                    }
                    0
                })();
                // SAFETY: ends the forked child without running destructors.
                unsafe { libc::_exit(code) }
            }
            nix::unistd::ForkResult::Parent { child } => {
                let status = nix::sys::wait::waitpid(child, None).unwrap();
                assert_eq!(status, nix::sys::wait::WaitStatus::Exited(child, 0));
            }
        }
    }
}
