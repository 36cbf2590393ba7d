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
