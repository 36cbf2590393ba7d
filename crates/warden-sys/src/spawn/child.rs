//! The child between its clone and `exec`: the privileged steps that turn a clone of the daemon
//! into a job's process, in an order that is part of the job's security.
//!
//! Only async-signal-safe calls are allowed here: the child runs in the daemon's memory (or, on
//! the fork fallback, a copy of it) while a spawner thread waits, so everything it needs (C
//! strings, pointer arrays, descriptors, ids, buffers) was prepared by that thread before the
//! clone, and the child makes raw system calls only. It never allocates, locks, or returns into
//! the daemon's code (the one thread-local it writes is the waiting thread's `errno`, which that
//! thread does not read until the child is gone): it executes the program, or reports the failed
//! step on its report pipe and exits.

use std::fmt;
use std::os::fd::AsRawFd;

use super::{STATUS_FD, Spec};

/// A step of the child between clone and exec, as reported when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Session = 1,
    JoinCgroup,
    CloseDescriptors,
    SetGroups,
    SetGid,
    SetUid,
    VerifyIdentity,
    DeathSignal,
    DaemonGone,
    PlaceDescriptors,
    EnterCwd,
    Exec,
}

impl Step {
    const ALL: [Step; 12] = [
        Step::Session,
        Step::JoinCgroup,
        Step::CloseDescriptors,
        Step::SetGroups,
        Step::SetGid,
        Step::SetUid,
        Step::VerifyIdentity,
        Step::DeathSignal,
        Step::DaemonGone,
        Step::PlaceDescriptors,
        Step::EnterCwd,
        Step::Exec,
    ];

    /// The step a report names; `None` for a number no child sends.
    pub(super) fn from_code(code: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == code)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Session => "starting a session",
            Step::JoinCgroup => "joining the job's cgroup",
            Step::CloseDescriptors => "closing the daemon's descriptors",
            Step::SetGroups => "setting the supplementary groups",
            Step::SetGid => "setting the gid",
            Step::SetUid => "setting the uid",
            Step::VerifyIdentity => "verifying the identity",
            Step::DeathSignal => "asking for the parent-death signal",
            Step::DaemonGone => "the daemon exited",
            Step::PlaceDescriptors => "placing descriptors 0 to 3",
            Step::EnterCwd => "entering the working directory",
            Step::Exec => "executing the program",
        })
    }
}

/// What a failed child writes on its report pipe: the step, then the errno, native-endian.
pub(super) const REPORT_LEN: usize = 8;

/// Data the child reads: raw pointers into the parent's memory (or its copy of it), prepared
/// before the clone because the child must not allocate.
pub(super) struct ChildPlan<'a> {
    pub spec: &'a Spec,
    pub argv: Vec<*const libc::c_char>,
    pub envp: Vec<*const libc::c_char>,
    /// Room to read the groups back, allocated by the parent.
    pub seen_groups: Vec<libc::gid_t>,
    /// Write end of the pipe the child reports a failed step on (close-on-exec, so a successful
    /// `exec` closes it and the parent reads end-of-file).
    pub report: libc::c_int,
    /// Every descriptor the child keeps past [`Step::CloseDescriptors`]: the job's four and the
    /// report pipe, sorted, without repeats.
    pub keep: Vec<libc::c_uint>,
    pub parent: libc::pid_t,
    /// Whether the child still has to move itself into its cgroup (fallback path).
    pub join_cgroup: bool,
    /// Tests only: the child stops itself right before `exec`, as a process of the job's user
    /// could stop it.
    #[cfg(test)]
    pub stop_before_exec: bool,
}

