//! Remote dispatch through real sockets, on SQLite and on PostgreSQL: operators dispatch over
//! the HTTP API, the server fans out over the agent link to lean agent stand-ins that answer
//! like wardend would (Accepted, Progress, numbered Output chunks sent again until stored,
//! Ended sent again until its end is stored), and the records, brakes, cancel, live stream and
//! credential planes are checked from the outside.

#![allow(clippy::unwrap_used)]

mod cli;
#[path = "../common/mod.rs"]
mod common;
mod harness;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use common::agent::{connect, next_news, reconnect, say, until};
use common::{TestServer, backends, machine_id};
use futures_util::StreamExt;
use harness::*;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use warden_server::Config;
use warden_server::auth::Role;

/// Pins: a dispatch to three linked machines runs on all three (each gets the Dispatch once,
/// with the operator, the server's name and the parameters), each ends `succeeded` with its
/// result and exit code, its output is stored in order exactly once, the summary counts it,
/// a secret parameter is sent to the host but recorded, answered and logged only redacted,
/// and the audit trail has the dispatch and its target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dispatch_to_three_hosts_runs_on_all_and_stores_output_in_order_once() {
    let logs = captured_logs();
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(
            &s,
            &key,
            vec![Behavior::ok(&["one\n", "two\n", "three\n"], 50); 3],
        )
        .await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "restart-service",
                   "params": {"service": "nginx", "password": "hunter2"}}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(id.starts_with("dsp_") && id.len() == 36, "{id}");
        assert_eq!(r.json["dispatch"]["params"]["password"], "<redacted>");
        assert_eq!(r.json["dispatch"]["params"]["service"], "nginx");
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "done", "{v}");
        assert_eq!(v["summary"]["succeeded"], 3, "{v}");
        for (m, name) in &f.hosts {
            let h = host(&v, m);
            assert_eq!(h["state"], "succeeded");
            assert_eq!(h["exit_code"], 0);
            assert_eq!(h["result"]["host"], name.as_str());
            assert_eq!(h["job_id"], format!("job-{name}"));
            let out = output(&s, &tok, &id, m).await;
            let want: Vec<(i64, String)> = ["one\n", "two\n", "three\n"]
                .iter()
                .enumerate()
                .map(|(i, c)| (i as i64 + 1, format!("{name}: {c}")))
                .collect();
            assert_eq!(out, want);
        }
        let got = f.seen.dispatches.lock().unwrap().clone();
        assert_eq!(got.len(), 3, "{got:?}");
        for (_, m) in &got {
            assert_eq!(m["operator"], "olga");
            assert_eq!(m["server"], "srv-test");
            assert_eq!(m["action"], "restart-service");
            assert_eq!(
                m["params"]["password"], "hunter2",
                "the host gets the secret"
            );
        }
        let raw = call(&s, &tok, "GET", &format!("/v1/dispatches/{id}"), None)
            .await
            .raw;
        assert!(!raw.contains("hunter2"), "a secret in the record: {raw}");
        let events = s
            .db()
            .events(Some("dispatch.create"), None, 10)
            .await
            .unwrap();
        let created = events
            .iter()
            .find(|e| e.target == format!("dispatch {id}"))
            .unwrap();
        assert_eq!(created.actor, "operator olga");
        assert!(
            created.detail.contains("restart-service") && created.detail.contains(&f.hosts[0].0),
            "{created:?}"
        );
        assert!(!created.detail.contains("hunter2"));
        let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
        assert!(logged.contains(&id), "the capture works: {logged}");
        assert!(!logged.contains("hunter2"), "a secret in the log: {logged}");
        let list = call(&s, &tok, "GET", "/v1/dispatches", None).await;
        assert_eq!(list.json["dispatches"][0]["dispatch_id"], id.as_str());
        s.running.stop().await.unwrap();
    }
}

