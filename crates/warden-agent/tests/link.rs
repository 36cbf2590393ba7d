//! The link client's own behaviours, with the real `warden-agent` binary (as a throwaway user,
//! in `--dev` over plain TCP) against a small WebSocket peer in the test that speaks
//! `warden_fleet_proto::link`: the upgrade's headers, heartbeats, closing a silent server,
//! refusals before the upgrade, Goodbye's return time, and the agent's half of rotation.

#![allow(clippy::unwrap_used)]
// tungstenite's handshake callback returns its own large error type.
#![allow(clippy::result_large_err)]

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::peer::{accept, answer_enroll, machine, new_key, next, send, tls_acceptor, welcome};
use common::{Host, assert_no_secret, field};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use warden_fleet_proto::KeyVersion;
use warden_fleet_proto::link::{AgentMessage, GoodbyeReason, ServerMessage};

const LONG: Duration = Duration::from_secs(20);

/// A host holding `key`, configured for the peer at `addr`, with short timings.
fn host_with_key(addr: std::net::SocketAddr, key: &str) -> (Host, PathBuf, String) {
    let host = Host::new();
    let file = host.key_file();
    std::fs::write(&file, serde_json::json!({ "machine_key": key }).to_string()).unwrap();
    host.give(&file, 0o600);
    let extra = format!(
        "hostname = \"pc-1\"\n[test_overrides]\nmachine_id_override = \"{}\"\nreconnect_first_ms = 200\n\
         reconnect_cap_ms = 1000\nrejected_base_ms = 300\nrejected_cap_ms = 2000\n\
         welcome_timeout_ms = 2000\npending_poll_ms = 1000\n",
        machine()
    );
    let enrollment_key = format!("wek_{}", warden_testkit::random_hex(16));
    let cfg = host.config(&format!("http://{addr}"), "hq", &enrollment_key, &extra);
    (host, cfg, enrollment_key)
}

/// Pins: a restarted agent spreads its first link within the first-reconnect window; the
/// upgrade carries `Bearer <key>` and the agent's version on the link path; the agent
/// heartbeats at the Welcome's interval (± 10%), records the key version it was told, ignores a
/// message type it does not know, closes a server that went silent for the dead-after
/// interval, and links again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_then_a_silent_server_is_closed_and_linked_again() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key = new_key();
    let (host, cfg, _) = host_with_key(listener.local_addr().unwrap(), &key);
    let agent = host.start(&["--dev", "--config", cfg.to_str().unwrap()]);
    let (ws, seen) = accept(&listener, None).await;
    let mut ws = ws.unwrap();
    assert_eq!(seen.authorization, format!("Bearer {key}"));
    assert_eq!(seen.version, env!("CARGO_PKG_VERSION"));
    assert_eq!(seen.path, "/v1/agent/link");
    send(&mut ws, &welcome(100, 700, 7)).await;
    ws.send(Message::text(r#"{"type":"dispatch_v9","job":1}"#))
        .await
        .unwrap();
    // One second of a lively server: the agent beats about every 100 ms.
    let start = Instant::now();
    let mut beats = 0;
    while start.elapsed() < Duration::from_secs(1) {
        send(&mut ws, &ServerMessage::Heartbeat {}).await;
        if let Some(AgentMessage::Heartbeat {}) = next(&mut ws, Duration::from_millis(100)).await {
            beats += 1;
        }
    }
    assert!(
        (4..=14).contains(&beats),
        "{beats} heartbeats in 1 s at 100 ms"
    );
    agent.wait_log("link: up", LONG).await;
    // A key held from before: the first link was spread within reconnect_first (200 ms here).
    let spread = agent.wait_log("first attempt spread out", LONG).await;
    assert!(field(&spread, "wait_ms").unwrap() <= 200, "{spread}");
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(host.key_file()).unwrap()).unwrap();
    assert_eq!(stored["key_version"], 7);
    assert_eq!(stored["machine_key"], key.as_str());
    // Silence: the agent keeps beating, then closes after 700 ms without a word from us.
    let silent = Instant::now();
    while next(&mut ws, LONG).await.is_some() {}
    let closed_after = silent.elapsed();
    assert!(
        closed_after >= Duration::from_millis(550) && closed_after < Duration::from_secs(5),
        "closed after {closed_after:?} of silence (dead after 700 ms)"
    );
    agent.wait_log("dead-after interval", LONG).await;
    let (again, seen) = accept(&listener, None).await;
    assert!(again.is_some());
    assert_eq!(seen.authorization, format!("Bearer {key}"));
    assert_no_secret(&agent.logs(), &[&key]);
}

