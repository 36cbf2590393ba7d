//! Starting one process of a job (its argv, its rollback, or a lost job's reconcile): the
//! environment cleared down to what the action allows, the identity the action names, its own
//! cgroup, stdin from `/dev/null`, stdout and stderr into one pipe, the status pipe on fd 3.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use warden_policy::ActionSpec;
use warden_proto::JobId;
use warden_sys::spawn::{Exit, Identity, STATUS_FD, Spec};

use super::cgroup::JobCgroup;

/// `PATH` for jobs whose action does not set one (like sudo's `secure_path`).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

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

fn c_string(bytes: Vec<u8>) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains NUL"))
}

/// Starts `argv` for `job` under `action`'s identity, environment and working directory, inside
/// `cgroup` when there is one. Must be called from a runtime worker thread, never a
/// blocking-pool thread: the child's parent-death signal fires when the *thread* that spawned
/// it exits, and worker threads live as long as the daemon.
pub(crate) fn start(
    action: &ActionSpec,
    identity: Option<Identity>,
    job: &JobId,
    argv: &[String],
    cgroup: Option<&JobCgroup>,
) -> io::Result<Running> {
    let program = argv
        .first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let env = environment(action, job)
        .into_iter()
        .map(|(k, v)| {
            let mut kv = k.into_bytes();
            kv.push(b'=');
            kv.extend_from_slice(v.as_bytes());
            c_string(kv)
        })
        .collect::<io::Result<Vec<_>>>()?;
    let (out_r, out_w) = warden_sys::spawn::pipe()?;
    let (status_r, status_w) = warden_sys::spawn::pipe()?;
    let cwd = action.cwd.as_deref().unwrap_or(std::path::Path::new("/"));
    let spec = Spec {
        program: c_string(program.clone().into_bytes())?,
        argv: argv
            .iter()
            .map(|a| c_string(a.clone().into_bytes()))
            .collect::<io::Result<_>>()?,
        env,
        stdin: std::fs::File::open("/dev/null")?.into(),
        stdout: out_w.try_clone()?,
        stderr: out_w,
        status: status_w,
        cgroup: cgroup.map(JobCgroup::dir).transpose()?,
        identity,
        cwd: c_string(cwd.as_os_str().as_bytes().to_vec())?,
    };
    let spawned = warden_sys::spawn::spawn(&spec)?;
    // The spec holds the parent's copies of both pipes' write ends: without this drop the pipes
    // would never reach end-of-file.
    drop(spec);
    Ok(Running {
        pid: spawned.pid,
        pidfd: warden_sys::spawn::async_pidfd(spawned.pidfd)?,
        status: pipe::Receiver::from_owned_fd(status_r)?,
        output: pipe::Receiver::from_owned_fd(out_r)?,
    })
}
