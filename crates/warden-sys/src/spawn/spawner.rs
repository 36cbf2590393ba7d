//! The spawner threads, and the watchdog that bounds how long a child may hold one.
//!
//! A child that borrows the daemon's memory (see `clone`) holds the thread that cloned it until
//! it executes its program, and once it has switched to the job's user every process of that
//! user may stop it on the way (`kill(-1, SIGSTOP)`). So the clone never runs on a thread that
//! serves connections: a few dedicated threads, started once and alive as long as the daemon
//! (a child's parent-death signal fires when the *thread* that cloned it exits), take clone
//! requests from a bounded queue. For each request a watchdog task on the caller's runtime
//! waits for the clone's outcome until the deadline; past it, the watchdog kills the child
//! through the pidfd the kernel wrote into the request before the child first ran, which
//! releases the thread at once. A request still queued at its deadline is dropped unstarted. So
//! a stopped child ties up one spawner thread for at most the deadline, at most
//! [`THREADS`] children are in hand-over at once, and at most [`QUEUE`] more wait.

use std::io;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, mpsc};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::time::Instant;

use super::clone::ChildStack;
use super::{Pending, SpawnError, Spawned, Spec, signal_process};

/// How many children may be between their clone and their exec at once. Idle threads cost
/// little (their stacks are mapped, not touched); a user that stops children running as it holds
/// one each for at most the deadline, so there are enough for other jobs' starts to go on past a
/// few such children.
pub(super) const THREADS: usize = 16;
/// How many clone requests may wait for a spawner thread.
const QUEUE: usize = 64;
/// How often the watchdog tries again to kill a child past its deadline, while the spawner
/// thread has not yet been released (the kill can only be sent once the kernel wrote the pidfd).
const RETRY: Duration = Duration::from_millis(20);

/// Where a request is in its hand-over; changed only under the lock, which the watchdog holds
/// while it uses the pidfd's number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Waiting for a spawner thread.
    Queued,
    /// A spawner thread is cloning the child, or suspended until the child executes or exits;
    /// the pidfd (once written) stays open.
    Cloning,
    /// The clone returned: the spawner thread owns the pidfd and may hand it on or close it.
    Done,
    /// The watchdog gave up on the request before a thread took it: it is never started.
    Cancelled,
}

/// What a spawner thread and the request's watchdog share.
#[derive(Debug)]
struct Handover {
    state: Mutex<State>,
    /// The child's pidfd, written by the kernel (`CLONE_PIDFD`) before the child first runs;
    /// -1 until then.
    pidfd: AtomicI32,
}

impl Handover {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock still holds a valid State: nothing panics while holding it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

struct Request {
    spec: Spec,
    handover: Arc<Handover>,
    reply: oneshot::Sender<Result<Pending, SpawnError>>,
}

/// The queue to the spawner threads, which are started on first use.
fn queue() -> &'static mpsc::SyncSender<Request> {
    static QUEUE_TX: OnceLock<mpsc::SyncSender<Request>> = OnceLock::new();
    QUEUE_TX.get_or_init(|| {
        let (tx, rx) = mpsc::sync_channel(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for n in 0..THREADS {
            let rx = Arc::clone(&rx);
            // A thread that cannot be started leaves the others; with none, sends fail and
            // every spawn says so.
            let _ = std::thread::Builder::new()
                .name(format!("warden-spawn-{n}"))
                .stack_size(256 * 1024)
                .spawn(move || serve(&rx));
        }
        tx
    })
}

/// A spawner thread's life: never ends while the daemon runs (the queue's sender is static).
fn serve(queue: &Mutex<mpsc::Receiver<Request>>) {
    // Every signal stays blocked in this thread, so its children start with all of them blocked
    // and no handler of the daemon's can run in a child before its exec (the child unblocks them
    // just before). The daemon's signals go to its other threads.
    let blocked = block_all_signals();
    let mut stack: Option<ChildStack> = None;
    loop {
        let next = queue.lock().unwrap_or_else(PoisonError::into_inner).recv();
        let Ok(Request {
            spec,
            handover,
            reply,
        }) = next
        else {
            return;
        };
        {
            let mut state = handover.state();
            if *state == State::Cancelled {
                continue;
            }
            *state = State::Cloning;
        }
        let result =
            ready(&blocked, &mut stack).and_then(|s| super::clone_job(&spec, s, &handover.pidfd));
        *handover.state() = State::Done;
        // The parent's copies of the job's pipes: closed now, so they reach end-of-file when the
        // job's process closes its own.
        drop(spec);
        if let Err(Ok(pending)) = reply.send(result) {
            // The watchdog is gone (its runtime shut down): nobody would supervise the child.
            let _ = signal_process(std::os::fd::AsFd::as_fd(&pending.pidfd), libc::SIGKILL);
        }
    }
}

/// The child's stack, mapped on first use; fails if this thread's signals could not be blocked.
fn ready<'s>(
    blocked: &io::Result<()>,
    stack: &'s mut Option<ChildStack>,
) -> Result<&'s ChildStack, SpawnError> {
    if let Err(e) = blocked {
        return Err(SpawnError::Prepare {
            step: "blocking signals",
            source: io::Error::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)),
        });
    }
    if stack.is_none() {
        *stack = Some(ChildStack::new().map_err(SpawnError::prepare("mapping the child's stack"))?);
    }
    stack.as_ref().ok_or_else(|| SpawnError::Prepare {
        step: "mapping the child's stack",
        source: io::Error::other("no stack"),
    })
}

