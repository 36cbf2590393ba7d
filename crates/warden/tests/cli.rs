//! The CLI as a script or a person uses it: documented exit codes, short human output, `--json`,
//! and `WARDEN_SOCKET`.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use serde_json::Value;
use warden_proto::messages::DaemonMode;
use wardend::{Daemon, DaemonThread, Settings};

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

fn daemon(dir: &std::path::Path) -> DaemonThread {
    let text = warden_testkit::config(
        "[daemon]\nruntime_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\n\
         [[listener]]\npath = \"{dir}/run/w.sock\"\nmode = \"0600\"\n[ops]\nstorage = true\n",
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

fn warden(args: &[&str]) -> Output {
    Command::new(WARDEN)
        .env_remove("WARDEN_SOCKET")
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn no_daemon_exits_4_with_an_actionable_message() {
    let dir = warden_testkit::safe_tempdir();
    let sock = dir.path().join("none.sock");
    let out = warden(&["--socket", sock.to_str().unwrap(), "status"]);
    assert_eq!(out.status.code(), Some(4));
    assert!(text(&out.stderr).contains(&format!("wardend is not running at {}", sock.display())));
    let out = warden(&["--socket", sock.to_str().unwrap(), "--json", "whoami"]);
    assert_eq!(out.status.code(), Some(4));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not running")
    );
    // version still reports the CLI's own version.
    let out = warden(&["--socket", sock.to_str().unwrap(), "version"]);
    assert_eq!(out.status.code(), Some(4));
    assert_eq!(
        text(&out.stdout),
        format!("warden {}\n", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(warden(&["frobnicate"]).status.code(), Some(2));
    assert_eq!(warden(&["status", "--no-such-flag"]).status.code(), Some(2));
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let out = warden(&[
        "--socket",
        d.socket().to_str().unwrap(),
        "call",
        "status",
        "[1]",
    ]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn human_output_is_short_and_json_is_the_wire_result() {
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let sock = d.socket().to_str().unwrap().to_owned();

    let out = warden(&["--socket", &sock, "status"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    let lines: Vec<&str> = s.lines().collect();
    assert!(
        lines[0].starts_with("wardend 0.1.0 (protocol 1, system), up "),
        "{s}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("connections  1 open, 1 accepted (max 64, 16 per uid)")),
        "{s}"
    );
    assert!(
        lines
            .iter()
            .any(|l| *l == format!("listeners    {sock} (up to admin)")),
        "{s}"
    );
    assert!(lines.contains(&"violations   none"), "{s}");
    assert!(lines.len() <= 8, "status stays short: {s}");

    let out = warden(&["--socket", &sock, "--json", "status"]);
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["limits"]["max_connections"], 64);
    assert_eq!(v["mode"], "system");

    let out = warden(&["--socket", &sock, "whoami"]);
    let s = text(&out.stdout);
    assert!(
        s.contains("tier     admin: admin as uid 0") || !warden_testkit::is_root(),
        "{s}"
    );
    assert!(s.contains(&format!("listener {sock} (up to admin)")), "{s}");

    let out = warden(&["--socket", &sock, "version"]);
    assert_eq!(
        text(&out.stdout),
        format!(
            "warden {v}\nwardend {v} (protocol 1)\n",
            v = env!("CARGO_PKG_VERSION")
        )
    );
}

#[test]
fn warden_socket_names_the_socket_and_call_prints_raw_answers() {
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path());
    let out = Command::new(WARDEN)
        .env("WARDEN_SOCKET", d.socket())
        .args(["call", "health", "--repeat", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let answers: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 3);
    assert!(answers.iter().all(|a| a["result"]["status"] == "ok"));

    let out = Command::new(WARDEN)
        .env("WARDEN_SOCKET", d.socket())
        .args(["call", "nope"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let a: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["error"]["code"], -32601);
}

fn job_daemon(dir: &std::path::Path) -> DaemonThread {
    let text = warden_testkit::config(
        r#"[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[[listener]]
path = "{dir}/run/w.sock"
mode = "0600"
[[action]]
name = "count"
argv = ["/bin/sh", "-c", "for i in 1 2 3; do echo \"progress $((i * 33)) step $i\" >&3; sleep 0.1; done; exit \"$1\"", "count", "{code}"]
tier = "read_only"
mutating = false
[action.params.code]
type = "int"
min = 0
max = 9
[[action]]
name = "sleepy"
argv = ["/bin/sleep", "300"]
tier = "read_only"
mutating = false
[action.cancel]
grace_s = 1
"#,
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

/// Pins: `warden run` follows the job, prints progress as plain lines when not on a terminal,
/// and exits with the code of the job's outcome.
#[test]
fn run_follows_the_job_and_exits_with_its_outcome() {
    let dir = warden_testkit::safe_tempdir();
    let d = job_daemon(dir.path());
    let sock = d.socket().to_str().unwrap().to_owned();
    let out = warden(&["--socket", &sock, "run", "count", "code=0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let progress = text(&out.stderr);
    assert!(
        progress.contains(" 33% step: 1") && progress.contains(" 99% step: 3"),
        "{progress}"
    );
    assert!(
        text(&out.stdout).contains("count succeeded in"),
        "{}",
        text(&out.stdout)
    );

    let out = warden(&["--socket", &sock, "run", "count", "code=3"]);
    assert_eq!(out.status.code(), Some(5), "a failed job exits 5");
    assert!(text(&out.stdout).contains("exited with status 3"));

    let out = warden(&["--socket", &sock, "--json", "run", "count", "code=0"]);
    let record: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(record["state"], "succeeded");

    let out = warden(&["--socket", &sock, "run", "count", "colour=red"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("has no parameter `colour`; it takes: code"));
    let out = warden(&["--socket", &sock, "run", "count", "code=x"]);
    assert_eq!(out.status.code(), Some(2));

    let out = warden(&["--socket", &sock, "run", "sleepy", "--detach"]);
    let id = text(&out.stdout).trim().to_owned();
    assert!(id.starts_with("job_"));
    let out = warden(&["--socket", &sock, "cancel", &id]);
    assert!(
        text(&out.stdout).starts_with(&format!("{id} cancelled")),
        "{}",
        text(&out.stdout)
    );
}

/// Pins: Ctrl-C with --cancel-on-interrupt cancels the job and the exit status says so.
#[test]
fn ctrl_c_with_cancel_on_interrupt_cancels_the_job() {
    let dir = warden_testkit::safe_tempdir();
    let d = job_daemon(dir.path());
    let child = Command::new(WARDEN)
        .env_remove("WARDEN_SOCKET")
        .args([
            "--socket",
            d.socket().to_str().unwrap(),
            "run",
            "sleepy",
            "--cancel-on-interrupt",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the job runs, then interrupt the CLI as a terminal would.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let out = warden(&[
            "--socket",
            d.socket().to_str().unwrap(),
            "--json",
            "jobs",
            "--state",
            "running",
        ]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        if !v["jobs"].as_array().unwrap().is_empty() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the job never ran");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(6), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("sleepy cancelled"),
        "{}",
        text(&out.stdout)
    );
}