/// Pins: refusals before the upgrade follow link.rs's table: 401 keeps the key and backs off;
/// 503 waits Retry-After plus at most 20%; 403 quarantined asks again at the operator-wait
/// pace; 409 duplicate_link backs off; 403 forbidden (banned) stops the agent with status 3.
/// The key file never changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_before_the_upgrade() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key = new_key();
    let (host, cfg, _) = host_with_key(listener.local_addr().unwrap(), &key);
    let before = std::fs::read(host.key_file()).unwrap();
    let mut agent = host.start(&["--dev", "--config", cfg.to_str().unwrap()]);

    accept(&listener, Some((401, "unauthorized", None))).await;
    let line = agent
        .wait_log("does not accept this host's machine key", LONG)
        .await;
    let wait = field(&line, "wait_ms").unwrap();
    assert!((300..=360).contains(&wait), "{line}");
    assert_eq!(std::fs::read(host.key_file()).unwrap(), before);

    let t = Instant::now();
    let (_, seen) = accept(&listener, Some((503, "unavailable", Some(1)))).await;
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "401 was not backed off"
    );
    assert_eq!(
        seen.authorization,
        format!("Bearer {key}"),
        "the key changed after a 401"
    );
    let line = agent.wait_log("busy or stopping", LONG).await;
    let wait = field(&line, "wait_ms").unwrap();
    assert!((1000..=1200).contains(&wait), "{line}");

    let t = Instant::now();
    accept(&listener, Some((403, "quarantined", None))).await;
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "503 Retry-After not honoured"
    );
    // Quarantined: asked again at the operator-wait pace (here 1 s + at most 20%), never the
    // rejection backoff, so a clear takes effect soon.
    let line = agent.wait_log("QUARANTINED", LONG).await;
    assert!(
        (1000..=1200).contains(&field(&line, "wait_ms").unwrap()),
        "{line}"
    );

    accept(&listener, Some((409, "duplicate_link", None))).await;
    agent.wait_log("already holds a live link", LONG).await;

    accept(&listener, Some((403, "forbidden", None))).await;
    let status = agent
        .wait_exit(LONG)
        .await
        .expect("a banned agent kept going");
    assert_eq!(status.code(), Some(3), "{}", agent.logs());
    assert_eq!(std::fs::read(host.key_file()).unwrap(), before);
    assert_no_secret(&agent.logs(), &[&key]);
}

/// Pins: rotation on the agent's side: on NewKey the agent stores the key durably first (the
/// key file holds it when KeyStored arrives), acknowledges with its version, closes, and links
/// again at once with the new key; neither key reaches the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_stores_before_acknowledging_then_links_with_the_new_key() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old = new_key();
    let (host, cfg, _) = host_with_key(listener.local_addr().unwrap(), &old);
    let agent = host.start(&["--dev", "--config", cfg.to_str().unwrap()]);
    let (ws, _) = accept(&listener, None).await;
    let mut ws = ws.unwrap();
    send(&mut ws, &welcome(5_000, 15_000, 1)).await;
    let new = new_key();
    send(
        &mut ws,
        &ServerMessage::NewKey {
            key_version: KeyVersion(2),
            machine_key: new.parse().unwrap(),
        },
    )
    .await;
    let ack = next(&mut ws, LONG).await;
    assert!(
        matches!(
            ack,
            Some(AgentMessage::KeyStored {
                key_version: KeyVersion(2)
            })
        ),
        "{ack:?}"
    );
    // At the acknowledgement the new key is already on disk, whole.
    assert_eq!(host.stored_key().unwrap(), new);
    assert!(
        next(&mut ws, LONG).await.is_none(),
        "the agent kept the old link"
    );
    let t = Instant::now();
    let (again, seen) = accept(&listener, None).await;
    assert!(again.is_some());
    assert_eq!(seen.authorization, format!("Bearer {new}"));
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "the agent did not relink at once"
    );
    agent.wait_log("linking again with the new key", LONG).await;
    assert_no_secret(&agent.logs(), &[&old, &new]);
}

