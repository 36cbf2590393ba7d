//! Turns a parsed [`ConfigFile`] into the [`Policy`] the daemon runs: names resolved to ids
//! through a [`Directory`] the caller supplies, cross-field rules checked, problems collected
//! with their lines.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use warden_proto::{ActionName, Gid, Limits, Tier, Uid};

use crate::actions::{self, ActionSpec};
use crate::config::{self, ConfigError, ConfigFile, Problem, line_of};
use crate::dropin::{
    self, ConfigErrors, FileProblems, Located, ParsedDropIn, Source, add_dropin_actions,
    add_dropin_resources,
};
use crate::fleet::{self, FleetPolicy};
use crate::resources::{self, ResourceKind};

/// Longest socket path the kernel accepts (`sun_path` is 108 bytes including the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// Name look-ups the policy needs, done by the daemon (the policy itself does no I/O).
pub trait Directory {
    fn group_gid(&self, name: &str) -> io::Result<Option<Gid>>;
    /// The uid and primary gid of the user called `name`.
    fn user(&self, name: &str) -> io::Result<Option<(Uid, Gid)>>;
}

/// One socket the daemon serves and the authority it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerPolicy {
    pub path: PathBuf,
    /// Permission bits set on the socket file after bind.
    pub mode: u32,
    /// Group set on the socket file, with its configured name.
    pub group: Option<(String, Gid)>,
    /// No caller on this socket has more than this tier.
    pub max_tier: Tier,
    /// What the socket speaks.
    pub protocol: crate::config::ListenerProtocol,
}

/// An executable a mutating request may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExeGuard {
    pub path: PathBuf,
    pub sha256: Option<[u8; 32]>,
}

/// Extra conditions for mutating requests. Each configured guard must pass.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Guards {
    pub mutating_uids: Option<BTreeSet<Uid>>,
    pub mutating_exes: Option<Vec<ExeGuard>>,
}

impl Guards {
    /// Whether checking a caller needs the SHA-256 of its executable.
    pub fn needs_exe_digest(&self) -> bool {
        self.mutating_exes
            .as_ref()
            .is_some_and(|g| g.iter().any(|e| e.sha256.is_some()))
    }

    /// The digests `guards.mutating_exes` accepts for an executable at `exe`: none when no entry
    /// with a sha256 lists that path, so its content never matters.
    pub fn digests_for<'a>(&'a self, exe: &'a Path) -> impl Iterator<Item = [u8; 32]> + 'a {
        self.mutating_exes
            .iter()
            .flatten()
            .filter(move |g| g.path == exe)
            .filter_map(|g| g.sha256)
    }
}

/// Tier mappings with names resolved to ids.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TierMap {
    /// uid → (tier, user name as configured).
    pub users: HashMap<Uid, (Tier, String)>,
    /// gid → (tier, group name as configured).
    pub groups: HashMap<Gid, (Tier, String)>,
    /// The user running a `--dev` daemon, who is its admin.
    pub dev_admin: Option<Uid>,
}

/// How jobs are kept (`[jobs]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobSettings {
    pub log_cap_bytes: u64,
    pub keep_finished: usize,
    pub history: Duration,
    pub shutdown_grace: Duration,
    /// Jobs one uid may have queued or running at once.
    pub max_active_per_uid: usize,
    /// Finished jobs of one uid kept in the ledger.
    pub history_per_uid: usize,
}

/// How much the audit log keeps and takes (`[audit]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditSettings {
    /// The live file is closed as a segment at this size.
    pub segment_bytes: u64,
    /// Closed segments kept (at least 1).
    pub keep_segments: usize,
    /// Bytes of closed segments kept; 0: no limit besides `keep_segments`.
    pub max_bytes: u64,
    /// Recorded requests one uid other than root may make per minute.
    pub uid_changes_per_minute: u32,
}

impl Default for AuditSettings {
    fn default() -> Self {
        AuditSettings {
            segment_bytes: 64 << 20,
            keep_segments: 16,
            max_bytes: 0,
            uid_changes_per_minute: 120,
        }
    }
}

