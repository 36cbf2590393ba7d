//! The `wardend` binary as an operator runs it: `check-config`, readiness and shutdown under a
//! service manager (`sd_notify`, SIGTERM, socket activation), dev mode, and log lines that carry
//! the correlation ids clients see.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::process::{Proc, WARDEND, check_config, write_config};
use serde_json::json;
use warden_testkit::raw::{PATIENCE, RawClient};

fn wait_for(path: &Path) {
    let deadline = Instant::now() + PATIENCE;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// wardend started by `systemd-socket-activate` listening on `sock`, as systemd would.
fn socket_activated(sock: &Path, config: &Path) -> Command {
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(sock)
        .args(["-E", "WARDEN_LOG", WARDEND, "--config"])
        .arg(config);
    cmd
}

#[test]
fn check_config_passes_a_valid_file_and_prints_warnings_with_their_lines() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(
        dir.path(),
        "[tiers]\nadmin_groups = [\"no-such-group-wdn\"]\n",
    );
    let (code, out, _) = check_config(&cfg);
    assert_eq!(code, 0);
    let name = cfg.display();
    assert!(
        out.contains(&format!(
            "{name}:5: warning: group `no-such-group-wdn` does not exist"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("{name}: ok")), "{out}");
}

#[test]
fn check_config_names_the_file_key_and_line_of_errors() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "[limits]\nmax_conections = 3\n");
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!(
            "{}:5:1: unknown field `max_conections`",
            cfg.display()
        )),
        "{err}"
    );

    let cfg = write_config(
        dir.path(),
        "[[listener]]\npath = \"{dir}/a.sock\"\nmode = \"0999\"\n",
    );
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.contains(":6:8: mode `0999` must be an octal string"),
        "{err}"
    );
}

#[test]
fn check_config_of_a_missing_file_fails_and_usage_errors_exit_2() {
    let (code, _, err) = check_config(Path::new("/nonexistent/warden.toml"));
    assert_eq!(code, 1);
    assert!(err.contains("cannot read"), "{err}");
    let out = Command::new(WARDEND)
        .arg("--no-such-flag")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    // The daemon itself says why it cannot start, once.
    let out = Command::new(WARDEND)
        .args(["--config", "/nonexistent/warden.toml"])
        .env("WARDEN_LOG", "info")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.matches("No such file").count(), 1, "{err}");
}

/// wardend on one listener with a NOTIFY_SOCKET, once it has said READY=1; the notify socket
/// for what it says next.
/// One datagram from the notify socket. A receive with a timeout fails with EINTR when any
/// signal reaches this test process (whatever SA_RESTART says), so it is tried again.
fn recv_notify(notify: &UnixDatagram, buf: &mut [u8]) -> usize {
    loop {
        match notify.recv(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r.unwrap(),
        }
    }
}

fn ready_with_notify() -> (tempfile::TempDir, Proc, UnixDatagram) {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "[[listener]]\npath = \"{dir}/run/w.sock\"\n");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config")
        .arg(&cfg)
        .env("NOTIFY_SOCKET", &notify_path);
    let p = Proc::spawn(cmd, dir.path());
    let mut buf = [0u8; 512];
    let n = recv_notify(&notify, &mut buf);
    let msg = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(msg.contains("READY=1"), "{msg}");
    (dir, p, notify)
}

/// Pins: a SIGTERM sent the moment the daemon says it is ready (or serves its socket) stops it
/// gracefully, exit 0: its handler is in place before anything is served.
#[test]
fn a_sigterm_right_at_readiness_is_a_graceful_stop() {
    for _ in 0..10 {
        let (_dir, mut p, _notify) = ready_with_notify();
        // Straight from this process, with no `kill` to start first: as soon as can be.
        let pidfd = warden_sys::process::pidfd_open(p.child.id() as i32).unwrap();
        let term = warden_sys::spawn::signal_number("SIGTERM").unwrap();
        warden_sys::spawn::signal_process(std::os::fd::AsFd::as_fd(&pidfd), term).unwrap();
        assert_eq!(p.wait(), Some(0), "killed instead of stopped: {}", p.log());
        assert!(p.log().contains("stopped"), "{}", p.log());
    }
}

#[test]
fn sigterm_shuts_down_gracefully_and_tells_systemd_ready_and_stopping() {
    let (dir, mut p, notify) = ready_with_notify();
    let mut buf = [0u8; 512];
    let sock = dir.path().join("run/w.sock");
    assert!(sock.exists(), "ready before the socket existed");
    let mut c = RawClient::hello(&sock);
    assert!(c.call(2, "health", json!({})).get("result").is_some());

    p.signal("TERM");
    let n = recv_notify(&notify, &mut buf);
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert_eq!(p.wait(), Some(0));
    assert!(c.is_closed());
    assert!(!sock.exists(), "the daemon removes the socket it created");
    assert!(p.log().contains("stopped"));
}

