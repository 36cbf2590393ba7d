//! The agent link: each enrolled host's `warden-agent` holds one outbound WebSocket to the
//! server (`GET /v1/agent/link`, protocol in `warden_fleet_proto::link`).
//!
//! The [`Hub`] owns this process's live links ([`registry`]), the one timer wheel that drives
//! every link's heartbeats, liveness and rotation ([`wheel`]), upgrade admission
//! ([`admission`]), key rotation ([`rotation`]) and the background loop ([`watch`]) that polls
//! revocations (closing a revoked machine's link within a second) and writes `last_seen` in
//! batches. Each link's own task ([`session`]) only moves messages. The upgrade itself (the key
//! checked before any WebSocket state exists) is the HTTP route in `http/link.rs`.
//!
//! Dispatch reports from agents are stored by [`dispatch`]; the fan-out itself is
//! `crate::dispatch`'s engine, which this module only rings.
//!
//! Nothing here ever logs or stores a key in plaintext.

pub mod admission;
pub mod dispatch;
pub mod registry;
pub mod rotation;
pub mod session;
pub mod watch;
pub mod wheel;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use warden_fleet_proto::link::{self, GoodbyeReason};

use crate::auth::SigningKey;
use crate::store::links::LinkUp;
use crate::store::{Db, now_ms};
use admission::Admission;
use registry::{Link, Registry};
use wheel::Wheel;

/// How the link behaves; the defaults are the protocol's, tests shorten them.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// How often the server sends a heartbeat (± 10%), and tells agents to.
    pub heartbeat: Duration,
    /// A link silent this long is closed.
    pub dead_after: Duration,
    /// Links this process holds at most.
    pub max_links: usize,
    /// Link upgrades admitted per second (a token bucket of as many).
    pub upgrades_per_second: u32,
    /// How often each machine's key is rotated (± 20%).
    pub rotation_every: Duration,
    /// Rotations started per minute, at most, in thousandths of the links up (at least 1).
    pub rotations_per_minute_permille: u32,
    /// How often `last_seen` is written, in one batch.
    pub seen_flush: Duration,
    /// How often revocations are polled.
    pub poll: Duration,
    /// A graceful stop spreads the agents' returns over this long.
    pub restart_spread: Duration,
    /// How long a stop waits for links to say goodbye.
    pub goodbye_timeout: Duration,
    /// The WebSocket read buffer of each link, allocated for the link's life. Small on purpose:
    /// an idle link reads a heartbeat now and then, and rustls under it keeps a 4 KiB buffer
    /// of its own; larger messages are gathered across reads.
    pub read_buffer: usize,
    /// A message that cannot be written within this is a dead peer.
    pub send_timeout: Duration,
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig {
            heartbeat: link::HEARTBEAT,
            dead_after: link::DEAD_AFTER,
            max_links: 100_000,
            upgrades_per_second: 500,
            rotation_every: rotation::EVERY,
            rotations_per_minute_permille: 10,
            seen_flush: Duration::from_secs(30),
            poll: Duration::from_millis(500),
            restart_spread: link::RESTART_SPREAD,
            goodbye_timeout: Duration::from_secs(5),
            read_buffer: 2048,
            send_timeout: Duration::from_secs(10),
        }
    }
}

/// Counters operators and benchmarks read.
#[derive(Debug, Default)]
pub struct LinkStats {
    pub upgrades: AtomicU64,
    pub refused_rate: AtomicU64,
    pub refused_full: AtomicU64,
    pub refused_duplicate: AtomicU64,
    pub unknown_messages: AtomicU64,
    pub closed_silent: AtomicU64,
    pub rotations_offered: AtomicU64,
}

