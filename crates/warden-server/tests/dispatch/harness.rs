//! What the dispatch tests share: a server with short timing, enrolled machines, operator
//! tokens, and the lean agent stand-in that answers like wardend.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::common::agent::{say, try_connect_at, until};
use crate::common::{Response, TestServer, body, machine_id};
use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use warden_server::Config;
use warden_server::auth::Role;
use warden_server::dispatch::DispatchConfig;
use warden_server::link::LinkConfig;

pub const WAIT: Duration = Duration::from_secs(10);

pub fn quick(c: &mut Config) {
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
pub async fn server(url: Option<&str>) -> (TestServer, String) {
    let s = TestServer::start_with(url, quick).await;
    s.db().add_site("hq", "Headquarters", "Acme").await.unwrap();
    let key = s.db().rotate_key("hq").await.unwrap().key;
    (s, key)
}

/// Enrolls a machine: (machine id, machine key).
pub async fn enrolled(s: &TestServer, key: &str, host: &str) -> (String, String) {
    let m = machine_id();
    let r = s.enroll(&body("hq", key, &m, host)).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    (m, r.json["machine_key"].as_str().unwrap().to_owned())
}

/// An API token of a new operator with `role`.
pub async fn token(s: &TestServer, name: &str, role: Role) -> String {
    crate::common::api_token(s.db(), name, role).await
}

pub async fn call(
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
pub struct Behavior {
    /// wardend refuses it with this kind.
    pub refuse: Option<String>,
    /// Output chunks the job writes.
    pub chunks: Vec<String>,
    /// How long the job runs (`None`: until cancelled).
    pub hold: Option<Duration>,
    /// Its end state.
    pub outcome: String,
}

impl Behavior {
    pub fn ok(chunks: &[&str], hold_ms: u64) -> Behavior {
        Behavior {
            refuse: None,
            chunks: chunks.iter().map(|c| (*c).to_owned()).collect(),
            hold: Some(Duration::from_millis(hold_ms)),
            outcome: "succeeded".into(),
        }
    }

    pub fn failing(hold_ms: u64) -> Behavior {
        Behavior {
            outcome: "failed".into(),
            ..Behavior::ok(&["boom\n"], hold_ms)
        }
    }

    pub fn until_cancelled() -> Behavior {
        Behavior {
            hold: None,
            ..Behavior::ok(&["working\n"], 0)
        }
    }
}

/// What the stand-ins saw, across all of them.
#[derive(Default)]
pub struct Seen {
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    /// (hostname, the Dispatch message) in arrival order.
    pub dispatches: Mutex<Vec<(String, Value)>>,
    pub cancels: Mutex<Vec<String>>,
}

/// A job a stand-in runs.
pub struct Job {
    dispatch_id: String,
    ends_at: Option<Instant>,
    chunks: u64,
}

/// A lean agent: links (again after any close, to wherever `addr` points now), reports its
/// actions, runs what it is dispatched like wardend would, and keeps every Output and Ended
/// until the server says it stored them, sending them again on each new link.
pub fn stand_in(
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
                // Wakes for the next job's end; with no job running only messages wake it.
                let sleep = tokio::time::sleep_until(next_end.unwrap_or_else(Instant::now).into());
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
                    () = sleep, if next_end.is_some() => {
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

pub fn actions(names: &[&str]) -> Value {
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
pub struct Fleet {
    pub addr: Arc<Mutex<SocketAddr>>,
    pub seen: Arc<Seen>,
    /// (machine id, hostname)
    pub hosts: Vec<(String, String)>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub async fn fleet(s: &TestServer, key: &str, behaviors: Vec<Behavior>) -> Fleet {
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

pub fn ids(f: &Fleet) -> Vec<String> {
    f.hosts.iter().map(|(m, _)| m.clone()).collect()
}

/// Waits until the dispatch is no longer running; its view.
pub async fn ended(s: &TestServer, tok: &str, id: &str) -> Value {
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

pub async fn dispatch(s: &TestServer, tok: &str, b: Value) -> Response {
    call(s, tok, "POST", "/v1/dispatches", Some(&b)).await
}

pub fn host<'a>(v: &'a Value, machine_id: &str) -> &'a Value {
    v["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["machine_id"] == machine_id)
        .unwrap()
}

pub async fn output(s: &TestServer, tok: &str, id: &str, m: &str) -> Vec<(i64, String)> {
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
pub fn captured_logs() -> Arc<Mutex<Vec<u8>>> {
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

pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
