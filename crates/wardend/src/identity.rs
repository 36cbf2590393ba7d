//! Who is calling, from the kernel only: `SO_PEERCRED` (uid, gid, pid), `SO_PEERGROUPS`
//! (supplementary groups as of connect) and a pidfd that pins the process while its executable
//! and mount namespace are read. Nothing a client sends ever feeds into this.
//!
//! Order matters: take the pidfd, read `/proc/<pid>/exe` and `/proc/<pid>/ns/mnt`, then confirm
//! the pidfd's process is alive and still has that pid. If it is, the reads were about the peer
//! and not about a later process that reused the pid. If any step fails the connection is
//! refused: there is no placeholder identity.
//!
//! Nothing here may wait on a file system a caller controls: at accept the executable is only
//! named and, when a `[guards]` entry with a sha256 lists its path, pinned by an `O_PATH`
//! descriptor. Its content is read later ([`DigestCache::verify`]), only when a request's
//! decision hangs on it, on a thread of its own ([`crate::fswork`]) with a size cap and a
//! deadline.

use std::collections::HashMap;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::net::UnixStream;
use warden_policy::compile::Guards;
use warden_policy::{ExeDigest, MountNs, PeerIdentity};
use warden_proto::{Gid, Pid, Uid};
use warden_sys::peer::PeerCred;
use warden_sys::process;

use crate::fswork::{FsWork, FsWorkError};

/// Largest executable hashed for a `[guards]` sha256; a larger one fails the guard.
pub(crate) const MAX_EXE_BYTES: u64 = 256 * 1024 * 1024;
/// How long hashing an executable may take before the guard fails.
pub(crate) const VERIFY_DEADLINE: Duration = Duration::from_secs(5);

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

/// The executable a peer ran at accept, held open (`O_PATH`) so that hashing it later reads
/// that file, whatever the process has exec'd since.
#[derive(Debug)]
pub(crate) struct PinnedExe {
    file: OwnedFd,
    /// Its digest once taken: the requests of one connection wait for one hashing, not one
    /// each. Only a digest is kept; a failure (a deadline, a busy uid) is tried again.
    digest: tokio::sync::Mutex<Option<[u8; 32]>>,
}

impl PinnedExe {
    fn new(file: OwnedFd) -> Self {
        PinnedExe {
            file,
            digest: tokio::sync::Mutex::new(None),
        }
    }
}

/// A peer, and its executable pinned when a guard may need to hash it.
#[derive(Debug)]
pub(crate) struct Identified {
    pub peer: PeerIdentity,
    pub exe_pin: Option<PinnedExe>,
}

