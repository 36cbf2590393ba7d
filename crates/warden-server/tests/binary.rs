//! The `warden-server` binary as an administrator runs it: the admin commands on the embedded
//! database, `serve`, and a log that never holds key material.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::admin;

const BIN: &str = env!("CARGO_BIN_EXE_warden-server");

/// A child killed when the test ends, also when it fails.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Pins: sites and keys made with the admin commands work for enrollment through `serve`; the
/// data directory is private; and the server's log, at its most verbose, holds none of the
/// enrollment or machine keys issued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_commands_and_serve_work_together_and_log_no_keys() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    admin(
        &data,
        &["--init", "site", "add", "hq", "--name", "Headquarters"],
    );
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

    assert!(
        !data.join("signing.key").exists(),
        "the signing key lives in the database, not beside it"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("warden-server serving"), "{text}");
    for secret in &issued {
        assert!(!text.contains(&secret[4..]), "the log holds a key or token");
    }
    assert!(!text.contains("a long enough password"));
    let store = warden_server::store::Db::open(&data, None).await.unwrap();
    let signing: String =
        sqlx::query_scalar("SELECT value FROM server_secrets WHERE name = 'session_signing_key'")
            .fetch_one(&store.pool)
            .await
            .unwrap();
    assert_eq!(signing.len(), 64);
    assert!(!text.contains(&signing), "the log holds the signing key");
}

/// Pins: given a certificate and key, the server speaks HTTPS (a client trusting that
/// certificate gets its answer) and nothing in plain HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_certificate_the_server_speaks_tls_only() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = common::certificate(dir.path(), "localhost");
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

/// `warden-server serve` as a child, its log collected as it comes.
struct Served {
    child: Killed,
    addr: std::net::SocketAddr,
    log: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Served {
    /// Starts `serve --listen 127.0.0.1:0` on `data` with `args` and `env`, and waits until it
    /// says where it listens.
    fn start(data: &Path, args: &[&str], env: &[(&str, &std::ffi::OsStr)]) -> Served {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(data)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .env("WARDEN_SERVER_LOG", "trace")
            .env_remove("WARDEN_SERVER_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = Killed(cmd.spawn().unwrap());
        let stderr = child.0.stderr.take().unwrap();
        let (log, rx) = common::tee_lines(stderr);
        let addr = loop {
            let line = rx
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("no listen line: {}", log.lock().unwrap()));
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        Served { child, addr, log }
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.0.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// The exit status, if the server ends within `within`.
    fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.0.try_wait().unwrap() {
                return Some(status);
            }
            if std::time::Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A request whose head has been sent, and half its body.
fn half_a_login(addr: std::net::SocketAddr) -> (std::net::TcpStream, &'static [u8]) {
    use std::io::Write;
    let body: &'static [u8] = br#"{"name": "nobody", "password": "not the password"}"#;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    write!(
        c,
        "POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(&body[..10]).unwrap();
    (c, &body[10..])
}

/// Pins: at SIGTERM the server says STOPPING=1 (after READY=1 once it served), takes no new
/// connection, finishes a request already in flight, cuts one that does not finish when the
/// drain deadline passes, and exits 0 (item 18).
#[test]
fn sigterm_drains_requests_in_flight_within_the_deadline_and_exits_0() {
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut server = Served::start(
        &dir.path().join("data"),
        &["--drain-timeout-ms", "2000", "--body-timeout-ms", "60000"],
        &[("NOTIFY_SOCKET", notify_path.as_os_str())],
    );
    let mut buf = [0u8; 512];
    let n = notify.recv(&mut buf).expect("READY=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));

    let (mut finishing, rest) = half_a_login(server.addr);
    let (mut stuck, _) = half_a_login(server.addr);
    // Both heads are in: the requests are in flight when the signal comes.
    std::thread::sleep(Duration::from_millis(300));
    server.signal("TERM");
    let n = notify.recv(&mut buf).expect("STOPPING=1");
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    let stopped_at = std::time::Instant::now();
    // Make sure the listener is gone before asking for a new connection.
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        std::net::TcpStream::connect(server.addr).is_err(),
        "a new connection was taken while stopping"
    );
    finishing.write_all(rest).unwrap();
    finishing
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut answer = String::new();
    finishing.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 401"), "{answer}");
    let status = server
        .exit_within(Duration::from_secs(10))
        .expect("the server did not stop");
    assert!(status.success(), "{status:?}: {}", server.log());
    let took = stopped_at.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "exited before the drain deadline, {took:?}"
    );
    stuck
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    let _ = stuck.read_to_end(&mut rest);
    assert!(rest.is_empty(), "{}", String::from_utf8_lossy(&rest));
    let log = server.log();
    assert!(log.contains("drain deadline passed"), "{log}");
    assert!(log.contains("stopped"), "{log}");
}

/// Pins: several servers on one PostgreSQL database share one signing key: started at the same
/// moment, each accepts the logins the other made, a logout on one holds on the other, and
/// the key is in neither's log nor in their data directories (item 23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_accept_each_others_logins() {
    let Some(base) = common::backends().into_iter().flatten().next() else {
        return;
    };
    let url = common::fresh_schema(&base).await;
    let store = warden_server::store::Db::open(Path::new("/nonexistent"), Some(&url))
        .await
        .unwrap();
    store
        .add_operator(
            "root",
            warden_server::auth::Role::Admin,
            "a long enough password",
        )
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [("WARDEN_SERVER_DATABASE_URL", std::ffi::OsStr::new(&url))];
    let (a, b) = std::thread::scope(|scope| {
        let a = scope.spawn(|| Served::start(&dir.path().join("a"), &[], &env));
        let b = scope.spawn(|| Served::start(&dir.path().join("b"), &[], &env));
        (a.join().unwrap(), b.join().unwrap())
    });
    let login = common::http(
        a.addr,
        "POST",
        "/v1/login",
        Some(r#"{"name": "root", "password": "a long enough password"}"#.to_owned()),
        &[],
    )
    .await;
    assert_eq!(login.status, 200, "{}", login.raw);
    let token = login.json["token"].as_str().unwrap().to_owned();
    let bearer = format!("Bearer {token}");
    let on_b = common::http(
        b.addr,
        "GET",
        "/v1/sites",
        None,
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(
        on_b.status, 200,
        "a login made on one server is refused by the other: {}",
        on_b.raw
    );
    let out = common::http(
        b.addr,
        "POST",
        "/v1/logout",
        None,
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(out.status, 204);
    let on_a = common::http(
        a.addr,
        "GET",
        "/v1/sites",
        None,
        &[("Authorization", &bearer)],
    )
    .await;
    assert_eq!(on_a.status, 401);

    let row = sqlx::query("SELECT value FROM server_secrets WHERE name = 'session_signing_key'")
        .fetch_all(&store.pool)
        .await
        .unwrap();
    assert_eq!(row.len(), 1);
    let key: String = sqlx::Row::try_get(&row[0], "value").unwrap();
    assert_eq!(key.len(), 64);
    for s in [&a, &b] {
        assert!(!s.log().contains(&key), "the signing key is in the log");
    }
    for d in ["a", "b"] {
        assert!(!dir.path().join(d).join("signing.key").exists());
    }
}
