//! The key store with real processes: the agent binary, run as a throwaway user, refuses to
//! start on a state directory or key file of the wrong mode, owner or type, saying what it
//! found and what to run; and a writer killed with SIGKILL at random moments leaves the old key
//! or the new one, never a torn file.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Host;
use warden_agent::keystore::{KeyStore, StoredKey};
use warden_fleet_proto::KeyVersion;

fn key(i: u64) -> StoredKey {
    StoredKey {
        key: format!("wmk_{:064x}", u128::from(i) * 0x9e37_79b9_7f4a_7c15)
            .parse()
            .unwrap(),
        version: Some(KeyVersion(i)),
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Starts the agent on `host` and expects it to refuse: exit status 1 and a message with all of
/// `needles`, before any network use.
async fn refuses(host: &Host, config: &Path, needles: &[&str]) {
    let mut agent = host.start(&["--config", config.to_str().unwrap()]);
    let status = agent
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("the agent did not refuse to start");
    let logs = agent.logs();
    assert_eq!(status.code(), Some(1), "{logs}");
    for n in needles {
        assert!(logs.contains(n), "no {n:?} in:\n{logs}");
    }
    assert!(
        !logs.contains("enrollment:"),
        "it went on to enroll:\n{logs}"
    );
}

/// Pins: a state directory open to others, owned by someone else, or a symlink, and a key file
/// readable by others, owned by someone else, or a symlink, each stop the agent at start with
/// the path, the mode or owner found and the fix; the key file is left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsafe_key_store_refuses_to_start() {
    if !warden_testkit::root_or_skip("an_unsafe_key_store_refuses_to_start") {
        return;
    }
    let host = Host::new();
    let user = host.user.as_ref().unwrap();
    // Nothing listens here: a refusal must come before any network use.
    let cfg = host.config(
        "https://127.0.0.1:9",
        "hq",
        "wek_x",
        &format!(
            "[test_overrides]\nmachine_id_override = \"muid_{}\"\n",
            "0".repeat(64)
        ),
    );
    let state = host.state.to_str().unwrap();

    // The directory, open to group and others.
    chmod(&host.state, 0o755);
    refuses(&host, &cfg, &[state, "mode 0755", "chmod 0700"]).await;
    chmod(&host.state, 0o700);

    // The directory, someone else's (root's, but readable so the agent can see it).
    std::os::unix::fs::chown(&host.state, Some(0), Some(0)).unwrap();
    chmod(&host.state, 0o755);
    refuses(
        &host,
        &cfg,
        &[
            state,
            "owned by uid 0 (root)",
            &format!("chown {}:", user.name),
        ],
    )
    .await;
    host.give(&host.state, 0o700);

    // The directory, a symlink to a good one.
    let real = host.dir.path().join("real-state");
    std::fs::rename(&host.state, &real).unwrap();
    std::os::unix::fs::symlink(&real, &host.state).unwrap();
    refuses(&host, &cfg, &[state, "symlink"]).await;
    std::fs::remove_file(&host.state).unwrap();
    std::fs::rename(&real, &host.state).unwrap();

    // A key file readable by others.
    let good = serde_json::json!({"machine_key": format!("wmk_{}", "ab".repeat(32))}).to_string();
    let file = host.key_file();
    std::fs::write(&file, &good).unwrap();
    host.give(&file, 0o644);
    let path = file.to_str().unwrap();
    refuses(&host, &cfg, &[path, "mode 0644", "chmod 0600"]).await;

    // A key file of someone else's.
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
    chmod(&file, 0o600);
    let mut agent = host.start(&["--config", cfg.to_str().unwrap()]);
    let status = agent.wait_exit(Duration::from_secs(20)).await.unwrap();
    assert_eq!(status.code(), Some(1), "{}", agent.logs());
    // Root's 0600 file cannot even be opened by the agent: it says which file and why.
    assert!(agent.logs().contains(path), "{}", agent.logs());
    chmod(&file, 0o604);
    refuses(&host, &cfg, &[path, "owned by uid 0 (root)"]).await;

    // A key file that is a symlink (to a file of the agent's own).
    std::fs::remove_file(&file).unwrap();
    let elsewhere = host.write("elsewhere.key", &good);
    std::os::unix::fs::symlink(&elsewhere, &file).unwrap();
    refuses(&host, &cfg, &[path, "symlink"]).await;
    assert_eq!(std::fs::read_to_string(&elsewhere).unwrap(), good);
}

/// The child side of the SIGKILL test: rewrites the key in a loop until killed.
#[test]
fn rewriting_child() {
    let Some(dir) = std::env::var_os("WARDEN_AGENT_TEST_REWRITE") else {
        return;
    };
    let store = KeyStore::open(Path::new(&dir)).unwrap();
    let start = store
        .load()
        .unwrap()
        .and_then(|k| k.version)
        .map_or(0, |v| v.0);
    for i in start + 1.. {
        store.store(&key(i)).unwrap();
    }
}

/// Pins: a writer killed with SIGKILL at random moments (mid-write, mid-rename, mid-fsync)
/// always leaves a key file that reads back whole, holding a key it wrote, and the key moves
/// on from round to round (so the writer really was writing when killed).
#[test]
fn sigkill_during_writes_leaves_the_old_or_the_new_key() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("state");
    KeyStore::open(&dir).unwrap().store(&key(1)).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last = 1;
    let mut moved = 0;
    for round in 0..40u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "rewriting_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WARDEN_AGENT_TEST_REWRITE", &dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Start-up takes a few ms; kill somewhere in the first ~40 ms of rewriting.
        let ms = 5 + warden_agent::backoff::draw() % 40;
        std::thread::sleep(Duration::from_millis(ms));
        child.kill().unwrap();
        let status = child.wait().unwrap();
        assert!(
            !status.success(),
            "round {round}: the writer stopped on its own"
        );
        let store = KeyStore::open(&dir).unwrap();
        let held = store.load().unwrap().expect("the key file vanished");
        let v = held.version.unwrap().0;
        assert_eq!(held, key(v), "round {round}: a key the writer never wrote");
        assert!(
            v >= last,
            "round {round}: the key went back from {last} to {v}"
        );
        if v > last {
            moved += 1;
        }
        last = v;
    }
    assert!(
        moved >= 10,
        "the writer was killed before writing in most rounds ({moved}/40)"
    );
}

