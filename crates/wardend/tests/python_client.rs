//! The Python client (`clients/python`) against the real daemon: runs its `unittest` suite with
//! the `wardend` binary cargo built, so `cargo test --workspace` (and so CI) checks the client
//! speaks the protocol the daemon serves. Without `python3` the test is skipped with its reason,
//! unless `WARDEN_REQUIRE_ROOT_TESTS=1`, where a skip would hide a client nobody tested.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WARDEND: &str = env!("CARGO_BIN_EXE_wardend");

fn python() -> Option<String> {
    let python = std::env::var("WARDEN_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import sys; assert sys.version_info >= (3, 11)"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    ok.then_some(python)
}

/// Pins: the Python client's tests (framing, hello, status, an error's kind, a job followed to
/// its result, cancel and rollback, logs, timeouts, an event subscription) all run and pass
/// against `wardend --dev`, none skipped.
#[test]
fn the_python_client_passes_its_tests_against_the_real_daemon() {
    let Some(python) = python() else {
        if std::env::var("WARDEN_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
            panic!(
                "python3 (3.11 or later) is missing and WARDEN_REQUIRE_ROOT_TESTS=1 forbids skipping"
            );
        }
        eprintln!("skipping the Python client's tests: no python3 3.11 or later on PATH");
        return;
    };
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = warden_testkit::safe_tempdir();
    let out_path = dir.path().join("unittest.out");
    let out = std::fs::File::create(&out_path).unwrap();
    let mut child = Command::new(&python)
        .args([
            "-m",
            "unittest",
            "discover",
            "-v",
            "-s",
            "clients/python/tests",
        ])
        .current_dir(&root)
        .env("WARDEND_BIN", WARDEND)
        .env("WARDEN_PY_TEST_DIR", dir.path())
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .spawn()
        .unwrap();
    // The suite takes about 10 s; a hang must fail the test, not CI's whole run.
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the Python client's tests ran past 300 s:\n{}",
                std::fs::read_to_string(&out_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let output = std::fs::read_to_string(&out_path).unwrap();
    eprintln!("{output}");
    assert!(status.success(), "python3 -m unittest failed: {status}");
    let ran: usize = output
        .lines()
        .find_map(|l| l.strip_prefix("Ran ")?.split(' ').next()?.parse().ok())
        .unwrap_or(0);
    assert!(ran >= 20, "the suite ran {ran} tests");
    assert!(!output.contains("skipped"), "a Python test was skipped");
}
