//! The live links of this server process, one per machine, and what each is waiting to send.
//!
//! A [`Link`] is small on purpose (the budget is 16 KiB per idle link, TLS included): a few
//! atomics for its clock, a queue that is empty (and unallocated) while idle, and a `Notify` its
//! task waits on. It owns no timer: the hub's one wheel visits it. The registry never holds its
//! lock across an await.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;
use warden_fleet_proto::link::{GoodbyeReason, ServerMessage};
use warden_fleet_proto::{KeyVersion, MachineId};

/// Messages a link may have queued; a peer that lets more pile up is too slow and is closed.
pub const OUTBOX: usize = 8;

/// One live link.
#[derive(Debug)]
pub struct Link {
    /// Which connection this is: only the registered link may remove itself, so an old link
    /// closing late never unregisters the machine's new one.
    pub conn: u64,
    pub machine_row: i64,
    pub machine_id: MachineId,
    /// The key row it authenticated with; a revocation checks that row again.
    pub key_id: i64,
    pub key_version: KeyVersion,
    pub agent_version: Box<str>,
    /// Unix milliseconds when it came up.
    pub linked_ms: i64,
    /// Hub milliseconds when anything last arrived from the agent.
    last_recv: AtomicU64,
    /// Hub milliseconds when our next heartbeat is due.
    next_heartbeat: AtomicU64,
    /// Unix milliseconds when its key is due for rotation.
    rotate_due_ms: AtomicI64,
    /// The wheel asked the link's task to offer a new key.
    rotate_now: AtomicBool,
    /// Set once: send what is queued (a goodbye last) and close.
    closing: AtomicBool,
    outbox: Mutex<VecDeque<ServerMessage>>,
    wake: Notify,
}

impl Link {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        conn: u64,
        machine_row: i64,
        machine_id: MachineId,
        key_id: i64,
        key_version: KeyVersion,
        agent_version: Box<str>,
        linked_ms: i64,
        now: u64,
        rotate_due_ms: i64,
    ) -> Link {
        Link {
            conn,
            machine_row,
            machine_id,
            key_id,
            key_version,
            agent_version,
            linked_ms,
            last_recv: AtomicU64::new(now),
            next_heartbeat: AtomicU64::new(0),
            rotate_due_ms: AtomicI64::new(rotate_due_ms),
            rotate_now: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            outbox: Mutex::new(VecDeque::new()),
            wake: Notify::new(),
        }
    }

    fn outbox(&self) -> MutexGuard<'_, VecDeque<ServerMessage>> {
        // A panic while holding this lock cannot leave the queue half-changed: take it anyway.
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Notes that something arrived.
    pub fn touch(&self, now: u64) {
        self.last_recv.store(now, Ordering::Relaxed);
    }

    pub fn last_recv(&self) -> u64 {
        self.last_recv.load(Ordering::Relaxed)
    }

    pub fn next_heartbeat(&self) -> u64 {
        self.next_heartbeat.load(Ordering::Relaxed)
    }

    pub fn set_next_heartbeat(&self, at: u64) {
        self.next_heartbeat.store(at, Ordering::Relaxed);
    }

    pub fn rotate_due_ms(&self) -> i64 {
        self.rotate_due_ms.load(Ordering::Relaxed)
    }

    pub fn set_rotate_due_ms(&self, at: i64) {
        self.rotate_due_ms.store(at, Ordering::Relaxed);
    }

    /// Asks the link's task to offer a new key.
    pub fn request_rotation(&self) {
        if !self.rotate_now.swap(true, Ordering::AcqRel) {
            self.wake.notify_one();
        }
    }

    /// Whether a rotation was asked for (and clears the request).
    pub fn take_rotation(&self) -> bool {
        self.rotate_now.swap(false, Ordering::AcqRel)
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Queues a message. `false` when the link is closing or its queue is full (the peer does
    /// not read): the caller closes it.
    pub fn send(&self, message: ServerMessage) -> bool {
        if self.is_closing() {
            return false;
        }
        {
            let mut q = self.outbox();
            if q.len() >= OUTBOX {
                return false;
            }
            q.push_back(message);
        }
        self.wake.notify_one();
        true
    }

    /// Sends a goodbye (past anything queued, even over the cap) and closes. Only the first
    /// call counts.
    pub fn close(&self, reason: GoodbyeReason, reconnect_after_ms: Option<u64>) {
        if self.closing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.outbox().push_back(ServerMessage::Goodbye {
            reason,
            reconnect_after_ms,
        });
        self.wake.notify_one();
    }

    /// Everything queued, leaving the queue unallocated (an idle link holds no buffer).
    pub fn drain(&self) -> VecDeque<ServerMessage> {
        std::mem::take(&mut *self.outbox())
    }

    /// Waits until there is something to send or to do.
    pub async fn woken(&self) {
        self.wake.notified().await;
    }
}

/// Why a link was not registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// As many links as allowed are up.
    Full,
    /// The same key already holds a live link: the newer is refused.
    Duplicate,
}

