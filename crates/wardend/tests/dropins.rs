//! Drop-in configuration (`warden.d/*.toml` beside the main file) with real files, owners and
//! modes: what the daemon, `check-config` and a reload read, in which order, what they refuse,
//! and how they name a problem's file and line. These tests need root (files owned by others).

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::process::{Notify, Proc, WARDEND, check_config, write_config};
use serde_json::json;
use warden_testkit::raw::RawClient;

fn action(name: &str) -> String {
    format!(
        "[[action]]\nname = \"{name}\"\ndescription = \"from a drop-in\"\nargv = [\"/bin/true\"]\n\
         tier = \"read_only\"\nmutating = false\ntimeout_s = 5\n"
    )
}

/// `dir/warden.d/name` with `text`, mode 0644.
fn dropin(dir: &Path, name: &str, text: &str) -> PathBuf {
    let d = dir.join("warden.d");
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, text).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    p
}

fn actions(sock: &Path) -> Vec<String> {
    let mut c = RawClient::hello(sock);
    c.call(9, "actions.list", json!({}))["result"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_owned())
        .collect()
}

const LISTENER: &str = "[[listener]]\npath = \"{dir}/run/w.sock\"\n";

/// Pins: valid drop-ins add their actions, visible in `actions.list` of the running daemon and
/// named by `check-config`; only `*.toml` not starting with `.` is read, in lexical order.
#[test]
fn valid_drop_ins_add_actions_seen_by_the_daemon_and_check_config() {
    if !warden_testkit::root_or_skip(
        "valid_drop_ins_add_actions_seen_by_the_daemon_and_check_config",
    ) {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), &format!("{LISTENER}{}", action("main-one")));
    let b = dropin(dir.path(), "20-b.toml", &action("from-b"));
    let a = dropin(dir.path(), "10-a.toml", &action("from-a"));
    // Not read: other suffixes and hidden files (editors, dpkg), even when they are broken.
    dropin(dir.path(), "30-c.toml.dpkg-old", "garbage = [");
    dropin(dir.path(), ".30-d.toml", "garbage = [");
    dropin(dir.path(), "README", "garbage = [");
    // A risk is reported at the declaration, in the drop-in.
    let slow = dropin(
        dir.path(),
        "40-slow.toml",
        "\n[[action]]\nname = \"slow\"\nargv = [\"/bin/true\"]\ntier = \"read_only\"\nmutating = false\n",
    );

    let (code, out, err) = check_config(&cfg);
    assert_eq!(code, 0, "{out}{err}");
    let oks: Vec<&str> = out.lines().filter(|l| l.ends_with(": ok")).collect();
    assert_eq!(
        oks,
        [
            format!("{}: ok", cfg.display()),
            format!("{}: ok", a.display()),
            format!("{}: ok", b.display()),
            format!("{}: ok", slow.display()),
        ]
    );
    assert!(
        out.contains(&format!(
            "{}:3: warning: action `slow` may run for 3600 s",
            slow.display()
        )),
        "{out}"
    );

    let mut p = Proc::start(&cfg, dir.path(), &[]);
    let sock = dir.path().join("run/w.sock");
    p.wait_log("wardend ready", 1);
    assert_eq!(actions(&sock), ["from-a", "from-b", "main-one", "slow"]);
    assert!(
        p.log().contains("read drop-in configuration"),
        "{}",
        p.log()
    );
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
}

/// Pins: an action name declared in two files is refused by `check-config` and by the daemon's
/// start, naming both files and lines; a broken drop-in is named by file, line and column; a
/// drop-in may not set what only the main file may.
#[test]
fn duplicates_and_bad_drop_ins_are_named_by_file_and_line() {
    if !warden_testkit::root_or_skip("duplicates_and_bad_drop_ins_are_named_by_file_and_line") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), LISTENER);
    let a = dropin(dir.path(), "a.toml", &action("twice"));
    let b = dropin(dir.path(), "b.toml", &format!("\n\n{}", action("twice")));
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!(
            "{}:4: action `twice` is already declared at {}:2",
            b.display(),
            a.display()
        )
    );
    let out = Command::new(WARDEND)
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is already declared at"),
        "{out:?}"
    );

    std::fs::remove_file(&b).unwrap();
    let bad = dropin(
        dir.path(),
        "c.toml",
        "[[action]]\nname = \"x\"\nargv = \"/bin/true\"\n",
    );
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.starts_with(&format!("{}:3:8: invalid type", bad.display())),
        "{err}"
    );

    std::fs::write(
        &bad,
        format!("{}\n[tiers]\nadmin_groups = [\"users\"]\n", action("y")),
    )
    .unwrap();
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{}:9:1: [tiers] may be set only in the main configuration file",
            bad.display()
        )),
        "{err}"
    );
}

