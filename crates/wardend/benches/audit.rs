//! Audit benchmark: how many mutating requests per second the daemon answers when each one's
//! audit record must be on disk before its answer, against what the same disk allows, and what
//! the audit costs the daemon, measured in the same run.
//!
//! Run: `cargo bench -p wardend --bench audit` (with `WARDEN_BENCH_BEFORE=<dir>` holding an
//! older build's `wardend`, both builds run side by side and every round floods each in turn).
//!
//! 1. A bare loop of `write` + `fdatasync` per 200-byte record, and a bare loop of 64 writes per
//!    `fdatasync`, in a file beside the daemons' state directories (the same disk).
//! 2. 64 clients sending `job.cancel` of one finished job (allowed, mutating, cheap: what is
//!    measured is the request path and its two durable audit records) to the real `wardend`
//!    binary; meanwhile `perf stat` counts the daemon's `fdatasync` calls on the syscall's
//!    tracepoint (in the kernel, no stop per call), and the records written are the difference
//!    of the log's last `seq`: records per `fdatasync` is group commit's factor.
//! 3. The same 64 clients sending `job.get` of the same job: the same path, no record.
//!
//! The daemon's CPU in (2) and (3) is the sum of its threads' run time in
//! `/proc/<pid>/task/*/schedstat` (ns) around each flood, divided by the answers.
//! (1) to (3) alternate for [`ROUNDS`] rounds, because what the disk and the shared CPUs allow
//! moves from moment to moment; figures are medians of the rounds, ratios medians of per-round
//! ratios. Then `audit.verify` over the log each daemon was left with, and for scale the
//! ceiling of the socket itself, a raw Unix-socket echo of a `job.cancel`-sized frame, which does
//! no work and writes nothing.

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

/// user + system CPU of every live thread of `pid`, in ns (`/proc/<pid>/task/*/schedstat`: the
/// scheduler's own run time, not ticks).
fn cpu_ns(pid: u32) -> u64 {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let path = task.unwrap().path().join("schedstat");
        if let Ok(text) = std::fs::read_to_string(path) {
            total += text
                .split_whitespace()
                .next()
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(0);
        }
    }
    total
}

/// The `seq` of the last record in the audit log under `state` (the live file, or the newest
/// closed segment when the live file was just begun), read from the file's tail.
fn last_seq(state: &Path) -> u64 {
    use std::io::{Read, Seek, SeekFrom};
    let dir = state.join("audit");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    // `audit.log` sorts after `audit.000000000123.log`: the live file last, then the newest
    // closed segment.
    files.sort();
    for path in files.iter().rev() {
        let mut f = std::fs::File::open(path).unwrap();
        let len = f.metadata().unwrap().len();
        let from = len.saturating_sub(64 * 1024);
        f.seek(SeekFrom::Start(from)).unwrap();
        let mut tail = Vec::new();
        f.read_to_end(&mut tail).unwrap();
        if let Some(line) = tail
            .split(|&b| b == b'\n')
            .rev()
            .find(|l| l.starts_with(b"{\"seq\":"))
        {
            let v: serde_json::Value = serde_json::from_slice(line).unwrap();
            return v["seq"].as_u64().unwrap();
        }
    }
    0
}

/// Counts the `fdatasync` calls of `pid`'s threads while it runs: `perf stat` on the syscall's
/// tracepoint, counted in the kernel (no stop per call, unlike strace). `None` without perf.
struct SyncCount(Option<std::process::Child>);

impl SyncCount {
    fn start(pid: u32) -> SyncCount {
        let child = std::process::Command::new("perf")
            .args(["stat", "-x,", "-e", "syscalls:sys_enter_fdatasync", "-p"])
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .ok();
        // perf attaches before the flood begins.
        std::thread::sleep(Duration::from_millis(200));
        SyncCount(child)
    }

    fn stop(self) -> Option<u64> {
        let child = self.0?;
        std::process::Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .ok()?;
        let out = child.wait_with_output().ok()?;
        let text = String::from_utf8_lossy(&out.stderr);
        text.lines()
            .find(|l| l.contains("sys_enter_fdatasync"))?
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok()
    }
}

/// One build's daemon, its state directory and its finished job's requests.
struct Build {
    label: &'static str,
    daemon: Daemon,
    state: std::path::PathBuf,
    cancel: String,
    get: String,
    client: warden_client::Client,
}