/// Pins: a Dispatch not answered before the link dropped is sent again on the next link, and
/// output chunks sent again after a reconnect (and ones the server already stored) are stored
/// exactly once, in order; the end is acknowledged only once every chunk is stored; another
/// machine's reports about the dispatch change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_resends_the_dispatch_and_output_is_stored_exactly_once() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": [m]}, "action": "a"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let d = until(&mut ws, "dispatch", WAIT).await.unwrap();
        assert_eq!(d["dispatch_id"], id.as_str());
        // Dropped before answering: the next link gets it again.
        ws.close(None).await.unwrap();
        drop(ws);
        let mut ws = reconnect(&s, &mk).await;
        let d = until(&mut ws, "dispatch", WAIT).await.unwrap();
        assert_eq!(d["dispatch_id"], id.as_str());
        say(
            &mut ws,
            json!({"type": "accepted", "dispatch_id": id, "job_id": "j1"}),
        )
        .await;
        for seq in 1..=2u64 {
            say(
                &mut ws,
                json!({"type": "output", "dispatch_id": id, "seq": seq,
                "offset": (seq - 1) * 2, "data": format!("{seq}\n")}),
            )
            .await;
        }
        let stored = until(&mut ws, "output_stored", WAIT).await.unwrap();
        assert_eq!(stored["seq"], 1);
        let stored = until(&mut ws, "output_stored", WAIT).await.unwrap();
        assert_eq!(stored["seq"], 2);
        ws.close(None).await.unwrap();
        drop(ws);
        // The agent sends 2 again (say its acknowledgement was lost), 4 before 3, and the end
        // before 3: the end waits for its chunks.
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        say(
            &mut ws,
            json!({"type": "output", "dispatch_id": id, "seq": 2, "offset": 2, "data": "2\n"}),
        )
        .await;
        assert_eq!(
            until(&mut ws, "output_stored", WAIT).await.unwrap()["seq"],
            2
        );
        say(
            &mut ws,
            json!({"type": "output", "dispatch_id": id, "seq": 4, "offset": 6, "data": "4\n"}),
        )
        .await;
        assert_eq!(
            until(&mut ws, "output_stored", WAIT).await.unwrap()["seq"],
            2
        );
        say(
            &mut ws,
            json!({"type": "ended", "dispatch_id": id, "state": "succeeded",
            "exit_code": 0, "last_seq": 4}),
        )
        .await;
        say(
            &mut ws,
            json!({"type": "output", "dispatch_id": id, "seq": 3, "offset": 4, "data": "3\n"}),
        )
        .await;
        let m2 = next_news(&mut ws, WAIT).await.unwrap();
        assert_eq!(
            m2["type"], "output_stored",
            "the end is not acknowledged before its output: {m2}"
        );
        assert_eq!(m2["seq"], 4);
        say(
            &mut ws,
            json!({"type": "ended", "dispatch_id": id, "state": "succeeded",
            "exit_code": 0, "last_seq": 4}),
        )
        .await;
        until(&mut ws, "end_stored", WAIT).await.unwrap();
        // Another machine cannot write into this machine's part: its reports are dropped
        // (and acknowledged, so its agent lets go of them).
        let (_, other_key) = enrolled(&s, &key, "other").await;
        let mut other = connect(&s, &other_key).await.unwrap();
        until(&mut other, "welcome", WAIT).await.unwrap();
        say(
            &mut other,
            json!({"type": "output", "dispatch_id": id, "seq": 5, "offset": 8, "data": "forged\n"}),
        )
        .await;
        assert_eq!(
            until(&mut other, "output_stored", WAIT).await.unwrap()["seq"],
            5
        );
        say(
            &mut other,
            json!({"type": "ended", "dispatch_id": id, "state": "failed", "last_seq": 5}),
        )
        .await;
        until(&mut other, "end_stored", WAIT).await.unwrap();
        let v = ended(&s, &tok, &id).await;
        assert_eq!(host(&v, &m)["state"], "succeeded");
        let out = output(&s, &tok, &id, &m).await;
        let want: Vec<(i64, String)> = (1..=4).map(|i| (i, format!("{i}\n"))).collect();
        assert_eq!(out, want);
        s.running.stop().await.unwrap();
    }
}

