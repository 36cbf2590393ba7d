//! The clone itself: a child that borrows the daemon's memory until it executes its program.
//!
//! `clone3` with `CLONE_VM | CLONE_VFORK` lets the child run in the daemon's address space, on a
//! stack of its own, while the calling thread is suspended until the child executes its program
//! or exits: nothing of the daemon's memory is copied, and the daemon takes no copy-on-write
//! faults afterwards (a fork-like clone of the multi-threaded daemon cost more than the rest of a
//! job's start together). `CLONE_INTO_CGROUP` creates the child inside the job's cgroup,
//! `CLONE_PIDFD` hands back its pidfd in the same call — written into the parent's memory before
//! the child runs, so a watchdog can kill a child that holds the calling thread too long — and
//! `CLONE_CLEAR_SIGHAND` resets every signal handler to its default in the child.
//!
//! Kernels without `clone3` or its flags (before 5.7), and architectures without the few
//! instructions below, get `fork` plus `pidfd_open`, and the child moves itself into its cgroup.
//!
//! Only the spawner threads call [`clone_child`] (see `spawner`): the wait belongs to them,
//! never to a thread that serves connections.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::SpawnError;
use super::child::{self, ChildPlan};

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
pub(super) static NO_CLONE3: AtomicBool = AtomicBool::new(false);

/// Clones the child, which runs [`child::main`] and never returns; returns its pid and pidfd.
///
/// The kernel writes the pidfd's number into `pidfd` before the child first runs, while this
/// call still holds it (on the shared-memory path the call returns only once the child has
/// executed its program or exited). `stack` is the child's stack on that path.
pub(super) fn clone_child(
    plan: &mut ChildPlan<'_>,
    stack: &ChildStack,
    pidfd: &AtomicI32,
) -> Result<(i32, OwnedFd), SpawnError> {
    if HAS_CLONE3_VM && !NO_CLONE3.load(Ordering::Relaxed) {
        let mut args = CloneArgs {
            flags: CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
            pidfd: pidfd.as_ptr() as u64,
            exit_signal: libc::SIGCHLD as u64,
            stack: stack.base as u64,
            stack_size: stack.len as u64,
            ..CloneArgs::default()
        };
        if let Some(dir) = &plan.spec.cgroup {
            args.flags |= CLONE_INTO_CGROUP;
            args.cgroup = dir.as_raw_fd() as u64;
        }
        // SAFETY: `args` is a live, correctly sized clone_args naming a mapped stack of its own
        // for the child, used by no one else (the caller's thread owns it and is suspended for
        // the child's whole use of it), and `plan` outlives the call: with CLONE_VFORK this
        // thread is suspended until the child has executed the program or exited, so the
        // child's reads of `plan` (and its write into `plan.seen_groups`) happen while it is
        // borrowed here. The kernel writes the pidfd into `pidfd`, an aligned i32 that lives as
        // long as the caller's borrow; the child reaches nothing else of the parent's memory.
        let rc = unsafe {
            clone3_vm(
                &mut args,
                child_entry,
                std::ptr::from_mut(plan).cast::<libc::c_void>(),
            )
        };
        if rc >= 0 {
            // SAFETY: on success the kernel stored a new pidfd in `pidfd` for this call only;
            // nothing else owns or closes it.
            let fd = unsafe { OwnedFd::from_raw_fd(pidfd.load(Ordering::Acquire)) };
            return Ok((rc as i32, fd));
        }
        let errno = -rc as i32;
        if !matches!(errno, libc::ENOSYS | libc::EINVAL | libc::E2BIG) {
            return Err(SpawnError::Prepare {
                step: "cloning the child",
                source: io::Error::from_raw_os_error(errno),
            });
        }
        NO_CLONE3.store(true, Ordering::Relaxed);
        // These errors come from checking the arguments, before the kernel makes a pidfd; should
        // one ever have been written, it was closed again and must not be signalled.
        pidfd.store(-1, Ordering::Release);
    }
    plan.join_cgroup = plan.spec.cgroup.is_some();
    // SAFETY: fork in a multi-threaded process is sound as long as the child only makes
    // async-signal-safe calls until exec, which child::main guarantees.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(SpawnError::Prepare {
            step: "forking the child",
            source: io::Error::last_os_error(),
        }),
        0 => child::main(plan),
        pid => {
            // Nothing has waited on the child, so its pid cannot have been reused yet.
            let fd = crate::process::pidfd_open(pid).map_err(|source| SpawnError::Prepare {
                step: "opening the child's pidfd",
                source,
            })?;
            pidfd.store(fd.as_raw_fd(), Ordering::Release);
            Ok((pid, fd))
        }
    }
}

/// The child's stack while it shares the daemon's memory: an anonymous mapping whose lowest page
/// is a guard, so an overflow faults instead of writing into the daemon's memory. Each spawner
/// thread keeps one for its life: its children use it one after another, each while the thread
/// is suspended.
#[derive(Debug)]
pub(super) struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    /// Far more than the child's few calls need (no allocation, no formatting).
    const LEN: usize = 128 * 1024;

    pub(super) fn new() -> io::Result<ChildStack> {
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
        // SAFETY: unmaps exactly the mapping made in `new`; no child runs on it any more (each
        // ran while its spawner thread, which owns this value, was suspended).
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
    child::main(plan)
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