/// What one flood of one build gave.
#[derive(Default, Clone, Copy)]
struct Phase {
    /// Answers per second.
    rate: f64,
    /// Daemon CPU per answer, µs.
    cpu_us: f64,
    /// Records per `fdatasync` (durable floods, with perf).
    per_sync: Option<f64>,
}

fn phase(rt: &tokio::runtime::Runtime, b: &Build, body: &str, durable: bool) -> Phase {
    let seq = last_seq(&b.state);
    let syncs = durable.then(|| SyncCount::start(b.daemon.pid()));
    let cpu = cpu_ns(b.daemon.pid());
    let (rate, n) = rt.block_on(flood(&b.daemon.socket, true, body.as_bytes()));
    let cpu = cpu_ns(b.daemon.pid()) - cpu;
    let syncs = syncs.and_then(SyncCount::stop);
    let records = last_seq(&b.state) - seq;
    Phase {
        rate,
        cpu_us: cpu as f64 / 1e3 / n as f64,
        per_sync: syncs.filter(|&s| s > 0).map(|s| records as f64 / s as f64),
    }
}

const CONFIG: &str = r#"[daemon]
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
"#;

/// Per round: (per-record loop, 64-per-flush loop, per build (durable flood, job.get flood)).
type Round = (f64, f64, Vec<(Phase, Phase)>);