/// The links of this process, by machine row.
#[derive(Debug)]
pub struct Registry {
    links: Mutex<HashMap<i64, Arc<Link>>>,
    max_links: usize,
}

impl Registry {
    pub fn new(max_links: usize) -> Registry {
        Registry {
            links: Mutex::new(HashMap::new()),
            max_links,
        }
    }

    fn links(&self) -> MutexGuard<'_, HashMap<i64, Arc<Link>>> {
        self.links.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers `link`. A live link of the same machine with an older key is handed back to
    /// be closed (a newer key's first use retired its key); one with the same key wins over
    /// the newcomer.
    pub fn admit(&self, link: &Arc<Link>) -> Result<Option<Arc<Link>>, Refused> {
        let mut links = self.links();
        match links.get(&link.machine_row) {
            Some(old) if old.key_version >= link.key_version && !old.is_closing() => {
                Err(Refused::Duplicate)
            }
            Some(_) => Ok(links.insert(link.machine_row, Arc::clone(link))),
            None if links.len() >= self.max_links => Err(Refused::Full),
            None => {
                links.insert(link.machine_row, Arc::clone(link));
                Ok(None)
            }
        }
    }

    /// Unregisters `link` if it is still the machine's registered link.
    pub fn remove(&self, link: &Link) -> bool {
        let mut links = self.links();
        if links
            .get(&link.machine_row)
            .is_some_and(|l| l.conn == link.conn)
        {
            links.remove(&link.machine_row);
            true
        } else {
            false
        }
    }

    pub fn get(&self, machine_row: i64) -> Option<Arc<Link>> {
        self.links().get(&machine_row).cloned()
    }

    pub fn by_machine_id(&self, machine_id: &str) -> Option<Arc<Link>> {
        self.links()
            .values()
            .find(|l| l.machine_id.as_str() == machine_id)
            .cloned()
    }

    pub fn contains(&self, machine_row: i64) -> bool {
        self.links().contains_key(&machine_row)
    }

    pub fn len(&self) -> usize {
        self.links().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every live link, for a sweep that must not hold the lock.
    pub fn all(&self) -> Vec<Arc<Link>> {
        self.links().values().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(conn: u64, row: i64, version: u64) -> Arc<Link> {
        let id = format!("muid_{}", "a".repeat(64)).parse().unwrap();
        Arc::new(Link::new(
            conn,
            row,
            id,
            conn as i64,
            KeyVersion(version),
            "t".into(),
            0,
            0,
            0,
        ))
    }

    /// Pins: the same key cannot hold two links (the newer is refused), a newer key supersedes
    /// an older one, the cap holds, and a late close never unregisters a successor.
    #[test]
    fn one_link_per_machine_newer_key_supersedes_and_cap_holds() {
        let r = Registry::new(2);
        let a = link(1, 10, 1);
        assert!(r.admit(&a).unwrap().is_none());
        assert_eq!(r.admit(&link(2, 10, 1)).unwrap_err(), Refused::Duplicate);
        let b = link(3, 10, 2);
        let old = r.admit(&b).unwrap().unwrap();
        assert_eq!(old.conn, 1);
        assert!(
            !r.remove(&a),
            "the superseded link must not unregister its successor"
        );
        assert!(r.admit(&link(4, 11, 1)).unwrap().is_none());
        assert_eq!(r.admit(&link(5, 12, 1)).unwrap_err(), Refused::Full);
        assert!(r.remove(&b));
        assert_eq!(r.len(), 1);
    }

    /// Pins: a peer that does not read cannot grow its queue past the cap, and a goodbye still
    /// goes out last.
    #[test]
    fn outbox_is_bounded_and_goodbye_goes_last() {
        let l = link(1, 1, 1);
        for _ in 0..OUTBOX {
            assert!(l.send(ServerMessage::Heartbeat {}));
        }
        assert!(!l.send(ServerMessage::Heartbeat {}));
        l.close(GoodbyeReason::Silent, None);
        let q = l.drain();
        assert_eq!(q.len(), OUTBOX + 1);
        assert!(matches!(q.back(), Some(ServerMessage::Goodbye { .. })));
        assert!(!l.send(ServerMessage::Heartbeat {}));
        assert_eq!(l.drain().capacity(), 0);
    }
}