/// Pins: the agent refuses to run as root (outside --dev), before touching its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn root_is_refused() {
    if !warden_testkit::root_or_skip("root_is_refused") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let state = dir.path().join("state");
    let key_file = dir.path().join("enrollment.key");
    std::fs::write(&key_file, "wek_x").unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "server_url = \"https://127.0.0.1:9\"\nsite_code = \"hq\"\n\
             enrollment_key_file = \"{}\"\nstate_dir = \"{}\"\n",
            key_file.display(),
            state.display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_warden-agent"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("refusing to run as root"), "{err}");
    assert!(!state.exists(), "it made its state directory first");
}

/// Pins: a `--dev` agent keeps its state under the user's own directories and makes the ones
/// missing (as on a fresh account without `~/.local/state`), its key store 0700.
#[tokio::test]
async fn a_dev_agent_makes_its_state_directory_and_the_missing_parents() {
    if !warden_testkit::root_or_skip(
        "a_dev_agent_makes_its_state_directory_and_the_missing_parents",
    ) {
        return;
    }
    let host = Host::new();
    let user = host.user.as_ref().unwrap();
    let key_file = host.write("enrollment.key", "wek_x\n");
    let cfg = host.write(
        "agent.toml",
        &format!(
            "server_url = \"http://127.0.0.1:9\"\nsite_code = \"hq\"\nenrollment_key_file = \"{}\"\n\
             wardend_socket = \"{}\"\n",
            key_file.display(),
            host.dir.path().join("no.sock").display()
        ),
    );
    // XDG_STATE_HOME points two levels below a directory that exists (the user's own).
    let xdg = host.state.join("home/.local/state");
    let mut child = user
        .command(&host.bin)
        .args(["--dev", "--config", cfg.to_str().unwrap()])
        .env("XDG_STATE_HOME", &xdg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let dir = xdg.join("warden-agent");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !dir.join("agent.lock").exists() {
        assert!(
            Instant::now() < deadline,
            "no state directory at {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    let meta = std::fs::metadata(&dir).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o700);
    assert_eq!(meta.uid(), user.uid);
    assert_eq!(std::fs::metadata(&xdg).unwrap().uid(), user.uid);
}
