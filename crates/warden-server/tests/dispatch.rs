//! Remote dispatch through real sockets, on SQLite and on PostgreSQL: operators dispatch over
//! the HTTP API, the server fans out over the agent link to lean agent stand-ins that answer
//! like wardend would (Accepted, Progress, numbered Output chunks sent again until stored,
//! Ended sent again until its end is stored), and the records, brakes, cancel, live stream and
//! credential planes are checked from the outside.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::agent::{connect, next_news, say, try_connect_at, until};
use common::{Response, TestServer, backends, body, machine_id};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use warden_server::Config;
use warden_server::auth::{Operator, Role};
use warden_server::dispatch::DispatchConfig;
use warden_server::link::LinkConfig;

const WAIT: Duration = Duration::from_secs(10);

fn quick(c: &mut Config) {
    c.link = LinkConfig {
        heartbeat: Duration::from_millis(500),
        dead_after: Duration::from_secs(3),
        poll: Duration::from_millis(100),
        restart_spread: Duration::from_millis(200),
        goodbye_timeout: Duration::from_secs(1),
        ..LinkConfig::default()
    };
    c.dispatch = DispatchConfig {
        tick: Duration::from_millis(50),
        offline_wait: Duration::from_secs(2),
        server_name: "srv-test".into(),
        resend_after: Duration::from_secs(60),
    };
}

/// A server with site `hq`: the server and the site's enrollment key.
async fn server(url: Option<&str>) -> (TestServer, String) {
    let s = TestServer::start_with(url, quick).await;
    s.db().add_site("hq", "Headquarters", "Acme").await.unwrap();
    let key = s.db().rotate_key("hq").await.unwrap().key;
    (s, key)
}

/// Enrolls a machine: (machine id, machine key).
async fn enrolled(s: &TestServer, key: &str, host: &str) -> (String, String) {
    let m = machine_id();
    let r = s.enroll(&body("hq", key, &m, host)).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    (m, r.json["machine_key"].as_str().unwrap().to_owned())
}

/// An API token of a new operator with `role`.
async fn token(s: &TestServer, name: &str, role: Role) -> String {
    let info = s
        .db()
        .add_operator(name, role, "a long enough password 1")
        .await
        .unwrap();
    let op = Operator {
        id: info.id,
        name: info.name,
        role,
        session: None,
        source: String::new(),
    };
    s.db()
        .create_token(&op, "t", role, 3_600_000)
        .await
        .unwrap()
        .0
}

async fn call(
    s: &TestServer,
    token: &str,
    method: &str,
    path: &str,
    b: Option<&Value>,
) -> Response {
    s.request(
        method,
        path,
        b,
        &[("Authorization", &format!("Bearer {token}"))],
    )
    .await
}

/// How a stand-in host answers a dispatch.
#[derive(Debug, Clone)]
struct Behavior {
    /// wardend refuses it with this kind.
    refuse: Option<String>,
    /// Output chunks the job writes.
    chunks: Vec<String>,
    /// How long the job runs (`None`: until cancelled).
    hold: Option<Duration>,
    /// Its end state.
    outcome: String,
}

impl Behavior {
    fn ok(chunks: &[&str], hold_ms: u64) -> Behavior {
        Behavior {
            refuse: None,
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
            hold: Some(Duration::from_millis(hold_ms)),
            outcome: "succeeded".into(),
        }
    }

    fn failing(hold_ms: u64) -> Behavior {
        Behavior {
            outcome: "failed".into(),
            ..Behavior::ok(&["boom\n"], hold_ms)
        }
    }

    fn until_cancelled() -> Behavior {
        Behavior {
            hold: None,
            ..Behavior::ok(&["working\n"], 0)
        }
    }
}

/// What the stand-ins saw, across all of them.
#[derive(Default)]
struct Seen {
    running: AtomicUsize,
    max_running: AtomicUsize,
    /// (hostname, the Dispatch message) in arrival order.
    dispatches: Mutex<Vec<(String, Value)>>,
    cancels: Mutex<Vec<String>>,
}

/// A job a stand-in runs.
struct Job {
    dispatch_id: String,
    ends_at: Option<Instant>,
    chunks: u64,
}

