//! The wire protocol against a real daemon on a real socket: frame limits, deadlines, the
//! handshake, pipelining, requests that wait, and what counts as a violation.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestDaemon;
use serde_json::{Value, json};
use warden_testkit::raw::{RawClient, error_kind};

const SMALL_FRAMES: &str =
    "[limits]\nmax_frame = 1024\nframe_timeout_ms = 300\nhello_timeout_ms = 300\n";

/// A `health` request padded with trailing spaces to exactly `len` bytes.
fn padded_health(len: usize) -> Vec<u8> {
    let mut body = br#"{"jsonrpc":"2.0","id":2,"method":"health"}"#.to_vec();
    body.resize(len, b' ');
    body
}

#[test]
fn a_frame_of_exactly_max_frame_is_accepted() {
    let d = TestDaemon::start(SMALL_FRAMES);
    let mut c = RawClient::hello(d.socket());
    c.send_frame(&padded_health(1024));
    let r = c.recv();
    assert_eq!(r["result"]["status"], "ok", "{r}");
}

#[test]
fn max_frame_plus_one_gets_one_error_frame_naming_the_limit_then_close() {
    let d = TestDaemon::start(SMALL_FRAMES);
    let mut c = RawClient::hello(d.socket());
    c.send_frame(&padded_health(1025));
    let r = c.recv();
    assert_eq!(error_kind(&r), Some("bad_request"));
    assert_eq!(r["id"], Value::Null);
    assert_eq!(
        r["error"]["message"],
        "frame length 1025 exceeds max_frame 1024"
    );
    assert!(c.is_closed());
}

#[test]
fn announcing_four_gib_is_answered_at_once_without_waiting_for_a_body() {
    let d = TestDaemon::start("");
    let mut c = RawClient::hello(d.socket());
    c.write(&u32::MAX.to_be_bytes());
    let r = c.recv();
    assert_eq!(
        r["error"]["message"],
        "frame length 4294967295 exceeds max_frame 1048576"
    );
    assert!(c.is_closed());
}

#[test]
fn a_zero_length_frame_is_refused_and_closes() {
    let d = TestDaemon::start("");
    let mut c = RawClient::hello(d.socket());
    c.write(&0u32.to_be_bytes());
    let r = c.recv();
    assert_eq!(error_kind(&r), Some("bad_request"));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frame length 0")
    );
    assert!(c.is_closed());
}

#[test]
fn a_partial_body_then_silence_is_closed_after_frame_timeout() {
    let d = TestDaemon::start(SMALL_FRAMES);
    let mut c = RawClient::hello(d.socket());
    let started = Instant::now();
    c.write(&100u32.to_be_bytes());
    c.write(b"{\"jsonrpc\":");
    let r = c.recv();
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "closed early"
    );
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("frame_timeout_ms (300 ms)"),
        "{r}"
    );
    assert!(c.is_closed());
}

