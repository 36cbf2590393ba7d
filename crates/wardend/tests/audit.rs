//! The audit log of a real daemon: what it records of jobs, that no secret reaches it, that an
//! untouched log verifies through `audit.verify`, and that a changed record is found after a
//! restart.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use serde_json::{Map, Value, json};
use warden_client::Client;
use warden_proto::jobs::JobState;
use warden_proto::messages::DaemonMode;
use wardend::{Daemon, DaemonThread, Settings};

const SECRET: &str = "Vq9-audit-s3cret";

fn daemon(dir: &Path) -> DaemonThread {
    let text = warden_testkit::config(
        r#"[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[[listener]]
path = "{dir}/run/w.sock"
mode = "0600"
[[action]]
name = "login"
argv = ["/bin/sh", "-c", "echo \"signed in with $1\"", "login", "{token}"]
tier = "read_only"
mutating = false
[action.params.token]
type = "string"
secret = true
"#,
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

fn records(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("state/audit/audit.log"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Pins: the daemon's start and stop and every state of a job are recorded in one intact chain,
/// with the job's requester and redacted parameters, and no secret anywhere in the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_are_recorded_in_an_intact_chain_without_secrets() {
    if !warden_testkit::root_or_skip("jobs_are_recorded_in_an_intact_chain_without_secrets") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let mut c = Client::connect(d.socket(), "audit-test").await.unwrap();
    let params: Map<String, Value> = json!({ "token": SECRET }).as_object().unwrap().clone();
    let id = c.start("login", &params, None).await.unwrap().job_id;
    let r = c.wait(id.as_str(), 30_000).await.unwrap();
    assert_eq!(r.state, JobState::Succeeded);
    let v = c.audit_verify().await.unwrap();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.records, v.head_seq);
    drop(c);
    d.stop();

    let text = std::fs::read_to_string(dir.path().join("state/audit/audit.log")).unwrap();
    assert!(!text.contains(SECRET), "a secret reached the audit log:\n{text}");
    let all = records(dir.path());
    assert_eq!(all.first().unwrap()["event"], "daemon.start");
    assert_eq!(all.last().unwrap()["event"], "daemon.stop");
    let states: Vec<&str> = all
        .iter()
        .filter(|r| r["job_id"] == id.as_str())
        .map(|r| r["outcome"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["running", "succeeded"]);
    let job = all.iter().find(|r| r["job_id"] == id.as_str()).unwrap();
    assert_eq!(job["params"]["token"], "<redacted>");
    assert_eq!(job["peer"]["uid"], 0);
    assert_eq!(job["peer"]["client"], "audit-test");
    for (i, r) in all.iter().enumerate() {
        assert_eq!(r["seq"], i as u64 + 1, "consecutive from 1");
    }
}

/// Pins: a record changed while the daemon was stopped is named by `audit.verify` after a
/// restart, and the restarted daemon keeps writing (the chain continues after the bad record).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_changed_while_stopped_is_found_after_a_restart() {
    if !warden_testkit::root_or_skip("a_record_changed_while_stopped_is_found_after_a_restart") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let mut c = Client::connect(d.socket(), "audit-test").await.unwrap();
    let params: Map<String, Value> = json!({ "token": "abcd-1234" }).as_object().unwrap().clone();
    let id = c.start("login", &params, None).await.unwrap().job_id;
    c.wait(id.as_str(), 30_000).await.unwrap();
    drop(c);
    d.stop();

    // Someone rewrites who asked for the job in record 2.
    let path = dir.path().join("state/audit/audit.log");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    assert!(lines[1].contains("\"uid\":0"), "{}", lines[1]);
    lines[1] = lines[1].replacen("\"uid\":0", "\"uid\":7", 1);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();

    let d = daemon(dir.path());
    let mut c = Client::connect(d.socket(), "audit-test").await.unwrap();
    let v = c.audit_verify().await.unwrap();
    assert!(!v.intact);
    assert_eq!(
        (v.first_bad_seq, v.problem.as_deref()),
        (Some(2), Some("modified"))
    );
    assert!(v.head_seq > lines.len() as u64, "the restarted daemon went on writing");
}