#[test]
fn sighup_reloads_the_configuration_and_a_broken_file_changes_nothing() {
    let dir = warden_testkit::safe_tempdir();
    let listener = "[[listener]]\npath = \"{dir}/run/w.sock\"\n";
    let cfg = write_config(dir.path(), listener);
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::spawn(cmd, dir.path());
    let sock = dir.path().join("run/w.sock");
    wait_for(&sock);
    let actions = |c: &mut RawClient| -> Vec<String> {
        c.call(9, "actions.list", json!({}))["result"]["actions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["name"].as_str().unwrap().to_owned())
            .collect()
    };
    assert!(actions(&mut RawClient::hello(&sock)).is_empty());
    write_config(
        dir.path(),
        &format!(
            "{listener}[[action]]\nname = \"look\"\nargv = [\"/bin/true\"]\n\
             tier = \"read_only\"\nmutating = false\ntimeout_s = 5\n"
        ),
    );
    p.signal("HUP");
    p.wait_log("configuration reloaded", 1);
    assert_eq!(actions(&mut RawClient::hello(&sock)), ["look"]);
    // A broken file: logged, and the running policy stays.
    write_config(dir.path(), &format!("{listener}[[action]]\nname = 7\n"));
    p.signal("HUP");
    p.wait_log("reload failed", 1);
    assert!(
        p.log().contains("warden.toml:"),
        "names the file and line: {}",
        p.log()
    );
    assert_eq!(actions(&mut RawClient::hello(&sock)), ["look"]);
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
}

#[test]
fn a_socket_passed_by_systemd_is_adopted_given_its_mode_and_left_in_place() {
    let dir = warden_testkit::safe_tempdir();
    let sock = dir.path().join("act.sock");
    let cfg = write_config(
        dir.path(),
        "[[listener]]\npath = \"{dir}/act.sock\"\nmode = \"0640\"\n",
    );
    let mut p = Proc::spawn(socket_activated(&sock, &cfg), dir.path());
    wait_for(&sock);
    // The first connection makes systemd-socket-activate exec wardend with the socket as fd 3.
    let mut c = RawClient::connect(&sock);
    let hello = c.call(1, "hello", json!({"protocol": 1, "client": "t"}));
    assert_eq!(hello["result"]["listener"]["path"], sock.to_str().unwrap());
    assert_eq!(warden_sys::fs::owner_of(&sock).unwrap().mode, 0o640);
    p.wait_log("activated=true", 1);
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    assert!(sock.exists(), "a socket systemd owns is not removed");
}

#[test]
fn a_passed_socket_no_listener_declares_stops_the_daemon() {
    let dir = warden_testkit::safe_tempdir();
    let sock = dir.path().join("other.sock");
    let cfg = write_config(dir.path(), "[[listener]]\npath = \"{dir}/run/w.sock\"\n");
    let mut p = Proc::spawn(socket_activated(&sock, &cfg), dir.path());
    wait_for(&sock);
    let _trigger = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    assert_eq!(p.wait(), Some(1));
    assert!(
        p.log().contains("which no [[listener]] declares"),
        "{}",
        p.log()
    );
}

#[test]
fn the_correlation_id_of_an_error_is_in_the_daemon_log() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "[[listener]]\npath = \"{dir}/run/w.sock\"\n");
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::spawn(cmd, dir.path());
    let sock = dir.path().join("run/w.sock");
    wait_for(&sock);
    let mut c = RawClient::hello(&sock);
    let r = c.call(2, "no.such.method", json!({}));
    let cid = r["error"]["data"]["correlation_id"]
        .as_str()
        .unwrap()
        .to_owned();
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let log = p.log();
    let line = log
        .lines()
        .find(|l| l.contains(&cid))
        .unwrap_or_else(|| panic!("{cid} not in {log}"));
    assert!(line.contains("unknown method"), "{line}");
}

