//! A daemon killed with SIGKILL while jobs run: after a restart the jobs are `lost`, their
//! `reconcile` ran, nothing they started is left running, and new jobs run. Needs root (job
//! cgroups are what reach the grandchildren a dead daemon's jobs leave).

#![allow(clippy::unwrap_used)]

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Map;
use warden_client::Client;
use warden_proto::jobs::JobState;

const WARDEND: &str = env!("CARGO_BIN_EXE_wardend");

fn config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"[daemon]
runtime_dir = "{d}/run"
state_dir = "{d}/state"
[[listener]]
path = "{d}/run/w.sock"
[[action]]
name = "stubborn"
argv = ["/bin/sh", "-c", "sh -c 'trap \"\" TERM; exec sleep 300' & echo $! > \"$1/gc-$WARDEN_JOB_ID\"; echo \"progress 5 started\" >&\"$WARDEN_STATUS_FD\"; sleep 300", "stubborn", "{d}"]
reconcile = ["/bin/sh", "-c", "echo reconciled > \"$1/reconciled-$WARDEN_JOB_ID\"", "reconcile", "{d}"]
tier = "read_only"
[[action]]
name = "true"
argv = ["/bin/true"]
tier = "read_only"
mutating = false
"#
    )
}

fn spawn(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("wardend.log"))
        .unwrap();
    Command::new(WARDEND)
        .arg("--config")
        .arg(dir.join("warden.toml"))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap()
}

