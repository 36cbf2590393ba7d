//! Control-plane benchmark: wardend answering `status` against a raw Unix-socket echo of a
//! length-prefixed JSON frame, measured in the same run on the same machine, with the ratio.
//!
//! Run: `cargo bench -p wardend --bench control_plane`
//!
//! To profile one server under the 16-client load, run the bench binary with
//! `WARDEN_BENCH_LOAD=SOCKET` (add `WARDEN_BENCH_HELLO=1` for wardend): it only drives that socket.
//!
//! Both servers run as separate processes on a multi-threaded tokio runtime; the same blocking
//! client code drives both. Measured: round trips with 1 client and with 16 concurrent clients
//! (p50, p99, requests per second), connect + `hello` against connect + one echo, and server
//! memory per idle connection with 10,000 connections open.

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

const SEQUENTIAL: usize = 25_000;
const PER_CLIENT: usize = 5_000;
const CLIENTS: usize = 16;
const CONNECTS: usize = 2_000;
const IDLE: usize = 10_000;

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
        for _ in 0..10 {
            report(
                "16 clients against the given socket",
                &concurrent(&s, PER_CLIENT),
            );
        }
        return;
    }
    let limit = warden_sys::process::raise_nofile_limit().unwrap();
    assert!(
        limit as usize > IDLE + 100,
        "open-file limit {limit} is too low for {IDLE} connections"
    );
    let dir = warden_testkit::safe_tempdir();
    let echo = Server::echo(dir.path());
    let wardend = Server::wardend(dir.path());

    println!(
        "warden control-plane benchmark: raw echo vs wardend `status`, same machine, same run"
    );
    println!(
        "(medians of {ROUNDS} rounds that alternate the two servers; ratios are medians of per-round ratios)"
    );
    println!(
        "{:<36} {:>9} {:>9} {:>10} {:>13}",
        "", "p50 µs", "p99 µs", "req/s", "server µs/req"
    );
    // One client waits for each answer, so where the scheduler puts client and server decides
    // the figure (a cross-core wake-up of an idle virtual CPU costs tens of µs). Pin both to
    // CPU 0 for the one-client phases so both servers are measured with the same placement.
    let all_cpus = format!(
        "0-{}",
        std::thread::available_parallelism().map_or(1, |n| n.get()) - 1
    );
    pin(&[&echo, &wardend], "0");
    let one = Pair::measure(&echo, &wardend, |s| sequential(s, SEQUENTIAL / ROUNDS));
    let conn = Pair::measure(&echo, &wardend, |s| connects(s, CONNECTS / ROUNDS));
    pin(&[&echo, &wardend], &all_cpus);
    let many = Pair::measure(&echo, &wardend, |s| concurrent(s, PER_CLIENT / ROUNDS));
    one.report(
        "raw echo, 1 client (CPU 0)",
        "wardend status, 1 client (CPU 0)",
    );
    many.report("raw echo, 16 clients", "wardend status, 16 clients");
    conn.report(
        "raw connect + 1 round trip (CPU 0)",
        "wardend connect + hello (CPU 0)",
    );
    let raw_mem = idle_memory(&echo);
    let wd_mem = idle_memory(&wardend);
    println!();
    println!(
        "p50 ratio, 1 client (wardend/raw):        {:.2}  (target <= 1.25)",
        one.ratio(|f| f.p50)
    );
    println!(
        "p50 ratio, 16 clients (wardend/raw):      {:.2}",
        many.ratio(|f| f.p50)
    );
    println!(
        "throughput ratio, 16 clients:             {:.2}  (target >= 0.80)",
        many.ratio(|f| f.rate)
    );
    println!(
        "connect+hello / connect+round trip, p50:  {:.2}",
        conn.ratio(|f| f.p50)
    );
    println!(
        "memory per idle connection ({IDLE} open): raw echo {:.1} KiB, wardend {:.1} KiB, ratio {:.2}  (target <= 8 KiB)",
        raw_mem / 1024.0,
        wd_mem / 1024.0,
        wd_mem / raw_mem
    );
}

const ROUNDS: usize = 5;

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

/// The same measurement of both servers, round after round.
struct Pair {
    raw: Vec<Figures>,
    wardend: Vec<Figures>,
}

impl Pair {
    fn measure(echo: &Server, wardend: &Server, run: impl Fn(&Server) -> Figures) -> Pair {
        let mut p = Pair {
            raw: Vec::new(),
            wardend: Vec::new(),
        };
        for _ in 0..ROUNDS {
            p.raw.push(run(echo));
            p.wardend.push(run(wardend));
        }
        p
    }

    fn report(&self, raw: &str, wardend: &str) {
        report(raw, &median_figures(&self.raw));
        report(wardend, &median_figures(&self.wardend));
    }

    /// Median over rounds of wardend's figure divided by the raw figure of the same round.
    fn ratio(&self, figure: impl Fn(&Figures) -> f64) -> f64 {
        median(
            self.wardend
                .iter()
                .zip(&self.raw)
                .map(|(w, r)| figure(w) / figure(r))
                .collect(),
        )
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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
}

impl Server {
    fn echo(dir: &Path) -> Server {
        let socket = dir.join("echo.sock");
        let child = Command::new(std::env::current_exe().unwrap())
            .env("WARDEN_BENCH_ECHO", &socket)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server::ready(child, socket, false)
    }

    fn wardend(dir: &Path) -> Server {
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
        let child = Command::new(env!("CARGO_BIN_EXE_wardend"))
            .arg("--config")
            .arg(&config)
            .env("WARDEN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server::ready(child, dir.join("run/wardend.sock"), true)
    }

    fn external(socket: PathBuf, hello: bool) -> Server {
        Server {
            child: None,
            socket,
            hello,
        }
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    fn ready(child: Child, socket: PathBuf, hello: bool) -> Server {
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
        "{name:<36} {:>9.1} {:>9.1} {:>10.0} {:>13.1}",
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

fn concurrent(s: &Server, per_client: usize) -> Figures {
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let threads: Vec<_> = (0..CLIENTS)
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
