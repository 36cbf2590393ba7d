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
    // A subscriber to everything an admin may see, to search for the secret too.
    let mut events = warden_testkit::raw::RawClient::hello(d.socket());
    events.send(
        2,
        "events.subscribe",
        json!({"topics": ["job", "ops", "lockdown", "alert", "audit"]}),
    );
    assert_eq!(events.recv()["params"]["topic"], "subscribed");
    let mut c = Client::connect(d.socket(), "audit-test").await.unwrap();
    let params: Map<String, Value> = json!({ "token": SECRET }).as_object().unwrap().clone();
    let id = c.start("login", &params, None).await.unwrap().job_id;
    let r = c.wait(id.as_str(), 30_000).await.unwrap();
    assert_eq!(r.state, JobState::Succeeded);
    // Until the job's end has been published: nothing on the way carries the secret.
    loop {
        let frame = events.recv().to_string();
        assert!(
            !frame.contains(SECRET),
            "an event carried the secret: {frame}"
        );
        if frame.contains("\"succeeded\"") && frame.contains("\"topic\":\"job\"") {
            break;
        }
    }
    let log = std::fs::read_to_string(dir.path().join(format!("state/jobs/{}.log", id.as_str())))
        .unwrap();
    assert!(log.contains("signed in with <redacted>"), "{log}");
    let v = c.audit_verify().await.unwrap();
    assert!(v.intact, "{v:?}");
    assert_eq!(v.records, v.head_seq);
    drop(c);
    d.stop();

    let text = std::fs::read_to_string(dir.path().join("state/audit/audit.log")).unwrap();
    assert!(
        !text.contains(SECRET),
        "a secret reached the audit log:\n{text}"
    );
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
    assert!(
        v.head_seq > lines.len() as u64,
        "the restarted daemon went on writing"
    );
}

