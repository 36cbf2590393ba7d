//! Shared by wardend's integration tests: a real daemon on real sockets in a safe temp dir.

#![allow(dead_code)]

pub mod process;

use tempfile::TempDir;
use warden_proto::messages::DaemonMode;
use wardend::{Daemon, DaemonThread, Settings};

/// A running daemon and the directory its sockets and state live in (removed after it stops).
pub struct TestDaemon {
    pub daemon: Option<DaemonThread>,
    pub dir: TempDir,
}

impl TestDaemon {
    /// Starts a daemon whose configuration is `template` with `{dir}` replaced by a fresh
    /// directory. Without a `[daemon]` table, runtime and state directories go under it too.
    pub fn start(template: &str) -> TestDaemon {
        Self::start_with(template, |_| {})
    }

    pub fn start_with(template: &str, adjust: impl FnOnce(&mut Settings)) -> TestDaemon {
        let dir = warden_testkit::safe_tempdir();
        let mut text = warden_testkit::config(template, dir.path());
        if !template.contains("[daemon]") {
            text = format!(
                "[daemon]\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n{text}",
                d = dir.path().display()
            );
        }
        if !template.contains("[[listener]]") {
            text.push_str(&format!(
                "\n[[listener]]\npath = \"{}/warden.sock\"\nmode = \"0666\"\n",
                dir.path().display()
            ));
        }
        let mut settings = Settings::from_toml(&text, "test", DaemonMode::System).unwrap();
        adjust(&mut settings);
        let daemon = Daemon::spawn_thread(settings).unwrap();
        TestDaemon {
            daemon: Some(daemon),
            dir,
        }
    }

    pub fn socket(&self) -> &std::path::Path {
        self.daemon.as_ref().unwrap().socket()
    }

    pub fn sockets(&self) -> &[std::path::PathBuf] {
        self.daemon.as_ref().unwrap().socket_paths()
    }

    /// Shuts the daemon down gracefully and waits for it.
    pub fn stop(&mut self) {
        if let Some(d) = self.daemon.take() {
            d.stop();
        }
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.stop();
    }
}
