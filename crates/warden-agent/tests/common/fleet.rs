//! The whole fleet as real processes, for the end-to-end tests: the `warden-server` binary over
//! TLS on a fresh database (SQLite, or a schema of its own in PostgreSQL), one real `wardend`
//! per host (its own state, socket and fixture hardware files, `[fleet]` enabled for the host's
//! agent user), and the real `warden-agent` per host as that throwaway user. Every process's
//! log is collected so the tests can read it and scan it for keys.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{Agent, Host, certificates, eventually};

/// How long anything in these tests may take before it is a failure.
pub const PATIENCE: Duration = Duration::from_secs(30);

/// The server flags every fleet test uses: short link timings, a quick `last_seen` batch.
pub const QUICK: &[&str] = &[
    "--link-heartbeat-ms",
    "300",
    "--link-dead-after-ms",
    "1500",
    "--link-seen-flush-ms",
    "200",
    "--link-restart-spread-ms",
    "3000",
    "--drain-timeout-ms",
    "1000",
];

/// The agent overrides every fleet test uses: quick retries (the link's heartbeat and
/// dead-after come from the server's Welcome).
pub const AGENT_QUICK: &str = "reconnect_first_ms = 300\nreconnect_cap_ms = 1500\n\
    retry_base_ms = 100\nretry_cap_ms = 1000\nrejected_base_ms = 300\nrejected_cap_ms = 1500\n\
    pending_poll_ms = 300\nwelcome_timeout_ms = 3000\n";

/// The databases each test runs on: SQLite always, PostgreSQL when `WARDEN_TEST_DATABASE_URL`
/// is set (CI must set it).
pub fn backends() -> Vec<Option<String>> {
    let mut v = vec![None];
    match std::env::var("WARDEN_TEST_DATABASE_URL") {
        Ok(url) if !url.is_empty() => v.push(Some(url)),
        _ if std::env::var_os("CI").is_some() => {
            panic!("CI must set WARDEN_TEST_DATABASE_URL so the PostgreSQL tests run")
        }
        _ => eprintln!("WARDEN_TEST_DATABASE_URL is not set: PostgreSQL runs skipped"),
    }
    v
}

