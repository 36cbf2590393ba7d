//! The CLI's output as an administrator meets it: every time in RFC 3339 UTC, an empty list
//! said in words, `--json` honoured by every subcommand, and no colour under `NO_COLOR`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use clap::CommandFactory;
use serde_json::Value;
use warden_proto::messages::DaemonMode;
use wardend::{Daemon, DaemonThread, Settings};

const WARDEN: &str = env!("CARGO_BIN_EXE_warden");

fn daemon(dir: &std::path::Path, extra: &str) -> DaemonThread {
    let text = warden_testkit::config(
        &format!(
            "[daemon]\nruntime_dir = \"{{dir}}/run\"\nstate_dir = \"{{dir}}/state\"\n\
             [[listener]]\npath = \"{{dir}}/run/w.sock\"\nmode = \"0600\"\n{extra}"
        ),
        dir,
    );
    Daemon::spawn_thread(Settings::from_toml(&text, "test", DaemonMode::System).unwrap()).unwrap()
}

/// An action, a resource kind and an ops toggle, so that every subcommand has something to show.
const FULL: &str = r#"[ops]
storage = true
[[action]]
name = "greet"
argv = ["/bin/sh", "-c", "echo hello"]
tier = "read_only"
mutating = false
[[resource]]
kind = "workspace"
base_dir = "{dir}/ws"
max_per_uid = 2
tier = "read_only"
"#;

fn warden(sock: &str, args: &[&str]) -> Output {
    Command::new(WARDEN)
        .env_remove("WARDEN_SOCKET")
        .arg("--socket")
        .arg(sock)
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Whether `s` is a time as the CLI prints every time: `2026-12-06T05:25:15Z`.
fn is_utc_seconds(s: &str) -> bool {
    s.len() == 20 && s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok()
}

/// Whether `s` is a time as the daemon writes every time: `2026-12-06T05:25:15.123Z`.
fn is_utc_millis(s: &str) -> bool {
    s.len() == 24 && s.ends_with('Z') && humantime::parse_rfc3339(s).is_ok()
}

/// Starts `greet` and waits for it to end; returns its id.
fn finished_job(sock: &str) -> String {
    let out = warden(sock, &["run", "greet", "--detach"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    let params = format!("{{\"job_id\":\"{id}\",\"timeout_ms\":30000}}");
    assert!(
        warden(sock, &["call", "job.wait", &params])
            .status
            .success()
    );
    id
}

/// Pins: `warden jobs`, `warden job`, `warden lockdown`, `warden resource` and `warden audit
/// tail` print every time as RFC 3339 UTC to the second, and the JSON of jobs, resources and a
/// lockdown carries RFC 3339 UTC with milliseconds alike.
#[test]
fn times_print_as_rfc3339_utc() {
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path(), FULL);
    let sock = d.socket().to_str().unwrap().to_owned();
    let id = finished_job(&sock);

    let out = text(&warden(&sock, &["jobs"]).stdout);
    let row = out.lines().find(|l| l.starts_with(&id)).unwrap();
    assert!(
        is_utc_seconds(row.split_whitespace().last().unwrap()),
        "{out}"
    );

    let out = text(&warden(&sock, &["job", &id]).stdout);
    for label in ["created", "started", "ended"] {
        let line = out.lines().find(|l| l.starts_with(label)).unwrap();
        assert!(
            is_utc_seconds(line.split_whitespace().last().unwrap()),
            "{out}"
        );
    }
    let v: Value = serde_json::from_slice(&warden(&sock, &["--json", "job", &id]).stdout).unwrap();
    for key in ["created_at", "started_at", "ended_at"] {
        assert!(is_utc_millis(v[key].as_str().unwrap()), "{v}");
    }

    let out = text(&warden(&sock, &["resource", "create", "workspace", "w1"]).stdout);
    let v: Value = serde_json::from_slice(
        &warden(&sock, &["--json", "resource", "get", "workspace", "w1"]).stdout,
    )
    .unwrap();
    assert!(is_utc_millis(v["created"].as_str().unwrap()), "{v}");
    let created = out.split("created ").nth(1).unwrap().trim();
    assert!(is_utc_seconds(created), "{out}");

    let out = text(&warden(&sock, &["lockdown", "engage", "--reason", "drill"]).stdout);
    let since = out
        .split("since ")
        .nth(1)
        .unwrap()
        .split(':')
        .take(3)
        .collect::<Vec<_>>();
    assert!(is_utc_seconds(&since.join(":")), "{out}");
    let v: Value = serde_json::from_slice(&warden(&sock, &["--json", "status"]).stdout).unwrap();
    assert!(
        is_utc_millis(v["lockdown"]["since"].as_str().unwrap()),
        "{v}"
    );
    let out = text(&warden(&sock, &["status"]).stdout);
    assert!(out.contains("LOCKDOWN     by uid 0 since 20"), "{out}");
    assert!(warden(&sock, &["lockdown", "release"]).status.success());

    let out = text(&warden(&sock, &["audit", "tail", "-n", "5"]).stdout);
    assert!(!out.is_empty());
    for line in out.lines() {
        let ts = line.split_whitespace().nth(1).unwrap();
        assert!(is_utc_seconds(ts), "{out}");
    }
}

/// Pins: an empty list is a sentence in human output and an empty array under `--json`.
#[test]
fn an_empty_list_says_so() {
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path(), "");
    let sock = d.socket().to_str().unwrap().to_owned();
    let cases: [(&[&str], &str, &str); 5] = [
        (&["jobs"], "no jobs\n", "/jobs"),
        (&["resource", "list"], "no resources\n", "/resources"),
        (&["alerts"], "no alerts\n", "/alerts"),
        (&["actions"], "no actions you could run\n", "/actions"),
        (
            &["audit", "tail", "--job", "job_none"],
            "no audit records\n",
            "",
        ),
    ];
    for (args, words, pointer) in cases {
        let out = warden(&sock, args);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        assert_eq!(text(&out.stdout), words, "{args:?}");
        let mut json = vec!["--json"];
        json.extend_from_slice(args);
        let out = warden(&sock, &json);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            v.pointer(pointer),
            Some(&Value::Array(vec![])),
            "{args:?}: {v}"
        );
    }
}

