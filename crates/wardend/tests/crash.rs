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
