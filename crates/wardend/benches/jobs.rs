//! Job benchmark: what running a trivial action through warden costs, against what it costs
//! without warden, measured in the same run.
//!
//! Run: `cargo bench -p wardend --bench jobs`
//! (with `WARDEN_BENCH_BEFORE=DIR`, a directory holding `wardend` and `warden` of an older build,
//! every contender runs for both builds, alternating in each round).
//!
//! 1. `job.start` + `job.wait` of an action running `/bin/true`, through the daemon (ledger,
//!    cgroup, supervision, status pipe included), against a bare spawn-and-wait of `/bin/true`
//!    from this program.
//! 2. Starting the CLI: `warden --version` (no daemon) and `warden status` (connect, `hello`,
//!    `status`, print), against the same bare spawn.
//! 3. The whole CLI path, `warden run true`, against `sudo -n true` (when sudo is installed and
//!    lets this user run without a password).
//!
//! The daemon is the real `wardend` binary in a process of its own. The CLI is `warden` built
//! the way the packages build it (statically linked, see [`warden_cli`]). Rounds alternate the
//! contenders; figures are medians of the rounds, and ratios medians of per-round ratios (how
//! long a process takes to start drifts on a virtual machine; a round and the one beside it see
//! the same), with the lowest and highest round beside them.

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Map;
use support::{Daemon, median};
use warden_client::Client;
use warden_proto::jobs::JobState;

const ROUNDS: usize = 11;
const PER_ROUND: usize = 200;
const CLI_PER_ROUND: usize = 40;

