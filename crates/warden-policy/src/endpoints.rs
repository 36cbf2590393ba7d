//! The endpoint table: every method's required tier, required ops and whether it mutates, in one
//! place. The match is exhaustive, so a new [`Method`] does not compile until it is declared here.
//!
//! Refinements live in the gate, next to this table: `job.start` must also meet the started
//! action's own declaration, `job.list` with `scope = "all"` needs `operator`, and
//! `host.identity` is also open to the fleet agent's uid while `[fleet]` is enabled. Methods about
//! one job are also limited to the job's requester and admins.

use std::borrow::Cow;

use warden_proto::{Method, Tier};

/// What calling one method requires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointSpec {
    pub method: Method,
    /// Lowest tier that may call it.
    pub tier: Tier,
    /// Ops toggles that must all be on.
    pub ops: &'static [&'static str],
    /// Whether it changes state (mutating requests also pass the `[guards]`).
    pub mutating: bool,
}

/// The declaration of `method`.
pub fn spec(method: Method) -> EndpointSpec {
    let (tier, ops, mutating): (Tier, &'static [&'static str], bool) = match method {
        Method::Hello => (Tier::None, &[], false),
        Method::Health => (Tier::None, &[], false),
        Method::Version => (Tier::None, &[], false),
        Method::Whoami => (Tier::ReadOnly, &[], false),
        Method::Status => (Tier::ReadOnly, &[], false),
        Method::ActionsList => (Tier::ReadOnly, &[], false),
        Method::AuditVerify | Method::AuditQuery => (Tier::Admin, &[], false),
        Method::OpsGet => (Tier::ReadOnly, &[], false),
        Method::AlertsList => (Tier::Operator, &[], false),
        Method::EventsSubscribe => (Tier::ReadOnly, &[], false),
        Method::PolicyReload => (Tier::Admin, &[], true),
        Method::PolicyExplain | Method::Doctor => (Tier::Admin, &[], false),
        Method::OpsSet => (Tier::Admin, &[], true),
        // The brakes themselves must work while engaged: not mutating, so a lockdown never
        // refuses its own release.
        Method::LockdownEngage | Method::LockdownRelease => (Tier::Admin, &[], false),
        Method::ActionsDescribe => (Tier::ReadOnly, &[], false),
        // The action's own tier, ops and mutating flag apply on top.
        Method::JobStart => (Tier::ReadOnly, &[], false),
        Method::JobGet => (Tier::ReadOnly, &[], false),
        // scope = "all" needs operator.
        Method::JobList => (Tier::ReadOnly, &[], false),
        // Stopping work adds no effect; ownership decides who may.
        Method::JobCancel => (Tier::ReadOnly, &[], false),
        Method::JobWait => (Tier::ReadOnly, &[], false),
        Method::JobLogs => (Tier::ReadOnly, &[], false),
        Method::JobWatch => (Tier::ReadOnly, &[], false),
        // The kind's own tier applies on top.
        Method::ResourceCreate => (Tier::ReadOnly, &[], true),
        // Ownership decides who may: the owner or an admin.
        Method::ResourceDelete => (Tier::ReadOnly, &[], true),
        Method::ResourceList | Method::ResourceGet => (Tier::ReadOnly, &[], false),
        // Admins, and the `[fleet] agent_user` whatever its tier (the gate's refinement).
        Method::HostIdentity => (Tier::Admin, &[], false),
    };
    EndpointSpec {
        method,
        tier,
        ops,
        mutating,
    }
}

/// What a request needs from its caller: an endpoint's declaration, or an action's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Requirement<'a> {
    /// What is asked for, for messages: a method name or `action NAME`.
    pub what: Cow<'a, str>,
    pub tier: Tier,
    pub ops: Vec<&'a str>,
    pub mutating: bool,
}

impl EndpointSpec {
    pub fn requirement(&self) -> Requirement<'static> {
        Requirement {
            what: Cow::Borrowed(self.method.as_str()),
            tier: self.tier,
            ops: self.ops.to_vec(),
            mutating: self.mutating,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: every method of the protocol has a declaration, and `none` reaches only the three
    /// greeting methods.
    #[test]
    fn every_method_is_declared_and_none_reaches_only_the_greeting_methods() {
        for m in Method::ALL {
            let s = spec(m);
            assert_eq!(s.method, m);
            let open = matches!(m, Method::Hello | Method::Health | Method::Version);
            assert_eq!(s.tier == Tier::None, open, "{m}");
        }
    }

    /// Pins: the protocol document lists every method with the tier the table requires.
    #[test]
    fn the_protocol_document_states_each_declaration() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../docs/PROTOCOL.md"
        ))
        .expect("docs/PROTOCOL.md exists");
        for m in Method::ALL {
            let s = spec(m);
            let row = format!(
                "| `{}` | {} | {} |",
                m,
                s.tier,
                if s.mutating { "yes" } else { "no" }
            );
            assert!(doc.contains(&row), "docs/PROTOCOL.md lacks the row `{row}`");
        }
    }
}
