//! Newtypes for the operating-system identifiers that travel on the wire, so a uid can never be
//! passed where a gid or pid is expected.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A user id as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Uid(pub u32);

/// A group id as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Gid(pub u32);

/// A process id as the kernel reports it in the daemon's pid namespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct Pid(pub i32);

/// A job's id: `job_` and 16 lowercase hex digits, random, so ids reveal nothing about other
/// callers' jobs.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId(String);

impl JobId {
    /// A job id from 8 random bytes.
    pub fn from_random(bytes: [u8; 8]) -> JobId {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        JobId(format!("job_{hex}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for JobId {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = s.len() == 20
            && s.starts_with("job_")
            && s[4..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if ok {
            Ok(JobId(s))
        } else {
            Err("a job id is `job_` and 16 lowercase hex digits".into())
        }
    }
}

impl From<JobId> for String {
    fn from(j: JobId) -> String {
        j.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

/// An action's name: 1 to 64 of `a-z 0-9 _ -`, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ActionName(String);

impl ActionName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ActionName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(ActionName(s))
        } else {
            Err(format!(
                "action name `{}` must be 1 to 64 of a-z, 0-9, `_`, `-`, starting with a letter",
                s.escape_debug()
            ))
        }
    }
}

impl From<ActionName> for String {
    fn from(a: ActionName) -> String {
        a.0
    }
}

impl fmt::Display for ActionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&self.0)
    }
}

impl Uid {
    pub const ROOT: Uid = Uid(0);

    pub fn is_root(self) -> bool {
        self == Self::ROOT
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Display for Pid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_have_one_fixed_form() {
        let id = JobId::from_random([0xab; 8]);
        assert_eq!(id.as_str(), "job_abababababababab");
        assert_eq!(JobId::try_from(id.as_str().to_owned()).unwrap(), id);
        for bad in [
            "job_ABABABABABABABAB",
            "job_abc",
            "jab_abababababababab",
            "../../etc/passwd",
        ] {
            assert!(JobId::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }

    #[test]
    fn action_names_are_validated() {
        assert!(ActionName::try_from("restart-unit".to_owned()).is_ok());
        for bad in ["", "Restart", "1x", "a b", "a/b", &"x".repeat(65)] {
            assert!(ActionName::try_from(bad.to_owned()).is_err(), "{bad}");
        }
    }
}