/// Pins: a secret parameter never reaches the daemon's own log, even at debug level: not from
/// a job that uses it, echoes it on its status pipe and fails, nor from a refused value.
#[test]
fn a_secret_parameter_never_reaches_the_daemon_log() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(
        dir.path(),
        r#"[[listener]]
path = "{dir}/run/w.sock"
[[action]]
name = "login"
argv = ["/bin/sh", "-c", "printf 'result {{\"seen\": \"%s\"}}\\n' \"$1\" >&$WARDEN_STATUS_FD; echo \"token $1\" >&2; exit 3", "login", "{token}"]
tier = "read_only"
mutating = false
[action.params.token]
type = "string"
pattern = "[a-zA-Z0-9-]+"
secret = true
"#,
    );
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::spawn_logging(cmd, dir.path(), "debug");
    let sock = dir.path().join("run/w.sock");
    wait_for(&sock);
    let mut c = RawClient::hello(&sock);
    let secret = "Zq7-s3cret-Tok3n";
    let started = c.call(
        2,
        "job.start",
        json!({"action": "login", "params": {"token": secret}}),
    );
    let id = started["result"]["job_id"].as_str().unwrap().to_owned();
    let done = c.call(3, "job.wait", json!({"job_id": id, "timeout_ms": 10_000}));
    assert_eq!(done["result"]["state"], "failed", "{done}");
    assert_eq!(done["result"]["result"]["seen"], "<redacted>", "{done}");
    assert!(!done.to_string().contains(secret), "{done}");
    let refused = c.call(
        4,
        "job.start",
        json!({"action": "login", "params": {"token": format!("{secret};x")}}),
    );
    assert_eq!(
        warden_testkit::raw::error_kind(&refused),
        Some("bad_request")
    );
    assert!(!refused.to_string().contains(secret), "{refused}");
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let log = p.log();
    assert!(log.contains(&id), "the job is in the log at all: {log}");
    assert!(!log.contains(secret), "{log}");
}

/// Pins: `--dev` announces itself and serves a 0600 socket in a 0700 directory, with a 0600
/// varlink socket beside it that answers io.warden calls.
#[test]
fn dev_mode_says_so_loudly_and_serves_a_private_socket() {
    let dir = warden_testkit::safe_tempdir();
    let sock = dir.path().join("dev/warden.sock");
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--dev").arg("--socket").arg(&sock);
    let mut p = Proc::spawn(cmd, dir.path());
    wait_for(&sock);
    let mut c = RawClient::hello(&sock);
    let status = c.call(2, "status", json!({}));
    assert_eq!(status["result"]["mode"], "dev");
    // The announcement follows the sockets' opening, so a client may be served before it.
    let log = p.wait_log("DEV MODE", 1);
    assert!(
        log.contains("DEV MODE") && log.contains(sock.to_str().unwrap()),
        "{log}"
    );
    let o = warden_sys::fs::owner_of(&sock).unwrap();
    assert_eq!(o.mode, 0o600);
    // A varlink socket beside it, as private, announced too.
    let varlink = dir.path().join("dev/warden.varlink");
    assert_eq!(warden_sys::fs::owner_of(&varlink).unwrap().mode, 0o600);
    assert!(log.contains(varlink.to_str().unwrap()), "{log}");
    {
        use std::io::{Read, Write};
        let mut v = std::os::unix::net::UnixStream::connect(&varlink).unwrap();
        v.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        v.write_all(b"{\"method\":\"io.warden.Status\"}\0").unwrap();
        let mut reply = Vec::new();
        let mut byte = [0u8; 1];
        while v.read(&mut byte).unwrap() == 1 && byte[0] != 0 {
            reply.push(byte[0]);
        }
        let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!(reply["parameters"]["status"]["mode"], "dev", "{reply}");
    }
    assert_eq!(
        warden_sys::fs::owner_of(&dir.path().join("dev"))
            .unwrap()
            .mode,
        0o700
    );
    p.signal("INT");
    assert_eq!(p.wait(), Some(0));
}

fn doctor(path: &Path) -> (i32, String) {
    let out = Command::new(WARDEND)
        .arg("doctor")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
    )
}

/// Pins: `wardend doctor` passes a fresh installation, then names a state directory others can
/// enter and a changed audit record, each with its fix, and exits 1.
#[test]
fn doctor_passes_a_sound_installation_and_names_what_is_wrong() {
    if !warden_testkit::root_or_skip("doctor_passes_a_sound_installation_and_names_what_is_wrong") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "[[listener]]\npath = \"{dir}/run/w.sock\"\n");
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::spawn(cmd, dir.path());
    let sock = dir.path().join("run/w.sock");
    wait_for(&sock);
    let (code, out) = doctor(&cfg);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok      audit log intact"), "{out}");
    assert!(
        out.contains("ok      ledger integrity check passes"),
        "{out}"
    );
    assert!(
        out.contains(&format!("ok      socket {}", sock.display())),
        "{out}"
    );
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));

    let state = dir.path().join("state");
    std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let log = state.join("audit/audit.log");
    let text = std::fs::read_to_string(&log).unwrap();
    std::fs::write(&log, text.replacen("daemon.start", "daemon.stort", 1)).unwrap();
    let (code, out) = doctor(&cfg);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("with mode 0755"), "{out}");
    assert!(
        out.contains(&format!(
            "fix: chown root:root {0} && chmod 0700 {0}",
            state.display()
        )),
        "{out}"
    );
    assert!(
        out.contains("audit log broken at record 1: modified"),
        "{out}"
    );
}

