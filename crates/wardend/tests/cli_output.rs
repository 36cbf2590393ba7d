//! `wardend`'s own output as an administrator meets it: `check-config --json` and
//! `doctor --json` (every subcommand, found by walking the clap tree), and log lines that are
//! plain under `NO_COLOR`.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};

use clap::CommandFactory;
use common::process::{WARDEND, write_config};
use serde_json::{Value, json};

fn wardend(args: &[&str], file: &Path) -> (Option<i32>, Value) {
    let out: Output = Command::new(WARDEND).args(args).arg(file).output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{args:?}: {e}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), v)
}

/// Pins: `check-config --json` lists the files read and every problem as an object with its
/// file, line, column and severity; no problems is an empty array; a file that cannot be read
/// is a problem without a line; the exit status is as without --json.
#[test]
fn check_config_json_lists_files_and_problems() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "");
    let name = cfg.display().to_string();
    let (code, v) = wardend(&["check-config", "--json"], &cfg);
    assert_eq!(code, Some(0));
    assert_eq!(v, json!({"valid": true, "files": [name], "problems": []}));

    let cfg = write_config(
        dir.path(),
        "[tiers]\nadmin_groups = [\"no-such-group-wdn\"]\n",
    );
    let (code, v) = wardend(&["check-config", "--json"], &cfg);
    assert_eq!(code, Some(0));
    assert_eq!(v["valid"], true);
    assert_eq!(v["problems"][0]["file"], name.as_str());
    assert_eq!(v["problems"][0]["line"], 5);
    assert_eq!(v["problems"][0]["severity"], "warning");
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-group-wdn")
    );

    let cfg = write_config(dir.path(), "[limits]\nmax_conections = 3\n");
    let (code, v) = wardend(&["check-config", "--json"], &cfg);
    assert_eq!(code, Some(1));
    assert_eq!(v["valid"], false);
    let p = &v["problems"][0];
    assert_eq!(
        (&p["line"], &p["column"], &p["severity"]),
        (&json!(5), &json!(1), &json!("error"))
    );
    assert!(
        p["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `max_conections`"),
        "{v}"
    );

    let (code, v) = wardend(
        &["check-config", "--json"],
        Path::new("/nonexistent/warden.toml"),
    );
    assert_eq!(code, Some(1));
    assert_eq!(v["valid"], false);
    assert_eq!(v["problems"][0]["line"], Value::Null);
    assert!(
        v["problems"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read"),
        "{v}"
    );
}

/// Pins: `doctor --json` prints its findings as objects with severity, what and fix, and their
/// count of errors, exiting 1 exactly when there are errors; an unreadable configuration is
/// the one error object `{"error": {"kind", "message"}}`.
#[test]
fn doctor_json_prints_findings_as_objects() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "[[listener]]\npath = \"{dir}/run/w.sock\"\n");
    let (code, v) = wardend(&["doctor", "--json"], &cfg);
    let findings = v["findings"].as_array().unwrap();
    assert!(!findings.is_empty(), "{v}");
    for f in findings {
        assert!(
            ["ok", "warning", "error"].contains(&f["severity"].as_str().unwrap()),
            "{f}"
        );
        assert!(f["what"].is_string() && f["fix"].is_string(), "{f}");
    }
    let errors = findings.iter().filter(|f| f["severity"] == "error").count();
    assert_eq!(v["errors"], errors);
    assert_eq!(code, Some(i32::from(errors > 0)), "{v}");

    let (code, v) = wardend(&["doctor", "--json"], Path::new("/nonexistent/warden.toml"));
    assert_eq!(code, Some(1));
    assert_eq!(v["error"]["kind"], "config");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("cannot read"),
        "{v}"
    );
}

/// Pins: every subcommand of `wardend` (walking the clap tree, so a new one cannot be
/// forgotten) takes --json and prints one JSON object.
#[test]
fn every_subcommand_takes_json() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "");
    let cmd = wardend::cli::Cli::command();
    let names: Vec<&str> = cmd.get_subcommands().map(|s| s.get_name()).collect();
    assert!(
        names.contains(&"check-config") && names.contains(&"doctor"),
        "{names:?}"
    );
    for name in names {
        let (_, v) = wardend(&[name, "--json"], &cfg);
        assert!(v.is_object(), "{name}: {v}");
    }
}

/// What a terminal sees of `cmd` (run on a pseudo-terminal by util-linux `script`).
fn on_a_terminal(cmd: &str, no_color: Option<&str>) -> String {
    let mut c = Command::new("script");
    c.args(["-qec", cmd, "/dev/null"]).env_remove("NO_COLOR");
    if let Some(v) = no_color {
        c.env("NO_COLOR", v);
    }
    String::from_utf8_lossy(&c.output().unwrap().stdout).into_owned()
}

/// Pins: wardend's log lines on a terminal are coloured, and plain when NO_COLOR is set
/// non-empty (https://no-color.org).
#[test]
fn no_color_makes_log_lines_plain() {
    // --dev logs to stderr; a socket under a missing directory tree makes it log an error and
    // stop (`timeout` only guards the test against a daemon that serves after all).
    let cmd = format!("timeout 30 {WARDEND} --dev --socket /nonexistent-warden-test/d/w.sock");
    let coloured = on_a_terminal(&cmd, None);
    assert!(
        coloured.contains("ERROR") && coloured.contains("\x1b["),
        "{coloured:?}"
    );
    let plain = on_a_terminal(&cmd, Some("1"));
    assert!(
        plain.contains("ERROR") && !plain.contains("\x1b["),
        "{plain:?}"
    );
}