/// Runs `scenario` once per backend, the runs concurrently.
pub async fn on_each_backend<F, Fut>(scenario: F)
where
    F: Fn(Option<String>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let runs: Vec<_> = backends()
        .into_iter()
        .map(|b| tokio::spawn(scenario(b)))
        .collect();
    for r in runs {
        if let Err(e) = r.await {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A fresh schema in the PostgreSQL database at `base`, as a URL that uses it.
async fn fresh_schema(base: &str) -> String {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let schema = format!("e2e_{}", warden_testkit::random_hex(6));
    let mut c = sqlx::AnyConnection::connect(base).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .execute(&mut c)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    format!("{base}{sep}options=-c%20search_path%3D{schema}")
}

/// Collects a child's stderr into `sink`, line by line.
fn collect(child: &mut Child, sink: &Arc<Mutex<String>>) {
    let stderr = child.stderr.take().unwrap();
    let sink = Arc::clone(sink);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut l = sink.lock().unwrap();
            l.push_str(&line);
            l.push('\n');
        }
    });
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// The real `warden-server`, serving HTTPS on loopback.
pub struct Server {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    /// `None`: SQLite in `data`.
    pub url: Option<String>,
    pub ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    flags: Vec<String>,
    pub addr: Option<SocketAddr>,
    child: Option<Child>,
    /// Every run's log, one after another.
    log: Arc<Mutex<String>>,
    bin: PathBuf,
}

impl Server {
    /// A server on `backend` with `flags` after `serve`, started, with site `hq`; returns it
    /// and the site's enrollment key.
    pub async fn start(backend: Option<String>, flags: &[&str]) -> (Server, String) {
        let dir = warden_testkit::safe_tempdir();
        let (ca, cert, key) = certificates(dir.path());
        let url = match backend {
            Some(base) => Some(fresh_schema(&base).await),
            None => None,
        };
        let mut s = Server {
            data: dir.path().join("data"),
            dir,
            url,
            ca,
            cert,
            key,
            flags: flags.iter().map(|f| (*f).to_owned()).collect(),
            addr: None,
            child: None,
            log: Arc::new(Mutex::new(String::new())),
            bin: warden_testkit::sibling_bin("warden-server"),
        };
        // The first admin command on a new data directory asks for its database.
        s.admin(&["--init", "site", "add", "hq", "--name", "Headquarters"]);
        let enrollment_key = s.admin(&["site", "rotate-key", "hq"])["key"]
            .as_str()
            .unwrap()
            .to_owned();
        s.run().await;
        (s, enrollment_key)
    }

    pub fn name(&self) -> &'static str {
        if self.url.is_some() {
            "postgres"
        } else {
            "sqlite"
        }
    }

    fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--data-dir")
            .arg(&self.data)
            .env_remove("WARDEN_SERVER_DATABASE_URL");
        if let Some(u) = &self.url {
            c.arg("--database-url").arg(u);
        }
        c
    }

    /// Starts `serve` (on the same port as before, after a restart).
    pub async fn run(&mut self) {
        assert!(self.child.is_none(), "the server is running already");
        let listen = self
            .addr
            .map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut cmd = self.command();
        cmd.args(["serve", "--listen", &listen, "--tls-cert"])
            .arg(&self.cert)
            .arg("--tls-key")
            .arg(&self.key)
            .args(&self.flags)
            .env("WARDEN_SERVER_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let before = self.log().lines().count();
        let mut child = cmd.spawn().unwrap();
        collect(&mut child, &self.log);
        self.child = Some(child);
        let mut line = None;
        let up = eventually(PATIENCE, || {
            line = self
                .log()
                .lines()
                .skip(before)
                .find(|l| l.contains("warden-server serving"))
                .map(str::to_owned);
            line.is_some()
        })
        .await;
        assert!(up, "the server did not start; its log:\n{}", self.log());
        let line = line.unwrap();
        let addr = line
            .split("listen=")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|a| a.parse().ok())
            .unwrap();
        self.addr = Some(addr);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// SIGTERM, and waits for the exit.
    pub async fn stop(&mut self) {
        self.terminate();
        let end = Instant::now() + PATIENCE;
        while !self.exited() {
            assert!(Instant::now() < end, "the server did not stop");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// SIGTERM, without waiting.
    pub fn terminate(&self) {
        signal(self.pid(), "TERM");
    }

    /// Whether the server process has exited (then it may be [`Server::run`] again).
    pub fn exited(&mut self) -> bool {
        let gone = self
            .child
            .as_mut()
            .is_none_or(|c| c.try_wait().unwrap().is_some());
        if gone {
            self.child = None;
        }
        gone
    }

    pub fn freeze(&self) {
        signal(self.pid(), "STOP");
    }

    pub fn thaw(&self) {
        signal(self.pid(), "CONT");
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr.unwrap())
    }

    /// An admin command (a process of its own on the same database), `--json`; its output.
    pub fn admin(&self, args: &[&str]) -> Value {
        let out = self.command().arg("--json").args(args).output().unwrap();
        assert!(
            out.status.success(),
            "warden-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    /// An admin command as [`Server::admin`] runs, with `stdin` on its standard input.
    pub fn admin_stdin(&self, args: &[&str], stdin: &str) -> Value {
        use std::io::Write;
        let mut child = self
            .command()
            .arg("--json")
            .args(args)
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
            "warden-server {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    }

    /// On PostgreSQL, every row of every table of the server's schema as text (SQLite's rows
    /// are in its files under `data`); empty on SQLite.
    pub async fn dump_rows(&self) -> String {
        use sqlx::{Connection, Row};
        let Some(url) = &self.url else {
            return String::new();
        };
        let mut c = sqlx::AnyConnection::connect(url).await.unwrap();
        let tables: Vec<String> = sqlx::query(
            "SELECT CAST(table_name AS TEXT) AS t FROM information_schema.tables \
             WHERE table_schema = current_schema()",
        )
        .fetch_all(&mut c)
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>("t"))
        .collect();
        assert!(!tables.is_empty(), "no tables in the server's schema");
        let mut out = String::new();
        for t in tables {
            let q = format!("SELECT CAST(x AS TEXT) AS r FROM \"{t}\" x");
            for row in sqlx::query(sqlx::AssertSqlSafe(q))
                .fetch_all(&mut c)
                .await
                .unwrap()
            {
                out.push_str(&row.get::<String, _>("r"));
                out.push('\n');
            }
        }
        out
    }

    /// `machines list`.
    pub fn machines(&self) -> Vec<Value> {
        self.admin(&["machines", "list"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// The one listed machine with `hostname`.
    pub fn machine(&self, hostname: &str) -> Option<Value> {
        self.machines()
            .into_iter()
            .find(|m| m["hostname"] == hostname)
    }

    /// `events` of `kind`.
    pub fn events(&self, kind: &str) -> Vec<Value> {
        self.admin(&["events", "--kind", kind, "-n", "1000"])
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until the machine with `hostname` satisfies `cond`; returns it.
    pub async fn wait_machine(
        &self,
        hostname: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let end = Instant::now() + PATIENCE;
        loop {
            let m = self.machine(hostname);
            if let Some(m) = m.filter(|m| cond(m)) {
                return m;
            }
            assert!(
                Instant::now() < end,
                "{}: machine {hostname} never {what}: {:?}",
                self.name(),
                self.machine(hostname)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &c.id().to_string()])
                .status();
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A host's fixture hardware: a DMI product UUID (the other signals fixed).
pub fn product_uuid() -> String {
    let h = warden_testkit::random_hex(16).to_uppercase();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// A real `wardend` standing for one host: its own state, socket and hardware files.
pub struct Wardend {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    child: Child,
    log: Arc<Mutex<String>>,
}

impl Wardend {
    /// Starts wardend with `[fleet]` enabled for `agent_user` on hardware `uuid`.
    pub async fn start(agent_user: &str, uuid: &str) -> Wardend {
        Wardend::start_with(agent_user, uuid, "").await
    }

    /// Starts wardend as [`Wardend::start`] does, with `extra` appended to its configuration
    /// (`{dir}` in it stands for wardend's directory).
    pub async fn start_with(agent_user: &str, uuid: &str, extra: &str) -> Wardend {
        let dir = warden_testkit::safe_tempdir();
        let d = dir.path();
        let hw = d.join("hw");
        std::fs::create_dir(&hw).unwrap();
        for (name, value) in [
            ("product_uuid", format!("{uuid}\n")),
            ("board_serial", "BSN-0001\n".to_owned()),
            ("disk_serial", "WD-WX0001\n".to_owned()),
            (
                "machine_id",
                "3d1219c7c4c5404aaa1f6d2a48adfda4\n".to_owned(),
            ),
        ] {
            std::fs::write(hw.join(name), value).unwrap();
        }
        let socket = d.join("warden.sock");
        let config = format!(
            "[daemon]\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n\n\
             [[listener]]\npath = \"{s}\"\nmode = \"0666\"\n\n\
             [fleet]\nenabled = true\nagent_user = \"{agent_user}\"\n\n\
             [fleet.identity]\nproduct_uuid = \"{h}/product_uuid\"\nboard_serial = \
             \"{h}/board_serial\"\ndisk_serial = \"{h}/disk_serial\"\nmachine_id = \
             \"{h}/machine_id\"\n{extra}",
            d = d.display(),
            s = socket.display(),
            h = hw.display(),
            extra = extra.replace("{dir}", &d.display().to_string()),
        );
        let file = d.join("warden.toml");
        std::fs::write(&file, config).unwrap();
        let bin = warden_testkit::sibling_bin("wardend");
        let mut child = Command::new(bin)
            .arg("--config")
            .arg(&file)
            .env("WARDEN_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(String::new()));
        collect(&mut child, &log);
        let mut w = Wardend {
            dir,
            socket,
            child,
            log,
        };
        let up = eventually(PATIENCE, || w.socket.exists()).await;
        assert!(
            up && w.child.try_wait().unwrap().is_none(),
            "wardend did not start: {}",
            w.log()
        );
        w
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// Replaces `from` with `to` in wardend's configuration and reloads it (SIGHUP), waiting
    /// for the reload to be logged.
    pub async fn rewrite(&self, from: &str, to: &str) {
        let file = self.dir.path().join("warden.toml");
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains(from),
            "{from:?} is not in wardend's configuration"
        );
        std::fs::write(&file, text.replace(from, to)).unwrap();
        let before = self.log().matches("configuration reloaded").count();
        signal(self.child.id(), "HUP");
        let done = eventually(PATIENCE, || {
            self.log().matches("configuration reloaded").count() > before
        })
        .await;
        assert!(done, "wardend did not reload: {}", self.log());
    }

    /// Appends `extra` to wardend's configuration and reloads it (SIGHUP).
    pub fn reload_with(&self, extra: &str) {
        let file = self.dir.path().join("warden.toml");
        let mut text = std::fs::read_to_string(&file).unwrap();
        text.push_str(extra);
        std::fs::write(&file, text).unwrap();
        signal(self.child.id(), "HUP");
    }
}

impl Drop for Wardend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One host of the fleet: a throwaway agent user, its wardend, its agent's configuration.
pub struct FleetHost {
    pub host: Host,
    pub wardend: Wardend,
    pub hostname: String,
    pub uuid: String,
    /// Where the agent finds the server (a proxy may stand in between).
    pub server_url: String,
    ca: PathBuf,
    enrollment_key: String,
}

impl FleetHost {
    /// A host with hardware `uuid` and `hostname`, configured for `server`.
    pub async fn new(
        server: &Server,
        enrollment_key: &str,
        uuid: &str,
        hostname: &str,
    ) -> FleetHost {
        FleetHost::new_with(server, enrollment_key, uuid, hostname, "").await
    }

    /// A host as [`FleetHost::new`] makes, with `extra` in its wardend's configuration.
    pub async fn new_with(
        server: &Server,
        enrollment_key: &str,
        uuid: &str,
        hostname: &str,
        extra: &str,
    ) -> FleetHost {
        let host = Host::new();
        let user = host.user.as_ref().expect("the fleet tests run as root");
        let wardend = Wardend::start_with(&user.name, uuid, extra).await;
        FleetHost {
            host,
            wardend,
            hostname: hostname.to_owned(),
            uuid: uuid.to_owned(),
            server_url: server.url(),
            ca: server.ca.clone(),
            enrollment_key: enrollment_key.to_owned(),
        }
    }

    /// Writes agent.toml with [`AGENT_QUICK`] and `overrides` in `[test_overrides]`.
    pub fn configure(&self, overrides: &str) -> PathBuf {
        let key_file = self
            .host
            .write("enrollment.key", &format!("{}\n", self.enrollment_key));
        let text = format!(
            "server_url = \"{}\"\nsite_code = \"hq\"\nenrollment_key_file = \"{}\"\n\
             ca_file = \"{}\"\nstate_dir = \"{}\"\nwardend_socket = \"{}\"\nhostname = \"{}\"\n\
             [test_overrides]\n{AGENT_QUICK}{overrides}",
            self.server_url,
            key_file.display(),
            self.ca.display(),
            self.host.state.display(),
            self.wardend.socket.display(),
            self.hostname,
        );
        self.host.write("agent.toml", &text)
    }

    /// Starts the agent with `overrides`.
    pub fn start(&self, overrides: &str) -> Agent {
        let cfg = self.configure(overrides);
        self.host.start(&["--config", cfg.to_str().unwrap()])
    }

    /// Empties the agent's state directory (a re-install).
    pub fn wipe_state(&self) {
        for e in std::fs::read_dir(&self.host.state).unwrap() {
            let path = e.unwrap().path();
            if path.is_dir() {
                std::fs::remove_dir_all(path).unwrap();
            } else {
                std::fs::remove_file(path).unwrap();
            }
        }
    }

    /// The key version the key store holds.
    pub fn stored_version(&self) -> Option<u64> {
        let text = std::fs::read_to_string(self.host.key_file()).ok()?;
        let v: Value = serde_json::from_str(&text).ok()?;
        v["key_version"].as_u64()
    }
}

/// The machine id an agent's log names at its first `link: up`.
pub fn linked_machine_id(agent: &Agent) -> Option<String> {
    let line = agent.lines("link: up").into_iter().next()?;
    let at = line.find("machine_id=")? + "machine_id=".len();
    Some(line[at..].split_whitespace().next()?.to_owned())
}

/// Every file under `dir`, recursively (symlinks not followed).
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in rd.map_while(Result::ok) {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => out.extend(files_under(&p)),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
    out
}

/// Whether `bytes` hold `secret` or its random part.
pub fn holds(bytes: &[u8], secret: &str) -> bool {
    let body = secret.split_once('_').map_or(secret, |(_, b)| b);
    [secret, body]
        .iter()
        .any(|s| bytes.windows(s.len()).any(|w| w == s.as_bytes()))
}
