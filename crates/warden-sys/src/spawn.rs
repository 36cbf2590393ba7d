//! Starting a job's process and signalling it through its pidfd.
//!
//! The child is made with `clone3`: `CLONE_INTO_CGROUP` creates it directly inside the job's
//! cgroup (moving a running process there instead takes the kernel's global cgroup lock for
//! writing, which can wait for an RCU grace period: milliseconds per job), `CLONE_PIDFD` hands
//! back a pidfd in the same call (so no moment exists in which the pid could name another
//! process), and `CLONE_CLEAR_SIGHAND` resets every signal handler to its default in the child.
//! Kernels without `clone3` or its flags (before 5.7) get `fork` plus `pidfd_open` and the child
//! moves itself into its cgroup.
//!
//! Between the clone and `exec` only async-signal-safe calls are allowed: everything the child
//! needs (C strings, pointer arrays, descriptors, ids) is prepared by the parent, and the child
//! makes raw system calls only. The order of those calls is part of the security of a job and is
//! commented at each step.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// The descriptor number a job finds its status pipe on (`WARDEN_STATUS_FD`).
pub const STATUS_FD: i32 = 3;

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9 uapi): signal the pidfd's process group.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;
/// `clone3` flags (Linux uapi `sched.h`).
const CLONE_PIDFD: u64 = 0x1000;
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `struct clone_args` as of Linux 5.7 (`CLONE_ARGS_SIZE_VER2`).
#[repr(C)]
#[derive(Debug, Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Set when `clone3` with our flags turned out to be unavailable, so later spawns go straight
/// to the fallback.
static NO_CLONE3: AtomicBool = AtomicBool::new(false);

/// Who the job runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Exactly the supplementary groups the job gets.
    pub groups: Vec<u32>,
}

/// Everything a job's process is started with.
#[derive(Debug)]
pub struct Spec {
    /// Absolute path of the program.
    pub program: CString,
    /// argv, `argv[0]` included.
    pub argv: Vec<CString>,
    /// The whole environment, as `NAME=value`.
    pub env: Vec<CString>,
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// Write end of the status pipe; becomes descriptor [`STATUS_FD`].
    pub status: OwnedFd,
    /// The job's cgroup: its directory (for `CLONE_INTO_CGROUP`) and its `cgroup.procs` opened
    /// for writing (for the fallback, where the child moves itself in before anything runs).
    pub cgroup: Option<(OwnedFd, OwnedFd)>,
    /// `None` keeps the daemon's identity (a `--dev` daemon running actions as its own user).
    pub identity: Option<Identity>,
    /// Working directory, entered after the identity switch so its permissions are checked as
    /// the job's user.
    pub cwd: CString,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// The process's pidfd, from the same call that made it.
    pub pidfd: OwnedFd,
}

/// Data the child reads: raw pointers into the parent's (copied) memory, prepared before the
/// clone because the child must not allocate.
struct ChildPlan<'a> {
    spec: &'a Spec,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// Room to read the groups back, allocated by the parent.
    seen_groups: Vec<libc::gid_t>,
    /// Write end of the pipe the child reports a failed step on (close-on-exec, so a successful
    /// `exec` closes it and the parent reads end-of-file).
    report: RawFd,
    parent: libc::pid_t,
    /// Whether the child still has to move itself into its cgroup (fallback path).
    join_cgroup: bool,
}

