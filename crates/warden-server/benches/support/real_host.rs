//! One real host for the dispatch benchmark: `wardend --dev` and `warden-agent --dev` (their
//! release binaries, built on demand beside this benchmark), enrolled into the benchmark's
//! server, so the time from a job writing its first byte to the operator's live stream
//! delivering it is measured through every real hop: the job's pipe, wardend, the agent's
//! spool, the link, the server's store and the server-sent events.
//!
//! The dev daemon offers its demo actions to an agent running as the same user, and root may
//! not be the fleet's agent: run as root, both run as `nobody`.

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `nobody`, for a benchmark run as root.
const NOBODY: u32 = 65534;

/// The other packages' binaries in this benchmark's own profile (so they share its compiled
/// dependencies), built if missing or stale (cargo decides), in the target directory this
/// benchmark runs from.
pub fn built_binaries() -> PathBuf {
    let status = Command::new(env!("CARGO"))
        .args(["build", "--profile", "bench", "--quiet"])
        .args([
            "-p",
            "wardend",
            "-p",
            "warden-agent",
            "-p",
            "warden",
            "--bins",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .expect("run cargo to build wardend, warden-agent and warden");
    assert!(
        status.success(),
        "building wardend, warden-agent and warden failed"
    );
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/dispatch-… -> target/release
    exe.ancestors().nth(2).unwrap().to_owned()
}

/// A process that is killed when dropped.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct RealHost {
    dir: PathBuf,
    bins: PathBuf,
    root: bool,
    socket: PathBuf,
    _wardend: Proc,
    _agent: Proc,
}

fn chown(p: &Path, root: bool) {
    if root {
        std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
    }
}

impl RealHost {
    /// A command for `bin` as the host's user, with its environment in `dir`.
    fn command(bins: &Path, dir: &Path, root: bool, bin: &str) -> Command {
        let mut c = if root {
            let mut c = Command::new("setpriv");
            c.args([
                "--reuid",
                "65534",
                "--regid",
                "65534",
                "--clear-groups",
                "--",
            ]);
            c.arg(bins.join(bin));
            c
        } else {
            Command::new(bins.join(bin))
        };
        c.current_dir(dir)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("HOME", dir)
            .env("XDG_RUNTIME_DIR", dir.join("run"))
            .env("XDG_STATE_HOME", dir.join("state"))
            .env("WARDEN_LOG", "warn")
            .env("WARDEN_AGENT_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        c
    }

    /// Where the host's processes log (shown when something fails).
    fn log(dir: &Path) -> Stdio {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("host.log"))
            .unwrap();
        Stdio::from(f)
    }

    /// Starts the host under `dir` (made private to the host's user) and enrolls it into
    /// `server` at `site` with `enrollment_key`.
    pub fn start(bins: PathBuf, dir: PathBuf, server: SocketAddr, site: &str, key: &str) -> Self {
        let root = rustix::process::geteuid().is_root();
        for d in [dir.clone(), dir.join("run"), dir.join("state")] {
            std::fs::create_dir_all(&d).unwrap();
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
            chown(&d, root);
        }
        let key_file = dir.join("enrollment.key");
        std::fs::write(&key_file, format!("{key}\n")).unwrap();
        std::fs::set_permissions(&key_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        chown(&key_file, root);
        let config = dir.join("agent.toml");
        std::fs::write(
            &config,
            format!(
                "server_url = \"http://{server}\"\nsite_code = \"{site}\"\n\
                 enrollment_key_file = \"{}\"\n",
                key_file.display()
            ),
        )
        .unwrap();
        chown(&config, root);
        let wardend = Proc(
            Self::command(&bins, &dir, root, "wardend")
                .arg("--dev")
                .stderr(Self::log(&dir))
                .spawn()
                .unwrap(),
        );
        let socket = dir.join("run/warden/warden.sock");
        let t = Instant::now();
        while !socket.exists() {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "wardend --dev did not start; its log is {}",
                dir.join("host.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let agent = Proc(
            Self::command(&bins, &dir, root, "warden-agent")
                .args(["--dev", "--config"])
                .arg(&config)
                .stderr(Self::log(&dir))
                .spawn()
                .unwrap(),
        );
        RealHost {
            dir,
            bins,
            root,
            socket,
            _wardend: wardend,
            _agent: agent,
        }
    }

    /// When job `job_id` started, as wardend recorded it.
    pub fn job_started(&self, job_id: &str) -> SystemTime {
        let out = Self::command(&self.bins, &self.dir, self.root, "warden")
            .arg("--socket")
            .arg(&self.socket)
            .args(["--json", "job", job_id])
            .stdout(Stdio::piped())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "warden job {job_id}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).unwrap();
        let at = v["started_at"]
            .as_str()
            .unwrap_or_else(|| panic!("no started_at: {v}"));
        humantime::parse_rfc3339(at).unwrap()
    }
}

/// Opens the dispatch's live stream and answers when its first `output` event arrived, then
/// reads on until `end`.
pub async fn first_output(addr: SocketAddr, auth: &str, dispatch: &str) -> SystemTime {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET /v1/dispatches/{dispatch}/events HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: {auth}\r\nAccept: text/event-stream\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut first = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = tokio::time::timeout_at(deadline.into(), s.read(&mut buf))
            .await
            .expect("the live stream ended in 30 s")
            .unwrap();
        assert!(n > 0, "the live stream closed before its end event");
        seen.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&seen);
        // Each event goes out as one chunk of the body, so its lines are never split.
        if first.is_none() && text.contains("event: output") {
            first = Some(SystemTime::now());
        }
        if text.contains("event: end") {
            return first.expect("the dispatch ended without output");
        }
    }
}

/// The machine that enrolled at `site` once it is linked and has reported its actions.
pub async fn wait_linked(addr: SocketAddr, auth: &str, site: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(
            Instant::now() < deadline,
            "the real host did not link in 60 s"
        );
        let r = crate::common::http(
            addr,
            "GET",
            &format!("/v1/machines?site={site}"),
            None,
            &[("Authorization", auth)],
        )
        .await;
        if let Some(id) = r.json["machines"][0]["machine_id"].as_str() {
            let a = crate::common::http(
                addr,
                "GET",
                &format!("/v1/machines/{id}/actions"),
                None,
                &[("Authorization", auth)],
            )
            .await;
            let offered = a.json["actions"]
                .as_array()
                .is_some_and(|v| v.iter().any(|x| x["name"] == "demo-progress"));
            if offered {
                return id.to_owned();
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One run of `demo-progress` on the real host: from the job's start (it writes its first
/// line at once) to the operator's live stream delivering that line.
pub async fn one_run(addr: SocketAddr, auth: &str, host: &RealHost, machine: &str) -> f64 {
    let body = json!({"target": {"machines": [machine]}, "action": "demo-progress",
        "params": {"steps": 1}});
    let r = crate::common::http(
        addr,
        "POST",
        "/v1/dispatches",
        Some(body.to_string()),
        &[("Authorization", auth)],
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.raw);
    let id = r.json["dispatch"]["dispatch_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let delivered = first_output(addr, auth, &id).await;
    let v = crate::common::http(
        addr,
        "GET",
        &format!("/v1/dispatches/{id}"),
        None,
        &[("Authorization", auth)],
    )
    .await;
    let job = v.json["hosts"][0]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no job: {}", v.raw))
        .to_owned();
    let started = host.job_started(&job);
    delivered
        .duration_since(started)
        .unwrap_or_default()
        .as_secs_f64()
        * 1000.0
}
