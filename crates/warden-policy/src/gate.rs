//! The gate: one pure function that decides whether a caller may make a request right now.
//! Handlers never check permissions themselves; the connection calls
//! [`Policy::authorize`] for every request and runs the handler only on [`Decision::Allow`].

use std::collections::BTreeMap;
use std::path::PathBuf;

use warden_proto::{ErrorKind, Gid, Pid, Request, Tier, Uid};

use crate::compile::{ListenerPolicy, Policy};
use crate::endpoints::{self, EndpointSpec};

/// Who is calling, as the kernel reported it at connect. Built by the daemon from
/// `SO_PEERCRED`/`SO_PEERGROUPS`/pidfd; built by hand in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity {
    pub uid: Uid,
    pub gid: Gid,
    pub pid: Pid,
    pub groups: Vec<Gid>,
    /// Executable path, verified under a pidfd; `None` when it could not be.
    pub exe: Option<PathBuf>,
    /// SHA-256 of the executable image, computed only when a guard needs it.
    pub exe_sha256: Option<[u8; 32]>,
}

impl PeerIdentity {
    /// An identity with no pid or executable, for tests and tools.
    pub fn new(uid: Uid, gid: Gid, groups: Vec<Gid>) -> Self {
        PeerIdentity {
            uid,
            gid,
            pid: Pid(0),
            groups,
            exe: None,
            exe_sha256: None,
        }
    }
}

/// The daemon's changeable state the gate looks at.
#[derive(Debug, Clone, Copy)]
pub struct Runtime<'a> {
    /// Capability toggles in force.
    pub ops: &'a BTreeMap<String, bool>,
}

/// The gate's answer. Callers must destructure it; a `Deny` carries the kind and a reason fit to
/// show the caller.
#[must_use = "a request may only proceed on Decision::Allow"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// The caller's tier on this listener.
        tier: Tier,
    },
    Deny {
        tier: Tier,
        kind: ErrorKind,
        reason: String,
    },
}

impl Policy {
    /// Decides `request` from `peer` arriving on `listener`.
    pub fn authorize(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        request: &Request,
        runtime: &Runtime<'_>,
    ) -> Decision {
        self.decide(peer, listener, endpoints::spec(request.method()), runtime)
    }

