//! `host.identity` against real daemons reading fixture hardware files, each daemon standing for
//! one host: who may ask (the fleet agent's real uid, root, and no one else), that the id follows
//! the fixtures (different hardware, different id; the same hardware, the same id; only
//! `/etc/machine-id`, degraded; nothing usable, `unavailable`), that a reload reads the files
//! again, and that `check-config` names a fleet agent user that does not exist. The tests with
//! real users need root; they skip with a reason otherwise, and fail instead when
//! WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};

use common::TestDaemon;
use common::process::check_config;
use serde_json::{Value, json};
use warden_testkit::raw::{RawClient, error_kind};
use warden_testkit::users::TestUser;

/// A product UUID as firmware writes it (upper case, trailing newline).
const UUID_A: &str = "4C4C4544-0051-3510-8057-B3C04F4E3432\n";
const UUID_B: &str = "9A1E3C55-27D0-4B8E-A1F2-6C0D3E4B5A69\n";
const MACHINE_ID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4\n";

/// Fixture hardware files in `dir`: each `Some` is written, each `None` left missing.
struct Hardware<'a> {
    product_uuid: Option<&'a str>,
    board_serial: Option<&'a str>,
    disk_serial: Option<&'a str>,
    machine_id: Option<&'a str>,
}

impl Hardware<'_> {
    /// Writes the files under `dir/hw` and returns the `[fleet.identity]` table naming them.
    fn write(&self, dir: &Path) -> String {
        let hw = dir.join("hw");
        std::fs::create_dir_all(&hw).unwrap();
        for (name, value) in [
            ("product_uuid", self.product_uuid),
            ("board_serial", self.board_serial),
            ("disk_serial", self.disk_serial),
            ("machine_id", self.machine_id),
        ] {
            if let Some(v) = value {
                std::fs::write(hw.join(name), v).unwrap();
            }
        }
        format!(
            "[fleet.identity]\nproduct_uuid = \"{h}/product_uuid\"\nboard_serial = \
             \"{h}/board_serial\"\ndisk_serial = \"{h}/disk_serial\"\nmachine_id = \
             \"{h}/machine_id\"\n",
            h = hw.display()
        )
    }
}

fn uuid_host(uuid: &str) -> Hardware<'_> {
    Hardware {
        product_uuid: Some(uuid),
        board_serial: Some("BSN-0001\n"),
        disk_serial: Some("WD-WX0001\n"),
        machine_id: Some(MACHINE_ID),
    }
}

/// One host: a daemon and its fixture hardware (removed after the daemon stops).
struct Host {
    daemon: TestDaemon,
    _hardware: tempfile::TempDir,
}

impl std::ops::Deref for Host {
    type Target = TestDaemon;
    fn deref(&self) -> &TestDaemon {
        &self.daemon
    }
}

/// A daemon with `fleet` as its `[fleet]` table and `hw` as its hardware.
fn host(fleet: &str, hw: &Hardware<'_>) -> Host {
    let hardware = warden_testkit::safe_tempdir();
    let identity = hw.write(hardware.path());
    Host {
        daemon: TestDaemon::start(&format!("{fleet}\n{identity}")),
        _hardware: hardware,
    }
}

/// `host.identity` as root.
fn ask_as_root(d: &TestDaemon) -> Value {
    RawClient::hello(d.socket()).call(2, "host.identity", json!({}))
}

/// Run as a throwaway user by [`ask_as`]: when `WARDEN_TEST_IDENTITY_SOCKET` is set, greets
/// the daemon there, asks `host.identity`, and prints the answer as one line `ANSWER {json}`.
#[test]
#[ignore = "run by other tests as a throwaway user"]
fn identity_helper() {
    let Some(sock) = std::env::var_os("WARDEN_TEST_IDENTITY_SOCKET") else {
        return;
    };
    let answer = RawClient::hello(Path::new(&sock)).call(2, "host.identity", json!({}));
    println!("ANSWER {answer}");
}