/// A lean agent: links (again after any close, to wherever `addr` points now), reports its
/// actions, runs what it is dispatched like wardend would, and keeps every Output and Ended
/// until the server says it stored them, sending them again on each new link.
fn stand_in(
    addr: Arc<Mutex<SocketAddr>>,
    key: String,
    hostname: &str,
    actions: Value,
    b: Behavior,
    seen: Arc<Seen>,
) -> tokio::task::JoinHandle<()> {
    let hostname = hostname.to_owned();
    tokio::spawn(async move {
        let mut jobs: HashMap<String, Job> = HashMap::new();
        // Unacknowledged reports, in order: (dispatch id, seq or None for Ended, message).
        let mut spool: Vec<(String, Option<u64>, Value)> = Vec::new();
        loop {
            let at = *addr.lock().unwrap();
            let Some(mut ws) = try_connect_at(at, &key).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            if until(&mut ws, "welcome", WAIT).await.is_none() {
                continue;
            }
            say(&mut ws, json!({"type": "actions", "actions": actions})).await;
            for (_, _, m) in &spool {
                say(&mut ws, m.clone()).await;
            }
            loop {
                let next_end = jobs.values().filter_map(|j| j.ends_at).min();
                let sleep = match next_end {
                    Some(t) => tokio::time::sleep_until(t.into()),
                    None => tokio::time::sleep(Duration::from_secs(3600)),
                };
                tokio::select! {
                    m = ws.next() => {
                        let m: Value = match m {
                            Some(Ok(Message::Text(t))) => serde_json::from_str(&t).unwrap(),
                            Some(Ok(_)) => continue,
                            _ => break,
                        };
                        let id = m["dispatch_id"].as_str().unwrap_or("").to_owned();
                        match m["type"].as_str().unwrap() {
                            "dispatch" => {
                                seen.dispatches.lock().unwrap().push((hostname.clone(), m.clone()));
                                if let Some(kind) = &b.refuse {
                                    say(&mut ws, json!({"type": "refused", "dispatch_id": id,
                                        "kind": kind, "message": "refused by policy"})).await;
                                    continue;
                                }
                                let job_id = format!("job-{hostname}");
                                say(&mut ws, json!({"type": "accepted", "dispatch_id": id,
                                    "job_id": job_id})).await;
                                if jobs.contains_key(&id) {
                                    continue;
                                }
                                let n = seen.running.fetch_add(1, Ordering::SeqCst) + 1;
                                seen.max_running.fetch_max(n, Ordering::SeqCst);
                                say(&mut ws, json!({"type": "progress", "dispatch_id": id,
                                    "state": "running", "percent": 0})).await;
                                let mut offset = 0u64;
                                for (i, c) in b.chunks.iter().enumerate() {
                                    let seq = i as u64 + 1;
                                    let out = json!({"type": "output", "dispatch_id": id,
                                        "seq": seq, "offset": offset,
                                        "data": format!("{hostname}: {c}")});
                                    offset += c.len() as u64;
                                    spool.push((id.clone(), Some(seq), out.clone()));
                                    say(&mut ws, out).await;
                                }
                                jobs.insert(id.clone(), Job {
                                    dispatch_id: id,
                                    ends_at: b.hold.map(|h| Instant::now() + h),
                                    chunks: b.chunks.len() as u64,
                                });
                            }
                            "cancel" => {
                                seen.cancels.lock().unwrap().push(hostname.clone());
                                if let Some(j) = jobs.remove(&id) {
                                    seen.running.fetch_sub(1, Ordering::SeqCst);
                                    let end = json!({"type": "ended", "dispatch_id": id,
                                        "state": "cancelled", "last_seq": j.chunks});
                                    spool.push((id, None, end.clone()));
                                    say(&mut ws, end).await;
                                }
                            }
                            "output_stored" => {
                                let upto = m["seq"].as_u64().unwrap();
                                spool.retain(|(d, s, _)| !(d == &id && s.is_some_and(|s| s <= upto)));
                            }
                            "end_stored" => spool.retain(|(d, s, _)| !(d == &id && s.is_none())),
                            _ => {}
                        }
                    }
                    () = sleep => {
                        let now = Instant::now();
                        let due: Vec<String> = jobs
                            .values()
                            .filter(|j| j.ends_at.is_some_and(|t| t <= now))
                            .map(|j| j.dispatch_id.clone())
                            .collect();
                        for id in due {
                            let j = jobs.remove(&id).unwrap();
                            seen.running.fetch_sub(1, Ordering::SeqCst);
                            let end = json!({"type": "ended", "dispatch_id": id,
                                "state": b.outcome,
                                "exit_code": if b.outcome == "succeeded" { 0 } else { 1 },
                                "result": {"host": hostname}, "last_seq": j.chunks});
                            spool.push((id, None, end.clone()));
                            say(&mut ws, end).await;
                        }
                    }
                }
            }
        }
    })
}

fn actions(names: &[&str]) -> Value {
    Value::Array(
        names
            .iter()
            .map(|n| {
                json!({"name": n, "description": "d", "tier": "operator",
                    "params": {"service": {"type": "string"}, "password": {"type": "string", "secret": true}}})
            })
            .collect(),
    )
}

