//! What the agent's tests share: a "host" (a safe temporary directory, a throwaway user when the
//! tests run as root, a state directory owned by it), the real `warden-agent` binary started as
//! that user with its log collected line by line, and a CA plus a server certificate made with
//! openssl.

#![allow(dead_code)]

pub mod fleet;
pub mod peer;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_testkit::users::TestUser;

/// A host for one agent.
pub struct Host {
    pub dir: tempfile::TempDir,
    /// The agent's user (root runs tests as a throwaway user; others as themselves).
    pub user: Option<TestUser>,
    pub state: PathBuf,
    pub bin: PathBuf,
}

impl Host {
    pub fn new() -> Host {
        let dir = warden_testkit::safe_tempdir();
        let user = warden_testkit::is_root().then(|| TestUser::create(&[]));
        let bin = warden_testkit::runnable_copy(
            Path::new(env!("CARGO_BIN_EXE_warden-agent")),
            dir.path(),
        );
        let state = dir.path().join("state");
        let host = Host {
            dir,
            user,
            state,
            bin,
        };
        // What systemd's StateDirectory= would make: 0700, the agent's own.
        std::fs::create_dir(&host.state).unwrap();
        host.give(&host.state, 0o700);
        host
    }

    /// The agent's uid.
    pub fn uid(&self) -> u32 {
        self.user
            .as_ref()
            .map_or_else(warden_sys::users::effective_uid, |u| u.uid)
    }

    /// Makes `path` the agent user's, with `mode`.
    pub fn give(&self, path: &Path, mode: u32) {
        if let Some(u) = &self.user {
            std::os::unix::fs::lchown(path, Some(u.uid), Some(u.gid)).unwrap();
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Writes `name` in the host's directory, the agent user's, 0600.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        self.give(&p, 0o600);
        p
    }

    /// An agent.toml for `server_url`, `site` and an enrollment key file holding `key`, with
    /// `extra` appended (e.g. a `[test_overrides]` table).
    pub fn config(&self, server_url: &str, site: &str, key: &str, extra: &str) -> PathBuf {
        let key_file = self.write("enrollment.key", &format!("{key}\n"));
        let text = format!(
            "server_url = \"{server_url}\"\nsite_code = \"{site}\"\nenrollment_key_file = \"{}\"\n\
             state_dir = \"{}\"\nwardend_socket = \"{}\"\n{extra}",
            key_file.display(),
            self.state.display(),
            self.dir.path().join("no-wardend.sock").display(),
        );
        self.write("agent.toml", &text)
    }

    /// Starts the agent with `args`.
    pub fn start(&self, args: &[&str]) -> Agent {
        self.start_logging(args, "info")
    }

    /// Starts the agent with `args` and `WARDEN_AGENT_LOG=log`.
    pub fn start_logging(&self, args: &[&str], log: &str) -> Agent {
        let mut cmd = match &self.user {
            Some(u) => u.command(&self.bin),
            None => Command::new(&self.bin),
        };
        cmd.args(args)
            .env("WARDEN_AGENT_LOG", log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&logs);
        let stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut l = sink.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        Agent {
            child,
            logs,
            reader: Some(reader),
        }
    }

    pub fn key_file(&self) -> PathBuf {
        self.state.join("machine.key")
    }

    /// The stored machine key, if any.
    pub fn stored_key(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.key_file()).ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        Some(v["machine_key"].as_str().unwrap().to_owned())
    }
}

/// A running agent.
pub struct Agent {
    pub child: Child,
    logs: Arc<Mutex<String>>,
    /// Copies stderr into `logs` until the pipe closes.
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Agent {
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Lines containing `needle`.
    pub fn lines(&self, needle: &str) -> Vec<String> {
        self.logs()
            .lines()
            .filter(|l| l.contains(needle))
            .map(str::to_owned)
            .collect()
    }

    /// Waits until `n` lines contain `needle`; returns them, or panics with the log.
    pub async fn wait_lines(&self, needle: &str, n: usize, within: Duration) -> Vec<String> {
        let end = Instant::now() + within;
        loop {
            let found = self.lines(needle);
            if found.len() >= n {
                return found;
            }
            if Instant::now() > end {
                panic!(
                    "no {n} log lines with {needle:?} within {within:?}; the log:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_log(&self, needle: &str, within: Duration) -> String {
        self.wait_lines(needle, 1, within).await.remove(0)
    }

    /// Waits for the agent to exit on its own.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + within;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                self.drain_log(end).await;
                return Some(s);
            }
            if Instant::now() > end {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// After the exit, waits (until `end` at most) for the reader to copy the last of stderr,
    /// so a test that reads the log right after the exit sees all of it.
    async fn drain_log(&mut self, end: Instant) {
        while self.reader.as_ref().is_some_and(|r| !r.is_finished()) && Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if self.reader.as_ref().is_some_and(|r| r.is_finished()) {
            let _ = self.reader.take().map(|r| r.join());
        }
    }

    /// SIGTERM, then the exit status.
    pub async fn stop(&mut self) -> Option<ExitStatus> {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.wait_exit(Duration::from_secs(10)).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `field=` in a log line.
pub fn field(line: &str, name: &str) -> Option<u64> {
    let at = line.find(&format!(" {name}="))? + name.len() + 2;
    let rest = &line[at..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Asserts that no secret in `secrets` appears in `text`.
pub fn assert_no_secret(text: &str, secrets: &[&str]) {
    for s in secrets {
        assert!(!s.is_empty());
        assert!(!text.contains(s), "a key is in the agent's log:\n{text}");
        // The random part alone must not leak either.
        if let Some((_, body)) = s.split_once('_') {
            assert!(
                !text.contains(body),
                "key material is in the agent's log:\n{text}"
            );
        }
    }
}

/// A CA and a certificate for 127.0.0.1 signed by it, made with openssl: (ca, cert, key).
pub fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let p = |n: &str| dir.join(n);
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=warden test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        p("ext.cnf"),
        "basicConstraints=critical,CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n\
         extendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
        "-out",
        "server.pem",
    ]);
    let ca = p("ca.pem");
    std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
    (ca, p("server.pem"), p("server.key"))
}

/// Waits up to `within` for `cond`.
pub async fn eventually(within: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if cond() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cond()
}
