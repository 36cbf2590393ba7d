//! Telling systemd how the daemon is doing (`sd_notify`): ready, reloading, stopping. (The
//! watchdog's pings are [`crate::watchdog`]'s.) Without `NOTIFY_SOCKET` every call does nothing.

use sd_notify::NotifyState;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// `READY=1` with a status line.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// `STOPPING=1`.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("shutting down")]);
}

/// `RELOADING=1` with the time it began (`MONOTONIC_USEC`, which systemd 253 and later require
/// with it), before a reload.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        // Without the time, systemd 253 and later would fail the reload: say nothing.
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock for sd_notify"),
    }
}

/// `READY=1` after a reload, whatever its outcome (a failed one keeps the running policy, and
/// the daemon serves on), with `status` saying which.
pub fn reloaded(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}