/// A fleet of linked stand-ins.
struct Fleet {
    addr: Arc<Mutex<SocketAddr>>,
    seen: Arc<Seen>,
    /// (machine id, hostname)
    hosts: Vec<(String, String)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

async fn fleet(s: &TestServer, key: &str, behaviors: Vec<Behavior>) -> Fleet {
    let addr = Arc::new(Mutex::new(s.running.addr));
    let seen = Arc::new(Seen::default());
    let mut hosts = Vec::new();
    let mut tasks = Vec::new();
    for (i, b) in behaviors.into_iter().enumerate() {
        let name = format!("h{i}");
        let (m, mk) = enrolled(s, key, &name).await;
        tasks.push(stand_in(
            Arc::clone(&addr),
            mk,
            &name,
            actions(&["restart-service", "a"]),
            b,
            Arc::clone(&seen),
        ));
        hosts.push((m, name));
    }
    // Linked, with their actions reported.
    let deadline = Instant::now() + WAIT;
    for (m, _) in &hosts {
        loop {
            let (a, _) = s.db().machine_actions(m).await.unwrap();
            if a.is_some() {
                break;
            }
            assert!(Instant::now() < deadline, "{m} never reported its actions");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Fleet {
        addr,
        seen,
        hosts,
        tasks,
    }
}

fn ids(f: &Fleet) -> Vec<String> {
    f.hosts.iter().map(|(m, _)| m.clone()).collect()
}

/// Waits until the dispatch is no longer running; its view.
async fn ended(s: &TestServer, tok: &str, id: &str) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let r = call(s, tok, "GET", &format!("/v1/dispatches/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        if r.json["dispatch"]["state"] != "running" {
            return r.json;
        }
        assert!(Instant::now() < deadline, "still running: {}", r.raw);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn dispatch(s: &TestServer, tok: &str, b: Value) -> Response {
    call(s, tok, "POST", "/v1/dispatches", Some(&b)).await
}

fn host<'a>(v: &'a Value, machine_id: &str) -> &'a Value {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["machine_id"] == machine_id)
        .unwrap()
}

async fn output(s: &TestServer, tok: &str, id: &str, m: &str) -> Vec<(i64, String)> {
    let r = call(
        s,
        tok,
        "GET",
        &format!("/v1/dispatches/{id}/hosts/{m}/output?after=0"),
        None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.raw);
    r.json["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["seq"].as_i64().unwrap(),
                c["data"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Everything the server logs at any level, from here on (one subscriber for the binary).
fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    Arc::clone(LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = Arc::clone(&buf);
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warden_server=trace"))
            .with_writer(move || Capture(Arc::clone(&writer)))
            .try_init();
        buf
    }))
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Pins: a dispatch to three linked machines runs on all three (each gets the Dispatch once,
/// with the operator, the server's name and the parameters), each ends `succeeded` with its
/// result and exit code, its output is stored in order exactly once, the summary counts it,
/// a secret parameter is sent to the host but recorded, answered and logged only redacted,
/// and the audit trail has the dispatch and its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_to_three_hosts_runs_on_all_and_stores_output_in_order_once() {
    let logs = captured_logs();
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(
            &s,
            &key,
            vec![Behavior::ok(&["one\n", "two\n", "three\n"], 50); 3],
        )
        .await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "restart-service",
                   "params": {"service": "nginx", "password": "hunter2"}}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(id.starts_with("dsp_") && id.len() == 36, "{id}");
        assert_eq!(r.json["dispatch"]["params"]["password"], "<redacted>");
        assert_eq!(r.json["dispatch"]["params"]["service"], "nginx");
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "done", "{v}");
        assert_eq!(v["summary"]["succeeded"], 3, "{v}");
        for (m, name) in &f.hosts {
            let h = host(&v, m);
            assert_eq!(h["state"], "succeeded");
            assert_eq!(h["exit_code"], 0);
            assert_eq!(h["result"]["host"], name.as_str());
            assert_eq!(h["job_id"], format!("job-{name}"));
            let out = output(&s, &tok, &id, m).await;
            let want: Vec<(i64, String)> = ["one\n", "two\n", "three\n"]
                .iter()
                .enumerate()
                .map(|(i, c)| (i as i64 + 1, format!("{name}: {c}")))
                .collect();
            assert_eq!(out, want);
        }
        let got = f.seen.dispatches.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        for (_, m) in &got {
            assert_eq!(m["operator"], "olga");
            assert_eq!(m["server"], "srv-test");
            assert_eq!(m["action"], "restart-service");
            assert_eq!(
                m["params"]["password"], "hunter2",
                "the host gets the secret"
            );
        }
        let raw = call(&s, &tok, "GET", &format!("/v1/dispatches/{id}"), None)
            .await
            .raw;
        assert!(!raw.contains("hunter2"), "a secret in the record: {raw}");
        let events = s
            .db()
            .events(Some("dispatch.create"), None, 10)
            .await
            .unwrap();
        let created = events
            .iter()
            .find(|e| e.target == format!("dispatch {id}"))
            .unwrap();
        assert_eq!(created.actor, "operator olga");
        assert!(
            created.detail.contains("restart-service") && created.detail.contains(&f.hosts[0].0),
            "{created:?}"
        );
        assert!(!created.detail.contains("hunter2"));
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(logged.contains(&id), "the capture works: {logged}");
        assert!(!logged.contains("hunter2"), "a secret in the log: {logged}");
        let list = call(&s, &tok, "GET", "/v1/dispatches", None).await;
        assert_eq!(list.json["dispatches"][0]["dispatch_id"], id.as_str());
        s.running.stop().await.unwrap();
    }
}

