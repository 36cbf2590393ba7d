//! What the benchmarks share: the real `wardend` binary started on a configuration in a safe
//! temporary directory, stopped cleanly, and a client that waits for it to listen.

// Each benchmark uses a part of this.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Duration;

use warden_client::Client;

/// A running `wardend`; dropping it stops it with SIGTERM, so it removes what it made (its
/// cgroup directory).
pub struct Daemon {
    child: Child,
    /// Its one socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts `wardend` on `config` (`{dir}` replaced by `dir`), which must declare one
    /// listener at `{dir}/run/w.sock`.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        Daemon::start_bin(Path::new(env!("CARGO_BIN_EXE_wardend")), dir, config)
    }

    /// As [`Daemon::start`], with the `wardend` binary at `bin` (see [`builds`]).
    pub fn start_bin(bin: &Path, dir: &Path, config: &str) -> Daemon {
        let path = dir.join("bench.toml");
        std::fs::write(&path, warden_testkit::config(config, dir)).unwrap();
        let child = Command::new(bin)
            .arg("--config")
            .arg(&path)
            .env("WARDEN_LOG", "warn")
            .spawn()
            .unwrap();
        Daemon {
            child,
            socket: dir.join("run/w.sock"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// A client, once the daemon listens.
    pub async fn connect(&self) -> Client {
        for _ in 0..500 {
            if let Ok(c) = Client::connect(&self.socket, "bench").await {
                return c;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("wardend did not come up")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}

/// The binaries to compare, in the order rounds alternate them: this build's `name`, then the
/// same binary of an older build when `WARDEN_BENCH_BEFORE` names its directory (for example
/// `target/release` of a checkout of the commit before a change, built with
/// `cargo build --profile bench`). Labels are "after" and "before" when both are there, else "".
pub fn builds(name: &str, this_build: &Path) -> Vec<(&'static str, PathBuf)> {
    match std::env::var_os("WARDEN_BENCH_BEFORE") {
        Some(dir) => {
            let before = Path::new(&dir).join(name);
            assert!(
                before.is_file(),
                "WARDEN_BENCH_BEFORE: {} is not a file",
                before.display()
            );
            vec![("after", this_build.to_owned()), ("before", before)]
        }
        None => vec![("", this_build.to_owned())],
    }
}

/// The median of `v` (the upper one of an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// The baseline: a tokio echo server for length-prefixed frames.
pub fn echo_server(socket: &Path) {
    let _ = warden_sys::process::raise_nofile_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        loop {
            let (mut stream, _) = listener.accept().await.unwrap();
            tokio::spawn(async move {
                let mut body = Vec::new();
                loop {
                    let mut header = [0u8; 4];
                    if stream.read_exact(&mut header).await.is_err() {
                        return;
                    }
                    body.resize(u32::from_be_bytes(header) as usize, 0);
                    if stream.read_exact(&mut body).await.is_err() {
                        return;
                    }
                    let mut out = header.to_vec();
                    out.extend_from_slice(&body);
                    if stream.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
}