/// Blocks every signal in the calling thread, for good.
fn block_all_signals() -> io::Result<()> {
    // SAFETY: sigset_t is plain data that sigfillset initialises fully before it is used;
    // pthread_sigmask reads it and writes nothing (no old mask is asked for).
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let rc = libc::pthread_sigmask(libc::SIG_BLOCK, &all, std::ptr::null_mut());
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
    }
    Ok(())
}

/// Clones `spec`'s child on a spawner thread and waits until it has executed its program, until
/// `deadline` at most. Runs as a task of its own, so a caller that stops waiting never leaves a
/// child holding a spawner thread beyond the deadline.
pub(super) async fn spawn(
    spec: Spec,
    deadline: Instant,
    within: Duration,
) -> Result<Spawned, SpawnError> {
    let handover = Arc::new(Handover {
        state: Mutex::new(State::Queued),
        pidfd: AtomicI32::new(-1),
    });
    let (reply, answer) = oneshot::channel();
    let queued = queue().try_send(Request {
        spec,
        handover: Arc::clone(&handover),
        reply,
    });
    if let Err(e) = queued {
        let source = match e {
            mpsc::TrySendError::Full(_) => io::Error::new(
                io::ErrorKind::WouldBlock,
                "too many processes are being started at once",
            ),
            mpsc::TrySendError::Disconnected(_) => io::Error::other("no spawner thread runs"),
        };
        return Err(SpawnError::Prepare {
            step: "queueing the clone",
            source,
        });
    }
    let watch = tokio::spawn(async move {
        let pending = watch(&handover, answer, deadline, within).await?;
        pending.exec(deadline, within).await
    });
    watch.await.map_err(|e| SpawnError::Prepare {
        step: "watching the clone",
        source: io::Error::other(e.to_string()),
    })?
}

/// Waits for the clone's outcome until `deadline`; past it, kills the child (releasing its
/// spawner thread) or cancels the request that no thread took yet.
async fn watch(
    handover: &Handover,
    mut answer: oneshot::Receiver<Result<Pending, SpawnError>>,
    deadline: Instant,
    within: Duration,
) -> Result<Pending, SpawnError> {
    let gone = || SpawnError::Prepare {
        step: "cloning the child",
        source: io::Error::other("the spawner thread dropped the request"),
    };
    match tokio::time::timeout_at(deadline, &mut answer).await {
        Ok(Ok(result)) => return result,
        Ok(Err(_)) => return Err(gone()),
        Err(_) => {}
    }
    loop {
        {
            let mut state = handover.state();
            match *state {
                State::Queued => {
                    *state = State::Cancelled;
                    return Err(SpawnError::Deadline { within });
                }
                State::Cloning => {
                    let fd = handover.pidfd.load(Ordering::Acquire);
                    if fd >= 0 {
                        // SAFETY: in state Cloning the spawner thread holds the pidfd the kernel
                        // wrote here open, and it closes or hands it on only after setting Done
                        // under this lock, which we hold: the number names that pidfd.
                        let pidfd = unsafe { BorrowedFd::borrow_raw(fd) };
                        let _ = signal_process(pidfd, libc::SIGKILL);
                    }
                }
                State::Done | State::Cancelled => {}
            }
        }
        match tokio::time::timeout(RETRY, &mut answer).await {
            Ok(Ok(Ok(pending))) => {
                // Released by the kill, or executed just before it: either way too late.
                super::abandon(pending.pidfd).await;
                return Err(SpawnError::Deadline { within });
            }
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(gone()),
            Err(_) => {}
        }
    }
}