#[test]
fn a_slow_drip_does_not_extend_the_frame_deadline() {
    let d = TestDaemon::start(SMALL_FRAMES);
    let mut c = RawClient::hello(d.socket());
    let started = Instant::now();
    c.write(&100u32.to_be_bytes());
    // One byte every 100 ms would never finish 100 bytes before the 300 ms deadline.
    let mut closed_at = None;
    for _ in 0..20 {
        if std::io::Write::write_all(&mut c.stream, b" ").is_err() {
            closed_at = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let closed_at = closed_at.expect("the daemon kept a dripping frame open");
    assert!(closed_at < Duration::from_secs(2), "{closed_at:?}");
}

/// Pins: a peer that sends requests but stops reading their answers is closed once an answer
/// has waited `frame_timeout_ms` for room in the socket, and counted as a write timeout.
#[test]
fn a_peer_that_stops_reading_its_answers_is_closed_after_frame_timeout() {
    let d = TestDaemon::start(
        "[limits]\nframe_timeout_ms = 300\nrequests_per_second = 1000000\nburst = 100000\n\
         uid_requests_per_second = 1000000\nuid_burst = 100000\n",
    );
    let mut c = RawClient::hello(d.socket());
    // Far more answers (each near 1 KiB) than the socket holds; the writer blocks once the
    // daemon stops reading, and fails once it closes.
    let mut writer = c.stream.try_clone().unwrap();
    let flood = std::thread::spawn(move || {
        let body = br#"{"jsonrpc":"2.0","id":2,"method":"status","params":{}}"#;
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(body);
        for _ in 0..20_000 {
            if std::io::Write::write_all(&mut writer, &frame).is_err() {
                return;
            }
        }
    });
    // Nothing is read until the daemon has had every chance to give up on the blocked answer.
    std::thread::sleep(Duration::from_millis(1_000));
    let mut answers = 0;
    while let Some(frame) = c.recv_frame() {
        let r: Value = serde_json::from_slice(&frame).unwrap();
        assert!(r["result"]["daemon_version"].is_string(), "{r}");
        answers += 1;
    }
    flood.join().unwrap();
    assert!(answers > 0, "no answer was sent before the close");
    assert!(
        answers < 20_000,
        "the daemon waited for every answer to be read"
    );
    let mut other = RawClient::hello(d.socket());
    let status = other.call(3, "status", json!({}));
    assert_eq!(
        status["result"]["violations"]["write_timeout"], 1,
        "{status}"
    );
}

#[test]
fn no_hello_within_hello_timeout_closes_the_connection() {
    let d = TestDaemon::start(SMALL_FRAMES);
    let mut c = RawClient::connect(d.socket());
    let started = Instant::now();
    let r = c.recv();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(
        r["error"]["message"].as_str().unwrap().contains("no hello"),
        "{r}"
    );
    assert!(c.is_closed());
}

#[test]
fn a_request_before_hello_gets_an_error_then_close() {
    let d = TestDaemon::start("");
    let mut c = RawClient::connect(d.socket());
    let r = c.call(7, "status", json!({}));
    assert_eq!(r["id"], 7);
    assert_eq!(error_kind(&r), Some("bad_request"));
    assert_eq!(
        r["error"]["message"],
        "the first request must be hello, not status"
    );
    assert!(c.is_closed());
}

#[test]
fn garbage_before_hello_gets_an_error_then_close() {
    let d = TestDaemon::start("");
    let mut c = RawClient::connect(d.socket());
    c.send_frame(b"GET / HTTP/1.1");
    let r = c.recv();
    assert_eq!(r["error"]["code"], -32700);
    assert!(c.is_closed());
}

#[test]
fn hello_with_another_protocol_version_is_refused_and_closes() {
    let d = TestDaemon::start("");
    let mut c = RawClient::connect(d.socket());
    let r = c.call(1, "hello", json!({"protocol": 2, "client": "future"}));
    assert_eq!(error_kind(&r), Some("bad_request"));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("protocol 2 is not supported")
    );
    assert!(c.is_closed());
}

#[test]
fn three_non_jsonrpc_frames_close_the_connection_after_the_third() {
    let d = TestDaemon::start("");
    let mut c = RawClient::hello(d.socket());
    c.send_frame(b"not json");
    assert_eq!(c.recv()["error"]["code"], -32700);
    c.send_frame(br#"{"jsonrpc":"2.0","method":"health"}"#);
    assert_eq!(c.recv()["error"]["code"], -32600);
    // Still usable between violations.
    assert_eq!(c.call(3, "health", json!({}))["result"]["status"], "ok");
    c.send_frame(b"[1,2,3]");
    let r = c.recv();
    assert_eq!(r["error"]["code"], -32600);
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("closing after 3 invalid frames")
    );
    assert!(c.is_closed());
}

#[test]
fn unknown_methods_and_bad_params_are_ordinary_errors_that_do_not_count() {
    let d = TestDaemon::start("");
    let mut c = RawClient::hello(d.socket());
    for i in 0..5 {
        let r = c.call(i, "no.such.method", json!({}));
        assert_eq!(
            (r["error"]["code"].as_i64(), error_kind(&r)),
            (Some(-32601), Some("not_found"))
        );
        let r = c.call(i, "status", json!({"verbose": true}));
        assert_eq!(
            (r["error"]["code"].as_i64(), error_kind(&r)),
            (Some(-32602), Some("bad_request"))
        );
    }
    let r = c.call(99, "hello", json!({"protocol": 1, "client": "again"}));
    assert_eq!(
        r["error"]["message"],
        "hello was already done on this connection"
    );
    let r = c.call(100, "status", json!({}));
    assert_eq!(r["result"]["violations"]["invalid_jsonrpc"], 0, "{r}");
    assert_eq!(r["result"]["violations"]["closed_for_violations"], 0);
}

#[test]
fn five_pipelined_requests_get_five_answers_with_matching_ids() {
    let d = TestDaemon::start("");
    let mut c = RawClient::hello(d.socket());
    let mut wire = Vec::new();
    let ids = [
        json!(10),
        json!("b"),
        json!(-3),
        json!("id with spaces"),
        json!(1e3),
    ];
    for (i, id) in ids.iter().enumerate() {
        let method = ["health", "version", "whoami", "status", "health"][i];
        let body = json!({"jsonrpc": "2.0", "id": id, "method": method}).to_string();
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(body.as_bytes());
    }
    c.write(&wire);
    for id in &ids {
        let r = c.recv();
        assert_eq!(&r["id"], id);
        assert!(r.get("result").is_some(), "{r}");
    }
}

/// A framed request body.
fn framed(id: u64, method: &str, params: Value) -> Vec<u8> {
    let body = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}).to_string();
    let mut wire = (body.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(body.as_bytes());
    wire
}

