//! Starting a job's process and signalling it through its pidfd.
//!
//! The child is made with `clone3` and borrows the daemon's memory until it executes its program
//! (see `clone`: no copy of the daemon's memory, no copy-on-write faults after), inside the
//! job's cgroup, with its pidfd from the same call. The calling thread is suspended meanwhile,
//! and once the child has switched to the job's user every process of that user may stop it
//! before it reaches `exec` (`kill(-1, SIGSTOP)`). So the clone runs only on dedicated spawner
//! threads, and a watchdog on the caller's runtime kills a child through its pidfd when it has
//! not reached `exec` by the deadline (see `spawner`): no thread that serves connections ever
//! waits on a child, and a stopped child holds a spawner thread for at most the deadline.
//!
//! What the child does between the clone and `exec` is in [`child`]; it never returns into the
//! daemon's code.

mod child;
mod clone;
mod spawner;

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub use self::child::Step;
use self::child::{ChildPlan, REPORT_LEN};
use self::clone::ChildStack;

/// The descriptor number a job finds its status pipe on (`WARDEN_STATUS_FD`).
pub const STATUS_FD: i32 = 3;

/// `PIDFD_SIGNAL_PROCESS_GROUP` (Linux 6.9 uapi): signal the pidfd's process group.
const PIDFD_SIGNAL_PROCESS_GROUP: libc::c_uint = 1 << 2;

/// How long a child killed before its exec may take to be reaped before a background task
/// takes over the reaping.
const REAP_WAIT: Duration = Duration::from_secs(2);

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

/// Why a process could not be started. The program never ran.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// A step in the daemon, before or at the clone.
    #[error("{step}: {source}")]
    Prepare {
        step: &'static str,
        #[source]
        source: io::Error,
    },
    /// A step of the child failed, which it reported before exiting.
    #[error("{step}: {source}")]
    Child {
        step: Step,
        #[source]
        source: io::Error,
    },
    /// The child did not reach `exec` in time (stopped or stuck before it), and was killed.
    #[error("it did not reach exec within {} ms (stopped or stuck before it) and was killed", .within.as_millis())]
    Deadline { within: Duration },
}

impl SpawnError {
    /// The errno behind the failure, if there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            SpawnError::Prepare { source, .. } | SpawnError::Child { source, .. } => {
                source.raw_os_error()
            }
            SpawnError::Deadline { .. } => None,
        }
    }

    fn prepare(step: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
        move |source| SpawnError::Prepare { step, source }
    }
}

/// A started process that has reached `exec`.
#[derive(Debug)]
pub struct Spawned {
    pub pid: i32,
    /// The process's pidfd, from the same call that made it.
    pub pidfd: OwnedFd,
}

/// A child that was cloned and has not yet been seen to reach `exec`.
#[derive(Debug)]
struct Pending {
    pid: i32,
    pidfd: OwnedFd,
    /// Read end of the report pipe: end-of-file when the child executed its program, or
    /// [`REPORT_LEN`] bytes naming the step that failed. `None` when the spawner thread already
    /// found it at end-of-file with nothing written (see [`executed_already`]).
    report: Option<OwnedFd>,
}

/// Starts a job's process and waits, asynchronously and until `within` has passed at most,
/// until it has executed its program. The child, in order:
/// 1. starts a new session and process group, so the job can be signalled as a group;
/// 2. (fallback only) moves itself into the job's cgroup;
/// 3. closes every descriptor but the job's four and its report pipe, still privileged, so no
///    process of the job's user can stop it while it holds a copy of another job's pipes;
/// 4. sets supplementary groups, then the gid, then the uid (groups and gid need privileges that
///    dropping the uid takes away), and verifies all three took effect;
/// 5. asks for SIGKILL when its parent thread dies (after the switch: changing credentials
///    clears this setting), and makes sure the parent has not already died;
/// 6. puts stdin, stdout, stderr and the status pipe on descriptors 0 to 3;
/// 7. enters its working directory;
/// 8. marks every other descriptor close-on-exec, so nothing of the daemon's leaks into the job;
/// 9. resets every signal disposition, unblocks signals and executes the program.
///
/// A failing step fails the call with [`SpawnError::Child`] naming it, and the program never
/// runs. A child that has not reached `exec` by the deadline (stopped by a process of the job's
/// user, or stuck in a step) is killed through its pidfd and reaped, and the call fails with
/// [`SpawnError::Deadline`].
///
/// The clone runs on one of a few spawner threads that live as long as the daemon (the
/// parent-death signal fires when the *thread* that cloned the child exits), never on the
/// caller's thread. Must run inside a tokio runtime. `spec` is dropped (the parent's copies of
/// the job's descriptors closed) right after the clone.
pub async fn spawn(spec: Spec, within: Duration) -> Result<Spawned, SpawnError> {
    spawner::spawn(spec, Instant::now() + within, within).await
}

