//! Key material: making enrollment keys (`wek_`, stored only as Argon2id) and machine keys
//! (`wmk_`, stored only as SHA-256), hashing and comparing them, and the bounded pool that runs
//! Argon2id verifications. Their prefixes and shapes are the wire crate's
//! ([`warden_fleet_proto::ids`]); this module only makes and hashes them, and never logs one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use argon2::Argon2;
use argon2::password_hash::PasswordHasher;
use argon2::password_hash::phc::PasswordHash;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;
use warden_fleet_proto::MachineKey;
use warden_fleet_proto::ids::{ENROLLMENT_KEY_PREFIX, MACHINE_KEY_PREFIX};

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 0xf)] as char);
    }
    s
}

/// Hex of `n` random bytes from the kernel.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).expect("the kernel's random source");
    hex(&b)
}

/// `prefix` + 64 hex digits of 256 random bits.
fn random_key(prefix: &str) -> String {
    format!("{prefix}{}", random_hex(32))
}

pub fn new_enrollment_key() -> String {
    random_key(ENROLLMENT_KEY_PREFIX)
}

pub fn new_machine_key() -> MachineKey {
    random_key(MACHINE_KEY_PREFIX)
        .parse()
        // Invariant: `wmk_` + 64 lowercase hex digits is exactly a machine key's shape.
        .expect("a fresh machine key is well formed")
}

/// First 4 hex digits of SHA-256(key), upper case: enough for a person to tell keys apart,
/// nothing to guess a key from.
pub fn fingerprint(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes())[..2]).to_uppercase()
}

/// Hex SHA-256 of a bearer secret (a machine key or an API token), as stored.
pub fn secret_hash(key: &str) -> String {
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

thread_local! {
    /// Argon2id's working memory (19 MiB with the default parameters), kept by each thread that
    /// verifies: allocating and zeroing it afresh for every verification cost a tenth of the
    /// work.
    static BLOCKS: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether `secret` hashes to `phc` (an Argon2 PHC string), computed in this thread's kept
/// memory and compared in constant time.
pub fn verify_reusing_memory(secret: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let (Ok(params), Ok(algorithm)) = (
        argon2::Params::try_from(&parsed),
        argon2::Algorithm::try_from(parsed.algorithm.as_str()),
    ) else {
        return false;
    };
    let version = match parsed.version.map(argon2::Version::try_from) {
        None => argon2::Version::default(),
        Some(Ok(v)) => v,
        Some(Err(_)) => return false,
    };
    let blocks = params.block_count();
    let hasher = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.as_bytes().len()];
    let computed = BLOCKS.with(|memory| {
        let mut memory = memory.borrow_mut();
        if memory.len() < blocks {
            memory.resize(blocks, argon2::Block::default());
        }
        hasher.hash_password_into_with_memory(
            secret.as_bytes(),
            salt,
            &mut out,
            &mut memory[..blocks],
        )
    });
    computed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_bytes()))
}

/// Why the pool would not take a verification now.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("too many enrollments are being checked; try again shortly")]
pub struct PoolFull;

/// One verification for a [`Verifier`] thread.
struct Job {
    secret: String,
    phc: String,
    done: tokio::sync::oneshot::Sender<bool>,
}

/// Runs Argon2id verifications on `slots` threads of its own, each keeping its working memory
/// (so the server's memory for them is fixed: `slots` × 19 MiB with the default parameters),
/// with at most `queue` more waiting: past that, callers are turned away at once, so a flood of
/// bogus enrollments cannot take the server's CPU or memory. Counts every verification it runs.
#[derive(Debug)]
pub struct Verifier {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue: usize,
    jobs: std::sync::Mutex<std::sync::mpsc::Sender<Job>>,
    /// Verifications run (for tests: each rejection path runs exactly one).
    runs: AtomicU64,
    /// A hash of a random secret nobody knows, verified when there is nothing real to verify
    /// against, so every path costs the same.
    dummy: String,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job(…)")
    }
}

impl Verifier {
    pub fn new(slots: usize, queue: usize) -> anyhow::Result<Verifier> {
        let slots = slots.max(1);
        let (tx, rx) = std::sync::mpsc::channel::<Job>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..slots {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only to take the next job.
                        let job = {
                            let rx = rx.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                            rx.recv()
                        };
                        let Ok(job) = job else { return };
                        let _ = job.done.send(verify_reusing_memory(&job.secret, &job.phc));
                    }
                })?;
        }
        Ok(Verifier {
            slots: Arc::new(Semaphore::new(slots)),
            waiting: AtomicUsize::new(0),
            queue,
            jobs: std::sync::Mutex::new(tx),
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
        let (done, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            secret: secret.to_owned(),
            phc: phc.unwrap_or(&self.dummy).to_owned(),
            done,
        };
        self.runs.fetch_add(1, Ordering::Relaxed);
        let sent = self
            .jobs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .send(job);
        if sent.is_err() {
            return Err(PoolFull);
        }
        Ok(answer.await.unwrap_or(false) && real)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: keys have their documented shape, fingerprints are 4 upper-case hex digits, and a
    /// stored hash verifies only its own key.
    #[tokio::test]
    async fn keys_hash_and_verify() {
        use warden_fleet_proto::ids::prefixed_hex64;
        let k = new_enrollment_key();
        assert!(prefixed_hex64(&k, ENROLLMENT_KEY_PREFIX));
        assert!(!prefixed_hex64(&k.to_uppercase(), ENROLLMENT_KEY_PREFIX));
        assert!(prefixed_hex64(
            new_machine_key().expose(),
            MACHINE_KEY_PREFIX
        ));
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
        // The same answers as the library's own verification, for other parameters too.
        let light = Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(4096, 1, 1, None).unwrap(),
        );
        let other = light.hash_password(b"hunter2 hunter2").unwrap().to_string();
        assert!(verify_reusing_memory("hunter2 hunter2", &other));
        assert!(!verify_reusing_memory("hunter3 hunter3", &other));
        assert!(verify_reusing_memory(&k, &phc));
        assert!(!verify_reusing_memory(&k, "$argon2id$garbage"));
    }
}