/// Identifies the peer of `stream`, whose `SO_PEERCRED` the accept loop already read. `guards`
/// (the policy's at accept) says whether the executable must be pinned for a later digest.
pub(crate) fn identify(
    stream: &UnixStream,
    cred: PeerCred,
    guards: &Guards,
    source: PidfdSource,
) -> Result<Identified, IdentityError> {
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
    // A path means the same file for the peer as for the daemon only in the same mount
    // namespace: elsewhere a bind mount can put any file at an allowed path. Read only while an
    // executable guard is set: it costs a /proc lookup per connection.
    let mount_ns = match guards.mutating_exes {
        None => MountNs::Unconfirmed,
        Some(_) => match process::shares_mount_namespace(cred.pid) {
            Ok(true) => MountNs::Daemons,
            Ok(false) => MountNs::Other,
            Err(_) => MountNs::Unconfirmed,
        },
    };
    let exe_pin = match &exe {
        Some(path) if guards.digests_for(path).next().is_some() => {
            process::pin_exe(cred.pid).ok().map(PinnedExe::new)
        }
        _ => None,
    };
    if !process::pidfd_still_names(&pidfd, cred.pid).map_err(IdentityError::Pidfd)? {
        return Err(IdentityError::Gone);
    }
    Ok(Identified {
        peer: PeerIdentity {
            uid: Uid(cred.uid),
            gid: Gid(cred.gid),
            pid: Pid(cred.pid),
            groups: groups.into_iter().map(Gid).collect(),
            exe,
            mount_ns,
            exe_sha256: ExeDigest::NotTaken,
        },
        exe_pin,
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

/// Why an executable could not be hashed; the text is what the refused caller reads.
#[derive(Debug, thiserror::Error)]
enum VerifyError {
    #[error("executable too large to verify ({size} bytes; the limit is {} MiB)", MAX_EXE_BYTES >> 20)]
    TooLarge { size: u64 },
    #[error(
        "executable could not be read to verify within {} ms (its file system may be stalled)",
        VERIFY_DEADLINE.as_millis()
    )]
    TooSlow,
    #[error("executable could not be read to verify: {0}")]
    Read(io::Error),
}

/// Digests of executables already hashed, so a large binary is hashed once, not per connection.
#[derive(Debug, Default, Clone)]
pub(crate) struct DigestCache {
    known: Arc<Mutex<HashMap<FileKey, [u8; 32]>>>,
}

/// Entries kept before the cache starts over.
const DIGEST_CACHE_MAX: usize = 256;

impl DigestCache {
    /// SHA-256 of the executable `pin` holds, for a request of `uid` whose decision depends on
    /// it. Runs off the runtime threads; over [`MAX_EXE_BYTES`] or [`VERIFY_DEADLINE`] the answer
    /// is [`ExeDigest::Unverifiable`] with the reason, and the guard fails closed.
    pub(crate) async fn verify(
        &self,
        work: &Arc<FsWork>,
        uid: Uid,
        pin: &Arc<PinnedExe>,
    ) -> ExeDigest {
        let mut taken = pin.digest.lock().await;
        if let Some(d) = *taken {
            return ExeDigest::Sha256(d);
        }
        let cache = self.clone();
        let file = Arc::clone(pin);
        let hashed = work
            .run(uid, VERIFY_DEADLINE, move |due| cache.digest_of(&file, due))
            .await;
        match hashed {
            Ok(Ok(d)) => {
                *taken = Some(d);
                ExeDigest::Sha256(d)
            }
            Ok(Err(e)) => ExeDigest::Unverifiable(e.to_string()),
            Err(FsWorkError::TimedOut(_)) => {
                ExeDigest::Unverifiable(VerifyError::TooSlow.to_string())
            }
            Err(e) => ExeDigest::Unverifiable(format!("executable could not be verified: {e}")),
        }
    }

    /// Hashes the pinned file (blocking), giving up past `due` or [`MAX_EXE_BYTES`].
    fn digest_of(&self, pin: &PinnedExe, due: std::time::Instant) -> Result<[u8; 32], VerifyError> {
        let file = process::read_pinned(pin.file.as_fd()).map_err(VerifyError::Read)?;
        let md = file.metadata().map_err(VerifyError::Read)?;
        if md.size() > MAX_EXE_BYTES {
            return Err(VerifyError::TooLarge { size: md.size() });
        }
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
        // The file may grow while it is read: the cap holds for what is read, not only for the
        // size it had.
        let mut limited = file.take(MAX_EXE_BYTES + 1);
        let mut total = 0u64;
        loop {
            if std::time::Instant::now() > due {
                return Err(VerifyError::TooSlow);
            }
            let n = limited.read(&mut buf).map_err(VerifyError::Read)?;
            if n == 0 {
                break;
            }
            total += n as u64;
            if total > MAX_EXE_BYTES {
                return Err(VerifyError::TooLarge { size: total });
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
    use warden_policy::compile::ExeGuard;

    fn pair() -> (UnixStream, UnixStream) {
        UnixStream::pair().unwrap()
    }

    fn guarding(path: &std::path::Path, sha256: Option<[u8; 32]>) -> Guards {
        Guards {
            mutating_uids: None,
            mutating_exes: Some(vec![ExeGuard {
                path: path.to_owned(),
                sha256,
            }]),
        }
    }

    #[tokio::test]
    async fn both_pidfd_sources_identify_this_process_with_its_exe_and_digest() {
        let (a, _b) = pair();
        let cred = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        let cache = DigestCache::default();
        let work = Arc::new(FsWork::default());
        let me = std::env::current_exe().unwrap();
        let want: [u8; 32] = Sha256::digest(std::fs::read(&me).unwrap()).into();
        let guards = guarding(&me, Some([0; 32]));
        for source in [PidfdSource::Socket, PidfdSource::PidfdOpen] {
            let id = identify(&a, cred, &guards, source).unwrap();
            assert_eq!(id.peer.pid, Pid(std::process::id() as i32));
            assert_eq!(id.peer.uid, Uid(warden_sys::users::effective_uid()));
            assert_eq!(id.peer.exe.as_deref(), Some(me.as_path()));
            assert_eq!(id.peer.mount_ns, MountNs::Daemons);
            assert_eq!(id.peer.exe_sha256, ExeDigest::NotTaken);
            let pin = Arc::new(id.exe_pin.expect("a guarded path is pinned"));
            assert_eq!(
                cache.verify(&work, id.peer.uid, &pin).await,
                ExeDigest::Sha256(want)
            );
        }
    }

    /// Pins: nothing is pinned (nor hashed) at accept unless a sha256 guard lists the path.
    #[tokio::test]
    async fn no_exe_is_pinned_unless_a_digest_guard_lists_its_path() {
        let (a, _b) = pair();
        let cred = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        let me = std::env::current_exe().unwrap();
        for guards in [
            Guards::default(),
            guarding(&me, None),
            guarding(std::path::Path::new("/usr/bin/other"), Some([0; 32])),
        ] {
            let id = identify(&a, cred, &guards, PidfdSource::Socket).unwrap();
            assert!(id.peer.exe.is_some() && id.exe_pin.is_none(), "{guards:?}");
        }
    }

    /// Pins: an executable over the size cap is not read; the guard gets the reason.
    #[tokio::test]
    async fn an_executable_over_the_cap_is_unverifiable_with_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_EXE_BYTES + 1).unwrap();
        drop(f);
        let pin = Arc::new(PinnedExe::new(OwnedFd::from(
            std::fs::File::open(&big).unwrap(),
        )));
        let got = DigestCache::default()
            .verify(&Arc::new(FsWork::default()), Uid(0), &pin)
            .await;
        let ExeDigest::Unverifiable(why) = got else {
            panic!("{got:?}");
        };
        assert!(why.starts_with("executable too large to verify"), "{why}");
    }

    #[tokio::test]
    async fn a_hidden_pid_or_mismatched_credentials_refuse_instead_of_guessing() {
        let (a, _b) = pair();
        let real = warden_sys::peer::peer_cred(a.as_fd()).unwrap();
        let none = Guards::default();
        let hidden = PeerCred { pid: 0, ..real };
        assert!(matches!(
            identify(&a, hidden, &none, PidfdSource::Socket),
            Err(IdentityError::PidHidden)
        ));
        // The fallback refuses when the pid's process runs as someone other than the socket says.
        let lying = PeerCred {
            uid: real.uid + 1,
            ..real
        };
        assert!(matches!(
            identify(&a, lying, &none, PidfdSource::PidfdOpen),
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
            identify(&a, cred, &Guards::default(), PidfdSource::PidfdOpen),
            Err(IdentityError::Gone)
        ));
    }
}