/// Pins: machines the target names that are removed, banned, quarantined or unknown are left
/// out and listed with why; a host whose reported actions lack the action is refused early
/// (`not_offered`, never sent), with the refusal in the audit trail; a host that refuses is
/// recorded with wardend's kind and audited; `GET /v1/machines/{id}/actions` shows what a
/// host offers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn excluded_targets_are_listed_and_refusals_recorded() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let refusing = Behavior {
            refuse: Some("locked_down".into()),
            ..Behavior::ok(&[], 0)
        };
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 0), refusing]).await;
        let (removed, _) = enrolled(&s, &key, "gone").await;
        s.db().remove(&removed).await.unwrap();
        let (banned, _) = enrolled(&s, &key, "bad").await;
        s.db().ban(&banned).await.unwrap();
        let (quarantined, _) = enrolled(&s, &key, "odd").await;
        s.db().quarantine(&quarantined).await.unwrap();
        // A host offering other actions only.
        let (lacking, lk) = enrolled(&s, &key, "lacks").await;
        let lacking_seen = Arc::new(Seen::default());
        let _t = stand_in(
            Arc::clone(&f.addr),
            lk,
            "lacks",
            actions(&["other"]),
            Behavior::ok(&[], 0),
            Arc::clone(&lacking_seen),
        );
        let deadline = Instant::now() + WAIT;
        while s.db().machine_actions(&lacking).await.unwrap().0.is_none() {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let a = call(
            &s,
            &tok,
            "GET",
            &format!("/v1/machines/{lacking}/actions"),
            None,
        )
        .await;
        assert_eq!(a.status, 200, "{}", a.raw);
        assert_eq!(a.json["actions"][0]["name"], "other");
        let unknown = machine_id();
        let mut targets = ids(&f);
        targets.extend([
            removed.clone(),
            banned.clone(),
            quarantined.clone(),
            lacking.clone(),
            unknown.clone(),
        ]);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": targets}, "action": "restart-service"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let excluded: HashMap<String, String> = r.json["dispatch"]["excluded"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["machine_id"].as_str().unwrap().to_owned(),
                    e["reason"].as_str().unwrap().to_owned(),
                )
            })
            .collect();
        assert_eq!(excluded.len(), 4, "{excluded:?}");
        assert_eq!(excluded[&removed], "removed");
        assert_eq!(excluded[&banned], "banned");
        assert_eq!(excluded[&quarantined], "quarantined");
        assert_eq!(excluded[&unknown], "not_found");
        assert_eq!(host(&r.json, &lacking)["state"], "refused");
        assert_eq!(host(&r.json, &lacking)["refusal_kind"], "not_offered");
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["summary"]["total"], 3, "{v}");
        assert_eq!(host(&v, &f.hosts[0].0)["state"], "succeeded");
        let refused = host(&v, &f.hosts[1].0);
        assert_eq!(refused["state"], "refused");
        assert_eq!(refused["refusal_kind"], "locked_down");
        assert!(
            lacking_seen.dispatches.lock().unwrap().is_empty(),
            "refused early, yet sent"
        );
        let events = s
            .db()
            .events(Some("dispatch.refused"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 2, "{events:?}");
        assert!(events.iter().any(
            |e| e.actor == format!("machine {lacking}") && e.detail.starts_with("not_offered")
        ));
        assert!(
            events
                .iter()
                .any(|e| e.actor == format!("machine {}", f.hosts[1].0)
                    && e.detail.starts_with("locked_down"))
        );
        // A site target leaves the same machines out; a label target picks by label.
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"site": "hq"}, "action": "restart-service"}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        assert_eq!(
            r.json["dispatch"]["excluded"].as_array().unwrap().len(),
            3,
            "{}",
            r.raw
        );
        assert_eq!(r.json["summary"]["total"], 3);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"labels": {"tags": "zzz"}}, "action": "a"}),
        )
        .await;
        assert_eq!((r.status, r.kind()), (400, "bad_request"), "{}", r.raw);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"labels": {"tags": "a", "site": "hq"}}, "action": "restart-service"}),
        )
        .await;
        assert_eq!(r.json["summary"]["total"], 3, "{}", r.raw);
        s.running.stop().await.unwrap();
    }
}

/// Pins: no more than `batch` hosts run at once, and every host still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_batch_size_is_respected() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 300); 5]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "batch": 2}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["succeeded"], 5, "{v}");
        assert_eq!(f.seen.max_running.load(Ordering::SeqCst), 2);
        s.running.stop().await.unwrap();
    }
}