/// Pins: a Dispatch not answered before the link dropped is sent again on the next link, and
/// output chunks sent again after a reconnect (and ones the server already stored) are stored
/// exactly once, in order; the end is acknowledged only once every chunk is stored; another
/// machine's reports about the dispatch change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resends_the_dispatch_and_output_is_stored_exactly_once() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": [m]}, "action": "a"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let d = until(&mut ws, "dispatch", WAIT).await.unwrap();
        assert_eq!(d["dispatch_id"], id.as_str());
        // Dropped before answering: the next link gets it again.
        ws.close(None).await.unwrap();
        drop(ws);
        let mut ws = connect(&s, &mk).await.unwrap();
        let d = until(&mut ws, "dispatch", WAIT).await.unwrap();
        assert_eq!(d["dispatch_id"], id.as_str());
        say(
            &mut ws,
            json!({"type": "accepted", "dispatch_id": id, "job_id": "j1"}),
        )
        .await;
        for seq in 1..=2u64 {
            say(
                &mut ws,
                json!({"type": "output", "dispatch_id": id, "seq": seq,
                "offset": (seq - 1) * 2, "data": format!("{seq}\n")}),
            )
            .await;
        }
        let stored = until(&mut ws, "output_stored", WAIT).await.unwrap();
        assert_eq!(stored["seq"], 1);
        let stored = until(&mut ws, "output_stored", WAIT).await.unwrap();
        assert_eq!(stored["seq"], 2);
        ws.close(None).await.unwrap();
        drop(ws);
        // The agent sends 2 again (say its acknowledgement was lost), 4 before 3, and the end
        // before 3: the end waits for its chunks.
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        say(
            &mut ws,
            json!({"type": "output", "dispatch_id": id, "seq": 2, "offset": 2, "data": "2\n"}),
        )
        .await;
        assert_eq!(
            until(&mut ws, "output_stored", WAIT).await.unwrap()["seq"],
            2
        );
        say(
            &mut ws,
            json!({"type": "output", "dispatch_id": id, "seq": 4, "offset": 6, "data": "4\n"}),
        )
        .await;
        assert_eq!(
            until(&mut ws, "output_stored", WAIT).await.unwrap()["seq"],
            2
        );
        say(
            &mut ws,
            json!({"type": "ended", "dispatch_id": id, "state": "succeeded",
            "exit_code": 0, "last_seq": 4}),
        )
        .await;
        say(
            &mut ws,
            json!({"type": "output", "dispatch_id": id, "seq": 3, "offset": 4, "data": "3\n"}),
        )
        .await;
        let m2 = next_news(&mut ws, WAIT).await.unwrap();
        assert_eq!(
            m2["type"], "output_stored",
            "the end is not acknowledged before its output: {m2}"
        );
        assert_eq!(m2["seq"], 4);
        say(
            &mut ws,
            json!({"type": "ended", "dispatch_id": id, "state": "succeeded",
            "exit_code": 0, "last_seq": 4}),
        )
        .await;
        until(&mut ws, "end_stored", WAIT).await.unwrap();
        // Another machine cannot write into this machine's part: its reports are dropped
        // (and acknowledged, so its agent lets go of them).
        let (_, other_key) = enrolled(&s, &key, "other").await;
        let mut other = connect(&s, &other_key).await.unwrap();
        until(&mut other, "welcome", WAIT).await.unwrap();
        say(
            &mut other,
            json!({"type": "output", "dispatch_id": id, "seq": 5, "offset": 8, "data": "forged\n"}),
        )
        .await;
        assert_eq!(
            until(&mut other, "output_stored", WAIT).await.unwrap()["seq"],
            5
        );
        say(
            &mut other,
            json!({"type": "ended", "dispatch_id": id, "state": "failed", "last_seq": 5}),
        )
        .await;
        until(&mut other, "end_stored", WAIT).await.unwrap();
        let v = ended(&s, &tok, &id).await;
        assert_eq!(host(&v, &m)["state"], "succeeded");
        let out = output(&s, &tok, &id, &m).await;
        let want: Vec<(i64, String)> = (1..=4).map(|i| (i, format!("{i}\n"))).collect();
        assert_eq!(out, want);
        s.running.stop().await.unwrap();
    }
}