/// Starts a job's process. The child, in order:
/// 1. starts a new session and process group, so the job can be signalled as a group;
/// 2. (fallback only) moves itself into the job's cgroup;
/// 3. sets supplementary groups, then the gid, then the uid (groups and gid need privileges that
///    dropping the uid takes away), and verifies all three took effect;
/// 4. asks for SIGKILL when its parent thread dies (after the switch: changing credentials
///    clears this setting), and makes sure the parent has not already died;
/// 5. puts stdin, stdout, stderr and the status pipe on descriptors 0 to 3;
/// 6. enters its working directory;
/// 7. marks every other descriptor close-on-exec, so nothing of the daemon's leaks into the job;
/// 8. unblocks signals and executes the program.
///
/// A failing step fails this call with that step's error, and the program never runs.
///
/// The parent-death signal fires when the *thread* calling this exits: call it from a thread
/// that lives as long as the daemon.
pub fn spawn(spec: &Spec) -> io::Result<Spawned> {
    let argv: Vec<*const libc::c_char> = spec
        .argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = spec
        .env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)?;
    let mut plan = ChildPlan {
        spec,
        argv,
        envp,
        seen_groups: vec![0; spec.identity.as_ref().map_or(0, |i| i.groups.len()) + 1],
        report: report_w.as_raw_fd(),
        parent: std::process::id() as libc::pid_t,
        join_cgroup: false,
    };

    // No signal may run a handler of the daemon's in the child between the clone and exec.
    let all = SigMask::block_all()?;
    let spawned = clone_child(&mut plan);
    drop(all);
    drop(report_w);
    let spawned = spawned?;

    // End-of-file: the child reached exec. Four bytes: the errno of the step that failed.
    let mut errno = [0u8; 4];
    let n = read_full(&report_r, &mut errno);
    if n == 4 {
        // The child has exited (or is about to); reap it so it leaves no zombie.
        let _ = rustix::process::waitid(
            rustix::process::WaitId::PidFd(std::os::fd::AsFd::as_fd(&spawned.pidfd)),
            rustix::process::WaitIdOptions::EXITED,
        );
        return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
    }
    Ok(spawned)
}

/// Reads until `buf` is full or end-of-file; returns how much was read.
fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> usize {
    let mut got = 0;
    while got < buf.len() {
        match rustix::io::read(fd, &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => break,
        }
    }
    got
}

/// Blocks every signal in this thread until dropped.
struct SigMask(libc::sigset_t);

impl SigMask {
    fn block_all() -> io::Result<SigMask> {
        // SAFETY: sigset_t is plain data; sigfillset initialises it fully before it is used,
        // and pthread_sigmask writes the previous mask into `old`, which we own.
        unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            if rc != 0 {
                return Err(io::Error::from_raw_os_error(rc));
            }
            Ok(SigMask(old))
        }
    }
}

impl Drop for SigMask {
    fn drop(&mut self) {
        // SAFETY: restores the mask saved by block_all, a fully initialised sigset_t.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.0, std::ptr::null_mut());
        }
    }
}

/// Clones the child and, in the child, runs [`child_main`] (which never returns).
fn clone_child(plan: &mut ChildPlan<'_>) -> io::Result<Spawned> {
    if !NO_CLONE3.load(Ordering::Relaxed) {
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            ..CloneArgs::default()
        };
        if let Some((dir, _)) = &plan.spec.cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
        }
        // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of this
        // address space and continues here with a return value of 0. `args` is a live,
        // correctly sized clone_args; the kernel writes the pidfd into `pidfd`, which we own.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &raw mut args,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        match rc {
            0 => child_main(plan),
            -1 => {
                let err = io::Error::last_os_error();
                let unsupported = matches!(
                    err.raw_os_error(),
                    Some(libc::ENOSYS | libc::EINVAL | libc::E2BIG)
                );
                if !unsupported {
                    return Err(err);
                }
                NO_CLONE3.store(true, Ordering::Relaxed);
            }
            pid => {
                // SAFETY: on success the kernel stored a new pidfd in `pidfd` for this call only.
                let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
                return Ok(Spawned {
                    pid: pid as i32,
                    pidfd,
                });
            }
        }
    }
    plan.join_cgroup = plan.spec.cgroup.is_some();
    // SAFETY: fork in a multi-threaded process is sound as long as the child only makes
    // async-signal-safe calls until exec, which child_main guarantees.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => child_main(plan),
        pid => {
            // Nothing has waited on the child, so its pid cannot have been reused yet.
            let pidfd = crate::process::pidfd_open(pid)?;
            Ok(Spawned { pid, pidfd })
        }
    }
}