fn quantile(samples: &mut [Duration], q: f64) -> f64 {
    samples.sort_unstable();
    samples[((samples.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6
}

/// p50 and p99 in µs of `n` runs of `op`.
fn measure(n: usize, mut op: impl FnMut()) -> (f64, f64) {
    let mut samples: Vec<Duration> = (0..n)
        .map(|_| {
            let t = Instant::now();
            op();
            t.elapsed()
        })
        .collect();
    (quantile(&mut samples, 0.5), quantile(&mut samples, 0.99))
}

/// The median, lowest and highest over rounds of `a`'s p50 divided by `b`'s.
fn ratio(a: &[(f64, f64)], b: &[(f64, f64)]) -> (f64, f64, f64) {
    let per_round: Vec<f64> = a.iter().zip(b).map(|(a, b)| a.0 / b.0).collect();
    let low = per_round.iter().copied().fold(f64::INFINITY, f64::min);
    let high = per_round.iter().copied().fold(0.0, f64::max);
    (median(per_round), low, high)
}

fn report(name: &str, rounds: &[(f64, f64)]) {
    let p50 = median(rounds.iter().map(|r| r.0).collect());
    let p99 = median(rounds.iter().map(|r| r.1).collect());
    println!("{name:<56} {p50:>8.0} {p99:>8.0}");
}

fn print_ratio(name: &str, label: &str, (mid, low, high): (f64, f64, f64), target: &str) {
    let name = format!("{name}{}", tag(label));
    println!("{name:<56} {mid:>5.2}  (rounds {low:.2} to {high:.2}){target}");
}

/// " [after]" or " [before]" when two builds are compared, else nothing.
fn tag(label: &str) -> String {
    if label.is_empty() {
        String::new()
    } else {
        format!(" [{label}]")
    }
}

fn sudo_works() -> bool {
    Command::new("sudo")
        .args(["-n", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// This tree's `warden` CLI as the packages ship it: `dist/deb/build` links it statically
/// (`-C target-feature=+crt-static` on the binary alone, which halves its start on this kind of
/// machine: no dynamic loader, no shared libraries to map and relocate). Built here the same
/// way (`--release`: `cargo rustc --profile bench` would build the test harness); cargo says
/// where it put it.
fn warden_cli() -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "rustc",
            "--release",
            "-p",
            "warden",
            "--bin",
            "warden",
            "--message-format",
            "json",
            "--",
            "-C",
            "target-feature=+crt-static",
        ])
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "cannot build the warden CLI");
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "warden")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .expect("cargo named no warden executable")
}

const CONFIG: &str = r#"[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[limits]
requests_per_second = 1000000
burst = 1000000
uid_requests_per_second = 1000000
uid_burst = 1000000
[jobs]
keep_finished = 1000
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
mutating = false
"#;

/// One build under test: its daemon (in a directory of its own), its CLI and a client.
struct Build {
    label: &'static str,
    cli: PathBuf,
    socket: PathBuf,
    client: Client,
    // Dropped after the client: stops the daemon, then removes its directory.
    _daemon: Daemon,
    _dir: tempfile::TempDir,
}

fn run_cli(cli: &Path, args: &[&str], socket: Option<&Path>) {
    let mut c = Command::new(cli);
    if let Some(socket) = socket {
        c.arg("--socket").arg(socket);
    }
    let s = c
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(s.success(), "{} {args:?} failed", cli.display());
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let daemons = support::builds("wardend", Path::new(env!("CARGO_BIN_EXE_wardend")));
    let clis = support::builds("warden", &warden_cli());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut builds: Vec<Build> = daemons
        .into_iter()
        .zip(clis)
        .map(|((label, daemon), (_, cli))| {
            let dir = warden_testkit::safe_tempdir();
            let daemon = Daemon::start_bin(&daemon, dir.path(), CONFIG);
            let client = rt.block_on(daemon.connect());
            Build {
                label,
                cli,
                socket: daemon.socket.clone(),
                client,
                _daemon: daemon,
                _dir: dir,
            }
        })
        .collect();
    let job = |client: &mut Client| {
        rt.block_on(async {
            let id = client
                .start("true", &Map::new(), None)
                .await
                .unwrap()
                .job_id;
            let r = client.wait(id.as_str(), 30_000).await.unwrap();
            assert_eq!(r.state, JobState::Succeeded);
        })
    };
    let bare = || {
        let s = Command::new("/bin/true").status().unwrap();
        assert!(s.success());
    };
    // Warm up every path (page cache, ledger, cgroup tree).
    for b in &mut builds {
        measure(50, || job(&mut b.client));
        measure(10, || run_cli(&b.cli, &["status"], Some(&b.socket)));
        measure(10, || run_cli(&b.cli, &["run", "true"], Some(&b.socket)));
    }
    measure(50, bare);

    println!(
        "warden job benchmark (same machine, same run; medians of {ROUNDS} alternating rounds)"
    );
    println!("{:<56} {:>8} {:>8}", "", "p50 µs", "p99 µs");
    let n = builds.len();
    let mut spawn_rounds = Vec::new();
    let mut job_rounds = vec![Vec::new(); n];
    for round in 0..ROUNDS {
        spawn_rounds.push(measure(PER_ROUND, bare));
        // Every other round starts with the other build.
        for i in (0..n).map(|i| (i + round) % n) {
            job_rounds[i].push(measure(PER_ROUND, || job(&mut builds[i].client)));
        }
    }
    report("spawn + wait of /bin/true (no warden)", &spawn_rounds);
    for (b, rounds) in builds.iter().zip(&job_rounds) {
        let name = format!("job.start + job.wait of /bin/true{}", tag(b.label));
        report(&name, rounds);
    }

    let sudo = sudo_works().then_some(|| {
        let s = Command::new("sudo").args(["-n", "true"]).status().unwrap();
        assert!(s.success());
    });
    let mut bare_cli_rounds = Vec::new();
    let (mut start_rounds, mut status_rounds, mut run_rounds) = (
        vec![Vec::new(); n],
        vec![Vec::new(); n],
        vec![Vec::new(); n],
    );
    let mut sudo_rounds = Vec::new();
    for round in 0..ROUNDS {
        bare_cli_rounds.push(measure(CLI_PER_ROUND, bare));
        for i in (0..n).map(|i| (i + round) % n) {
            let b = &builds[i];
            start_rounds[i].push(measure(CLI_PER_ROUND, || {
                run_cli(&b.cli, &["--version"], None);
            }));
            status_rounds[i].push(measure(CLI_PER_ROUND, || {
                run_cli(&b.cli, &["status"], Some(&b.socket));
            }));
            run_rounds[i].push(measure(CLI_PER_ROUND, || {
                run_cli(&b.cli, &["run", "true"], Some(&b.socket));
            }));
        }
        if let Some(sudo) = &sudo {
            sudo_rounds.push(measure(CLI_PER_ROUND, sudo));
        }
    }
    report(
        "spawn + wait of /bin/true (beside the CLI rounds)",
        &bare_cli_rounds,
    );
    for (i, b) in builds.iter().enumerate() {
        let t = tag(b.label);
        report(
            &format!("`warden --version` (no daemon){t}"),
            &start_rounds[i],
        );
        report(&format!("`warden status`{t}"), &status_rounds[i]);
        report(
            &format!("`warden run true` (whole CLI path){t}"),
            &run_rounds[i],
        );
    }
    if sudo.is_some() {
        report("`sudo -n true`", &sudo_rounds);
    }

    println!();
    println!("ratios of p50s, median over rounds:");
    for (i, b) in builds.iter().enumerate() {
        print_ratio(
            "job.start + job.wait / spawn + wait",
            b.label,
            ratio(&job_rounds[i], &spawn_rounds),
            "  target <= 1.25",
        );
    }
    for (i, b) in builds.iter().enumerate() {
        print_ratio(
            "warden --version / spawn + wait",
            b.label,
            ratio(&start_rounds[i], &bare_cli_rounds),
            "  target <= 1.2",
        );
    }
    for (i, b) in builds.iter().enumerate() {
        print_ratio(
            "warden status / spawn + wait",
            b.label,
            ratio(&status_rounds[i], &bare_cli_rounds),
            "  target <= 2",
        );
    }
    if sudo.is_some() {
        for (i, b) in builds.iter().enumerate() {
            print_ratio(
                "warden run true / sudo -n true",
                b.label,
                ratio(&run_rounds[i], &sudo_rounds),
                "",
            );
        }
    } else {
        println!("warden run / sudo: sudo is not installed or asks for a password here");
    }
}
