//! The enrollment decision through the real HTTP API, on SQLite and on PostgreSQL: every
//! outcome, the equalized rejections, concurrency, the failure limiter and the verification
//! pool, and that no key is ever at rest in plaintext.

#![allow(clippy::unwrap_used)]

mod common;

use common::{TestServer, backends, body, machine_id};

/// A server with sites `hq` (with a key) and `empty` (without), and hq's key.
async fn with_site(url: Option<&str>) -> (TestServer, String) {
    let s = TestServer::start(url).await;
    s.db().add_site("hq", "Headquarters", "Acme").await.unwrap();
    s.db()
        .add_site("empty", "No key yet", "Acme")
        .await
        .unwrap();
    let key = s.db().rotate_key("hq").await.unwrap().key;
    (s, key)
}

async fn whoami(s: &TestServer, key: &str) -> common::Response {
    s.request(
        "GET",
        "/v1/agent/whoami",
        None,
        &[("Authorization", &format!("Bearer {key}"))],
    )
    .await
}

/// Pins: new → 201 with a key; the same machine again → 200 with a new key, the old one dead;
/// another hostname while recently seen → 202 without a key until approved, then 200; removed →
/// keys dead, and it may come back (200); banned → 403; another site → 409 and nothing moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_enrollment_decision_table() {
    for url in backends() {
        let (s, key) = with_site(url.as_deref()).await;
        let db = s.name();
        let m = machine_id();

        let first = s.enroll(&body("hq", &key, &m, "pc-1")).await;
        assert_eq!(first.status, 201, "{db}: {}", first.raw);
        assert_eq!(first.json["disposition"], "new");
        assert_eq!(first.json["state"], "active");
        let k1 = first.json["machine_key"].as_str().unwrap().to_owned();
        assert!(k1.starts_with("wmk_") && k1.len() == 68);
        assert_eq!(whoami(&s, &k1).await.json["machine_id"], m.as_str());

        // Re-imaged: same machine, same site.
        let again = s.enroll(&body("hq", &key, &m, "pc-1")).await;
        assert_eq!(again.status, 200, "{db}: {}", again.raw);
        assert_eq!(again.json["disposition"], "reuse");
        let k2 = again.json["machine_key"].as_str().unwrap().to_owned();
        assert_ne!(k1, k2);
        assert_eq!(
            whoami(&s, &k1).await.status,
            401,
            "{db}: the old key still works"
        );
        assert_eq!(whoami(&s, &k2).await.status, 200);

        // A clone: same machine id under another hostname, while the original was just seen.
        let clone = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(clone.status, 202, "{db}: {}", clone.raw);
        assert_eq!(clone.json["state"], "pending");
        assert!(clone.json.get("machine_key").is_none());
        let still = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(still.status, 202, "{db}: pending until approved");
        s.db().approve(&m).await.unwrap();
        let approved = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(approved.status, 200, "{db}: {}", approved.raw);
        let k3 = approved.json["machine_key"].as_str().unwrap().to_owned();
        assert_eq!(s.db().machine(&m).await.unwrap().hostname, "pc-2");

        // Removed: keys dead at once; enrolling again revives it.
        assert!(s.db().remove(&m).await.unwrap());
        assert!(
            !s.db().remove(&m).await.unwrap(),
            "{db}: remove is idempotent"
        );
        assert_eq!(whoami(&s, &k3).await.status, 401);
        assert_eq!(s.db().machine(&m).await.unwrap().state, "removed");
        let back = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(back.status, 200, "{db}: {}", back.raw);
        assert_eq!(s.db().machine(&m).await.unwrap().state, "active");

        // Banned: refused, keys dead; unbanned: welcome again.
        let k4 = back.json["machine_key"].as_str().unwrap().to_owned();
        s.db().ban(&m).await.unwrap();
        assert_eq!(whoami(&s, &k4).await.status, 401);
        let banned = s.enroll(&body("hq", &key, &m, "pc-2")).await;
        assert_eq!(banned.status, 403, "{db}: {}", banned.raw);
        assert!(banned.json.get("machine_key").is_none());
        s.db().unban(&m).await.unwrap();
        assert_eq!(s.enroll(&body("hq", &key, &m, "pc-2")).await.status, 200);

        // Another site with a valid key of its own: 409, nothing moves, no key.
        s.db().add_site("branch", "Branch", "Acme").await.unwrap();
        let branch_key = s.db().rotate_key("branch").await.unwrap().key;
        let moved = s.enroll(&body("branch", &branch_key, &m, "pc-2")).await;
        assert_eq!(moved.status, 409, "{db}: {}", moved.raw);
        assert_eq!(moved.kind(), "enroll_site_conflict");
        assert!(moved.json.get("machine_key").is_none());
        assert_eq!(s.db().machine(&m).await.unwrap().site_code, "hq");

        // Malformed: refused before anything is looked up.
        let bad = s.enroll(&body("hq", &key, "muid_XYZ", "pc-1")).await;
        assert_eq!(bad.status, 400, "{db}: {}", bad.raw);
        let long = s
            .enroll(&body("hq", &key, &machine_id(), &"h".repeat(300)))
            .await;
        assert_eq!(long.status, 400);

        // Every outcome is in the audit trail, with the source address and no key material.
        let events = s.db().events(None, None, 1000).await.unwrap();
        for kind in [
            "enroll.new",
            "enroll.reuse",
            "enroll.pending",
            "enroll.banned",
            "enroll.site_conflict",
        ] {
            assert!(
                events.iter().any(|e| e.kind == kind),
                "{db}: no {kind} event"
            );
        }
        let text = serde_json::to_string(&events).unwrap();
        for secret in [&key, &branch_key, &k1, &k2, &k3, &k4] {
            assert!(
                !text.contains(secret.as_str()),
                "{db}: key material in events"
            );
        }
        assert!(events.iter().all(|e| e.source == "127.0.0.1"));
        s.running.stop().await.unwrap();
    }
}