/// Pins: machines the target names that are removed, banned, quarantined or unknown are left
/// out and listed with why; a host whose reported actions lack the action is refused early
/// (`not_offered`, never sent), with the refusal in the audit trail; a host that refuses is
/// recorded with wardend's kind and audited; `GET /v1/machines/{id}/actions` shows what a
/// host offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_targets_are_listed_and_refusals_recorded() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let refusing = Behavior {
            refuse: Some("locked_down".into()),
            ..Behavior::ok(&[], 0)
        };
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 0), refusing]).await;
        let (removed, _) = enrolled(&s, &key, "gone").await;
        s.db().remove(&removed).await.unwrap();
        let (banned, _) = enrolled(&s, &key, "bad").await;
        s.db().ban(&banned).await.unwrap();
        let (quarantined, _) = enrolled(&s, &key, "odd").await;
        s.db().quarantine(&quarantined).await.unwrap();
        // A host offering other actions only.
        let (lacking, lk) = enrolled(&s, &key, "lacks").await;
        let lacking_seen = Arc::new(Seen::default());
        let _t = stand_in(
            Arc::clone(&f.addr),
            lk,
            "lacks",
            actions(&["other"]),
            Behavior::ok(&[], 0),
            Arc::clone(&lacking_seen),
        );
        let deadline = Instant::now() + WAIT;
        while s.db().machine_actions(&lacking).await.unwrap().0.is_none() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let a = call(
            &s,
            &tok,
            "GET",
            &format!("/v1/machines/{lacking}/actions"),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.raw);
        assert_eq!(a.json["actions"][0]["name"], "other");
        let unknown = machine_id();
        let mut targets = ids(&f);
        targets.extend([
            removed.clone(),
            banned.clone(),
            quarantined.clone(),
            lacking.clone(),
            unknown.clone(),
        ]);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": targets}, "action": "restart-service"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let excluded: HashMap<String, String> = r.json["dispatch"]["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["machine_id"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(excluded.len(), 4, "{excluded:?}");
        assert_eq!(excluded[&removed], "removed");
        assert_eq!(excluded[&banned], "banned");
        assert_eq!(excluded[&quarantined], "quarantined");
        assert_eq!(excluded[&unknown], "not_found");
        assert_eq!(host(&r.json, &lacking)["state"], "refused");
        assert_eq!(host(&r.json, &lacking)["refusal_kind"], "not_offered");
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["summary"]["total"], 3, "{v}");
        assert_eq!(host(&v, &f.hosts[0].0)["state"], "succeeded");
        let refused = host(&v, &f.hosts[1].0);
        assert_eq!(refused["state"], "refused");
        assert_eq!(refused["refusal_kind"], "locked_down");
        assert!(
            lacking_seen.dispatches.lock().unwrap().is_empty(),
            "refused early, yet sent"
        );
        let events = s
            .db()
            .events(Some("dispatch.refused"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().any(
            |e| e.actor == format!("machine {lacking}") && e.detail.starts_with("not_offered")
        ));
        assert!(
            events
                .iter()
                .any(|e| e.actor == format!("machine {}", f.hosts[1].0)
                    && e.detail.starts_with("locked_down"))
        );
        // A site target leaves the same machines out; a label target picks by label.
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"site": "hq"}, "action": "restart-service"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        assert_eq!(
            r.json["dispatch"]["excluded"].as_array().unwrap().len(),
            3,
            "{}",
            r.raw
        );
        assert_eq!(r.json["summary"]["total"], 3);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"labels": {"tags": "zzz"}}, "action": "a"}),
        )
        .await;
        assert_eq!((r.status, r.kind()), (400, "bad_request"), "{}", r.raw);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"labels": {"tags": "a", "site": "hq"}}, "action": "restart-service"}),
        )
        .await;
        assert_eq!(r.json["summary"]["total"], 3, "{}", r.raw);
        s.running.stop().await.unwrap();
    }
}

/// Pins: no more than `batch` hosts run at once, and every host still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_size_is_respected() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 300); 5]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "batch": 2}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["succeeded"], 5, "{v}");
        assert_eq!(f.seen.max_running.load(Ordering::SeqCst), 2);
        s.running.stop().await.unwrap();
    }
}

