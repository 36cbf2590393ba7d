//! What the CLI's tests with real users share: a daemon in this process (running as root) and a
//! copy of the CLI any user can run.

// Each test file uses a part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;
use warden_proto::messages::DaemonMode;
use warden_testkit::users::TestUser;
use wardend::{Daemon, DaemonThread, Settings};

pub struct Env {
    pub daemon: DaemonThread,
    pub warden: PathBuf,
    /// Removed after the daemon stops (fields drop in order).
    pub dir: TempDir,
}

impl Env {
    /// `template` is the configuration after `[daemon]`; `{dir}` is the test's directory. A
    /// socket anyone may open is added unless the template declares listeners.
    pub fn start(template: &str) -> Env {
        let dir = warden_testkit::safe_tempdir();
        let mut text = format!(
            "[daemon]\nruntime_dir = \"{{dir}}/run\"\nstate_dir = \"{{dir}}/state\"\n{template}"
        );
        if !template.contains("[[listener]]") {
            text.push_str("\n[[listener]]\npath = \"{dir}/run/warden.sock\"\nmode = \"0666\"\n");
        }
        let text = warden_testkit::config(&text, dir.path());
        let settings = Settings::from_toml(&text, "test", DaemonMode::System).unwrap();
        let daemon = Daemon::spawn_thread(settings).unwrap();
        let warden =
            warden_testkit::runnable_copy(Path::new(env!("CARGO_BIN_EXE_warden")), dir.path());
        Env {
            daemon,
            warden,
            dir,
        }
    }

    pub fn socket(&self) -> &Path {
        self.daemon.socket()
    }

    /// The CLI as `user`, with the groups /etc/group gives it.
    pub fn as_user(&self, user: &TestUser, args: &[&str]) -> Output {
        self.run(user.command(&self.warden), args)
    }

    /// `cmd` (the CLI under some identity) against this daemon.
    pub fn run(&self, mut cmd: Command, args: &[&str]) -> Output {
        cmd.arg("--socket").arg(self.socket()).args(args);
        cmd.env_remove("WARDEN_SOCKET").output().unwrap()
    }
}
