//! `[fleet]`: whether this host takes part in a fleet, which local user the fleet agent runs as,
//! the most a fleet principal may reach here, and the files the machine identity is read from.
//! This module owns the section's file model and its compiled form; it reads no file and
//! resolves the agent's name only through the caller's [`Directory`]. The identity files are
//! read by the daemon, never here.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use toml::Spanned;
use warden_proto::{Tier, Uid};

use crate::compile::Directory;
use crate::config::{AbsPath, Problem, line_of};

/// The agent user assumed when `[fleet]` names none: the system user `warden-agent` runs as.
pub const DEFAULT_AGENT_USER: &str = "warden-agent";

/// `[fleet]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetSection {
    /// Off by default: no uid is the fleet agent, and only admins may ask `host.identity`.
    pub enabled: bool,
    /// The user `warden-agent` runs as ([`DEFAULT_AGENT_USER`] when absent).
    pub agent_user: Option<Spanned<String>>,
    /// The most a fleet principal (the agent acting for `fleet:<operator>`) may reach here.
    pub max_tier: Tier,
    pub identity: IdentitySection,
}

impl Default for FleetSection {
    fn default() -> Self {
        FleetSection {
            enabled: false,
            agent_user: None,
            max_tier: Tier::Operator,
            identity: IdentitySection::default(),
        }
    }
}

/// `[fleet.identity]`: where the hardware signals of the machine id are read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IdentitySection {
    pub product_uuid: AbsPath,
    pub board_serial: AbsPath,
    pub disk_serial: DiskSerial,
    pub machine_id: AbsPath,
}

impl Default for IdentitySection {
    fn default() -> Self {
        let sources = IdentitySources::default();
        IdentitySection {
            product_uuid: AbsPath(sources.product_uuid),
            board_serial: AbsPath(sources.board_serial),
            disk_serial: sources.disk_serial,
            machine_id: AbsPath(sources.machine_id),
        }
    }
}

/// Where the root disk's serial comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskSerial {
    /// `"root-disk"`: the whole disk holding `/`, found through sysfs when the identity is
    /// computed (its `serial`, or `device/serial`).
    RootDisk,
    /// A file holding the serial.
    File(PathBuf),
}

/// The value of `disk_serial` that means "find the disk holding `/`".
pub const ROOT_DISK: &str = "root-disk";

impl<'de> Deserialize<'de> for DiskSerial {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == ROOT_DISK {
            return Ok(DiskSerial::RootDisk);
        }
        let path: AbsPath =
            AbsPath::deserialize(serde::de::value::StringDeserializer::<D::Error>::new(s))
                .map_err(|e| serde::de::Error::custom(format!("{e}, or \"{ROOT_DISK}\"")))?;
        Ok(DiskSerial::File(path.0))
    }
}

/// The files the machine identity is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentitySources {
    pub product_uuid: PathBuf,
    pub board_serial: PathBuf,
    pub disk_serial: DiskSerial,
    pub machine_id: PathBuf,
}

impl Default for IdentitySources {
    /// The real locations on Linux.
    fn default() -> Self {
        IdentitySources {
            product_uuid: PathBuf::from("/sys/class/dmi/id/product_uuid"),
            board_serial: PathBuf::from("/sys/class/dmi/id/board_serial"),
            disk_serial: DiskSerial::RootDisk,
            machine_id: PathBuf::from("/etc/machine-id"),
        }
    }
}

/// `[fleet]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetPolicy {
    pub enabled: bool,
    /// The agent's uid and name as configured; resolved at load. `None` when fleet is off and
    /// the user does not exist.
    pub agent: Option<(Uid, String)>,
    /// The cap on a fleet principal's tier on this host (kept for remote dispatch).
    pub max_tier: Tier,
    pub identity: IdentitySources,
}

impl Default for FleetPolicy {
    fn default() -> Self {
        FleetPolicy {
            enabled: false,
            agent: None,
            max_tier: Tier::Operator,
            identity: IdentitySources::default(),
        }
    }
}