/// The child between clone and exec. Never returns: it executes the program or exits 127 after
/// reporting the failed step's errno to the parent.
fn child_main(plan: &mut ChildPlan<'_>) -> ! {
    let errno = match child_steps(plan) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let bytes = errno.to_ne_bytes();
    // SAFETY: write and _exit are async-signal-safe; `bytes` lives on this stack and `report`
    // is the open write end of the parent's report pipe.
    unsafe {
        libc::write(plan.report, bytes.as_ptr().cast(), bytes.len());
        libc::_exit(127)
    }
}

/// The steps of [`spawn`]'s list; returns only on failure, with the errno.
fn child_steps(plan: &mut ChildPlan<'_>) -> Result<std::convert::Infallible, i32> {
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    let check = |rc: libc::c_int| if rc == -1 { Err(errno()) } else { Ok(()) };
    let spec = plan.spec;
    // SAFETY: every call in this block is a raw, async-signal-safe system call on values the
    // parent prepared before the clone (integers, C strings and pointer arrays that stay alive
    // in this copy of its memory, descriptors it opened, and a buffer it allocated that is only
    // written through its own pointer and length). Nothing allocates, locks or touches Rust
    // runtime state.
    unsafe {
        check(libc::setsid())?;
        if plan.join_cgroup
            && let Some((_, procs)) = &spec.cgroup
        {
            let zero = b"0";
            if libc::write(procs.as_raw_fd(), zero.as_ptr().cast(), zero.len()) != 1 {
                return Err(errno());
            }
        }
        if let Some(id) = &spec.identity {
            check(libc::setgroups(id.groups.len(), id.groups.as_ptr()))?;
            check(libc::setresgid(id.gid, id.gid, id.gid))?;
            check(libc::setresuid(id.uid, id.uid, id.uid))?;
            let (mut r, mut e, mut s) = (0, 0, 0);
            check(libc::getresuid(&mut r, &mut e, &mut s))?;
            let uid_ok = r == id.uid && e == id.uid && s == id.uid;
            check(libc::getresgid(&mut r, &mut e, &mut s))?;
            let gid_ok = r == id.gid && e == id.gid && s == id.gid;
            let seen = &mut plan.seen_groups;
            let n = libc::getgroups(seen.len() as libc::c_int, seen.as_mut_ptr());
            let groups_ok =
                n >= 0 && n as usize == id.groups.len() && seen[..n as usize] == id.groups[..];
            if !(uid_ok && gid_ok && groups_ok) {
                return Err(libc::EPERM);
            }
        }
        check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0))?;
        if libc::getppid() != plan.parent {
            // The daemon died before the line above: the death signal will never come.
            return Err(libc::ESRCH);
        }
        // Move each descriptor above the target range first, so placing one never overwrites
        // another that happens to sit on a target number.
        let sources = [&spec.stdin, &spec.stdout, &spec.stderr, &spec.status];
        let mut high = [0 as libc::c_int; 4];
        for (slot, fd) in high.iter_mut().zip(sources) {
            *slot = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
            check(*slot)?;
        }
        for (target, fd) in high.iter().enumerate() {
            // dup2 clears close-on-exec on the new descriptor.
            if libc::dup2(*fd, target as libc::c_int) == -1 {
                return Err(errno());
            }
        }
        check(libc::chdir(spec.cwd.as_ptr()))?;
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
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        libc::execve(
            spec.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        Err(errno())
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// The exit status, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl Exit {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Reaps the pidfd's process if it has exited (`waitid(P_PIDFD, WEXITED | WNOHANG)`): `None`
/// while it runs. Only the pidfd is used, so no other child can be reaped by mistake.
pub fn reap(pidfd: BorrowedFd<'_>) -> io::Result<Option<Exit>> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let status = waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG,
    )?;
    Ok(status.map(|s| Exit {
        code: s.exit_status(),
        signal: s.terminating_signal(),
    }))
}

