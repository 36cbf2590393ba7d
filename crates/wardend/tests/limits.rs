//! Limits that protect everyone else: connection caps answer `busy` and close, with a reserve
//! beyond them for administrators; token buckets answer `rate_limited` with a retry time and keep
//! the connection usable; a connection that sends nothing is closed after `idle_timeout_ms`
//! unless a request of its own still runs. The tests with real users need root; they skip with a
//! reason otherwise, and fail instead when WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::TestDaemon;
use serde_json::{Value, json};
use warden_testkit::raw::{PATIENCE, RawClient, error_kind};
use warden_testkit::users::{TestGroup, TestUser};

#[test]
fn the_connection_after_max_connections_gets_busy_and_is_closed() {
    // This test runs as root, who may use the admin reserve: none here.
    let d = TestDaemon::start("[limits]\nmax_connections = 3\nadmin_reserve = 0\n");
    let open: Vec<RawClient> = (0..3).map(|_| RawClient::hello(d.socket())).collect();
    let mut extra = RawClient::connect(d.socket());
    let r = extra.recv();
    assert_eq!(error_kind(&r), Some("busy"));
    assert_eq!(
        r["error"]["message"],
        "too many connections (max_connections 3); try again later"
    );
    assert!(r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    assert!(extra.is_closed());
    drop(open);
}

#[test]
fn the_connection_after_max_connections_per_uid_gets_busy_and_a_freed_slot_is_reused() {
    let d = TestDaemon::start("[limits]\nmax_connections = 10\nmax_connections_per_uid = 2\n");
    let first = RawClient::hello(d.socket());
    let _second = RawClient::hello(d.socket());
    let me = warden_sys::users::effective_uid();
    let mut third = RawClient::connect(d.socket());
    let r = third.recv();
    assert_eq!(error_kind(&r), Some("busy"));
    let msg = r["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!("uid {me}")) && msg.contains("max_connections_per_uid 2"),
        "{msg}"
    );
    assert!(third.is_closed());

    // Closing one frees its slot once the daemon sees the close.
    drop(first);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut c = RawClient::connect(d.socket());
        let r = c.call(1, "hello", json!({"protocol": 1, "client": "t"}));
        if r.get("result").is_some() {
            break;
        }
        assert_eq!(error_kind(&r), Some("busy"));
        assert!(Instant::now() < deadline, "the slot was never freed");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_connection_over_its_bucket_gets_rate_limited_and_stays_usable() {
    let d = TestDaemon::start(
        "[limits]\nrequests_per_second = 0.5\nburst = 5\nuid_requests_per_second = 1000\nuid_burst = 1000\n",
    );
    let mut c = RawClient::hello(d.socket());
    // hello took one token; four more succeed.
    for i in 0..4 {
        assert!(c.call(i, "health", json!({})).get("result").is_some());
    }
    for i in 0..3 {
        let r = c.call(10 + i, "health", json!({}));
        assert_eq!(error_kind(&r), Some("rate_limited"), "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("on this connection")
        );
        assert!(r["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0);
    }
    // Another connection of the same uid has its own bucket.
    let mut other = RawClient::hello(d.socket());
    let s = other.call(1, "status", json!({}));
    assert_eq!(s["result"]["refusals"]["rate_limited_connection"], 3, "{s}");
    assert!(
        !c.closes_within(Duration::from_millis(50)),
        "rate limiting must not close"
    );
}

#[test]
fn a_uid_over_its_bucket_is_limited_across_all_its_connections() {
    let d = TestDaemon::start(
        "[limits]\nrequests_per_second = 1000\nburst = 1000\nuid_requests_per_second = 0.5\nuid_burst = 6\n",
    );
    let mut a = RawClient::hello(d.socket());
    let mut b = RawClient::hello(d.socket());
    // Two hellos took two of the uid's six tokens.
    for i in 0..2 {
        assert!(a.call(i, "health", json!({})).get("result").is_some());
        assert!(b.call(i, "health", json!({})).get("result").is_some());
    }
    let r = a.call(9, "health", json!({}));
    assert_eq!(error_kind(&r), Some("rate_limited"), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("from uid"));
    let r = b.call(9, "health", json!({}));
    assert_eq!(error_kind(&r), Some("rate_limited"), "{r}");
    // Reconnecting does not refill the uid's bucket.
    drop(a);
    let mut c = RawClient::connect(d.socket());
    let r = c.call(1, "hello", json!({"protocol": 1, "client": "t"}));
    assert_eq!(error_kind(&r), Some("rate_limited"), "{r}");
}

/// Not a test of its own: the peer process of the tests with real users. Run as a throwaway
/// user (through `setpriv`) with `WARDEN_TEST_PEER_SOCKET` set, it opens
/// `WARDEN_TEST_PEER_COUNT` connections, sends `hello` on each (then `status` where hello
/// succeeded), prints each connection's answers as one line `PEER [hello, status]`, then
/// `PEER ready`, and holds every connection open until its stdin closes.
#[test]
#[ignore = "run by other tests as a throwaway user"]
fn peer_helper() {
    let Some(sock) = std::env::var_os("WARDEN_TEST_PEER_SOCKET") else {
        return;
    };
    let count: usize = std::env::var("WARDEN_TEST_PEER_COUNT")
        .unwrap()
        .parse()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..count {
        let mut c = RawClient::connect(Path::new(&sock));
        let hello = json!({"jsonrpc": "2.0", "id": 1, "method": "hello",
            "params": {"protocol": 1, "client": "peer"}});
        let body = hello.to_string();
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body.as_bytes());
        // A refused connection may be closed before the hello is written: its `busy` frame is
        // still there to read.
        let _ = c.stream.write_all(&frame);
        let mut answers = Vec::new();
        if let Some(f) = c.recv_frame() {
            answers.push(serde_json::from_slice::<Value>(&f).unwrap());
        }
        if answers.first().is_some_and(|a| a.get("result").is_some()) {
            answers.push(c.call(2, "status", json!({})));
        }
        println!("PEER {}", Value::from(answers));
        held.push(c);
    }
    println!("PEER ready");
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
}

/// A [`peer_helper`] running as a throwaway user; killed on drop.
struct Peer {
    child: Child,
    /// Per connection: its hello answer, and its status answer when hello succeeded.
    answers: Vec<Vec<Value>>,
}

impl Peer {
    /// `count` connections as `user` to `sock`, held open until the peer is dropped.
    fn hold(bin: &Path, user: &TestUser, sock: &Path, count: usize) -> Peer {
        let mut child = user
            .command(bin)
            .args(["--exact", "peer_helper", "--ignored", "--nocapture"])
            .env("WARDEN_TEST_PEER_SOCKET", sock)
            .env("WARDEN_TEST_PEER_COUNT", count.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut answers = Vec::new();
        let out = BufReader::new(child.stdout.take().unwrap());
        for line in out.lines() {
            let line = line.unwrap();
            match line.strip_prefix("PEER ") {
                Some("ready") => {
                    return Peer { child, answers };
                }
                Some(json) => answers.push(serde_json::from_str(json).unwrap()),
                None => {}
            }
        }
        let _ = child.kill();
        panic!("the peer as {} ended before it was ready", user.name);
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This test binary, copied where a throwaway user can run it.
fn runnable_self(dir: &Path) -> PathBuf {
    warden_testkit::runnable_copy(&std::env::current_exe().unwrap(), dir)
}

/// Pins: four unprivileged users holding 16 idle connections each (every connection below
/// admin, at the defaults) do not lock administrators out: root, and a member of an admin
/// group, still connect and get `hello` and `status` from the reserve, while a fifth
/// unprivileged user is refused `busy` with a retry time.
#[test]
fn four_users_filling_every_connection_do_not_lock_out_root_or_admins() {
    if !warden_testkit::root_or_skip(
        "four_users_filling_every_connection_do_not_lock_out_root_or_admins",
    ) {
        return;
    }
    let admins = TestGroup::create();
    let d = TestDaemon::start(&format!("[tiers]\nadmin_groups = [\"{}\"]\n", admins.name));
    let bin = runnable_self(d.dir.path());
    let users: Vec<TestUser> = (0..4).map(|_| TestUser::create(&[])).collect();
    let held: Vec<Peer> = users
        .iter()
        .map(|u| Peer::hold(&bin, u, d.socket(), 16))
        .collect();
    for (peer, user) in held.iter().zip(&users) {
        assert_eq!(peer.answers.len(), 16);
        for a in &peer.answers {
            assert!(
                a[0].get("result").is_some(),
                "{} was refused: {a:?}",
                user.name
            );
        }
    }

    let mut root = RawClient::connect(d.socket());
    let hello = root.call(1, "hello", json!({"protocol": 1, "client": "root"}));
    assert_eq!(
        hello["result"]["tier"], "admin",
        "root is locked out: {hello}"
    );
    let status = root.call(2, "status", json!({}));
    assert_eq!(status["result"]["connections"]["open"], 65, "{status}");

    let admin = TestUser::create(&[&admins]);
    let a = Peer::hold(&bin, &admin, d.socket(), 1);
    assert_eq!(
        a.answers[0][0]["result"]["tier"], "admin",
        "{:?}",
        a.answers
    );
    assert!(a.answers[0][1].get("result").is_some(), "{:?}", a.answers);

    let fifth = TestUser::create(&[]);
    let refused = Peer::hold(&bin, &fifth, d.socket(), 1);
    let busy = &refused.answers[0][0];
    assert_eq!(error_kind(busy), Some("busy"), "{busy}");
    assert!(
        busy["error"]["data"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{busy}"
    );
    drop(held);
}

/// Pins: after `hello`, a connection that sends nothing for `idle_timeout_ms` gets one
/// `unavailable` frame and is closed; one holding a subscription it asked for, and one
/// waiting on a request it made, are not.
#[test]
fn an_idle_connection_is_closed_but_not_one_that_waits_or_listens() {
    let d = TestDaemon::start(
        "[limits]\nidle_timeout_ms = 300\n\
         [[action]]\nname = \"nap\"\nargv = [\"/bin/sleep\", \"30\"]\ntier = \"read_only\"\n\
         mutating = false\ntimeout_s = 60\n",
    );
    // The job to wait on, started from a connection of its own.
    let mut starter = RawClient::hello(d.socket());
    let started = starter.call(2, "job.start", json!({"action": "nap", "params": {}}));
    let job = started["result"]["job_id"].as_str().unwrap().to_owned();
    let mut idle = RawClient::hello(d.socket());
    // Pipelined behind hello, so no pause before them can count as idle.
    let hello = json!({"protocol": 1, "client": "t"});
    let mut listening = RawClient::connect(d.socket());
    listening.send(1, "hello", hello.clone());
    listening.send(2, "events.subscribe", json!({"topics": ["lockdown"]}));
    assert!(listening.recv().get("result").is_some());
    let subscribed = listening.recv();
    assert_eq!(subscribed["params"]["topic"], "subscribed", "{subscribed}");
    let mut waiting = RawClient::connect(d.socket());
    waiting.send(1, "hello", hello);
    waiting.send(2, "job.wait", json!({"job_id": job, "timeout_ms": 15_000}));
    assert!(waiting.recv().get("result").is_some());

    let closing = idle.recv();
    assert_eq!(error_kind(&closing), Some("unavailable"), "{closing}");
    assert!(
        closing["error"]["message"]
            .as_str()
            .unwrap()
            .contains("idle_timeout_ms (300 ms)"),
        "{closing}"
    );
    assert!(idle.is_closed());
    assert!(
        !listening.closes_within(Duration::from_millis(1_000)),
        "a subscription was closed as idle"
    );
    assert!(
        !waiting.closes_within(Duration::from_millis(100)),
        "a waiting request was closed as idle"
    );
    // Both still answer.
    assert!(
        listening
            .call(4, "health", json!({}))
            .get("result")
            .is_some()
    );
    listening.send(5, "job.cancel", json!({"job_id": job}));
}