/// Pins: once failures pass `max_failures`, no new host starts: the rest end `cancelled` and
/// counted `not_started`, and the dispatch says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_failures_stops_the_rest() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::failing(50); 5]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a",
            "batch": 1, "max_failures": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["failed"], 2, "{v}");
        assert_eq!(v["summary"]["not_started"], 3, "{v}");
        assert_eq!(v["dispatch"]["stopped"], "max_failures passed");
        assert_eq!(f.seen.dispatches.lock().unwrap().len(), 2);
        s.running.stop().await.unwrap();
    }
}

/// Pins: with `canary`, only the canaries start first; one failing stops every other host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_all() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let mut bs = vec![Behavior::failing(200)];
        bs.extend(vec![Behavior::ok(&["x\n"], 0); 3]);
        let f = fleet(&s, &key, bs).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "canary": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["failed"], 1, "{v}");
        assert_eq!(v["summary"]["not_started"], 3, "{v}");
        assert_eq!(v["dispatch"]["stopped"], "canary failed");
        let sent = f.seen.dispatches.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "h0");
        // A succeeding canary lets the rest go.
        let f2 = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 100); 3]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f2)}, "action": "a", "canary": 1}),
        )
        .await;
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["succeeded"], 3, "{v}");
        s.running.stop().await.unwrap();
    }
}

/// Pins: cancel ends hosts not started at once (`not_started`), sends Cancel to the running
/// ones and records the end they report; the dispatch ends `cancelled`, a second cancel is a
/// conflict, and the cancel is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sends_cancel_and_records_what_the_host_reports() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::until_cancelled(); 4]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "batch": 2}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + WAIT;
        while f.seen.running.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = call(
            &s,
            &tok,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(c.status, 200, "{}", c.raw);
        assert_eq!(c.json["not_started"], 2);
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "cancelled", "{v}");
        assert_eq!(v["summary"]["cancelled"], 2, "{v}");
        assert_eq!(v["summary"]["not_started"], 2, "{v}");
        assert_eq!(f.seen.cancels.lock().unwrap().len(), 2);
        let again = call(
            &s,
            &tok,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!((again.status, again.kind()), (409, "conflict"));
        let events = s
            .db()
            .events(Some("dispatch.cancel"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        s.running.stop().await.unwrap();
    }
}

/// Pins: above 100 targets a dispatch needs `confirm: true`; with it, it is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_is_required_above_100_targets() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let mut targets = Vec::new();
        for i in 0..101 {
            targets.push(enrolled(&s, &key, &format!("m{i}")).await.0);
        }
        let b = json!({"target": {"machines": targets[..100]}, "action": "a"});
        let r = dispatch(&s, &tok, b).await;
        assert_eq!(r.status, 201, "100 need no confirmation: {}", r.raw);
        let b = json!({"target": {"machines": targets}, "action": "a"});
        let r = dispatch(&s, &tok, b).await;
        assert_eq!((r.status, r.kind()), (400, "bad_request"), "{}", r.raw);
        assert!(r.raw.contains("confirm"), "{}", r.raw);
        let b = json!({"target": {"machines": targets}, "action": "a", "confirm": true});
        let r = dispatch(&s, &tok, b).await;
        assert_eq!(r.status, 201, "{}", r.raw);
        assert_eq!(r.json["summary"]["total"], 101);
        s.running.stop().await.unwrap();
    }
}

/// Pins: a machine key cannot create a dispatch (401), a viewer cannot (403) though it may
/// read, no credential gets in without one, and an operator token cannot open a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_planes_hold() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let op = token(&s, "olga", Role::Operator).await;
        let viewer = token(&s, "vera", Role::Viewer).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let b = json!({"target": {"machines": [m]}, "action": "a"});
        let r = dispatch(&s, &mk, b.clone()).await;
        assert_eq!((r.status, r.kind()), (401, "unauthorized"), "{}", r.raw);
        let r = s.request("POST", "/v1/dispatches", Some(&b), &[]).await;
        assert_eq!(r.status, 401);
        let r = dispatch(&s, &viewer, b.clone()).await;
        assert_eq!((r.status, r.kind()), (403, "forbidden"), "{}", r.raw);
        let r = dispatch(&s, &op, b).await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = call(&s, &viewer, "GET", &format!("/v1/dispatches/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let r = call(
            &s,
            &viewer,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(r.status, 403);
        let r = call(&s, &mk, "GET", &format!("/v1/dispatches/{id}"), None).await;
        assert_eq!(r.status, 401);
        let r = call(&s, &mk, "GET", &format!("/v1/machines/{m}/actions"), None).await;
        assert_eq!(r.status, 401);
        let (status, kind, _) = connect(&s, &op).await.err().unwrap();
        assert_eq!((status, kind.as_str()), (401, "unauthorized"));
        s.running.stop().await.unwrap();
    }
}

