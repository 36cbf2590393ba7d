//! What the agent does after the server refused the link before the upgrade, other than with a
//! 401 (which [`super`] handles, since it may lead to enrolling again): how long to wait, by
//! the refusal table in `warden_fleet_proto::link`, and the one log line saying why. It must
//! never touch the key: no refusal costs the host its key.

use std::time::Duration;

use super::{Retry, ms};
use crate::backoff::{self, draw};
use crate::config::AgentConfig;
use crate::link::Refusal;

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Wait(Duration),
    /// Stop: waiting will not change the answer.
    Final(String),
}

/// The wait after refusal `r` (not a 401).
pub fn next(cfg: &AgentConfig, r: Refusal, retry: &mut Retry) -> Next {
    let delay;
    match r {
        Refusal::Unauthorized => {
            delay = retry.rejected(&cfg.timings);
        }
        Refusal::Quarantined => {
            // Asked again at the pace of waiting for an operator, not the long backoff of a
            // rejection, so that an admin's clear takes effect within a minute or so.
            delay = backoff::pending_poll(cfg.timings.pending_poll, draw());
            tracing::error!(
                status = 403,
                wait_ms = ms(delay),
                "link: this machine is QUARANTINED: a retired key of it was presented \
                 (a clone or a stolen key). An admin must investigate and clear it \
                 (warden-server machines clear MACHINE_ID)"
            );
        }
        Refusal::Forbidden => {
            let why = "the server refuses this machine (403 forbidden: banned); \
                       an operator must unban it (warden-server machines unban \
                       MACHINE_ID), then restart warden-agent";
            tracing::error!(status = 403, "link: stopped: {why}");
            return Next::Final(why.into());
        }
        Refusal::DuplicateLink => {
            delay = retry.reconnect(&cfg.timings);
            tracing::warn!(
                status = 409,
                wait_ms = ms(delay),
                "link: this key already holds a live link (an old connection not yet \
                 timed out, or a clone of this host); backing off"
            );
        }
        Refusal::Unavailable { retry_after } => {
            delay = match retry_after {
                Some(ra) => backoff::retry_after(ra, draw()),
                None => retry.reconnect(&cfg.timings),
            };
            tracing::info!(
                status = 503,
                retry_after_s = retry_after.map(|d| d.as_secs()),
                wait_ms = ms(delay),
                "link: the server is busy or stopping; waiting as it asked"
            );
        }
        Refusal::Other { status } => {
            delay = retry.reconnect(&cfg.timings);
            tracing::warn!(status, wait_ms = ms(delay), "link: refused; trying again");
        }
    }
    Next::Wait(delay)
}
