//! What `status` reports: counters (connections, protocol violations by class, refusals) as
//! plain relaxed atomics, each independent and only ever read for reporting; and the parts
//! that do not change while a policy is in force, serialized once.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::value::RawValue;
use warden_policy::Policy;
use warden_proto::messages::{ConnectionCounts, ListenerInfo, RefusalCounts, ViolationCounts};

/// One monotonically increasing count.
#[derive(Debug, Default)]
pub(crate) struct Counter(AtomicU64);

impl Counter {
    pub(crate) fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter the daemon keeps.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub accepted: Counter,
    pub frame_empty: Counter,
    pub frame_too_large: Counter,
    pub frame_truncated: Counter,
    pub frame_timeout: Counter,
    pub hello_timeout: Counter,
    pub hello_missing: Counter,
    pub invalid_jsonrpc: Counter,
    pub closed_for_violations: Counter,
    pub write_timeout: Counter,
    pub busy_total: Counter,
    pub busy_uid: Counter,
    pub rate_limited_connection: Counter,
    pub rate_limited_uid: Counter,
    pub identity_unreadable: Counter,
}

impl Stats {
    pub(crate) fn connections(&self, open: u32) -> ConnectionCounts {
        ConnectionCounts {
            open: open.into(),
            accepted: self.accepted.get(),
        }
    }

    pub(crate) fn violations(&self) -> ViolationCounts {
        ViolationCounts {
            frame_empty: self.frame_empty.get(),
            frame_too_large: self.frame_too_large.get(),
            frame_truncated: self.frame_truncated.get(),
            frame_timeout: self.frame_timeout.get(),
            hello_timeout: self.hello_timeout.get(),
            hello_missing: self.hello_missing.get(),
            invalid_jsonrpc: self.invalid_jsonrpc.get(),
            closed_for_violations: self.closed_for_violations.get(),
            write_timeout: self.write_timeout.get(),
        }
    }

    pub(crate) fn refusals(&self) -> RefusalCounts {
        RefusalCounts {
            busy_total: self.busy_total.get(),
            busy_uid: self.busy_uid.get(),
            rate_limited_connection: self.rate_limited_connection.get(),
            rate_limited_uid: self.rate_limited_uid.get(),
            identity_unreadable: self.identity_unreadable.get(),
        }
    }
}

/// The parts of `status` that do not change while a policy is in force, serialized once.
/// Rebuild it whenever the policy changes.
#[derive(Debug)]
pub(crate) struct StaticStatus {
    pub(crate) limits: Box<RawValue>,
    pub(crate) listeners: Box<RawValue>,
}

impl StaticStatus {
    pub(crate) fn new(policy: &Policy) -> serde_json::Result<StaticStatus> {
        let listeners: Vec<ListenerInfo> = policy.listeners.iter().map(listener_info).collect();
        Ok(StaticStatus {
            limits: serde_json::value::to_raw_value(&policy.limits)?,
            listeners: serde_json::value::to_raw_value(&listeners)?,
        })
    }
}

/// The wire view of a listener.
pub(crate) fn listener_info(l: &warden_policy::ListenerPolicy) -> ListenerInfo {
    ListenerInfo {
        path: l.path.to_string_lossy().into_owned(),
        max_tier: l.max_tier,
    }
}
