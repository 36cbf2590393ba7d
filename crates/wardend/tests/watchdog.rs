//! The systemd watchdog of a real `wardend` under a stand-in `NOTIFY_SOCKET` with
//! `WATCHDOG_USEC` set: `WATCHDOG=1` comes only after READY=1 and only while the daemon answers
//! on its own sockets; a socket file removed, or a daemon that cannot accept for want of
//! descriptors, stops the pings (which a timer alone would have gone on sending: each test fails
//! with a watchdog that pings from its timer).

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::process::{Notify, Proc, write_config};
use serde_json::json;
use warden_testkit::raw::RawClient;

/// 300 ms: the daemon tries a round trip every 100 ms.
const WATCHDOG_USEC: &str = "300000";

fn pings(messages: &[String]) -> usize {
    messages.iter().filter(|m| m.contains("WATCHDOG=1")).count()
}

fn start(dir: &std::path::Path, body: &str) -> (Proc, Notify) {
    let cfg = write_config(dir, body);
    let notify = Notify::bind(dir);
    let path = notify.path.display().to_string();
    let p = Proc::start(
        &cfg,
        dir,
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", WATCHDOG_USEC)],
    );
    (p, notify)
}

/// Pins: pings begin after READY=1 and each follows a round trip through the daemon's sockets
/// (both listeners are asked; the status counters see the watchdog's connections); when a socket
/// file is removed the pings stop and the log says why, and SIGTERM still stops it cleanly.
#[test]
fn pings_follow_round_trips_and_stop_when_a_socket_is_gone() {
    let dir = warden_testkit::safe_tempdir();
    let (mut p, notify) = start(
        dir.path(),
        "[[listener]]\npath = \"{dir}/run/w.sock\"\n\
         [[listener]]\npath = \"{dir}/run/ro.sock\"\nmode = \"0666\"\nmax_tier = \"read_only\"\n",
    );
    let first = notify.until("READY=1");
    assert_eq!(pings(&first), 0, "a ping before READY=1: {first:?}");
    // Every 100 ms while it answers; at least a few within 1.5 s on a busy machine.
    assert!(pings(&notify.collect(Duration::from_millis(1500))) >= 3);

    let sock = dir.path().join("run/w.sock");
    let mut c = RawClient::hello(&sock);
    let accepted = |c: &mut RawClient| {
        c.call(2, "status", json!({}))["result"]["connections"]["accepted"]
            .as_u64()
            .unwrap()
    };
    let before = accepted(&mut c);
    std::thread::sleep(Duration::from_millis(1000));
    // A round trip on each of the two sockets per 100 ms (a few, on a busy machine).
    assert!(
        accepted(&mut c) >= before + 4,
        "the pings come without connections"
    );

    std::fs::remove_file(dir.path().join("run/ro.sock")).unwrap();
    // A round trip already under way may still count; then nothing.
    notify.collect(Duration::from_millis(500));
    let later = notify.collect(Duration::from_millis(1000));
    assert_eq!(pings(&later), 0, "{later:?}");
    assert!(
        p.log()
            .contains("watchdog: the daemon does not answer on its own socket"),
        "{}",
        p.log()
    );
    // Still serving the other socket, and stopping as ever.
    assert!(c.call(3, "health", json!({})).get("result").is_some());
    p.signal("TERM");
    notify.until("STOPPING=1");
    assert_eq!(p.wait(), Some(0));
}

/// The lowest descriptor number `pid` does not use: the one a new descriptor would get.
fn lowest_free_fd(pid: u32) -> u32 {
    let used: std::collections::BTreeSet<u32> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    (0..).find(|n| !used.contains(n)).unwrap()
}

/// Pins: a daemon that cannot accept (its descriptor limit lowered to leave one free: enough for a
/// timer's ping, as sd_notify opens one socket, but not for a connection) gets no ping while it
/// cannot, and pings again and serves once it can.
#[test]
fn a_daemon_that_cannot_accept_stops_pinging_until_it_can() {
    if !warden_testkit::root_or_skip("a_daemon_that_cannot_accept_stops_pinging_until_it_can") {
        return;
    }
    let dir = warden_testkit::safe_tempdir();
    let (mut p, notify) = start(
        dir.path(),
        "[[listener]]\npath = \"{dir}/run/w.sock\"\nmode = \"0666\"\n",
    );
    notify.until("READY=1");
    notify.until("WATCHDOG=1");
    let sock = dir.path().join("run/w.sock");

    let prlimit = |nofile: &str| {
        let out = Command::new("prlimit")
            .arg("--pid")
            .arg(p.pid().to_string())
            .arg(format!("--nofile={nofile}"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    };
    let was = std::fs::read_to_string(format!("/proc/{}/limits", p.pid()))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3).map(str::to_owned))
        .unwrap();
    // Read between round trips (one takes a millisecond of every 100): the least of a few looks.
    let free = (0..5)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(23));
            lowest_free_fd(p.pid())
        })
        .min()
        .unwrap();
    // The soft limit only; the hard one stays, so the old value can be put back (prlimit(1),
    // on the live process).
    prlimit(&format!("{}:", free + 1));
    notify.collect(Duration::from_millis(600));
    let starved = notify.collect(Duration::from_millis(1000));
    assert_eq!(pings(&starved), 0, "{starved:?}");
    assert!(
        p.log()
            .contains("watchdog: the daemon does not answer on its own socket"),
        "{}",
        p.log()
    );

    prlimit(&format!("{was}:"));
    notify.until("WATCHDOG=1");
    p.wait_log("watchdog: the daemon answers again", 1);
    let mut c = RawClient::hello(&sock);
    assert!(c.call(2, "health", json!({})).get("result").is_some());
    p.signal("TERM");
    assert_eq!(p.wait(), Some(0));
}
