//! Operators: accounts with Argon2id passwords and a role, login sessions carried by signed
//! tokens (`wop_`, at most an hour, revocable by logout), and API tokens (`wat_`, scoped to a
//! role no higher than their owner's, expiring, revocable, stored only as SHA-256).
//!
//! Which token goes where is fixed by its prefix: an operator endpoint takes `wop_` and `wat_`
//! only, the agent endpoint `wmk_` only. This module owns the roles, the token format and the
//! signing key; the rows are [`crate::store::operators`]'s. It never logs a token or password.

use hmac::{Hmac, KeyInit, Mac};
use serde::Serialize;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::keys::hex;
use crate::store::Db;

/// Prefix of a login session token.
pub const SESSION_PREFIX: &str = "wop_";
/// Prefix of an API token.
pub const API_PREFIX: &str = "wat_";
/// What a login token is for, signed into it: a token signed for anything else is refused.
pub const PURPOSE: &str = "operator";
/// How long a login lasts.
pub const SESSION_MS: i64 = 60 * 60 * 1000;
/// Longest an API token may live.
pub const MAX_TOKEN_MS: i64 = 365 * 24 * 60 * 60 * 1000;

/// What an operator may do, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Role, String> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(format!("role must be viewer, operator or admin, not `{s}`")),
        }
    }
}

/// An authenticated caller of the operator endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator {
    pub id: i64,
    pub name: String,
    /// What this credential may do (an API token's role, capped by its owner's).
    pub role: Role,
    /// The session behind a login token, to log out.
    pub session: Option<String>,
    /// When this credential stops working (a login's end; an API token's expiry).
    pub expires_ms: Option<i64>,
    /// Whether it came in the console's session cookie rather than `Authorization: Bearer`
    /// (set by the HTTP layer): such a request needs the CSRF token to change anything.
    pub by_cookie: bool,
    /// Where the request came from (set by the HTTP layer), for the audit trail.
    pub source: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OperatorInfo {
    pub id: i64,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub operator: String,
    pub name: String,
    pub role: Role,
    pub created_ms: i64,
    pub expires_ms: i64,
    pub revoked: bool,
}

/// The key that signs session tokens: 32 random bytes kept in the database (`server_secrets`),
/// made by the first server to start on it, so every server sharing the database signs and
/// accepts the same tokens.
#[derive(Clone)]
pub struct SigningKey([u8; 32]);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(…)")
    }
}

impl PartialEq for SigningKey {
    fn eq(&self, other: &SigningKey) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl Eq for SigningKey {}

/// What a CSRF token is derived for, before the session id: no other derivation uses it.
const CSRF_CONTEXT: &str = "csrf:";

/// The signing key's name in `server_secrets`.
pub const SIGNING_KEY: &str = "session_signing_key";

impl SigningKey {
    /// The database's signing key, made now if it has none. Servers starting at once on one
    /// database all end up with the one key that was stored first: the insert does nothing when
    /// a key is there, and every server reads back what is stored.
    pub async fn load_or_create(db: &Db) -> anyhow::Result<SigningKey> {
        let mut fresh = [0u8; 32];
        getrandom::fill(&mut fresh).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        let stored = db
            .secret_or_insert(SIGNING_KEY, &hex(&fresh))
            .await
            .map_err(|e| anyhow::anyhow!("cannot store or read the token signing key: {e}"))?;
        let key = unhex(&stored)
            .and_then(|b| <[u8; 32]>::try_from(b.as_slice()).ok())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "the token signing key in the database is not 32 bytes of hex; delete its row \
                     (server_secrets, name {SIGNING_KEY}) to make a new one (every login ends)"
                )
            })?;
        Ok(SigningKey(key))
    }

    fn mac(&self, payload: &str) -> Hmac<Sha256> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.0).expect("any key length");
        m.update(payload.as_bytes());
        m
    }

    /// 32 bytes derived from the secret for `context`, for a purpose other than signing
    /// tokens (the machine key rotation derives each next key here). The input starts with a
    /// NUL byte, which no token payload does, so no token's tag can ever equal a derived value.
    pub fn derive(&self, context: &str) -> [u8; 32] {
        self.mac(&format!("\0{context}"))
            .finalize()
            .into_bytes()
            .into()
    }

    /// The CSRF token of login session `session`: HMAC-SHA256 of its id under this key, in
    /// hex. Bound to that session (useless for any other), and stateless: nothing is stored.
    pub fn csrf(&self, session: &str) -> String {
        hex(&self.derive(&format!("{CSRF_CONTEXT}{session}")))
    }

    /// Whether `presented` is session `session`'s CSRF token, compared in constant time.
    pub fn csrf_matches(&self, session: &str, presented: &str) -> bool {
        let expected = self.csrf(session);
        presented.len() == expected.len()
            && bool::from(presented.as_bytes().ct_eq(expected.as_bytes()))
    }

    #[cfg(test)]
    pub fn from_bytes(bytes: [u8; 32]) -> SigningKey {
        SigningKey(bytes)
    }

    /// `wop_` + hex(payload) + `.` + hex(HMAC-SHA256(payload)).
    pub(crate) fn sign(&self, payload: &str) -> String {
        debug_assert!(
            !payload.starts_with('\0'),
            "token payloads never start with NUL"
        );
        let tag = self.mac(payload).finalize().into_bytes();
        format!("{SESSION_PREFIX}{}.{}", hex(payload.as_bytes()), hex(&tag))
    }

    /// The payload of a token this key signed.
    pub(crate) fn open(&self, token: &str) -> Option<String> {
        let (payload, tag) = token.strip_prefix(SESSION_PREFIX)?.split_once('.')?;
        let payload = String::from_utf8(unhex(payload)?).ok()?;
        self.mac(&payload).verify_slice(&unhex(tag)?).ok()?;
        Some(payload)
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) || s.len() > 512 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// An operator name: 1 to 64 of `a-z 0-9 . _ -`.
pub fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: a signed payload opens with its key only, and any change to it is refused.
    #[test]
    fn session_tokens_open_only_unchanged_and_with_their_key() {
        let k = SigningKey([7; 32]);
        let t = k.sign("abc:1:99");
        assert_eq!(k.open(&t).as_deref(), Some("abc:1:99"));
        assert_eq!(SigningKey([8; 32]).open(&t), None);
        let forged = t.replacen(&hex(b"abc:1:99"), &hex(b"abc:2:99"), 1);
        assert_eq!(k.open(&forged), None);
        assert_eq!(k.open("wop_zz.00"), None);
    }

    /// Pins: a CSRF token matches its own session under its own key only, and is not the
    /// session id or any prefix of a wrong token.
    #[test]
    fn csrf_tokens_are_bound_to_their_session_and_key() {
        let k = SigningKey([7; 32]);
        let t = k.csrf("s1");
        assert_eq!(t.len(), 64);
        assert!(k.csrf_matches("s1", &t));
        assert!(!k.csrf_matches("s2", &t));
        assert!(!SigningKey([8; 32]).csrf_matches("s1", &t));
        assert!(!k.csrf_matches("s1", &t[..63]));
        assert!(!k.csrf_matches("s1", ""));
        assert_ne!(k.csrf("s1"), k.csrf("s2"));
    }
}