/// On a spawner thread: clones the child of `spec`, with `stack` as its stack while it shares
/// the daemon's memory; the kernel writes the child's pidfd into `pidfd` before it runs.
fn clone_job(spec: &Spec, stack: &ChildStack, pidfd: &AtomicI32) -> Result<Pending, SpawnError> {
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
    let (report_r, report_w) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| SpawnError::prepare("making the report pipe")(e.into()))?;
    let mut keep: Vec<libc::c_uint> = [
        &spec.stdin,
        &spec.stdout,
        &spec.stderr,
        &spec.status,
        &report_w,
    ]
    .iter()
    .map(|fd| fd.as_raw_fd() as libc::c_uint)
    .collect();
    keep.sort_unstable();
    keep.dedup();
    let mut plan = ChildPlan {
        spec,
        argv,
        envp,
        seen_groups: vec![0; spec.identity.as_ref().map_or(0, |i| i.groups.len()) + 1],
        report: report_w.as_raw_fd(),
        keep,
        parent: std::process::id() as libc::pid_t,
        join_cgroup: false,
        #[cfg(test)]
        stop_before_exec: spec
            .argv
            .get(1)
            .is_some_and(|a| a.as_bytes() == tests::STOP_BEFORE_EXEC.as_bytes()),
    };
    let cloned = clone::clone_child(&mut plan, stack, pidfd);
    // Only the child holds the write end now: its exec or exit ends the report.
    drop(report_w);
    let (pid, pidfd) = cloned?;
    let report = (!executed_already(&report_r)).then_some(report_r);
    Ok(Pending { pid, pidfd, report })
}

/// Whether the report pipe is at end-of-file with nothing in it, right now: the child executed
/// its program (or died without a word), as [`read_report`] would conclude. On the shared-memory
/// path the clone returns once the child has executed its program or exited, and its copy of the
/// write end (close-on-exec) is closed within the same `execve` call, so this is nearly always
/// settled here, on the spawner thread: no trip through the runtime's reactor to learn it.
/// `false` (not settled yet, a report written, or a forked child still on its way) leaves the
/// asynchronous read to decide, with its deadline, as before.
fn executed_already(report: &OwnedFd) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        report,
        rustix::event::PollFlags::IN,
    )];
    // A zero timeout: never waits. Only the hang-up alone means "nothing written, writer gone";
    // IN says a report is there, and nothing set says the writer still holds it.
    let now = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(1))
        && fds[0].revents() == rustix::event::PollFlags::HUP
}

/// What the child's report said.
enum Report {
    /// End-of-file with nothing written: the child reached exec (or died without a word).
    Executed,
    Failed(SpawnError),
}

impl Pending {
    /// Waits, asynchronously and until `deadline` at most, until the child has executed its
    /// program or reported a failed step (on the shared-memory path both happened already: the
    /// report is complete). A child that did not get there in time is killed through its pidfd;
    /// a failed or killed child is reaped.
    async fn exec(self, deadline: Instant, within: Duration) -> Result<Spawned, SpawnError> {
        let Pending { pid, pidfd, report } = self;
        let Some(report) = report else {
            return Ok(Spawned { pid, pidfd });
        };
        let outcome = match tokio::time::timeout_at(deadline, read_report(report)).await {
            Ok(Ok(Report::Executed)) => return Ok(Spawned { pid, pidfd }),
            Ok(Ok(Report::Failed(e))) | Ok(Err(e)) => e,
            Err(_) => SpawnError::Deadline { within },
        };
        abandon(pidfd).await;
        Err(outcome)
    }
}