/// Reads a server-sent event stream until `event: end` (or `within`): the (event, data) pairs.
async fn read_stream(
    addr: SocketAddr,
    path: &str,
    tok: &str,
    within: Duration,
) -> Vec<(String, Value)> {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e}"),
        }
        if String::from_utf8_lossy(&raw).contains("event: end\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    let mut out = Vec::new();
    for line_pair in text.split("\nevent: ").skip(1) {
        let (event, rest) = line_pair.split_once('\n').unwrap();
        let data = rest.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        out.push((event.to_owned(), serde_json::from_str(data).unwrap()));
    }
    out
}

/// Pins: the live stream delivers each host's state changes and its output chunks (in order,
/// once, prefixed with the hostname), and ends with the summary after the last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_states_and_output() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "vera", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["a\n", "b\n"], 400); 2]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a"}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let events = read_stream(
            s.running.addr,
            &format!("/v1/dispatches/{id}/events"),
            &tok,
            WAIT,
        )
        .await;
        let last = events.last().unwrap();
        assert_eq!(last.0, "end", "{events:?}");
        assert_eq!(last.1["summary"]["succeeded"], 2);
        for (m, name) in &f.hosts {
            let states: Vec<&str> = events
                .iter()
                .filter(|(e, d)| e == "host" && d["machine_id"] == m.as_str())
                .map(|(_, d)| d["state"].as_str().unwrap())
                .collect();
            assert_eq!(states.last(), Some(&"succeeded"), "{states:?}");
            assert!(states.contains(&"running"), "{states:?}");
            let out: Vec<(i64, String)> = events
                .iter()
                .filter(|(e, d)| e == "output" && d["machine_id"] == m.as_str())
                .map(|(_, d)| {
                    assert_eq!(d["hostname"], name.as_str());
                    (
                        d["seq"].as_i64().unwrap(),
                        d["data"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(
                out,
                vec![(1, format!("{name}: a\n")), (2, format!("{name}: b\n"))]
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: a server stopped mid-dispatch and started again on the same database goes on with it:
/// the host running across the restart reports its end (and its output) on its new link, the
/// hosts not started yet start, and the dispatch ends with every host succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_dispatch_resumes_it() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n", "y\n"], 800); 3]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "batch": 1}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + WAIT;
        while f.seen.running.load(Ordering::SeqCst) < 1 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let TestServer {
            running,
            dir,
            url: db_url,
        } = s;
        running.stop().await.unwrap();
        let mut config = Config::new(dir.path().join("data"));
        config.database_url = db_url.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        quick(&mut config);
        let running = warden_server::start(&config).await.unwrap();
        *f.addr.lock().unwrap() = running.addr;
        let s = TestServer {
            running,
            dir,
            url: db_url,
        };
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["summary"]["succeeded"], 3, "{v}");
        assert!(f.seen.max_running.load(Ordering::SeqCst) <= 1);
        for (m, name) in &f.hosts {
            let out = output(&s, &tok, &id, m).await;
            assert_eq!(
                out,
                vec![(1, format!("{name}: x\n")), (2, format!("{name}: y\n"))]
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// Runs the real `warden-server` binary with `args`: (exit code, stdout, stderr).
async fn cli(args: Vec<String>) -> (i32, String, String) {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_warden-server"))
            .args(&args)
            .env_remove("WARDEN_SERVER_TOKEN")
            .env("WARDEN_SERVER_LOG", "error")
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    })
    .await
    .unwrap()
}

/// Pins: `warden-server dispatch run … --watch` dispatches through the HTTP API, prints each
/// host's states and its output prefixed with the host name, a summary, and exits 0 when
/// every host succeeded and 2 when one did not; `show`, `output` and `list` read it back
/// (`--json` too); a machine key is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_watches_and_reads_dispatches() {
    let (s, key) = server(None).await;
    let tok = token(&s, "olga", Role::Operator).await;
    let f = fleet(&s, &key, vec![Behavior::ok(&["one\n", "two\n"], 100); 2]).await;
    let url = format!("http://{}", s.running.addr);
    let base = |rest: &[&str]| {
        let mut v: Vec<String> = ["dispatch", "--server", &url, "--token", &tok]
            .iter()
            .map(|x| (*x).to_owned())
            .collect();
        v.extend(rest.iter().map(|x| (*x).to_owned()));
        v
    };
    let (m0, m1) = (f.hosts[0].0.as_str(), f.hosts[1].0.as_str());
    let (code, out, err) = cli(base(&[
        "run",
        "--machine",
        m0,
        "--machine",
        m1,
        "restart-service",
        "service=nginx",
        "--watch",
    ]))
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "h0| h0: one",
        "h0| h0: two",
        "h1| h1: one",
        "h1| h1: two",
        "[h0] succeeded",
        "[h1] succeeded",
    ] {
        assert!(out.contains(line), "{line} missing from {out}");
    }
    assert!(out.contains("2 hosts: succeeded 2"), "{out}");
    let id = out
        .split_whitespace()
        .find(|w| w.starts_with("dsp_"))
        .unwrap()
        .trim_end_matches(':')
        .to_owned();
    let (code, out, _) = cli(base(&["output", &id, m1])).await;
    assert_eq!((code, out.as_str()), (0, "h1: one\nh1: two\n"));
    let (code, out, _) = cli([vec!["--json".to_owned()], base(&["show", &id])].concat()).await;
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["summary"]["succeeded"], 2);
    let (_, out, _) = cli(base(&["list"])).await;
    assert!(out.contains(&id), "{out}");
    // A host that fails: exit status 2.
    let bad = fleet(&s, &key, vec![Behavior::failing(0)]).await;
    let (code, out, err) = cli(base(&["run", "--machine", &bad.hosts[0].0, "a", "--watch"])).await;
    assert_eq!(code, 2, "{out}\n{err}");
    assert!(out.contains("[h0] failed"), "{out}");
    // A machine key is no operator credential.
    let (_, mk) = enrolled(&s, &key, "x").await;
    let mut args = base(&["list"]);
    args[4] = mk;
    let (code, _, err) = cli(args).await;
    assert_eq!(code, 1);
    assert!(err.contains("unauthorized"), "{err}");
    s.running.stop().await.unwrap();
}

/// Pins: a host not linked when its turn comes is `offline` and takes no batch slot; it gets
/// the dispatch when it links while the dispatch is open, and a host that never links ends
/// `offline` once the offline wait passed, which ends the dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_hosts_run_when_they_link_and_end_offline_after_the_wait() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 100)]).await;
        let (late, late_key) = enrolled(&s, &key, "late").await;
        let (never, _) = enrolled(&s, &key, "never").await;
        let mut targets = ids(&f);
        targets.extend([late.clone(), never.clone()]);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": targets}, "action": "a", "batch": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + WAIT;
        loop {
            let v = call(&s, &tok, "GET", &format!("/v1/dispatches/{id}"), None).await;
            if host(&v.json, &late)["state"] == "offline"
                && host(&v.json, &never)["state"] == "offline"
            {
                break;
            }
            assert!(Instant::now() < deadline, "{}", v.raw);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = Arc::new(Seen::default());
        let _late = stand_in(
            Arc::clone(&f.addr),
            late_key,
            "late",
            actions(&["a"]),
            Behavior::ok(&["late\n"], 0),
            Arc::clone(&seen),
        );
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "done", "{v}");
        assert_eq!(host(&v, &f.hosts[0].0)["state"], "succeeded");
        assert_eq!(host(&v, &late)["state"], "succeeded", "{v}");
        assert_eq!(host(&v, &never)["state"], "offline", "{v}");
        assert_eq!(v["summary"]["offline"], 1);
        assert_eq!(seen.dispatches.lock().unwrap().len(), 1);
        s.running.stop().await.unwrap();
    }
}