/// `host.identity` asked by `user` through the real kernel credentials.
fn ask_as(bin: &Path, user: &TestUser, sock: &Path) -> Value {
    let out = user
        .command(bin)
        .args(["--exact", "identity_helper", "--ignored", "--nocapture"])
        .env("WARDEN_TEST_IDENTITY_SOCKET", sock)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("ANSWER "))
        .unwrap_or_else(|| {
            panic!(
                "no answer as {}: {stdout}{}",
                user.name,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).unwrap()
}

fn is_machine_id(v: &Value) -> bool {
    v.as_str().is_some_and(|s| {
        s.strip_prefix("muid_").is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    })
}

/// Pins: with `[fleet]` enabled, the agent user's real uid (tier none otherwise) and root get
/// the identity, another real user gets `forbidden` naming the admin tier; with fleet disabled,
/// the same agent user is refused too.
#[test]
fn the_agent_user_and_root_get_the_identity_and_others_are_forbidden() {
    if !warden_testkit::root_or_skip(
        "the_agent_user_and_root_get_the_identity_and_others_are_forbidden",
    ) {
        return;
    }
    let agent = TestUser::create(&[]);
    let other = TestUser::create(&[]);
    let fleet = |enabled: bool| {
        format!(
            "[fleet]\nenabled = {enabled}\nagent_user = \"{}\"\n",
            agent.name
        )
    };
    let d = host(&fleet(true), &uuid_host(UUID_A));
    let bin = warden_testkit::runnable_copy(&std::env::current_exe().unwrap(), d.dir.path());

    let by_root = ask_as_root(&d);
    let id = &by_root["result"];
    assert!(is_machine_id(&id["machine_id"]), "{by_root}");
    assert_eq!(id["source"], "dmi_product_uuid", "{by_root}");
    assert_eq!(id["degraded"], false, "{by_root}");

    let by_agent = ask_as(&bin, &agent, d.socket());
    assert_eq!(&by_agent["result"], id, "the agent sees what root sees");

    let by_other = ask_as(&bin, &other, d.socket());
    assert_eq!(error_kind(&by_other), Some("forbidden"), "{by_other}");
    let message = by_other["error"]["message"].as_str().unwrap();
    assert_eq!(message, "host.identity needs tier admin; you have none");

    let off = host(&fleet(false), &uuid_host(UUID_A));
    let refused = ask_as(&bin, &agent, off.socket());
    assert_eq!(error_kind(&refused), Some("forbidden"), "{refused}");
    assert_eq!(
        ask_as_root(&off)["result"],
        *id,
        "same hardware, same id, fleet on or off"
    );
}

/// Pins: two daemons on different fixture hardware give different ids; two on the same
/// hardware give the same one, whatever the case and padding of the UUID file.
#[test]
fn each_host_has_its_own_id_and_the_same_hardware_the_same_id() {
    let a = host("", &uuid_host(UUID_A));
    let b = host("", &uuid_host(UUID_B));
    let a_again = host("", &uuid_host(&format!("  {}", UUID_A.to_lowercase())));
    let (ia, ib, ia2) = (ask_as_root(&a), ask_as_root(&b), ask_as_root(&a_again));
    assert!(is_machine_id(&ia["result"]["machine_id"]), "{ia}");
    assert!(is_machine_id(&ib["result"]["machine_id"]), "{ib}");
    assert_ne!(ia["result"]["machine_id"], ib["result"]["machine_id"]);
    assert_eq!(ia["result"], ia2["result"]);

    // A placeholder UUID falls back to the board and disk serials, and those distinguish hosts.
    let serials = |board| Hardware {
        product_uuid: Some("03000200-0400-0500-0006-000700080009\n"),
        board_serial: Some(board),
        disk_serial: Some("S4EWNX0N123456\n"),
        machine_id: Some(MACHINE_ID),
    };
    let (c, d) = (host("", &serials("BSN-1\n")), host("", &serials("BSN-2\n")));
    let (ic, id) = (ask_as_root(&c), ask_as_root(&d));
    assert_eq!(ic["result"]["source"], "board_and_disk_serial", "{ic}");
    assert_eq!(ic["result"]["degraded"], false, "{ic}");
    assert_ne!(ic["result"]["machine_id"], id["result"]["machine_id"]);
}

/// Pins: a host whose only usable signal is its `/etc/machine-id` fixture answers with source
/// `machine_id` and `degraded: true`; one with nothing usable answers `unavailable`, saying
/// what to check.
#[test]
fn only_a_machine_id_is_degraded_and_nothing_is_unavailable() {
    let bare = |mid| Hardware {
        product_uuid: Some("Not Settable\n"),
        board_serial: Some("Default string\n"),
        disk_serial: None,
        machine_id: mid,
    };
    let d = host("", &bare(Some(MACHINE_ID)));
    let a = ask_as_root(&d);
    assert_eq!(a["result"]["source"], "machine_id", "{a}");
    assert_eq!(a["result"]["degraded"], true, "{a}");
    assert!(is_machine_id(&a["result"]["machine_id"]), "{a}");

    let none = host("", &bare(Some("uninitialized\n")));
    let e = ask_as_root(&none);
    assert_eq!(error_kind(&e), Some("unavailable"), "{e}");
    let message = e["error"]["message"].as_str().unwrap();
    assert!(message.contains("no usable machine identity"), "{message}");
    assert!(message.contains("[fleet.identity]"), "{message}");
}

/// Pins: the identity is kept from the start (a changed file is not seen by a request) and
/// read again at `policy.reload`.
#[test]
fn a_reload_reads_the_identity_files_again() {
    let fixtures = warden_testkit::safe_tempdir();
    let identity = uuid_host(UUID_A).write(fixtures.path());
    let config = fixtures.path().join("warden.toml");
    let mut d = TestDaemon::start_with(&identity, |s| s.config_path = Some(config.clone()));
    // The file reload reads: what the daemon runs with, written where it points.
    let text = format!(
        "[daemon]\nruntime_dir = \"{d}/run\"\nstate_dir = \"{d}/state\"\n\
         [[listener]]\npath = \"{d}/warden.sock\"\nmode = \"0666\"\n{identity}",
        d = d.dir.path().display()
    );
    std::fs::write(&config, text).unwrap();
    let before = ask_as_root(&d)["result"]["machine_id"].clone();
    std::fs::write(fixtures.path().join("hw/product_uuid"), UUID_B).unwrap();
    assert_eq!(ask_as_root(&d)["result"]["machine_id"], before);
    let mut c = RawClient::hello(d.socket());
    let r = c.call(2, "policy.reload", json!({}));
    assert!(r.get("result").is_some(), "{r}");
    let after = c.call(3, "host.identity", json!({}));
    assert!(is_machine_id(&after["result"]["machine_id"]), "{after}");
    assert_ne!(after["result"]["machine_id"], before);
    d.stop();
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

/// Pins: `check-config` fails on an enabled fleet whose agent user does not exist, naming the
/// file, line and user and saying how to fix it; the same section with fleet disabled passes
/// with a warning; an existing agent user passes clean.
#[test]
fn check_config_names_a_missing_fleet_agent_user() {
    let dir = tempfile::tempdir().unwrap();
    let ghost = format!("wdghost{}", warden_testkit::random_hex(4));
    let on = write(
        dir.path(),
        "on.toml",
        &format!("[fleet]\nenabled = true\nagent_user = \"{ghost}\"\n"),
    );
    let (code, _, err) = check_config(&on);
    assert_eq!(code, 1, "{err}");
    let want = format!(
        "{}:3: [fleet] agent_user `{ghost}` does not exist",
        on.display()
    );
    assert!(err.contains(&want), "{err}");
    assert!(err.contains("useradd --system"), "{err}");

    let off = write(
        dir.path(),
        "off.toml",
        &format!("[fleet]\nenabled = false\nagent_user = \"{ghost}\"\n"),
    );
    let (code, out, err) = check_config(&off);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&format!("{}:3: warning: [fleet] agent_user", off.display())),
        "{out}"
    );

    let exists = write(
        dir.path(),
        "root.toml",
        "[fleet]\nenabled = true\nagent_user = \"nobody\"\nmax_tier = \"read_only\"\n",
    );
    let (code, out, err) = check_config(&exists);
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("warning"), "{out}");
}
