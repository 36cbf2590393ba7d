//! Audit benchmark: how many mutating requests per second the daemon answers when each one's
//! audit record must be on disk before its answer, against what the same disk allows, measured
//! in the same run.
//!
//! Run: `cargo bench -p wardend --bench audit`
//!
//! 1. A bare loop of `write` + `fdatasync` per 200-byte record, and a bare loop of 64 writes per
//!    `fdatasync`, in a file beside the daemon's state directory (the same disk).
//! 2. 64 clients sending `job.cancel` of one finished job (allowed, mutating, cheap: what is
//!    measured is the request path and its durable audit record) to the real `wardend` binary.
//!
//! (1) and (2) alternate for [`ROUNDS`] rounds, because what the disk allows moves from moment to
//! moment; figures are medians of the rounds, ratios medians of per-round ratios.
//!
//! 3. The daemon's CPU time per request during (2), and `audit.verify` over the log (2) left.
//! 4. For scale: the same 64 clients sending `job.get` of the job (the same path, no record), and
//!    the ceiling of the socket itself, a raw Unix-socket echo of a `job.cancel`-sized frame,
//!    which does no work and writes nothing.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Map;
use support::{Daemon, median};

const CLIENTS: usize = 64;
const FLOOD: Duration = Duration::from_secs(2);
const ROUNDS: usize = 3;
const RECORD: [u8; 200] = [b'x'; 200];

/// Records per second of `batch` 200-byte writes per `fdatasync`, for `n` records.
fn fsync_loop(path: &Path, batch: usize, n: usize) -> f64 {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .unwrap();
    let t = Instant::now();
    for i in 0..n {
        f.write_all(&RECORD).unwrap();
        if (i + 1) % batch == 0 {
            f.sync_data().unwrap();
        }
    }
    f.sync_data().unwrap();
    n as f64 / t.elapsed().as_secs_f64()
}

/// user + system CPU ticks of `pid`.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

const HELLO: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1,"client":"bench"}}"#;

/// What the benchmark checks of an answer: a result and no error, neither looked into.
#[derive(serde::Deserialize)]
struct Answer {
    result: Option<serde::de::IgnoredAny>,
    error: Option<serde::de::IgnoredAny>,
}

async fn round_trip(s: &mut tokio::net::UnixStream, frame: &[u8], back: &mut Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(frame).await.unwrap();
    let mut header = [0u8; 4];
    s.read_exact(&mut header).await.unwrap();
    back.resize(u32::from_be_bytes(header) as usize, 0);
    s.read_exact(back).await.unwrap();
}

