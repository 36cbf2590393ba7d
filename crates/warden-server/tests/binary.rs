//! The `warden-server` binary as an administrator runs it: the admin commands on the embedded
//! database, `serve`, and a log that never holds key material.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_warden-server");

/// A child killed when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn admin(data: &Path, args: &[&str]) -> Value {
    let out = Command::new(BIN)
        .arg("--data-dir")
        .arg(data)
        .arg("--json")
        .args(args)
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

/// Pins: sites and keys made with the admin commands work for enrollment through `serve`; the
/// data directory is private; and the server's log, at its most verbose, holds none of the
/// enrollment or machine keys issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_and_serve_work_together_and_log_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    admin(&data, &["site", "add", "hq", "--name", "Headquarters"]);
    let mut add = Command::new(BIN)
        .arg("--data-dir")
        .arg(&data)
        .args([
            "--json",
            "user",
            "add",
            "root",
            "--role",
            "admin",
            "--password-stdin",
        ])
        .env_remove("WARDEN_SERVER_DATABASE_URL")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(add.stdin.as_mut().unwrap(), b"a long enough password\n").unwrap();
    assert!(add.wait_with_output().unwrap().status.success());
    assert_eq!(admin(&data, &["user", "list"])[0]["role"], "admin");
    let key_file = std::fs::metadata(data.join("signing.key"));
    assert!(
        key_file.is_err(),
        "the admin commands make no signing key; serve does"
    );
    let first = admin(&data, &["site", "rotate-key", "hq"]);
    let key = admin(&data, &["site", "rotate-key", "hq"]);
    let key_text = key["key"].as_str().unwrap().to_owned();
    assert_eq!(key["version"], 2);
    assert_eq!(
        key["fingerprint_label"],
        format!("v2 ({})", key["fingerprint"].as_str().unwrap())
    );
    let shown = admin(&data, &["site", "key", "hq"]);
    assert_eq!(shown["version"], 2);
    assert!(shown.get("key").is_none());
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&data).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700);

    let log = dir.path().join("server.log");
    let mut server = Killed(
        Command::new(BIN)
            .arg("--data-dir")
            .arg(&data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .env("WARDEN_SERVER_LOG", "trace")
            .env_remove("WARDEN_SERVER_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let stderr = server.0.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let copy = std::thread::spawn({
        let log = log.clone();
        move || {
            let mut all = String::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                all.push_str(&line);
                all.push('\n');
            }
            std::fs::write(log, all).unwrap();
        }
    });
    let addr = loop {
        let line = rx.recv_timeout(Duration::from_secs(30)).unwrap();
        if let Some(rest) = line.split("listen=").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    let mut issued = vec![first["key"].as_str().unwrap().to_owned(), key_text.clone()];
    for i in 0..3 {
        let b = common::body("hq", &key_text, &common::machine_id(), &format!("pc-{i}"));
        let r = common::http(addr, "POST", "/v1/enroll", Some(b.to_string()), &[]).await;
        assert_eq!(r.status, 201, "{}", r.raw);
        issued.push(r.json["machine_key"].as_str().unwrap().to_owned());
        let who = common::http(
            addr,
            "GET",
            "/v1/agent/whoami",
            None,
            &[(
                "Authorization",
                &format!("Bearer {}", issued.last().unwrap()),
            )],
        )
        .await;
        assert_eq!(who.status, 200);
    }
    let login = common::http(
        addr,
        "POST",
        "/v1/login",
        Some(r#"{"name": "root", "password": "a long enough password"}"#.to_owned()),
        &[],
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.raw);
    issued.push(login.json["token"].as_str().unwrap().to_owned());
    let rejected = common::http(
        addr,
        "POST",
        "/v1/enroll",
        Some(common::body("hq", &issued[0], &common::machine_id(), "old").to_string()),
        &[],
    )
    .await;
    assert_eq!(rejected.status, 401);
    drop(server);
    copy.join().unwrap();

    let listed = admin(&data, &["machines", "list"]);
    assert_eq!(listed.as_array().unwrap().len(), 3);
    let events = admin(&data, &["events", "--kind", "enroll.new"]);
    assert_eq!(events.as_array().unwrap().len(), 3);

    let signing = std::fs::metadata(data.join("signing.key")).unwrap();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&signing.permissions()) & 0o777,
        0o600
    );
    assert_eq!(signing.len(), 32);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("warden-server serving"), "{text}");
    for secret in &issued {
        assert!(!text.contains(&secret[4..]), "the log holds a key or token");
    }
    assert!(!text.contains("a long enough password"));
}

/// Pins: given a certificate and key, the server speaks HTTPS (a client trusting that
/// certificate gets its answer) and nothing in plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_server_speaks_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let mut config = warden_server::Config::new(dir.path().join("data"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.tls = Some((cert.clone(), key));
    let running = warden_server::start(&config).await.unwrap();
    let url = format!("https://{}/v1/health", running.addr);
    let curl = tokio::task::spawn_blocking(move || {
        Command::new("curl")
            .args(["-s", "--max-time", "10", "--cacert"])
            .arg(&cert)
            .arg(&url)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(curl.status.success(), "{curl:?}");
    assert_eq!(String::from_utf8_lossy(&curl.stdout), r#"{"status":"ok"}"#);
    let plain = common::http(running.addr, "GET", "/v1/health", None, &[]).await;
    assert_ne!(plain.status, 200, "plain HTTP was answered: {}", plain.raw);
    running.stop().await.unwrap();
}
