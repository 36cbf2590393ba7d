//! Job benchmark: what running a trivial action through warden costs, against what it costs
//! without warden, measured in the same run.
//!
//! Run: `cargo bench -p wardend --bench jobs`
//!
//! 1. `job.start` + `job.wait` of an action running `/bin/true`, through the daemon (ledger,
//!    cgroup, supervision, status pipe included), against a bare spawn-and-wait of `/bin/true`
//!    from this program.
//! 2. The whole CLI path, `warden run true`, against `sudo -n true` (when sudo is installed and
//!    lets this user run without a password).
//!
//! The daemon is the real `wardend` binary in a process of its own. The CLI is the release build
//! of `warden`, built by this benchmark if it is missing. Rounds alternate the contenders;
//! figures are medians of the rounds, and ratios medians of per-round ratios (how long a process
//! takes to start drifts on a virtual machine; a round and the one beside it see the same).

#![allow(clippy::unwrap_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Map;
use support::{Daemon, median};
use warden_proto::jobs::JobState;

const ROUNDS: usize = 5;
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

/// The median over rounds of `a`'s p50 divided by `b`'s.
fn ratio(a: &[(f64, f64)], b: &[(f64, f64)]) -> f64 {
    median(a.iter().zip(b).map(|(a, b)| a.0 / b.0).collect())
}

fn report(name: &str, rounds: &[(f64, f64)]) -> f64 {
    let p50 = median(rounds.iter().map(|r| r.0).collect());
    let p99 = median(rounds.iter().map(|r| r.1).collect());
    println!("{name:<44} {p50:>10.0} {p99:>10.0}");
    p50
}

fn sudo_works() -> bool {
    Command::new("sudo")
        .args(["-n", "true"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The release `warden` CLI beside `wardend`, built if missing.
fn warden_cli() -> PathBuf {
    let daemon = Path::new(env!("CARGO_BIN_EXE_wardend"));
    let cli = daemon.with_file_name("warden");
    if !cli.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let built = Command::new(cargo)
            .args(["build", "--release", "-p", "warden", "--bin", "warden"])
            .status()
            .unwrap();
        assert!(built.success(), "cannot build the warden CLI");
    }
    cli
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let warden = warden_cli();
    let dir = warden_testkit::safe_tempdir();
    let daemon = Daemon::start(
        dir.path(),
        r#"[daemon]
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
"#,
    );
    let socket = daemon.socket.clone();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut client = rt.block_on(daemon.connect());
    let mut through_warden = || {
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
    // Warm up both paths (page cache, ledger, cgroup tree).
    measure(50, &mut through_warden);
    measure(50, bare);

    println!(
        "warden job benchmark (same machine, same run; medians of {ROUNDS} alternating rounds)"
    );
    println!("{:<44} {:>10} {:>10}", "", "p50 µs", "p99 µs");
    let (mut spawn_rounds, mut job_rounds) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        spawn_rounds.push(measure(PER_ROUND, bare));
        job_rounds.push(measure(PER_ROUND, &mut through_warden));
    }
    report("spawn + wait of /bin/true (no warden)", &spawn_rounds);
    report("job.start + job.wait of /bin/true via wardend", &job_rounds);

    let cli = || {
        let s = Command::new(&warden)
            .arg("--socket")
            .arg(&socket)
            .args(["run", "true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    };
    let sudo = sudo_works().then_some(|| {
        let s = Command::new("sudo").args(["-n", "true"]).status().unwrap();
        assert!(s.success());
    });
    // The floor under the CLI path: starting the CLI process, without talking to anyone.
    let cli_start = || {
        let s = Command::new(&warden)
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(s.success());
    };
    measure(10, cli);
    let (mut cli_rounds, mut sudo_rounds, mut start_rounds) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        start_rounds.push(measure(CLI_PER_ROUND, cli_start));
        cli_rounds.push(measure(CLI_PER_ROUND, cli));
        if let Some(sudo) = &sudo {
            sudo_rounds.push(measure(CLI_PER_ROUND, sudo));
        }
    }
    report("`warden --version` (CLI start, no daemon)", &start_rounds);
    report("`warden run true` (whole CLI path)", &cli_rounds);
    if sudo.is_some() {
        report("`sudo -n true`", &sudo_rounds);
    }
    println!();
    println!(
        "job ratio (job.start + job.wait / spawn + wait), p50:  {:.2}  (target <= 1.5)",
        ratio(&job_rounds, &spawn_rounds)
    );
    if sudo.is_some() {
        println!(
            "CLI ratio (warden run / sudo -n true), p50:            {:.2}  (target <= 0.5)",
            ratio(&cli_rounds, &sudo_rounds)
        );
    } else {
        println!("CLI ratio: sudo is not installed or asks for a password here; not measured");
    }
    drop(client);
}