async fn connect(dir: &Path) -> Client {
    for _ in 0..500 {
        if let Ok(c) = Client::connect(&dir.join("run/w.sock"), "crash-test").await {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("wardend did not come up");
}

fn pin(file: &Path) -> OwnedFd {
    for _ in 0..500 {
        if let Ok(t) = std::fs::read_to_string(file)
            && let Ok(pid) = t.trim().parse::<i32>()
        {
            return warden_sys::process::pidfd_open(pid).unwrap();
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("{} never appeared", file.display());
}

fn alive(fd: &OwnedFd) -> bool {
    warden_sys::process::pidfd_is_alive(fd.as_fd()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_of_a_killed_daemon_are_lost_reconciled_and_leave_nothing_running() {
    if !warden_testkit::root_or_skip(
        "jobs_of_a_killed_daemon_are_lost_reconciled_and_leave_nothing_running",
    ) {
        return;
    }
    let tmp = warden_testkit::safe_tempdir();
    let dir = tmp.path();
    std::fs::write(dir.join("warden.toml"), config(dir)).unwrap();
    let mut daemon = spawn(dir);
    let mut c = connect(dir).await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = c
            .start("stubborn", &Map::new(), None)
            .await
            .unwrap()
            .job_id
            .to_string();
        ids.push(id);
    }
    let grandchildren: Vec<OwnedFd> = ids
        .iter()
        .map(|id| pin(&dir.join(format!("gc-{id}"))))
        .collect();
    for id in &ids {
        for _ in 0..500 {
            if c.job(id).await.unwrap().progress == Some(5) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    drop(c);

    daemon.kill().unwrap();
    daemon.wait().unwrap();
    // The parent-death signal reached the jobs' first processes, not the grandchildren: only
    // the cgroups can end those.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        grandchildren.iter().all(alive),
        "the test needs grandchildren that outlive the daemon"
    );

    let mut daemon = spawn(dir);
    let mut c = connect(dir).await;
    for gc in &grandchildren {
        for _ in 0..200 {
            if !alive(gc) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !alive(gc),
            "a lost job's grandchild is still running after the restart"
        );
    }
    for id in &ids {
        let mut record = c.job(id).await.unwrap();
        for _ in 0..500 {
            if record
                .message
                .as_deref()
                .is_some_and(|m| m.contains("reconcile"))
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            record = c.job(id).await.unwrap();
        }
        assert_eq!(record.state, JobState::Lost);
        assert!(record.ended_at.is_some());
        assert!(
            record
                .message
                .as_deref()
                .unwrap()
                .ends_with("reconcile exited with status 0"),
            "{:?}",
            record.message
        );
        assert!(dir.join(format!("reconciled-{id}")).exists());
    }
    let fresh = c.start("true", &Map::new(), None).await.unwrap().job_id;
    assert_eq!(
        c.wait(fresh.as_str(), 30_000).await.unwrap().state,
        JobState::Succeeded
    );
    drop(c);
    Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success());
}

/// A daemon whose one action passes its commit point and then holds on, so neither a lockdown
/// nor switching its ops toggle off can stop it, and whose reconcile leaves a mark.
fn braked_config(dir: &Path) -> String {
    let d = dir.display();
    format!(
        r#"[daemon]
runtime_dir = "{d}/run"
state_dir = "{d}/state"
[[listener]]
path = "{d}/run/w.sock"
[ops]
storage = true
[[action]]
name = "committed"
argv = ["/bin/sh", "-c", "echo commit >&\"$WARDEN_STATUS_FD\"; exec sleep 300"]
reconcile = ["/bin/sh", "-c", "echo reconciled > \"$1/reconciled-$WARDEN_JOB_ID\"", "reconcile", "{d}"]
ops = ["storage"]
mutating = true
"#
    )
}

/// The lost job's message once it names its reconcile (polled, at most 5 s).
async fn reconcile_message(c: &mut Client, id: &str) -> String {
    for _ in 0..500 {
        if let Some(m) = c.job(id).await.unwrap().message
            && m.contains("reconcile")
        {
            return m;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("job {id} never named its reconcile");
}

fn kill(daemon: &mut Child) {
    daemon.kill().unwrap();
    daemon.wait().unwrap();
}

/// Pins: a lost job's reconcile waits for the brakes read at start: under a lockdown that
/// survived the restart, or with its action's ops toggle off, it is deferred (the job says so)
/// and does not run, also across another restart; once both brakes are released it runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_jobs_reconcile_waits_for_the_lockdown_and_its_ops() {
    if !warden_testkit::root_or_skip("a_lost_jobs_reconcile_waits_for_the_lockdown_and_its_ops") {
        return;
    }
    let tmp = warden_testkit::safe_tempdir();
    let dir = tmp.path();
    std::fs::write(dir.join("warden.toml"), braked_config(dir)).unwrap();
    let mut daemon = spawn(dir);
    let mut c = connect(dir).await;
    let id = c
        .start("committed", &Map::new(), None)
        .await
        .unwrap()
        .job_id
        .to_string();
    for _ in 0..500 {
        if c.job(&id).await.unwrap().committed {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(c.job(&id).await.unwrap().committed);
    c.set_op("storage", false, "disk swap").await.unwrap();
    c.lockdown_engage("incident 9").await.unwrap();
    assert_eq!(c.job(&id).await.unwrap().state, JobState::Running);
    drop(c);
    kill(&mut daemon);

    let mark = dir.join(format!("reconciled-{id}"));
    for _ in 0..2 {
        let mut daemon = spawn(dir);
        let mut c = connect(dir).await;
        let message = reconcile_message(&mut c, &id).await;
        assert!(message.contains("reconcile deferred"), "{message}");
        assert!(message.contains("ops `storage`"), "{message}");
        assert!(!mark.exists(), "the reconcile ran past the brakes");
        drop(c);
        kill(&mut daemon);
    }

    let mut daemon = spawn(dir);
    let mut c = connect(dir).await;
    c.lockdown_release().await.unwrap();
    // Still off: ops `storage`.
    let message = reconcile_message(&mut c, &id).await;
    assert!(message.contains("reconcile deferred"), "{message}");
    c.set_op("storage", true, "done").await.unwrap();
    for _ in 0..500 {
        if mark.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(mark.exists(), "the reconcile never ran once released");
    let mut message = reconcile_message(&mut c, &id).await;
    for _ in 0..500 {
        if message.ends_with("reconcile exited with status 0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        message = reconcile_message(&mut c, &id).await;
    }
    assert!(
        message.ends_with("reconcile exited with status 0"),
        "{message}"
    );
    drop(c);
    Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(daemon.wait().unwrap().success());
}
