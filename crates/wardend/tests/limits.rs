//! Limits that protect everyone else: connection caps answer `busy` and close, token buckets
//! answer `rate_limited` with a retry time and keep the connection usable.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestDaemon;
use serde_json::json;
use warden_testkit::raw::{PATIENCE, RawClient, error_kind};

#[test]
fn the_connection_after_max_connections_gets_busy_and_is_closed() {
    let d = TestDaemon::start("[limits]\nmax_connections = 3\n");
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
