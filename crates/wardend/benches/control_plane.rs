//! Control-plane benchmark: wardend answering `status` against a raw Unix-socket echo of a
//! length-prefixed JSON frame, measured in the same run on the same machine, with the ratio.
//!
//! Run: `cargo bench -p wardend --bench control_plane`. With
//! `WARDEN_BENCH_BEFORE=DIR` (a directory holding a `wardend` of an older build, built with
//! `cargo build --profile bench`), that build is measured too, in the same rounds, and the
//! report gives its figures and ratios beside this build's.
//!
//! To profile one server under load, run the bench binary with `WARDEN_BENCH_LOAD=SOCKET` (add
//! `WARDEN_BENCH_HELLO=1` for wardend, `WARDEN_BENCH_CLIENTS=1` for one client instead of 16):
//! it only drives that socket.
//!
//! All servers run as separate processes on a multi-threaded tokio runtime; the same blocking
//! client code drives them. Measured: round trips with 1 client and with 16 concurrent clients,
//! each pinned to CPU 0 and unpinned (p50, p99, requests per second), connect + `hello` against
//! connect + one echo, and server memory per idle connection with 10,000 connections open.

#![allow(clippy::unwrap_used)]

mod support;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// The frame both servers get: a `status` request (the echo server sends it back unchanged).
const REQUEST: &[u8] = br#"{"jsonrpc":"2.0","id":7,"method":"status","params":{}}"#;
const HELLO: &[u8] =
    br#"{"jsonrpc":"2.0","id":1,"method":"hello","params":{"protocol":1,"client":"bench"}}"#;

/// Round trips per round and server: one client, 16 clients (each), connects.
const SEQUENTIAL: usize = 5_000;
const PER_CLIENT: usize = 1_000;
const CLIENTS: usize = 16;
const CONNECTS: usize = 400;
const IDLE: usize = 10_000;
/// Rounds of each phase; every round measures each server once, in an order that rotates.
const ROUNDS: usize = 7;

