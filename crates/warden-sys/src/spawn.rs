//! Starting a job's process and signalling it through its pidfd.
//!
//! The child is made with `clone3`: `CLONE_INTO_CGROUP` creates it directly inside the job's
//! cgroup (moving a running process there instead takes the kernel's global cgroup lock for
//! writing, which can wait for an RCU grace period: milliseconds per job), `CLONE_PIDFD` hands
//! back a pidfd in the same call (so no moment exists in which the pid could name another
//! process), and `CLONE_CLEAR_SIGHAND` resets every signal handler to its default in the child.
//! `CLONE_VM | CLONE_VFORK` let the child borrow the daemon's memory until it executes the
//! program, on a stack of its own, while the calling thread waits: nothing of the daemon's
//! address space is copied, and the daemon takes no copy-on-write faults afterwards. Kernels
//! without `clone3` or its flags (before 5.7), and architectures without the few instructions
//! below, get `fork` plus `pidfd_open` and the child moves itself into its cgroup.
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
const CLONE_VM: u64 = 0x100;
const CLONE_VFORK: u64 = 0x4000;
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
    /// The job's cgroup directory: the child is created in it (`CLONE_INTO_CGROUP`), or on the
    /// fallback moves itself in through its `cgroup.procs` before anything runs.
    pub cgroup: Option<OwnedFd>,
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
    if HAS_CLONE3_VM && !NO_CLONE3.load(Ordering::Relaxed) {
        let stack = ChildStack::new()?;
        let mut pidfd: libc::c_int = -1;
        let mut args = CloneArgs {
            flags: CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
            pidfd: (&raw mut pidfd) as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base as u64,
            stack_size: stack.len as u64,
            ..CloneArgs::default()
        };
        if let Some(dir) = &plan.spec.cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
        }
        // SAFETY: `args` is a live, correctly sized clone_args naming a mapped stack of its
        // own for the child, and `plan` outlives the call: with CLONE_VFORK this thread is
        // suspended until the child has executed the program or exited, so the child's reads of
        // `plan` (and its write into `plan.seen_groups`) happen while it is borrowed here, and
        // the stack is unmapped only after. The kernel writes the pidfd into `pidfd`.
        let rc = unsafe {
            clone3_vm(
                &mut args,
                child_entry,
                std::ptr::from_mut(plan).cast::<libc::c_void>(),
            )
        };
        drop(stack);
        if rc >= 0 {
            // SAFETY: on success the kernel stored a new pidfd in `pidfd` for this call only.
            let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
            return Ok(Spawned {
                pid: rc as i32,
                pidfd,
            });
        }
        let errno = -rc as i32;
        if !matches!(errno, libc::ENOSYS | libc::EINVAL | libc::E2BIG) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        NO_CLONE3.store(true, Ordering::Relaxed);
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