/// Pins: a frame that arrives in pieces, with pauses between, is put together and answered,
/// after a request answered at once (`health`) and after one that waited (`job.list`, which
/// reads the ledger): a read that empties the socket half way through a frame still wakes for
/// the rest.
#[test]
fn a_frame_arriving_in_pieces_is_answered() {
    let d = TestDaemon::start("");
    let mut c = RawClient::hello(d.socket());
    for (id, before) in [(5, "health"), (6, "job.list")] {
        assert!(c.call(id * 10, before, json!({})).get("result").is_some());
        let wire = framed(id, "health", json!({}));
        for piece in [
            &wire[..2],
            &wire[2..7],
            &wire[7..wire.len() - 1],
            &wire[wire.len() - 1..],
        ] {
            c.write(piece);
            std::thread::sleep(Duration::from_millis(30));
        }
        let r = c.recv();
        assert_eq!(r["id"], id, "{r}");
        assert_eq!(r["result"]["status"], "ok", "{r}");
    }
}

/// Pins: a request and a close that arrive together are both seen, after a request answered at
/// once and after one that waited: the request is answered, then the close ends the connection
/// (the read that takes the request must not hide the close).
#[test]
fn a_request_with_a_close_right_behind_it_is_answered_and_the_close_seen() {
    let d = TestDaemon::start("[limits]\nuid_requests_per_second = 10000\nuid_burst = 10000\n");
    for round in 0..50 {
        let before = if round % 2 == 0 { "health" } else { "job.list" };
        let mut c = RawClient::hello(d.socket());
        assert!(c.call(2, before, json!({})).get("result").is_some());
        c.write(&framed(3, "health", json!({})));
        c.stream.shutdown(std::net::Shutdown::Write).unwrap();
        let r = c.recv();
        assert_eq!(r["result"]["status"], "ok", "round {round}: {r}");
        assert!(c.closes_within(Duration::from_secs(5)), "round {round}");
    }
}

#[test]
fn violations_are_counted_by_class_in_status() {
    let d = TestDaemon::start(SMALL_FRAMES);
    let mut big = RawClient::hello(d.socket());
    big.write(&5000u32.to_be_bytes());
    big.recv();
    let mut empty = RawClient::hello(d.socket());
    empty.write(&0u32.to_be_bytes());
    empty.recv();
    let mut early = RawClient::connect(d.socket());
    early.call(1, "status", json!({}));
    let mut c = RawClient::hello(d.socket());
    c.send_frame(b"{");
    c.recv();
    let s = c.call(2, "status", json!({}));
    let v = &s["result"]["violations"];
    assert_eq!(
        (v["frame_too_large"].as_u64(), v["frame_empty"].as_u64()),
        (Some(1), Some(1)),
        "{s}"
    );
    assert_eq!(
        (v["hello_missing"].as_u64(), v["invalid_jsonrpc"].as_u64()),
        (Some(1), Some(1))
    );
}

/// The key structure of a JSON value, to compare live answers with the golden fixtures.
fn shape(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(m.iter().map(|(k, v)| (k.clone(), shape(v))).collect()),
        Value::Array(_) => json!("array"),
        Value::Null => json!("null"),
        _ => json!("scalar"),
    }
}

fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/../warden-proto/tests/golden/{name}.json",
        env!("CARGO_MANIFEST_DIR")
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn live_answers_have_the_shapes_of_the_golden_fixtures() {
    let d = TestDaemon::start("[ops]\nnetwork = false\nstorage = true\n");
    let mut c = RawClient::connect(d.socket());
    let hello = c.call(
        1,
        "hello",
        json!({"protocol": 1, "client": "shape", "features": []}),
    );
    assert_eq!(shape(&hello), shape(&fixture("result.hello")));
    for m in ["health", "version", "status"] {
        assert_eq!(
            shape(&c.call(1, m, json!({}))),
            shape(&fixture(&format!("result.{m}"))),
            "{m}"
        );
    }
    // The test runs as root, so whoami's grant is by root: compare all but the grant's members.
    let mut who = c.call(1, "whoami", json!({}));
    let mut want = fixture("result.whoami");
    who["result"]["granted"] = json!(null);
    want["result"]["granted"] = json!(null);
    assert_eq!(shape(&who), shape(&want));
    let err = c.call(1, "status", json!({"x": 1}));
    assert_eq!(shape(&err), shape(&fixture("error.forbidden")));
}

/// A job that runs until it is cancelled, for requests that wait on it.
const SLEEPER: &str = "[[action]]\nname = \"sleep\"\nargv = [\"/bin/sleep\", \"60\"]\n\
                       tier = \"read_only\"\nmutating = false\n";

/// Starts `sleep` on `c` and returns its job id.
fn start_sleeper(c: &mut RawClient) -> String {
    let r = c.call(2, "job.start", json!({"action": "sleep", "params": {}}));
    r["result"]["job_id"].as_str().unwrap().to_owned()
}

#[test]
fn sixteen_waiting_requests_run_on_one_connection_and_the_seventeenth_is_busy() {
    let mut d = TestDaemon::start(SLEEPER);
    let mut c = RawClient::hello(d.socket());
    let job = start_sleeper(&mut c);
    let mut wire = Vec::new();
    for id in 100..117u64 {
        let body = json!({"jsonrpc": "2.0", "id": id, "method": "job.wait",
                          "params": {"job_id": job, "timeout_ms": 30_000}})
        .to_string();
        wire.extend_from_slice(&(body.len() as u32).to_be_bytes());
        wire.extend_from_slice(body.as_bytes());
    }
    c.write(&wire);
    let r = c.recv();
    assert_eq!(r["id"], 116, "{r}");
    assert_eq!(error_kind(&r), Some("busy"), "{r}");
    // The connection still answers while its sixteen requests wait.
    let r = c.call(3, "health", json!({}));
    assert_eq!(r["result"]["status"], "ok", "{r}");
    let mut other = RawClient::hello(d.socket());
    let r = other.call(2, "job.cancel", json!({"job_id": job}));
    assert!(r.get("result").is_some(), "{r}");
    let mut ids: Vec<u64> = (0..16)
        .map(|_| {
            let r = c.recv();
            assert_eq!(r["result"]["state"], "cancelled", "{r}");
            r["id"].as_u64().unwrap()
        })
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (100..116).collect::<Vec<_>>());
    d.stop();
}

#[test]
fn a_request_still_waiting_at_shutdown_is_answered_before_the_connection_closes() {
    let mut d = TestDaemon::start(SLEEPER);
    let mut c = RawClient::hello(d.socket());
    let job = start_sleeper(&mut c);
    c.send(7, "job.wait", json!({"job_id": job, "timeout_ms": 30_000}));
    // The daemon has the request once it answers the next one on the same connection.
    let r = c.call(8, "health", json!({}));
    assert_eq!(r["result"]["status"], "ok", "{r}");
    d.stop();
    let r = c.recv();
    assert_eq!(r["id"], 7, "{r}");
    // Refused as the connection closes, or answered with the job's end if that came first:
    // never left without an answer, never a job that is still running.
    match error_kind(&r) {
        Some(kind) => {
            assert_eq!(kind, "unavailable", "{r}");
            assert!(
                r["error"]["message"].as_str().unwrap().contains("closing"),
                "{r}"
            );
        }
        None => assert_eq!(r["result"]["state"], "cancelled", "{r}"),
    }
    assert!(c.is_closed());
}
