//! Key material: enrollment keys (`wek_`, stored only as Argon2id), machine keys (`wmk_`,
//! stored only as SHA-256), and the bounded pool that runs Argon2id verifications.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

/// Prefix of an enrollment key.
pub const ENROLLMENT_PREFIX: &str = "wek_";
/// Prefix of a machine key.
pub const MACHINE_PREFIX: &str = "wmk_";

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// `prefix` + 64 hex digits of 256 random bits.
fn random_key(prefix: &str) -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the kernel's random source");
    format!("{prefix}{}", hex(&b))
}

pub fn new_enrollment_key() -> String {
    random_key(ENROLLMENT_PREFIX)
}

pub fn new_machine_key() -> String {
    random_key(MACHINE_PREFIX)
}

/// Whether `key` has the shape `prefix` + 64 lowercase hex digits.
pub fn well_formed(key: &str, prefix: &str) -> bool {
    key.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 64 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// First 4 hex digits of SHA-256(key), upper case: enough for a person to tell keys apart,
/// nothing to guess a key from.
pub fn fingerprint(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes())[..2]).to_uppercase()
}

/// Hex SHA-256 of a machine key, as stored.
pub fn machine_key_hash(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// Compares two stored-form hashes without an early exit.
pub fn same_hash(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// Argon2id PHC string of `secret` with a fresh salt.
pub fn hash_secret(secret: &str) -> anyhow::Result<String> {
    Ok(Argon2::default()
        .hash_password(secret.as_bytes())
        .map_err(|e| anyhow::anyhow!("hashing: {e}"))?
        .to_string())
}

/// Why the pool would not take a verification now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many enrollments are being checked; try again shortly")]
pub struct PoolFull;

/// Runs Argon2id verifications on blocking threads, at most `slots` at once and at most `queue`
/// more waiting: past that, callers are turned away at once, so a flood of bogus enrollments
/// cannot take the server's CPU or memory. Counts every verification it runs.
#[derive(Debug)]
pub struct Verifier {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    /// Verifications run (for tests: each rejection path runs exactly one).
    runs: AtomicU64,
    /// A hash of a random secret nobody knows, verified when there is nothing real to verify
    /// against, so every path costs the same.
    dummy: String,
}

impl Verifier {
    pub fn new(slots: usize, queue: usize) -> anyhow::Result<Verifier> {
        Ok(Verifier {
            slots: Arc::new(Semaphore::new(slots.max(1))),
            waiting: AtomicUsize::new(0),
            queue,
            runs: AtomicU64::new(0),
            dummy: hash_secret(&new_enrollment_key())?,
        })
    }

    pub fn runs(&self) -> u64 {
        self.runs.load(Ordering::Relaxed)
    }

    /// Verifies `secret` against `phc`, or against the dummy hash when `phc` is `None` (always
    /// false then). Exactly one Argon2id verification either way.
    pub async fn verify(&self, secret: &str, phc: Option<&str>) -> Result<bool, PoolFull> {
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        if queued >= self.queue && self.slots.available_permits() == 0 {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            return Err(PoolFull);
        }
        let permit = Arc::clone(&self.slots).acquire_owned().await;
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        let Ok(_permit) = permit else {
            return Err(PoolFull);
        };
        let real = phc.is_some();
        let phc = phc.unwrap_or(&self.dummy).to_owned();
        let secret = secret.to_owned();
        self.runs.fetch_add(1, Ordering::Relaxed);
        let ok = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&phc).is_ok_and(|parsed| {
                Argon2::default()
                    .verify_password(secret.as_bytes(), &parsed)
                    .is_ok()
            })
        })
        .await
        .unwrap_or(false);
        Ok(ok && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: keys have their documented shape, fingerprints are 4 upper-case hex digits, and a
    /// stored hash verifies only its own key.
    #[tokio::test]
    async fn keys_hash_and_verify() {
        let k = new_enrollment_key();
        assert!(well_formed(&k, ENROLLMENT_PREFIX));
        assert!(!well_formed(&k.to_uppercase(), ENROLLMENT_PREFIX));
        assert!(well_formed(&new_machine_key(), MACHINE_PREFIX));
        let f = fingerprint(&k);
        assert_eq!(f.len(), 4);
        assert!(
            f.bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_lowercase())
        );
        let v = Verifier::new(2, 4).unwrap();
        let phc = hash_secret(&k).unwrap();
        assert!(!phc.contains(&k[4..]));
        assert_eq!(v.verify(&k, Some(&phc)).await, Ok(true));
        assert_eq!(v.verify(&new_enrollment_key(), Some(&phc)).await, Ok(false));
        assert_eq!(v.verify(&k, None).await, Ok(false));
        assert_eq!(v.runs(), 3);
    }
}