/// The child's stack while it shares the daemon's memory: an anonymous mapping whose lowest page
/// is a guard, so an overflow faults instead of writing into the daemon's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Far more than the child's few calls need (no allocation, no formatting).
    const LEN: usize = 128 * 1024;

    fn new() -> io::Result<ChildStack> {
        // SAFETY: an anonymous private mapping of fresh memory, owned by the returned value.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = ChildStack {
            base,
            len: Self::LEN,
        };
        // SAFETY: the first page of the mapping made above.
        if unsafe { libc::mprotect(base, 4096, libc::PROT_NONE) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(stack)
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`, which nothing uses any more.
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// Whether [`clone3_vm`] exists for this architecture.
const HAS_CLONE3_VM: bool = cfg!(any(target_arch = "x86_64", target_arch = "aarch64"));

/// Where the child starts, on its own stack.
extern "C" fn child_entry(plan: *mut libc::c_void) -> ! {
    // SAFETY: `clone_child` passes a pointer to the ChildPlan it borrows mutably for as long as
    // the child shares its memory.
    let plan = unsafe { &mut *plan.cast::<ChildPlan<'_>>() };
    child_main(plan)
}

/// `clone3(args)`: in the parent, returns the child's pid or `-errno`; the child, on the stack in
/// `args`, calls `entry(arg)` and never returns. A plain `syscall()` cannot do this: the child
/// would return into a function whose frame is on a stack it does not have.
///
/// # Safety
/// `args` must be a valid clone_args for `clone3` whose stack is mapped and unused, and `entry`
/// must never return.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_vm(
    args: &mut CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let rc: i64;
    // SAFETY: the caller's contract. The syscall preserves every register but rax, rcx and
    // r11; the child starts with the stack pointer at the top of its own stack (16-byte aligned,
    // as `call` requires), clears the frame pointer so nothing unwinds into the parent's frames,
    // and calls `entry(arg)`, which never returns.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => rc,
            in("rdi") std::ptr::from_mut(args),
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") entry,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    rc
}

/// See the x86_64 version.
///
/// # Safety
/// As for the x86_64 version.
#[cfg(target_arch = "aarch64")]
unsafe fn clone3_vm(
    args: &mut CloneArgs,
    entry: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let rc: i64;
    // SAFETY: the caller's contract. The syscall preserves every register but x0; the child
    // starts with the stack pointer at the top of its own stack, clears the frame pointer and
    // link register so nothing unwinds into the parent's frames, and calls `entry(arg)`, which
    // never returns.
    unsafe {
        std::arch::asm!(
            "svc #0",
            "cbnz x0, 2f",
            "mov x29, xzr",
            "mov x30, xzr",
            "mov x0, x9",
            "blr x10",
            "brk #1",
            "2:",
            in("x8") libc::SYS_clone3,
            inlateout("x0") std::ptr::from_mut(args) => rc,
            in("x1") std::mem::size_of::<CloneArgs>(),
            in("x9") arg,
            in("x10") entry,
            options(nostack),
        );
    }
    rc
}

/// Never called: [`HAS_CLONE3_VM`] is false here and the fallback runs instead.
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
unsafe fn clone3_vm(
    _: &mut CloneArgs,
    _: extern "C" fn(*mut libc::c_void) -> !,
    _: *mut libc::c_void,
) -> i64 {
    -i64::from(libc::ENOSYS)
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
            && let Some(dir) = &spec.cgroup
        {
            let procs = libc::openat(
                dir.as_raw_fd(),
                c"cgroup.procs".as_ptr(),
                libc::O_WRONLY | libc::O_CLOEXEC,
            );
            check(procs)?;
            let zero = b"0";
            if libc::write(procs, zero.as_ptr().cast(), zero.len()) != 1 {
                return Err(errno());
            }
        }
        if let Some(id) = &spec.identity {
            // Raw system calls, not the C library's wrappers: those change the credentials of
            // every thread the library believes the process has, by signalling them and
            // waiting under its internal locks. After a raw clone the child has one thread but
            // a copy of the parent's thread list and lock states, so a wrapper could wait
            // forever on a lock some parent thread held at the moment of the clone. The raw
            // calls change this thread's credentials, and it is the only thread.
            check(libc::syscall(libc::SYS_setgroups, id.groups.len(), id.groups.as_ptr()) as _)?;
            check(libc::syscall(libc::SYS_setresgid, id.gid, id.gid, id.gid) as _)?;
            check(libc::syscall(libc::SYS_setresuid, id.uid, id.uid, id.uid) as _)?;
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

/// Whether the pidfd's process has exited, without reaping it (`WNOWAIT`): until it is reaped,
/// its pid and process group still name it and its group, so what it left behind in the group
/// can still be signalled.
pub fn has_exited(pidfd: BorrowedFd<'_>) -> io::Result<bool> {
    use rustix::process::{WaitId, WaitIdOptions, waitid};
    let status = waitid(
        WaitId::PidFd(pidfd),
        WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT,
    )?;
    Ok(status.is_some())
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

/// Set when the kernel turned out not to know `PIDFD_SIGNAL_PROCESS_GROUP` (before 6.9).
static NO_PIDFD_GROUP_SIGNAL: AtomicBool = AtomicBool::new(false);

/// Sends `signal` to the process group led by the pidfd's process, `pid`, which [`spawn`] made
/// a session leader. The group is named through the pidfd, which keeps its id from being
/// reused, so a recycled pid is never reached.
///
/// Kernels before 6.9 cannot signal a group through a pidfd; there the leader is first checked
/// through its pidfd (`ESRCH` once it has been reaped), then the group is signalled by number.
/// That is as safe as long as the leader is reaped only by the caller (never between the two
/// calls): an unreaped leader keeps its pid, and with it the group's id, from being reused.
pub fn signal_group(pidfd: BorrowedFd<'_>, pid: i32, signal: i32) -> io::Result<()> {
    if !NO_PIDFD_GROUP_SIGNAL.load(Ordering::Relaxed) {
        match pidfd_signal(pidfd, signal, PIDFD_SIGNAL_PROCESS_GROUP) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                NO_PIDFD_GROUP_SIGNAL.store(true, Ordering::Relaxed);
            }
            other => return other,
        }
    }
    pidfd_signal(pidfd, 0, 0)?;
    // SAFETY: kill takes two integers. The leader is unreaped (checked just above), so `-pid`
    // names its group and no other.
    if unsafe { libc::kill(-pid, signal) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sends `signal` to the pidfd's process alone. A pidfd names one process for good: once it has
/// been reaped the call fails with `ESRCH` instead of reaching a process that reused the pid.
pub fn signal_process(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    pidfd_signal(pidfd, signal, 0)
}

fn pidfd_signal(pidfd: BorrowedFd<'_>, signal: i32, flags: libc::c_uint) -> io::Result<()> {
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
        signal_group(r.spawned.pidfd.as_fd(), r.spawned.pid, libc::SIGTERM).unwrap();
        assert!(!wait(&r.spawned.pidfd).success());
        let err = signal_process(r.spawned.pidfd.as_fd(), libc::SIGTERM).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ESRCH));
    }

    #[test]
    fn a_group_outlives_its_exited_leader_until_the_leader_is_reaped() {
        let r = run(
            "/bin/sh",
            &["-c", "sleep 30 >/dev/null 2>&1 & echo $!"],
            "/",
        )
        .unwrap();
        let mut out = String::new();
        std::fs::File::from(r.out.try_clone().unwrap())
            .read_to_string(&mut out)
            .ok();
        let sleeper: i32 = out.trim().parse().unwrap();
        for _ in 0..400 {
            if has_exited(r.spawned.pidfd.as_fd()).unwrap() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(has_exited(r.spawned.pidfd.as_fd()).unwrap());
        signal_group(r.spawned.pidfd.as_fd(), r.spawned.pid, libc::SIGKILL).unwrap();
        assert!(
            wait(&r.spawned.pidfd).success(),
            "the leader itself exited 0"
        );
        let alive = || {
            std::fs::read_to_string(format!("/proc/{sleeper}/stat"))
                .is_ok_and(|s| !s.contains(") Z "))
        };
        for _ in 0..400 {
            if !alive() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(), "the background sleep was killed with its group");
    }

    #[test]
    fn a_job_starts_with_default_signal_dispositions() {
        // The test process ignores SIGPIPE (as every Rust program does); the job must not.
        let r = run(
            "/bin/sh",
            &["-c", "grep -E '^SigIgn' /proc/self/status"],
            "/",
        )
        .unwrap();
        let mut out = String::new();
        std::fs::File::from(r.out).read_to_string(&mut out).unwrap();
        assert!(wait(&r.spawned.pidfd).success());
        let mask =
            u64::from_str_radix(out.trim().trim_start_matches("SigIgn:").trim(), 16).unwrap();
        assert_eq!(
            mask & (1 << (libc::SIGPIPE - 1)),
            0,
            "SIGPIPE is not ignored: {out}"
        );
    }

    /// Pins: on the fallback for kernels without `clone3` (forced here), the child still moves
    /// itself into its cgroup before the program runs.
    #[test]
    fn the_fork_fallback_moves_the_child_into_its_cgroup() {
        if crate::users::effective_uid() != 0 {
            assert!(
                std::env::var_os("WARDEN_REQUIRE_ROOT_TESTS").is_none(),
                "this test needs root and WARDEN_REQUIRE_ROOT_TESTS=1 forbids skipping it"
            );
            eprintln!("skipping: making a cgroup needs root");
            return;
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let Some(mount) = mountinfo.lines().find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            right
                .starts_with("cgroup2 ")
                .then(|| left.split_whitespace().nth(4).unwrap().to_owned())
        }) else {
            eprintln!("skipping: no cgroup2 hierarchy");
            return;
        };
        let own = std::fs::read_to_string("/proc/self/cgroup").unwrap();
        let own = own
            .lines()
            .find_map(|l| l.strip_prefix("0::/"))
            .unwrap()
            .to_owned();
        let name = format!("warden-sys-test-{}", std::process::id());
        let dir = std::path::Path::new(&mount).join(&own).join(&name);
        std::fs::create_dir(&dir).unwrap();
        NO_CLONE3.store(true, Ordering::Relaxed);
        let (out_r, out_w) = pipe().unwrap();
        let (_st_r, st_w) = pipe().unwrap();
        let spec = Spec {
            program: c("/bin/cat"),
            argv: vec![c("/bin/cat"), c("/proc/self/cgroup")],
            env: vec![],
            stdin: std::fs::File::open("/dev/null").unwrap().into(),
            stdout: out_w.try_clone().unwrap(),
            stderr: out_w,
            status: st_w,
            cgroup: Some(std::fs::File::open(&dir).unwrap().into()),
            identity: None,
            cwd: c("/"),
        };
        let spawned = spawn(&spec);
        NO_CLONE3.store(false, Ordering::Relaxed);
        drop(spec);
        let spawned = spawned.unwrap();
        let mut out = String::new();
        std::fs::File::from(out_r).read_to_string(&mut out).unwrap();
        assert!(wait(&spawned.pidfd).success());
        let _ = std::fs::remove_dir(&dir);
        assert!(
            out.lines()
                .any(|l| l.starts_with("0::") && l.ends_with(&name)),
            "{out}"
        );
    }

    #[test]
    fn signal_names_map_to_numbers() {
        assert_eq!(signal_number("SIGTERM"), Some(libc::SIGTERM));
        assert_eq!(signal_number("SIGSTOP"), None);
    }
}
