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
//! 3. The daemon's CPU time per request during (2), and `audit.verify` over the log (2) left.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::Map;
use support::Daemon;

const CLIENTS: usize = 64;
const FLOOD: Duration = Duration::from_secs(3);
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

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let per_record = fsync_loop(&dir.path().join("fsync-each.bin"), 1, 2_000);
    let per_64 = fsync_loop(&dir.path().join("fsync-64.bin"), 64, 64 * 400);

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
[[listener]]
path = "{dir}/run/w.sock"
mode = "0600"
[[action]]
name = "true"
description = "Runs /bin/true"
argv = ["/bin/true"]
tier = "read_only"
mutating = true
"#,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (answered, ticks, elapsed, verify) = rt.block_on(async {
        let mut first = daemon.connect().await;
        let id = first.start("true", &Map::new(), None).await.unwrap().job_id;
        first.wait(id.as_str(), 30_000).await.unwrap();
        let id = id.to_string();

        let stop = Arc::new(AtomicBool::new(false));
        let answered = Arc::new(AtomicU64::new(0));
        let mut clients = Vec::new();
        for _ in 0..CLIENTS {
            clients.push(daemon.connect().await);
        }
        let ticks_before = cpu_ticks(daemon.pid());
        let started = Instant::now();
        let tasks: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let (stop, answered, id) = (stop.clone(), answered.clone(), id.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        c.cancel(&id).await.unwrap();
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
        let elapsed = started.elapsed();
        let ticks = cpu_ticks(daemon.pid()) - ticks_before;
        let t = Instant::now();
        let v = first.audit_verify().await.unwrap();
        assert!(v.intact);
        let verify = v.records as f64 / t.elapsed().as_secs_f64();
        (answered.load(Ordering::Relaxed), ticks, elapsed, verify)
    });
    drop(daemon);

    let through = answered as f64 / elapsed.as_secs_f64();
    let tick = 1e6 / 100.0; // µs per clock tick (USER_HZ = 100)
    println!("warden audit benchmark (same machine, same disk, same run)");
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
        "{:<58} {:>12.1}",
        "wardend CPU per request (user + system), µs",
        ticks as f64 * tick / answered as f64
    );
    println!("{:<58} {:>12.0}", "audit.verify, records/s", verify);
    println!();
    println!(
        "durable requests / fsync-per-record loop:  {:.1}  (target >= 10)",
        through / per_record
    );
    println!(
        "durable requests / 64-per-fsync loop:      {:.2}  (target >= 0.5)",
        through / per_64
    );
}
