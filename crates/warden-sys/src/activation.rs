//! systemd socket activation: adopting the listening sockets the service manager passed in
//! (`LISTEN_FDS`/`LISTEN_PID`, starting at fd 3).

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::net::{AddressFamily, SocketType};

/// Set once the passed descriptors have been adopted, so they are never wrapped twice.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// A listening Unix stream socket handed over by the service manager, with the path it is bound to.
#[derive(Debug)]
pub struct ActivatedListener {
    pub path: PathBuf,
    pub listener: UnixListener,
}

/// Takes ownership of the descriptors systemd passed to this process. Returns an empty list when
/// the process was not socket-activated, and on every call after the first.
///
/// Every passed descriptor must be a listening `AF_UNIX` stream socket bound to a filesystem
/// path; anything else is an error (a unit file that passes the wrong kind of socket is a
/// configuration mistake, not something to guess around).
pub fn take_listen_fds() -> io::Result<Vec<ActivatedListener>> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for raw in sd_notify::listen_fds()? {
        // SAFETY: `listen_fds` only yields descriptors when LISTEN_PID names this process, which
        // means the service manager opened them for us and nothing in this process has claimed
        // them (the TAKEN flag above guarantees this function adopts each of them at most once).
        // They are open: systemd passes them across exec with close-on-exec cleared.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if rustix::net::sockopt::socket_domain(&fd)? != AddressFamily::UNIX
            || rustix::net::sockopt::socket_type(&fd)? != SocketType::STREAM
            || !rustix::net::sockopt::socket_acceptconn(&fd)?
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("passed descriptor {raw} is not a listening Unix stream socket"),
            ));
        }
        let listener = UnixListener::from(fd);
        let addr = listener.local_addr()?;
        let path = addr.as_pathname().map(PathBuf::from).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("passed descriptor {raw} is not bound to a filesystem path"),
            )
        })?;
        out.push(ActivatedListener { path, listener });
    }
    Ok(out)
}
