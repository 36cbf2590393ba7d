//! Processes by pidfd: opening one, asking which pid it names and whether that process still
//! lives, and reading a process's executable while a pidfd pins who it is. Also the few
//! process-wide settings the daemon makes at start (umask, open-file limit).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use rustix::event::{PollFd, PollFlags, poll};
use rustix::process::{Pid, PidfdFlags, Resource, Rlimit};

/// `pidfd_open(2)` for `pid`. Only a fallback: a pid can be recycled between `SO_PEERCRED` and
/// this call, so the caller must re-check that the process is still the peer.
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    let pid = Pid::from_raw(pid).ok_or_else(|| {
        io::Error::new(io::ErrorKind::InvalidInput, "pid 0 names no process here")
    })?;
    Ok(rustix::process::pidfd_open(pid, PidfdFlags::empty())?)
}

/// Whether `err` says the process does not exist (`ESRCH`).
pub fn is_no_such_process(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ESRCH)
}

/// The pid a pidfd names, from `/proc/self/fdinfo`. `None` once the process has exited (the
/// kernel then reports -1) or when it lives in a pid namespace we cannot see (0).
pub fn pidfd_pid(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", pidfd.as_raw_fd()))?;
    let line = info
        .lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "descriptor is not a pidfd"))?;
    let pid: i32 = line
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unreadable Pid: in fdinfo"))?;
    Ok((pid > 0).then_some(pid))
}

/// Whether the process behind `pidfd` is still running. A pidfd polls readable once its process
/// has exited, so a zero-timeout poll answers without waiting.
pub fn pidfd_is_alive(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut fds = [PollFd::new(&pidfd, PollFlags::IN)];
    let ready = poll(&mut fds, Some(&rustix::event::Timespec::default()))?;
    Ok(ready == 0)
}

/// The path `/proc/<pid>/exe` points at. Meaningful only while the caller holds a pidfd for `pid`
/// and checks [`pidfd_is_alive`] afterwards: if the process was alive after the read, the read
/// saw that process and not a later one that reused the pid.
pub fn exe_path(pid: i32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe"))
}

/// Pins the executable image of `pid` (even if its path was since replaced or deleted) with an
/// `O_PATH` descriptor, so it can be read later even after the process exec'd something else.
/// The same pidfd rule as [`exe_path`] applies.
///
/// This never waits on the file's file system: `/proc/<pid>/exe` jumps straight to the file the
/// kernel already holds (no lookup by name), and an `O_PATH` open does not call the file
/// system's `open`. Reading it ([`read_pinned`]) does, and belongs off the threads that must
/// not wait.
pub fn pin_exe(pid: i32) -> io::Result<OwnedFd> {
    use rustix::fs::{Mode, OFlags};
    Ok(rustix::fs::open(
        format!("/proc/{pid}/exe"),
        OFlags::PATH | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Opens the file an `O_PATH` descriptor from [`pin_exe`] names, for reading. This asks the
/// file's file system, which may be slow or stalled (FUSE): call it where waiting is harmless.
pub fn read_pinned(pinned: BorrowedFd<'_>) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", pinned.as_raw_fd()))
}

/// The mount namespace of `pid`, as the kernel names it (`mnt:[INODE]`, read from the link
/// `/proc/<pid>/ns/mnt`; equal for two processes exactly when they share the namespace). The
/// same pidfd rule as [`exe_path`] applies.
pub fn mount_namespace(pid: i32) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
}

/// Whether `pid` runs in this process's mount namespace, where a path names the same file for
/// both. An error when either namespace cannot be read (another user's process, seen from an
/// unprivileged daemon).
pub fn shares_mount_namespace(pid: i32) -> io::Result<bool> {
    // The daemon never changes its own mount namespace: read it once.
    static OWN: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let own = match OWN.get() {
        Some(own) => own,
        None => {
            let own = mount_namespace(std::process::id() as i32)?;
            OWN.get_or_init(|| own)
        }
    };
    Ok(mount_namespace(pid)? == *own)
}

/// Effective uid and gid of `pid`, from `/proc/<pid>/status`.
pub fn effective_ids(pid: i32) -> io::Result<(u32, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    // "Uid:\treal\teffective\tsaved\tfs": the second number is the effective id.
    let field = |name: &str| -> io::Result<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable /proc status"))
    };
    Ok((field("Uid:")?, field("Gid:")?))
}

/// Sets the process umask and returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(mask)).as_raw_mode()
}