/// A daemon with an admin socket, a read-only one, and a mutating action with a secret.
fn two_socket_daemon(dir: &Path) -> DaemonThread {
    let text = warden_testkit::config(
        r#"[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[limits]
requests_per_second = 100000
burst = 100000
uid_requests_per_second = 100000
uid_burst = 100000
[[listener]]
path = "{dir}/run/admin.sock"
mode = "0600"
[[listener]]
path = "{dir}/run/ro.sock"
mode = "0600"
max_tier = "read_only"
[[action]]
name = "apply"
argv = ["/bin/sh", "-c", "exit 0", "apply", "{n}", "{token}"]
tier = "operator"
mutating = true
[action.params.n]
type = "int"
min = 0
max = 1000000
[action.params.token]
type = "string"
secret = true
"#,
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

/// Pins: a mutating request is recorded (decided, params redacted) before it runs and again with
/// its outcome; a denial is recorded under the correlation id its caller got; a flood of denials
/// from one uid is summed up after 100 records; the chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_requests_and_denials_are_recorded() {
    if !warden_testkit::root_or_skip("mutating_requests_and_denials_are_recorded") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = two_socket_daemon(dir.path());
    let admin_sock = dir.path().join("run/admin.sock");
    let ro_sock = dir.path().join("run/ro.sock");
    let mut admin = Client::connect(&admin_sock, "audit-admin").await.unwrap();
    let params: Map<String, Value> = json!({"n": 7, "token": SECRET})
        .as_object()
        .unwrap()
        .clone();
    let id = admin.start("apply", &params, None).await.unwrap().job_id;
    admin.wait(id.as_str(), 30_000).await.unwrap();
    admin.cancel(id.as_str()).await.unwrap();

    // Root on the read-only socket is a viewer: 250 refused starts and one refused verify.
    let mut viewer = Client::connect(&ro_sock, "audit-viewer").await.unwrap();
    let first = viewer.start("apply", &params, None).await.unwrap_err();
    let first_cid = match &first {
        warden_client::ClientError::Rpc(e) => e.data.correlation_id.clone(),
        other => panic!("{other}"),
    };
    for _ in 0..249 {
        viewer.start("apply", &params, None).await.unwrap_err();
    }
    viewer.audit_verify().await.unwrap_err();

    // An admin reads them back, narrowed.
    let q =
        |p: Value| serde_json::from_value::<warden_proto::request::AuditQueryParams>(p).unwrap();
    let denials = admin
        .audit_query(&q(json!({"decision": "deny", "limit": 5})))
        .await
        .unwrap();
    assert_eq!(denials.records.len(), 5);
    assert!(denials.records.iter().all(|r| r["event"] == "denied"));
    let of_job = admin
        .audit_query(&q(json!({"job_id": id.as_str()})))
        .await
        .unwrap();
    let events: Vec<&str> = of_job
        .records
        .iter()
        .map(|r| r["event"].as_str().unwrap())
        .collect();
    assert!(
        events.contains(&"request.outcome") && events.contains(&"job"),
        "{events:?}"
    );
    let err = viewer.audit_query(&q(json!({}))).await.unwrap_err();
    assert_eq!(err.kind(), Some(warden_proto::ErrorKind::Forbidden));
    drop((admin, viewer));
    d.stop();

    let text = std::fs::read_to_string(dir.path().join("state/audit/audit.log")).unwrap();
    assert!(!text.contains(SECRET), "a secret reached the audit log");
    let all = records(dir.path());
    let of = |event: &str| -> Vec<&Value> { all.iter().filter(|r| r["event"] == event).collect() };
    let request = of("request");
    let start = request.iter().find(|r| r["method"] == "job.start").unwrap();
    assert_eq!(start["decision"], "allow");
    assert_eq!(start["params"]["n"], 7);
    assert_eq!(start["params"]["token"], "<redacted>");
    assert_eq!(start["peer"]["client"], "audit-admin");
    let outcome = of("request.outcome");
    let started = outcome.iter().find(|r| r["method"] == "job.start").unwrap();
    assert_eq!(
        (started["outcome"].as_str(), started["job_id"].as_str()),
        (Some("ok"), Some(id.as_str()))
    );
    assert!(
        start["seq"].as_u64() < started["seq"].as_u64(),
        "decided before it ran"
    );
    let cancel = request
        .iter()
        .find(|r| r["method"] == "job.cancel")
        .unwrap();
    assert_eq!(cancel["job_id"], id.as_str());

    let denied = of("denied");
    assert_eq!(denied.len(), 100, "one uid's denial records stop at 100");
    assert_eq!(denied[0]["correlation_id"], first_cid.as_str());
    // An action above the caller's tier is answered as undeclared, and recorded as refused.
    assert_eq!(denied[0]["outcome"], "not_found");
    assert_eq!(denied[0]["action"], "apply");
    let summary = of("denied.summary");
    assert_eq!(summary.len(), 1);
    let why = summary[0]["reason"].as_str().unwrap();
    assert!(why.starts_with("152 more denials of uid 0"), "{why}");

    // The chain is whole, as a restarted daemon sees it.
    let d = two_socket_daemon(dir.path());
    let mut admin = Client::connect(&admin_sock, "audit-admin").await.unwrap();
    assert!(admin.audit_verify().await.unwrap().intact);
    drop(admin);
    d.stop();
}

/// Pins: with 64 clients sending mutating requests, a daemon killed with SIGKILL mid-flood has on
/// disk the record of every request it answered with success, and the chain verifies after a
/// restart (a record cut off mid-write was never answered, and is dropped).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_answered_mutating_request_is_on_disk_after_a_kill() {
    if !warden_testkit::root_or_skip("every_answered_mutating_request_is_on_disk_after_a_kill") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = dir.path().display().to_string();
    let config = dir.path().join("warden.toml");
    std::fs::write(
        &config,
        format!(
            r#"[daemon]
runtime_dir = "{d}/run"
state_dir = "{d}/state"
[limits]
max_connections = 200
max_connections_per_uid = 200
requests_per_second = 100000
burst = 100000
uid_requests_per_second = 100000
uid_burst = 100000
[jobs]
max_active_per_uid = 100000
[[listener]]
path = "{d}/run/w.sock"
mode = "0600"
[[action]]
name = "mark"
argv = ["/bin/true", "{{n}}"]
tier = "read_only"
mutating = true
[action.params.n]
type = "int"
min = 0
max = 100000000
"#
        ),
    )
    .unwrap();
    let spawn = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_wardend"))
            .arg("--config")
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap()
    };
    let socket = dir.path().join("run/w.sock");
    let connect = |name: &'static str| {
        let socket = socket.clone();
        async move {
            for _ in 0..500 {
                if let Ok(c) = Client::connect(&socket, name).await {
                    return c;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            panic!("wardend did not come up");
        }
    };
    let mut daemon = spawn();
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<i64>::new()));
    let clients: Vec<_> = (0..64i64)
        .map(|i| {
            let acked = acked.clone();
            let connect = connect("flood");
            tokio::spawn(async move {
                let mut c = connect.await;
                for k in 0.. {
                    let n = i * 100_000 + k;
                    let p = json!({ "n": n }).as_object().unwrap().clone();
                    match c.start("mark", &p, None).await {
                        Ok(_) => acked.lock().unwrap().push(n),
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    // Let the flood build up, then kill the daemon in the middle of it.
    while acked.lock().unwrap().len() < 500 {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    daemon.kill().unwrap();
    daemon.wait().unwrap();
    for c in clients {
        c.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();

    let text = std::fs::read_to_string(dir.path().join("state/audit/audit.log")).unwrap();
    let on_disk: std::collections::HashSet<i64> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["event"] == "request")
        .filter_map(|r| r["params"]["n"].as_i64())
        .collect();
    let lost: Vec<_> = acked.iter().filter(|n| !on_disk.contains(n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} answered requests have no record: {lost:?}",
        lost.len(),
        acked.len()
    );

    let mut daemon = spawn();
    let mut c = connect("verify").await;
    let v = c.audit_verify().await.unwrap();
    assert!(v.intact, "{v:?}");
    drop(c);
    // A clean stop this time, so the daemon removes what it made (its cgroup directory).
    let term = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(daemon.id().to_string())
        .status()
        .unwrap();
    assert!(term.success());
    assert!(daemon.wait().unwrap().success());
}

/// A daemon whose audit log closes segments at 4 KiB and keeps `keep` of them.
fn small_segment_daemon(dir: &Path, keep: u32) -> DaemonThread {
    let text = warden_testkit::config(
        &format!(
            r#"[daemon]
runtime_dir = "{{dir}}/run"
state_dir = "{{dir}}/state"
[limits]
requests_per_second = 100000
burst = 100000
uid_requests_per_second = 100000
uid_burst = 100000
[audit]
segment_bytes = 4096
keep_segments = {keep}
[[listener]]
path = "{{dir}}/run/w.sock"
mode = "0600"
[ops]
storage = true
"#
        ),
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

/// `n` recorded requests (`ops.set`, a request and an outcome record each), answered in turn.
fn record_requests(c: &mut warden_testkit::raw::RawClient, n: u64) {
    for i in 0..n {
        let answer = c.call(
            10 + i,
            "ops.set",
            json!({"name": "storage", "enabled": true, "reason": format!("test {i}")}),
        );
        assert!(answer.get("result").is_some(), "{answer}");
    }
}

/// Pins: `audit.query` refuses `limit: 0` (it answered every record), answers at most 1000 at
/// once, and paging with `after_seq` from 0 returns every record exactly once, across segments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_pages_through_every_record_once_and_refuses_limit_zero() {
    if !warden_testkit::root_or_skip("query_pages_through_every_record_once_and_refuses_limit_zero")
    {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = small_segment_daemon(dir.path(), 1_000_000);
    let mut c = warden_testkit::raw::RawClient::hello(d.socket());
    record_requests(&mut c, 600);
    let zero = c.call(2, "audit.query", json!({"limit": 0}));
    // (Today's answer to it held every record: print only its start.)
    let shown: String = zero.to_string().chars().take(300).collect();
    assert_eq!(
        warden_testkit::raw::error_kind(&zero),
        Some("bad_request"),
        "{shown}"
    );
    let all = c.call(3, "audit.query", json!({"limit": 5000}));
    let head = all["result"]["head_seq"].as_u64().unwrap();
    assert!(head > 1200, "{head}");
    assert_eq!(all["result"]["records"].as_array().unwrap().len(), 1000);
    assert_eq!(all["result"]["more"], true);
    let mut seen = Vec::new();
    let mut after = 0;
    for id in 100.. {
        let page = c.call(id, "audit.query", json!({"after_seq": after, "limit": 250}));
        let records = page["result"]["records"].as_array().unwrap();
        assert!(records.len() <= 250);
        seen.extend(records.iter().map(|r| r["seq"].as_u64().unwrap()));
        if page["result"]["more"] != true {
            break;
        }
        after = *seen.last().unwrap();
    }
    // Records written while paging (none here: this client is the only one) would come last.
    assert_eq!(seen, (1..=head).collect::<Vec<_>>());
    drop(c);
    d.stop();
}

/// Pins: with `[audit] keep_segments`, a running daemon removes old segments, records the cut
/// (`audit.retention`, its segments, seq range and hash) and `audit.verify` still answers
/// intact from the anchor; a record changed in a kept segment is still found after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_removes_old_segments_and_verify_still_proves_the_rest() {
    if !warden_testkit::root_or_skip(
        "retention_removes_old_segments_and_verify_still_proves_the_rest",
    ) {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let audit_dir = dir.path().join("state/audit");
    let d = small_segment_daemon(dir.path(), 2);
    let mut c = warden_testkit::raw::RawClient::hello(d.socket());
    record_requests(&mut c, 300);
    let v = c.call(2, "audit.verify", json!({}));
    assert_eq!(v["result"]["intact"], true, "{v}");
    let anchor = v["result"]["anchor_seq"].as_u64().expect("an anchor");
    assert_eq!(
        v["result"]["records"].as_u64().unwrap(),
        v["result"]["head_seq"].as_u64().unwrap() - anchor
    );
    let cuts = c.call(3, "audit.query", json!({"limit": 1000}));
    let cut = cuts["result"]["records"]
        .as_array()
        .unwrap()
        .iter()
        .rfind(|r| r["event"] == "audit.retention")
        .cloned()
        .expect("a retention record");
    assert!(
        cut["params"]["segments"]
            .as_array()
            .is_some_and(|s| !s.is_empty()),
        "{cut}"
    );
    assert!(cut["params"]["last_seq"].as_u64().unwrap() <= anchor);
    drop(c);
    d.stop();

    let mut segments: Vec<_> = std::fs::read_dir(&audit_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "audit.log")
        .collect();
    segments.sort();
    assert!(segments.len() <= 2, "{segments:?}");
    let oldest = &segments[0];
    let text = std::fs::read_to_string(oldest).unwrap();
    std::fs::write(oldest, text.replacen("\"request\"", "\"requesT\"", 1)).unwrap();
    let d = small_segment_daemon(dir.path(), 2);
    let mut c = warden_testkit::raw::RawClient::hello(d.socket());
    let v = c.call(2, "audit.verify", json!({}));
    assert_eq!(v["result"]["intact"], false, "{v}");
    assert_eq!(v["result"]["problem"], "modified", "{v}");
    drop(c);
    d.stop();
}