/// Kills a child whose program must not run (a stopped one would stay so), and reaps it, in the
/// background if that takes longer than a moment.
async fn abandon(pidfd: OwnedFd) {
    let _ = signal_process(pidfd.as_fd(), libc::SIGKILL);
    if let Ok(fd) = async_pidfd(pidfd) {
        let reaper = tokio::spawn(reap_when_exited(fd));
        // Past the wait the task carries on alone: the caller is not held any longer.
        let _ = tokio::time::timeout(REAP_WAIT, reaper).await;
    }
}

/// Reads the child's report until end-of-file or a whole report.
async fn read_report(report: OwnedFd) -> Result<Report, SpawnError> {
    let failed = || SpawnError::prepare("reading the child's report");
    rustix::fs::fcntl_setfl(&report, rustix::fs::OFlags::NONBLOCK)
        .map_err(|e| failed()(e.into()))?;
    let report = async_fd(report).map_err(failed())?;
    let mut buf = [0u8; REPORT_LEN];
    let mut got = 0;
    while got < buf.len() {
        let mut ready = report.readable().await.map_err(failed())?;
        match rustix::io::read(report.get_ref(), &mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(rustix::io::Errno::AGAIN) => ready.clear_ready(),
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(failed()(e.into())),
        }
    }
    if got == 0 {
        return Ok(Report::Executed);
    }
    let code = |range: std::ops::Range<usize>| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&buf[range]);
        u32::from_ne_bytes(b)
    };
    let step = (got == REPORT_LEN)
        .then(|| Step::from_code(code(0..4)))
        .flatten();
    Ok(Report::Failed(match step {
        Some(step) => SpawnError::Child {
            step,
            source: io::Error::from_raw_os_error(code(4..8) as i32),
        },
        None => SpawnError::Prepare {
            step: "reading the child's report",
            source: io::Error::new(io::ErrorKind::InvalidData, "a garbled report"),
        },
    }))
}

