//! Which tier a caller holds on a listener, and why. uid 0 is always admin; otherwise the highest
//! of its user mapping and the mappings of its groups (primary and supplementary, as the kernel
//! reported them at connect), then capped by the listener's `max_tier`.

use warden_proto::Tier;
use warden_proto::messages::{Grant, GrantSource};

use crate::compile::{ListenerPolicy, Policy};
use crate::gate::PeerIdentity;

/// A caller's tier on one listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Effective {
    /// What the mappings grant, before the listener cap.
    pub granted: Grant,
    /// What applies: the grant capped by the listener.
    pub tier: Tier,
    /// Whether the listener lowered the grant.
    pub capped: bool,
}

impl Policy {
    /// The tier the mappings grant `peer`, wherever it connects.
    pub fn grant(&self, peer: &PeerIdentity) -> Grant {
        if peer.uid.is_root() {
            return Grant {
                tier: Tier::Admin,
                source: GrantSource::Root,
            };
        }
        if self.tiers.dev_admin == Some(peer.uid) {
            return Grant {
                tier: Tier::Admin,
                source: GrantSource::DevMode,
            };
        }
        let mut best = Grant {
            tier: Tier::None,
            source: GrantSource::Unmapped,
        };
        if let Some((tier, name)) = self.tiers.users.get(&peer.uid) {
            best = Grant {
                tier: *tier,
                source: GrantSource::User { name: name.clone() },
            };
        }
        for gid in std::iter::once(&peer.gid).chain(&peer.groups) {
            if let Some((tier, name)) = self.tiers.groups.get(gid)
                && *tier > best.tier
            {
                best = Grant {
                    tier: *tier,
                    source: GrantSource::Group {
                        name: name.clone(),
                        gid: *gid,
                    },
                };
            }
        }
        best
    }

    /// The tier `peer` holds on `listener`.
    pub fn effective(&self, peer: &PeerIdentity, listener: &ListenerPolicy) -> Effective {
        let granted = self.grant(peer);
        let tier = granted.tier.min(listener.max_tier);
        Effective {
            capped: tier < granted.tier,
            tier,
            granted,
        }
    }
}

impl Effective {
    /// One sentence saying where the tier came from, for `whoami`.
    pub fn reason(&self, peer: &PeerIdentity, listener: &ListenerPolicy) -> String {
        let g = &self.granted;
        let mut s = match &g.source {
            GrantSource::Root => format!("{} as uid 0", g.tier),
            GrantSource::DevMode => format!("{} as the user running this --dev daemon", g.tier),
            GrantSource::User { name } => {
                format!("{} by the [tiers.users] entry for {name}", g.tier)
            }
            GrantSource::Group { name, gid } => {
                format!("{} as a member of group {name} ({gid})", g.tier)
            }
            GrantSource::Unmapped => format!(
                "none: no [tiers] mapping covers uid {} or its groups",
                peer.uid
            ),
        };
        if self.capped {
            s.push_str(&format!(
                ", capped at {} by listener {}",
                self.tier,
                listener.path.display()
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::load;
    use warden_proto::{Gid, Uid};

    fn peer(uid: u32, gid: u32, groups: &[u32]) -> PeerIdentity {
        PeerIdentity::new(
            Uid(uid),
            Gid(gid),
            groups.iter().copied().map(Gid).collect(),
        )
    }

    const CONF: &str = r#"
[tiers]
admin_groups = ["wadm"]
operator_groups = ["wops"]
read_only_groups = ["wro"]
[tiers.users]
alice = "read_only"
[[listener]]
path = "/run/w/main.sock"
[[listener]]
path = "/run/w/ro.sock"
max_tier = "read_only"
"#;

    #[test]
    fn the_highest_mapping_wins_and_the_listener_caps_it() {
        let p = load(CONF).unwrap().policy;
        let (main, ro) = (&p.listeners[0], &p.listeners[1]);

        let root = peer(0, 0, &[]);
        assert_eq!(p.effective(&root, main).tier, Tier::Admin);
        let capped = p.effective(&root, ro);
        assert_eq!((capped.tier, capped.capped), (Tier::ReadOnly, true));
        assert!(
            capped
                .reason(&root, ro)
                .contains("capped at read_only by listener /run/w/ro.sock")
        );

        // alice is read_only by name but operator through a supplementary group.
        let alice = peer(1001, 1001, &[1001, 1500]);
        let e = p.effective(&alice, main);
        assert_eq!(e.tier, Tier::Operator);
        assert_eq!(
            e.granted.source,
            GrantSource::Group {
                name: "wops".into(),
                gid: Gid(1500)
            }
        );
        assert_eq!(
            e.reason(&alice, main),
            "operator as a member of group wops (1500)"
        );

        // The primary gid counts as a group.
        assert_eq!(p.effective(&peer(2000, 1600, &[]), main).tier, Tier::Admin);

        let alice_alone = peer(1001, 1001, &[]);
        let e = p.effective(&alice_alone, main);
        assert_eq!(e.tier, Tier::ReadOnly);
        assert!(
            e.reason(&alice_alone, main)
                .contains("[tiers.users] entry for alice")
        );

        let stranger = peer(54321, 54321, &[7, 8, 9]);
        let e = p.effective(&stranger, main);
        assert_eq!(
            (e.tier, &e.granted.source),
            (Tier::None, &GrantSource::Unmapped)
        );
        assert!(e.reason(&stranger, main).contains("uid 54321"));
    }

    #[test]
    fn the_dev_admin_is_admin_and_nobody_else_is() {
        let mut p = load("").unwrap().policy;
        p.grant_dev_admin(Uid(1000));
        let l = p.listeners[0].clone();
        assert_eq!(
            p.effective(&peer(1000, 1000, &[]), &l).granted.source,
            GrantSource::DevMode
        );
        assert_eq!(p.effective(&peer(1001, 1000, &[1000]), &l).tier, Tier::None);
    }
}