/// Pins: once failures pass `max_failures`, no new host starts: the rest end `cancelled` and
/// counted `not_started`, and the dispatch says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_failures_stops_the_rest() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::failing(50); 5]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a",
            "batch": 1, "max_failures": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["failed"], 2, "{v}");
        assert_eq!(v["summary"]["not_started"], 3, "{v}");
        assert_eq!(v["dispatch"]["stopped"], "max_failures passed");
        assert_eq!(f.seen.dispatches.lock().unwrap().len(), 2);
        s.running.stop().await.unwrap();
    }
}

/// Pins: with `canary`, only the canaries start first; one failing stops every other host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_stops_all() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let mut bs = vec![Behavior::failing(200)];
        bs.extend(vec![Behavior::ok(&["x\n"], 0); 3]);
        let f = fleet(&s, &key, bs).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "canary": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["failed"], 1, "{v}");
        assert_eq!(v["summary"]["not_started"], 3, "{v}");
        assert_eq!(v["dispatch"]["stopped"], "canary failed");
        let sent = f.seen.dispatches.lock().unwrap().clone();
        assert_eq!(sent.len(), 1);
        assert_eq!(sent[0].0, "h0");
        // A succeeding canary lets the rest go.
        let f2 = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 100); 3]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f2)}, "action": "a", "canary": 1}),
        )
        .await;
        let v = ended(
            &s,
            &tok,
            r.json["dispatch"]["dispatch_id"].as_str().unwrap(),
        )
        .await;
        assert_eq!(v["summary"]["succeeded"], 3, "{v}");
        s.running.stop().await.unwrap();
    }
}

/// Pins: cancel ends hosts not started at once (`not_started`), sends Cancel to the running
/// ones and records the end they report; the dispatch ends `cancelled`, a second cancel is a
/// conflict, and the cancel is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_sends_cancel_and_records_what_the_host_reports() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::until_cancelled(); 4]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "batch": 2}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + WAIT;
        while f.seen.running.load(Ordering::SeqCst) < 2 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = call(
            &s,
            &tok,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(c.status, 200, "{}", c.raw);
        assert_eq!(c.json["not_started"], 2);
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "cancelled", "{v}");
        assert_eq!(v["summary"]["cancelled"], 2, "{v}");
        assert_eq!(v["summary"]["not_started"], 2, "{v}");
        assert_eq!(f.seen.cancels.lock().unwrap().len(), 2);
        let again = call(
            &s,
            &tok,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!((again.status, again.kind()), (409, "conflict"));
        let events = s
            .db()
            .events(Some("dispatch.cancel"), None, 10)
            .await
            .unwrap();
        assert_eq!(events.len(), 1);
        s.running.stop().await.unwrap();
    }
}

/// Pins: above 100 targets a dispatch needs `confirm: true`; with it, it is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_is_required_above_100_targets() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let mut targets = Vec::new();
        for i in 0..101 {
            targets.push(enrolled(&s, &key, &format!("m{i}")).await.0);
        }
        let b = json!({"target": {"machines": targets[..100]}, "action": "a"});
        let r = dispatch(&s, &tok, b).await;
        assert_eq!(r.status, 201, "100 need no confirmation: {}", r.raw);
        let b = json!({"target": {"machines": targets}, "action": "a"});
        let r = dispatch(&s, &tok, b).await;
        assert_eq!((r.status, r.kind()), (400, "bad_request"), "{}", r.raw);
        assert!(r.raw.contains("confirm"), "{}", r.raw);
        let b = json!({"target": {"machines": targets}, "action": "a", "confirm": true});
        let r = dispatch(&s, &tok, b).await;
        assert_eq!(r.status, 201, "{}", r.raw);
        assert_eq!(r.json["summary"]["total"], 101);
        s.running.stop().await.unwrap();
    }
}