fn main() {
    if std::env::var_os("WARDEN_BENCH_ECHO").is_some() {
        return support::echo_server(Path::new(&std::env::var("WARDEN_BENCH_ECHO").unwrap()));
    }
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if let Some(socket) = std::env::var_os("WARDEN_BENCH_LOAD") {
        let s = Server::external(
            socket.into(),
            std::env::var_os("WARDEN_BENCH_HELLO").is_some(),
        );
        let clients: usize = std::env::var("WARDEN_BENCH_CLIENTS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or(CLIENTS);
        for _ in 0..10 {
            let f = match clients {
                1 => sequential(&s, SEQUENTIAL * 4),
                n => concurrent(&s, n, PER_CLIENT * 4),
            };
            report(&format!("{clients} client(s) against the given socket"), &f);
        }
        return;
    }
    let limit = warden_sys::process::raise_nofile_limit().unwrap();
    assert!(
        limit as usize > IDLE + 100,
        "open-file limit {limit} is too low for {IDLE} connections"
    );
    let dir = warden_testkit::safe_tempdir();
    // The echo first, then this build's wardend, then the older build's when
    // WARDEN_BENCH_BEFORE names one.
    let mut servers = vec![Server::echo(dir.path())];
    for (label, bin) in support::builds("wardend", Path::new(env!("CARGO_BIN_EXE_wardend"))) {
        let home = dir
            .path()
            .join(if label.is_empty() { "wardend" } else { label });
        std::fs::create_dir(&home).unwrap();
        servers.push(Server::wardend(&bin, &home, label));
    }
    let all: Vec<&Server> = servers.iter().collect();

    println!(
        "warden control-plane benchmark: raw echo vs wardend `status`, same machine, same run"
    );
    println!(
        "(medians of {ROUNDS} rounds; each round measures every server once, in an order that \
         rotates; ratios are medians of per-round ratios)"
    );
    println!(
        "{:<56} {:>9} {:>9} {:>10} {:>13}",
        "", "p50 µs", "p99 µs", "req/s", "server µs/req"
    );
    // One client waits for each answer, so where the scheduler puts client and server decides
    // much of the figure (a cross-core wake-up of an idle virtual CPU costs tens of µs). The
    // pinned phases put client and servers on CPU 0, so every server is measured with the same
    // placement; the unpinned phases measure what a user sees, placement and all.
    let all_cpus = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    pin(&all, "0");
    let one = Phase::measure(&all, |s| sequential(s, SEQUENTIAL));
    let conn = Phase::measure(&all, |s| connects(s, CONNECTS));
    let many_pinned = Phase::measure(&all, |s| concurrent(s, CLIENTS, PER_CLIENT));
    pin(&all, &all_cpus);
    let one_free = Phase::measure(&all, |s| sequential(s, SEQUENTIAL));
    let many = Phase::measure(&all, |s| concurrent(s, CLIENTS, PER_CLIENT));
    one.report(&all, "1 client (CPU 0)");
    one_free.report(&all, "1 client (unpinned)");
    many_pinned.report(&all, "16 clients (CPU 0)");
    many.report(&all, "16 clients (unpinned)");
    conn.report(&all, "connect + first request (CPU 0)");
    let memory: Vec<f64> = all.iter().map(|s| idle_memory(s)).collect();

    println!();
    let wardends = &all[1..];
    let mut head = format!("{:<56}", "ratios, wardend / raw echo (medians of rounds)");
    for w in wardends {
        head.push_str(&format!(
            " {:>7}",
            if w.label.is_empty() {
                "wardend"
            } else {
                w.label
            }
        ));
    }
    if wardends.len() == 2 {
        head.push_str(&format!(" {:>13}", "after/before"));
    }
    println!("{head}");
    let line = |name: &str, phase: &Phase, figure: fn(&Figures) -> f64, target: &str| {
        let mut out = format!("{name:<56}");
        for w in 1..all.len() {
            out.push_str(&format!(" {:>7.2}", phase.ratio(w, 0, figure)));
        }
        if all.len() == 3 {
            out.push_str(&format!(" {:>13.2}", phase.ratio(1, 2, figure)));
        }
        println!("{out}  {target}");
    };
    line(
        "p50 ratio, 1 client (CPU 0):",
        &one,
        |f| f.p50,
        "(target <= 1.25)",
    );
    line(
        "p50 ratio, 1 client (unpinned):",
        &one_free,
        |f| f.p50,
        "(target <= 1.25)",
    );
    line(
        "p50 ratio, 16 clients (CPU 0):",
        &many_pinned,
        |f| f.p50,
        "",
    );
    line("p50 ratio, 16 clients (unpinned):", &many, |f| f.p50, "");
    line(
        "throughput ratio, 16 clients (CPU 0):",
        &many_pinned,
        |f| f.rate,
        "",
    );
    line(
        "throughput ratio, 16 clients (unpinned):",
        &many,
        |f| f.rate,
        "(target >= 0.90)",
    );
    line(
        "connect+hello / connect+round trip, p50:",
        &conn,
        |f| f.p50,
        "",
    );
    for (s, m) in all.iter().zip(&memory).skip(1) {
        println!(
            "memory per idle connection ({IDLE} open): raw echo {:.1} KiB, {} {:.1} KiB, ratio {:.2}  (target <= 8 KiB)",
            memory[0] / 1024.0,
            s.name(),
            m / 1024.0,
            m / memory[0]
        );
    }
}

/// Restricts the servers' threads and this thread to `cpus` (a `taskset` list such as `0`).
fn pin(servers: &[&Server], cpus: &str) {
    let taskset = |args: &[&str]| {
        let ok = Command::new("taskset")
            .args(args)
            .stdout(Stdio::null())
            .status();
        assert!(ok.is_ok_and(|s| s.success()), "taskset {args:?} failed");
    };
    for s in servers {
        taskset(&["-a", "-p", "-c", cpus, &s.pid().to_string()]);
    }
    // This thread's id, from /proc/thread-self -> "<pid>/task/<tid>".
    let me = std::fs::read_link("/proc/thread-self").unwrap();
    let tid = me.file_name().unwrap().to_str().unwrap().to_owned();
    taskset(&["-p", "-c", cpus, &tid]);
}

/// One measurement of every server, round after round: `rounds[server][round]`.
struct Phase {
    rounds: Vec<Vec<Figures>>,
}

impl Phase {
    /// Each round measures every server once; the order rotates from round to round, so no
    /// server always runs right after the same other one (or first, on a cold cache).
    fn measure(servers: &[&Server], run: impl Fn(&Server) -> Figures) -> Phase {
        let mut rounds: Vec<Vec<Figures>> = servers.iter().map(|_| Vec::new()).collect();
        for round in 0..ROUNDS {
            for i in 0..servers.len() {
                let s = (i + round) % servers.len();
                rounds[s].push(run(servers[s]));
            }
        }
        Phase { rounds }
    }

    fn report(&self, servers: &[&Server], what: &str) {
        for (s, rounds) in servers.iter().zip(&self.rounds) {
            report(&format!("{}, {what}", s.name()), &median_figures(rounds));
        }
    }

    /// Median over rounds of server `a`'s figure divided by server `b`'s of the same round.
    fn ratio(&self, a: usize, b: usize, figure: impl Fn(&Figures) -> f64) -> f64 {
        median(
            self.rounds[a]
                .iter()
                .zip(&self.rounds[b])
                .map(|(x, y)| figure(x) / figure(y))
                .collect(),
        )
    }
}

fn median(v: Vec<f64>) -> f64 {
    support::median(v)
}

fn median_figures(rounds: &[Figures]) -> Figures {
    let of = |f: fn(&Figures) -> f64| median(rounds.iter().map(f).collect());
    Figures {
        p50: of(|f| f.p50),
        p99: of(|f| f.p99),
        rate: of(|f| f.rate),
        // CPU time comes in 10 ms clock ticks, too coarse for one round: average the rounds.
        cpu: rounds.iter().map(|f| f.cpu).sum::<f64>() / rounds.len() as f64,
    }
}

/// A server process under test.
struct Server {
    /// `None` for a server this benchmark did not start.
    child: Option<Child>,
    socket: PathBuf,
    /// wardend wants a hello first; the echo server does not.
    hello: bool,
    /// Which wardend build: "after", "before", or "" when only one is measured.
    label: &'static str,
}

impl Server {
    fn echo(dir: &Path) -> Server {
        let socket = dir.join("echo.sock");
        let child = Command::new(std::env::current_exe().unwrap())
            .env("WARDEN_BENCH_ECHO", &socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server::ready(child, socket, false, "")
    }

    /// `bin` serving `dir` (its own directory: each build gets one).
    fn wardend(bin: &Path, dir: &Path, label: &'static str) -> Server {
        let config = dir.join("bench.toml");
        let text = warden_testkit::config(
            "[daemon]\nruntime_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\n\
             [limits]\nmax_connections = 20000\nmax_connections_per_uid = 20000\n\
             requests_per_second = 1000000000\nburst = 1000000\n\
             uid_requests_per_second = 1000000000\nuid_burst = 1000000\n\
             hello_timeout_ms = 600000\n\
             [[listener]]\npath = \"{dir}/run/wardend.sock\"\nmode = \"0600\"\n",
            dir,
        );
        std::fs::write(&config, text).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&config)
            .env("WARDEN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server::ready(child, dir.join("run/wardend.sock"), true, label)
    }

    fn external(socket: PathBuf, hello: bool) -> Server {
        Server {
            child: None,
            socket,
            hello,
            label: "",
        }
    }

    /// How the report names it.
    fn name(&self) -> String {
        match (self.hello, self.label) {
            (false, _) => "raw echo".into(),
            (true, "") => "wardend status".into(),
            (true, label) => format!("wardend status [{label}]"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn ready(child: Child, socket: PathBuf, hello: bool, label: &'static str) -> Server {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "{} did not come up",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        Server {
            child: Some(child),
            socket,
            hello,
            label,
        }
    }

    /// A connection ready for requests (past `hello` for wardend).
    fn connect(&self) -> Conn {
        let mut c = Conn {
            stream: UnixStream::connect(&self.socket).unwrap(),
            buf: Vec::new(),
        };
        if self.hello {
            c.round_trip(HELLO);
        }
        c
    }

    /// CPU time (user + system) the server process has used so far, in seconds.
    fn cpu_seconds(&self) -> f64 {
        if self.child.is_none() {
            return 0.0;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap();
        // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap();
        ticks / 100.0
    }

    fn rss_bytes(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kib * 1024.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

impl Conn {
    fn round_trip(&mut self, body: &[u8]) {
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        self.stream.write_all(&frame).unwrap();
        let mut header = [0u8; 4];
        self.stream.read_exact(&mut header).unwrap();
        self.buf.resize(u32::from_be_bytes(header) as usize, 0);
        self.stream.read_exact(&mut self.buf).unwrap();
    }
}

struct Figures {
    p50: f64,
    p99: f64,
    rate: f64,
    /// Server CPU time per request, in microseconds.
    cpu: f64,
}

fn figures(mut samples: Vec<Duration>, wall: Duration, cpu_seconds: f64) -> Figures {
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
    Figures {
        p50: at(0.50),
        p99: at(0.99),
        rate: samples.len() as f64 / wall.as_secs_f64(),
        cpu: cpu_seconds * 1e6 / samples.len() as f64,
    }
}

fn report(name: &str, f: &Figures) {
    println!(
        "{name:<56} {:>9.1} {:>9.1} {:>10.0} {:>13.1}",
        f.p50, f.p99, f.rate, f.cpu
    );
}

fn timed(n: usize, mut op: impl FnMut()) -> Vec<Duration> {
    (0..n)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed()
        })
        .collect()
}

fn sequential(s: &Server, n: usize) -> Figures {
    let mut c = s.connect();
    timed(500, || c.round_trip(REQUEST));
    let (start, cpu) = (Instant::now(), s.cpu_seconds());
    let samples = timed(n, || c.round_trip(REQUEST));
    figures(samples, start.elapsed(), s.cpu_seconds() - cpu)
}

fn concurrent(s: &Server, clients: usize, per_client: usize) -> Figures {
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let mut c = s.connect();
            let barrier = Arc::clone(&barrier);
            std::thread::spawn(move || {
                timed(200, || c.round_trip(REQUEST));
                barrier.wait();
                timed(per_client, || c.round_trip(REQUEST))
            })
        })
        .collect();
    barrier.wait();
    let (start, cpu) = (Instant::now(), s.cpu_seconds());
    let samples: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    figures(samples, start.elapsed(), s.cpu_seconds() - cpu)
}

fn connects(s: &Server, n: usize) -> Figures {
    let once = || {
        let mut c = Conn {
            stream: UnixStream::connect(&s.socket).unwrap(),
            buf: Vec::new(),
        };
        c.round_trip(if s.hello { HELLO } else { REQUEST });
    };
    timed(100, once);
    let (start, cpu) = (Instant::now(), s.cpu_seconds());
    let samples = timed(n, once);
    figures(samples, start.elapsed(), s.cpu_seconds() - cpu)
}

/// Server memory growth per connection with `IDLE` connections open and idle.
fn idle_memory(s: &Server) -> f64 {
    std::thread::sleep(Duration::from_millis(300));
    let before = s.rss_bytes();
    let conns: Vec<Conn> = (0..IDLE)
        .map(|_| {
            let mut c = s.connect();
            if !s.hello {
                c.round_trip(REQUEST);
            }
            c
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let after = s.rss_bytes();
    drop(conns);
    (after - before) / IDLE as f64
}