/// The configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Policy {
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    pub limits: Limits,
    pub listeners: Vec<ListenerPolicy>,
    pub tiers: TierMap,
    /// Capability toggles and their defaults.
    pub ops: BTreeMap<String, bool>,
    pub guards: Guards,
    pub jobs: JobSettings,
    pub audit: AuditSettings,
    /// Declared actions, by name. Shared, so that what the gate judged is what a job runs
    /// (the gate's `Allow` carries the spec) even if a reload swaps the policy meanwhile.
    pub actions: BTreeMap<ActionName, Arc<ActionSpec>>,
    /// Declared kinds of owned resources, by kind; shared for the same reason.
    pub resources: BTreeMap<String, Arc<ResourceKind>>,
    /// `[fleet]`: the agent's uid, the fleet principal's cap, the identity sources.
    pub fleet: FleetPolicy,
}

/// A policy and the warnings found while building it.
#[derive(Debug)]
pub struct Loaded {
    pub policy: Policy,
    pub warnings: Vec<Problem>,
}

/// A policy read from a main file and its drop-ins, and the warnings found, by file.
#[derive(Debug)]
pub struct LoadedFiles {
    pub policy: Policy,
    pub warnings: Vec<Located>,
    /// Where each action is declared: its file and the line of its name.
    pub declared: HashMap<String, (String, usize)>,
}

impl Policy {
    /// Parses and compiles `text`. `origin` labels problems (usually the file path).
    pub fn load(text: &str, origin: &str, dir: &dyn Directory) -> Result<Loaded, ConfigError> {
        let file = config::parse(text, origin)?;
        match compile(file, Source { origin, text }, &[], dir) {
            Ok(loaded) => Ok(Loaded {
                policy: loaded.policy,
                warnings: loaded.warnings.into_iter().map(|w| w.problem).collect(),
            }),
            Err(mut e) => Err(e.files.pop().unwrap_or_else(|| ConfigError {
                origin: origin.to_owned(),
                problems: Vec::new(),
            })),
        }
    }

