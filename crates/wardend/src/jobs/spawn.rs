//! Starting one process of a job (its argv, its rollback, or a lost job's reconcile): the
//! environment cleared down to what the action allows, the identity the action names, its own
//! cgroup, stdin from the action's `stdin` or `/dev/null`, stdout and stderr into one pipe, the
//! status pipe on fd 3. The hand-over from the clone to the program's exec is awaited with a
//! deadline and never holds a runtime thread (the clone runs on warden-sys's spawner threads): a
//! process of the job's user may stop the child in between.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use warden_policy::ActionSpec;
use warden_proto::JobId;
use warden_sys::spawn::{Exit, Identity, STATUS_FD, SpawnError, Spec};

use super::cgroup::JobCgroup;

/// `PATH` for jobs whose action does not set one (like sudo's `secure_path`).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// How long a child may take from its clone to its program's exec. The steps in between are a
/// few system calls; a child still short of exec after this was stopped (any process of the
/// job's user may send it SIGSTOP) or is stuck (a working directory on a dead mount), and is
/// killed: the job fails, saying so.
pub(crate) const EXEC_DEADLINE: Duration = Duration::from_secs(5);

/// A started process and what the daemon holds of it.
#[derive(Debug)]
pub(crate) struct Running {
    /// The process's pid, which is also its process group's id (it leads a session). Used only
    /// for kernels that cannot signal a group through the pidfd, and only while unreaped.
    pub pid: i32,
    /// The pidfd the process was created with: signals go through it (so none can reach a
    /// process that reused the pid), and it becomes readable when the process exits.
    pub pidfd: AsyncFd<OwnedFd>,
    pub status: pipe::Receiver,
    pub output: pipe::Receiver,
}

impl Running {
    pub(crate) fn pidfd(&self) -> BorrowedFd<'_> {
        self.pidfd.get_ref().as_fd()
    }
}

impl Running {
    /// Sends `signal` to the job's process group.
    pub(crate) fn signal_group(&self, signal: i32) -> io::Result<()> {
        warden_sys::spawn::signal_group(self.pidfd(), self.pid, signal)
    }

    /// Reaps the process, which [`exited`] said has exited.
    pub(crate) fn reap(&self) -> Exit {
        match warden_sys::spawn::reap(self.pidfd()) {
            Ok(Some(exit)) => exit,
            // Cannot happen after `exited`; if it does, the process is treated as gone.
            _ => Exit {
                code: None,
                signal: None,
            },
        }
    }
}

/// Waits until the process behind `pidfd` has exited, without reaping it, so its process group
/// can still be signalled. (A function of the pidfd alone, so it can run beside reads of the
/// same process's pipes.)
pub(crate) async fn exited(pidfd: &AsyncFd<OwnedFd>) -> io::Result<()> {
    loop {
        let mut ready = pidfd.readable().await?;
        if warden_sys::spawn::has_exited(pidfd.get_ref().as_fd())? {
            return Ok(());
        }
        ready.clear_ready();
    }
}

/// Who an action's processes run as: `None` when that is the daemon's own identity already
/// (so an unprivileged `--dev` daemon can run its actions without switching).
pub(crate) fn identity_of(action: &ActionSpec) -> io::Result<Option<Identity>> {
    let target = match &action.run_as {
        None => return Ok(None),
        Some(r) => Identity {
            uid: r.uid.0,
            gid: r.gid.0,
            groups: warden_sys::users::group_list(&r.user, r.gid.0)?,
        },
    };
    let same = target.uid == warden_sys::users::effective_uid()
        && target.gid == warden_sys::users::effective_gid()
        && target.groups == warden_sys::users::current_groups()?;
    Ok((!same).then_some(target))
}

