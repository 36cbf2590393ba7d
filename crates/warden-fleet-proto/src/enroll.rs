//! `POST /v1/enroll`: what a host sends and what it gets back.
//!
//! The status code carries the outcome (201 new, 200 the same machine again, 202 pending, 401
//! rejected, 403 banned, 409 bound to another site, 429 and 503 with `Retry-After`); the body of
//! a 2xx is [`Enrolled`], of anything else an [`crate::ErrorBody`].

use serde::{Deserialize, Serialize};

use crate::ids::{EnrollmentKey, Hostname, MachineId, MachineKey, SiteCode};

/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/v1/enroll";

/// Longest label value, and most tags.
pub const MAX_LABEL: usize = 64;
pub const MAX_TAGS: usize = 16;

/// `POST /v1/enroll`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub site_code: SiteCode,
    pub enrollment_key: EnrollmentKey,
    pub machine_id: MachineId,
    pub hostname: Hostname,
    #[serde(default)]
    pub labels: Labels,
}

/// What the host says about itself, for operators to filter by.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Labels {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub department: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_type: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

impl Labels {
    /// Checks the sizes and characters of every label: at most [`MAX_TAGS`] tags, each value
    /// at most [`MAX_LABEL`] characters without control characters.
    pub fn check(&self) -> Result<(), String> {
        let one = |what: &str, v: &str| {
            if v.chars().count() > MAX_LABEL || v.chars().any(char::is_control) {
                Err(format!(
                    "label {what} must be at most {MAX_LABEL} characters, without control characters"
                ))
            } else {
                Ok(())
            }
        };
        for (what, v) in [
            ("company", &self.company),
            ("site", &self.site),
            ("department", &self.department),
            ("device_type", &self.device_type),
        ] {
            if let Some(v) = v {
                one(what, v)?;
            }
        }
        if self.tags.len() > MAX_TAGS {
            return Err(format!("at most {MAX_TAGS} tags"));
        }
        self.tags.iter().try_for_each(|t| one("tag", t))
    }
}

/// A machine's standing at the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MachineState {
    /// Enrolled; may hold a link.
    Active,
    /// A likely clone waiting for an operator; no key, no link.
    Pending,
    /// Removed by an operator; may enroll again.
    Removed,
    /// A retired key was presented again: no link and no dispatch until an admin clears it.
    Quarantined,
}

impl MachineState {
    pub fn as_str(self) -> &'static str {
        match self {
            MachineState::Active => "active",
            MachineState::Pending => "pending",
            MachineState::Removed => "removed",
            MachineState::Quarantined => "quarantined",
        }
    }
}

/// How an enrollment that got a 2xx went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Disposition {
    /// 201: a machine first seen.
    New,
    /// 200: the same machine again at its site; its older keys are revoked.
    Reuse,
    /// 202: a likely clone; no key until an operator approves.
    Pending,
}

/// The body of a 2xx answer to an enrollment. `machine_key` is present exactly when one was
/// issued (201, 200).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Enrolled {
    pub machine_id: MachineId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine_key: Option<MachineKey>,
    pub state: MachineState,
    pub disposition: Disposition,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: the enrollment request refuses unknown fields and malformed identifiers at parse
    /// time, and labels are bounded.
    #[test]
    fn enroll_request_parses_strictly() {
        let id = format!("muid_{}", "0".repeat(64));
        let ok = format!(
            r#"{{"site_code":"lab","enrollment_key":"wek_x","machine_id":"{id}","hostname":"h1"}}"#
        );
        let r: EnrollRequest = serde_json::from_str(&ok).unwrap();
        assert_eq!(r.labels, Labels::default());
        let extra = ok.replace("\"h1\"", "\"h1\",\"owner\":\"root\"");
        assert!(serde_json::from_str::<EnrollRequest>(&extra).is_err());
        let bad_id = ok.replace(&id, "muid_1");
        assert!(serde_json::from_str::<EnrollRequest>(&bad_id).is_err());
        let many = Labels {
            tags: vec!["t".into(); MAX_TAGS + 1],
            ..Labels::default()
        };
        assert!(many.check().is_err());
    }
}
