//! Validated identifiers and keys. Each parses once at the edge (`FromStr`, and serde through
//! it), so a value of these types is well formed wherever it travels. Keys print as
//! `wmk_…(redacted)` in `Debug` and have no `Display`: the plaintext leaves only through
//! [`MachineKey::expose`], which names what it does.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Prefix of a machine id.
pub const MACHINE_ID_PREFIX: &str = "muid_";
/// Prefix of a machine key.
pub const MACHINE_KEY_PREFIX: &str = "wmk_";
/// Prefix of a dispatch id.
pub const DISPATCH_ID_PREFIX: &str = "dsp_";
/// Prefix of an enrollment key.
pub const ENROLLMENT_KEY_PREFIX: &str = "wek_";
/// Longest enrollment key the server reads (anything longer is a malformed request; anything
/// shorter is checked, and refused like every wrong key).
pub const MAX_ENROLLMENT_KEY: usize = 128;

/// Why a value is not a well-formed identifier or key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("machine_id must match ^muid_[0-9a-f]{{64}}$")]
    MachineId,
    #[error("site_code must be 1 to 64 of a-z 0-9 _ -, starting with a letter or digit")]
    SiteCode,
    #[error("hostname must be 1 to 253 of letters, digits, `-` and `.`")]
    Hostname,
    #[error("a machine key is wmk_ and 64 lowercase hex digits")]
    MachineKey,
    #[error("enrollment_key is too long")]
    EnrollmentKey,
    #[error("a dispatch id is dsp_ and 32 lowercase hex digits")]
    DispatchId,
}

/// Whether `s` is `prefix` + 64 lowercase hex digits.
pub fn prefixed_hex64(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| {
        rest.len() == 64 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// `FromStr` through `$check`, and serde and (with `openapi`) a string schema through it: a
/// value of `$name` is well formed wherever it came from.
macro_rules! parsed_from_str {
    ($name:ident, $check:expr, $err:expr) => {
        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                let check: fn(&str) -> bool = $check;
                if check(s) {
                    Ok($name(s.to_owned()))
                } else {
                    Err($err)
                }
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                String::schema()
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}
    };
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $check:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        parsed_from_str!($name, $check, $err);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_id!(
    /// `muid_` + 64 lowercase hex digits: SHA-256 over a fixed namespace and the host's stable
    /// hardware signals, computed by wardend.
    MachineId,
    |s| prefixed_hex64(s, MACHINE_ID_PREFIX),
    IdError::MachineId
);

string_id!(
    /// A site's code: 1 to 64 of `a-z 0-9 _ -`, starting with a letter or digit.
    SiteCode,
    |code| {
        (1..=64).contains(&code.len())
            && code
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
            && code.as_bytes()[0].is_ascii_alphanumeric()
    },
    IdError::SiteCode
);

string_id!(
    /// A hostname as a host reports it: 1 to 253 of letters, digits, `-` and `.`.
    Hostname,
    |h| {
        (1..=253).contains(&h.len())
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
    },
    IdError::Hostname
);

string_id!(
    /// `dsp_` + 32 lowercase hex digits: one dispatch (one action run on a set of hosts).
    DispatchId,
    |s| {
        s.strip_prefix(DISPATCH_ID_PREFIX).is_some_and(|rest| {
            rest.len() == 32 && rest.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    },
    IdError::DispatchId
);

/// Which of a machine's keys: 1 for the key issued at enrollment, one more at each rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct KeyVersion(pub u64);

impl fmt::Display for KeyVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

macro_rules! secret {
    ($(#[$doc:meta])* $name:ident, $prefix:expr, $check:expr, $err:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            /// The plaintext, for the one place that must send or store it.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}…(redacted)", $prefix)
            }
        }

        parsed_from_str!($name, $check, $err);
    };
}

secret!(
    /// A machine's credential on the agent plane: `wmk_` + 256 random bits in hex. The server
    /// keeps only its SHA-256; the agent keeps it in its key store.
    MachineKey,
    MACHINE_KEY_PREFIX,
    |s| prefixed_hex64(s, MACHINE_KEY_PREFIX),
    IdError::MachineKey
);

secret!(
    /// A site's enrollment key as a host presents it. Any text up to
    /// [`MAX_ENROLLMENT_KEY`] bytes is accepted here, so that a wrong key of any shape is
    /// refused by the server in one way (after one Argon2id verification), not told apart by
    /// its form.
    EnrollmentKey,
    ENROLLMENT_KEY_PREFIX,
    |s| s.len() <= MAX_ENROLLMENT_KEY,
    IdError::EnrollmentKey
);

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: identifiers parse only when well formed, and keys never show in `Debug`.
    #[test]
    fn ids_validate_and_keys_stay_redacted() {
        let hex = "ab".repeat(32);
        assert!(format!("muid_{hex}").parse::<MachineId>().is_ok());
        assert!(
            format!("muid_{}", "AB".repeat(32))
                .parse::<MachineId>()
                .is_err()
        );
        assert!("muid_".parse::<MachineId>().is_err());
        assert!("lab-1".parse::<SiteCode>().is_ok());
        assert!("-lab".parse::<SiteCode>().is_err());
        assert!("Lab".parse::<SiteCode>().is_err());
        assert!("host.example".parse::<Hostname>().is_ok());
        assert!("host example".parse::<Hostname>().is_err());
        let key: MachineKey = format!("wmk_{hex}").parse().unwrap();
        assert!(!format!("{key:?}").contains(&hex));
        let ek: EnrollmentKey = "not-even-a-key".parse().unwrap();
        assert!(!format!("{ek:?}").contains("even"));
        assert!("x".repeat(129).parse::<EnrollmentKey>().is_err());
        let json = serde_json::to_string(&key).unwrap();
        assert_eq!(json, format!("\"wmk_{hex}\""));
        assert!(serde_json::from_str::<MachineKey>("\"wmk_short\"").is_err());
    }
}
