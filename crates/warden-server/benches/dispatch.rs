//! Remote dispatch benchmark, in one run on one machine, against the real `warden-server`
//! binary (SQLite): 1,000 hosts linked through a lean agent stand-in in this process speaking
//! the real link protocol, which answers a Dispatch at once with Accepted, as wardend would.
//!
//! 1. Raw WebSocket round trip on the same links, in the same run: a Ping from each link and
//!    its Pong back (p50/p99), the floor any link message pays.
//! 2. Dispatch to all 1,000: from the operator's `POST /v1/dispatches` to each host holding its
//!    Dispatch and answering Accepted (p50/p99 over the hosts), and until the server has
//!    stored every host `running` (as an operator reading `GET /v1/dispatches/{id}` sees it).
//!
//! 3. Time to first output byte at the operator for a real host: `wardend --dev` and
//!    `warden-agent --dev` (release builds, made by this benchmark with cargo when missing or
//!    stale) enrolled into the same server; `demo-progress` is dispatched to it again and
//!    again, and each run measures from the job's start as wardend recorded it (the job writes
//!    its first line at once) to the operator's live stream (`GET /v1/dispatches/{id}/events`)
//!    delivering that line (p50/p99).
//!
//! Targets: 1,000 hosts accepted in under 1 s at p99; first byte within 500 ms of the host
//! writing it.
//!
//! Run: `cargo bench -p warden-server --bench dispatch`

#![allow(clippy::unwrap_used)]

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/real_host.rs"]
mod real_host;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::ServerProcess;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use warden_server::auth::Role;
use warden_server::store::{Db, now_ms};

const HOSTS: usize = 1_000;
/// Runs of the real host's first-byte measurement.
const REAL_RUNS: usize = 10;

fn key_of(i: usize) -> String {
    format!("wmk_{:064x}", i + 1)
}

/// Site `hq`, `HOSTS` active machines (machine `i` with key [`key_of`]`(i)`) and an operator's
/// API token, straight into the database.
async fn fill(data: &Path) -> String {
    let db = Db::open(data, None).await.unwrap();
    db.add_site("hq", "HQ", "Acme").await.unwrap();
    let site: i64 = sqlx::query_scalar("SELECT id FROM sites WHERE site_code = 'hq'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let now = now_ms();
    let mut tx = db.pool.begin().await.unwrap();
    for i in 0..HOSTS {
        sqlx::query(
            "INSERT INTO machines (id, machine_id, site_id, hostname, labels, state, key_version,
             created_ms, last_seen_ms) VALUES ($1, $2, $3, $4, '{}', 'active', 1, $5, $5)",
        )
        .bind(i as i64 + 1)
        .bind(format!("muid_{i:064x}"))
        .bind(site)
        .bind(format!("host-{i}"))
        .bind(now)
        .execute(&mut *tx)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO machine_keys (machine_row, hash, created_ms, version) VALUES ($1, $2, $3, 1)",
        )
        .bind(i as i64 + 1)
        .bind(warden_server::keys::secret_hash(&key_of(i)))
        .bind(now)
        .execute(&mut *tx)
        .await
        .unwrap();
    }
    tx.commit().await.unwrap();
    let token = common::api_token(&db, "bench", Role::Operator).await;
    db.pool.close().await;
    token
}