/// Pins: a machine key cannot create a dispatch (401), a viewer cannot (403) though it may
/// read, no credential gets in without one, and an operator token cannot open a link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_planes_hold() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let op = token(&s, "olga", Role::Operator).await;
        let viewer = token(&s, "vera", Role::Viewer).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let b = json!({"target": {"machines": [m]}, "action": "a"});
        let r = dispatch(&s, &mk, b.clone()).await;
        assert_eq!((r.status, r.kind()), (401, "unauthorized"), "{}", r.raw);
        let r = s.request("POST", "/v1/dispatches", Some(&b), &[]).await;
        assert_eq!(r.status, 401);
        let r = dispatch(&s, &viewer, b.clone()).await;
        assert_eq!((r.status, r.kind()), (403, "forbidden"), "{}", r.raw);
        let r = dispatch(&s, &op, b).await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let r = call(&s, &viewer, "GET", &format!("/v1/dispatches/{id}"), None).await;
        assert_eq!(r.status, 200, "{}", r.raw);
        let r = call(
            &s,
            &viewer,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(r.status, 403);
        let r = call(&s, &mk, "GET", &format!("/v1/dispatches/{id}"), None).await;
        assert_eq!(r.status, 401);
        let r = call(&s, &mk, "GET", &format!("/v1/machines/{m}/actions"), None).await;
        assert_eq!(r.status, 401);
        let (status, kind, _) = connect(&s, &op).await.err().unwrap();
        assert_eq!((status, kind.as_str()), (401, "unauthorized"));
        s.running.stop().await.unwrap();
    }
}

/// Reads a server-sent event stream until `event: end` (or `within`): the (event, data) pairs.
async fn read_stream(
    addr: SocketAddr,
    path: &str,
    tok: &str,
    within: Duration,
) -> Vec<(String, Value)> {
    let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {tok}\r\nConnection: close\r\n\r\n"
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    let deadline = Instant::now() + within;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, sock.read(&mut buf)).await {
            Ok(Ok(0)) | Err(_) => break,
            Ok(Ok(n)) => raw.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => panic!("{e}"),
        }
        if String::from_utf8_lossy(&raw).contains("event: end\n") {
            break;
        }
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{text}"
    );
    let mut out = Vec::new();
    for line_pair in text.split("\nevent: ").skip(1) {
        let (event, rest) = line_pair.split_once('\n').unwrap();
        let data = rest.lines().find_map(|l| l.strip_prefix("data: ")).unwrap();
        out.push((event.to_owned(), serde_json::from_str(data).unwrap()));
    }
    out
}

