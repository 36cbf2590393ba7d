//! Starting a job's process: what the child does between `fork` and `exec`, and signalling a
//! job through its pidfd.
//!
//! Between `fork` and `exec` only async-signal-safe calls are allowed: everything the child needs
//! (ids, group list, paths as C strings, descriptors) is prepared by the parent, and the child
//! makes raw system calls only. The order of those calls is part of the security of a job and is
//! commented at each step.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;

/// The descriptor number a job finds its status pipe on (`WARDEN_STATUS_FD`).
pub const STATUS_FD: i32 = 3;

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9 uapi): signal the pidfd's process group.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// Who the job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Exactly the supplementary groups the job gets.
    pub groups: Vec<u32>,
}

/// What the child sets up for itself before `exec`.
#[derive(Debug)]
pub struct ChildSetup {
    /// `None` keeps the daemon's identity (a `--dev` daemon running actions as its own user).
    pub identity: Option<Identity>,
    /// Write end of the status pipe; becomes descriptor [`STATUS_FD`].
    pub status: OwnedFd,
    /// `cgroup.procs` of the job's cgroup, opened for writing; the child moves itself in before
    /// anything else runs, so every process it starts is in the cgroup too.
    pub cgroup_procs: Option<OwnedFd>,
    /// Working directory, entered after the identity switch so its permissions are checked as
    /// the job's user.
    pub cwd: Option<CString>,
}