/// Pins: an unknown site, a site without an active key, a wrong key and a rotated key answer
/// byte-identical bodies (apart from the correlation id), and each runs exactly one Argon2id
/// verification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rejection_looks_and_costs_the_same() {
    for url in backends() {
        let (s, old_key) = with_site(url.as_deref()).await;
        let db = s.name();
        let new_key = s.db().rotate_key("hq").await.unwrap().key;
        let wrong = warden_server::keys::new_enrollment_key();
        let m = machine_id();
        let mut bodies = Vec::new();
        for (site, key) in [
            ("nowhere", new_key.as_str()),
            ("empty", new_key.as_str()),
            ("hq", wrong.as_str()),
            ("hq", old_key.as_str()),
            ("hq", "not-even-a-key"),
        ] {
            let before = s.running.state.verifier.runs();
            let r = s.enroll(&body(site, key, &m, "pc-1")).await;
            assert_eq!(
                s.running.state.verifier.runs() - before,
                1,
                "{db}: {site}/{key}: not exactly one verification"
            );
            assert_eq!(r.status, 401, "{db}: {}", r.raw);
            assert_eq!(r.kind(), "enroll_rejected");
            let cid = r.json["error"]["correlation_id"]
                .as_str()
                .unwrap()
                .to_owned();
            bodies.push(r.raw.replacen(&cid, "CID", 1));
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{db}: {bodies:?}");
        let events = s
            .db()
            .events(Some("enroll.rejected"), None, 100)
            .await
            .unwrap();
        assert_eq!(events.len(), 5, "{db}");
        // The good key still works after all that.
        assert_eq!(
            s.enroll(&body("hq", &new_key, &m, "pc-1")).await.status,
            201
        );
        s.running.stop().await.unwrap();
    }
}