/// Waits until the pidfd's process has exited, then reaps it.
async fn reap_when_exited(pidfd: tokio::io::unix::AsyncFd<OwnedFd>) {
    loop {
        let Ok(mut ready) = pidfd.readable().await else {
            return;
        };
        match has_exited(pidfd.get_ref().as_fd()) {
            Ok(true) => {
                let _ = reap(pidfd.get_ref().as_fd());
                return;
            }
            Ok(false) => ready.clear_ready(),
            Err(_) => return,
        }
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
    async_fd(pidfd)
}

/// Registers a descriptor with the tokio reactor for reading.
fn async_fd(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of the OwnedFd, so the descriptor stays open and names
    // the same file until the AsyncFd is dropped, and OwnedFd::as_raw_fd always returns it.
    unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
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

/// The read end of a close-on-exec pipe that already holds `data`, followed by end-of-file: a
/// job's stdin that only the job can read. The pipe is grown to fit `data` when it must be; the
/// writes never block (data that still does not fit is an error, never a wait).
pub fn pipe_holding(data: &[u8]) -> io::Result<OwnedFd> {
    let (r, w) = pipe()?;
    // Only the write end: the job reads its stdin blocking, as any program expects.
    rustix::fs::fcntl_setfl(&w, rustix::fs::OFlags::NONBLOCK)?;
    if data.len() > rustix::pipe::fcntl_getpipe_size(&w)? {
        rustix::pipe::fcntl_setpipe_size(&w, data.len())?;
    }
    let mut rest = data;
    while !rest.is_empty() {
        match rustix::io::write(&w, rest) {
            Ok(n) => rest = &rest[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(r)
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

    /// `argv[1]` that makes a test child stop itself right before its exec.
    pub(super) const STOP_BEFORE_EXEC: &str = "--warden-test-stop-before-exec";

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Spawns and awaits the exec, as the daemon does.
    fn start(spec: Spec) -> Result<Spawned, SpawnError> {
        runtime().block_on(spawn(spec, Duration::from_secs(10)))
    }

    /// A spec for `argv` with its output and status pipes thrown away.
    fn quiet(argv: &[&str]) -> Spec {
        let (_out_r, out_w) = pipe().unwrap();
        let (_st_r, st_w) = pipe().unwrap();
        Spec {
            program: c(argv[0]),
            argv: argv.iter().copied().map(c).collect(),
            env: vec![],
            stdin: std::fs::File::open("/dev/null").unwrap().into(),
            stdout: out_w.try_clone().unwrap(),
            stderr: out_w,
            status: st_w,
            cgroup: None,
            identity: None,
            cwd: c("/"),
        }
    }

    /// Held by the tests that stop children, so one does not see another's stopped children.
    static STOPPING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    /// Children of this process that are stopped (state `T`).
    fn stopped_children() -> Vec<i32> {
        let me = std::process::id().to_string();
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                let Some((_, rest)) = stat.rsplit_once(") ") else {
                    return false;
                };
                let fields: Vec<&str> = rest.split_whitespace().collect();
                fields.first() == Some(&"T") && fields.get(1) == Some(&me.as_str())
            })
            .collect()
    }

    fn run(program: &str, args: &[&str], cwd: &str) -> Result<Run, SpawnError> {
        let (out_r, out_w) = pipe().unwrap();
        let (st_r, st_w) = pipe().unwrap();
        let spec = Spec {
            program: c(program),
            argv: std::iter::once(program)
                .chain(args.iter().copied())
                .map(c)
                .collect(),
            env: vec![c("PATH=/usr/bin:/bin")],
            stdin: std::fs::File::open("/dev/null").unwrap().into(),
            stdout: out_w.try_clone().unwrap(),
            stderr: out_w,
            status: st_w,
            cgroup: None,
            identity: None,
            cwd: c(cwd),
        };
        let spawned = start(spec)?;
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
    fn a_failing_step_fails_the_spawn_and_names_it() {
        let err = run("/bin/true", &[], "/nonexistent-wdn").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(
            matches!(
                err,
                SpawnError::Child {
                    step: Step::EnterCwd,
                    ..
                }
            ),
            "{err:?}"
        );
        let err = run("/nonexistent-wdn/prog", &[], "/").unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
        assert!(
            matches!(
                err,
                SpawnError::Child {
                    step: Step::Exec,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(
            err.to_string().starts_with("executing the program: "),
            "{err}"
        );
    }

    /// Pins: a child stopped right before its exec (as a process of the job's user may stop it)
    /// holds nobody: the spawn fails at the deadline, with the child killed and reaped.
    #[test]
    fn a_child_stopped_before_exec_is_killed_at_the_deadline() {
        let _one = STOPPING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rt = runtime();
        let within = Duration::from_millis(300);
        let began = std::time::Instant::now();
        let err = rt
            .block_on(spawn(quiet(&["/bin/true", STOP_BEFORE_EXEC]), within))
            .unwrap_err();
        assert!(matches!(err, SpawnError::Deadline { .. }), "{err:?}");
        assert!(began.elapsed() < within + REAP_WAIT + Duration::from_secs(1));
        assert_eq!(
            stopped_children(),
            Vec::<i32>::new(),
            "a stopped child remains"
        );
    }

    /// Pins: stopped children tie up the spawner threads only until their deadline: more of them
    /// at once than there are spawner threads all fail in time, and the next spawn works.
    #[test]
    fn stopped_children_release_their_spawner_threads_at_the_deadline() {
        let _one = STOPPING
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let rt = runtime();
        let within = Duration::from_millis(300);
        let began = std::time::Instant::now();
        let results = rt.block_on(async {
            let tasks: Vec<_> = (0..spawner::THREADS + 2)
                .map(|_| tokio::spawn(spawn(quiet(&["/bin/true", STOP_BEFORE_EXEC]), within)))
                .collect();
            let mut results = Vec::new();
            for t in tasks {
                results.push(t.await.unwrap());
            }
            results
        });
        for r in results {
            assert!(matches!(r, Err(SpawnError::Deadline { .. })), "{r:?}");
        }
        assert!(began.elapsed() < within + REAP_WAIT + Duration::from_secs(1));
        let spawned = start(quiet(&["/bin/true"])).unwrap();
        assert!(wait(&spawned.pidfd).success());
        assert_eq!(
            stopped_children(),
            Vec::<i32>::new(),
            "a stopped child remains"
        );
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
        clone::NO_CLONE3.store(true, Ordering::Relaxed);
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
        let spawned = start(spec);
        clone::NO_CLONE3.store(false, Ordering::Relaxed);
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