/// Pins: the live stream delivers each host's state changes and its output chunks (in order,
/// once, prefixed with the hostname), and ends with the summary after the last chunk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_delivers_states_and_output() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "vera", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["a\n", "b\n"], 400); 2]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a"}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let events = read_stream(
            s.running.addr,
            &format!("/v1/dispatches/{id}/events"),
            &tok,
            WAIT,
        )
        .await;
        let last = events.last().unwrap();
        assert_eq!(last.0, "end", "{events:?}");
        assert_eq!(last.1["summary"]["succeeded"], 2);
        for (m, name) in &f.hosts {
            let states: Vec<&str> = events
                .iter()
                .filter(|(e, d)| e == "host" && d["machine_id"] == m.as_str())
                .map(|(_, d)| d["state"].as_str().unwrap())
                .collect();
            assert_eq!(states.last(), Some(&"succeeded"), "{states:?}");
            assert!(states.contains(&"running"), "{states:?}");
            let out: Vec<(i64, String)> = events
                .iter()
                .filter(|(e, d)| e == "output" && d["machine_id"] == m.as_str())
                .map(|(_, d)| {
                    assert_eq!(d["hostname"], name.as_str());
                    (
                        d["seq"].as_i64().unwrap(),
                        d["data"].as_str().unwrap().to_owned(),
                    )
                })
                .collect();
            assert_eq!(
                out,
                vec![(1, format!("{name}: a\n")), (2, format!("{name}: b\n"))]
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: a server stopped mid-dispatch and started again on the same database goes on with it:
/// the host running across the restart reports its end (and its output) on its new link, the
/// hosts not started yet start, and the dispatch ends with every host succeeded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restart_mid_dispatch_resumes_it() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n", "y\n"], 800); 3]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "a", "batch": 1}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + WAIT;
        while f.seen.running.load(Ordering::SeqCst) < 1 {
            assert!(Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let TestServer {
            running,
            dir,
            url: db_url,
        } = s;
        running.stop().await.unwrap();
        let mut config = Config::new(dir.path().join("data"));
        config.database_url = db_url.clone();
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        quick(&mut config);
        let running = warden_server::start(&config).await.unwrap();
        *f.addr.lock().unwrap() = running.addr;
        let s = TestServer {
            running,
            dir,
            url: db_url,
        };
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["summary"]["succeeded"], 3, "{v}");
        assert!(f.seen.max_running.load(Ordering::SeqCst) <= 1);
        for (m, name) in &f.hosts {
            let out = output(&s, &tok, &id, m).await;
            assert_eq!(
                out,
                vec![(1, format!("{name}: x\n")), (2, format!("{name}: y\n"))]
            );
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: a host not linked when its turn comes is `offline` and takes no batch slot; it gets
/// the dispatch when it links while the dispatch is open, and a host that never links ends
/// `offline` once the offline wait passed, which ends the dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_hosts_run_when_they_link_and_end_offline_after_the_wait() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 100)]).await;
        let (late, late_key) = enrolled(&s, &key, "late").await;
        let (never, _) = enrolled(&s, &key, "never").await;
        let mut targets = ids(&f);
        targets.extend([late.clone(), never.clone()]);
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": targets}, "action": "a", "batch": 1}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let deadline = Instant::now() + WAIT;
        loop {
            let v = call(&s, &tok, "GET", &format!("/v1/dispatches/{id}"), None).await;
            if host(&v.json, &late)["state"] == "offline"
                && host(&v.json, &never)["state"] == "offline"
            {
                break;
            }
            assert!(Instant::now() < deadline, "{}", v.raw);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let seen = Arc::new(Seen::default());
        let _late = stand_in(
            Arc::clone(&f.addr),
            late_key,
            "late",
            actions(&["a"]),
            Behavior::ok(&["late\n"], 0),
            Arc::clone(&seen),
        );
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "done", "{v}");
        assert_eq!(host(&v, &f.hosts[0].0)["state"], "succeeded");
        assert_eq!(host(&v, &late)["state"], "succeeded", "{v}");
        assert_eq!(host(&v, &never)["state"], "offline", "{v}");
        assert_eq!(v["summary"]["offline"], 1);
        assert_eq!(seen.dispatches.lock().unwrap().len(), 1);
        s.running.stop().await.unwrap();
    }
}

/// Pins: a Dispatch left unanswered on a live link is sent again after `resend_after` (a lost
/// message does not leave the host's part waiting forever), and not again once answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_dispatch_is_sent_again_on_a_live_link() {
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            quick(c);
            c.dispatch.resend_after = Duration::from_millis(300);
        })
        .await;
        s.db().add_site("hq", "Headquarters", "Acme").await.unwrap();
        let key = s.db().rotate_key("hq").await.unwrap().key;
        let tok = token(&s, "olga", Role::Operator).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": [m]}, "action": "a"}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let first = Instant::now();
        assert_eq!(
            until(&mut ws, "dispatch", WAIT).await.unwrap()["dispatch_id"],
            id.as_str()
        );
        assert_eq!(
            until(&mut ws, "dispatch", WAIT).await.unwrap()["dispatch_id"],
            id.as_str()
        );
        assert!(
            first.elapsed() >= Duration::from_millis(250),
            "sent again too soon"
        );
        say(
            &mut ws,
            json!({"type": "accepted", "dispatch_id": id, "job_id": "j"}),
        )
        .await;
        // Answered: nothing but heartbeats for a few resend periods.
        let quiet = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < quiet {
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_millis(100), ws.next()).await
            {
                assert!(!t.contains("\"dispatch\""), "sent again once answered: {t}");
            }
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: a host cannot fill the server's database: output past the per-part cap is
/// acknowledged in order but not stored, and the part says its output was truncated; a chunk
/// numbered far past the last one stored is neither stored nor acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_cannot_store_output_past_the_cap() {
    use warden_server::store::dispatch::agent::{MAX_PART_OUTPUT, SEQ_WINDOW};
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["one\n"], 50)]).await;
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": ids(&f)}, "action": "restart-service",
                   "params": {"service": "nginx"}}),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.raw);
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        ended(&s, &tok, &id).await;
        let machine = &f.hosts[0].0;
        let row: i64 = sqlx::query_scalar("SELECT id FROM machines WHERE machine_id = $1")
            .bind(machine)
            .fetch_one(&s.db().pool)
            .await
            .unwrap();
        // One chunk (seq 1) is stored; fill up to the cap with 1 MiB chunks, then one more.
        let mib = "x".repeat(1 << 20);
        let whole = usize::try_from(MAX_PART_OUTPUT >> 20).unwrap();
        let mut seq = 1u64;
        for _ in 0..whole {
            seq += 1;
            let stored = s
                .db()
                .part_output(&id, row, seq, 0, &mib)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(stored.last_seq, seq, "acknowledged in order");
        }
        let count = |s: &TestServer| {
            let pool = s.db().pool.clone();
            async move {
                sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM dispatch_output")
                    .fetch_one(&pool)
                    .await
                    .unwrap()
            }
        };
        let before = count(&s).await;
        let far = seq + u64::try_from(SEQ_WINDOW).unwrap() + 5;
        let stored = s
            .db()
            .part_output(&id, row, far, 0, "far")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stored.last_seq, seq,
            "a chunk far ahead is not acknowledged"
        );
        assert_eq!(count(&s).await, before, "nor stored");
        let stored = s
            .db()
            .part_output(&id, row, seq + 1, 0, &mib)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(stored.last_seq, seq + 1, "past the cap: acknowledged");
        assert_eq!(count(&s).await, before, "but not stored");
        let out = call(
            &s,
            &tok,
            "GET",
            &format!("/v1/dispatches/{id}/hosts/{machine}/output?after=0"),
            None,
        )
        .await;
        assert_eq!(
            out.json["output_truncated"],
            true,
            "{}",
            &out.raw[..200.min(out.raw.len())]
        );
        s.running.stop().await.unwrap();
    }
}