impl FleetPolicy {
    /// The uid acting as the fleet agent now: only while fleet is enabled.
    pub fn agent_uid(&self) -> Option<Uid> {
        if self.enabled {
            self.agent.as_ref().map(|(uid, _)| *uid)
        } else {
            None
        }
    }
}

/// Compiles `[fleet]`. When enabled, an agent user that does not exist (or is root) is an
/// error; when disabled, a named one that does not exist is a warning.
pub(crate) fn compile_fleet(
    section: Option<&Spanned<FleetSection>>,
    text: &str,
    dir: &dyn Directory,
    errors: &mut Vec<Problem>,
    warnings: &mut Vec<Problem>,
) -> FleetPolicy {
    let Some(spanned) = section else {
        return FleetPolicy::default();
    };
    let f = spanned.get_ref();
    let (name, line) = match &f.agent_user {
        Some(n) => (n.get_ref().clone(), Some(line_of(text, &n.span()))),
        None => (
            DEFAULT_AGENT_USER.to_owned(),
            Some(line_of(text, &spanned.span())),
        ),
    };
    let looked_up = f.enabled || f.agent_user.is_some();
    let mut agent = None;
    if looked_up {
        match dir.user(&name) {
            Ok(Some((uid, _))) if uid.0 == 0 => errors.push(Problem {
                line,
                column: None,
                message: format!(
                    "[fleet] agent_user `{name}` is root; warden-agent talks to the network and \
                     must run as an unprivileged user of its own"
                ),
            }),
            Ok(Some((uid, _))) => agent = Some((uid, name.clone())),
            Ok(None) => {
                let problem = Problem {
                    line,
                    column: None,
                    message: format!(
                        "[fleet] agent_user `{name}` does not exist; create the user warden-agent \
                         runs as (`useradd --system --no-create-home --shell /usr/sbin/nologin \
                         {name}`) or set agent_user to it{}",
                        if f.enabled {
                            ", or set enabled = false"
                        } else {
                            " (fleet is disabled, so nothing uses it yet)"
                        }
                    ),
                };
                if f.enabled {
                    errors.push(problem);
                } else {
                    warnings.push(problem);
                }
            }
            Err(e) => errors.push(Problem {
                line,
                column: None,
                message: format!("cannot look up [fleet] agent_user `{name}`: {e}"),
            }),
        }
    }
    if f.enabled && f.max_tier == Tier::Admin {
        warnings.push(Problem {
            line: Some(line_of(text, &spanned.span())),
            column: None,
            message: "[fleet] max_tier = \"admin\" lets fleet operators do everything root's \
                      admins can on this host; \"operator\" is the default"
                .to_owned(),
        });
    }
    let id = &f.identity;
    FleetPolicy {
        enabled: f.enabled,
        agent,
        max_tier: f.max_tier,
        identity: IdentitySources {
            product_uuid: id.product_uuid.0.clone(),
            board_serial: id.board_serial.0.clone(),
            disk_serial: id.disk_serial.clone(),
            machine_id: id.machine_id.0.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::load;

    /// Pins: without `[fleet]`, fleet is off, the cap is operator and the identity is read from
    /// the real locations (the root disk found through sysfs).
    #[test]
    fn no_fleet_section_means_off_with_the_real_identity_paths() {
        let p = load("").unwrap().policy;
        assert_eq!(p.fleet, FleetPolicy::default());
        assert!(!p.fleet.enabled);
        assert_eq!(p.fleet.agent_uid(), None);
        assert_eq!(p.fleet.max_tier, Tier::Operator);
        let id = &p.fleet.identity;
        assert_eq!(
            id.product_uuid,
            PathBuf::from("/sys/class/dmi/id/product_uuid")
        );
        assert_eq!(
            id.board_serial,
            PathBuf::from("/sys/class/dmi/id/board_serial")
        );
        assert_eq!(id.disk_serial, DiskSerial::RootDisk);
        assert_eq!(id.machine_id, PathBuf::from("/etc/machine-id"));
    }

    /// Pins: an enabled fleet resolves its agent user to a uid, keeps max_tier, and takes
    /// identity paths from the file; the agent uid counts only while enabled.
    #[test]
    fn an_enabled_fleet_resolves_its_agent_and_paths() {
        let text = r#"
[fleet]
enabled = true
agent_user = "alice"
max_tier = "read_only"
[fleet.identity]
product_uuid = "/fx/uuid"
board_serial = "/fx/board"
disk_serial = "/fx/disk"
machine_id = "/fx/machine-id"
"#;
        let l = load(text).unwrap();
        assert!(l.warnings.is_empty(), "{:?}", l.warnings);
        let f = l.policy.fleet;
        assert_eq!(f.agent, Some((Uid(1001), "alice".to_owned())));
        assert_eq!(f.agent_uid(), Some(Uid(1001)));
        assert_eq!(f.max_tier, Tier::ReadOnly);
        assert_eq!(f.identity.disk_serial, DiskSerial::File("/fx/disk".into()));
        assert_eq!(f.identity.machine_id, PathBuf::from("/fx/machine-id"));
        let off = load("[fleet]\nagent_user = \"alice\"\n")
            .unwrap()
            .policy
            .fleet;
        assert_eq!(off.agent_uid(), None, "a disabled fleet has no agent");
    }

    /// Pins: a missing agent user is an error at its line when fleet is enabled (saying what
    /// to do), a warning when disabled; an enabled fleet without agent_user looks up
    /// `warden-agent`; root may not be the agent.
    #[test]
    fn a_missing_or_root_agent_user_is_reported() {
        let e = load("[fleet]\nenabled = true\nagent_user = \"ghost\"\n").unwrap_err();
        assert_eq!(e.problems.len(), 1, "{e}");
        assert_eq!(e.problems[0].line, Some(3));
        let m = &e.problems[0].message;
        assert!(m.contains("agent_user `ghost` does not exist"), "{m}");
        assert!(m.contains("useradd --system"), "{m}");

        let e = load("[fleet]\nenabled = true\n").unwrap_err();
        assert!(
            e.problems[0]
                .message
                .contains("agent_user `warden-agent` does not exist"),
            "{e}"
        );

        let l = load("[fleet]\nagent_user = \"ghost\"\n").unwrap();
        assert_eq!(l.warnings.len(), 1);
        assert!(l.warnings[0].message.contains("fleet is disabled"));
        assert_eq!(l.policy.fleet.agent, None);
        // Disabled and unnamed: nothing is looked up, nothing is said.
        assert!(load("[fleet]\n").unwrap().warnings.is_empty());

        let e = load("[fleet]\nenabled = true\nagent_user = \"root\"\n").unwrap_err();
        assert!(e.problems[0].message.contains("is root"), "{e}");
    }

    /// Pins: the section refuses unknown keys and relative identity paths, and `disk_serial`
    /// takes a path or "root-disk" only.
    #[test]
    fn bad_fleet_keys_and_paths_are_errors_at_their_lines() {
        for (text, line, needle) in [
            ("[fleet]\nenable = true\n", 2, "unknown field `enable`"),
            ("[fleet]\nmax_tier = \"root\"\n", 2, "unknown variant"),
            ("[fleet.identity]\nproduct_uuid = \"uuid\"\n", 2, "absolute"),
            ("[fleet.identity]\ndisk_serial = \"sda\"\n", 2, "root-disk"),
            ("[fleet.identity]\nserial = \"/x\"\n", 2, "unknown field"),
        ] {
            let e = load(text).unwrap_err();
            assert_eq!(e.problems[0].line, Some(line), "{text}: {e}");
            assert!(e.problems[0].message.contains(needle), "{text}: {e}");
        }
    }

    /// Pins: letting fleet operators reach admin loads, with a warning.
    #[test]
    fn an_admin_cap_for_the_fleet_is_warned_about() {
        let l =
            load("[fleet]\nenabled = true\nagent_user = \"bob\"\nmax_tier = \"admin\"\n").unwrap();
        assert_eq!(l.policy.fleet.max_tier, Tier::Admin);
        assert!(
            l.warnings[0].message.contains("max_tier = \"admin\""),
            "{:?}",
            l.warnings
        );
    }

    /// Pins the gate's table for `host.identity`: admins (root, an admin group) and the
    /// enabled fleet's agent uid are allowed; an operator, an unmapped user, and the agent
    /// uid of a disabled fleet are refused `forbidden`; explain says why the agent passes.
    #[test]
    fn host_identity_is_for_admins_and_the_enabled_fleet_agent() {
        use std::collections::BTreeMap;

        use warden_proto::{ErrorKind, Gid, Request};

        use crate::gate::{Decision, PeerIdentity, Runtime, Target};

        let conf = |enabled: bool| {
            format!(
                "[tiers]\nadmin_groups = [\"wadm\"]\noperator_groups = [\"wops\"]\n\
                 [fleet]\nenabled = {enabled}\nagent_user = \"alice\"\n"
            )
        };
        let ops = BTreeMap::new();
        let rt = Runtime {
            ops: &ops,
            lockdown: None,
            target: Target::Nothing,
        };
        let peer = |uid: u32, groups: &[u32]| {
            PeerIdentity::new(
                Uid(uid),
                Gid(uid),
                groups.iter().copied().map(Gid).collect(),
            )
        };
        let on = load(&conf(true)).unwrap().policy;
        let off = load(&conf(false)).unwrap().policy;
        let main = &on.listeners[0];
        let ask = |p: &crate::Policy, who: &PeerIdentity| {
            p.authorize(who, &p.listeners[0], &Request::HostIdentity, &rt)
        };
        let agent = peer(1001, &[]);
        assert!(matches!(
            ask(&on, &agent),
            Decision::Allow {
                tier: Tier::None,
                ..
            }
        ));
        assert!(matches!(ask(&on, &peer(0, &[])), Decision::Allow { .. }));
        assert!(matches!(
            ask(&on, &peer(1200, &[1600])),
            Decision::Allow { .. }
        ));
        for (policy, who) in [
            (&on, peer(1300, &[1500])),
            (&on, peer(1002, &[])),
            (&off, agent.clone()),
        ] {
            let Decision::Deny { kind, reason, .. } = ask(policy, &who) else {
                panic!("uid {} got host.identity", who.uid);
            };
            assert_eq!(kind, ErrorKind::Forbidden);
            assert!(
                reason.contains("host.identity needs tier admin"),
                "{reason}"
            );
        }
        let (d, steps) = on.explain(&agent, main, &Request::HostIdentity, &rt);
        assert!(matches!(d, Decision::Allow { .. }));
        assert!(
            steps
                .iter()
                .any(|s| s.contains("[fleet] agent_user `alice`")),
            "{steps:?}"
        );
    }

    /// Pins the gate's table for a fleet start: only the enabled fleet's agent may name an
    /// origin; the action must be `remote = true`; the principal's tier is the claim capped
    /// by `[fleet] max_tier` and the listener (never raised by the claim); ops, lockdown and
    /// guards apply as to a local request; `fleet_actions` lists what the cap lets through.
    #[test]
    fn a_fleet_start_is_judged_as_the_capped_fleet_principal() {
        use std::collections::BTreeMap;

        use warden_proto::request::{FleetOrigin, FleetTier, JobStartParams};
        use warden_proto::{ErrorKind, Gid, Request};

        use crate::gate::{Decision, Lockdown, PeerIdentity, Runtime, Target};

        let conf = |extra: &str| {
            format!(
                "[fleet]\nenabled = true\nagent_user = \"alice\"\nmax_tier = \"operator\"\n\
                 [ops]\nnet = true\n\
                 [[action]]\nname = \"greet\"\nargv = [\"/bin/true\"]\ntier = \"operator\"\n\
                 mutating = true\nremote = true\n\
                 [[action]]\nname = \"pull\"\nargv = [\"/bin/true\"]\ntier = \"read_only\"\n\
                 ops = [\"net\"]\nremote = true\n\
                 [[action]]\nname = \"wipe\"\nargv = [\"/bin/true\"]\ntier = \"admin\"\n\
                 remote = true\n\
                 [[action]]\nname = \"local\"\nargv = [\"/bin/true\"]\ntier = \"operator\"\n\
                 {extra}"
            )
        };
        let start = |action: &str, tier: FleetTier| {
            Request::JobStart(JobStartParams {
                action: action.to_owned().try_into().unwrap(),
                params: BTreeMap::new(),
                idempotency_key: None,
                fleet: Some(Box::new(FleetOrigin {
                    operator: "op".into(),
                    server: "hq".into(),
                    dispatch_id: format!("dsp_{}", "a".repeat(32)),
                    tier,
                })),
            })
        };
        let on = BTreeMap::from([("net".to_owned(), true)]);
        let off = BTreeMap::from([("net".to_owned(), false)]);
        let lock = Lockdown {
            reason: "incident".into(),
            by_uid: 0,
            since: "now".into(),
        };
        let rt = |ops, lockdown| Runtime {
            ops,
            lockdown,
            target: Target::Nothing,
        };
        let agent = PeerIdentity::new(Uid(1001), Gid(1001), vec![]);
        let other = PeerIdentity::new(Uid(1002), Gid(1002), vec![]);
        let root = PeerIdentity::new(Uid(0), Gid(0), vec![]);
        let p = load(&conf("")).unwrap().policy;
        let main = &p.listeners[0];
        let deny = |d: Decision| match d {
            Decision::Deny { kind, reason, .. } => (kind, reason),
            allow => panic!("allowed: {allow:?}"),
        };

        let d = p.authorize(
            &agent,
            main,
            &start("greet", FleetTier::Admin),
            &rt(&on, None),
        );
        assert!(
            matches!(
                d,
                Decision::Allow {
                    tier: Tier::Operator,
                    ..
                }
            ),
            "{d:?}"
        );
        for who in [&other, &root] {
            let (kind, reason) = deny(p.authorize(
                who,
                main,
                &start("greet", FleetTier::Operator),
                &rt(&on, None),
            ));
            assert_eq!(kind, ErrorKind::Forbidden);
            assert!(reason.contains("only the [fleet] agent_user"), "{reason}");
        }
        let (kind, reason) = deny(p.authorize(
            &agent,
            main,
            &start("local", FleetTier::Admin),
            &rt(&on, None),
        ));
        assert_eq!(kind, ErrorKind::Forbidden);
        assert!(reason.contains("not offered to the fleet"), "{reason}");
        let (kind, reason) = deny(p.authorize(
            &agent,
            main,
            &start("wipe", FleetTier::Admin),
            &rt(&on, None),
        ));
        assert_eq!(kind, ErrorKind::Forbidden);
        assert_eq!(reason, "action wipe needs tier admin; you have operator");
        let (kind, _) = deny(p.authorize(
            &agent,
            main,
            &start("pull", FleetTier::Operator),
            &rt(&off, None),
        ));
        assert_eq!(kind, ErrorKind::Forbidden, "ops off stops a fleet job");
        let (kind, _) = deny(p.authorize(
            &agent,
            main,
            &start("greet", FleetTier::Operator),
            &rt(&on, Some(&lock)),
        ));
        assert_eq!(kind, ErrorKind::LockedDown);

        // Guards hold the agent's uid like any other.
        let guarded = load(&conf("[guards]\nmutating_uids = [0]\n"))
            .unwrap()
            .policy;
        let (kind, reason) = deny(guarded.authorize(
            &agent,
            &guarded.listeners[0],
            &start("greet", FleetTier::Operator),
            &rt(&on, None),
        ));
        assert_eq!(kind, ErrorKind::Forbidden);
        assert!(reason.contains("guards.mutating_uids"), "{reason}");

        // A read_only cap: the claim cannot raise it, and the list shows only what it allows.
        let low = load(&conf("").replace("max_tier = \"operator\"", "max_tier = \"read_only\""))
            .unwrap()
            .policy;
        let (kind, _) = deny(low.authorize(
            &agent,
            &low.listeners[0],
            &start("greet", FleetTier::Admin),
            &rt(&on, None),
        ));
        assert_eq!(kind, ErrorKind::Forbidden);
        let names = |p: &crate::Policy| {
            p.fleet_actions(&p.listeners[0], Tier::Admin)
                .map(|a| a.name.to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(&p), ["greet", "pull"]);
        assert_eq!(names(&low), ["pull"]);
    }
}
