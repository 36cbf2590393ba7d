//! Credentials of the process at the other end of a Unix stream socket, as the kernel recorded
//! them when that process called `connect(2)`. Nothing here reads anything the peer wrote.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// `SO_PEERCRED`: the peer's pid, effective uid and effective gid at connect time.
///
/// `pid` is 0 when the peer lives in a pid namespace the caller cannot see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCred {
    pub pid: i32,
    pub uid: u32,
    pub gid: u32,
}

/// Reads `SO_PEERCRED` from a connected Unix socket.
pub fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` is a live, properly aligned `ucred` and `len` holds its exact size, so the
    // kernel writes at most `len` bytes into memory we own; `sock` is a valid open descriptor for
    // the duration of the call because it is borrowed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::ucred>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERCRED returned a short ucred",
        ));
    }
    Ok(PeerCred {
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
    })
}

/// Upper bound on supplementary groups (Linux `NGROUPS_MAX`).
const NGROUPS_MAX: usize = 65_536;

/// Reads `SO_PEERGROUPS`: the peer's supplementary groups as the kernel recorded them at connect.
///
/// Starts with room for 32 groups and grows to what the kernel says it needs (it answers
/// `ERANGE` with the needed length), never beyond `NGROUPS_MAX`.
pub fn peer_groups(sock: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = (groups.len() * size_of::<libc::gid_t>()) as libc::socklen_t;
        // SAFETY: `groups` owns `groups.len()` initialised `gid_t`s and `len` is exactly that many
        // bytes, so the kernel cannot write past the buffer; `sock` stays open while borrowed.
        let rc = unsafe {
            libc::getsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        let needed = len as usize / size_of::<libc::gid_t>();
        if rc == 0 {
            groups.truncate(needed);
            return Ok(groups);
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::ERANGE)
            || needed <= groups.len()
            || needed > NGROUPS_MAX
        {
            return Err(err);
        }
        groups.resize(needed, 0);
    }
}

/// Reads `SO_PEERPIDFD`: a pidfd for the peer process, taken by the kernel from the socket itself
/// so it cannot name a different process that later reused the pid.
///
/// Fails with `ENOPROTOOPT` on kernels older than 6.5; callers fall back to [`crate::process::pidfd_open`]
/// plus a liveness re-check.
pub fn peer_pidfd(sock: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut fd: libc::c_int = -1;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is a live `c_int` and `len` is its size, so the kernel writes at most one
    // `c_int` into memory we own; `sock` stays open while borrowed.
    let rc = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERPIDFD,
            (&raw mut fd).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != size_of::<libc::c_int>() || fd < 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "SO_PEERPIDFD returned no descriptor",
        ));
    }
    // SAFETY: on success the kernel installed `fd` in this process's table just now, for this
    // call only; no other owner exists, so handing it to exactly one `OwnedFd` is sound.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads what the socket holds right now without waiting (`recv` with `MSG_DONTWAIT`), asking
/// the kernel directly rather than an event loop's idea of readiness. `WouldBlock` means empty.
pub fn recv_now(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::net::recv(sock, buf, rustix::net::RecvFlags::DONTWAIT)?.0)
}

/// Whether `err` says the kernel does not know a socket option (`ENOPROTOOPT`), as
/// `SO_PEERPIDFD` fails before Linux 6.5.
pub fn is_unsupported_option(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOPROTOOPT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn peer_cred_of_a_socketpair_is_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let cred = peer_cred(a.as_fd()).unwrap();
        assert_eq!(cred.pid, std::process::id() as i32);
        assert_eq!(cred.uid, rustix::process::geteuid().as_raw());
        assert_eq!(cred.gid, rustix::process::getegid().as_raw());
    }

    #[test]
    fn peer_groups_match_this_process_groups() {
        let (a, _b) = UnixStream::pair().unwrap();
        let mut got = peer_groups(a.as_fd()).unwrap();
        let mut want: Vec<u32> = nix::unistd::getgroups()
            .unwrap()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        got.sort_unstable();
        want.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn peer_pidfd_names_this_process() {
        let (a, _b) = UnixStream::pair().unwrap();
        let pidfd = peer_pidfd(a.as_fd()).unwrap();
        assert_eq!(
            crate::process::pidfd_pid(pidfd.as_fd()).unwrap(),
            Some(std::process::id() as i32)
        );
    }

    #[test]
    fn recv_now_reads_what_is_there_and_never_waits() {
        use std::io::Write;
        let (a, mut b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 8];
        let err = recv_now(a.as_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        b.write_all(b"abc").unwrap();
        assert_eq!(recv_now(a.as_fd(), &mut buf).unwrap(), 3);
        drop(b);
        assert_eq!(recv_now(a.as_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn peer_calls_on_a_non_socket_fail_instead_of_inventing_values() {
        let file = tempfile::tempfile().unwrap();
        assert!(peer_cred(file.as_fd()).is_err());
        assert!(peer_groups(file.as_fd()).is_err());
        assert!(peer_pidfd(file.as_fd()).is_err());
    }
}