/// Pins: a cancel for a part whose Dispatch never reached the host (lost) is answered by the
/// agent `refused {kind: "not_found"}`; the server then closes the part `cancelled`
/// (not_started, the refusal kept) and the dispatch ends `cancelled` instead of waiting; the
/// ended part is not sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_the_host_never_got_the_dispatch_for_closes_the_part() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let (m, mk) = enrolled(&s, &key, "pc").await;
        let mut ws = connect(&s, &mk).await.unwrap();
        until(&mut ws, "welcome", WAIT).await.unwrap();
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": [m]}, "action": "a"}),
        )
        .await;
        let id = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        // The Dispatch is lost on the way: the stand-in drops it.
        until(&mut ws, "dispatch", WAIT).await.unwrap();
        let c = call(
            &s,
            &tok,
            "POST",
            &format!("/v1/dispatches/{id}/cancel"),
            None,
        )
        .await;
        assert_eq!(c.status, 200, "{}", c.raw);
        assert_eq!(
            until(&mut ws, "cancel", WAIT).await.unwrap()["dispatch_id"],
            id.as_str()
        );
        say(
            &mut ws,
            json!({"type": "refused", "dispatch_id": id, "kind": "not_found",
                "message": "cancelled before its dispatch reached this host; nothing ran here"}),
        )
        .await;
        let v = ended(&s, &tok, &id).await;
        assert_eq!(v["dispatch"]["state"], "cancelled", "{v:#}");
        let part = host(&v, &m);
        assert_eq!(part["state"], "cancelled", "{part}");
        assert_eq!(part["refusal_kind"], "not_found", "{part}");
        assert!(
            part["note"].as_str().unwrap().starts_with("not_started"),
            "{part}"
        );
        // A not_found refusal without a cancel stays a refusal (another dispatch).
        let r = dispatch(
            &s,
            &tok,
            json!({"target": {"machines": [m]}, "action": "a"}),
        )
        .await;
        let other = r.json["dispatch"]["dispatch_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let _ = until(&mut ws, "dispatch", WAIT).await.unwrap();
        say(
            &mut ws,
            json!({"type": "refused", "dispatch_id": other, "kind": "not_found",
                "message": "no such action"}),
        )
        .await;
        let v = ended(&s, &tok, &other).await;
        assert_eq!(host(&v, &m)["state"], "refused", "{v:#}");
        // Neither ended part is sent again.
        let quiet = Instant::now() + Duration::from_millis(1200);
        while Instant::now() < quiet {
            if let Ok(Some(Ok(Message::Text(t)))) =
                tokio::time::timeout(Duration::from_millis(100), ws.next()).await
            {
                assert!(!t.contains("\"dispatch\""), "an ended part sent again: {t}");
            }
        }
        s.running.stop().await.unwrap();
    }
}

