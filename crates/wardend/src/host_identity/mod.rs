//! The host's machine identity for `host.identity`: computed from the `[fleet.identity]` files
//! when the daemon starts and at every reload, kept, and answered from memory, so a request
//! never reads a file. The daemon computes it because the DMI files are readable only by root.
//! It never decides who may ask (the gate does) and logs a change of outcome once, not per
//! request.

pub mod derive;
pub mod read;

use std::sync::{Arc, PoisonError, RwLock};

use warden_policy::FleetPolicy;
use warden_proto::messages::HostIdentityResult;

/// What the last computation gave: the identity, or why there is none.
type Outcome = Result<HostIdentityResult, String>;

/// The machine identity as last computed.
#[derive(Debug)]
pub(crate) struct HostIdentity {
    /// Replaced whole at start and reload; read by every `host.identity`.
    current: RwLock<Arc<Outcome>>,
}

impl HostIdentity {
    /// Computes the identity from `fleet`'s sources now (reads a few small files).
    pub(crate) fn compute(fleet: &FleetPolicy) -> HostIdentity {
        let outcome = settle(&Self::derive(fleet), None, fleet.enabled);
        HostIdentity {
            current: RwLock::new(Arc::new(outcome)),
        }
    }

    /// Reads the sources again (at reload); logs only when the outcome changed.
    pub(crate) fn refresh(&self, fleet: &FleetPolicy) {
        let before = self.current();
        let outcome = settle(&Self::derive(fleet), Some(&before), fleet.enabled);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(outcome);
    }

    fn derive(fleet: &FleetPolicy) -> Result<derive::Derived, derive::NoIdentity> {
        derive::derive(&read::signals(&fleet.identity))
    }

    fn current(&self) -> Arc<Outcome> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The answer to `host.identity`, or the message of its `unavailable` error when no
    /// source was usable.
    pub(crate) fn answer(&self) -> Result<HostIdentityResult, String> {
        match &*self.current() {
            Ok(id) => Ok(id.clone()),
            Err(why) => Err(format!(
                "this host has no usable machine identity ({why}); check the paths in \
                 [fleet.identity] and that /etc/machine-id is initialized"
            )),
        }
    }
}

/// The outcome to keep, logged unless it equals `before`. A degraded or missing identity is a
/// warning when fleet is enabled (enrollment depends on it), a note otherwise.
fn settle(
    outcome: &Result<derive::Derived, derive::NoIdentity>,
    before: Option<&Outcome>,
    fleet_enabled: bool,
) -> Outcome {
    let now: Outcome = match outcome {
        Ok(d) => Ok(d.identity.clone()),
        Err(e) => Err(e.to_string()),
    };
    if before != Some(&now) {
        log(outcome, fleet_enabled);
    }
    now
}

fn log(outcome: &Result<derive::Derived, derive::NoIdentity>, fleet_enabled: bool) {
    match outcome {
        Ok(d) if d.identity.degraded => {
            let passed_over = d.passed_over.join("; ");
            if fleet_enabled {
                tracing::warn!(
                    machine_id = %d.identity.machine_id,
                    source = %d.identity.source,
                    passed_over,
                    "machine identity is degraded: only /etc/machine-id is usable, so a \
                     reinstall makes this host a new machine to the fleet"
                );
            } else {
                tracing::info!(
                    machine_id = %d.identity.machine_id,
                    source = %d.identity.source,
                    passed_over,
                    "machine identity is degraded (only /etc/machine-id is usable)"
                );
            }
        }
        Ok(d) => tracing::info!(
            machine_id = %d.identity.machine_id,
            source = %d.identity.source,
            "machine identity"
        ),
        Err(e) if fleet_enabled => tracing::warn!(reason = %e, "no machine identity"),
        Err(e) => tracing::info!(reason = %e, "no machine identity"),
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use warden_policy::{DiskSerial, IdentitySources};
    use warden_proto::messages::IdentitySource;

    use super::*;

    /// Log lines written while a test runs.
    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Capture {
        fn lines_with(&self, needle: &str) -> usize {
            let text = String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned();
            text.lines().filter(|l| l.contains(needle)).count()
        }
    }

    /// Pins: a degraded identity is logged once as a warning (fleet enabled), not again by
    /// reloads that find the same; a changed outcome is logged once more; requests answer the
    /// identity kept, with no file read, and `unavailable`'s message says why.
    #[test]
    fn a_degraded_identity_is_logged_once_and_kept_until_a_refresh() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str| dir.path().join(name);
        std::fs::write(file("machine-id"), "3d1219c7c4c5404aaa1f6d2a48adfda4\n").unwrap();
        let fleet = FleetPolicy {
            enabled: true,
            identity: IdentitySources {
                product_uuid: file("product_uuid"),
                board_serial: file("board_serial"),
                disk_serial: DiskSerial::File(file("disk_serial")),
                machine_id: file("machine-id"),
            },
            ..FleetPolicy::default()
        };
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let id = HostIdentity::compute(&fleet);
            let first = id.answer().unwrap();
            assert_eq!(first.source, IdentitySource::MachineId);
            assert!(first.degraded);
            id.refresh(&fleet);
            id.refresh(&fleet);
            assert_eq!(capture.lines_with("machine identity is degraded"), 1);
            assert_eq!(capture.lines_with("WARN"), 1);

            std::fs::write(
                file("product_uuid"),
                "4C4C4544-0051-3510-8057-B3C04F4E3432\n",
            )
            .unwrap();
            assert_eq!(id.answer().unwrap(), first, "kept until a refresh");
            id.refresh(&fleet);
            let better = id.answer().unwrap();
            assert_eq!(better.source, IdentitySource::DmiProductUuid);
            assert!(!better.degraded);
            assert_eq!(capture.lines_with("source=dmi_product_uuid"), 1);

            std::fs::write(file("product_uuid"), "Not Settable").unwrap();
            std::fs::remove_file(file("machine-id")).unwrap();
            id.refresh(&fleet);
            let why = id.answer().unwrap_err();
            assert!(why.contains("machine_id: missing or unreadable"), "{why}");
            assert_eq!(capture.lines_with("no machine identity"), 1);
        });
    }
}