/// Raises the soft open-file limit to the hard limit (a daemon holding thousands of client
/// connections needs more than the customary 1024). Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let current = rustix::process::getrlimit(Resource::Nofile);
    let Some(hard) = current.maximum else {
        // Unlimited hard limit: leave the soft limit as it is, it is already what was chosen.
        return Ok(current.current.unwrap_or(u64::MAX));
    };
    rustix::process::setrlimit(
        Resource::Nofile,
        Rlimit {
            current: Some(hard),
            maximum: Some(hard),
        },
    )?;
    Ok(hard)
}

/// Arranges for `signal` to be delivered to this process when its parent thread exits.
pub fn set_parent_death_signal(signal: i32) -> io::Result<()> {
    let signal = rustix::process::Signal::from_named_raw(signal)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "not a signal number"))?;
    Ok(rustix::process::set_parent_process_death_signal(Some(
        signal,
    ))?)
}

/// Whether the pidfd's process is alive and still has pid `pid`: the proof that a read of
/// `/proc/<pid>/…` done before this call was about the pidfd's process.
pub fn pidfd_still_names(pidfd: &OwnedFd, pid: i32) -> io::Result<bool> {
    Ok(pidfd_is_alive(pidfd.as_fd())? && pidfd_pid(pidfd.as_fd())? == Some(pid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn pidfd_of_self_is_alive_and_names_self() {
        let me = std::process::id() as i32;
        let fd = pidfd_open(me).unwrap();
        assert!(pidfd_is_alive(fd.as_fd()).unwrap());
        assert_eq!(pidfd_pid(fd.as_fd()).unwrap(), Some(me));
        assert!(pidfd_still_names(&fd, me).unwrap());
        assert_eq!(exe_path(me).unwrap(), std::env::current_exe().unwrap());
    }

    #[test]
    fn pidfd_of_an_exited_child_reports_dead_and_no_pid() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        let fd = pidfd_open(pid).unwrap();
        child.wait().unwrap();
        assert!(!pidfd_is_alive(fd.as_fd()).unwrap());
        assert_eq!(pidfd_pid(fd.as_fd()).unwrap(), None);
        assert!(!pidfd_still_names(&fd, pid).unwrap());
    }

    #[test]
    fn effective_ids_of_self_match_the_kernel() {
        let me = std::process::id() as i32;
        assert_eq!(
            effective_ids(me).unwrap(),
            (crate::users::effective_uid(), crate::users::effective_gid())
        );
    }

    /// Pins: a pinned executable reads back as the file that ran, and a process shares this
    /// process's mount namespace exactly when it is in it.
    #[test]
    fn a_pinned_exe_reads_back_and_namespaces_compare() {
        use std::io::Read;
        let me = std::process::id() as i32;
        let pinned = pin_exe(me).unwrap();
        let mut got = Vec::new();
        read_pinned(pinned.as_fd())
            .unwrap()
            .read_to_end(&mut got)
            .unwrap();
        assert_eq!(
            got,
            std::fs::read(std::env::current_exe().unwrap()).unwrap()
        );
        assert!(shares_mount_namespace(me).unwrap());
        let mut child = Command::new("unshare")
            .args(["-Urm", "sleep", "5"])
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        // `unshare` execs `sleep` once it is in its namespaces; wait until it has.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while mount_namespace(pid).ok() == mount_namespace(me).ok()
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let unshared = shares_mount_namespace(pid).unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(
            !unshared,
            "a process in its own mount namespace compared equal"
        );
        assert!(
            shares_mount_namespace(pid).is_err(),
            "an exited process has no namespace to compare"
        );
    }

    #[test]
    fn pidfd_open_refuses_pid_zero() {
        assert!(pidfd_open(0).is_err());
    }
}
