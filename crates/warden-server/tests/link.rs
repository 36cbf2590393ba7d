//! The agent link through real sockets, on SQLite and on PostgreSQL: the key checked before
//! the upgrade, heartbeats and the silent-peer deadline, revocation closing a live link within
//! 2 s whoever revoked it, two-phase key rotation, a replayed retired key quarantining only its
//! machine, one link per key, admission with an exact Retry-After, and a graceful stop that
//! spreads the agents' returns. The agent's side is a lean client speaking the real protocol.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{TestServer, backends, body, machine_id};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use warden_server::link::LinkConfig;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Short timing so liveness can be watched in a test.
fn quick() -> LinkConfig {
    LinkConfig {
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_millis(800),
        seen_flush: Duration::from_millis(300),
        poll: Duration::from_millis(100),
        restart_spread: Duration::from_secs(3),
        ..LinkConfig::default()
    }
}

async fn server(url: Option<&str>, link: LinkConfig) -> (TestServer, String) {
    let s = TestServer::start_with(url, |c| c.link = link).await;
    s.db().add_site("hq", "Headquarters", "Acme").await.unwrap();
    let key = s.db().rotate_key("hq").await.unwrap().key;
    (s, key)
}

/// Enrolls a new machine: (machine id, machine key).
async fn enrolled(s: &TestServer, key: &str, host: &str) -> (String, String) {
    let m = machine_id();
    let r = s.enroll(&body("hq", key, &m, host)).await;
    assert_eq!(r.status, 201, "{}", r.raw);
    (m, r.json["machine_key"].as_str().unwrap().to_owned())
}

/// Opens a link: the socket, or the refusal's status, kind and Retry-After.
async fn connect(s: &TestServer, key: &str) -> Result<Ws, (u16, String, Option<String>)> {
    let mut req = format!("ws://{}/v1/agent/link", s.running.addr)
        .into_client_request()
        .unwrap();
    let h = req.headers_mut();
    h.insert("authorization", format!("Bearer {key}").parse().unwrap());
    h.insert("x-warden-agent-version", "0.1.0-test".parse().unwrap());
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            let body: Value = r
                .body()
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok())
                .unwrap_or(Value::Null);
            let retry = r
                .headers()
                .get("retry-after")
                .map(|v| v.to_str().unwrap().to_owned());
            Err((
                r.status().as_u16(),
                body["error"]["kind"].as_str().unwrap_or("").to_owned(),
                retry,
            ))
        }
        Err(e) => panic!("link: {e}"),
    }
}

/// The next JSON message, or `None` when the link closed, within `within`.
async fn next(ws: &mut Ws, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.next()).await {
            Err(_) => panic!("nothing arrived within {within:?}"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(t)))) => return Some(serde_json::from_str(&t).unwrap()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Reads until a message of `kind` arrives (answering nothing); `None` if the link closed.
async fn until(ws: &mut Ws, kind: &str, within: Duration) -> Option<Value> {
    let deadline = Instant::now() + within;
    loop {
        let m = next(ws, deadline.saturating_duration_since(Instant::now())).await?;
        if m["type"] == kind {
            return Some(m);
        }
    }
}

async fn say(ws: &mut Ws, m: Value) {
    ws.send(Message::Text(m.to_string().into())).await.unwrap();
}

/// Pins: a missing, malformed or unknown key gets 401 before any upgrade; a live key gets a
/// link whose first message is the welcome with the machine, key version 1 and the timing, and
/// the server then heartbeats on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_is_checked_before_the_upgrade_and_the_link_heartbeats() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let (m, mk) = enrolled(&s, &key, "pc-1").await;
        let unknown = format!("wmk_{}", "0".repeat(64));
        for bad in ["", "wmk_short", unknown.as_str()] {
            let (status, kind, _) = connect(&s, bad).await.err().unwrap();
            assert_eq!((status, kind.as_str()), (401, "unauthorized"), "{bad}");
        }
        assert_eq!(s.running.state.link.registry.len(), 0);
        let plain = s
            .request(
                "GET",
                "/v1/agent/link",
                None,
                &[("Authorization", &format!("Bearer {mk}"))],
            )
            .await;
        assert_eq!((plain.status, plain.kind()), (400, "bad_request"));

        let mut ws = connect(&s, &mk).await.unwrap();
        let w = next(&mut ws, Duration::from_secs(2)).await.unwrap();
        assert_eq!(w["type"], "welcome");
        assert_eq!(w["machine_id"], m.as_str());
        assert_eq!(w["key_version"], 1);
        assert_eq!(w["heartbeat_ms"], 200);
        assert_eq!(w["dead_after_ms"], 800);
        let hb = next(&mut ws, Duration::from_secs(1)).await.unwrap();
        assert_eq!(hb, json!({"type": "heartbeat"}));
        let listed = s.db().machine(&m).await.unwrap();
        assert_eq!(listed.state, "active");
        s.running.stop().await.unwrap();
    }
}

