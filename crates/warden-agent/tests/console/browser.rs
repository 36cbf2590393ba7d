//! The browser side of the console tests: finding what they need (Node, the console's
//! `playwright-core`, Debian's Chromium) and running `console/e2e/console.mjs` for one
//! scenario, speaking its line protocol. It owns the script's process and the browser under it
//! and ends both, on success and on failure; it never prints a line that may hold a secret
//! (keys and session tokens travel in files, not on the lines).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// How long the script may stay silent (one scenario step, or its start with Chromium's).
const SILENCE: Duration = Duration::from_secs(90);

/// What a browser test needs besides root.
pub struct Tools {
    pub node: PathBuf,
    pub chromium: PathBuf,
    /// `console/` at the repository's root (with `node_modules/playwright-core` and `e2e/`).
    pub console: PathBuf,
}

/// The tools, or `None` after printing why the test is skipped; with
/// `WARDEN_REQUIRE_ROOT_TESTS=1` a missing tool fails the test instead.
pub fn tools_or_skip(test: &str) -> Option<Tools> {
    let console = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../console");
    let node = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("node"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default()
        .into_iter()
        .find(|p| p.is_file());
    let chromium = PathBuf::from("/usr/bin/chromium");
    let missing = [
        (node.is_none(), "node (Debian's nodejs) is not on PATH"),
        (
            !console.join("node_modules/playwright-core").is_dir(),
            "console/node_modules/playwright-core is missing (run `npm ci` in console/)",
        ),
        (
            !chromium.is_file(),
            "/usr/bin/chromium is missing (apt-get install chromium)",
        ),
        (
            !console.join("e2e/console.mjs").is_file(),
            "console/e2e/console.mjs is missing",
        ),
    ];
    let why: Vec<&str> = missing.iter().filter(|m| m.0).map(|m| m.1).collect();
    if why.is_empty() {
        return Some(Tools {
            node: node?,
            chromium,
            console,
        });
    }
    if std::env::var("WARDEN_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!(
            "{test} needs a browser and WARDEN_REQUIRE_ROOT_TESTS=1 forbids skipping it: {}",
            why.join("; ")
        );
    }
    eprintln!("skipping {test}: {}", why.join("; "));
    None
}

/// `target/console-screenshots/`, made; where the scenarios save their screenshots.
pub fn screenshots() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/debug/deps/console-… -> target
    let dir = exe.ancestors().nth(3).unwrap().join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// One run of the script: a scenario in its own headless Chromium.
pub struct Browser {
    scenario: String,
    child: Child,
    stdin: ChildStdin,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl Browser {
    /// Starts scenario `scenario` with `env` (JSON, as `WARDEN_E2E`).
    pub fn start(tools: &Tools, scenario: &str, env: &Value) -> Browser {
        let mut env = env.clone();
        env["chromium"] = Value::String(tools.chromium.display().to_string());
        let mut child = Command::new(&tools.node)
            .arg(tools.console.join("e2e/console.mjs"))
            .arg(scenario)
            .current_dir(&tools.console)
            .env("WARDEN_E2E", env.to_string())
            // Its own process group, so the clean-up reaches whatever it leaves behind.
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().unwrap();
        let name = scenario.to_owned();
        std::thread::spawn(move || {
            for l in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[browser {name}] {l}");
            }
        });
        Browser {
            scenario: scenario.to_owned(),
            child,
            stdin,
            lines,
        }
    }

    /// The script's next request (`need …`/`check …`) as words, or `None` when it passed.
    /// Panics on `fail …`, an exit, or silence.
    pub async fn next(&mut self) -> Option<Vec<String>> {
        let line = match tokio::time::timeout(SILENCE, self.lines.recv()).await {
            Ok(Some(l)) => l,
            Ok(None) => panic!(
                "{}: the browser script ended without a verdict ({:?})",
                self.scenario,
                self.child.try_wait()
            ),
            Err(_) => panic!(
                "{}: the browser script was silent for {SILENCE:?}",
                self.scenario
            ),
        };
        if line == "pass" {
            eprintln!("[browser {}] pass", self.scenario);
            return None;
        }
        if let Some(why) = line.strip_prefix("fail ") {
            panic!("{}: the browser scenario failed: {why}", self.scenario);
        }
        eprintln!("[browser {}] asks: {line}", self.scenario);
        Some(line.split_whitespace().map(str::to_owned).collect())
    }

    /// Answers the script's last request (`ok …`).
    pub fn answer(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").unwrap();
        self.stdin.flush().unwrap();
    }

    /// Waits for the script to exit after its verdict; its status must be success.
    pub async fn finish(mut self) {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "{}: the script exited with {s}", self.scenario);
                return;
            }
            assert!(
                Instant::now() < end,
                "{}: the script did not exit",
                self.scenario
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The pids of the script's children (Chromium runs in a process group of its own).
    fn children(&self) -> Vec<u32> {
        let pid = self.child.id();
        let mut out = Vec::new();
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return out;
        };
        for t in tasks.map_while(Result::ok) {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            out.extend(
                text.split_whitespace()
                    .filter_map(|p| p.parse::<u32>().ok()),
            );
        }
        out
    }
}

fn kill(args: &[&str]) {
    let _ = Command::new("kill")
        .args(args)
        .stderr(Stdio::null())
        .status();
}

impl Drop for Browser {
    /// SIGTERM first (Playwright closes its browser then), SIGKILL for whatever is left: the
    /// script's process group and the process group of each of its children (Chromium).
    fn drop(&mut self) {
        let children = self.children();
        let pid = self.child.id().to_string();
        if self.child.try_wait().ok().flatten().is_none() {
            kill(&["-TERM", &pid]);
            let end = Instant::now() + Duration::from_secs(3);
            while Instant::now() < end && self.child.try_wait().ok().flatten().is_none() {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        kill(&["-KILL", "--", &format!("-{pid}")]);
        for c in children {
            // Only while it is still the browser we saw (its pid not yet reused).
            let cmdline = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("chromium") {
                kill(&["-KILL", "--", &format!("-{c}")]);
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
