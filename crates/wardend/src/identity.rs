//! Who is calling, from the kernel only: `SO_PEERCRED` (uid, gid, pid), `SO_PEERGROUPS`
//! (supplementary groups as of connect) and a pidfd that pins the process while its executable
//! is read. Nothing a client sends ever feeds into this.
//!
//! Order matters: take the pidfd, read `/proc/<pid>/exe`, then confirm the pidfd's process is
//! alive and still has that pid. If it is, the read was about the peer and not about a later
//! process that reused the pid. If any step fails the connection is refused: there is no
//! placeholder identity.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Mutex, PoisonError};

use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use warden_policy::PeerIdentity;
use warden_proto::{Gid, Pid, Uid};
use warden_sys::peer::PeerCred;
use warden_sys::process;

/// Why a caller could not be identified. Each one refuses the connection.
#[derive(Debug, thiserror::Error)]
pub(crate) enum IdentityError {
    #[error("reading SO_PEERGROUPS failed: {0}")]
    Groups(io::Error),
    #[error("the peer's pid is not visible in the daemon's pid namespace")]
    PidHidden,
    #[error("pinning the peer process with a pidfd failed: {0}")]
    Pidfd(io::Error),
    #[error("the peer process exited or changed during the identity check")]
    Gone,
}

/// How to take the peer's pidfd.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PidfdSource {
    /// `SO_PEERPIDFD`, falling back to `pidfd_open` on kernels without it.
    Socket,
    /// Always `pidfd_open` plus re-checks (what older kernels get; tests force it).
    PidfdOpen,
}

/// Identifies the peer of `stream`, whose `SO_PEERCRED` the accept loop already read.
pub(crate) fn identify(
    stream: &UnixStream,
    cred: PeerCred,
    needs_digest: bool,
    digests: &DigestCache,
    source: PidfdSource,
) -> Result<PeerIdentity, IdentityError> {
    let groups = warden_sys::peer::peer_groups(stream.as_fd()).map_err(IdentityError::Groups)?;
    if cred.pid <= 0 {
        return Err(IdentityError::PidHidden);
    }
    let pidfd = pin(stream, cred, source)?;
    if process::pidfd_pid(pidfd.as_fd()).map_err(IdentityError::Pidfd)? != Some(cred.pid) {
        return Err(IdentityError::Gone);
    }
    // Unreadable executables (another user's process in --dev mode, a kernel without /proc
    // access) leave `exe` empty: guards then treat the caller as unverified.
    let exe = process::exe_path(cred.pid).ok();
    let exe_sha256 = if needs_digest && exe.is_some() {
        digests.digest_of(cred.pid).ok()
    } else {
        None
    };
    if !process::pidfd_still_names(&pidfd, cred.pid).map_err(IdentityError::Pidfd)? {
        return Err(IdentityError::Gone);
    }
    Ok(PeerIdentity {
        uid: Uid(cred.uid),
        gid: Gid(cred.gid),
        pid: Pid(cred.pid),
        groups: groups.into_iter().map(Gid).collect(),
        exe,
        exe_sha256,
    })
}

fn pin(stream: &UnixStream, cred: PeerCred, source: PidfdSource) -> Result<OwnedFd, IdentityError> {
    if source == PidfdSource::Socket {
        match warden_sys::peer::peer_pidfd(stream.as_fd()) {
            Ok(fd) => return Ok(fd),
            Err(e) if warden_sys::peer::is_unsupported_option(&e) => {}
            Err(e) => return Err(IdentityError::Pidfd(e)),
        }
    }
    // Fallback for kernels before 6.5: the pid may have been reused between connect and here,
    // so the process must be alive and run with the credentials the socket recorded. What this
    // cannot rule out is a reuse of the pid by a process of the same uid and gid in that window.
    let fd = process::pidfd_open(cred.pid).map_err(|e| {
        if process::is_no_such_process(&e) {
            IdentityError::Gone
        } else {
            IdentityError::Pidfd(e)
        }
    })?;
    let ids = process::effective_ids(cred.pid).map_err(|_| IdentityError::Gone)?;
    if ids != (cred.uid, cred.gid) || !process::pidfd_still_names(&fd, cred.pid).unwrap_or(false) {
        return Err(IdentityError::Gone);
    }
    Ok(fd)
}