/// Pins: a peer that stops sending is dropped by the server after dead_after (goodbye
/// `silent`), while one that heartbeats stays up past several dead_after periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_and_a_live_one_kept() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let (_, quiet_key) = enrolled(&s, &key, "quiet").await;
        let (_, live_key) = enrolled(&s, &key, "live").await;
        let mut quiet = connect(&s, &quiet_key).await.unwrap();
        let mut live = connect(&s, &live_key).await.unwrap();
        let started = Instant::now();
        let keeper = tokio::spawn(async move {
            let until = Instant::now() + Duration::from_millis(2500);
            while Instant::now() < until {
                say(&mut live, json!({"type": "heartbeat"})).await;
                tokio::time::sleep(Duration::from_millis(150)).await;
                while let Ok(Some(Ok(m))) =
                    tokio::time::timeout(Duration::from_millis(1), live.next()).await
                {
                    if let Message::Text(t) = m {
                        assert!(!t.contains("goodbye"), "a live peer was closed: {t}");
                    }
                }
            }
            live
        });
        let bye = until(&mut quiet, "goodbye", Duration::from_secs(3))
            .await
            .unwrap();
        assert_eq!(bye["reason"], "silent");
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(700),
            "closed too early: {took:?}"
        );
        let mut live = keeper.await.unwrap();
        say(&mut live, json!({"type": "heartbeat"})).await;
        assert_eq!(s.running.state.link.registry.len(), 1);
        s.running.stop().await.unwrap();
    }
}

/// Pins: removing, banning or revoking the key of a linked machine (through the database,
/// as the admin commands do) closes its live link within 2 s with the matching goodbye, and
/// the key then gets no link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_closes_the_live_link_within_two_seconds() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        for how in ["remove", "ban", "revoke"] {
            let (m, mk) = enrolled(&s, &key, how).await;
            let mut ws = connect(&s, &mk).await.unwrap();
            until(&mut ws, "welcome", Duration::from_secs(2))
                .await
                .unwrap();
            let t = Instant::now();
            match how {
                "remove" => assert!(s.db().remove(&m).await.unwrap()),
                "ban" => s.db().ban(&m).await.unwrap(),
                _ => {
                    let k = s.db().machine_keys(&m).await.unwrap()[0].id;
                    assert!(s.db().revoke_machine_key(&m, k).await.unwrap());
                }
            }
            let bye = loop {
                say(&mut ws, json!({"type": "heartbeat"})).await;
                if let Some(b) = until(&mut ws, "goodbye", Duration::from_secs(2)).await {
                    break b;
                }
            };
            let took = t.elapsed();
            assert!(
                took < Duration::from_secs(2),
                "{how}: closed after {took:?}"
            );
            let want = if how == "ban" { "banned" } else { "revoked" };
            assert_eq!(bye["reason"], want, "{how}");
            assert!(
                connect(&s, &mk).await.is_err(),
                "{how}: the key still links"
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: rotation is two-phase and idempotent: asking twice before use gives the same key
/// and version, the old key keeps working until the new one is used, the first use promotes it
/// (welcome says version 2, an event records it), and then the old key is retired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_offers_one_pending_key_until_its_first_use() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let (m, k1) = enrolled(&s, &key, "rot").await;
        let mut ws = connect(&s, &k1).await.unwrap();
        until(&mut ws, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        say(&mut ws, json!({"type": "rotate_key"})).await;
        let offer = until(&mut ws, "new_key", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(offer["key_version"], 2);
        let k2 = offer["machine_key"].as_str().unwrap().to_owned();
        assert_ne!(k2, k1);
        // The agent "crashed" before storing it: the old key still links, and the same key
        // comes again.
        drop(ws);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut ws = loop {
            match connect(&s, &k1).await {
                Ok(ws) => break ws,
                Err((409, _, _)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(e) => panic!("{e:?}"),
            }
        };
        until(&mut ws, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        say(&mut ws, json!({"type": "rotate_key"})).await;
        let again = until(&mut ws, "new_key", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(
            again["machine_key"],
            k2.as_str(),
            "asking again must give the same key"
        );
        say(&mut ws, json!({"type": "key_stored", "key_version": 2})).await;
        let mut ws2 = loop {
            match connect(&s, &k2).await {
                Ok(w) => break w,
                Err(e) => panic!("the new key must link: {e:?}"),
            }
        };
        let w = until(&mut ws2, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(w["key_version"], 2);
        // The old link is superseded at once.
        let bye = until(&mut ws, "goodbye", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(bye["reason"], "superseded");
        let events = s
            .db()
            .events(Some("machine.key_rotated"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        assert!(!events[0].detail.contains(&k2[4..]), "no key in events");
        let keys = s.db().machine_keys(&m).await.unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(s.db().machine(&m).await.unwrap().state, "active");
        s.running.stop().await.unwrap();
    }
}