/// Pins: Goodbye's reconnect_after_ms is when the agent comes back (not sooner); a malformed
/// message closes the link and the agent links again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn goodbye_says_when_to_come_back() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key = new_key();
    let (host, cfg, _) = host_with_key(listener.local_addr().unwrap(), &key);
    let agent = host.start(&["--dev", "--config", cfg.to_str().unwrap()]);
    let (ws, _) = accept(&listener, None).await;
    let mut ws = ws.unwrap();
    send(&mut ws, &welcome(5_000, 15_000, 1)).await;
    send(
        &mut ws,
        &ServerMessage::Goodbye {
            reason: GoodbyeReason::ServerStopping,
            reconnect_after_ms: Some(1_500),
        },
    )
    .await;
    let t = Instant::now();
    while next(&mut ws, LONG).await.is_some() {}
    let (ws, _) = accept(&listener, None).await;
    assert!(
        t.elapsed() >= Duration::from_millis(1_400),
        "came back after {:?}, asked 1500 ms",
        t.elapsed()
    );
    let line = agent.wait_log("link: down", LONG).await;
    assert_eq!(field(&line, "wait_ms"), Some(1_500), "{line}");
    let mut ws = ws.unwrap();
    send(&mut ws, &welcome(5_000, 15_000, 1)).await;
    ws.send(Message::text(r#"{"type":"heartbeat","surprise":1}"#))
        .await
        .unwrap();
    while next(&mut ws, LONG).await.is_some() {}
    agent.wait_log("malformed message", LONG).await;
    assert!(accept(&listener, None).await.0.is_some());
    assert_no_secret(&agent.logs(), &[&key]);
}

/// Pins: a host whose key gets 401s keeps it (one 401 proves nothing): it backs off, and only
/// after three in a row tries to enroll again (with the enrollment key, never the machine key);
/// a rejected enrollment still keeps the key; a 201 replaces it, and the link goes on with the
/// new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_never_discards_the_key_and_only_a_new_enrollment_replaces_it() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let key = new_key();
    let (host, cfg, enrollment_key) = host_with_key(listener.local_addr().unwrap(), &key);
    let agent = host.start(&["--dev", "--config", cfg.to_str().unwrap()]);
    for _ in 0..3 {
        let (_, seen) = accept(&listener, Some((401, "unauthorized", None))).await;
        assert_eq!(seen.authorization, format!("Bearer {key}"));
        assert_eq!(host.stored_key().unwrap(), key);
    }
    let rejected = r#"{"error":{"kind":"enroll_rejected","message":"no","correlation_id":"c"}}"#;
    let req = answer_enroll(&listener, 401, rejected).await;
    assert_eq!(req["enrollment_key"], enrollment_key.as_str());
    assert_eq!(req["site_code"], "hq");
    assert_eq!(req["hostname"], "pc-1");
    assert!(
        !req.to_string().contains(&key[4..]),
        "the machine key was sent to enroll"
    );
    agent
        .wait_log("did not issue a key; keeping the held one", LONG)
        .await;
    assert_eq!(host.stored_key().unwrap(), key);

    let (_, seen) = accept(&listener, Some((401, "unauthorized", None))).await;
    assert_eq!(seen.authorization, format!("Bearer {key}"));
    let new = new_key();
    let enrolled = serde_json::json!({
        "machine_id": req["machine_id"], "machine_key": new, "state": "active", "disposition": "reuse",
    });
    answer_enroll(&listener, 200, &enrolled.to_string()).await;
    let (ws, seen) = accept(&listener, None).await;
    assert!(ws.is_some());
    assert_eq!(seen.authorization, format!("Bearer {new}"));
    assert_eq!(host.stored_key().unwrap(), new);
    let lines = agent.lines("does not accept this host's machine key");
    let waits: Vec<u64> = lines.iter().map(|l| field(l, "wait_ms").unwrap()).collect();
    assert_eq!(waits.len(), 3, "{waits:?}");
    assert!(
        waits[0] >= 300 && waits[1] >= 600 && waits[2] >= 1200,
        "{waits:?}"
    );
    assert_no_secret(&agent.logs(), &[&key, &new, &enrollment_key]);
}