    /// The decision for an endpoint declaration; [`Policy::authorize`] looks the declaration up.
    pub fn decide(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        spec: EndpointSpec,
        runtime: &Runtime<'_>,
    ) -> Decision {
        let tier = self.effective(peer, listener).tier;
        let deny = |kind, reason: String| Decision::Deny { tier, kind, reason };
        if tier < spec.tier {
            return deny(
                ErrorKind::Forbidden,
                format!(
                    "{} needs tier {}; you have {}",
                    spec.method, spec.tier, tier
                ),
            );
        }
        for op in spec.ops {
            if !runtime.ops.get(*op).copied().unwrap_or(false) {
                return deny(
                    ErrorKind::Forbidden,
                    format!("{} needs ops `{op}`, which is switched off", spec.method),
                );
            }
        }
        if spec.mutating {
            if let Some(uids) = &self.guards.mutating_uids
                && !uids.contains(&peer.uid)
            {
                return deny(
                    ErrorKind::Forbidden,
                    format!(
                        "{} changes state and uid {} is not in guards.mutating_uids",
                        spec.method, peer.uid
                    ),
                );
            }
            if let Some(exes) = &self.guards.mutating_exes {
                let allowed = exes.iter().any(|g| {
                    peer.exe.as_deref() == Some(g.path.as_path())
                        && g.sha256.is_none_or(|want| peer.exe_sha256 == Some(want))
                });
                if !allowed {
                    let exe = peer
                        .exe
                        .as_ref()
                        .map_or("an unverified executable".to_owned(), |p| {
                            p.display().to_string()
                        });
                    return deny(
                        ErrorKind::Forbidden,
                        format!(
                            "{} changes state and {exe} is not in guards.mutating_exes",
                            spec.method
                        ),
                    );
                }
            }
        }
        Decision::Allow { tier }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::load;
    use warden_proto::Method;
    use warden_proto::request::HelloParams;

    fn peer(uid: u32, groups: &[u32]) -> PeerIdentity {
        PeerIdentity::new(
            Uid(uid),
            Gid(uid),
            groups.iter().copied().map(Gid).collect(),
        )
    }

    fn ops(pairs: &[(&str, bool)]) -> BTreeMap<String, bool> {
        pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn allowed(d: Decision) -> bool {
        matches!(d, Decision::Allow { .. })
    }

    const CONF: &str = r#"
[tiers]
operator_groups = ["wops"]
read_only_groups = ["wro"]
[[listener]]
path = "/run/w/main.sock"
[[listener]]
path = "/run/w/ro.sock"
max_tier = "read_only"
"#;

    fn hello() -> Request {
        Request::Hello(
            serde_json::from_str::<HelloParams>(r#"{"protocol":1,"client":"t"}"#).unwrap(),
        )
    }

    /// Pins the decision table for this issue's methods across tiers and listeners.
    #[test]
    fn decision_table_for_the_foundation_methods() {
        let p = load(CONF).unwrap().policy;
        let o = ops(&[]);
        let rt = Runtime { ops: &o };
        let (main, ro) = (&p.listeners[0], &p.listeners[1]);
        let nobody = peer(54321, &[]);
        let reader = peer(1100, &[1400]);
        let operator = peer(1200, &[1500]);
        let root = peer(0, &[]);

        let requests = [
            hello(),
            Request::Health,
            Request::Version,
            Request::Whoami,
            Request::Status,
        ];
        for req in &requests {
            let open = matches!(
                req.method(),
                Method::Hello | Method::Health | Method::Version
            );
            assert_eq!(
                allowed(p.authorize(&nobody, main, req, &rt)),
                open,
                "{:?}",
                req.method()
            );
            for who in [&reader, &operator, &root] {
                assert!(allowed(p.authorize(who, main, req, &rt)));
                assert!(allowed(p.authorize(who, ro, req, &rt)));
            }
        }
        let Decision::Deny { tier, kind, reason } =
            p.authorize(&nobody, main, &Request::Status, &rt)
        else {
            panic!("tier none must not read status");
        };
        assert_eq!((tier, kind), (Tier::None, ErrorKind::Forbidden));
        assert_eq!(reason, "status needs tier read_only; you have none");
        assert_eq!(
            p.authorize(&root, ro, &Request::Status, &rt),
            Decision::Allow {
                tier: Tier::ReadOnly
            }
        );
    }

    fn mutating(tier: Tier, ops: &'static [&'static str]) -> EndpointSpec {
        EndpointSpec {
            method: Method::Status,
            tier,
            ops,
            mutating: true,
        }
    }

    #[test]
    fn required_ops_must_be_switched_on() {
        let p = load(CONF).unwrap().policy;
        let l = &p.listeners[0];
        let spec = EndpointSpec {
            ops: &["storage"],
            mutating: false,
            ..mutating(Tier::Operator, &[])
        };
        let on = ops(&[("storage", true)]);
        let off = ops(&[("storage", false)]);
        let missing = ops(&[]);
        let op = peer(1200, &[1500]);
        assert!(allowed(p.decide(&op, l, spec, &Runtime { ops: &on })));
        for o in [&off, &missing] {
            let d = p.decide(&op, l, spec, &Runtime { ops: o });
            assert!(
                matches!(&d, Decision::Deny { reason, .. } if reason.contains("`storage`")),
                "{d:?}"
            );
        }
    }

    #[test]
    fn the_listener_cap_stops_mutating_calls_even_for_root() {
        let p = load(CONF).unwrap().policy;
        let o = ops(&[]);
        let rt = Runtime { ops: &o };
        let d = p.decide(
            &peer(0, &[]),
            &p.listeners[1],
            mutating(Tier::Operator, &[]),
            &rt,
        );
        assert!(matches!(
            d,
            Decision::Deny {
                tier: Tier::ReadOnly,
                ..
            }
        ));
    }

    #[test]
    fn guards_apply_to_mutating_requests_only_and_all_must_pass() {
        let text = format!(
            "{CONF}\n[guards]\nmutating_uids = [0, 1200]\nmutating_exes = [{{path = \"/usr/bin/ok\", sha256 = \"{}\"}}]\n",
            "ab".repeat(32)
        );
        let p = load(&text).unwrap().policy;
        assert!(p.guards.needs_exe_digest());
        let l = &p.listeners[0];
        let o = ops(&[]);
        let rt = Runtime { ops: &o };
        let spec = mutating(Tier::Operator, &[]);

        let mut op = peer(1200, &[1500]);
        // Read-only requests ignore guards.
        assert!(allowed(p.authorize(&op, l, &Request::Status, &rt)));
        // No verified executable: denied.
        assert!(!allowed(p.decide(&op, l, spec, &rt)));
        op.exe = Some("/usr/bin/ok".into());
        // Right path, wrong or missing digest: denied.
        assert!(!allowed(p.decide(&op, l, spec, &rt)));
        op.exe_sha256 = Some([0xcd; 32]);
        assert!(!allowed(p.decide(&op, l, spec, &rt)));
        op.exe_sha256 = Some([0xab; 32]);
        assert!(allowed(p.decide(&op, l, spec, &rt)));

        // Same executable, uid not listed: denied by the uid guard.
        let mut other = peer(1300, &[1500]);
        other.exe = op.exe.clone();
        other.exe_sha256 = op.exe_sha256;
        let d = p.decide(&other, l, spec, &rt);
        assert!(
            matches!(&d, Decision::Deny { reason, .. } if reason.contains("mutating_uids")),
            "{d:?}"
        );
    }
}