fn main() {
    if let Some(socket) = std::env::var_os("WARDEN_BENCH_ECHO") {
        return support::echo_server(Path::new(&socket));
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut builds: Vec<Build> = support::builds(
        "wardend",
        Path::new(env!("CARGO_BIN_EXE_wardend")),
    )
    .into_iter()
    .map(|(label, bin)| {
        let home = dir
            .path()
            .join(if label.is_empty() { "this" } else { label });
        std::fs::create_dir(&home).unwrap();
        let daemon = Daemon::start_bin(&bin, &home, CONFIG);
        let (client, id) = rt.block_on(async {
            let mut client = daemon.connect().await;
            let id = client
                .start("true", &Map::new(), None)
                .await
                .unwrap()
                .job_id;
            client.wait(id.as_str(), 30_000).await.unwrap();
            (client, id.to_string())
        });
        let request = |method: &str| {
            format!(
                r#"{{"jsonrpc":"2.0","id":12345,"method":"{method}","params":{{"job_id":"{id}"}}}}"#
            )
        };
        Build {
            label,
            state: home.join("state"),
            cancel: request("job.cancel"),
            get: request("job.get"),
            daemon,
            client,
        }
    })
    .collect();

    // Each round: the two disk loops, then each build's durable flood and job.get flood, the
    // builds in turns (who goes first alternates).
    let mut rounds: Vec<Round> = Vec::new();
    for round in 0..ROUNDS {
        let per_record = fsync_loop(&dir.path().join(format!("each-{round}.bin")), 1, 1_000);
        let per_64 = fsync_loop(&dir.path().join(format!("64-{round}.bin")), 64, 64 * 200);
        let mut phases = vec![(Phase::default(), Phase::default()); builds.len()];
        for k in 0..builds.len() {
            let i = (k + round) % builds.len();
            let b = &builds[i];
            let durable = phase(&rt, b, &b.cancel, true);
            let unaudited = phase(&rt, b, &b.get, false);
            phases[i] = (durable, unaudited);
        }
        rounds.push((per_record, per_64, phases));
    }
    let verify: Vec<f64> = builds
        .iter_mut()
        .map(|b| {
            rt.block_on(async {
                let t = Instant::now();
                let v = b.client.audit_verify().await.unwrap();
                assert!(v.intact);
                v.records as f64 / t.elapsed().as_secs_f64()
            })
        })
        .collect();
    let labels: Vec<&str> = builds.iter().map(|b| b.label).collect();
    let cancel = builds[0].cancel.clone();
    drop(builds);

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

    report(&rounds, &labels, &verify, echoed);
}

fn range(v: &[f64], digits: usize) -> String {
    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
    let hi = v.iter().copied().fold(0.0, f64::max);
    format!("{lo:.digits$} to {hi:.digits$}")
}

fn report(rounds: &[Round], labels: &[&str], verify: &[f64], echoed: f64) {
    let per_record = median(rounds.iter().map(|r| r.0).collect());
    let per_64 = median(rounds.iter().map(|r| r.1).collect());
    // Per build, a figure from each round.
    let each = |i: usize, f: &dyn Fn(&(Phase, Phase), &Round) -> f64| -> Vec<f64> {
        rounds.iter().map(|r| f(&r.2[i], r)).collect()
    };
    let builds = labels.len();
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
    if builds > 1 {
        print!("{:<58}", "");
        for l in labels {
            print!(" {l:>12}");
        }
        println!();
    }
    let row = |name: String, digits: usize, f: &dyn Fn(usize) -> f64| {
        print!("{name:<58}");
        for i in 0..builds {
            print!(" {:>12.digits$}", f(i));
        }
        println!();
    };
    let med = |i: usize, f: &dyn Fn(&(Phase, Phase), &Round) -> f64| median(each(i, f));
    row(
        format!("wardend, {CLIENTS} clients, durable mutating requests/s"),
        0,
        &|i| med(i, &|p, _| p.0.rate),
    );
    row(
        format!("wardend, {CLIENTS} clients, job.get (no audit record)/s"),
        0,
        &|i| med(i, &|p, _| p.1.rate),
    );
    let synced = rounds
        .iter()
        .all(|r| r.2.iter().all(|p| p.0.per_sync.is_some()));
    if synced {
        row(
            "audit records per fdatasync, durable flood (perf stat)".into(),
            1,
            &|i| med(i, &|p, _| p.0.per_sync.unwrap_or(0.0)),
        );
    } else {
        println!("audit records per fdatasync: not measured (perf stat did not run)");
    }
    row(
        "wardend CPU per durable request (user + system), µs".into(),
        1,
        &|i| med(i, &|p, _| p.0.cpu_us),
    );
    row(
        "wardend CPU per job.get (user + system), µs".into(),
        1,
        &|i| med(i, &|p, _| p.1.cpu_us),
    );
    row("audit.verify, records/s".into(), 0, &|i| verify[i]);
    println!(
        "{:<58} {:>12.0}",
        format!("raw Unix-socket echo, {CLIENTS} clients, round trips/s"),
        echoed
    );
    for (i, label) in labels.iter().enumerate() {
        let of = if label.is_empty() {
            String::new()
        } else {
            format!(" ({label})")
        };
        println!();
        let vs_each = each(i, &|p, r| p.0.rate / r.0);
        let vs_64 = each(i, &|p, r| p.0.rate / r.1);
        let cpu = each(i, &|p, _| p.0.cpu_us / p.1.cpu_us);
        println!(
            "durable requests / fsync-per-record loop{of}:  {:.1}  (target >= 10; rounds {})",
            median(vs_each.clone()),
            range(&vs_each, 1)
        );
        println!(
            "durable requests / 64-per-fsync loop{of}:      {:.2}  (target >= 0.5; rounds {})",
            median(vs_64.clone()),
            range(&vs_64, 2)
        );
        if synced {
            let per_sync = each(i, &|p, _| p.0.per_sync.unwrap_or(0.0));
            println!(
                "audit records per fdatasync{of}:               {:.1}  (target >= 16; rounds {})",
                median(per_sync.clone()),
                range(&per_sync, 1)
            );
        }
        println!(
            "CPU per durable request / per job.get{of}:     {:.2}  (target <= 2; rounds {})",
            median(cpu.clone()),
            range(&cpu, 2)
        );
        let through = med(i, &|p, _| p.0.rate);
        println!(
            "durable requests / raw echo{of}:               {:.2}",
            through / echoed
        );
        println!(
            "job.get, no record / 64-per-fsync loop{of}:    {:.2}  (the same path with nothing to write)",
            med(i, &|p, _| p.1.rate) / per_64
        );
    }
    println!(
        "the >= 0.5 target / raw echo:              {:.2}  (a server that does nothing reaches 1)",
        0.5 * per_64 / echoed
    );
    if builds > 1 {
        println!();
        println!("per round, {} / {}:", labels[0], labels[1]);
        for (k, r) in rounds.iter().enumerate() {
            let (a, b) = (&r.2[0], &r.2[1]);
            let per_sync = match (a.0.per_sync, b.0.per_sync) {
                (Some(x), Some(y)) => format!("{:.2}", x / y),
                _ => "-".into(),
            };
            println!(
                "  round {}: durable requests/s {:.2}, CPU per durable request {:.2}, per job.get {:.2}, \
                 records per fdatasync {per_sync}; CPU durable/job.get {:.2} vs {:.2}",
                k + 1,
                a.0.rate / b.0.rate,
                a.0.cpu_us / b.0.cpu_us,
                a.1.cpu_us / b.1.cpu_us,
                a.0.cpu_us / a.1.cpu_us,
                b.0.cpu_us / b.1.cpu_us,
            );
        }
    }
}