/// Pins: even with `WARDEN_AGENT_LOG=trace` (the network crates' trace prints the upgrade
/// request and every frame), neither the key linked with nor a rotated key reaches the log,
/// while the agent's own debug lines do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_trace_level_no_key_reaches_the_log() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let old = new_key();
    let (host, cfg, enrollment_key) = host_with_key(listener.local_addr().unwrap(), &old);
    let agent = host.start_logging(&["--dev", "--config", cfg.to_str().unwrap()], "trace");
    let (ws, _) = accept(&listener, None).await;
    let mut ws = ws.unwrap();
    send(&mut ws, &welcome(100, 15_000, 1)).await;
    send(&mut ws, &welcome(100, 15_000, 1)).await;
    assert!(matches!(
        next(&mut ws, LONG).await,
        Some(AgentMessage::Heartbeat {})
    ));
    let new = new_key();
    let rotate = ServerMessage::NewKey {
        key_version: KeyVersion(2),
        machine_key: new.parse().unwrap(),
    };
    send(&mut ws, &rotate).await;
    while next(&mut ws, LONG).await.is_some() {}
    let (again, seen) = accept(&listener, None).await;
    assert!(again.is_some());
    assert_eq!(seen.authorization, format!("Bearer {new}"));
    agent.wait_log("a second Welcome", LONG).await;
    agent.wait_log("linking again with the new key", LONG).await;
    assert!(agent.logs().contains("DEBUG"), "{}", agent.logs());
    assert_no_secret(&agent.logs(), &[&old, &new, &enrollment_key]);
}

/// Pins: over `https://` the link is WSS: with the configured CA file the agent verifies the
/// server's certificate and links (Bearer key over TLS, heartbeats); without it (system roots
/// only) the same server is refused at the TLS handshake, and no upgrade request is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_server_certificate_is_verified() {
    let certs = warden_testkit::safe_tempdir();
    let (ca, cert, tls_key) = common::certificates(certs.path());
    let acceptor = tls_acceptor(&cert, &tls_key);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://127.0.0.1:{}",
        listener.local_addr().unwrap().port()
    );
    let key = new_key();
    let host = Host::new();
    let file = host.key_file();
    std::fs::write(&file, serde_json::json!({ "machine_key": key }).to_string()).unwrap();
    host.give(&file, 0o600);
    let overrides = format!(
        "[test_overrides]\nmachine_id_override = \"{}\"\nreconnect_first_ms = 200\n\
         reconnect_cap_ms = 1000\n",
        machine()
    );
    let trusted = format!("ca_file = \"{}\"\n{overrides}", ca.display());
    let cfg = host.config(&url, "hq", "wek_unused", &trusted);
    let agent = host.start(&["--config", cfg.to_str().unwrap()]);
    let (tcp, _) = tokio::time::timeout(LONG, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let tls = acceptor.accept(tcp).await.unwrap();
    let seen = Arc::new(Mutex::new(String::new()));
    let record = Arc::clone(&seen);
    let callback = move |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        *record.lock().unwrap() = req
            .headers()
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        Ok(resp)
    };
    let mut ws = tokio_tungstenite::accept_hdr_async(tls, callback)
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), format!("Bearer {key}"));
    ws.send(Message::text(
        serde_json::to_string(&welcome(100, 5_000, 1)).unwrap(),
    ))
    .await
    .unwrap();
    let beat = tokio::time::timeout(LONG, ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        beat.into_text().unwrap().as_str(),
        r#"{"type":"heartbeat"}"#
    );
    agent.wait_log("link: up", LONG).await;
    drop(agent);

    // The same server without the CA file: the system's roots do not know it.
    let untrusting = host.config(&url, "hq", "wek_unused", &overrides);
    let agent = host.start(&["--config", untrusting.to_str().unwrap()]);
    let (tcp, _) = tokio::time::timeout(LONG, listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(
        acceptor.accept(tcp).await.is_err(),
        "the handshake succeeded"
    );
    let line = agent.wait_log("link: cannot connect", LONG).await;
    assert!(line.to_lowercase().contains("certificate"), "{line}");
    assert_no_secret(&agent.logs(), &[&key]);
}