/// One stand-in host: links, then answers each Dispatch with Accepted at once, noting when the
/// Dispatch arrived; a `ping` on its channel measures a Ping/Pong round trip.
async fn host(
    addr: SocketAddr,
    i: usize,
    arrived: Arc<Mutex<Vec<Instant>>>,
    rtts: Arc<Mutex<Vec<f64>>>,
    mut ping: tokio::sync::mpsc::Receiver<()>,
    up: tokio::sync::mpsc::Sender<()>,
) {
    let mut req = format!("ws://{addr}/v1/agent/link")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", key_of(i)).parse().unwrap(),
    );
    let (mut ws, _) = loop {
        match tokio_tungstenite::connect_async(req.clone()).await {
            Ok(x) => break x,
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    up.send(()).await.unwrap();
    let mut pinged: Option<Instant> = None;
    loop {
        tokio::select! {
            Some(()) = ping.recv() => {
                pinged = Some(Instant::now());
                ws.send(Message::Ping(vec![1].into())).await.unwrap();
            }
            m = ws.next() => match m {
                Some(Ok(Message::Pong(_))) => {
                    if let Some(t) = pinged.take() {
                        rtts.lock().unwrap().push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(&t).unwrap();
                    if v["type"] == "dispatch" {
                        arrived.lock().unwrap().push(Instant::now());
                        let answer = json!({"type": "accepted", "dispatch_id": v["dispatch_id"],
                            "job_id": format!("job-{i}")});
                        ws.send(Message::Text(answer.to_string().into())).await.unwrap();
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: lim.maximum,
            maximum: lim.maximum,
        },
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let token = rt.block_on(fill(&data));
    // The real host enrolls at a site of its own, so the 1,000 stand-ins' site stays theirs.
    let bins = real_host::built_binaries();
    let admin = |args: &[&str]| common::admin(&data, args);
    admin(&["site", "add", "lab", "--name", "Lab"]);
    let lab_key = admin(&["site", "rotate-key", "lab"])["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let listen = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warden-server"));
    cmd.arg("--data-dir")
        .arg(&data)
        .args(["serve", "--listen", &listen.to_string()])
        .args(["--link-upgrades-per-second", "100000"])
        .env("WARDEN_SERVER_LOG", "warn,warden_server::cli=info");
    let server = ServerProcess::spawn(cmd);
    let addr = server.addr;
    rt.block_on(async move {
        let arrived = Arc::new(Mutex::new(Vec::with_capacity(HOSTS)));
        let rtts = Arc::new(Mutex::new(Vec::with_capacity(HOSTS)));
        let (up_tx, mut up_rx) = tokio::sync::mpsc::channel(HOSTS);
        let mut pings = Vec::new();
        for i in 0..HOSTS {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            pings.push(tx);
            tokio::spawn(host(addr, i, Arc::clone(&arrived), Arc::clone(&rtts), rx, up_tx.clone()));
        }
        for _ in 0..HOSTS {
            up_rx.recv().await.unwrap();
        }
        // Every link registered (the welcome came before `up`); let the hub settle.
        tokio::time::sleep(Duration::from_millis(500)).await;
        // 1. Raw round trips, one link at a time.
        for p in &pings {
            p.send(()).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut rtt = rtts.lock().unwrap().clone();
        eprintln!(
            "raw WebSocket round trip ({} links): p50 {:.2} ms, p99 {:.2} ms",
            rtt.len(),
            common::percentile(&mut rtt, 0.5),
            common::percentile(&mut rtt, 0.99)
        );
        // 2. The dispatch.
        // The whole site: a list of 1,000 machine ids would be over the 64 KiB body cap.
        let body = json!({"target": {"site": "hq"}, "action": "bench", "batch": HOSTS,
            "confirm": true});
        let auth = format!("Bearer {token}");
        let t0 = Instant::now();
        let r = common::http(addr, "POST", "/v1/dispatches", Some(body.to_string()),
            &[("Authorization", &auth)]).await;
        let answered = t0.elapsed();
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let stored = loop {
            let v = common::http(addr, "GET", &format!("/v1/dispatches/{id}"), None,
                &[("Authorization", &auth)]).await;
            if v.json["summary"]["running"] == HOSTS {
                break t0.elapsed();
            }
            assert!(Instant::now() < deadline, "not all running: {}", v.json["summary"]);
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        let mut at: Vec<f64> = arrived
            .lock()
            .unwrap()
            .iter()
            .map(|t| t.duration_since(t0).as_secs_f64() * 1000.0)
            .collect();
        assert_eq!(at.len(), HOSTS);
        eprintln!(
            "dispatch to {HOSTS} hosts: answered 201 after {:.0} ms; accepted by each host p50 {:.0} ms, p99 {:.0} ms; every host stored running after {:.0} ms",
            answered.as_secs_f64() * 1000.0,
            common::percentile(&mut at, 0.5),
            common::percentile(&mut at, 0.99),
            stored.as_secs_f64() * 1000.0
        );
        // 3. A real host's first output byte.
        // Not under /tmp: wardend refuses a directory whose ancestors others may write to.
        let host_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let host =
            real_host::RealHost::start(bins, host_dir.path().join("host"), addr, "lab", &lab_key);
        let machine = real_host::wait_linked(addr, &auth, "lab").await;
        let mut firsts = Vec::with_capacity(REAL_RUNS);
        for _ in 0..REAL_RUNS {
            firsts.push(real_host::one_run(addr, &auth, &host, &machine).await);
        }
        eprintln!(
            "real host ({REAL_RUNS} runs of demo-progress): job's first line to the operator's live stream p50 {:.0} ms, p99 {:.0} ms",
            common::percentile(&mut firsts, 0.5),
            common::percentile(&mut firsts, 0.99)
        );
        drop(host);
    });
    drop(server);
}