    /// Parses and compiles a main file and its drop-ins (in the order given): each drop-in adds
    /// `[[action]]` and `[[resource]]` tables, which may use the main file's ops and each other's
    /// actions. A name declared in two files is an error naming both. Every file's problems are
    /// reported, each under its own origin.
    pub fn load_with_dropins(
        main: Source<'_>,
        dropins: &[Source<'_>],
        dir: &dyn Directory,
    ) -> Result<LoadedFiles, ConfigErrors> {
        let mut errors = Vec::new();
        let file = config::parse(main.text, main.origin)
            .map_err(|e| errors.push(e))
            .ok();
        let parsed: Vec<ParsedDropIn<'_>> = dropins
            .iter()
            .filter_map(|s| dropin::parse(*s).map_err(|e| errors.push(e)).ok())
            .collect();
        // The drop-ins that parse are compiled even when others do not, so that one run
        // reports every file's problems.
        let compiled = file.map(|file| compile(file, main, &parsed, dir));
        match compiled {
            Some(Ok(loaded)) if errors.is_empty() => Ok(loaded),
            compiled => {
                if let Some(Err(e)) = compiled {
                    errors.extend(e.files);
                }
                // Main file first, then the drop-ins in the order they were read.
                let rank = |origin: &str| {
                    std::iter::once(main.origin)
                        .chain(dropins.iter().map(|d| d.origin))
                        .position(|o| o == origin)
                };
                errors.sort_by_key(|e| rank(&e.origin));
                Err(ConfigErrors { files: errors })
            }
        }
    }

    /// The listener whose path is `path`.
    pub fn listener(&self, path: &Path) -> Option<&ListenerPolicy> {
        self.listeners.iter().find(|l| l.path == path)
    }

    /// Makes `uid` an admin, as the user who runs a `--dev` daemon.
    pub fn grant_dev_admin(&mut self, uid: Uid) {
        self.tiers.dev_admin = Some(uid);
    }
}

fn compile(
    file: ConfigFile,
    main: Source<'_>,
    dropins: &[ParsedDropIn<'_>],
    dir: &dyn Directory,
) -> Result<LoadedFiles, ConfigErrors> {
    let Source { origin, text } = main;
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let at = |span: std::ops::Range<usize>| Some(line_of(text, &span));

    let runtime_dir = file.daemon.runtime_dir.0;
    let mut listeners = Vec::new();
    for spanned in &file.listeners {
        let line = at(spanned.span());
        let l = spanned.get_ref();
        let path = l.path.0.clone();
        if path.as_os_str().len() > MAX_SOCKET_PATH {
            errors.push(Problem {
                line,
                column: None,
                message: format!(
                    "listener path {} is longer than {MAX_SOCKET_PATH} bytes",
                    path.display()
                ),
            });
        }
        if listeners.iter().any(|o: &ListenerPolicy| o.path == path) {
            errors.push(Problem {
                line,
                column: None,
                message: format!("listener path {} is declared twice", path.display()),
            });
        }
        let group = match &l.group {
            None => None,
            Some(g) => match dir.group_gid(g.get_ref()) {
                Ok(Some(gid)) => Some((g.get_ref().clone(), gid)),
                Ok(None) => {
                    errors.push(Problem {
                        line: at(g.span()),
                        column: None,
                        message: format!("listener group `{}` does not exist", g.get_ref()),
                    });
                    None
                }
                Err(e) => {
                    errors.push(Problem {
                        line: at(g.span()),
                        column: None,
                        message: format!("cannot look up group `{}`: {e}", g.get_ref()),
                    });
                    None
                }
            },
        };
        listeners.push(ListenerPolicy {
            path,
            mode: l.mode.0,
            group,
            max_tier: l.max_tier,
            protocol: l.protocol,
        });
    }
    if !listeners.is_empty()
        && listeners
            .iter()
            .all(|l| l.protocol == crate::config::ListenerProtocol::Varlink)
    {
        errors.push(Problem {
            line: None,
            column: None,
            message: "every [[listener]] speaks varlink; at least one must speak the warden \
                      protocol (the CLI and the watchdog use it)"
                .to_owned(),
        });
    }
    if listeners.is_empty() {
        // Anyone may reach the default socket; unmapped callers are tier `none` there and can only
        // greet the daemon and ask its health and version.
        listeners.push(ListenerPolicy {
            path: runtime_dir.join("warden.sock"),
            mode: 0o666,
            group: None,
            max_tier: Tier::Admin,
            protocol: crate::config::ListenerProtocol::Warden,
        });
    }

    let mut tiers = TierMap::default();
    let lists = [
        (Tier::ReadOnly, &file.tiers.read_only_groups),
        (Tier::Operator, &file.tiers.operator_groups),
        (Tier::Admin, &file.tiers.admin_groups),
    ];
    for (tier, names) in lists {
        for name in names {
            match dir.group_gid(name.get_ref()) {
                Ok(Some(gid)) => {
                    if let Some((prev, _)) = tiers.groups.get(&gid) {
                        warnings.push(Problem {
                            line: at(name.span()),
                            column: None,
                            message: format!(
                                "group `{}` is mapped to both {prev} and {tier}; {tier} applies",
                                name.get_ref()
                            ),
                        });
                    }
                    tiers.groups.insert(gid, (tier, name.get_ref().clone()));
                }
                Ok(None) => warnings.push(Problem {
                    line: at(name.span()),
                    column: None,
                    message: format!(
                        "group `{}` does not exist; its {tier} mapping has no effect",
                        name.get_ref()
                    ),
                }),
                Err(e) => errors.push(Problem {
                    line: at(name.span()),
                    column: None,
                    message: format!("cannot look up group `{}`: {e}", name.get_ref()),
                }),
            }
        }
    }
    for (name, tier) in &file.tiers.users {
        match dir.user(name.get_ref()) {
            Ok(Some((uid, _))) => {
                tiers.users.insert(uid, (*tier, name.get_ref().clone()));
            }
            Ok(None) => warnings.push(Problem {
                line: at(name.span()),
                column: None,
                message: format!(
                    "user `{}` does not exist; its {tier} mapping has no effect",
                    name.get_ref()
                ),
            }),
            Err(e) => errors.push(Problem {
                line: at(name.span()),
                column: None,
                message: format!("cannot look up user `{}`: {e}", name.get_ref()),
            }),
        }
    }

    let ops: BTreeMap<String, bool> = file
        .ops
        .into_iter()
        .map(|(name, on)| (name.into_inner().0, on))
        .collect();
    let declared_ops: BTreeSet<String> = ops.keys().cloned().collect();
    let actions = actions::compile_actions(
        &file.actions,
        &declared_ops,
        text,
        dir,
        &mut errors,
        &mut warnings,
    );
    let mut extra = dropins
        .iter()
        .map(|d| (d.source, FileProblems::default()))
        .collect::<Vec<_>>();
    let (actions, declared) = add_dropin_actions(
        actions,
        &file.actions,
        main,
        dropins,
        &declared_ops,
        dir,
        &mut extra,
    );
    let mut resources = resources::compile_resources(&file.resources, &actions, text, &mut errors);
    add_dropin_resources(
        &mut resources,
        &file.resources,
        main,
        dropins,
        &actions,
        &mut extra,
    );
    let mut actions = actions;
    for kind in resources.values() {
        for hook in [&kind.on_create, &kind.on_delete].into_iter().flatten() {
            if let Some(a) = actions.get_mut(hook)
                && !a.hook_for.contains(&kind.kind)
            {
                a.hook_for.push(kind.kind.clone());
            }
        }
    }
    let actions = actions.into_iter().map(|(k, v)| (k, Arc::new(v))).collect();
    let resources = resources
        .into_iter()
        .map(|(k, v)| (k, Arc::new(v)))
        .collect();
    let jobs = JobSettings {
        log_cap_bytes: file.jobs.log_cap_bytes.0,
        keep_finished: file.jobs.keep_finished.0 as usize,
        history: Duration::from_secs(file.jobs.history_days.0 * 86_400),
        shutdown_grace: Duration::from_secs(file.jobs.shutdown_grace_s.0),
        max_active_per_uid: file.jobs.max_active_per_uid.0 as usize,
        history_per_uid: file.jobs.history_per_uid.0 as usize,
    };
    let audit = AuditSettings {
        segment_bytes: file.audit.segment_bytes.0,
        keep_segments: file.audit.keep_segments.0 as usize,
        max_bytes: file.audit.max_bytes.0,
        uid_changes_per_minute: u32::try_from(file.audit.uid_changes_per_minute.0)
            .unwrap_or(u32::MAX),
    };

    let guards = Guards {
        mutating_uids: file
            .guards
            .mutating_uids
            .map(|v| v.into_iter().map(Uid).collect()),
        mutating_exes: file.guards.mutating_exes.map(|v| {
            v.into_iter()
                .map(|g| ExeGuard {
                    path: g.path.0,
                    sha256: g.sha256.map(|s| s.0),
                })
                .collect()
        }),
    };

    let fleet = fleet::compile_fleet(file.fleet.as_ref(), text, dir, &mut errors, &mut warnings);

    let mut failed = Vec::new();
    if !errors.is_empty() {
        failed.push(ConfigError {
            origin: origin.to_owned(),
            problems: errors,
        });
    }
    let mut located: Vec<Located> = warnings
        .into_iter()
        .map(|problem| Located {
            origin: origin.to_owned(),
            problem,
        })
        .collect();
    for (source, found) in extra {
        if !found.errors.is_empty() {
            failed.push(ConfigError {
                origin: source.origin.to_owned(),
                problems: found.errors,
            });
        }
        located.extend(found.warnings.into_iter().map(|problem| Located {
            origin: source.origin.to_owned(),
            problem,
        }));
    }
    if !failed.is_empty() {
        return Err(ConfigErrors { files: failed });
    }
    Ok(LoadedFiles {
        policy: Policy {
            state_dir: file.daemon.state_dir.0,
            runtime_dir,
            limits: file.limits.to_limits(),
            listeners,
            tiers,
            ops,
            guards,
            jobs,
            audit,
            actions,
            resources,
            fleet,
        },
        warnings: located,
        declared,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A name service with a fixed set of users and groups.
    pub(crate) struct FakeDirectory;

    impl Directory for FakeDirectory {
        fn group_gid(&self, name: &str) -> io::Result<Option<Gid>> {
            Ok(match name {
                "wadm" => Some(Gid(1600)),
                "wops" => Some(Gid(1500)),
                "wro" => Some(Gid(1400)),
                "sock" => Some(Gid(1300)),
                _ => None,
            })
        }
        fn user(&self, name: &str) -> io::Result<Option<(Uid, Gid)>> {
            Ok(match name {
                "alice" => Some((Uid(1001), Gid(1001))),
                "bob" => Some((Uid(1002), Gid(1002))),
                "root" => Some((Uid(0), Gid(0))),
                _ => None,
            })
        }
    }

    pub(crate) fn load(text: &str) -> Result<Loaded, ConfigError> {
        Policy::load(text, "w.toml", &FakeDirectory)
    }

    /// Pins: `protocol` defaults to warden, accepts varlink, and a configuration whose every
    /// listener speaks varlink is refused (the CLI and the watchdog need a warden socket).
    #[test]
    fn listener_protocols_parse_and_one_must_speak_warden() {
        let both = "[[listener]]\npath = \"/run/w/a.sock\"\n\
                    [[listener]]\npath = \"/run/w/b.varlink\"\nprotocol = \"varlink\"\n";
        let p = Policy::load(both, "t", &FakeDirectory).unwrap().policy;
        assert_eq!(
            p.listeners[0].protocol,
            crate::config::ListenerProtocol::Warden
        );
        assert_eq!(
            p.listeners[1].protocol,
            crate::config::ListenerProtocol::Varlink
        );
        let only = "[[listener]]\npath = \"/run/w/b.varlink\"\nprotocol = \"varlink\"\n";
        let err = Policy::load(only, "t", &FakeDirectory)
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least one must speak the warden"), "{err}");
        let bad = "[[listener]]\npath = \"/run/w/a.sock\"\nprotocol = \"grpc\"\n";
        assert!(Policy::load(bad, "t", &FakeDirectory).is_err());
    }

    #[test]
    fn no_listener_means_the_default_socket_in_the_runtime_dir() {
        let p = load("[daemon]\nruntime_dir = \"/run/w\"\n").unwrap().policy;
        assert_eq!(p.listeners.len(), 1);
        assert_eq!(p.listeners[0].path, PathBuf::from("/run/w/warden.sock"));
        assert_eq!(p.listeners[0].mode, 0o666);
    }

    #[test]
    fn names_resolve_to_ids() {
        let p = load(
            r#"
[tiers]
admin_groups = ["wadm"]
operator_groups = ["wops"]
[tiers.users]
alice = "read_only"
[[listener]]
path = "/run/w/a.sock"
group = "sock"
"#,
        )
        .unwrap()
        .policy;
        assert_eq!(p.tiers.groups[&Gid(1600)].0, Tier::Admin);
        assert_eq!(p.tiers.groups[&Gid(1500)], (Tier::Operator, "wops".into()));
        assert_eq!(p.tiers.users[&Uid(1001)].0, Tier::ReadOnly);
        assert_eq!(p.listeners[0].group, Some(("sock".into(), Gid(1300))));
        assert_eq!(p.listeners[0].mode, 0o660);
    }

    #[test]
    fn a_missing_listener_group_is_an_error_at_its_line() {
        let e = load("[[listener]]\npath = \"/run/w/a.sock\"\ngroup = \"nope\"\n").unwrap_err();
        assert_eq!(e.problems[0].line, Some(3));
        assert!(e.problems[0].message.contains("`nope` does not exist"));
    }

    #[test]
    fn missing_tier_groups_and_users_are_warnings_at_their_lines() {
        let l = load("[tiers]\nadmin_groups = [\"wheeel\"]\n[tiers.users]\ncarol = \"admin\"\n")
            .unwrap();
        let lines: Vec<_> = l.warnings.iter().map(|w| w.line).collect();
        assert_eq!(lines, vec![Some(2), Some(4)]);
        assert!(l.policy.tiers.groups.is_empty() && l.policy.tiers.users.is_empty());
    }

    #[test]
    fn duplicate_and_overlong_listener_paths_are_errors() {
        let long = format!("/run/{}", "x".repeat(120));
        let text = format!(
            "[[listener]]\npath = \"/run/a\"\n[[listener]]\npath = \"/run/a\"\n[[listener]]\npath = \"{long}\"\n"
        );
        let e = load(&text).unwrap_err();
        assert_eq!(e.problems.len(), 2, "{e}");
        assert_eq!(e.problems[0].line, Some(3));
        assert_eq!(e.problems[1].line, Some(5));
    }

    #[test]
    fn guards_compile_and_say_whether_a_digest_is_needed() {
        let p = load(
            "[guards]\nmutating_uids = [0, 1001]\nmutating_exes = [{path = \"/usr/bin/x\"}]\n",
        )
        .unwrap()
        .policy;
        assert!(
            p.guards
                .mutating_uids
                .as_ref()
                .unwrap()
                .contains(&Uid(1001))
        );
        assert!(!p.guards.needs_exe_digest());
    }
}
