//! The `warden-server` binary as operations see it: `/metrics` on its own listener, the TLS
//! certificate reloaded on SIGHUP, and the admin commands' refusal to make a new database
//! where none was asked for. Every test runs the real binary; HTTP is spoken with `curl`, TLS
//! is looked at with `openssl s_client`.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_warden-server");

/// `warden-server serve` as a child, killed when the test ends; its log collected as it comes.
struct Served {
    child: std::process::Child,
    addr: std::net::SocketAddr,
    metrics: Option<std::net::SocketAddr>,
    log: Arc<Mutex<String>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Served {
    /// Starts `serve --listen 127.0.0.1:0 ARGS` on `data` and waits for its listen line.
    fn start(data: &Path, args: &[&str]) -> Served {
        let mut child = Command::new(BIN)
            .arg("--data-dir")
            .arg(data)
            .args(["--json", "serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("WARDEN_SERVER_LOG", "debug")
            .env_remove("WARDEN_SERVER_DATABASE_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (log, rx) = common::tee_lines(stderr);
        let value = |line: &str, key: &str| -> Option<std::net::SocketAddr> {
            let rest = line.split(key).nth(1)?;
            rest.split_whitespace().next()?.parse().ok()
        };
        let mut metrics = None;
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no listen line: {}", log.lock().unwrap()));
            if let Some(m) = value(&line, "metrics_addr=") {
                metrics = Some(m);
            }
            if let Some(a) = value(&line, " listen=") {
                break a;
            }
        };
        Served {
            child,
            addr,
            metrics,
            log,
        }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// The first line the server printed on stdout.
    fn stdout_line(&mut self) -> String {
        let mut line = String::new();
        BufReader::new(self.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    }

    fn hup(&self) {
        let ok = Command::new("kill")
            .args(["-HUP", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits until the log holds `what` `n` times.
    fn wait_log(&self, what: &str, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.log().matches(what).count() < n {
            assert!(
                Instant::now() < deadline,
                "no `{what}` x{n}: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// An admin command with `--json` on `data`: its output, parsed.
fn admin(data: &Path, args: &[&str], stdin: &str) -> Value {
    let mut child = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("--json")
        .args(args)
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `curl` with `args`: (status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// A JSON POST to the server.
fn post(s: &Served, path: &str, token: Option<&str>, body: &Value) -> (u16, Value) {
    let url = format!("http://{}{path}", s.addr);
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json"];
    if let Some(a) = &auth {
        args.extend(["-H", a.as_str()]);
    }
    let body = body.to_string();
    args.extend(["--data-binary", body.as_str(), url.as_str()]);
    let (status, text) = curl(&args);
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The metrics' sample lines as (name with labels, value).
fn samples(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_owned(), v.parse().unwrap())
        })
        .collect()
}

fn sample(text: &str, name: &str) -> f64 {
    samples(text)
        .into_iter()
        .find(|(k, _)| k == name)
        .unwrap_or_else(|| panic!("no {name} in:\n{text}"))
        .1
}

/// Checks every line against the text exposition format: `# HELP name text`, `# TYPE name
/// kind` (once per name, before its samples), or `name{label="value",…} number`, with each
/// sample's family announced by a TYPE line.
fn check_exposition(text: &str) {
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    let mut typed: Vec<String> = Vec::new();
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap();
            assert!(name_ok(name) && !help.is_empty(), "bad HELP: {line}");
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(name_ok(name), "bad TYPE: {line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "bad TYPE: {line}"
            );
            assert!(!typed.contains(&name.to_owned()), "TYPE twice: {line}");
            typed.push(name.to_owned());
        } else {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(
                value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                "bad value: {line}"
            );
            let (name, labels) = match series.split_once('{') {
                None => (series, None),
                Some((n, l)) => (n, Some(l.strip_suffix('}').expect(line))),
            };
            assert!(name_ok(name), "bad name: {line}");
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|f| typed.contains(&f.to_string()))
                })
                .unwrap_or(name);
            assert!(typed.contains(&family.to_owned()), "no TYPE before: {line}");
            for pair in labels.into_iter().flat_map(|l| l.split(',')) {
                let (k, v) = pair.split_once('=').expect(line);
                assert!(name_ok(k), "bad label name: {line}");
                assert!(
                    v.len() >= 2
                        && v.starts_with('"')
                        && v.ends_with('"')
                        && !v[1..v.len() - 1].contains(['"', '\\', '\n']),
                    "bad label value: {line}"
                );
            }
        }
    }
}

/// Pins: `/metrics` is served only on `--metrics-listen` (not on the API's port), every line
/// of it is valid text exposition, the enrollment and dispatch counters and the request
/// histogram move after a real enrollment and dispatch, and no key, token or machine id is in
/// it.
#[test]
fn metrics_parse_move_after_an_enrollment_and_a_dispatch_and_hold_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    admin(
        &data,
        &["--init", "site", "add", "hq", "--name", "Headquarters"],
        "",
    );
    let key = admin(&data, &["site", "rotate-key", "hq"], "")["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let password = "a long enough password 1";
    admin(
        &data,
        &[
            "user",
            "add",
            "olga",
            "--role",
            "operator",
            "--password-stdin",
        ],
        &format!("{password}\n"),
    );
    let mut s = Served::start(&data, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics_at = s.metrics.expect("a metrics_addr line");
    // With --json, serve says where it listens in one JSON line on stdout.
    let ready: Value = serde_json::from_str(&s.stdout_line()).unwrap();
    assert_eq!(ready["listen"], s.addr.to_string());
    assert_eq!(ready["metrics_listen"], metrics_at.to_string());
    assert_eq!(ready["tls"], false);
    let scrape = || {
        let (status, text) = curl(&[&format!("http://{metrics_at}/metrics")]);
        assert_eq!(status, 200, "{text}");
        check_exposition(&text);
        text
    };
    let (status, _) = curl(&[&format!("http://{}/metrics", s.addr)]);
    assert_ne!(status, 200, "the API port must not serve /metrics");
    let before = scrape();
    assert_eq!(
        sample(&before, r#"warden_enrollments_total{outcome="new"}"#),
        0.0
    );

    let machine = format!("muid_{}", "ab".repeat(32));
    let (status, enrolled) = post(
        &s,
        "/v1/enroll",
        None,
        &serde_json::json!({
            "site_code": "hq", "enrollment_key": key, "machine_id": machine, "hostname": "h1",
            "labels": {"company": "acme", "site": "hq", "department": "it",
                       "device_type": "laptop", "tags": []}
        }),
    );
    assert_eq!(status, 201, "{enrolled}");
    let machine_key = enrolled["machine_key"].as_str().unwrap().to_owned();
    let (status, login) = post(
        &s,
        "/v1/login",
        None,
        &serde_json::json!({"name": "olga", "password": password}),
    );
    assert_eq!(status, 200, "{login}");
    let token = login["token"].as_str().unwrap().to_owned();
    let (status, created) = post(
        &s,
        "/v1/dispatches",
        Some(&token),
        &serde_json::json!({"target": {"machines": [machine]}, "action": "x", "params": {}}),
    );
    assert_eq!(status, 201, "{created}");
    // A link upgrade with a key that is no machine's.
    let (status, _) = curl(&[
        "-H",
        "Authorization: Bearer wmk_0000",
        "-H",
        "Connection: Upgrade",
        "-H",
        "Upgrade: websocket",
        "-H",
        "Sec-WebSocket-Version: 13",
        "-H",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        &format!("http://{}/v1/agent/link", s.addr),
    ]);
    assert_eq!(status, 401);

    let after = scrape();
    assert_eq!(
        sample(&after, r#"warden_enrollments_total{outcome="new"}"#),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"warden_link_upgrades_total{outcome="refused_key"}"#
        ),
        1.0
    );
    assert_eq!(sample(&after, r#"warden_dispatches{state="running"}"#), 1.0);
    let parts: f64 = samples(&after)
        .iter()
        .filter(|(k, _)| k.starts_with("warden_dispatch_hosts{"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(parts, 1.0, "{after}");
    assert_eq!(sample(&after, "warden_links_connected"), 0.0);
    assert_eq!(
        sample(
            &after,
            r#"warden_http_request_duration_seconds_count{family="enroll"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            r#"warden_http_request_duration_seconds_count{family="dispatches"}"#
        ),
        1.0
    );
    assert!(sample(&after, "warden_db_pool_size") >= 1.0);
    for secret in [
        key.as_str(),
        machine_key.as_str(),
        token.as_str(),
        password,
        machine.as_str(),
    ] {
        assert!(!after.contains(secret), "{secret} is in /metrics");
    }
    let (status, _) = curl(&[&format!("http://{metrics_at}/v1/health")]);
    assert_eq!(status, 404, "the metrics listener serves /metrics only");
}

/// The SHA-256 fingerprint of a PEM certificate (from openssl's x509 output).
fn fingerprint(pem: &[u8]) -> String {
    let mut c = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin.take().unwrap().write_all(pem).unwrap();
    let out = c.wait_with_output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The certificate a fresh TLS connection to `addr` is shown, as its fingerprint.
fn served_fingerprint(addr: std::net::SocketAddr) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let begin = text.find("-----BEGIN CERTIFICATE-----").expect(&text);
    let end = text.find("-----END CERTIFICATE-----").expect(&text) + 25;
    fingerprint(&text.as_bytes()[begin..end])
}

/// Pins: at SIGHUP the server reads `--tls-cert`/`--tls-key` again: a fresh connection is
/// shown the new certificate, a connection opened before goes on being served on the old
/// one; a new pair that does not match (or is not a key at all) is refused with a log line
/// naming why, and the pair in use stays.
#[test]
fn sighup_reloads_the_tls_pair_and_a_broken_pair_keeps_the_old_one() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_a, key_a) = common::certificate(dir.path(), "first");
    let (cert_b, key_b) = common::certificate(dir.path(), "second");
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_a, &key).unwrap();
    let fp_a = fingerprint(&std::fs::read(&cert_a).unwrap());
    let fp_b = fingerprint(&std::fs::read(&cert_b).unwrap());
    assert_ne!(fp_a, fp_b);
    let s = Served::start(
        &dir.path().join("data"),
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(served_fingerprint(s.addr), fp_a);

    // A connection opened on the first certificate, its request sent after the reload.
    let mut open = Command::new("openssl")
        .args(["s_client", "-ign_eof", "-connect", &s.addr.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut open_out = open.stdout.take().unwrap();
    let shown = Arc::new(Mutex::new(Vec::new()));
    let reader = std::thread::spawn({
        let shown = shown.clone();
        move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = open_out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                shown.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&shown.lock().unwrap()).contains("-----END CERTIFICATE-----") {
        assert!(
            Instant::now() < deadline,
            "no handshake on the open connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    std::fs::copy(&cert_b, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    s.hup();
    s.wait_log("TLS certificate and key reloaded", 1);
    assert_eq!(
        served_fingerprint(s.addr),
        fp_b,
        "a fresh connection sees the new one"
    );

    let mut stdin = open.stdin.take().unwrap();
    stdin
        .write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    drop(stdin);
    let _ = open.wait();
    reader.join().unwrap();
    let text = String::from_utf8_lossy(&shown.lock().unwrap()).into_owned();
    assert!(
        text.contains(r#"{"status":"ok"}"#),
        "the open connection is still served: {text}"
    );
    let begin = text.find("-----BEGIN CERTIFICATE-----").unwrap();
    let end = text.find("-----END CERTIFICATE-----").unwrap() + 25;
    assert_eq!(fingerprint(&text.as_bytes()[begin..end]), fp_a);

    // A key that is not the certificate's: refused, the second pair stays.
    std::fs::copy(&cert_a, &cert).unwrap();
    std::fs::copy(&key_b, &key).unwrap();
    s.hup();
    s.wait_log("cannot use the new TLS certificate and key", 1);
    assert_eq!(served_fingerprint(s.addr), fp_b);
    // Not a key at all: refused too.
    std::fs::write(&key, "not a key\n").unwrap();
    s.hup();
    s.wait_log("cannot use the new TLS certificate and key", 2);
    assert_eq!(served_fingerprint(s.addr), fp_b);
    let log = s.log();
    assert!(log.contains("tls.reload_failed"), "{log}");
    let key_text = std::fs::read_to_string(&key_b).unwrap();
    let key_body = key_text.lines().nth(1).unwrap();
    assert!(!log.contains(key_body), "key material in the log");
}

/// Pins: an admin command where there is no database refuses, names the path and asks for
/// `--data-dir` or `--init`, and leaves nothing behind; with `--init` it creates the database;
/// `serve` creates one on its own and says so in its log.
#[test]
fn admin_commands_refuse_to_create_a_database_unless_asked_and_serve_creates_one() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args(["site", "list"])
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no database at")
            && err.contains("warden-server.db")
            && err.contains("--data-dir")
            && err.contains("--init"),
        "{err}"
    );
    assert!(!data.exists(), "the refusal made {}", data.display());
    let listed = admin(&data, &["--init", "site", "list"], "");
    assert_eq!(listed, serde_json::json!([]));
    assert!(data.join("warden-server.db").exists());
    // Now there is one: no --init needed.
    admin(&data, &["site", "list"], "");

    let fresh = dir.path().join("fresh");
    let s = Served::start(&fresh, &[]);
    assert!(fresh.join("warden-server.db").exists());
    assert!(
        s.log().contains("no database here yet: created a new one"),
        "{}",
        s.log()
    );
}

/// The text output of an admin command on `data` (no `--json`).
fn admin_text(data: &Path, args: &[&str]) -> String {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Pins: an empty list says so in text (and is `[]` in JSON); times print as RFC 3339 UTC to
/// the second; the machine commands answer `{machine_id, result}` with `--json`; no colour
/// escape in the output.
#[test]
fn admin_output_says_empty_prints_rfc3339_and_answers_json() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    assert_eq!(admin_text(&data, &["--init", "site", "list"]), "no sites\n");
    assert_eq!(admin_text(&data, &["machines", "list"]), "no machines\n");
    assert_eq!(admin_text(&data, &["user", "list"]), "no operators\n");
    assert_eq!(admin_text(&data, &["events"]), "no events\n");
    assert_eq!(
        admin(&data, &["machines", "list"], ""),
        serde_json::json!([])
    );
    admin_text(&data, &["site", "add", "hq", "--name", "HQ"]);
    let events = admin_text(&data, &["events"]);
    let stamp = events.split_whitespace().next().unwrap();
    let b = stamp.as_bytes();
    assert!(
        b.len() == 20
            && b[4] == b'-'
            && b[7] == b'-'
            && b[10] == b'T'
            && b[13] == b':'
            && b[16] == b':'
            && b[19] == b'Z'
            && stamp.starts_with("20"),
        "not RFC 3339 UTC: {events}"
    );
    assert!(!events.contains('\x1b'), "a colour escape: {events:?}");
    let machine = format!("muid_{}", "cd".repeat(32));
    let banned = admin(&data, &["machines", "ban", &machine], "");
    assert_eq!(
        banned,
        serde_json::json!({"machine_id": machine, "result": "banned"})
    );
    let again = admin(&data, &["machines", "unban", &machine], "");
    assert_eq!(again["result"], "unbanned");
    let again = admin(&data, &["machines", "unban", &machine], "");
    assert_eq!(again["result"], "unchanged");
}