/// Installs the child-side setup on `cmd`. The child, in order:
/// 1. starts a new session and process group, so the job can be signalled as a group;
/// 2. moves itself into the job's cgroup;
/// 3. sets supplementary groups, then the gid, then the uid (groups and gid need privileges that
///    dropping the uid takes away), and verifies all three took effect;
/// 4. asks for SIGKILL when its parent thread dies (after the switch: changing credentials
///    clears this setting), and makes sure the parent has not already died;
/// 5. puts the status pipe on descriptor 3;
/// 6. enters its working directory;
/// 7. marks every descriptor above 3 close-on-exec, so nothing of the daemon's leaks into the job.
///
/// A failing step fails the spawn with that step's error, before the program runs.
///
/// `cmd` owns the parent's copy of the status pipe's write end until it is dropped: drop it right
/// after spawning, or the pipe never reaches end-of-file.
pub fn install(cmd: &mut std::process::Command, setup: ChildSetup) {
    let ChildSetup {
        identity,
        status,
        cgroup_procs,
        cwd,
    } = setup;
    let parent = std::process::id() as libc::pid_t;
    // Buffer for reading the groups back, allocated here because the child must not allocate.
    let mut seen_groups: Vec<libc::gid_t> =
        vec![0; identity.as_ref().map_or(0, |i| i.groups.len()) + 1];
    let closure = move || -> io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc == -1 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        // SAFETY: every call in this block is a raw, async-signal-safe system call on
        // values prepared before fork (integers, a Vec allocated by the parent and only written
        // through its own pointer and length, C strings owned by this closure, descriptors owned
        // by this closure). Nothing allocates, locks or touches Rust runtime state.
        unsafe {
            check(libc::setsid())?;
            if let Some(procs) = &cgroup_procs {
                let zero = b"0";
                if libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(id) = &identity {
                check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
                check(libc::setresgid(id.gid, id.gid, id.gid))?;
                check(libc::setresuid(id.uid, id.uid, id.uid))?;
                let (mut r, mut e, mut s) = (0, 0, 0);
                check(libc::getresuid(&mut r, &mut e, &mut s))?;
                let uid_ok = r == id.uid && e == id.uid && s == id.uid;
                check(libc::getresgid(&mut r, &mut e, &mut s))?;
                let gid_ok = r == id.gid && e == id.gid && s == id.gid;
                let n = libc::getgroups(seen_groups.len() as libc::c_int, seen_groups.as_mut_ptr());
                let groups_ok = n >= 0
                    && n as usize == id.groups.len()
                    && seen_groups[..n as usize] == id.groups[..];
                if !(uid_ok && gid_ok && groups_ok) {
                    return Err(io::Error::from_raw_os_error(libc::EPERM));
                }
            }
            check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
            if libc::getppid() != parent {
                // The daemon died before the line above: the death signal will never come.
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            if status.as_raw_fd() == STATUS_FD {
                // Already in place: only clear close-on-exec.
                check(libc::fcntl(STATUS_FD, libc::F_SETFD, 0))?;
            } else if libc::dup2(status.as_raw_fd(), STATUS_FD) == -1 {
                return Err(io::Error::last_os_error());
            }
            if let Some(dir) = &cwd {
                check(libc::chdir(dir.as_ptr()))?;
            }
            let rc = libc::syscall(
                libc::SYS_close_range,
                (STATUS_FD + 1) as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            );
            if rc == -1 {
                // Kernels before 5.11: mark them one by one.
                let max = libc::sysconf(libc::_SC_OPEN_MAX).clamp(64, 1 << 20) as libc::c_int;
                for fd in STATUS_FD + 1..max {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
        }
        Ok(())
    };
    // SAFETY: the closure only makes async-signal-safe system calls (see above) and does not
    // allocate, so it is sound to run in the forked child of a multi-threaded process.
    unsafe {
        cmd.pre_exec(closure);
    }
}

/// Sends `signal` to the pidfd's process, or with `whole_group` to its process group. A pidfd
/// names one process for good: once it has been reaped the call fails with `ESRCH` instead of
/// reaching a process that reused the pid.
pub fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32, whole_group: bool) -> io::Result<()> {
    let flags = if whole_group {
        PIDFD_SIGNAL_PROCESS_GROUP
    } else {
        0
    };
    // SAFETY: pidfd_send_signal takes a descriptor, a signal number, a null siginfo (the kernel
    // then fills one in itself) and flags; no memory is passed, and `pidfd` is open while borrowed.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            flags,
        )
    };
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The number of a signal named in a configuration (`SIGTERM`, …).
pub fn signal_number(name: &str) -> Option<i32> {
    Some(match name {
        "SIGTERM" => libc::SIGTERM,
        "SIGINT" => libc::SIGINT,
        "SIGHUP" => libc::SIGHUP,
        "SIGQUIT" => libc::SIGQUIT,
        "SIGUSR1" => libc::SIGUSR1,
        "SIGUSR2" => libc::SIGUSR2,
        "SIGKILL" => libc::SIGKILL,
        _ => return None,
    })
}

/// `SIGKILL`.
pub const SIGKILL: i32 = libc::SIGKILL;

/// A pipe whose two ends are close-on-exec: `(read, write)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;
    use std::process::{Command, Stdio};

    fn setup(status: OwnedFd) -> ChildSetup {
        ChildSetup {
            identity: None,
            status,
            cgroup_procs: None,
            cwd: Some(CString::new("/").unwrap()),
        }
    }

    #[test]
    fn the_child_gets_a_session_the_status_pipe_on_fd_3_and_no_other_descriptor() {
        let (r, w) = pipe().unwrap();
        // Descriptors the child must not inherit, the last of them well above 4.
        let leaks: Vec<std::fs::File> = (0..12)
            .map(|_| std::fs::File::open("/etc/hostname").unwrap())
            .collect();
        let leak = leaks.last().unwrap();
        assert!(leak.as_raw_fd() > 8);
        let script = "echo hello >&3; cd_ok=$(pwd); sid=$(ps -o sid= -p $$); \
                      echo \"$cd_ok $sid $$\" >&3; ls /proc/self/fd";
        let mut cmd = Command::new("/bin/sh");
        cmd.args(["-c", script])
            .stdout(Stdio::piped())
            .stdin(Stdio::null());
        install(&mut cmd, setup(w));
        let child = cmd.spawn().unwrap();
        drop(cmd);
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        let mut status = String::new();
        std::fs::File::from(r).read_to_string(&mut status).unwrap();
        let mut lines = status.lines();
        assert_eq!(lines.next(), Some("hello"));
        let fields: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(fields[0], "/");
        assert_eq!(fields[1], fields[2], "the job leads its own session");
        let fds: Vec<String> = String::from_utf8(out.stdout)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        // 0-2, the status pipe, and the descriptor `ls` opens for /proc/self/fd.
        assert!(fds.len() <= 5, "descriptors leaked into the job: {fds:?}");
        assert!(!fds.contains(&leak.as_raw_fd().to_string()), "{fds:?}");
    }

    #[test]
    fn a_failing_setup_step_fails_the_spawn_before_the_program_runs() {
        let (_r, w) = pipe().unwrap();
        let mut cmd = Command::new("/bin/true");
        let mut s = setup(w);
        s.cwd = Some(CString::new("/nonexistent-wdn").unwrap());
        install(&mut cmd, s);
        let err = cmd.spawn().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn signals_reach_the_whole_group_and_a_reaped_pidfd_reaches_nobody() {
        let (_r, w) = pipe().unwrap();
        let mut cmd = Command::new("/bin/sh");
        // A grandchild in the same group that ignores nothing: both die on SIGTERM to the group.
        cmd.args(["-c", "sleep 30 & wait"]);
        install(&mut cmd, setup(w));
        let mut child = cmd.spawn().unwrap();
        let pidfd = crate::process::pidfd_open(child.id() as i32).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        pidfd_signal(pidfd.as_fd(), libc::SIGTERM, true).unwrap();
        let status = child.wait().unwrap();
        assert!(!status.success());
        let err = pidfd_signal(pidfd.as_fd(), libc::SIGTERM, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn signal_names_map_to_numbers() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGSTOP"), None);
    }
}
