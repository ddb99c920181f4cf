//! What std and socket2 do not offer: raising RLIMIT_NOFILE, setting IP_BIND_ADDRESS_NO_PORT, and
//! sending SIGTERM to a child (`demo` stops the server it started). This module is the crate's
//! whole `unsafe` surface: four `libc` calls, each with its `// SAFETY:`.

use std::io;
use std::os::fd::AsRawFd;

/// Raise the soft open-files limit to the hard limit (like oha's `nofile.rs`), so a run is bound by
/// what the machine allows rather than by the shell's default 1,024. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid, writable rlimit struct that outlives the call.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let new = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `new` is a valid rlimit struct that outlives the call; the kernel only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(io::Error::last_os_error());
        }
        lim.rlim_cur = lim.rlim_max;
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 on every target
    Ok(lim.rlim_cur as u64)
}

/// Ask the kernel to pick the source port at `connect` rather than at `bind`, so that binding to a
/// source address does not reserve a port for every socket: the port is then shared by every
/// connection whose 4-tuple differs (Linux 4.2+). That is what lets one host open more than 64K
/// connections from a range of loopback addresses.
pub fn set_bind_address_no_port(sock: &impl AsRawFd) -> io::Result<()> {
    let one: libc::c_int = 1;
    // SAFETY: the fd is an open socket owned by `sock` for the duration of the call; `one` is a
    // c_int that outlives the call and the length passed is exactly its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Send SIGTERM to a child process this process started and has not reaped yet (so its PID cannot
/// have been reused by another process).
pub fn terminate(child: &std::process::Child) -> io::Result<()> {
    let pid = libc::pid_t::try_from(child.id()).map_err(io::Error::other)?;
    // SAFETY: kill(2) takes plain integers and touches no memory of ours; the PID is that of our
    // own unreaped child (std's `Child` keeps it from being waited for elsewhere).
    if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nofile_is_raised_to_hard() {
        let n = raise_nofile_limit().unwrap();
        assert!(n >= 1024);
    }

    #[test]
    fn bind_no_port_sets() {
        let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        set_bind_address_no_port(&s).unwrap();
    }
}
