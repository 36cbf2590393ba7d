//! What the server's tests share: a server on a loopback port over a fresh database (SQLite
//! always; PostgreSQL too when `WARDEN_TEST_DATABASE_URL` is set, each server in a schema of its
//! own), and a plain HTTP/1.1 client.

#![allow(dead_code)]

pub mod agent;

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warden_server::auth::{Operator, Role};
use warden_server::{Config, Running};

/// The databases every test runs against.
pub fn backends() -> Vec<Option<String>> {
    let mut v = vec![None];
    match std::env::var("WARDEN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => v.push(Some(url)),
        // CI always provides PostgreSQL: a run that would skip it fails instead.
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must set WARDEN_TEST_DATABASE_URL so the PostgreSQL tests run")
        }
        _ => eprintln!("WARDEN_TEST_DATABASE_URL is not set: PostgreSQL tests skipped"),
    }
    v
}

fn hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom_fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom_fill(b: &mut [u8]) {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(b))
        .expect("/dev/urandom");
}

/// A server and what it was made on.
pub struct TestServer {
    pub running: Running,
    pub dir: tempfile::TempDir,
    /// `None` for SQLite.
    pub url: Option<String>,
}

/// A fresh schema of its own in the database at `base`, as a URL that uses it.
pub async fn fresh_schema(base: &str) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let schema = format!("t_{}", hex(6));
    let mut c = sqlx::AnyConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

impl TestServer {
    pub async fn start(url: Option<&str>) -> TestServer {
        TestServer::start_with(url, |_| {}).await
    }

    pub async fn start_with(url: Option<&str>, tune: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let url = match url {
            Some(base) => Some(fresh_schema(base).await),
            None => None,
        };
        let mut config = Config::new(dir.path().join("data"));
        config.database_url = url.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        tune(&mut config);
        let running = warden_server::start(&config).await.unwrap();
        TestServer { running, dir, url }
    }

    pub fn db(&self) -> &warden_server::store::Db {
        &self.running.state.db
    }

    pub fn name(&self) -> &'static str {
        if self.url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    /// `method path` with `body`, optional extra headers; the status, headers and JSON body.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Response {
        http(
            self.running.addr,
            method,
            path,
            body.map(|b| b.to_string()),
            headers,
        )
        .await
    }

    pub async fn enroll(&self, body: &Value) -> Response {
        self.request("POST", "/v1/enroll", Some(body), &[]).await
    }
}

/// One answer.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as sent.
    pub raw: String,
    pub json: Value,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn kind(&self) -> &str {
        self.json["error"]["kind"].as_str().unwrap_or("")
    }
}

/// A plain HTTP/1.1 exchange on a fresh connection.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<String>,
    headers: &[(&str, &str)],
) -> Response {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let body = body.unwrap_or_default();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req.push_str("Content-Type: application/json\r\n");
    }
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(&body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status: u16 = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let raw = if chunked {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    let json = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Response {
        status,
        headers,
        raw,
        json,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A machine id nobody else uses.
pub fn machine_id() -> String {
    format!("muid_{}", hex(32))
}

/// An enrollment body.
pub fn body(site: &str, key: &str, machine: &str, hostname: &str) -> Value {
    serde_json::json!({
        "site_code": site,
        "enrollment_key": key,
        "machine_id": machine,
        "hostname": hostname,
        "labels": {"company": "acme", "site": site, "department": "it", "device_type": "laptop", "tags": ["a"]}
    })
}

/// The real `warden-server` binary serving, killed when dropped (for the benchmarks).
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl ServerProcess {
    /// Spawns `cmd` (`warden-server … serve …`, logging at least its `listen=` line to stderr)
    /// and waits until it listens; the rest of its log is read and dropped.
    pub fn spawn(mut cmd: Command) -> ServerProcess {
        cmd.env_remove("WARDEN_SERVER_DATABASE_URL")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().unwrap().unwrap();
            if let Some(rest) = line.split("listen=").nth(1) {
                break rest.split_whitespace().next().unwrap().parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in lines {});
        ServerProcess { child, addr }
    }

    /// Its resident memory, in KiB.
    pub fn rss_kib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

/// Makes a self-signed certificate for 127.0.0.1 named `name` in `dir`: (cert, key).
pub fn certificate(dir: &std::path::Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (cert, key) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    let made = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec"])
        .args([
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
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
    (cert, key)
}

/// A new operator `name` of `role` (password `a long enough password`) and an API token of
/// that role for it, straight into `db`: how benchmarks and tests get a bearer token.
pub async fn api_token(db: &warden_server::store::Db, name: &str, role: Role) -> String {
    let info = db
        .add_operator(name, role, "a long enough password")
        .await
        .unwrap();
    let op = Operator {
        id: info.id,
        name: info.name,
        role,
        session: None,
        expires_ms: None,
        by_cookie: false,
        source: String::new(),
    };
    db.create_token(&op, name, role, 3_600_000).await.unwrap().0
}

/// `warden-server --data-dir DATA --json ARGS`, which must succeed: its output, parsed (`null`
/// when it printed nothing).
pub fn admin(data: &std::path::Path, args: &[&str]) -> Value {
    let out = Command::new(env!("CARGO_BIN_EXE_warden-server"))
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

/// Copies a child's stderr line by line, on a thread, into the log it returns and into the
/// channel (for a test waiting on one line, such as the address the server listens on).
pub fn tee_lines(
    stderr: std::process::ChildStderr,
) -> (
    std::sync::Arc<std::sync::Mutex<String>>,
    std::sync::mpsc::Receiver<String>,
) {
    let log = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn({
        let log = log.clone();
        move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line.clone());
                let mut log = log.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        }
    });
    (log, rx)
}

/// The `p` quantile (0 to 1) of `v`, which it sorts.
pub fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}
