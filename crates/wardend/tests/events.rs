//! `events.subscribe` against a real daemon: what a subscriber sees, what its tier keeps from
//! it, and that one that never reads costs bounded memory and delays no one.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Map, Value, json};
use warden_client::Client;
use warden_proto::messages::DaemonMode;
use warden_testkit::raw::RawClient;
use wardend::{Daemon, DaemonThread, Settings};

fn daemon(dir: &Path) -> DaemonThread {
    let text = warden_testkit::config(
        r#"[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[limits]
max_connections = 200
max_connections_per_uid = 200
requests_per_second = 1000000
burst = 1000000
uid_requests_per_second = 1000000
uid_burst = 1000000
# A subscriber in these tests reads late on purpose.
frame_timeout_ms = 120000
[[listener]]
path = "{dir}/run/admin.sock"
mode = "0600"
[[listener]]
path = "{dir}/run/ro.sock"
mode = "0600"
max_tier = "read_only"
[ops]
storage = true
[[action]]
name = "true"
argv = ["/bin/true"]
tier = "read_only"
mutating = false
"#,
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

/// The next `event` notification's `{topic, event}`, skipping other frames.
fn next_event(c: &mut RawClient) -> Value {
    loop {
        let frame = c.recv();
        if frame["method"] == "event" {
            return frame["params"].clone();
        }
    }
}

/// Pins: a subscriber first hears `subscribed`, then job, ops and audit events as they happen;
/// a read-only caller may not subscribe to the audit trail or alerts; unknown topics are
/// refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_hears_jobs_ops_and_audit_as_they_happen() {
    if !warden_testkit::root_or_skip("a_subscriber_hears_jobs_ops_and_audit_as_they_happen") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let admin_sock = dir.path().join("run/admin.sock");
    let mut sub = RawClient::hello(&admin_sock);
    sub.send(
        2,
        "events.subscribe",
        json!({"topics": ["job", "ops", "audit"]}),
    );
    assert_eq!(next_event(&mut sub)["topic"], "subscribed");

    let mut c = Client::connect(&admin_sock, "events-test").await.unwrap();
    let id = c.start("true", &Map::new(), None).await.unwrap().job_id;
    c.wait(id.as_str(), 30_000).await.unwrap();
    c.set_op("storage", false, "test").await.unwrap();
    let mut seen: Vec<(String, String)> = Vec::new();
    while !seen.iter().any(|(t, _)| t == "ops") {
        let e = next_event(&mut sub);
        let what = match e["topic"].as_str().unwrap() {
            "job" => e["event"]["state"].as_str().unwrap().to_owned(),
            "audit" => e["event"]["event"].as_str().unwrap().to_owned(),
            _ => e["event"]["name"].as_str().unwrap_or("").to_owned(),
        };
        seen.push((e["topic"].as_str().unwrap().to_owned(), what));
    }
    let has = |t: &str, w: &str| seen.iter().any(|(a, b)| a == t && b == w);
    assert!(has("job", "running") && has("job", "succeeded"), "{seen:?}");
    assert!(has("audit", "job") && has("audit", "request"), "{seen:?}");
    assert!(has("ops", "storage"), "{seen:?}");

    let mut viewer = RawClient::hello(&dir.path().join("run/ro.sock"));
    for topics in [json!(["audit"]), json!(["alert"])] {
        let a = viewer.call(3, "events.subscribe", json!({ "topics": topics }));
        assert_eq!(
            warden_testkit::raw::error_kind(&a),
            Some("forbidden"),
            "{a}"
        );
    }
    let a = viewer.call(4, "events.subscribe", json!({"topics": ["weather"]}));
    assert_eq!(
        warden_testkit::raw::error_kind(&a),
        Some("bad_request"),
        "{a}"
    );
    drop((c, sub, viewer));
    d.stop();
}

/// Pins: a subscriber that never reads while 100,000 events are published costs bounded
/// memory, is told how many events it lost once it reads, and other callers are served all
/// along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_reads_costs_bounded_memory() {
    if !warden_testkit::root_or_skip("a_subscriber_that_never_reads_costs_bounded_memory") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let admin_sock = dir.path().join("run/admin.sock");
    let mut c = Client::connect(&admin_sock, "events-test").await.unwrap();
    let id = c.start("true", &Map::new(), None).await.unwrap().job_id;
    c.wait(id.as_str(), 30_000).await.unwrap();
    let mut sleeper = RawClient::hello(&admin_sock);
    sleeper.send(2, "events.subscribe", json!({"topics": ["audit"]}));
    let before = warden_testkit::rss_kib();
    // Each job.cancel (of a finished job: cheap) publishes two audit records.
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (sock, id) = (admin_sock.clone(), id.to_string());
            tokio::spawn(async move {
                let mut c = Client::connect(&sock, "flood").await.unwrap();
                for _ in 0..3200 {
                    c.cancel(&id).await.unwrap();
                }
            })
        })
        .collect();
    let mut other = Client::connect(&admin_sock, "other").await.unwrap();
    for _ in 0..20 {
        // Another caller is answered while the flood runs.
        tokio::time::timeout(Duration::from_secs(5), other.status())
            .await
            .expect("status waited on the flood")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let grew = warden_testkit::rss_kib().saturating_sub(before);
    assert!(grew < 64 * 1024, "memory grew by {grew} KiB");
    // Reading at last: the ring's worth of events, then word of what was lost.
    let mut lagged = None;
    for _ in 0..5000 {
        let frame = sleeper.recv();
        if frame["method"] == "events.lagged" {
            lagged = frame["params"]["dropped"].as_u64();
            break;
        }
    }
    assert!(lagged.is_some_and(|n| n > 1000), "{lagged:?}");
    drop((c, other, sleeper));
    d.stop();
}