/// Pins: a resource kind's missing base_dir (and its missing parents) is made mode 0755 by the
/// real daemon, whose umask is 077, so a real owner can reach and write what they own in it.
#[test]
fn a_missing_base_dir_is_made_0755_so_owners_reach_their_resources() {
    if !warden_testkit::root_or_skip(
        "a_missing_base_dir_is_made_0755_so_owners_reach_their_resources",
    ) {
        return;
    }
    use std::os::unix::fs::PermissionsExt;
    let alice = warden_testkit::users::TestUser::create(&[]);
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(
        dir.path(),
        "[[listener]]\npath = \"{dir}/run/w.sock\"\n\
         [[resource]]\nkind = \"ws\"\nbase_dir = \"{dir}/srv/deep/ws\"\nmax_per_uid = 1\ntier = \"read_only\"\n",
    );
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::spawn(cmd, dir.path());
    let sock = dir.path().join("run/w.sock");
    wait_for(&sock);
    let mut root = RawClient::hello(&sock);
    let made = root.call(
        2,
        "resource.create",
        json!({"kind": "ws", "name": "mine", "owner": alice.uid}),
    );
    assert_eq!(made["result"]["owner_uid"], alice.uid, "{made}");
    for rel in ["srv", "srv/deep", "srv/deep/ws"] {
        let mode = std::fs::metadata(dir.path().join(rel))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{rel}");
    }
    let mine = dir.path().join("srv/deep/ws/mine");
    let wrote = alice
        .command(Path::new("/usr/bin/touch"))
        .arg(mine.join("file"))
        .status()
        .unwrap();
    assert!(wrote.success(), "the owner cannot reach {}", mine.display());
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
}

/// A frame with `body`, length first.
fn framed(body: &[u8]) -> Vec<u8> {
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(body);
    f
}

/// Pins: what a caller sends reaches the daemon's log and its error answers cut, escaped and
/// budgeted: hellos with a 1 MB unknown field name (or a 1 MB `jsonrpc` value) grow the log by
/// kilobytes, not megabytes, and get a short answer; a topic holding a newline cannot forge a
/// log line of its own.
#[test]
fn peer_text_cannot_flood_the_log_or_forge_a_line_in_it() {
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), "[[listener]]\npath = \"{dir}/run/w.sock\"\n");
    let mut cmd = Command::new(WARDEND);
    cmd.arg("--config").arg(&cfg);
    let mut p = Proc::spawn(cmd, dir.path());
    let sock = dir.path().join("run/w.sock");
    wait_for(&sock);
    // Startup lines are done once a request is answered.
    drop(RawClient::hello(&sock));
    let before = std::fs::metadata(&p.log).unwrap().len();

    // First, while this uid's log budget is unspent, so that its refusal is logged.
    let mut c = RawClient::hello(&sock);
    let forged = c.call(
        2,
        "events.subscribe",
        json!({"topics": ["x\nWARN alert: forged"]}),
    );
    assert_eq!(
        warden_testkit::raw::error_kind(&forged),
        Some("bad_request"),
        "{forged}"
    );
    let message = forged["error"]["message"].as_str().unwrap();
    assert!(message.contains("x\\nWARN alert: forged"), "{message}");
    drop(c);

    let huge = "A".repeat(1_000_000);
    let hellos = [
        json!({"jsonrpc": "2.0", "id": 1, "method": "hello",
               "params": {"protocol": 1, "client": "t", huge.as_str(): 1}}),
        json!({"jsonrpc": huge.as_str(), "id": 1, "method": "hello",
               "params": {"protocol": 1, "client": "t"}}),
    ];
    for i in 0..30 {
        let mut c = RawClient::connect(&sock);
        c.write(&framed(hellos[i % 2].to_string().as_bytes()));
        let answer = c.recv_frame().expect("an error answer");
        assert!(answer.len() < 1024, "an answer of {} bytes", answer.len());
        let answer: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(
            warden_testkit::raw::error_kind(&answer),
            Some("bad_request"),
            "{answer}"
        );
        if i == 0 {
            let message = answer["error"]["message"].as_str().unwrap();
            assert!(message.contains("expected one of"), "{message}");
        }
    }

    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
    let grown = std::fs::metadata(&p.log).unwrap().len() - before;
    assert!(grown < 64 * 1024, "the log grew by {grown} bytes");
    let log = p.log();
    assert!(
        !log.lines()
            .any(|l| l.trim_start().starts_with("WARN alert: forged")),
        "{log}"
    );
    assert!(
        log.contains("x\\nWARN alert: forged"),
        "the refusal is logged: {log}"
    );
}
