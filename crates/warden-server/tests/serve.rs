//! The server's connections under hostile clients, over real sockets: half-sent requests, a
//! trickled body, silent connections and more connections than the cap; none of them may keep
//! others from being served, and each is closed when its deadline passes.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::TestServer;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use warden_server::auth::Role;

const PASSWORD: &str = "correct horse battery";

/// Whether the server closes `c` within `within` (end of stream or a reset; anything it sends
/// first is read and returned).
async fn closed_within(c: &mut TcpStream, within: Duration) -> Option<String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match tokio::time::timeout(left, c.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(String::from_utf8_lossy(&got).into_owned()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The status of a health check, or `None` if the connection was closed first.
async fn health(addr: std::net::SocketAddr) -> Option<u16> {
    let mut c = TcpStream::connect(addr).await.ok()?;
    c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .ok()?;
    let mut out = Vec::new();
    c.read_to_end(&mut out).await.ok()?;
    String::from_utf8_lossy(&out)
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Pins: 1,100 connections that each send half a request line and stop neither keep a health
/// check nor a login from being answered, and each is closed once the header deadline passes
/// (item 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_sent_requests_starve_no_one_and_are_closed_at_the_header_deadline() {
    let header = Duration::from_secs(5);
    let s = TestServer::start_with(None, |c| c.limits.header_timeout = header).await;
    s.db()
        .add_operator("root", Role::Admin, PASSWORD)
        .await
        .unwrap();
    let addr = s.running.addr;
    let started = Instant::now();
    let mut half = Vec::new();
    for _ in 0..1100 {
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /v1/hea").await.unwrap();
        half.push(c);
    }
    let health = tokio::time::timeout(
        Duration::from_secs(5),
        common::http(addr, "GET", "/v1/health", None, &[]),
    )
    .await
    .expect("health check answered during the flood");
    assert_eq!(health.status, 200, "{}", health.raw);
    let login = tokio::time::timeout(
        Duration::from_secs(5),
        s.request(
            "POST",
            "/v1/login",
            Some(&json!({"name": "root", "password": PASSWORD})),
            &[],
        ),
    )
    .await
    .expect("login answered during the flood");
    assert_eq!(login.status, 200, "{}", login.raw);
    assert!(
        started.elapsed() < header,
        "the flood was over before the requests were made: this test proves nothing"
    );
    for (i, c) in half.iter_mut().enumerate() {
        assert!(
            closed_within(c, header + Duration::from_secs(5))
                .await
                .is_some(),
            "half-sent connection {i} is still open after the header deadline"
        );
    }
    s.running.stop().await.unwrap();
}

/// Pins: past the connection cap a new connection is closed at once, and once the holders go
/// the server takes connections again (item 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_cap_are_closed_at_once() {
    let s = TestServer::start_with(None, |c| {
        c.limits.max_connections = 20;
        c.limits.header_timeout = Duration::from_secs(60);
        c.limits.idle_timeout = Duration::from_secs(60);
    })
    .await;
    let addr = s.running.addr;
    let mut held = Vec::new();
    for _ in 0..20 {
        // Answered and kept alive: surely taken, and held.
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut over = TcpStream::connect(addr).await.unwrap();
    assert!(
        closed_within(&mut over, Duration::from_secs(5))
            .await
            .is_some(),
        "a connection past the cap was kept open"
    );
    drop(held);
    // The server lets their slots go as it sees them close.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if health(addr).await == Some(200) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection taken after the holders left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    s.running.stop().await.unwrap();
}

/// Pins: a body that trickles in past the body deadline is answered 408 and its connection
/// closed (item 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trickled_body_is_cut_at_the_body_deadline() {
    let s = TestServer::start_with(None, |c| {
        c.limits.body_timeout = Duration::from_millis(500);
        c.limits.header_timeout = Duration::from_secs(60);
    })
    .await;
    let mut c = TcpStream::connect(s.running.addr).await.unwrap();
    c.write_all(
        b"POST /v1/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"name\"",
    )
    .await
    .unwrap();
    let answer = closed_within(&mut c, Duration::from_secs(10))
        .await
        .expect("the connection is closed after the body deadline");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    s.running.stop().await.unwrap();
}

/// Pins: a connection that sends nothing at all is closed once the idle deadline passes, even
/// with a long header deadline (item 19).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_idle_deadline() {
    let s = TestServer::start_with(None, |c| {
        c.limits.idle_timeout = Duration::from_millis(500);
        c.limits.header_timeout = Duration::from_secs(60);
    })
    .await;
    let mut c = TcpStream::connect(s.running.addr).await.unwrap();
    assert!(
        closed_within(&mut c, Duration::from_secs(10))
            .await
            .is_some(),
        "a silent connection was kept open"
    );
    s.running.stop().await.unwrap();
}
