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
            .any(|l| l.starts_with("connections  1 open, 1 accepted (max 64 + 8 for admins, 16 per uid; idle ones closed after 300000 ms)")),
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
[[action]]
name = "greet"
argv = ["/bin/sh", "-c", "echo hello; echo world"]
tier = "read_only"
mutating = false
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

/// Starts `action` detached and returns its job id.
fn detached(sock: &str, action: &str, params: &[&str]) -> String {
    let mut args = vec!["--socket", sock, "run", action, "--detach"];
    args.extend_from_slice(params);
    let out = warden(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = text(&out.stdout).trim().to_owned();
    assert!(id.starts_with("job_"), "{id}");
    id
}

/// Waits until job `id` has ended.
fn wait_for(sock: &str, id: &str) {
    let params = format!("{{\"job_id\":\"{id}\",\"timeout_ms\":30000}}");
    let out = warden(&["--socket", sock, "call", "job.wait", &params]);
    assert!(out.status.success(), "{}", text(&out.stdout));
}

/// The `error` object of a `--json` failure, checked to hold exactly the documented members.
fn json_error(out: &Output) -> Value {
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: stdout {:?}", text(&out.stdout)));
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["error"], "{v}");
    let mut keys: Vec<&str> = v["error"]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(keys, ["correlation_id", "kind", "message"], "{v}");
    assert!(v["error"]["kind"].is_string() && v["error"]["message"].is_string());
    v["error"].clone()
}

/// Pins: `warden job ID` exits with the job's outcome as the README says (0 succeeded,
/// 5 failed, 6 cancelled), 10 while it has not ended, with and without --json.
#[test]
fn job_exits_with_the_jobs_state() {
    let dir = warden_testkit::safe_tempdir();
    let d = job_daemon(dir.path());
    let sock = d.socket().to_str().unwrap().to_owned();

    let ok = detached(&sock, "count", &["code=0"]);
    let failed = detached(&sock, "count", &["code=3"]);
    let sleepy = detached(&sock, "sleepy", &[]);
    wait_for(&sock, &ok);
    wait_for(&sock, &failed);
    for (id, code, state) in [(&ok, 0, "succeeded"), (&failed, 5, "failed")] {
        let out = warden(&["--socket", &sock, "job", id]);
        assert_eq!(
            out.status.code(),
            Some(code),
            "{state}: {}",
            text(&out.stdout)
        );
        assert!(text(&out.stdout).contains(&format!("state      {state}")));
        let out = warden(&["--socket", &sock, "--json", "job", id]);
        assert_eq!(out.status.code(), Some(code), "{state} with --json");
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["state"], state);
    }
    let out = warden(&["--socket", &sock, "job", &sleepy]);
    assert_eq!(out.status.code(), Some(10), "a job not ended yet");
    let out = warden(&["--socket", &sock, "cancel", &sleepy]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = warden(&["--socket", &sock, "--json", "job", &sleepy]);
    assert_eq!(out.status.code(), Some(6), "a cancelled job");
}