/// Pins: 20 concurrent rotations give 20 distinct versions and leave exactly one key active,
/// the last; 20 concurrent first enrollments of one machine id make one machine, each answered
/// 201 or 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_rotations_and_first_enrollments_converge() {
    for url in backends() {
        let (s, _) = with_site(url.as_deref()).await;
        let db = s.name();
        let rotations: Vec<_> = (0..20)
            .map(|_| {
                let d = s.db().clone();
                tokio::spawn(async move { d.rotate_key("hq").await.unwrap() })
            })
            .collect();
        let mut versions = Vec::new();
        let mut keys = Vec::new();
        for r in rotations {
            let k = r.await.unwrap();
            versions.push(k.version);
            keys.push(k);
        }
        versions.sort_unstable();
        versions.dedup();
        assert_eq!(versions.len(), 20, "{db}: {versions:?}");
        let active = s.db().active_key("hq").await.unwrap();
        assert_eq!(
            active.version, 21,
            "{db}: the last rotation's key is the active one"
        );
        let newest = keys.iter().find(|k| k.version == 21).unwrap().key.clone();
        let count =
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM enrollment_keys WHERE active = 1")
                .fetch_one(&s.db().pool)
                .await
                .unwrap();
        assert_eq!(count, 1, "{db}");

        let m = machine_id();
        let addr = s.running.addr;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let b = body("hq", &newest, &m, "pc-1").to_string();
                tokio::spawn(
                    async move { common::http(addr, "POST", "/v1/enroll", Some(b), &[]).await },
                )
            })
            .collect();
        let mut statuses = Vec::new();
        for t in tasks {
            statuses.push(t.await.unwrap().status);
        }
        assert!(
            statuses.iter().all(|s| *s == 201 || *s == 200),
            "{db}: {statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 201).count(),
            1,
            "{db}: {statuses:?}"
        );
        let machines = s
            .db()
            .machines(&warden_server::store::MachineQuery {
                limit: 100,
                ..Default::default()
            })
            .await
            .unwrap()
            .0;
        assert_eq!(machines.len(), 1, "{db}");
        s.running.stop().await.unwrap();
    }
}

/// Pins: failures from one (site, address) pair are charged and lock it out after 20 with a
/// Retry-After; other addresses and successes are never slowed (X-Forwarded-For from a trusted
/// proxy says which address).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_lock_out_one_address_and_successes_never_do() {
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        })
        .await;
        s.db().add_site("hq", "HQ", "Acme").await.unwrap();
        let key = s.db().rotate_key("hq").await.unwrap().key;
        let wrong = warden_server::keys::new_enrollment_key();
        let from = |addr: &'static str, b: serde_json::Value| {
            let s = &s;
            async move {
                s.request("POST", "/v1/enroll", Some(&b), &[("X-Forwarded-For", addr)])
                    .await
            }
        };
        // A whole office behind one address enrolls 30 machines: never throttled.
        for i in 0..30 {
            let r = from(
                "203.0.113.5",
                body("hq", &key, &machine_id(), &format!("pc-{i}")),
            )
            .await;
            assert_eq!(r.status, 201, "{}", r.raw);
        }
        for _ in 0..20 {
            let r = from("198.51.100.9", body("hq", &wrong, &machine_id(), "x")).await;
            assert_eq!(r.status, 401);
        }
        let locked = from("198.51.100.9", body("hq", &key, &machine_id(), "x")).await;
        assert_eq!(locked.status, 429, "{}", locked.raw);
        let retry: u64 = locked.header("retry-after").unwrap().parse().unwrap();
        assert!((800..=900).contains(&retry), "{retry}");
        // The office is untouched, and the lockout itself is in the trail.
        let ok = from("203.0.113.5", body("hq", &key, &machine_id(), "late")).await;
        assert_eq!(ok.status, 201);
        // Knocking on the lockout does not grow the trail: one event, when it began.
        for _ in 0..10 {
            let r = from("198.51.100.9", body("hq", &wrong, &machine_id(), "x")).await;
            assert_eq!(r.status, 429);
        }
        let limited = s
            .db()
            .events(Some("enroll.rate_limited"), None, 10)
            .await
            .unwrap();
        assert_eq!(limited.len(), 1, "{limited:?}");
        assert_eq!(limited[0].source, "198.51.100.9");
        s.running.stop().await.unwrap();
    }
}

/// Pins: failures from one address are also counted across site codes: rotating the site code
/// with every guess does not escape the lockout, while other addresses are untouched (item 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_site_codes_does_not_escape_the_address_lockout() {
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        })
        .await;
        let db = s.name();
        s.db().add_site("hq", "HQ", "Acme").await.unwrap();
        let key = s.db().rotate_key("hq").await.unwrap().key;
        let wrong = warden_server::keys::new_enrollment_key();
        let from = |addr: &'static str, b: serde_json::Value| {
            let s = &s;
            async move {
                s.request("POST", "/v1/enroll", Some(&b), &[("X-Forwarded-For", addr)])
                    .await
            }
        };
        // A new site code for every guess: no (site, address) pair ever gets near its 20.
        for i in 0..warden_server::limiter::ADDRESS_FAILURES {
            let site = if i % 5 == 0 {
                "hq".into()
            } else {
                format!("s{i}")
            };
            let r = from("198.51.100.7", body(&site, &wrong, &machine_id(), "x")).await;
            assert_eq!(r.status, 401, "{db}: guess {i}: {}", r.raw);
        }
        for site in ["hq", "a-site-never-tried"] {
            let r = from("198.51.100.7", body(site, &key, &machine_id(), "x")).await;
            assert_eq!(r.status, 429, "{db}: {site}: {}", r.raw);
            assert!(r.header("retry-after").is_some());
        }
        let other = from("203.0.113.5", body("hq", &key, &machine_id(), "pc")).await;
        assert_eq!(other.status, 201, "{db}: {}", other.raw);
        let limited = s
            .db()
            .events(Some("enroll.rate_limited"), None, 10)
            .await
            .unwrap();
        assert_eq!(limited.len(), 1, "{db}: {limited:?}");
        s.running.stop().await.unwrap();
    }
}

