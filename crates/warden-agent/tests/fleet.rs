//! The fleet end to end with real processes: the `warden-server` binary over TLS (on SQLite, and
//! on PostgreSQL when `WARDEN_TEST_DATABASE_URL` is set), one real `wardend` per host reading its
//! own fixture hardware files, and one real `warden-agent` per host running as its own throwaway
//! user: enrollment (new, re-install, clone), a server restart, silent peers on either side, and
//! revocation. Key rotation and key hygiene are in `fleet_keys.rs`. These tests need root (real
//! users); they skip with a reason otherwise, and fail instead when WARDEN_REQUIRE_ROOT_TESTS=1.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::field;
use common::fleet::{
    FleetHost, PATIENCE, QUICK, Server, linked_machine_id, on_each_backend, product_uuid,
};

/// Pins: a new host enrolls with wardend's machine id and links (connected, the agent's version,
/// key v1); a re-install (state wiped, same hardware) gets the same machine back (200 reuse) and
/// links again; a clone (same hardware, another hostname) is pending and gets no link until an
/// operator approves it, then links.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn enrollment_new_reinstall_and_clone_end_to_end() {
    if !warden_testkit::root_or_skip("enrollment_new_reinstall_and_clone_end_to_end") {
        return;
    }
    on_each_backend(|db| async move {
        let (server, ek) = Server::start(db, QUICK).await;
        let uuid = product_uuid();
        let a = FleetHost::new(&server, &ek, &uuid, "pc-a").await;
        let mut agent = a.start("");
        agent.wait_log("link: up", PATIENCE).await;
        let enrolled = agent.wait_log("enrollment: enrolled", PATIENCE).await;
        assert!(enrolled.contains("disposition=New"), "{enrolled}");
        let id = linked_machine_id(&agent).unwrap();
        let m = server
            .wait_machine("pc-a", "connected", |m| m["connected"] == true)
            .await;
        assert_eq!(m["machine_id"], id.as_str());
        assert_eq!(m["state"], "active");
        assert_eq!(m["agent_version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(m["machine_key_version"], 1);
        assert_eq!(a.stored_version(), Some(1));

        // Re-install: the agent's state is gone, the hardware is the same.
        agent.stop().await.unwrap();
        a.wipe_state();
        let agent = a.start("");
        let again = agent.wait_log("enrollment: enrolled", PATIENCE).await;
        assert!(again.contains("disposition=Reuse"), "{again}");
        agent.wait_log("link: up", PATIENCE).await;
        assert_eq!(linked_machine_id(&agent).unwrap(), id);
        server
            .wait_machine("pc-a", "connected again", |m| m["connected"] == true)
            .await;
        assert_eq!(
            server.machines().len(),
            1,
            "a re-install is the same machine"
        );

        // A clone: the same hardware under another hostname.
        let c = FleetHost::new(&server, &ek, &uuid, "pc-a-clone").await;
        let clone = c.start("");
        clone.wait_lines("enrollment: pending", 2, PATIENCE).await;
        assert!(clone.lines("link: up").is_empty(), "{}", clone.logs());
        assert!(
            c.host.stored_key().is_none(),
            "a pending clone holds no key"
        );
        let out = server.admin(&["machines", "approve", &id]);
        assert!(out.to_string().contains("approved"), "{out}");
        clone.wait_log("link: up", PATIENCE).await;
        assert_eq!(linked_machine_id(&clone).unwrap(), id);
        eprintln!(
            "{}: enrolled, re-installed and approved a clone of {id}",
            server.name()
        );
    })
    .await;
}

/// Pins: after a graceful server restart every agent links again, each told a different time
/// to come back within the restart spread (no stampede); prints the measured reconnect times.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_restart_brings_every_agent_back_spread_out() {
    if !warden_testkit::root_or_skip("a_server_restart_brings_every_agent_back_spread_out") {
        return;
    }
    on_each_backend(|db| async move {
        const N: usize = 6;
        const SPREAD_MS: u64 = 3000;
        let (mut server, ek) = Server::start(db, QUICK).await;
        let mut hosts = Vec::new();
        for i in 0..N {
            hosts.push(FleetHost::new(&server, &ek, &product_uuid(), &format!("pc-{i}")).await);
        }
        let agents: Vec<_> = hosts.iter().map(|h| h.start("")).collect();
        for a in &agents {
            a.wait_log("link: up", PATIENCE).await;
        }
        let stopped = Instant::now();
        let since = || stopped.elapsed().as_millis() as u64;
        server.terminate();
        // Per agent, in ms since the SIGTERM: goodbye received, linked again.
        let mut bye_at = [None; N];
        let mut back_at = [None; N];
        let mut restarted = None;
        let end = Instant::now() + PATIENCE;
        while back_at.iter().any(Option::is_none) {
            assert!(
                Instant::now() < end,
                "not every agent came back: {back_at:?}"
            );
            if restarted.is_none() && server.exited() {
                server.run().await;
                restarted = Some(since());
            }
            for (i, a) in agents.iter().enumerate() {
                if bye_at[i].is_none() && !a.lines("the server said goodbye").is_empty() {
                    bye_at[i] = Some(since());
                }
                if back_at[i].is_none() && a.lines("link: up").len() >= 2 {
                    back_at[i] = Some(since());
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut told = Vec::new();
        eprintln!(
            "{}: server restart ({} ms from SIGTERM to serving again); per agent, since the \
             SIGTERM:",
            server.name(),
            restarted.unwrap()
        );
        for (i, a) in agents.iter().enumerate() {
            let bye = a.wait_log("the server said goodbye", PATIENCE).await;
            assert!(bye.contains("ServerStopping"), "{bye}");
            let after = field(&bye, "reconnect_after_ms").expect("a return time");
            assert!(
                after <= SPREAD_MS,
                "told {after} ms, past the spread: {bye}"
            );
            told.push(after);
            eprintln!(
                "  pc-{i}: goodbye at {:>4} ms, told to come back after {after:>4} ms, linked \
                 again at {:>4} ms",
                bye_at[i].unwrap(),
                back_at[i].unwrap()
            );
        }
        let mut distinct = told.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert!(
            distinct.len() >= N - 1,
            "the agents were told the same times: {told:?}"
        );
        assert!(
            distinct.last().unwrap() - distinct.first().unwrap() >= SPREAD_MS / 10,
            "the return times are not spread out: {told:?}"
        );
        for h in &hosts {
            server
                .wait_machine(&h.hostname, "connected after the restart", |m| {
                    m["connected"] == true
                })
                .await;
        }
    })
    .await;
}

/// Pins: a frozen agent (SIGSTOP) is closed by the server within its dead-after interval and
/// shown disconnected once the batch is written, and links again after SIGCONT; a frozen server
/// is closed by the agent within the dead-after its Welcome gave, and the agent links again
/// after SIGCONT.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_peer_is_detected_on_each_side() {
    if !warden_testkit::root_or_skip("a_silent_peer_is_detected_on_each_side") {
        return;
    }
    on_each_backend(|db| async move {
        const DEAD_AFTER: Duration = Duration::from_millis(1500);
        // The wheel's tick and the scheduler: room, not a performance bound.
        const SLACK: Duration = Duration::from_millis(1500);
        let (server, ek) = Server::start(db, QUICK).await;
        let h = FleetHost::new(&server, &ek, &product_uuid(), "pc-quiet").await;
        let agent = h.start("");
        agent.wait_log("link: up", PATIENCE).await;
        let id = linked_machine_id(&agent).unwrap();
        server
            .wait_machine("pc-quiet", "connected", |m| m["connected"] == true)
            .await;

        // The agent goes silent.
        let pid = agent.child.id().to_string();
        let kill = |sig: &str| {
            assert!(
                std::process::Command::new("kill")
                    .args([sig, &pid])
                    .status()
                    .unwrap()
                    .success()
            );
        };
        let closed_before = server.log().matches("link silent too long").count();
        kill("-STOP");
        let frozen = Instant::now();
        let seen = common::eventually(DEAD_AFTER + SLACK + Duration::from_secs(2), || {
            server
                .log()
                .lines()
                .filter(|l| l.contains("link silent too long") && l.contains(&id))
                .count()
                > closed_before
        })
        .await;
        let took = frozen.elapsed();
        assert!(
            seen,
            "the server did not close the silent link:\n{}",
            server.log()
        );
        eprintln!(
            "{}: the server closed a frozen agent's link after {} ms (dead after {} ms)",
            server.name(),
            took.as_millis(),
            DEAD_AFTER.as_millis()
        );
        assert!(took <= DEAD_AFTER + SLACK, "closed after {took:?}");
        server
            .wait_machine("pc-quiet", "shown disconnected", |m| {
                m["connected"] == false
            })
            .await;
        kill("-CONT");
        agent.wait_lines("link: up", 2, PATIENCE).await;
        server
            .wait_machine("pc-quiet", "connected again", |m| m["connected"] == true)
            .await;

        // The server goes silent.
        let closes = agent.lines("nothing from the server").len();
        server.freeze();
        let frozen = Instant::now();
        let noticed = common::eventually(DEAD_AFTER + SLACK + Duration::from_secs(2), || {
            agent.lines("nothing from the server").len() > closes
        })
        .await;
        let took = frozen.elapsed();
        server.thaw();
        assert!(noticed, "the agent did not notice:\n{}", agent.logs());
        eprintln!(
            "{}: the agent closed a frozen server's link after {} ms (dead after {} ms)",
            server.name(),
            took.as_millis(),
            DEAD_AFTER.as_millis()
        );
        assert!(took <= DEAD_AFTER + SLACK, "noticed after {took:?}");
        agent.wait_lines("link: up", 3, PATIENCE).await;
        server
            .wait_machine("pc-quiet", "connected after the thaw", |m| {
                m["connected"] == true
            })
            .await;
    })
    .await;
}

/// Pins: `warden-server machines remove|ban|quarantine ID`, each run as a separate process on
/// the same database, closes that machine's live link within 2 s of the command, with the
/// goodbye that says why; a bystander's link is untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_machines_link_closes_within_two_seconds() {
    if !warden_testkit::root_or_skip("a_revoked_machines_link_closes_within_two_seconds") {
        return;
    }
    on_each_backend(|db| async move {
        let (server, ek) = Server::start(db, QUICK).await;
        let commands = [
            ("remove", "removed", "Revoked"),
            ("ban", "banned", "Banned"),
            ("quarantine", "quarantined", "Quarantined"),
        ];
        let mut hosts = Vec::new();
        for (command, ..) in commands {
            let name = format!("pc-{command}");
            hosts.push(FleetHost::new(&server, &ek, &product_uuid(), &name).await);
        }
        let other = FleetHost::new(&server, &ek, &product_uuid(), "pc-stays").await;
        let agents: Vec<_> = hosts.iter().map(|h| h.start("")).collect();
        let bystander = other.start("");
        bystander.wait_log("link: up", PATIENCE).await;
        for (agent, (command, said, reason)) in agents.iter().zip(commands) {
            agent.wait_log("link: up", PATIENCE).await;
            let id = linked_machine_id(agent).unwrap();
            let started = Instant::now();
            let out = server.admin(&["machines", command, &id]);
            let done = Instant::now();
            assert!(out.to_string().contains(said), "{out}");
            let closed = common::eventually(Duration::from_secs(5), || {
                !agent.lines("the server said goodbye").is_empty()
            })
            .await;
            let took = done.elapsed();
            assert!(
                closed,
                "{command}: the link was not closed:\n{}",
                agent.logs()
            );
            eprintln!(
                "{}: `machines {command}`: its agent was told goodbye {} ms after the command \
                 ended ({} ms after it started)",
                server.name(),
                took.as_millis(),
                started.elapsed().as_millis()
            );
            assert!(
                took <= Duration::from_secs(2),
                "{command}: closed after {took:?}"
            );
            let bye = agent.lines("the server said goodbye").remove(0);
            assert!(
                bye.contains(&format!("reason={reason}")),
                "{command}: {bye}"
            );
        }
        assert_eq!(bystander.lines("link: up").len(), 1, "{}", bystander.logs());
        assert!(
            bystander.lines("goodbye").is_empty(),
            "{}",
            bystander.logs()
        );
    })
    .await;
}
