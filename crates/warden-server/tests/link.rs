//! The agent link through real sockets, on SQLite and on PostgreSQL: the key checked before
//! the upgrade, heartbeats and the silent-peer deadline, revocation closing a live link within
//! 2 s whoever revoked it, two-phase key rotation, a replayed retired key quarantining only its
//! machine, one link per key, admission with an exact Retry-After, and a graceful stop that
//! spreads the agents' returns. The agent's side is a lean client speaking the real protocol.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::agent::{Ws, connect, next, say, until};
use common::{TestServer, backends, body, machine_id};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use warden_server::link::LinkConfig;

/// Short timing so heartbeats and revocations can be watched in a test. Silence is allowed a
/// few seconds, so that links a test holds idle while it enrolls more machines (slow on a busy
/// host) are not closed as silent; the silent-peer test shortens it.
fn quick() -> LinkConfig {
    LinkConfig {
        heartbeat: Duration::from_millis(200),
        dead_after: Duration::from_secs(5),
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

/// Pins: a missing, malformed or unknown key gets 401 before any upgrade; a live key gets a
/// link whose first message is the welcome with the machine, key version 1 and the timing, the
/// server then heartbeats on its own, and the machine shows connected (agent version, key
/// version) while linked and disconnected after.
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
        assert_eq!(w["dead_after_ms"], 5000);
        let hb = next(&mut ws, Duration::from_secs(1)).await.unwrap();
        assert_eq!(hb, json!({"type": "heartbeat"}));
        // The operator's view: connected, with the agent's version and the key in use, written
        // in the next batch; then disconnected once the link is gone.
        let seen = |connected: bool| {
            let (db, m) = (s.db(), m.clone());
            async move {
                let deadline = Instant::now() + Duration::from_secs(3);
                loop {
                    let listed = db.machine(&m).await.unwrap();
                    if listed.connected == connected || Instant::now() > deadline {
                        return listed;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        };
        let listed = seen(true).await;
        assert!(listed.connected, "{listed:?}");
        assert_eq!(listed.state, "active");
        assert_eq!(listed.agent_version.as_deref(), Some("0.1.0-test"));
        assert_eq!(listed.machine_key_version, Some(1));
        assert!(listed.linked_ms.is_some());
        ws.close(None).await.unwrap();
        let listed = seen(false).await;
        assert!(!listed.connected, "{listed:?}");
        s.running.stop().await.unwrap();
    }
}

/// Pins: a peer that stops sending is dropped by the server after dead_after (goodbye
/// `silent`), while one that heartbeats stays up past several dead_after periods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_closed_and_a_live_one_kept() {
    for url in backends() {
        let config = LinkConfig {
            dead_after: Duration::from_millis(800),
            ..quick()
        };
        let (s, key) = server(url.as_deref(), config).await;
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
/// the key then gets no link (403 forbidden for a banned machine, so its agent stops; 401
/// otherwise).
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
            let (status, kind, _) = connect(&s, &mk).await.err().unwrap();
            // A banned machine is told so (its agent stops); a revoked key learns nothing.
            let refused = if how == "ban" {
                (403, "forbidden")
            } else {
                (401, "unauthorized")
            };
            assert_eq!((status, kind.as_str()), refused, "{how}");
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
        let mut ws2 = connect(&s, &k2)
            .await
            .unwrap_or_else(|e| panic!("the new key must link: {e:?}"));
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

/// Rotates `key`'s machine once over a live link: the new key, and its link (welcomed).
async fn rotate(s: &TestServer, key: &str) -> (String, Ws) {
    let mut ws = connect(s, key).await.unwrap();
    until(&mut ws, "welcome", Duration::from_secs(2))
        .await
        .unwrap();
    say(&mut ws, json!({"type": "rotate_key"})).await;
    let offer = until(&mut ws, "new_key", Duration::from_secs(2))
        .await
        .unwrap();
    let next = offer["machine_key"].as_str().unwrap().to_owned();
    let mut ws2 = connect(s, &next).await.unwrap();
    until(&mut ws2, "welcome", Duration::from_secs(2))
        .await
        .unwrap();
    (next, ws2)
}

/// Pins: a retired key presented again gets 401, quarantines that machine alone (its live
/// link closes with `quarantined`, its current key gets 403 quarantined, one
/// `machine.key_replayed` event per replay), leaves another machine's link up, and an admin's clear lets
/// the current key link again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_retired_key_quarantines_only_its_machine() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let (m, k1) = enrolled(&s, &key, "victim").await;
        let (_, other_key) = enrolled(&s, &key, "bystander").await;
        let mut other = connect(&s, &other_key).await.unwrap();
        until(&mut other, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        let (k2, mut live) = rotate(&s, &k1).await;

        let (status, kind, _) = connect(&s, &k1).await.err().unwrap();
        assert_eq!((status, kind.as_str()), (401, "unauthorized"));
        let bye = until(&mut live, "goodbye", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(bye["reason"], "quarantined");
        assert_eq!(s.db().machine(&m).await.unwrap().state, "quarantined");
        let (status, kind, _) = connect(&s, &k2).await.err().unwrap();
        assert_eq!((status, kind.as_str()), (403, "quarantined"));
        // A second replay is refused the same way and recorded too (within the event budget).
        assert_eq!(connect(&s, &k1).await.err().unwrap().0, 401);
        let events = s
            .db()
            .events(Some("machine.key_replayed"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "each replay is an alert");
        assert!(events[0].target.contains(&m));

        // The bystander is untouched.
        say(&mut other, json!({"type": "heartbeat"})).await;
        assert_eq!(
            until(&mut other, "heartbeat", Duration::from_secs(2))
                .await
                .unwrap()["type"],
            "heartbeat"
        );

        s.db().clear_quarantine(&m).await.unwrap();
        let mut back = connect(&s, &k2).await.unwrap();
        assert_eq!(
            until(&mut back, "welcome", Duration::from_secs(2))
                .await
                .unwrap()["key_version"],
            2
        );
        s.running.stop().await.unwrap();
    }
}

/// Pins: a quarantined machine cannot enroll its way out: an enrollment with its machine id
/// (the site's valid enrollment key, the same hostname, as a clone holding the retired key
/// would send after its 401s) gets 403 `quarantined` and no key, is recorded, leaves the
/// machine quarantined and its current key unrevoked; once an admin clears it, that key links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quarantined_machine_cannot_enroll_its_way_out() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let (m, k1) = enrolled(&s, &key, "victim").await;
        let (k2, mut live) = rotate(&s, &k1).await;
        assert_eq!(connect(&s, &k1).await.err().unwrap().0, 401);
        until(&mut live, "goodbye", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(s.db().machine(&m).await.unwrap().state, "quarantined");

        let r = s.enroll(&body("hq", &key, &m, "victim")).await;
        assert_eq!((r.status, r.kind()), (403, "quarantined"), "{}", r.raw);
        assert!(r.json.get("machine_key").is_none(), "{}", r.raw);
        assert_eq!(s.db().machine(&m).await.unwrap().state, "quarantined");
        let events = s
            .db()
            .events(Some("enroll.quarantined"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        let (status, kind, _) = connect(&s, &k2).await.err().unwrap();
        assert_eq!((status, kind.as_str()), (403, "quarantined"));

        s.db().clear_quarantine(&m).await.unwrap();
        let mut back = connect(&s, &k2).await.unwrap();
        assert_eq!(
            until(&mut back, "welcome", Duration::from_secs(2))
                .await
                .unwrap()["key_version"],
            2
        );
        s.running.stop().await.unwrap();
    }
}

/// Pins: two live links with the same current key: the newer is refused with 409
/// `duplicate_link` and recorded, the first stays up; once it closes the key links again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_link_with_the_same_key_is_refused_and_recorded() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let (_, k) = enrolled(&s, &key, "twin").await;
        let mut first = connect(&s, &k).await.unwrap();
        until(&mut first, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        let (status, kind, _) = connect(&s, &k).await.err().unwrap();
        assert_eq!((status, kind.as_str()), (409, "duplicate_link"));
        let events = s
            .db()
            .events(Some("machine.link_duplicate"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        say(&mut first, json!({"type": "heartbeat"})).await;
        assert!(
            until(&mut first, "heartbeat", Duration::from_secs(2))
                .await
                .is_some()
        );
        first.close(None).await.unwrap();
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match connect(&s, &k).await {
                Ok(_) => break,
                Err((409, _, _)) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("the key must link once its link closed: {e:?}"),
            }
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: a likely clone waiting for approval gets no key and no link, and does not cut off the
/// host that holds the machine's live key (its link stays up, and it may link again), so
/// enrolling someone else's machine id cannot take that host off the fleet; once an operator
/// approves the clone, its enrollment gets a key that links, the old key is revoked (401, no
/// quarantine: revocation is not a replay) and the old link closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_clone_gets_no_link_and_does_not_cut_off_the_host() {
    for url in backends() {
        let (s, key) = server(url.as_deref(), quick()).await;
        let m = machine_id();
        let first = s.enroll(&body("hq", &key, &m, "pc-1")).await;
        let k1 = first.json["machine_key"].as_str().unwrap().to_owned();
        let mut host = connect(&s, &k1).await.unwrap();
        until(&mut host, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        let clone = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(clone.status, 202, "{}", clone.raw);
        assert!(clone.json.get("machine_key").is_none());
        assert_eq!(s.db().machine(&m).await.unwrap().state, "pending");
        // The host is not cut off: it keeps heartbeating, and its key still links.
        for _ in 0..3 {
            say(&mut host, json!({"type": "heartbeat"})).await;
            let m = until(&mut host, "heartbeat", Duration::from_secs(2)).await;
            assert!(m.is_some(), "the host's link closed while a clone waits");
        }
        host.close(None).await.unwrap();
        let mut again = loop {
            match connect(&s, &k1).await {
                Ok(ws) => break ws,
                Err((409, _, _)) => tokio::time::sleep(Duration::from_millis(50)).await,
                Err(e) => panic!("the host's key must still link: {e:?}"),
            }
        };
        until(&mut again, "welcome", Duration::from_secs(2))
            .await
            .unwrap();

        s.db().approve(&m).await.unwrap();
        let approved = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(approved.status, 200, "{}", approved.raw);
        let k2 = approved.json["machine_key"].as_str().unwrap();
        let bye = until(&mut again, "goodbye", Duration::from_secs(2))
            .await
            .unwrap();
        assert_eq!(bye["reason"], "revoked");
        let mut ws = connect(&s, k2).await.unwrap();
        assert!(
            until(&mut ws, "welcome", Duration::from_secs(2))
                .await
                .is_some()
        );
        assert_eq!(connect(&s, &k1).await.err().unwrap().0, 401);
        assert_eq!(s.db().machine(&m).await.unwrap().state, "active");
        s.running.stop().await.unwrap();
    }
}

/// Pins: past the upgrade rate a link is refused with 503 `unavailable` and an exact
/// Retry-After, before its key is looked at.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_past_the_rate_get_503_with_retry_after() {
    let (s, key) = server(
        None,
        LinkConfig {
            upgrades_per_second: 2,
            ..quick()
        },
    )
    .await;
    let mut keys = Vec::new();
    for i in 0..3 {
        keys.push(enrolled(&s, &key, &format!("h{i}")).await.1);
    }
    let _a = connect(&s, &keys[0]).await.unwrap();
    let _b = connect(&s, &keys[1]).await.unwrap();
    let (status, kind, retry) = connect(&s, &keys[2]).await.err().unwrap();
    assert_eq!(
        (status, kind.as_str(), retry.as_deref()),
        (503, "unavailable", Some("1"))
    );
    let (status, _, _) = connect(&s, "wmk_nonsense").await.err().unwrap();
    assert_eq!(status, 503, "admission comes before the key check");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(connect(&s, &keys[2]).await.is_ok());
    s.running.stop().await.unwrap();
}

/// Pins: a graceful stop tells every linked agent to come back after a delay spread over the
/// restart window (not all at once), then closes the links.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_spreads_the_agents_returns() {
    let (s, key) = server(None, quick()).await;
    let mut links = Vec::new();
    for i in 0..8 {
        let (_, k) = enrolled(&s, &key, &format!("h{i}")).await;
        let mut ws = connect(&s, &k).await.unwrap();
        until(&mut ws, "welcome", Duration::from_secs(2))
            .await
            .unwrap();
        links.push(ws);
    }
    let stopping = tokio::spawn(s.running.stop());
    let mut delays = Vec::new();
    for ws in &mut links {
        let bye = until(ws, "goodbye", Duration::from_secs(5)).await.unwrap();
        assert_eq!(bye["reason"], "server_stopping");
        let after = bye["reconnect_after_ms"].as_u64().unwrap();
        assert!(after <= 3000, "{after} ms is past the spread");
        delays.push(after);
        assert!(
            next(ws, Duration::from_secs(2)).await.is_none(),
            "the link closes"
        );
    }
    stopping.await.unwrap().unwrap();
    delays.sort_unstable();
    delays.dedup();
    assert!(delays.len() >= 6, "returns not spread: {delays:?}");
}

/// Pins: a key due for rotation is offered by the server on its own (no agent request),
/// within the pace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_due_key_is_offered_on_schedule() {
    let (s, key) = server(
        None,
        LinkConfig {
            rotation_every: Duration::from_millis(500),
            ..quick()
        },
    )
    .await;
    let (_, k) = enrolled(&s, &key, "sched").await;
    let mut ws = connect(&s, &k).await.unwrap();
    let started = Instant::now();
    loop {
        let m = next(&mut ws, Duration::from_secs(3)).await.unwrap();
        if m["type"] == "new_key" {
            assert_eq!(m["key_version"], 2);
            break;
        }
        say(&mut ws, json!({"type": "heartbeat"})).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(300));
    s.running.stop().await.unwrap();
}
