//! Machine key rotation: when a key is due, and what the next key is.
//!
//! The next key is derived, not drawn: HMAC-SHA256 under the servers' shared secret over the
//! machine, the new version and the key it replaces. Asking again before the agent uses it
//! therefore gives the same key (so an agent that crashed before storing it gets it again),
//! while the server stores only its hash. Due times are spread ±20% around the interval so a
//! fleet enrolled in one afternoon does not rotate in one minute, and the hub paces how many
//! rotations it starts per minute.

use std::time::Duration;

use warden_fleet_proto::ids::MACHINE_KEY_PREFIX;
use warden_fleet_proto::{KeyVersion, MachineId, MachineKey};

use crate::auth::SigningKey;
use crate::keys::hex;

/// How often a machine key is rotated by default.
pub const EVERY: Duration = Duration::from_secs(7 * 24 * 3600);
/// The spread of each due time around the interval, in percent.
pub const SPREAD_PERCENT: u32 = 20;

/// The key that replaces `current_key_id` as version `version` of `machine`.
pub fn next_key(
    secret: &SigningKey,
    machine: &MachineId,
    version: KeyVersion,
    current_key_id: i64,
) -> MachineKey {
    let mac = secret.derive(&format!(
        "warden machine key rotation v1\0{machine}\0{}\0{current_key_id}",
        version.0
    ));
    format!("{MACHINE_KEY_PREFIX}{}", hex(&mac))
        .parse()
        // The prefix and 64 lowercase hex digits are exactly a machine key's shape.
        .unwrap_or_else(|_| unreachable!("a derived key is well formed"))
}

/// `every` ± [`SPREAD_PERCENT`]%, with `unit` uniform in [0, 1).
pub fn jittered(every: Duration, unit: f64) -> Duration {
    let spread = f64::from(SPREAD_PERCENT) / 100.0;
    every.mul_f64(1.0 - spread + 2.0 * spread * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the derived key is the same when asked again, and differs by version, machine
    /// and the key it replaces.
    #[test]
    fn next_key_is_stable_and_bound_to_its_inputs() {
        let s = SigningKey::from_bytes([7; 32]);
        let m: MachineId = format!("muid_{}", "c".repeat(64)).parse().unwrap();
        let n: MachineId = format!("muid_{}", "d".repeat(64)).parse().unwrap();
        let k = next_key(&s, &m, KeyVersion(2), 5);
        assert_eq!(k, next_key(&s, &m, KeyVersion(2), 5));
        assert_ne!(k, next_key(&s, &m, KeyVersion(3), 5));
        assert_ne!(k, next_key(&s, &n, KeyVersion(2), 5));
        assert_ne!(k, next_key(&s, &m, KeyVersion(2), 6));
        assert_ne!(
            k,
            next_key(&SigningKey::from_bytes([8; 32]), &m, KeyVersion(2), 5)
        );
        let d = jittered(Duration::from_secs(100), 0.0);
        assert_eq!(d, Duration::from_secs(80));
        assert_eq!(
            jittered(Duration::from_secs(100), 1.0),
            Duration::from_secs(120)
        );
    }
}