/// Answers per second of `CLIENTS` concurrent clients each sending `body` over and over, and
/// how many were answered. The client is the same lean one for the daemon and the echo: a
/// prepared frame out, one frame back, so what differs is only the server. Against wardend
/// (`hello`), each answer is checked to be a result, not an error.
async fn flood(socket: &Path, hello: bool, body: &[u8]) -> (f64, u64) {
    let frame_of = |body: &[u8]| {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        frame
    };
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for _ in 0..CLIENTS {
        let mut s = tokio::net::UnixStream::connect(socket).await.unwrap();
        if hello {
            round_trip(&mut s, &frame_of(HELLO), &mut Vec::new()).await;
        }
        streams.push(s);
    }
    let frame = Arc::new(frame_of(body));
    let started = Instant::now();
    let tasks: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            let (stop, answered, frame) = (stop.clone(), answered.clone(), frame.clone());
            tokio::spawn(async move {
                let mut back = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    round_trip(&mut s, &frame, &mut back).await;
                    if hello {
                        // Checked without building the answer: the client stays as lean as
                        // the echo's, which checks nothing.
                        let v: Answer = serde_json::from_slice(&back).unwrap();
                        assert!(
                            v.result.is_some() && v.error.is_none(),
                            "wardend answered {}",
                            String::from_utf8_lossy(&back)
                        );
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    tokio::time::sleep(FLOOD).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = answered.load(Ordering::Relaxed);
    (n as f64 / started.elapsed().as_secs_f64(), n)
}

fn main() {
    if let Some(socket) = std::env::var_os("WARDEN_BENCH_ECHO") {
        return support::echo_server(Path::new(&socket));
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let daemon = Daemon::start(
        dir.path(),
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
# Measured as fast as it goes, whoever runs it (root is not budgeted; others would be).
[audit]
uid_changes_per_minute = 1000000
[[listener]]
path = "{dir}/run/w.sock"
mode = "0600"
[[action]]
name = "true"
description = "Runs /bin/true"
argv = ["/bin/true"]
tier = "read_only"
mutating = true
timeout_s = 10
"#,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut first = rt.block_on(daemon.connect());
    let id = rt.block_on(async {
        let id = first.start("true", &Map::new(), None).await.unwrap().job_id;
        first.wait(id.as_str(), 30_000).await.unwrap();
        id.to_string()
    });
    let cancel = format!(
        r#"{{"jsonrpc":"2.0","id":12345,"method":"job.cancel","params":{{"job_id":"{id}"}}}}"#
    );

    // (per-record loop, 64-per-flush loop, durable requests) per round, alternating.
    let mut rounds = Vec::new();
    let (mut answered, mut ticks) = (0, 0);
    for round in 0..ROUNDS {
        let per_record = fsync_loop(&dir.path().join(format!("each-{round}.bin")), 1, 1_000);
        let per_64 = fsync_loop(&dir.path().join(format!("64-{round}.bin")), 64, 64 * 200);
        let before = cpu_ticks(daemon.pid());
        let (through, n) = rt.block_on(flood(&daemon.socket, true, cancel.as_bytes()));
        ticks += cpu_ticks(daemon.pid()) - before;
        answered += n;
        rounds.push((per_record, per_64, through));
    }
    let (unaudited, verify) = rt.block_on(async {
        let get = format!(
            r#"{{"jsonrpc":"2.0","id":12345,"method":"job.get","params":{{"job_id":"{id}"}}}}"#
        );
        let (unaudited, _) = flood(&daemon.socket, true, get.as_bytes()).await;
        let t = Instant::now();
        let v = first.audit_verify().await.unwrap();
        assert!(v.intact);
        (unaudited, v.records as f64 / t.elapsed().as_secs_f64())
    });
    drop(first);
    drop(daemon);

    let echo_socket = dir.path().join("echo.sock");
    let mut echo = std::process::Command::new(std::env::current_exe().unwrap())
        .env("WARDEN_BENCH_ECHO", &echo_socket)
        .spawn()
        .unwrap();
    while std::os::unix::net::UnixStream::connect(&echo_socket).is_err() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let (echoed, _) = rt.block_on(flood(&echo_socket, false, cancel.as_bytes()));
    let _ = echo.kill();
    let _ = echo.wait();

    let of = |f: fn(&(f64, f64, f64)) -> f64| median(rounds.iter().map(f).collect());
    let per_record = of(|r| r.0);
    let per_64 = of(|r| r.1);
    let through = of(|r| r.2);
    let vs_each: Vec<f64> = rounds.iter().map(|r| r.2 / r.0).collect();
    let vs_64: Vec<f64> = rounds.iter().map(|r| r.2 / r.1).collect();
    let range = |v: &[f64], digits: usize| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        format!("{lo:.digits$} to {hi:.digits$}")
    };
    let tick = 1e6 / 100.0; // µs per clock tick (USER_HZ = 100)
    println!(
        "warden audit benchmark (same machine, same disk, same run; medians of {ROUNDS} alternating rounds)"
    );
    println!(
        "{:<58} {:>12.0}",
        "write + fdatasync per 200-byte record, records/s", per_record
    );
    println!(
        "{:<58} {:>12.0}",
        "64 writes per fdatasync, records/s", per_64
    );
    println!(
        "{:<58} {:>12.0}",
        format!("wardend, {CLIENTS} clients, durable mutating requests/s"),
        through
    );
    println!(
        "{:<58} {:>12.0}",
        format!("wardend, {CLIENTS} clients, job.get (no audit record)/s"),
        unaudited
    );
    println!(
        "{:<58} {:>12.1}",
        "wardend CPU per durable request (user + system), µs",
        ticks as f64 * tick / answered as f64
    );
    println!("{:<58} {:>12.0}", "audit.verify, records/s", verify);
    println!(
        "{:<58} {:>12.0}",
        format!("raw Unix-socket echo, {CLIENTS} clients, round trips/s"),
        echoed
    );
    println!();
    println!(
        "durable requests / fsync-per-record loop:  {:.1}  (target >= 10; rounds {})",
        median(vs_each.clone()),
        range(&vs_each, 1)
    );
    println!(
        "durable requests / 64-per-fsync loop:      {:.2}  (target >= 0.5; rounds {})",
        median(vs_64.clone()),
        range(&vs_64, 2)
    );
    println!(
        "durable requests / raw echo:               {:.2}",
        through / echoed
    );
    println!(
        "job.get, no record / 64-per-fsync loop:    {:.2}  (the same path with nothing to write)",
        unaudited / per_64
    );
    println!(
        "the >= 0.5 target / raw echo:              {:.2}  (a server that does nothing reaches 1)",
        0.5 * per_64 / echoed
    );
}