/// Pins: a flood of rejected enrollments from ever new addresses writes at most the budget's
/// rows, and the rest as one summary row with their number (item 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_rejections_is_summed_up_not_written_row_by_row() {
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            c.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
        })
        .await;
        let db = s.name();
        s.db().add_site("hq", "HQ", "Acme").await.unwrap();
        let wrong = warden_server::keys::new_enrollment_key();
        let flood = 100;
        for i in 0..flood {
            let addr = format!("10.0.{}.{}", i / 200, i % 200 + 1);
            let r = s
                .request(
                    "POST",
                    "/v1/enroll",
                    Some(&body("hq", &wrong, &machine_id(), "x")),
                    &[("X-Forwarded-For", &addr)],
                )
                .await;
            assert_eq!(r.status, 401, "{db}: {}", r.raw);
        }
        let store = s.db().clone();
        s.running.stop().await.unwrap();
        let rows = store
            .events(Some("enroll.rejected"), None, 1000)
            .await
            .unwrap();
        let budget = warden_server::budget::PER_WINDOW as usize;
        assert_eq!(rows.len(), budget, "{db}: one row per rejection");
        let summary = store
            .events(Some(warden_server::budget::SUPPRESSED), None, 10)
            .await
            .unwrap();
        assert_eq!(summary.len(), 1, "{db}: {summary:?}");
        assert_eq!(summary[0].target, "enroll.rejected");
        assert!(
            summary[0]
                .detail
                .starts_with(&format!("{} more enroll.rejected", flood - budget)),
            "{db}: {}",
            summary[0].detail
        );
    }
}

