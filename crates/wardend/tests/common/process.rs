//! The `wardend` binary as a child process: its stderr in a file, a notify socket for what it
//! tells systemd, signals, and a kill if a test fails before stopping it.

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use warden_testkit::raw::PATIENCE;

pub const WARDEND: &str = env!("CARGO_BIN_EXE_wardend");

/// Writes `dir/warden.toml`: runtime and state under `dir`, then `body` (`{dir}` replaced).
pub fn write_config(dir: &Path, body: &str) -> PathBuf {
    let path = dir.join("warden.toml");
    let text = format!(
        "[daemon]\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n{body}",
        d = dir.display()
    );
    std::fs::write(&path, warden_testkit::config(&text, dir)).unwrap();
    path
}

/// `wardend check-config PATH`: its exit status, stdout and stderr.
pub fn check_config(path: &Path) -> (i32, String, String) {
    let out = Command::new(WARDEND)
        .arg("check-config")
        .arg(path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// A running wardend.
pub struct Proc {
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    /// Starts `wardend --config CONFIG` with `env` set, logging at info to a file in `dir`.
    pub fn start(config: &Path, dir: &Path, env: &[(&str, &str)]) -> Proc {
        let mut cmd = Command::new(WARDEND);
        cmd.arg("--config").arg(config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Proc::spawn(cmd, dir)
    }

    /// Runs `cmd` (wardend, or something that starts it) logging at info to a file in `dir`.
    pub fn spawn(cmd: Command, dir: &Path) -> Proc {
        Proc::spawn_logging(cmd, dir, "info")
    }

    /// As [`Proc::spawn`], with `WARDEN_LOG=level`.
    pub fn spawn_logging(mut cmd: Command, dir: &Path, level: &str) -> Proc {
        let log = dir.join(format!("wardend-{}.log", warden_testkit::random_hex(3)));
        cmd.stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .env("WARDEN_LOG", level);
        Proc {
            child: cmd.spawn().unwrap(),
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(ok.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            assert!(Instant::now() < deadline, "wardend did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// Waits until `line` is in the log `count` times; the log then.
    pub fn wait_log(&self, line: &str, count: usize) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let log = self.log();
            if log.matches(line).count() >= count {
                return log;
            }
            assert!(Instant::now() < deadline, "no `{line}` in the log: {log}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A datagram socket standing in for systemd's `NOTIFY_SOCKET`.
pub struct Notify {
    pub socket: UnixDatagram,
    pub path: PathBuf,
}

impl Notify {
    pub fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        Notify { socket, path }
    }

    /// The next message, or `None` when none comes within `wait`. A receive with a timeout fails
    /// with EINTR when a signal reaches this test process, so it is tried again.
    pub fn recv(&self, wait: Duration) -> Option<String> {
        self.socket.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => return Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return None;
                }
                Err(e) => panic!("notify socket: {e}"),
            }
        }
    }

    /// Every message that arrives within `wait`.
    pub fn collect(&self, wait: Duration) -> Vec<String> {
        let deadline = Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if left.is_zero() {
                break;
            }
            match self.recv(left) {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Reads messages until one contains `what`; panics after `PATIENCE`. Returns the messages
    /// read, that one last.
    pub fn until(&self, what: &str) -> Vec<String> {
        let deadline = Instant::now() + PATIENCE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no {what} among {seen:?}");
            if let Some(m) = self.recv(left) {
                let done = m.contains(what);
                seen.push(m);
                if done {
                    return seen;
                }
            }
        }
    }
}