/// This process's side of every link.
#[derive(Debug)]
pub struct Hub {
    pub config: LinkConfig,
    pub registry: Registry,
    pub wheel: Wheel,
    pub admission: Admission,
    pub stats: LinkStats,
    pub(crate) db: Db,
    /// Derives each next machine key (see [`rotation`]).
    pub(crate) secret: SigningKey,
    /// Hub milliseconds count from here (monotonic).
    epoch: Instant,
    next_conn: AtomicU64,
    /// Links that came up since the last batch: (machine row, unix ms, agent version, the
    /// rotation due time for a machine without one).
    ups: Mutex<Vec<LinkUp>>,
    /// Machines whose link went down since the last batch.
    down: Mutex<Vec<i64>>,
    /// Rotations started in the current minute: (minute began, count).
    rotations: Mutex<(Instant, u32)>,
    /// Rung when a dispatch's part moved or a machine linked: the dispatch engine looks now.
    pub dispatch_bell: tokio::sync::Notify,
    /// Machines that linked since the dispatch engine last looked (it sends what they are
    /// owed).
    relinked: Mutex<Vec<i64>>,
}

/// Uniform in [0, 1), from the kernel's random source.
pub fn unit() -> f64 {
    let mut b = [0u8; 8];
    // Without randomness, no jitter: every delay is its midpoint, which is still correct.
    if getrandom::fill(&mut b).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

/// `d` ± `percent`%.
pub fn jitter(d: Duration, percent: u32) -> Duration {
    let p = f64::from(percent) / 100.0;
    d.mul_f64(1.0 - p + 2.0 * p * unit())
}

impl Hub {
    pub fn new(config: LinkConfig, db: Db, secret: SigningKey) -> Arc<Hub> {
        let tick = (config.heartbeat / 20).clamp(Duration::from_millis(5), Duration::from_secs(1));
        let horizon = config.dead_after.max(config.heartbeat.mul_f64(1.2));
        Arc::new(Hub {
            registry: Registry::new(config.max_links),
            wheel: Wheel::new(tick, horizon),
            admission: Admission::new(config.upgrades_per_second),
            stats: LinkStats::default(),
            db,
            secret,
            epoch: Instant::now(),
            next_conn: AtomicU64::new(1),
            ups: Mutex::new(Vec::new()),
            down: Mutex::new(Vec::new()),
            rotations: Mutex::new((Instant::now(), 0)),
            dispatch_bell: tokio::sync::Notify::new(),
            relinked: Mutex::new(Vec::new()),
            config,
        })
    }

    /// Milliseconds since the hub began.
    pub fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Unix milliseconds for a hub time.
    pub fn unix_ms(&self, hub_ms: u64) -> i64 {
        let ago = self.now().saturating_sub(hub_ms);
        now_ms() - i64::try_from(ago).unwrap_or(0)
    }

    pub fn next_conn(&self) -> u64 {
        self.next_conn.fetch_add(1, Ordering::Relaxed)
    }

    /// When a key promoted now is next due, in Unix milliseconds.
    pub fn next_rotation_ms(&self) -> i64 {
        let d = rotation::jittered(self.config.rotation_every, unit());
        now_ms().saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
    }

    /// Starts the timing of a link just registered.
    pub fn schedule_new(&self, link: &Arc<Link>) {
        let first = jitter(self.config.heartbeat, link::HEARTBEAT_JITTER_PERCENT);
        link.set_next_heartbeat(self.now() + u64::try_from(first.as_millis()).unwrap_or(0));
        self.wheel.schedule(link, first.min(self.config.dead_after));
    }

    /// Notes a link up, for the next batch.
    pub fn up(&self, link: &Link, first_rotation_ms: i64) {
        self.ups
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LinkUp {
                machine_row: link.machine_row,
                linked_ms: link.linked_ms,
                agent_version: link.agent_version.clone(),
                first_rotation_ms,
            });
    }

    /// A machine linked (again): the dispatch engine sends it what it is owed.
    pub fn relinked(&self, machine_row: i64) {
        self.relinked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(machine_row);
        self.dispatch_bell.notify_one();
    }

    /// Machines that linked since the last call.
    pub fn take_relinked(&self) -> Vec<i64> {
        std::mem::take(&mut *self.relinked.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Links that came up since the last call.
    fn take_ups(&self) -> Vec<LinkUp> {
        std::mem::take(&mut *self.ups.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// A link's task ended: unregister it (if it still is) and note it down.
    pub fn closed(&self, link: &Link) {
        if self.registry.remove(link) {
            self.down
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(link.machine_row);
        }
    }

    /// Closes a machine's live link, if this process holds one.
    pub fn close_machine(&self, machine_row: i64, reason: GoodbyeReason) -> bool {
        match self.registry.get(machine_row) {
            Some(l) => {
                l.close(reason, None);
                true
            }
            None => false,
        }
    }

    /// Whether one more rotation may start this minute.
    fn rotation_allowed(&self) -> bool {
        let share = (self.registry.len() as u64
            * u64::from(self.config.rotations_per_minute_permille)
            / 1000)
            .max(1);
        let mut r = self.rotations.lock().unwrap_or_else(|p| p.into_inner());
        if r.0.elapsed() >= Duration::from_secs(60) {
            *r = (Instant::now(), 0);
        }
        if u64::from(r.1) < share {
            r.1 += 1;
            true
        } else {
            false
        }
    }

    /// One tick of the wheel: for each link whose slot came round, close it if silent too
    /// long, send a heartbeat if one is due, start a rotation if its key is due (within the
    /// pace), and put it back in the wheel for its next deadline.
    pub fn sweep(&self) {
        let now = self.now();
        let dead = u64::try_from(self.config.dead_after.as_millis()).unwrap_or(u64::MAX);
        for weak in self.wheel.advance() {
            let Some(link) = weak.upgrade() else { continue };
            if link.is_closing() {
                continue;
            }
            let silent_until = link.last_recv().saturating_add(dead);
            if now >= silent_until {
                self.stats.closed_silent.fetch_add(1, Ordering::Relaxed);
                tracing::info!(machine_id = %link.machine_id, "link silent too long: closing it");
                link.close(GoodbyeReason::Silent, None);
                continue;
            }
            if now >= link.next_heartbeat() {
                if !link.send(warden_fleet_proto::link::ServerMessage::Heartbeat {}) {
                    link.close(GoodbyeReason::Silent, None);
                    continue;
                }
                let next = jitter(self.config.heartbeat, link::HEARTBEAT_JITTER_PERCENT);
                link.set_next_heartbeat(now + u64::try_from(next.as_millis()).unwrap_or(0));
            }
            if now_ms() >= link.rotate_due_ms() && self.rotation_allowed() {
                // Offered again in an hour if the agent does not act on it.
                link.set_rotate_due_ms(now_ms().saturating_add(3_600_000));
                link.request_rotation();
            }
            let next = link.next_heartbeat().min(silent_until).saturating_sub(now);
            self.wheel.schedule(&link, Duration::from_millis(next));
        }
    }

    /// Machines gone down since the last call that have not linked again since.
    fn take_down(&self) -> Vec<i64> {
        let down = std::mem::take(&mut *self.down.lock().unwrap_or_else(|p| p.into_inner()));
        down.into_iter()
            .filter(|row| !self.registry.contains(*row))
            .collect()
    }

    /// Graceful stop: every agent is told when to come back, spread uniformly over
    /// `restart_spread`, and its link closed; waits (up to `goodbye_timeout`) for the goodbyes to
    /// go out, then writes the last batch.
    pub async fn stop(&self) {
        let spread = u64::try_from(self.config.restart_spread.as_millis()).unwrap_or(0);
        for l in self.registry.all() {
            let after = (unit() * spread as f64) as u64;
            l.close(GoodbyeReason::ServerStopping, Some(after));
        }
        let deadline = Instant::now() + self.config.goodbye_timeout;
        while !self.registry.is_empty() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for l in self.registry.all() {
            self.closed(&l);
        }
        watch::flush(self, true).await;
    }
}