/// Pins: logins have Argon2id slots of their own: while an enrollment flood keeps the
/// enrollment pool full (its callers see 503), every login still gets its answer (item 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrollment_flood_does_not_take_the_login_slots() {
    let s = TestServer::start_with(None, |c| {
        c.verify_slots = 1;
        c.verify_queue = 1;
    })
    .await;
    s.db().add_site("hq", "HQ", "Acme").await.unwrap();
    let key = s.db().rotate_key("hq").await.unwrap().key;
    let password = "correct horse battery";
    s.db()
        .add_operator("root", warden_server::auth::Role::Admin, password)
        .await
        .unwrap();
    let addr = s.running.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let busy = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let flood: Vec<_> = (0..16)
        .map(|_| {
            let (stop, busy, key) = (stop.clone(), busy.clone(), key.clone());
            tokio::spawn(async move {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let b = body("hq", &key, &machine_id(), "pc").to_string();
                    let r = common::http(addr, "POST", "/v1/enroll", Some(b), &[]).await;
                    if r.status == 503 {
                        busy.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the flood fill the pool first.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while busy.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the flood never filled the pool"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for _ in 0..8 {
        let r = common::http(
            addr,
            "POST",
            "/v1/login",
            Some(serde_json::json!({"name": "root", "password": password}).to_string()),
            &[],
        )
        .await;
        assert_eq!(r.status, 200, "{}", r.raw);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in flood {
        t.await.unwrap();
    }
    assert!(busy.load(std::sync::atomic::Ordering::Relaxed) > 0);
    s.running.stop().await.unwrap();
}

/// Pins: with every verification slot busy and the queue full, enrollments are turned away at
/// once with 503 and Retry-After, and the server takes them again once the flood is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_verification_pool_answers_503_and_recovers() {
    for url in backends() {
        let s = TestServer::start_with(url.as_deref(), |c| {
            c.verify_slots = 1;
            c.verify_queue = 1;
        })
        .await;
        s.db().add_site("hq", "HQ", "Acme").await.unwrap();
        let key = s.db().rotate_key("hq").await.unwrap().key;
        let addr = s.running.addr;
        let tasks: Vec<_> = (0..24)
            .map(|i| {
                let b = body("hq", &key, &machine_id(), &format!("pc-{i}")).to_string();
                tokio::spawn(
                    async move { common::http(addr, "POST", "/v1/enroll", Some(b), &[]).await },
                )
            })
            .collect();
        let mut busy = 0;
        for t in tasks {
            let r = t.await.unwrap();
            match r.status {
                201 => {}
                503 => {
                    busy += 1;
                    assert_eq!(r.header("retry-after"), Some("1"));
                    assert_eq!(r.kind(), "unavailable");
                }
                other => panic!("{other}: {}", r.raw),
            }
        }
        assert!(busy > 0, "the pool never filled");
        let after = s.enroll(&body("hq", &key, &machine_id(), "calm")).await;
        assert_eq!(after.status, 201, "{}", after.raw);
        s.running.stop().await.unwrap();
    }
}

/// Pins: after enrolling, rotating and logging in, no enrollment key, machine key, login token,
/// API token or password is anywhere in the SQLite database files.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_key_material_is_at_rest() {
    let (s, key) = with_site(None).await;
    let rotated = s.db().rotate_key("hq").await.unwrap().key;
    let mut issued = vec![key, rotated.clone()];
    for i in 0..5 {
        let r = s
            .enroll(&body("hq", &rotated, &machine_id(), &format!("pc-{i}")))
            .await;
        issued.push(r.json["machine_key"].as_str().unwrap().to_owned());
    }
    let data = s.dir.path().join("data");
    s.running.stop().await.unwrap();
    let mut files = Vec::new();
    for entry in std::fs::read_dir(&data).unwrap() {
        files.push(std::fs::read(entry.unwrap().path()).unwrap());
    }
    assert!(!files.is_empty());
    for secret in &issued {
        let hex_part = &secret[4..];
        for f in &files {
            let hay = String::from_utf8_lossy(f);
            assert!(!hay.contains(hex_part), "a secret is stored in plaintext");
        }
    }
}

/// Pins: a request body over 64 KiB is refused (413) before it is read as JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_64_kib_are_refused() {
    let s = TestServer::start(None).await;
    let mut b = body("hq", "wek_x", &machine_id(), "pc");
    b["labels"]["tags"] = serde_json::json!(["x".repeat(70 * 1024)]);
    let r = s.enroll(&b).await;
    assert_eq!(r.status, 413, "{}", &r.raw[..r.raw.len().min(200)]);
    s.running.stop().await.unwrap();
}

/// Pins: malformed identifiers (machine id, site code, hostname), an overlong enrollment key and
/// bad labels are each answered 400 `bad_request` before any key is verified, now that the
/// request's fields are the wire crate's typed ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_fields_are_bad_requests() {
    let (s, key) = with_site(None).await;
    let m = machine_id();
    let long_key = format!("wek_{}", "0".repeat(200));
    let mut many_tags = body("hq", &key, &m, "pc-1");
    many_tags["labels"]["tags"] = serde_json::json!(vec!["t"; 17]);
    let mut control = body("hq", &key, &m, "pc-1");
    control["labels"]["company"] = serde_json::json!("acme\u{7}");
    for (what, b) in [
        ("machine id", body("hq", &key, "muid_XYZ", "pc-1")),
        (
            "upper-case machine id",
            body("hq", &key, &m.to_uppercase(), "pc-1"),
        ),
        ("site code", body("-hq", &key, &m, "pc-1")),
        ("hostname", body("hq", &key, &m, "pc 1")),
        ("enrollment key", body("hq", &long_key, &m, "pc-1")),
        ("tags", many_tags),
        ("label", control),
    ] {
        let r = s.enroll(&b).await;
        assert_eq!(r.status, 400, "{what}: {}", r.raw);
        assert_eq!(r.kind(), "bad_request", "{what}: {}", r.raw);
        assert!(
            !r.raw.contains(&key[4..]),
            "{what}: the answer echoes the key"
        );
    }
    assert_eq!(s.running.state.verifier.runs(), 0);
    s.running.stop().await.unwrap();
}
