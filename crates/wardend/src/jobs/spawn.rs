//! Starting one process of a job (its argv, its rollback, or a lost job's reconcile): the
//! environment cleared down to what the action allows, the identity the action names, its own
//! cgroup, stdin from `/dev/null`, stdout and stderr into one pipe, the status pipe on fd 3.

use std::collections::BTreeMap;
use std::ffi::CString;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::process::Stdio;

use tokio::net::unix::pipe;
use warden_policy::ActionSpec;
use warden_proto::JobId;
use warden_sys::spawn::{ChildSetup, Identity, STATUS_FD};

use super::cgroup::JobCgroup;

/// `PATH` for jobs whose action does not set one (like sudo's `secure_path`).
pub(crate) const DEFAULT_PATH: &str =
    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A started process and what the daemon holds of it.
#[derive(Debug)]
pub(crate) struct Running {
    pub child: tokio::process::Child,
    /// Taken right after spawn, before anything waits on the child: signals go through it, so
    /// none can reach a process that reused the pid.
    pub pidfd: OwnedFd,
    pub status: pipe::Receiver,
    pub output: pipe::Receiver,
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

/// Starts `argv` for `job` under `action`'s identity, environment and working directory.
/// Must be called from a runtime worker thread, never a blocking-pool thread: the child's
/// parent-death signal fires when the *thread* that spawned it exits, and worker threads live as
/// long as the daemon.
pub(crate) fn start(
    action: &ActionSpec,
    identity: Option<Identity>,
    job: &JobId,
    argv: &[String],
    cgroup: Option<&JobCgroup>,
) -> io::Result<Running> {
    let (program, args) = argv
        .split_first()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "empty argv"))?;
    let mut cmd = std::process::Command::new(program);
    cmd.args(args).env_clear().envs(environment(action, job));
    let (out_r, out_w) = warden_sys::spawn::pipe()?;
    let (status_r, status_w) = warden_sys::spawn::pipe()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out_w.try_clone()?))
        .stderr(Stdio::from(out_w));
    let cwd = action.cwd.as_deref().unwrap_or(std::path::Path::new("/"));
    let cwd = CString::new(cwd.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cwd contains NUL"))?;
    warden_sys::spawn::install(
        &mut cmd,
        ChildSetup {
            identity,
            status: status_w,
            cgroup_procs: cgroup.map(JobCgroup::procs).transpose()?,
            cwd: Some(cwd),
        },
    );
    let mut cmd = tokio::process::Command::from(cmd);
    let child = cmd.spawn()?;
    // The command holds the parent's copies of both pipes' write ends: without this drop the
    // pipes would never reach end-of-file.
    drop(cmd);
    let pid = child
        .id()
        .ok_or_else(|| io::Error::other("the job exited before it could be pinned"))?;
    // Nothing has waited on the child yet, so the pid still names it.
    let pidfd = warden_sys::process::pidfd_open(pid as i32)?;
    Ok(Running {
        child,
        pidfd,
        status: pipe::Receiver::from_owned_fd(status_r)?,
        output: pipe::Receiver::from_owned_fd(out_r)?,
    })
}
