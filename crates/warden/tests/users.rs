//! Identity and tiers with real throwaway users and groups, connecting through the real kernel
//! credentials (`setpriv`) with the real CLI, to a real daemon. Needs root; skips with a reason
//! otherwise, and fails instead when WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::Value;
use warden_testkit::raw::{PATIENCE, RawClient};
use warden_testkit::users::{Groups, TestGroup, TestUser, as_ids};

use common::Env;

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn group_members_get_their_group_tier_and_unmapped_users_get_none() {
    if !warden_testkit::root_or_skip(
        "group_members_get_their_group_tier_and_unmapped_users_get_none",
    ) {
        return;
    }
    let (gadm, gops, gro) = (
        TestGroup::create(),
        TestGroup::create(),
        TestGroup::create(),
    );
    let env = Env::start(&format!(
        "[tiers]\nadmin_groups = [\"{}\"]\noperator_groups = [\"{}\"]\nread_only_groups = [\"{}\"]\n",
        gadm.name, gops.name, gro.name
    ));
    for (group, tier) in [(&gadm, "admin"), (&gops, "operator"), (&gro, "read_only")] {
        let user = TestUser::create(&[group]);
        let out = env.as_user(&user, &["--json", "whoami"]);
        assert!(out.status.success(), "{}", stderr(&out));
        let w = json(&out);
        assert_eq!(w["tier"], tier);
        assert_eq!(w["user"], user.name.as_str());
        assert_eq!(w["peer"]["uid"], user.uid);
        assert_eq!(
            w["peer"]["exe"],
            env.warden.to_str().unwrap(),
            "the exe the kernel reports"
        );
        assert_eq!(w["granted"]["by"], "group");
        assert_eq!(w["granted"]["name"], group.name.as_str());
        let reason = w["reason"].as_str().unwrap();
        assert_eq!(
            reason,
            format!("{tier} as a member of group {} ({})", group.name, group.gid)
        );
    }

    let plain = TestUser::create(&[]);
    let out = env.as_user(&plain, &["--json", "whoami"]);
    assert_eq!(out.status.code(), Some(3), "forbidden exits 3");
    let e = json(&out);
    assert_eq!(e["error"]["kind"], "forbidden");
    assert_eq!(
        e["error"]["message"],
        "whoami needs tier read_only; you have none"
    );
    let out = env.as_user(&plain, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(stderr(&out).contains("forbidden: status needs tier read_only; you have none"));
    let out = env.as_user(&plain, &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("wardend 0.1.0 (protocol 1)"));
}

#[test]
fn groups_are_those_the_kernel_recorded_at_connect_not_etc_group() {
    if !warden_testkit::root_or_skip(
        "groups_are_those_the_kernel_recorded_at_connect_not_etc_group",
    ) {
        return;
    }
    let gops = TestGroup::create();
    let env = Env::start(&format!("[tiers]\noperator_groups = [\"{}\"]\n", gops.name));
    // A member by /etc/group who connects without the group in its credentials is not an operator.
    let member = TestUser::create(&[&gops]);
    let out = env.run(
        as_ids(member.uid, member.gid, Groups::Clear, &env.warden),
        &["--json", "whoami"],
    );
    assert_eq!(out.status.code(), Some(3));
    assert!(
        json(&out)["error"]["message"]
            .as_str()
            .unwrap()
            .ends_with("you have none")
    );
    // A non-member whose process carries the group is one.
    let outsider = TestUser::create(&[]);
    let out = env.run(
        as_ids(
            outsider.uid,
            outsider.gid,
            Groups::List(vec![gops.gid]),
            &env.warden,
        ),
        &["--json", "whoami"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let w = json(&out);
    assert_eq!(
        (w["tier"].as_str(), w["granted"]["gid"].as_u64()),
        (Some("operator"), Some(gops.gid.into()))
    );
    assert_eq!(w["peer"]["groups"], serde_json::json!([gops.gid]));
}

#[test]
fn a_user_mapping_by_name_grants_its_tier_and_says_so() {
    if !warden_testkit::root_or_skip("a_user_mapping_by_name_grants_its_tier_and_says_so") {
        return;
    }
    let user = TestUser::create(&[]);
    let env = Env::start(&format!("[tiers.users]\n{} = \"operator\"\n", user.name));
    let out = env.as_user(&user, &["whoami"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "tier     operator: operator by the [tiers.users] entry for {}",
            user.name
        )),
        "{text}"
    );
}

#[test]
fn a_user_outside_the_socket_group_cannot_connect_at_all() {
    if !warden_testkit::root_or_skip("a_user_outside_the_socket_group_cannot_connect_at_all") {
        return;
    }
    let gsock = TestGroup::create();
    let env = Env::start(&format!(
        "[[listener]]\npath = \"{{dir}}/run/warden.sock\"\nmode = \"0660\"\ngroup = \"{}\"\n",
        gsock.name
    ));
    let o = warden_sys::fs::owner_of(env.socket()).unwrap();
    assert_eq!((o.uid, o.gid, o.mode), (0, gsock.gid, 0o660));

    let member = TestUser::create(&[&gsock]);
    let out = env.as_user(&member, &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));

    let outsider = TestUser::create(&[]);
    let out = env.as_user(&outsider, &["version"]);
    assert_eq!(out.status.code(), Some(3), "the kernel's EACCES exits 3");
    assert!(
        stderr(&out).contains("permission denied opening"),
        "{}",
        stderr(&out)
    );
    let s = {
        let mut c = RawClient::hello(env.socket());
        c.call(2, "status", serde_json::json!({}))
    };
    assert_eq!(
        s["result"]["connections"]["accepted"], 2,
        "the outsider never reached the daemon: {s}"
    );
}

#[test]
fn a_uid_without_a_passwd_entry_gets_clean_answers() {
    if !warden_testkit::root_or_skip("a_uid_without_a_passwd_entry_gets_clean_answers") {
        return;
    }
    let gadm = TestGroup::create();
    let env = Env::start(&format!("[tiers]\nadmin_groups = [\"{}\"]\n", gadm.name));
    const GHOST: u32 = 54321;
    assert_eq!(warden_sys::users::user_name(GHOST).unwrap(), None);
    let ghost = |groups| as_ids(GHOST, GHOST, groups, &env.warden);

    let out = env.run(ghost(Groups::Clear), &["version"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = env.run(ghost(Groups::Clear), &["--json", "whoami"]);
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(json(&out)["error"]["kind"], "forbidden");

    let out = env.run(ghost(Groups::List(vec![gadm.gid])), &["--json", "whoami"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let w = json(&out);
    assert_eq!(w["user"], Value::Null);
    assert_eq!(w["peer"]["uid"], GHOST);
    assert_eq!(w["tier"], "admin");
    let out = env.run(ghost(Groups::List(vec![gadm.gid])), &["whoami"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("uid {GHOST} (no passwd entry)"))
    );
    // The daemon is unharmed.
    RawClient::hello(env.socket());
}

/// Parses `warden call` output: (successes, rate_limited answers, other errors).
fn tally(out: &Output) -> (usize, Vec<Value>, Vec<Value>) {
    let (mut ok, mut limited, mut other) = (0, Vec::new(), Vec::new());
    for line in String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
    {
        let v: Value = serde_json::from_str(line).unwrap();
        if v.get("result").is_some() {
            ok += 1;
        } else if v.pointer("/error/data/kind") == Some(&Value::from("rate_limited")) {
            limited.push(v);
        } else {
            other.push(v);
        }
    }
    (ok, limited, other)
}

#[test]
fn a_flooding_uid_is_rate_limited_while_another_uid_is_served_in_full() {
    if !warden_testkit::root_or_skip(
        "a_flooding_uid_is_rate_limited_while_another_uid_is_served_in_full",
    ) {
        return;
    }
    let gro = TestGroup::create();
    // Per-uid buckets of 50 that barely refill; per-connection buckets that never bind.
    let env = Env::start(&format!(
        "[tiers]\nread_only_groups = [\"{}\"]\n[limits]\nrequests_per_second = 1000\nburst = 1000\n\
         uid_requests_per_second = 0.5\nuid_burst = 50\n",
        gro.name
    ));
    let flooder = TestUser::create(&[&gro]);
    let calm = TestUser::create(&[&gro]);
    let mut floods: Vec<_> = (0..3)
        .map(|_| {
            let mut c = flooder.command(&env.warden);
            c.arg("--socket")
                .arg(env.socket())
                .args(["call", "status", "--repeat", "40"]);
            c.stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped());
            c.spawn().unwrap()
        })
        .collect();
    let calm_out = env.as_user(&calm, &["call", "status", "--repeat", "20"]);
    let flood_outs: Vec<Output> = floods
        .drain(..)
        .map(|c| c.wait_with_output().unwrap())
        .collect();

    let (ok, limited, other) = tally(&calm_out);
    assert_eq!(
        (ok, limited.len(), other.len()),
        (20, 0, 0),
        "the calm uid was affected"
    );
    assert!(calm_out.status.success());

    let mut flood_ok = 0;
    let mut flood_limited = Vec::new();
    for out in &flood_outs {
        let (ok, limited, _) = tally(out);
        flood_ok += ok;
        flood_limited.extend(limited);
        // A flooder whose hello was refused is told why on stderr.
        if ok == 0 && out.stdout.is_empty() {
            assert!(stderr(out).contains("rate_limited"), "{}", stderr(out));
        }
    }
    // 3 hellos + 120 requests against 50 tokens (plus at most a few refilled while this ran).
    assert!(flood_ok <= 50, "{flood_ok} flood requests succeeded");
    assert!(!flood_limited.is_empty());
    for r in &flood_limited {
        assert!(
            r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0,
            "{r}"
        );
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(msg.contains(&format!("from uid {}", flooder.uid)), "{msg}");
    }
}

#[test]
fn an_unprivileged_user_runs_a_dev_daemon_and_is_its_admin() {
    if !warden_testkit::root_or_skip("an_unprivileged_user_runs_a_dev_daemon_and_is_its_admin") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let owner = TestUser::create(&[]);
    let stranger = TestUser::create(&[]);
    let home = dir.path().join("home");
    std::fs::create_dir(&home).unwrap();
    warden_sys::fs::chown_nofollow(&home, Some(owner.uid), Some(owner.gid)).unwrap();
    let wardend =
        warden_testkit::runnable_copy(&warden_testkit::sibling_bin("wardend"), dir.path());
    let warden = warden_testkit::runnable_copy(Path::new(env!("CARGO_BIN_EXE_warden")), dir.path());
    let sock = home.join("warden/warden.sock");

    let mut daemon = owner.command(&wardend);
    daemon
        .current_dir(&home)
        .env_remove("XDG_RUNTIME_DIR")
        .args(["--dev", "--socket"])
        .arg(&sock);
    daemon
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let mut child = daemon.spawn().unwrap();
    let deadline = Instant::now() + PATIENCE;
    while !sock.exists() {
        assert!(Instant::now() < deadline, "the dev daemon did not start");
        assert!(child.try_wait().unwrap().is_none(), "the dev daemon exited");
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = warden_sys::fs::owner_of(&sock).unwrap();
    assert_eq!((o.uid, o.mode), (owner.uid, 0o600));

    let mut cli = owner.command(&warden);
    let out = cli
        .arg("--socket")
        .arg(&sock)
        .args(["--json", "whoami"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let w = json(&out);
    assert_eq!(
        (w["tier"].as_str(), w["granted"]["by"].as_str()),
        (Some("admin"), Some("dev_mode"))
    );

    let mut cli = stranger.command(&warden);
    let out = cli
        .arg("--socket")
        .arg(&sock)
        .arg("version")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(3),
        "another user cannot reach a dev daemon"
    );

    Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists());
}

/// Pins: a flood of refused requests from one real user raises one `denial_flood` alert naming
/// its uid, which an admin reads with `alerts.list`; the audit log records 100 of the denials
/// and counts the rest.
#[test]
fn a_denial_flood_from_a_real_user_raises_one_alert() {
    if !warden_testkit::root_or_skip("a_denial_flood_from_a_real_user_raises_one_alert") {
        return;
    }
    let env = Env::start(
        "[limits]\nrequests_per_second = 100000\nburst = 100000\n\
         uid_requests_per_second = 100000\nuid_burst = 100000\n",
    );
    let user = TestUser::create(&[]);
    // Tier none may not read status: 150 pipelined refusals.
    let out = env.as_user(&user, &["call", "status", "--repeat", "150"]);
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let mut root = RawClient::hello(env.socket());
    let answer = root.call(2, "alerts.list", serde_json::json!({}));
    let alerts = answer["result"]["alerts"].as_array().unwrap();
    let floods: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "denial_flood")
        .collect();
    assert_eq!(floods.len(), 1, "{alerts:?}");
    assert_eq!(floods[0]["uid"], user.uid);
}
