//! Machine keys across the real fleet (the `warden-server` binary over TLS on SQLite, and on
//! PostgreSQL when `WARDEN_TEST_DATABASE_URL` is set; a real `wardend` and `warden-agent` per
//! host, each agent its own throwaway user): a rotation survives `kill -9` of the agent at each
//! step, a replayed retired key quarantines only its machine, and no key shows up in any log,
//! file or event. These tests need root (real users); they skip with a reason otherwise, and
//! fail instead when WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use common::fleet::{
    FleetHost, PATIENCE, QUICK, Server, files_under, holds, linked_machine_id, on_each_backend,
    product_uuid,
};

/// Asks for a key 300 ms after the first link of each run.
const ROTATE: &str = "rotate_after_ms = 300\n";

/// Pins: killing the agent with SIGKILL when a rotation's new key was received, stored, or
/// acknowledged never locks the host out and raises no false alert: restarted, it links, its
/// machine stays active, no `machine.key_replayed` event is recorded, and the rotation
/// completes (the key version goes up, in the server's list and in the key store).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill_9_at_each_step_of_a_rotation_locks_no_host_out() {
    if !warden_testkit::root_or_skip("kill_9_at_each_step_of_a_rotation_locks_no_host_out") {
        return;
    }
    on_each_backend(|db| async move {
        let (server, ek) = Server::start(db, QUICK).await;
        let steps = [
            "rotation.received",
            "rotation.stored",
            "rotation.acknowledged",
        ];
        let mut hosts = Vec::new();
        for step in steps {
            let name = format!("pc-{}", step.trim_start_matches("rotation."));
            hosts.push(FleetHost::new(&server, &ek, &product_uuid(), &name).await);
        }
        let mut paused: Vec<_> = hosts
            .iter()
            .zip(steps)
            .map(|(h, step)| h.start(&format!("{ROTATE}pause_at = \"{step}\"\n")))
            .collect();
        for ((h, agent), step) in hosts.iter().zip(&mut paused).zip(steps) {
            agent.wait_log(&format!("paused at {step}"), PATIENCE).await;
            assert!(
                !agent
                    .lines("TEST OVERRIDE in [test_overrides]: pause_at")
                    .is_empty()
            );
            let stored = h.stored_version();
            match step {
                "rotation.received" => assert_eq!(stored, Some(1), "{step}"),
                _ => assert_eq!(stored, Some(2), "{step}"),
            }
            agent.child.kill().unwrap();
            agent.child.wait().unwrap();
            let m = server.machine(&h.hostname).unwrap();
            assert_eq!(m["state"], "active", "{step}: {m}");
        }
        let restarted: Vec<_> = hosts.iter().map(|h| h.start(ROTATE)).collect();
        for ((h, agent), step) in hosts.iter().zip(&restarted).zip(steps) {
            agent.wait_log("link: up", PATIENCE).await;
            let m = server
                .wait_machine(&h.hostname, "rotated and connected", |m| {
                    m["connected"] == true && m["machine_key_version"].as_i64() >= Some(2)
                })
                .await;
            assert_eq!(m["state"], "active", "{step}: {m}");
            let v = h.stored_version().unwrap();
            assert!(v >= 2, "{step}: the key store holds v{v}");
            let refused = agent.lines("does not accept this host's machine key");
            assert!(refused.is_empty(), "{step}: locked out:\n{}", agent.logs());
            assert!(
                agent.lines("QUARANTINED").is_empty(),
                "{step}:\n{}",
                agent.logs()
            );
            eprintln!(
                "{}: killed at {step}: linked again, key v{} in use",
                server.name(),
                m["machine_key_version"]
            );
        }
        assert_eq!(
            server.events("machine.key_replayed"),
            Vec::<serde_json::Value>::new()
        );
        for h in &hosts {
            assert_eq!(server.machine(&h.hostname).unwrap()["state"], "active");
        }
    })
    .await;
}