/// The child's whole life. Never returns: it executes the program, or exits 127 after reporting
/// the failed step and its errno to the parent.
pub(super) fn main(plan: &mut ChildPlan<'_>) -> ! {
    let (step, errno) = match steps(plan) {
        Ok(never) => match never {},
        Err(e) => e,
    };
    let mut report = [0u8; REPORT_LEN];
    report[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    report[4..].copy_from_slice(&errno.to_ne_bytes());
    // SAFETY: write and _exit are async-signal-safe; `report` lives on this stack and
    // `plan.report` is the open write end of the parent's report pipe (kept by the close step).
    unsafe {
        libc::write(plan.report, report.as_ptr().cast(), report.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// Closes descriptors `from..=to`; `false` if a close failed other than on a closed descriptor.
///
/// # Safety
/// Async-signal-safe; the caller must need none of the descriptors in the range.
unsafe fn close_between(from: libc::c_uint, to: libc::c_uint) -> bool {
    if from > to {
        return true;
    }
    // SAFETY: close_range takes three integers; the caller needs none of these descriptors.
    if unsafe { libc::syscall(libc::SYS_close_range, from, to, 0 as libc::c_uint) } == 0 {
        return true;
    }
    // Kernels before 5.9: close them one by one, up to the highest descriptor that can exist.
    // SAFETY: sysconf and close are async-signal-safe and take integers.
    let max = unsafe { libc::sysconf(libc::_SC_OPEN_MAX) }.clamp(64, 1 << 20) as libc::c_uint;
    for fd in from..=to.min(max) {
        // SAFETY: as above; EBADF for a descriptor that is not open is expected.
        if unsafe { libc::close(fd as libc::c_int) } == -1 && errno() != libc::EBADF {
            return false;
        }
    }
    true
}

/// The steps of [`super::spawn`]'s list; returns only on failure, with the step and errno.
fn steps(plan: &mut ChildPlan<'_>) -> Result<std::convert::Infallible, (Step, i32)> {
    let check = |step: Step, rc: libc::c_int| {
        if rc == -1 {
            Err((step, errno()))
        } else {
            Ok(())
        }
    };
    let spec = plan.spec;
    // SAFETY: every call in this block is a raw, async-signal-safe system call on values the
    // parent prepared before the clone (integers, C strings and pointer arrays that stay alive
    // and unchanged while the spawner thread waits for this child, descriptors it opened, and a
    // buffer it allocated that is only written through its own pointer and length). Nothing
    // allocates, locks or touches Rust runtime state.
    unsafe {
        check(Step::Session, libc::setsid())?;
        if plan.join_cgroup
            && let Some(dir) = &spec.cgroup
        {
            let procs = libc::openat(
                dir.as_raw_fd(),
                c"cgroup.procs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            check(Step::JoinCgroup, procs)?;
            let zero = b"0";
            if libc::write(procs, zero.as_ptr().cast(), zero.len()) != 1 {
                return Err((Step::JoinCgroup, errno()));
            }
        }
        // Close every descriptor but the job's and the report pipe, while still privileged: until
        // its exec a child holds a copy of every descriptor the daemon had open at the clone,
        // other jobs' pipes among them, whose end-of-file would wait for this child. Done before
        // the identity switch, no process of the job's user can stop this child while it holds
        // them (a stopped holder would stall another job's start until its deadline).
        let mut from: libc::c_uint = 0;
        for &fd in &plan.keep {
            if fd > from && !close_between(from, fd - 1) {
                return Err((Step::CloseDescriptors, errno()));
            }
            from = fd.saturating_add(1);
        }
        if !close_between(from, libc::c_uint::MAX) {
            return Err((Step::CloseDescriptors, errno()));
        }
        if let Some(id) = &spec.identity {
            // Raw system calls, not the C library's wrappers: those change the credentials of
            // every thread the library believes the process has, by signalling them and
            // waiting under its internal locks. After a raw clone the child has one thread but
            // a copy of the parent's thread list and lock states, so a wrapper could wait
            // forever on a lock some parent thread held at the moment of the clone. The raw
            // calls change this thread's credentials, and it is the only thread.
            // Groups, then gid, then uid: the first two need privileges that the third drops.
            check(
                Step::SetGroups,
                libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) as _,
            )?;
            check(
                Step::SetGid,
                libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) as _,
            )?;
            check(
                Step::SetUid,
                libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) as _,
            )?;
            // From here on every process of the job's user may signal this child (SIGSTOP
            // included): the parent waits for the report with a deadline, never unbounded.
            let (mut r, mut e, mut s) = (0, 0, 0);
            check(
                Step::VerifyIdentity,
                libc::getresuid(&mut r, &mut e, &mut s),
            )?;
            let uid_ok = r == id.uid && e == id.uid && s == id.uid;
            check(
                Step::VerifyIdentity,
                libc::getresgid(&mut r, &mut e, &mut s),
            )?;
            let gid_ok = r == id.gid && e == id.gid && s == id.gid;
            let seen = &mut plan.seen_groups;
            let n = libc::getgroups(seen.len() as libc::c_int, seen.as_mut_ptr());
            let groups_ok =
                n >= 0 && n as usize == id.groups.len() && seen[..n as usize] == id.groups[..];
            if !(uid_ok && gid_ok && groups_ok) {
                return Err((Step::VerifyIdentity, libc::EPERM));
            }
        }
        // After the switch: changing credentials clears this setting.
        check(
            Step::DeathSignal,
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0),
        )?;
        if libc::getppid() != plan.parent {
            // The daemon died before the line above: the death signal will never come.
            return Err((Step::DaemonGone, libc::ESRCH));
        }
        // Move each descriptor above the target range first, so placing one never overwrites
        // another that happens to sit on a target number.
        let sources = [&spec.stdin, &spec.stdout, &spec.stderr, &spec.status];
        let mut high = [0 as libc::c_int; 4];
        for (slot, fd) in high.iter_mut().zip(sources) {
            *slot = libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10);
            check(Step::PlaceDescriptors, *slot)?;
        }
        for (target, fd) in high.iter().enumerate() {
            // dup2 clears close-on-exec on the new descriptor.
            check(
                Step::PlaceDescriptors,
                libc::dup2(*fd, target as libc::c_int),
            )?;
        }
        check(Step::EnterCwd, libc::chdir(spec.cwd.as_ptr()))?;
        // Whatever is still open above 3 (the sources just copied, the report pipe) is closed by
        // the exec.
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
        // Signals the daemon ignores (SIGPIPE, for one) stay ignored across exec; the job gets
        // every disposition at its default, as a process started from a shell would.
        // (CLONE_CLEAR_SIGHAND reset the handled ones already; the fallback path did not.)
        let mut default: libc::sigaction = std::mem::zeroed();
        default.sa_sigaction = libc::SIG_DFL;
        for sig in 1..=libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &default, std::ptr::null_mut());
            }
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::pthread_sigmask(libc::SIG_SETMASK, &none, std::ptr::null_mut());
        #[cfg(test)]
        if plan.stop_before_exec {
            // Raw calls: the C library's cached thread id would name the spawner thread.
            libc::syscall(
                libc::SYS_kill,
                libc::syscall(libc::SYS_getpid),
                libc::SIGSTOP,
            );
        }
        libc::execve(
            spec.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
        Err((Step::Exec, errno()))
    }
}