/// Pins: a drop-in (or the drop-in directory, or the main file) that a group or other users may
/// write, or that another user owns, is refused, as is a symlink to such a file; a symlink to a
/// sound file is read as the file itself (and flagged by `doctor`, as a symlinked main file is).
#[test]
fn a_drop_in_others_could_change_is_refused() {
    if !warden_testkit::root_or_skip("a_drop_in_others_could_change_is_refused") {
        return;
    }
    let alice = warden_testkit::users::TestUser::create(&[]);
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), LISTENER);
    let d = dir.path().join("warden.d");
    let p = dropin(dir.path(), "a.toml", &action("a"));
    let refused = |path: &Path, why: &str| {
        let (code, _, err) = check_config(&cfg);
        assert_eq!(code, 1, "{err}");
        assert!(
            err.contains(&format!("{}: refused: {why}", path.display())),
            "{err}"
        );
        // The daemon refuses to start on it too.
        assert!(matches!(
            wardend::Settings::system(&cfg, true),
            Err(wardend::SettingsError::Unsafe { .. })
        ));
    };

    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
    refused(&p, "mode 0664 lets its group write it");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o646)).unwrap();
    refused(&p, "mode 0646 lets every user write it");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&p, Some(alice.uid), None).unwrap();
    refused(&p, &format!("owned by uid {}", alice.uid));
    std::os::unix::fs::chown(&p, Some(0), None).unwrap();
    assert_eq!(check_config(&cfg).0, 0);

    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
    refused(&d, "mode 0775 lets its group write it");
    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();

    // A symlink is followed, and the file it names is what is checked and read.
    let elsewhere = dir.path().join("shipped.toml");
    std::fs::write(&elsewhere, action("linked")).unwrap();
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o644)).unwrap();
    let link = d.join("b.toml");
    std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
    let (code, _, err) = check_config(&cfg);
    assert_eq!(code, 0, "{err}");
    let s = wardend::Settings::system(&cfg, true).unwrap();
    assert!(s.policy.actions.keys().any(|a| a.as_str() == "linked"));
    // `wardend doctor` flags it as it flags a symlinked main file, and passes the others.
    let out = Command::new(WARDEND)
        .arg("doctor")
        .arg(&cfg)
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(
        report.contains(&format!("error   drop-in {} is a symlink", link.display()))
            && report.contains(&format!(
                "ok      drop-in {} is root's, mode 0644",
                p.display()
            )),
        "{report}"
    );
    std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o666)).unwrap();
    refused(&link, "mode 0666 lets every user write it");
    std::fs::remove_file(&link).unwrap();

    // The main file passes the same test.
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o664)).unwrap();
    refused(&cfg, "mode 0664 lets its group write it");
}

/// Pins: SIGHUP reads the drop-ins again: a new one's action appears, a broken one keeps the
/// policy in force (the error names its file and line), and each reload is announced to
/// systemd with RELOADING=1 and MONOTONIC_USEC before, READY=1 after; `policy.reload` too.
#[test]
fn reload_reads_new_drop_ins_and_a_bad_one_keeps_the_old_policy() {
    if !warden_testkit::root_or_skip("reload_reads_new_drop_ins_and_a_bad_one_keeps_the_old_policy")
    {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let cfg = write_config(dir.path(), LISTENER);
    let notify = Notify::bind(dir.path());
    let notify_path = notify.path.display().to_string();
    let mut p = Proc::start(&cfg, dir.path(), &[("NOTIFY_SOCKET", &notify_path)]);
    notify.until("READY=1");
    let sock = dir.path().join("run/w.sock");
    assert!(actions(&sock).is_empty());

    dropin(dir.path(), "new.toml", &action("added"));
    p.signal("HUP");
    let seen = notify.until("READY=1");
    let reloading = seen.iter().find(|m| m.contains("RELOADING=1")).unwrap();
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(usec > 0);
    assert!(
        seen.last()
            .unwrap()
            .contains("STATUS=configuration reloaded"),
        "{seen:?}"
    );
    p.wait_log("configuration reloaded", 1);
    assert_eq!(actions(&sock), ["added"]);

    let broken = dropin(dir.path(), "zz.toml", "[[action]]\nname = 7\n");
    p.signal("HUP");
    let seen = notify.until("READY=1");
    assert!(seen.iter().any(|m| m.contains("RELOADING=1")), "{seen:?}");
    assert!(seen.last().unwrap().contains("reload failed"), "{seen:?}");
    p.wait_log("reload failed", 1);
    assert!(
        p.log().contains(&format!("{}:2:8: ", broken.display())),
        "names the drop-in, line and column: {}",
        p.log()
    );
    assert_eq!(actions(&sock), ["added"]);

    // The API's reload reads them too, and says so to systemd the same way.
    std::fs::write(&broken, action("later")).unwrap();
    let mut c = RawClient::hello(&sock);
    let r = c.call(2, "policy.reload", json!({}));
    assert!(r.get("result").is_some(), "{r}");
    let seen = notify.until("READY=1");
    assert!(seen.iter().any(|m| m.contains("RELOADING=1")), "{seen:?}");
    assert_eq!(actions(&sock), ["added", "later"]);
    assert!(notify.collect(Duration::from_millis(100)).is_empty());
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
}