/// Pins: a retired machine key presented again (host A's pre-rotation key file copied onto
/// another agent) records `machine.key_replayed` and quarantines A only: A's link closes and its
/// agent says an admin must clear it, host B's link is untouched; `machines clear` lets A link
/// again with its current key.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replayed_retired_key_quarantines_its_machine_only() {
    if !warden_testkit::root_or_skip("a_replayed_retired_key_quarantines_its_machine_only") {
        return;
    }
    on_each_backend(|db| async move {
        let (server, ek) = Server::start(db, QUICK).await;
        let uuid = product_uuid();
        let a = FleetHost::new(&server, &ek, &uuid, "pc-a").await;
        let b = FleetHost::new(&server, &ek, &product_uuid(), "pc-b").await;
        let mut first = a.start("");
        let twin = b.start("");
        first.wait_log("link: up", PATIENCE).await;
        twin.wait_log("link: up", PATIENCE).await;
        let id = linked_machine_id(&first).unwrap();
        let old = std::fs::read_to_string(a.host.key_file()).unwrap();
        first.stop().await.unwrap();
        let agent = a.start(ROTATE);
        agent
            .wait_log("link: linking again with the new key", PATIENCE)
            .await;
        let up = agent.wait_lines("link: up", 2, PATIENCE).await;
        assert!(up[1].contains("key_version=v2"), "{up:?}");
        let current = a.host.stored_key().unwrap();

        // A copy of A from before the rotation: the old key file on another agent.
        let copy = FleetHost::new(&server, &ek, &uuid, "pc-a").await;
        std::fs::write(copy.host.key_file(), &old).unwrap();
        copy.host.give(&copy.host.key_file(), 0o600);
        let replay = copy.start("");
        replay
            .wait_log("does not accept this host's machine key", PATIENCE)
            .await;
        // After its 401s the copy enrolls with A's identity and the site's key: refused, no key.
        let again = replay
            .wait_log("enrolling again did not issue a key", PATIENCE)
            .await;
        assert!(again.contains("403"), "{again}");
        let old_key: serde_json::Value = serde_json::from_str(&old).unwrap();
        assert_eq!(
            copy.host.stored_key().unwrap(),
            old_key["machine_key"].as_str().unwrap(),
            "the copy got no new key"
        );
        drop(replay);
        assert!(!server.events("enroll.quarantined").is_empty());

        let events = server.events("machine.key_replayed");
        // One alert per replay (the copy presented the key once per refusal).
        assert!(!events.is_empty());
        for e in &events {
            assert!(e["target"].as_str().unwrap().contains(&id), "{e}");
        }
        server
            .wait_machine("pc-a", "quarantined", |m| m["state"] == "quarantined")
            .await;
        let bye = agent.wait_log("the server said goodbye", PATIENCE).await;
        assert!(bye.contains("Quarantined"), "{bye}");
        let told = agent.wait_log("QUARANTINED", PATIENCE).await;
        assert!(told.contains("clear"), "{told}");
        assert_eq!(a.host.stored_key().unwrap(), current, "A keeps its key");

        // The twin never noticed.
        assert_eq!(twin.lines("link: up").len(), 1, "{}", twin.logs());
        assert!(twin.lines("goodbye").is_empty(), "{}", twin.logs());
        let m = server.machine("pc-b").unwrap();
        assert_eq!(
            (&m["state"], &m["connected"]),
            (&"active".into(), &true.into())
        );

        let out = server.admin(&["machines", "clear", &id]);
        assert!(out.to_string().contains("cleared"), "{out}");
        agent.wait_lines("link: up", 3, PATIENCE).await;
        let m = server
            .wait_machine("pc-a", "connected after clear", |m| m["connected"] == true)
            .await;
        assert_eq!(
            (&m["state"], &m["machine_key_version"]),
            (&"active".into(), &2.into())
        );
        assert_eq!(
            server.events("machine.key_replayed").len(),
            events.len(),
            "A's own return is no alert"
        );
    })
    .await;
}