/// Identity of an executable file's content: if none of these changed, neither did the bytes
/// as far as a digest cache is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

/// Digests of executables already hashed, so a large binary is hashed once, not per connection.
#[derive(Debug, Default)]
pub(crate) struct DigestCache {
    known: Mutex<HashMap<FileKey, [u8; 32]>>,
}

/// Entries kept before the cache starts over.
const DIGEST_CACHE_MAX: usize = 256;

impl DigestCache {
    /// SHA-256 of the executable image `pid` runs (through `/proc/<pid>/exe`, so a replaced or
    /// deleted path still hashes what actually runs).
    fn digest_of(&self, pid: i32) -> io::Result<[u8; 32]> {
        let mut file = process::open_exe(pid)?;
        let md = file.metadata()?;
        let key = FileKey {
            dev: md.dev(),
            ino: md.ino(),
            size: md.size(),
            mtime_ns: i128::from(md.mtime()) * 1_000_000_000 + i128::from(md.mtime_nsec()),
            ctime_ns: i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
        };
        if let Some(d) = self
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
        {
            return Ok(*d);
        }
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest: [u8; 32] = hasher.finalize().into();
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if known.len() >= DIGEST_CACHE_MAX {
            known.clear();
        }
        known.insert(key, digest);
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    #[tokio::test]
    async fn both_pidfd_sources_identify_this_process_with_its_exe_and_digest() {
        let (a, _b) = pair();
        let cred = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        let cache = DigestCache::default();
        let me = std::env::current_exe().unwrap();
        let want: [u8; 32] = Sha256::digest(std::fs::read(&me).unwrap()).into();
        for source in [PidfdSource::Socket, PidfdSource::PidfdOpen] {
            let id = identify(&a, cred, true, &cache, source).unwrap();
            assert_eq!(id.pid, Pid(std::process::id() as i32));
            assert_eq!(id.uid, Uid(warden_sys::users::effective_uid()));
            assert_eq!(id.exe.as_deref(), Some(me.as_path()));
            assert_eq!(id.exe_sha256, Some(want));
        }
    }

    #[tokio::test]
    async fn no_digest_is_computed_unless_a_guard_needs_one() {
        let (a, _b) = pair();
        let cred = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        let id = identify(
            &a,
            cred,
            false,
            &DigestCache::default(),
            PidfdSource::Socket,
        )
        .unwrap();
        assert!(id.exe.is_some() && id.exe_sha256.is_none());
    }

    #[tokio::test]
    async fn a_hidden_pid_or_mismatched_credentials_refuse_instead_of_guessing() {
        let (a, _b) = pair();
        let real = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        let cache = DigestCache::default();
        let hidden = PeerCred { pid: 0, ..real };
        assert!(matches!(
            identify(&a, hidden, false, &cache, PidfdSource::Socket),
            Err(IdentityError::PidHidden)
        ));
        // The fallback refuses when the pid's process runs as someone other than the socket says.
        let lying = PeerCred {
            uid: real.uid + 1,
            ..real
        };
        assert!(matches!(
            identify(&a, lying, false, &cache, PidfdSource::PidfdOpen),
            Err(IdentityError::Gone)
        ));
    }

    #[tokio::test]
    async fn a_peer_that_exited_is_refused() {
        let (a, b) = pair();
        let real = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        drop(b);
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id() as i32;
        child.wait().unwrap();
        let cred = PeerCred { pid: dead, ..real };
        assert!(matches!(
            identify(
                &a,
                cred,
                false,
                &DigestCache::default(),
                PidfdSource::PidfdOpen
            ),
            Err(IdentityError::Gone)
        ));
    }
}