/// Pins: `warden logs --json` prints the output as one JSON log chunk, and with --follow one
/// chunk per line, instead of ignoring --json.
#[test]
fn logs_json_prints_chunks() {
    let dir = warden_testkit::safe_tempdir();
    let d = job_daemon(dir.path());
    let sock = d.socket().to_str().unwrap().to_owned();
    let id = detached(&sock, "greet", &[]);
    wait_for(&sock, &id);

    let out = warden(&["--socket", &sock, "logs", &id]);
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    let out = warden(&["--socket", &sock, "--json", "logs", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {:?}", text(&out.stdout)));
    assert_eq!(v["job_id"], id.as_str());
    assert_eq!(v["data"], "hello\nworld\n");
    assert_eq!(
        (v["from"].as_u64(), v["next"].as_u64()),
        (Some(0), Some(12))
    );
    assert_eq!(v["ended"], true);

    let out = warden(&["--socket", &sock, "--json", "logs", "--follow", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut data = String::new();
    for line in text(&out.stdout).lines() {
        let c: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
        assert_eq!(c["job_id"], id.as_str());
        data.push_str(c["data"].as_str().unwrap());
    }
    assert_eq!(data, "hello\nworld\n", "{}", text(&out.stdout));
}

/// Pins: `warden logs --follow` of a job that has just ended prints all its output, although
/// the daemon may answer before its last output notification arrives.
#[test]
fn logs_follow_of_an_ended_job_prints_everything() {
    let dir = warden_testkit::safe_tempdir();
    let d = job_daemon(dir.path());
    let sock = d.socket().to_str().unwrap().to_owned();
    let id = detached(&sock, "greet", &[]);
    wait_for(&sock, &id);
    let out = warden(&["--socket", &sock, "logs", "--follow", &id]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
}

/// Pins: under --json every failure, from the daemon, the socket, the CLI or clap, is one
/// object `{"error": {"kind", "message", "correlation_id"}}` on stdout with the documented exit
/// status; without --json it is a line on stderr and stdout stays empty.
#[test]
fn json_errors_have_one_shape_and_documented_exit_statuses() {
    let dir = warden_testkit::safe_tempdir();
    let none = dir.path().join("none.sock");
    let out = warden(&["--socket", none.to_str().unwrap(), "--json", "status"]);
    assert_eq!(out.status.code(), Some(4));
    let e = json_error(&out);
    assert_eq!(e["kind"], "unavailable");
    assert_eq!(e["correlation_id"], Value::Null);

    let d = job_daemon(dir.path());
    let sock = d.socket().to_str().unwrap().to_owned();
    let never = "job_0000000000000000";
    for args in [
        vec!["job", never],
        vec!["cancel", never],
        vec!["logs", never],
        vec!["logs", "--follow", never],
    ] {
        let mut argv = vec!["--socket", sock.as_str(), "--json"];
        argv.extend_from_slice(&args);
        let out = warden(&argv);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let e = json_error(&out);
        assert_eq!(
            (e["kind"].as_str(), e["message"].as_str()),
            (Some("not_found"), Some("no such job")),
            "{args:?}"
        );
        assert_eq!(e["correlation_id"].as_str().unwrap().len(), 16, "{e}");
        let mut argv = vec!["--socket", sock.as_str()];
        argv.extend_from_slice(&args);
        let out = warden(&argv);
        assert_eq!(out.status.code(), Some(1));
        assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
        assert!(text(&out.stderr).starts_with("warden: not_found: no such job (correlation id "));
    }

    for args in [
        vec!["run", "count", "code=x"],
        vec!["run", "count", "colour=red"],
        vec!["frobnicate"],
        vec!["status", "--no-such-flag"],
        vec!["policy", "explain", "--uid", "0", "run"],
    ] {
        let mut argv = vec!["--socket", sock.as_str(), "--json"];
        argv.extend_from_slice(&args);
        let out = warden(&argv);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let e = json_error(&out);
        assert_eq!(e["kind"], "usage", "{args:?}");
        assert_eq!(e["correlation_id"], Value::Null);
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
}

/// Pins: `warden host identity` prints the machine id, its source and the degraded note for a
/// host whose only signal is its machine-id fixture, and `--json` prints the wire result.
#[test]
fn host_identity_prints_the_machine_id_and_its_source() {
    if !warden_testkit::root_or_skip("host_identity_prints_the_machine_id_and_its_source") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    std::fs::write(
        dir.path().join("machine-id"),
        "3d1219c7c4c5404aaa1f6d2a48adfda4\n",
    )
    .unwrap();
    let text_conf = warden_testkit::config(
        "[daemon]\nruntime_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\n\
         [[listener]]\npath = \"{dir}/run/w.sock\"\nmode = \"0600\"\n\
         [fleet.identity]\nproduct_uuid = \"{dir}/none\"\nboard_serial = \"{dir}/none\"\n\
         disk_serial = \"{dir}/none\"\nmachine_id = \"{dir}/machine-id\"\n",
        dir.path(),
    );
    let d =
        Daemon::spawn_thread(Settings::from_toml(&text_conf, "test", DaemonMode::System).unwrap())
            .unwrap();
    let sock = d.socket().to_str().unwrap().to_owned();

    let out = warden(&["--socket", &sock, "--json", "host", "identity"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["source"], "machine_id");
    assert_eq!(v["degraded"], true);
    let id = v["machine_id"].as_str().unwrap();
    assert!(id.starts_with("muid_") && id.len() == 69, "{id}");

    let out = warden(&["--socket", &sock, "host", "identity"]);
    let s = text(&out.stdout);
    assert!(
        s.starts_with(&format!("machine id  {id}\nsource      machine_id\n")),
        "{s}"
    );
    assert!(
        s.contains("degraded    only /etc/machine-id was usable"),
        "{s}"
    );
}