/// Pins: no key (the site's enrollment key, a machine key before and after rotation, the
/// pending key while it was pending) appears in the server's, wardend's or the agents' logs (at
/// debug), in any file but the agent's key store (the state directories, the hosts' and
/// wardend's directories, the server's data directory with its SQLite files), or in any event.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_key_in_any_log_file_or_event() {
    if !warden_testkit::root_or_skip("no_key_in_any_log_file_or_event") {
        return;
    }
    on_each_backend(|db| async move {
        let (mut server, ek) = Server::start(db, QUICK).await;
        let x = FleetHost::new(&server, &ek, &product_uuid(), "pc-x").await;
        let y = FleetHost::new(&server, &ek, &product_uuid(), "pc-y").await;
        let mut agents = Vec::new();
        let mut first = x
            .host
            .start_logging(&["--config", x.configure("").to_str().unwrap()], "debug");
        let other = y
            .host
            .start_logging(&["--config", y.configure("").to_str().unwrap()], "debug");
        first.wait_log("link: up", PATIENCE).await;
        other.wait_log("link: up", PATIENCE).await;
        let old = x.host.stored_key().unwrap();
        first.stop().await.unwrap();
        agents.push(first);
        let rotating = x.host.start_logging(
            &["--config", x.configure(ROTATE).to_str().unwrap()],
            "debug",
        );
        rotating.wait_lines("link: up", 2, PATIENCE).await;
        let new = x.host.stored_key().unwrap();
        assert_ne!(old, new);
        server
            .wait_machine("pc-x", "rotated", |m| m["machine_key_version"] == 2)
            .await;
        let keys = [ek.clone(), old, new, y.host.stored_key().unwrap()];
        agents.push(rotating);
        agents.push(other);
        for a in &mut agents[1..] {
            a.stop().await.unwrap();
        }
        server.stop().await;

        let mut logs = vec![("server".to_owned(), server.log())];
        for (i, a) in agents.iter().enumerate() {
            logs.push((format!("agent {i}"), a.logs()));
        }
        for h in [&x, &y] {
            let log = h.wardend.log();
            // wardend logs to journald where there is one; here its stderr must be the log.
            if !std::path::Path::new("/run/systemd/journal/socket").exists() {
                assert!(log.contains("machine identity"), "{log}");
            }
            logs.push((format!("wardend of {}", h.hostname), log));
        }
        logs.push((
            "events".to_owned(),
            server.admin(&["events", "-n", "1000"]).to_string(),
        ));
        assert!(
            logs[0].1.contains("link up") && logs.last().unwrap().1.contains("machine.key_rotated")
        );
        // The scan finds a key where one is.
        let store = std::fs::read(x.host.key_file()).unwrap();
        assert!(holds(&store, &keys[2]) && !holds(&store, &keys[1]));
        let rows = server.dump_rows().await;
        if server.url.is_some() {
            assert!(rows.contains("pc-x"), "the rows were not read: {rows}");
        }
        logs.push(("database rows".to_owned(), rows));
        for (what, text) in &logs {
            for k in &keys {
                assert!(
                    !holds(text.as_bytes(), k),
                    "a key is in the {what}:\n{text}"
                );
            }
        }
        let mut files = files_under(&server.dir.path().join("data"));
        assert!(server.url.is_some() || !files.is_empty());
        for h in [&x, &y] {
            files.extend(files_under(h.host.dir.path()));
            files.extend(files_under(h.wardend.dir.path()));
        }
        let mut scanned = 0;
        for f in files {
            let name = f.file_name().unwrap().to_string_lossy().into_owned();
            if name == "machine.key" || name == "warden-agent" {
                // The key store itself; the agent binary's copy.
                continue;
            }
            let bytes = std::fs::read(&f).unwrap();
            for k in &keys {
                if name == "enrollment.key" && *k == ek {
                    // The enrollment key's own file, as the operator wrote it.
                    continue;
                }
                assert!(!holds(&bytes, k), "a key is in {}", f.display());
            }
            scanned += 1;
        }
        eprintln!(
            "{}: {} logs and {scanned} files hold no key",
            server.name(),
            logs.len()
        );
    })
    .await;
}
