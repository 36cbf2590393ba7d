//! The endpoint table: every method's required tier, required ops and whether it mutates, in one
//! place. The match is exhaustive, so a new [`Method`] does not compile until it is declared here.

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
    };
    EndpointSpec {
        method,
        tier,
        ops,
        mutating,
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