/// The environment of a job: `PATH`, the action's `env_keep` names taken from the daemon's own
/// environment, the action's `env`, and `WARDEN_STATUS_FD` / `WARDEN_JOB_ID`. Nothing else.
pub(crate) fn environment(
    action: &ActionSpec,
    job: &JobId,
) -> BTreeMap<String, std::ffi::OsString> {
    let mut env = BTreeMap::new();
    env.insert("PATH".to_owned(), DEFAULT_PATH.into());
    for name in &action.env_keep {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.clone(), v);
        }
    }
    for (k, v) in &action.env {
        env.insert(k.clone(), v.into());
    }
    env.insert("WARDEN_STATUS_FD".to_owned(), STATUS_FD.to_string().into());
    env.insert("WARDEN_JOB_ID".to_owned(), job.as_str().into());
    env
}

fn c_string(bytes: Vec<u8>) -> Result<CString, SpawnError> {
    CString::new(bytes).map_err(|_| SpawnError::Prepare {
        step: "preparing argv and environment",
        source: io::Error::new(io::ErrorKind::InvalidInput, "contains NUL"),
    })
}

fn prepare(step: &'static str) -> impl FnOnce(io::Error) -> SpawnError {
    move |source| SpawnError::Prepare { step, source }
}

/// Starts `argv` for `job` under `action`'s identity, environment and working directory, inside
/// `cgroup` when there is one, with `stdin` (or nothing) to read, and waits until the program
/// runs: for at most [`EXEC_DEADLINE`], asynchronously. The clone itself happens on one of
/// warden-sys's spawner threads, which live as long as the daemon (the child's parent-death
/// signal fires when the *thread* that cloned it exits).
pub(crate) async fn start(
    action: &ActionSpec,
    identity: Option<Identity>,
    job: &JobId,
    argv: &[String],
    stdin: Option<&[u8]>,
    cgroup: Option<&JobCgroup>,
) -> Result<Running, SpawnError> {
    let program = argv.first().ok_or_else(|| SpawnError::Prepare {
        step: "preparing argv",
        source: io::Error::new(io::ErrorKind::InvalidInput, "empty argv"),
    })?;
    let env = environment(action, job)
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(kv)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (out_r, out_w) = warden_sys::spawn::pipe().map_err(prepare("making the output pipe"))?;
    let (status_r, status_w) =
        warden_sys::spawn::pipe().map_err(prepare("making the status pipe"))?;
    let stdin: OwnedFd = match stdin {
        Some(data) => warden_sys::spawn::pipe_holding(data).map_err(prepare("filling stdin"))?,
        None => std::fs::File::open("/dev/null")
            .map_err(prepare("opening /dev/null"))?
            .into(),
    };
    let cwd = action.cwd.as_deref().unwrap_or(std::path::Path::new("/"));
    let spec = Spec {
        program: c_string(program.clone().into_bytes())?,
        argv: argv
            .iter()
            .map(|a| c_string(a.clone().into_bytes()))
            .collect::<Result<_, _>>()?,
        env,
        stdin,
        stdout: out_w
            .try_clone()
            .map_err(prepare("making the output pipe"))?,
        stderr: out_w,
        status: status_w,
        cgroup: cgroup
            .map(JobCgroup::dir)
            .transpose()
            .map_err(prepare("opening the job's cgroup"))?,
        identity,
        cwd: c_string(cwd.as_os_str().as_bytes().to_vec())?,
    };
    // The spec holds the parent's copies of both pipes' write ends: spawn drops it right after
    // the clone, so the pipes reach end-of-file when the job's process closes its own.
    let spawned = warden_sys::spawn::spawn(spec, EXEC_DEADLINE).await?;
    Ok(Running {
        pid: spawned.pid,
        pidfd: warden_sys::spawn::async_pidfd(spawned.pidfd)
            .map_err(prepare("watching the process"))?,
        status: pipe::Receiver::from_owned_fd(status_r)
            .map_err(prepare("watching the status pipe"))?,
        output: pipe::Receiver::from_owned_fd(out_r)
            .map_err(prepare("watching the output pipe"))?,
    })
}