/// The arguments that make each leaf subcommand of `warden` do its work here; `{job}` is a job
/// that has ended.
fn arguments() -> BTreeMap<&'static str, Vec<&'static str>> {
    BTreeMap::from([
        ("status", vec![]),
        ("whoami", vec![]),
        ("version", vec![]),
        ("actions", vec![]),
        ("run", vec!["greet"]),
        ("jobs", vec!["--all"]),
        ("job", vec!["{job}"]),
        ("cancel", vec!["{job}"]),
        ("ops", vec![]),
        ("ops set", vec!["storage", "on", "--reason", "test"]),
        ("events", vec![]),
        ("policy reload", vec![]),
        ("policy explain", vec!["--uid", "0", "status"]),
        ("doctor", vec![]),
        ("host identity", vec![]),
        ("alerts", vec![]),
        ("lockdown engage", vec!["--reason", "test"]),
        ("lockdown release", vec![]),
        ("resource create", vec!["workspace", "w1"]),
        ("resource get", vec!["workspace", "w1"]),
        ("resource list", vec![]),
        ("resource delete", vec!["workspace", "w1"]),
        ("audit verify", vec![]),
        ("audit tail", vec![]),
        ("logs", vec!["{job}"]),
        ("call", vec!["status"]),
    ])
}

/// Every leaf subcommand of `cmd`, as its words after the binary's name.
fn leaves(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
    let subs: Vec<&clap::Command> = cmd
        .get_subcommands()
        .filter(|s| s.get_name() != "help")
        .collect();
    // A command whose subcommand is optional (`warden ops`) is a leaf too.
    if subs.is_empty() || !cmd.is_subcommand_required_set() && !prefix.is_empty() {
        out.push(prefix.trim().to_owned());
    }
    for s in subs {
        leaves(s, &format!("{prefix} {}", s.get_name()), out);
    }
}

/// `events --json` until a job's events went by: one JSON object per line.
fn events_json(sock: &str) -> Output {
    let child = Command::new(WARDEN)
        .env_remove("WARDEN_SOCKET")
        .args(["--socket", sock, "--json", "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    finished_job(sock);
    std::thread::sleep(Duration::from_millis(300));
    Command::new("kill")
        .arg("-INT")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    child.wait_with_output().unwrap()
}

/// Pins: every subcommand of `warden` (found by walking the clap tree, so a new one cannot be
/// forgotten) prints parseable JSON on stdout under `--json`, streams one object per line.
#[test]
fn every_subcommand_prints_json() {
    let dir = warden_testkit::safe_tempdir();
    let d = daemon(dir.path(), FULL);
    let sock = d.socket().to_str().unwrap().to_owned();
    let job = finished_job(&sock);
    let mut paths = Vec::new();
    leaves(&warden::cli::Cli::command(), "", &mut paths);
    let table = arguments();
    let mut seen: Vec<&str> = Vec::new();
    for path in &paths {
        let Some(extra) = table.get(path.as_str()) else {
            panic!("`warden {path}` has no arguments in this test's table: add it");
        };
        seen.push(path);
        let out = if path == "events" {
            events_json(&sock)
        } else {
            let mut args = vec!["--json"];
            args.extend(path.split(' '));
            args.extend(
                extra
                    .iter()
                    .map(|a| if *a == "{job}" { job.as_str() } else { a }),
            );
            warden(&sock, &args)
        };
        let stdout = text(&out.stdout);
        assert!(
            !stdout.trim().is_empty(),
            "`warden {path}` printed nothing: {}",
            text(&out.stderr)
        );
        if path == "events" || path == "call" {
            for line in stdout.lines() {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("`warden {path}`: {e}: {line}"));
            }
        } else {
            serde_json::from_str::<Value>(&stdout)
                .unwrap_or_else(|e| panic!("`warden {path} --json`: {e}: {stdout}"));
        }
    }
    let mut listed: Vec<&str> = table.keys().copied().collect();
    listed.sort_unstable();
    seen.sort_unstable();
    assert_eq!(listed, seen, "the table names only subcommands that exist");
}

/// Runs `cmd` on a pseudo-terminal (util-linux `script`), so that colour would be on; returns
/// what the terminal saw.
pub fn on_a_terminal(cmd: &str, no_color: Option<&str>) -> String {
    let mut c = Command::new("script");
    c.args(["-qec", cmd, "/dev/null"]).env_remove("NO_COLOR");
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    text(&c.output().unwrap().stdout)
}

/// Pins: `warden --help` is coloured on a terminal, and plain when NO_COLOR is set non-empty.
#[test]
fn no_color_makes_a_terminal_plain() {
    let cmd = format!("{WARDEN} --help");
    assert!(
        on_a_terminal(&cmd, None).contains("\x1b["),
        "coloured on a terminal"
    );
    assert!(
        on_a_terminal(&cmd, Some("")).contains("\x1b["),
        "an empty NO_COLOR is unset"
    );
    let plain = on_a_terminal(&cmd, Some("1"));
    assert!(
        plain.contains("Usage:") && !plain.contains("\x1b["),
        "{plain:?}"
    );
}