/// Pins: `GET /v1/dispatches?machine=` lists exactly the dispatches that included that machine,
/// newest first; `GET /v1/machines?connected=` splits linked from unlinked machines as their
/// `connected` field says; a viewer reads a machine, its actions and its keys but may not
/// dispatch to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dispatches_filter_by_machine_and_machines_by_link() {
    for url in backends() {
        let (s, key) = server(url.as_deref()).await;
        let tok = token(&s, "olga", Role::Operator).await;
        let viewer = token(&s, "vera", Role::Viewer).await;
        let f = fleet(&s, &key, vec![Behavior::ok(&["x\n"], 0); 3]).await;
        let hosts = ids(&f);
        let (unlinked, _) = enrolled(&s, &key, "z-unlinked").await;
        let mut made = Vec::new();
        for targets in [&hosts[0..2], &hosts[1..3]] {
            let r = dispatch(
                &s,
                &tok,
                json!({"target": {"machines": targets}, "action": "a", "params": {}}),
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.raw);
            let id = r.json["dispatch"]["dispatch_id"]
                .as_str()
                .unwrap()
                .to_owned();
            ended(&s, &tok, &id).await;
            made.push(id);
        }
        let listed = |m: String| {
            let (s, viewer) = (&s, &viewer);
            async move {
                let r = call(
                    s,
                    viewer,
                    "GET",
                    &format!("/v1/dispatches?machine={m}"),
                    None,
                )
                .await;
                assert_eq!(r.status, 200, "{}", r.raw);
                r.json["dispatches"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d["dispatch_id"].as_str().unwrap().to_owned())
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(listed(hosts[0].clone()).await, vec![made[0].clone()]);
        assert_eq!(
            listed(hosts[1].clone()).await,
            vec![made[1].clone(), made[0].clone()]
        );
        assert_eq!(listed(hosts[2].clone()).await, vec![made[1].clone()]);
        assert!(listed(unlinked.clone()).await.is_empty());
        let all = call(&s, &viewer, "GET", "/v1/dispatches", None).await;
        assert_eq!(all.json["dispatches"].as_array().unwrap().len(), 2);

        let page = |q: &'static str| {
            let (s, viewer) = (&s, &viewer);
            async move {
                let r = call(s, viewer, "GET", &format!("/v1/machines?{q}"), None).await;
                assert_eq!(r.status, 200, "{}", r.raw);
                let mut v: Vec<(String, bool)> = r.json["machines"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|m| {
                        (
                            m["machine_id"].as_str().unwrap().to_owned(),
                            m["connected"].as_bool().unwrap(),
                        )
                    })
                    .collect();
                v.sort();
                v
            }
        };
        let mut linked: Vec<(String, bool)> = hosts.iter().map(|m| (m.clone(), true)).collect();
        linked.sort();
        assert_eq!(page("connected=true").await, linked);
        assert_eq!(
            page("connected=false").await,
            vec![(unlinked.clone(), false)]
        );
        assert_eq!(page("connected=true&text=z-unl").await, vec![]);

        // Viewers read machines; changing or dispatching is refused.
        for path in [
            format!("/v1/machines/{}", hosts[0]),
            format!("/v1/machines/{}/actions", hosts[0]),
            format!("/v1/machines/{}/keys", hosts[0]),
        ] {
            let r = call(&s, &viewer, "GET", &path, None).await;
            assert_eq!(r.status, 200, "{path}: {}", r.raw);
        }
        let r = dispatch(
            &s,
            &viewer,
            json!({"target": {"machines": [hosts[0]]}, "action": "a", "params": {}}),
        )
        .await;
        assert_eq!((r.status, r.kind()), (403, "forbidden"), "{}", r.raw);
        drop(f);
        s.running.stop().await.unwrap();
    }
}