/// Pins: a Dispatch left unanswered on a live link is sent again after `resend_after` (a lost
/// message does not leave the host's part waiting forever), and not again once answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_dispatch_is_sent_again_on_a_live_link() {
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            quick(c);
            c.dispatch.resend_after = Duration::from_millis(300);
        })
        .await;
        s.db().add_site("hq", "Headquarters", "Acme").await.unwrap();
        let key = s.db().rotate_key("hq").await.unwrap().key;
        let tok = token(&s, "olga", Role::Operator).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": [m]}, "action": "a"}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let first = Instant::now();
        assert_eq!(
            until(&mut ws, "dispatch", WAIT).await.unwrap()["dispatch_id"],
            id.as_str()
        );
        assert_eq!(
            until(&mut ws, "dispatch", WAIT).await.unwrap()["dispatch_id"],
            id.as_str()
        );
        assert!(
            first.elapsed() >= Duration::from_millis(250),
            "sent again too soon"
        );
        say(
            &mut ws,
            json!({"type": "accepted", "dispatch_id": id, "job_id": "j"}),
        )
        .await;
        // Answered: nothing but heartbeats for a few resend periods.
        let quiet = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < quiet {
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_millis(100), ws.next()).await
            {
                assert!(!t.contains("\"dispatch\""), "sent again once answered: {t}");
            }
        }
        s.running.stop().await.unwrap();
    }
}