/// Registers a pidfd with the tokio reactor, so the daemon can await the process's exit (a
/// pidfd becomes readable when its process exits). Must run inside a tokio runtime.
pub fn async_pidfd(pidfd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and names
    // the same pidfd until the AsyncFd is dropped, and OwnedFd::as_raw_fd always returns it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE)
            .map_err(|e| e.into_parts().1)
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
    use std::time::Duration;

    fn c(s: &str) -> CString {
        CString::new(s).unwrap()
    }

    #[derive(Debug)]
    struct Run {
        spawned: Spawned,
        out: OwnedFd,
        status: OwnedFd,
    }

    fn run(program: &str, args: &[&str], cwd: &str) -> io::Result<Run> {
        let (out_r, out_w) = pipe()?;
        let (st_r, st_w) = pipe()?;
        let spec = Spec {
            program: c(program),
            argv: std::iter::once(program)
                .chain(args.iter().copied())
                .map(c)
                .collect(),
            env: vec![c("PATH=/usr/bin:/bin")],
            stdin: std::fs::File::open("/dev/null")?.into(),
            stdout: out_w.try_clone()?,
            stderr: out_w,
            status: st_w,
            cgroup: None,
            identity: None,
            cwd: c(cwd),
        };
        let spawned = spawn(&spec)?;
        drop(spec);
        Ok(Run {
            spawned,
            out: out_r,
            status: st_r,
        })
    }

    fn wait(pidfd: &OwnedFd) -> Exit {
        for _ in 0..2000 {
            if let Some(e) = reap(pidfd.as_fd()).unwrap() {
                return e;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        panic!("the child did not exit");
    }

    fn read_all(fd: OwnedFd) -> String {
        let mut s = String::new();
        std::fs::File::from(fd).read_to_string(&mut s).unwrap();
        s
    }

    #[test]
    fn the_child_gets_a_session_fds_0_to_3_and_no_other_descriptor() {
        // Descriptors the child must not inherit, the last of them well above 4.
        let leaks: Vec<std::fs::File> = (0..12)
            .map(|_| std::fs::File::open("/etc/hostname").unwrap())
            .collect();
        let leak = leaks.last().unwrap().as_raw_fd();
        assert!(leak > 8);
        let script = "echo hello >&3; echo \"$(pwd) $(ps -o sid= -p $$) $$\" >&3; ls /proc/self/fd";
        let r = run("/bin/sh", &["-c", script], "/").unwrap();
        let exit = wait(&r.spawned.pidfd);
        assert!(exit.success(), "{exit:?}");
        let status = read_all(r.status);
        let mut lines = status.lines();
        assert_eq!(lines.next(), Some("hello"));
        let fields: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(fields[0], "/");
        assert_eq!(fields[1], fields[2], "the job leads its own session");
        let fds = read_all(r.out);
        let fds: Vec<&str> = fds.split_whitespace().collect();
        // 0-3, and the descriptor `ls` opens for /proc/self/fd.
        assert!(fds.len() <= 5, "descriptors leaked into the job: {fds:?}");
        assert!(!fds.contains(&leak.to_string().as_str()), "{fds:?}");
    }

    #[test]
    fn a_failing_step_fails_the_spawn_and_leaves_no_zombie() {
        let err = run("/bin/true", &[], "/nonexistent-wdn").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        let err = run("/nonexistent-wdn/prog", &[], "/").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn exit_codes_and_signals_are_reported() {
        let r = run("/bin/sh", &["-c", "exit 7"], "/").unwrap();
        assert_eq!(
            wait(&r.spawned.pidfd),
            Exit {
                code: Some(7),
                signal: None
            }
        );
        let r = run("/bin/sh", &["-c", "kill -9 $$"], "/").unwrap();
        assert_eq!(
            wait(&r.spawned.pidfd),
            Exit {
                code: None,
                signal: Some(9)
            }
        );
    }

    #[test]
    fn signals_reach_the_whole_group_and_a_reaped_pidfd_reaches_nobody() {
        let r = run("/bin/sh", &["-c", "sleep 30 & wait"], "/").unwrap();
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(
            reap(r.spawned.pidfd.as_fd()).unwrap(),
            None,
            "still running"
        );
        pidfd_signal(r.spawned.pidfd.as_fd(), libc::SIGTERM, true).unwrap();
        assert!(!wait(&r.spawned.pidfd).success());
        let err = pidfd_signal(r.spawned.pidfd.as_fd(), libc::SIGTERM, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn signal_names_map_to_numbers() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGSTOP"), None);
    }
}
