//! The gate: one pure function that decides whether a caller may make a request right now.
//! Handlers never check permissions themselves; the connection calls
//! [`Policy::authorize`] for every request and runs the handler only on [`Decision::Allow`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use warden_proto::request::{FleetOrigin, Scope};
use warden_proto::{ActionName, ErrorKind, Gid, Pid, Request, Tier, Uid};

use crate::actions::ActionSpec;
use crate::compile::{ExeGuard, ListenerPolicy, Policy};
use crate::endpoints::{self, Requirement};
use crate::resources::ResourceKind;

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
    /// Whether the caller runs in the daemon's own mount namespace, where `exe` names the file
    /// the daemon sees at that path. Elsewhere a bind mount can put any file at an allowed
    /// path, so `guards.mutating_exes` passes only [`MountNs::Daemons`].
    pub mount_ns: MountNs,
    /// What is known of the executable's content: hashed only when a guard's decision needs it.
    pub exe_sha256: ExeDigest,
}

/// The caller's mount namespace, as read at connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountNs {
    /// The daemon's own.
    Daemons,
    /// Another one.
    Other,
    /// Not read (no `guards.mutating_exes` was set at connect) or unreadable.
    Unconfirmed,
}

/// The SHA-256 of a caller's executable, as far as the daemon took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExeDigest {
    /// Not hashed for this connection (no guard listing its path needed it when it connected).
    NotTaken,
    Sha256([u8; 32]),
    /// Hashing failed or was given up; the reason is shown to the refused caller.
    Unverifiable(String),
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
            mount_ns: MountNs::Unconfirmed,
            exe_sha256: ExeDigest::NotTaken,
        }
    }
}

/// The daemon's changeable state the gate looks at.
#[derive(Debug, Clone, Copy)]
pub struct Runtime<'a> {
    /// Capability toggles in force.
    pub ops: &'a BTreeMap<String, bool>,
    /// The kill switch, when engaged: every request that changes state is refused.
    pub lockdown: Option<&'a Lockdown>,
    /// What the daemon knows about the thing the request names, looked up before the gate.
    pub target: Target,
}

/// An engaged lockdown: why, by whom, since when.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Lockdown {
    pub reason: String,
    pub by_uid: u32,
    /// RFC 3339.
    pub since: String,
}

/// Facts about a request's target that only the daemon's state can tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The request names nothing that needs looking up.
    Nothing,
    /// The request names a job; `owner` is its requester, `None` if there is no such job.
    Job { owner: Option<Uid> },
    /// The request names a resource; `owner` is its owner, `None` if there is no such resource.
    Resource { owner: Option<Uid> },
}

impl ActionSpec {
    /// The brake that stops this action now, in words, or `None`: one of its ops toggles off,
    /// or the lockdown when it changes state. For work the daemon starts on its own (a lost
    /// job's `reconcile`), which has no caller to judge but must stop at the same brakes.
    pub fn braked(
        &self,
        ops: &BTreeMap<String, bool>,
        lockdown: Option<&Lockdown>,
    ) -> Option<String> {
        if let Some(op) = self
            .ops
            .iter()
            .find(|op| !ops.get(op.as_str()).copied().unwrap_or(false))
        {
            return Some(format!("ops `{op}` is switched off"));
        }
        match lockdown {
            Some(l) if self.mutating => Some(format!(
                "warden is locked down (by uid {} since {}): {}",
                l.by_uid, l.since, l.reason
            )),
            _ => None,
        }
    }

    /// What starting this action needs. Never less than `read_only`: tier `none` may only greet.
    pub fn requirement(&self) -> Requirement<'_> {
        Requirement {
            what: Cow::Owned(format!("action {}", self.name)),
            tier: self.tier.max(Tier::ReadOnly),
            ops: self.ops.iter().map(String::as_str).collect(),
            mutating: self.mutating,
        }
    }
}

/// The gate's answer. Callers must destructure it; a `Deny` carries the kind and a reason fit to
/// show the caller.
#[must_use = "a request may only proceed on Decision::Allow"]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow {
        /// The caller's tier on this listener.
        tier: Tier,
        /// What the gate judged the request against; the handler runs exactly this, never a
        /// spec it reads again (a reload may have swapped the policy since).
        judged: Judged,
    },
    Deny {
        tier: Tier,
        kind: ErrorKind,
        reason: String,
    },
}

/// The declarations an allowed request was judged against, handed on to its handler.
#[derive(Debug, Clone)]
pub enum Judged {
    /// The request names no action or resource kind.
    Nothing,
    /// `job.start`: the action, as judged.
    Action(Arc<ActionSpec>),
    /// `resource.create`: the kind and its `on_create` hook, as judged.
    Create {
        kind: Arc<ResourceKind>,
        hook: Option<Arc<ActionSpec>>,
    },
    /// `resource.delete`: the `on_delete` hook of the resource's kind, as judged (`None`: no
    /// hook runs).
    Delete { hook: Option<Arc<ActionSpec>> },
}

/// Two judgements are equal when they name the very same declarations (the same snapshot).
impl PartialEq for Judged {
    fn eq(&self, other: &Self) -> bool {
        let same = |a: &Option<Arc<ActionSpec>>, b: &Option<Arc<ActionSpec>>| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        match (self, other) {
            (Judged::Nothing, Judged::Nothing) => true,
            (Judged::Action(a), Judged::Action(b)) => Arc::ptr_eq(a, b),
            (Judged::Create { kind: k1, hook: h1 }, Judged::Create { kind: k2, hook: h2 }) => {
                Arc::ptr_eq(k1, k2) && same(h1, h2)
            }
            (Judged::Delete { hook: h1 }, Judged::Delete { hook: h2 }) => same(h1, h2),
            _ => false,
        }
    }
}

impl Eq for Judged {}

impl Decision {
    /// An `Allow` of `tier` that judged nothing in particular.
    pub fn allow(tier: Tier) -> Decision {
        Decision::Allow {
            tier,
            judged: Judged::Nothing,
        }
    }

    /// The same decision, an `Allow` now carrying `judged`.
    fn judging(self, judged: Judged) -> Decision {
        match self {
            Decision::Allow { tier, .. } => Decision::Allow { tier, judged },
            deny => deny,
        }
    }
}

/// The steps of a decision, written down only when someone asks (`policy.explain`): the gate
/// decides the same way either way, and the hot path formats nothing.
struct Trace(Option<Vec<String>>);

impl Trace {
    fn note(&mut self, step: impl FnOnce() -> String) {
        if let Some(steps) = &mut self.0 {
            steps.push(step());
        }
    }
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
        self.authorize_traced(peer, listener, request, runtime, &mut Trace(None))
    }

    /// [`Policy::authorize`]'s decision and every step that led to it, in words.
    pub fn explain(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        request: &Request,
        runtime: &Runtime<'_>,
    ) -> (Decision, Vec<String>) {
        let mut trace = Trace(Some(Vec::new()));
        let decision = self.authorize_traced(peer, listener, request, runtime, &mut trace);
        (decision, trace.0.unwrap_or_default())
    }

    fn authorize_traced(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        request: &Request,
        runtime: &Runtime<'_>,
        trace: &mut Trace,
    ) -> Decision {
        // A fleet start is judged as the fleet principal, not as the agent's own uid.
        if let Request::JobStart(p) = request
            && let Some(fleet) = &p.fleet
        {
            return self.fleet_start(peer, listener, &p.action, fleet, runtime, trace);
        }
        if let Request::ActionsList(p) = request
            && p.fleet
        {
            trace.note(|| "actions.list of what the fleet may run here".to_owned());
            return self.fleet_list(peer, listener);
        }
        let mut need = endpoints::spec(request.method()).requirement();
        if let Request::JobList(p) = request
            && p.scope == Scope::All
        {
            need.tier = Tier::Operator;
            need.what = Cow::Borrowed("job.list of everyone's jobs");
        }
        // The machine identity is for admins and for the fleet agent, whatever tier its uid
        // has otherwise (usually none): it needs the id to enroll this host.
        if let Request::HostIdentity = request
            && self.fleet.agent_uid() == Some(peer.uid)
        {
            trace.note(|| {
                format!(
                    "uid {} is [fleet] agent_user `{}`",
                    peer.uid,
                    self.fleet.agent.as_ref().map_or("", |(_, n)| n.as_str())
                )
            });
            need.tier = Tier::None;
            need.what = Cow::Borrowed("host.identity for the fleet agent");
        }
        // The fleet agent follows, waits for and cancels the jobs it started for the fleet,
        // and lists its own, whatever tier its uid has otherwise (usually none). Whose job it is
        // is still checked below: another's is answered as missing.
        if self.is_fleet_agent(peer) {
            let own_job = request.job().is_some()
                && matches!(runtime.target, Target::Job { owner: Some(o) } if o == peer.uid);
            let own_list = matches!(request, Request::JobList(p) if p.scope == Scope::Mine);
            if own_job || own_list {
                trace.note(|| {
                    format!(
                        "uid {} is [fleet] agent_user `{}`, asking about its own jobs",
                        peer.uid,
                        self.fleet.agent.as_ref().map_or("", |(_, n)| n.as_str())
                    )
                });
                need.tier = Tier::None;
            }
        }
        // Alerts are for operators (as alerts.list), the audit trail for admins.
        if let Request::EventsSubscribe(p) = request {
            for topic in &p.topics {
                let tier = match topic.as_str() {
                    "audit" => Tier::Admin,
                    "alert" => Tier::Operator,
                    _ => Tier::ReadOnly,
                };
                if tier > need.tier {
                    need.tier = tier;
                    need.what = Cow::Owned(format!("events of topic `{topic}`"));
                }
            }
        }
        let tier = match self.decide_traced(peer, listener, &need, runtime, trace) {
            Decision::Allow { tier, .. } => tier,
            deny => return deny,
        };
        let not_found = |reason: String| Decision::Deny {
            tier,
            kind: ErrorKind::NotFound,
            reason,
        };
        match request {
            Request::JobStart(p) => {
                // An action whose tier the caller lacks, or a hook only its kinds may start, is
                // answered as undeclared: the same answer `actions.describe` gives, so the
                // existence of an action is not revealed to a caller who could not start it.
                let Some(action) = self
                    .actions
                    .get(&p.action)
                    .filter(|a| self.visible(peer, listener, a))
                else {
                    trace.note(|| {
                        format!(
                            "no action `{}` is declared that this caller may see",
                            p.action
                        )
                    });
                    return not_found(format!("no action `{}`", p.action));
                };
                return self
                    .decide_traced(peer, listener, &action.requirement(), runtime, trace)
                    .judging(Judged::Action(Arc::clone(action)));
            }
            Request::ResourceCreate(p) => {
                let Some(kind) = self.resources.get(&p.kind) else {
                    trace.note(|| format!("no resource kind `{}` is declared", p.kind));
                    return not_found(format!("no resource kind `{}`", p.kind.escape_debug()));
                };
                if let deny @ Decision::Deny { .. } =
                    self.decide_traced(peer, listener, &kind.requirement(), runtime, trace)
                {
                    return deny;
                }
                let hook = match self.hook_decision(
                    peer,
                    listener,
                    &kind.kind,
                    "on_create",
                    kind.on_create.as_ref(),
                    runtime,
                    trace,
                ) {
                    Ok(hook) => hook,
                    Err(deny) => return deny,
                };
                return Decision::Allow {
                    tier,
                    judged: Judged::Create {
                        kind: Arc::clone(kind),
                        hook,
                    },
                };
            }
            // Actions a caller could not see are hidden from it, as if they did not exist.
            Request::ActionsDescribe(p)
                if !self
                    .actions
                    .get(&p.action)
                    .is_some_and(|a| self.visible(peer, listener, a)) =>
            {
                return not_found(format!("no action `{}`", p.action));
            }
            _ => {}
        }
        if request.job().is_some() {
            // Someone else's job gets exactly the answer a job that never existed gets (the
            // message does not even repeat the id asked for).
            let visible = match runtime.target {
                Target::Job { owner: Some(owner) } => owner == peer.uid || tier == Tier::Admin,
                _ => false,
            };
            trace.note(|| {
                format!(
                    "the job is {}",
                    if visible {
                        "the caller's own (or the caller is admin)"
                    } else {
                        "someone else's or missing: answered as missing"
                    }
                )
            });
            if !visible {
                return not_found("no such job".to_owned());
            }
        }
        if request.resource().is_some() {
            // Someone else's resource gets exactly the answer a name nobody has gets.
            let visible = match runtime.target {
                Target::Resource { owner: Some(owner) } => owner == peer.uid || tier == Tier::Admin,
                _ => false,
            };
            trace.note(|| {
                format!(
                    "the resource is {}",
                    if visible {
                        "the caller's own (or the caller is admin)"
                    } else {
                        "someone else's or missing: answered as missing"
                    }
                )
            });
            if !visible {
                return not_found("no such resource".to_owned());
            }
            if let Request::ResourceDelete(p) = request {
                let kind = self.resources.get(&p.kind);
                return match self.hook_decision(
                    peer,
                    listener,
                    kind.map_or("", |k| k.kind.as_str()),
                    "on_delete",
                    kind.and_then(|k| k.on_delete.as_ref()),
                    runtime,
                    trace,
                ) {
                    Ok(hook) => Decision::Allow {
                        tier,
                        judged: Judged::Delete { hook },
                    },
                    Err(deny) => deny,
                };
            }
        }
        Decision::allow(tier)
    }

    /// The tier a fleet principal claiming `claimed` has on `listener`: the claim, capped by
    /// `[fleet] max_tier` and by the listener's own cap. The server cannot raise either.
    pub fn fleet_tier(&self, listener: &ListenerPolicy, claimed: Tier) -> Tier {
        claimed.min(self.fleet.max_tier).min(listener.max_tier)
    }

    /// Whether `peer` is the enabled fleet's agent, the only uid that may speak for the fleet.
    pub fn is_fleet_agent(&self, peer: &PeerIdentity) -> bool {
        self.fleet.agent_uid() == Some(peer.uid)
    }

    /// The refusal of a fleet request from a uid that is not the fleet agent.
    fn not_the_agent(&self, peer: &PeerIdentity, listener: &ListenerPolicy) -> Decision {
        Decision::Deny {
            tier: self.effective(peer, listener).tier,
            kind: ErrorKind::Forbidden,
            reason: format!(
                "only the [fleet] agent_user may name a fleet origin, and uid {} is not it{}",
                peer.uid,
                if self.fleet.enabled {
                    ""
                } else {
                    " (fleet is disabled on this host)"
                }
            ),
        }
    }

    /// `job.start` with a fleet origin: only the fleet agent may send it; the action must be
    /// declared `remote = true`; the principal's tier is [`Policy::fleet_tier`]; every local
    /// brake applies as for a local request.
    fn fleet_start(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        name: &ActionName,
        fleet: &FleetOrigin,
        runtime: &Runtime<'_>,
        trace: &mut Trace,
    ) -> Decision {
        trace.note(|| {
            format!(
                "the request names fleet origin fleet:{}@{} (dispatch {}, tier {:?} claimed)",
                fleet.operator, fleet.server, fleet.dispatch_id, fleet.tier
            )
        });
        if !self.is_fleet_agent(peer) {
            trace.note(|| format!("uid {} is not the enabled [fleet] agent_user", peer.uid));
            return self.not_the_agent(peer, listener);
        }
        let tier = self.fleet_tier(listener, fleet.tier.into());
        trace.note(|| {
            format!(
                "uid {} is [fleet] agent_user `{}`; the fleet principal has tier {tier} \
                 (claimed {}, capped by [fleet] max_tier {} and the listener's {})",
                peer.uid,
                self.fleet.agent.as_ref().map_or("", |(_, n)| n.as_str()),
                Tier::from(fleet.tier),
                self.fleet.max_tier,
                listener.max_tier
            )
        });
        let Some(action) = self.actions.get(name).filter(|a| a.hook_for.is_empty()) else {
            trace.note(|| format!("no action `{name}` is declared"));
            return Decision::Deny {
                tier,
                kind: ErrorKind::NotFound,
                reason: format!("no action `{name}`"),
            };
        };
        if !action.remote {
            trace.note(|| format!("action {name} is not declared remote = true"));
            return Decision::Deny {
                tier,
                kind: ErrorKind::Forbidden,
                reason: format!(
                    "action {name} is not offered to the fleet by this host (it is not declared \
                     remote = true)"
                ),
            };
        }
        trace.note(|| format!("action {name} is declared remote = true"));
        self.decide_as(
            peer,
            listener,
            &action.requirement(),
            runtime,
            trace,
            Some(tier),
        )
        .judging(Judged::Action(Arc::clone(action)))
    }

    /// The actions the fleet principal claiming `claimed` could start on this host now: those
    /// declared `remote = true`, no hook, within [`Policy::fleet_tier`] (what `actions.list
    /// {fleet: true}` shows). Brakes (ops, lockdown) do not hide an action: the agent learns
    /// why it cannot start when it asks.
    pub fn fleet_actions(
        &self,
        listener: &ListenerPolicy,
        claimed: Tier,
    ) -> impl Iterator<Item = &Arc<ActionSpec>> {
        let tier = self.fleet_tier(listener, claimed);
        self.actions.values().filter(move |a| {
            a.remote && a.hook_for.is_empty() && a.tier.max(Tier::ReadOnly) <= tier
        })
    }

    /// Whether `peer` may ask for the fleet's view of the actions (`actions.list {fleet}`).
    pub fn fleet_list(&self, peer: &PeerIdentity, listener: &ListenerPolicy) -> Decision {
        if self.is_fleet_agent(peer) {
            Decision::allow(self.fleet_tier(listener, Tier::Admin))
        } else {
            self.not_the_agent(peer, listener)
        }
    }

    /// Whether `action` exists for `peer` at all: it is no hook, and the caller's tier on this
    /// listener reaches the action's. Brakes (ops, lockdown, guards) do not hide an action: a
    /// caller who may see it learns why it cannot start now.
    pub fn visible(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        action: &ActionSpec,
    ) -> bool {
        action.hook_for.is_empty()
            && self.effective(peer, listener).tier >= action.tier.max(Tier::ReadOnly)
    }

    /// A resource kind's hook, judged as a direct start of its action would be by its brakes:
    /// its ops toggles, the lockdown if it changes state, and the guards. Not its tier: the
    /// kind's tier is what allows it. `Ok(None)` when the kind has no such hook.
    #[allow(clippy::too_many_arguments)]
    fn hook_decision(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        kind: impl std::fmt::Display,
        which: &str,
        hook: Option<&ActionName>,
        runtime: &Runtime<'_>,
        trace: &mut Trace,
    ) -> Result<Option<Arc<ActionSpec>>, Decision> {
        let Some(name) = hook else {
            return Ok(None);
        };
        let Some(action) = self.actions.get(name) else {
            // compile() refuses a hook naming no action; a policy without it is not loaded.
            return Err(Decision::Deny {
                tier: self.effective(peer, listener).tier,
                kind: ErrorKind::Internal,
                reason: format!("the {which} action of resource kind {kind} is not declared"),
            });
        };
        let need = Requirement {
            what: Cow::Owned(format!(
                "the {which} action {} of resource kind {kind}",
                action.name
            )),
            tier: Tier::None,
            ops: action.ops.iter().map(String::as_str).collect(),
            mutating: action.mutating,
        };
        match self.decide_traced(peer, listener, &need, runtime, trace) {
            Decision::Allow { .. } => Ok(Some(Arc::clone(action))),
            deny => Err(deny),
        }
    }

    /// Whether `peer` could start `action` now (what `actions.list` shows).
    pub fn could_start(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        action: &ActionSpec,
        runtime: &Runtime<'_>,
    ) -> bool {
        self.visible(peer, listener, action)
            && matches!(
                self.decide(peer, listener, &action.requirement(), runtime),
                Decision::Allow { .. }
            )
    }

    /// The decision for one requirement; [`Policy::authorize`] finds the requirements.
    pub fn decide(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        need: &Requirement<'_>,
        runtime: &Runtime<'_>,
    ) -> Decision {
        self.decide_traced(peer, listener, need, runtime, &mut Trace(None))
    }

    fn decide_traced(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        need: &Requirement<'_>,
        runtime: &Runtime<'_>,
        trace: &mut Trace,
    ) -> Decision {
        self.decide_as(peer, listener, need, runtime, trace, None)
    }

    /// The decision for `need`, with the caller's tier taken from its uid and groups, or, for
    /// a fleet principal, `principal`; every brake is the same either way.
    fn decide_as(
        &self,
        peer: &PeerIdentity,
        listener: &ListenerPolicy,
        need: &Requirement<'_>,
        runtime: &Runtime<'_>,
        trace: &mut Trace,
        principal: Option<Tier>,
    ) -> Decision {
        let effective = self.effective(peer, listener);
        let tier = principal.unwrap_or(effective.tier);
        trace.note(|| {
            format!(
                "{} needs tier {}{}{}",
                need.what,
                need.tier,
                if need.ops.is_empty() {
                    String::new()
                } else {
                    format!(", ops {}", need.ops.join(", "))
                },
                if need.mutating {
                    ", and changes state"
                } else {
                    ""
                }
            )
        });
        trace.note(|| match principal {
            Some(t) => format!("the fleet principal has tier {t}"),
            None => format!("the caller has tier {}", effective.reason(peer, listener)),
        });
        let deny = |kind, reason: String| Decision::Deny { tier, kind, reason };
        if tier < need.tier {
            return deny(
                ErrorKind::Forbidden,
                format!("{} needs tier {}; you have {}", need.what, need.tier, tier),
            );
        }
        for op in &need.ops {
            let on = runtime.ops.get(*op).copied().unwrap_or(false);
            trace.note(|| format!("ops `{op}` is {}", if on { "on" } else { "off" }));
            if !on {
                return deny(
                    ErrorKind::Forbidden,
                    format!("{} needs ops `{op}`, which is switched off", need.what),
                );
            }
        }
        if need.mutating {
            trace.note(|| match runtime.lockdown {
                Some(l) => format!("a lockdown is engaged (by uid {}): {}", l.by_uid, l.reason),
                None => "no lockdown is engaged".to_owned(),
            });
        }
        if need.mutating
            && let Some(l) = runtime.lockdown
        {
            return deny(
                ErrorKind::LockedDown,
                format!(
                    "{} changes state and warden is locked down (by uid {} since {}): {}",
                    need.what, l.by_uid, l.since, l.reason
                ),
            );
        }
        if need.mutating {
            trace.note(
                || match (&self.guards.mutating_uids, &self.guards.mutating_exes) {
                    (None, None) => "no [guards] are set".to_owned(),
                    (uids, exes) => format!(
                        "[guards]: mutating_uids {}, mutating_exes {}",
                        if uids.is_some() { "set" } else { "unset" },
                        if exes.is_some() {
                            "set (the caller's verified executable must match)"
                        } else {
                            "unset"
                        }
                    ),
                },
            );
            if let Some(uids) = &self.guards.mutating_uids
                && !uids.contains(&peer.uid)
            {
                return deny(
                    ErrorKind::Forbidden,
                    format!(
                        "{} changes state and uid {} is not in guards.mutating_uids",
                        need.what, peer.uid
                    ),
                );
            }
            if let Some(exes) = &self.guards.mutating_exes
                && let Some(why) = exe_guard_refusal(peer, exes)
            {
                return deny(
                    ErrorKind::Forbidden,
                    format!("{} changes state and {why}", need.what),
                );
            }
        }
        Decision::allow(tier)
    }
}

/// Why `peer` does not pass `guards.mutating_exes`, or `None` when it does. The caller reads
/// the answer, so it says which part failed.
fn exe_guard_refusal(peer: &PeerIdentity, exes: &[ExeGuard]) -> Option<String> {
    let Some(exe) = &peer.exe else {
        return Some("an unverified executable is not in guards.mutating_exes".to_owned());
    };
    let listed: Vec<&ExeGuard> = exes.iter().filter(|g| g.path == *exe).collect();
    let shown = exe.display();
    if listed.is_empty() {
        return Some(format!("{shown} is not in guards.mutating_exes"));
    }
    match peer.mount_ns {
        MountNs::Daemons => {}
        MountNs::Other => {
            return Some(format!(
                "the caller runs in a mount namespace other than the daemon's, where {shown} may \
                 be another file (guards.mutating_exes)"
            ));
        }
        MountNs::Unconfirmed => {
            return Some(format!(
                "the caller's mount namespace could not be confirmed as the daemon's, so {shown} \
                 may be another file (guards.mutating_exes; reconnect if the guard is newer than \
                 the connection)"
            ));
        }
    }
    if listed.iter().any(|g| g.sha256.is_none()) {
        return None;
    }
    match &peer.exe_sha256 {
        ExeDigest::Sha256(d) if listed.iter().any(|g| g.sha256 == Some(*d)) => None,
        ExeDigest::Sha256(_) => Some(format!(
            "{shown} does not match its sha256 in guards.mutating_exes"
        )),
        ExeDigest::NotTaken => Some(format!(
            "{shown} was not hashed for guards.mutating_exes on this connection (the guard is \
             newer than the connection; reconnect)"
        )),
        ExeDigest::Unverifiable(why) => Some(format!(
            "{shown} could not be checked against guards.mutating_exes: {why}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compile::tests::load;
    use warden_proto::Method;
    use warden_proto::request::{HelloParams, JobListParams, JobParams, JobStartParams};

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
        let rt = rt(&o);
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
            Decision::allow(Tier::ReadOnly)
        );
    }

    fn mutating(tier: Tier, ops: &[&'static str]) -> Requirement<'static> {
        Requirement {
            what: "x".into(),
            tier,
            ops: ops.to_vec(),
            mutating: true,
        }
    }

    fn rt(ops: &BTreeMap<String, bool>) -> Runtime<'_> {
        Runtime {
            ops,
            lockdown: None,
            target: Target::Nothing,
        }
    }

    /// Pins: a lockdown refuses what changes state, to everyone including root, with its reason
    /// and who engaged it, and leaves the rest alone.
    #[test]
    fn a_lockdown_refuses_every_change_and_only_changes() {
        let p = load(CONF).unwrap().policy;
        let l = &p.listeners[0];
        let ops = BTreeMap::new();
        let lockdown = Lockdown {
            reason: "incident 42".into(),
            by_uid: 0,
            since: "2026-11-29T23:00:00Z".into(),
        };
        let runtime = Runtime {
            ops: &ops,
            lockdown: Some(&lockdown),
            target: Target::Nothing,
        };
        let root = peer(0, &[]);
        match p.decide(&root, l, &mutating(Tier::ReadOnly, &[]), &runtime) {
            Decision::Deny { kind, reason, .. } => {
                assert_eq!(kind, ErrorKind::LockedDown);
                assert!(
                    reason.contains("incident 42") && reason.contains("uid 0"),
                    "{reason}"
                );
            }
            d => panic!("{d:?}"),
        }
        let read = Requirement {
            mutating: false,
            ..mutating(Tier::ReadOnly, &[])
        };
        assert!(matches!(
            p.decide(&root, l, &read, &runtime),
            Decision::Allow { .. }
        ));
    }

    #[test]
    fn required_ops_must_be_switched_on() {
        let p = load(CONF).unwrap().policy;
        let l = &p.listeners[0];
        let spec = Requirement {
            ops: vec!["storage"],
            mutating: false,
            ..mutating(Tier::Operator, &[])
        };
        let on = ops(&[("storage", true)]);
        let off = ops(&[("storage", false)]);
        let missing = ops(&[]);
        let op = peer(1200, &[1500]);
        assert!(allowed(p.decide(&op, l, &spec, &rt(&on))));
        for o in [&off, &missing] {
            let d = p.decide(&op, l, &spec, &rt(o));
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
        let rt = rt(&o);
        let d = p.decide(
            &peer(0, &[]),
            &p.listeners[1],
            &mutating(Tier::Operator, &[]),
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
        let rt = rt(&o);
        let spec = mutating(Tier::Operator, &[]);

        let mut op = peer(1200, &[1500]);
        // Read-only requests ignore guards.
        assert!(allowed(p.authorize(&op, l, &Request::Status, &rt)));
        // No verified executable: denied.
        assert!(!allowed(p.decide(&op, l, &spec, &rt)));
        op.exe = Some("/usr/bin/ok".into());
        op.mount_ns = MountNs::Daemons;
        // Right path, wrong or missing digest: denied.
        assert!(!allowed(p.decide(&op, l, &spec, &rt)));
        op.exe_sha256 = ExeDigest::Sha256([0xcd; 32]);
        assert!(!allowed(p.decide(&op, l, &spec, &rt)));
        op.exe_sha256 = ExeDigest::Sha256([0xab; 32]);
        assert!(allowed(p.decide(&op, l, &spec, &rt)));

        // Same executable, uid not listed: denied by the uid guard.
        let mut other = peer(1300, &[1500]);
        other.exe = op.exe.clone();
        other.exe_sha256 = op.exe_sha256.clone();
        other.mount_ns = MountNs::Daemons;
        let d = p.decide(&other, l, &spec, &rt);
        assert!(
            matches!(&d, Decision::Deny { reason, .. } if reason.contains("mutating_uids")),
            "{d:?}"
        );
    }

    fn refusal(d: Decision) -> String {
        match d {
            Decision::Deny { kind, reason, .. } => {
                assert_eq!(kind, ErrorKind::Forbidden);
                reason
            }
            d => panic!("{d:?}"),
        }
    }

    /// Pins: the executable guard refuses a caller from another mount namespace even with the
    /// right path and digest, and says which part failed: namespace, digest, or a hash that
    /// could not be taken (with its cause).
    #[test]
    fn the_exe_guard_names_what_failed_and_refuses_other_mount_namespaces() {
        let text = format!(
            "{CONF}\n[guards]\nmutating_exes = [{{path = \"/usr/bin/ok\", sha256 = \"{}\"}}, {{path = \"/usr/bin/plain\"}}]\n",
            "ab".repeat(32)
        );
        let p = load(&text).unwrap().policy;
        let l = &p.listeners[0];
        let o = ops(&[]);
        let rt = rt(&o);
        let spec = mutating(Tier::Operator, &[]);
        let mut op = peer(1200, &[1500]);
        op.exe = Some("/usr/bin/ok".into());
        op.exe_sha256 = ExeDigest::Sha256([0xab; 32]);
        op.mount_ns = MountNs::Other;
        let why = refusal(p.decide(&op, l, &spec, &rt));
        assert!(
            why.contains("mount namespace other than the daemon's"),
            "{why}"
        );
        op.mount_ns = MountNs::Unconfirmed;
        let why = refusal(p.decide(&op, l, &spec, &rt));
        assert!(why.contains("could not be confirmed"), "{why}");
        op.mount_ns = MountNs::Daemons;
        assert!(allowed(p.decide(&op, l, &spec, &rt)));
        op.exe_sha256 = ExeDigest::Unverifiable("executable too large to verify".into());
        let why = refusal(p.decide(&op, l, &spec, &rt));
        assert!(why.ends_with(": executable too large to verify"), "{why}");
        op.exe_sha256 = ExeDigest::Sha256([0xcd; 32]);
        let why = refusal(p.decide(&op, l, &spec, &rt));
        assert!(why.contains("does not match its sha256"), "{why}");
        op.exe_sha256 = ExeDigest::NotTaken;
        let why = refusal(p.decide(&op, l, &spec, &rt));
        assert!(why.contains("was not hashed"), "{why}");
        // A path listed without a digest needs none, but still the daemon's namespace.
        op.exe = Some("/usr/bin/plain".into());
        assert!(allowed(p.decide(&op, l, &spec, &rt)));
        op.mount_ns = MountNs::Other;
        assert!(!allowed(p.decide(&op, l, &spec, &rt)));
        assert_eq!(
            p.guards
                .digests_for(std::path::Path::new("/usr/bin/ok"))
                .collect::<Vec<_>>(),
            [[0xab; 32]]
        );
        assert_eq!(
            p.guards
                .digests_for(std::path::Path::new("/usr/bin/plain"))
                .count(),
            0
        );
    }

    const JOBS: &str = r#"
[tiers]
operator_groups = ["wops"]
read_only_groups = ["wro"]
admin_groups = ["wadm"]
[ops]
system = true
storage = false
[[listener]]
path = "/run/w/main.sock"
[[listener]]
path = "/run/w/ro.sock"
max_tier = "read_only"
[[action]]
name = "restart"
argv = ["/bin/true"]
ops = ["system"]
[[action]]
name = "report"
argv = ["/bin/true"]
tier = "read_only"
mutating = false
[[action]]
name = "format"
argv = ["/bin/true"]
ops = ["storage"]
"#;

    fn start(action: &str) -> Request {
        Request::JobStart(JobStartParams {
            action: action.to_owned().try_into().unwrap(),
            params: Default::default(),
            idempotency_key: None,
            fleet: None,
        })
    }

    /// Pins: `explain` gives the gate's own decision for a table of callers, listeners,
    /// requests, toggles and a lockdown, and says why in steps.
    #[test]
    fn explain_decides_exactly_as_the_gate() {
        let p = load(JOBS).unwrap().policy;
        let lockdown = Lockdown {
            reason: "drill".into(),
            by_uid: 0,
            since: "2026-11-29T23:00:00Z".into(),
        };
        let all_on = ops(&[("system", true), ("storage", true)]);
        let requests = [
            start("report"),
            start("restart"),
            start("format"),
            start("missing"),
            Request::Status,
            Request::Version,
        ];
        let peers = [
            peer(0, &[]),
            peer(1100, &[1400]),
            peer(1200, &[1500]),
            peer(54321, &[]),
        ];
        let mut cases = 0;
        for lock in [None, Some(&lockdown)] {
            for o in [&p.ops, &all_on] {
                let runtime = Runtime {
                    ops: o,
                    lockdown: lock,
                    target: Target::Nothing,
                };
                for listener in &p.listeners {
                    for who in &peers {
                        for request in &requests {
                            let (decision, steps) = p.explain(who, listener, request, &runtime);
                            assert_eq!(decision, p.authorize(who, listener, request, &runtime));
                            assert!(!steps.is_empty(), "{request:?}");
                            cases += 1;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 2 * 2 * 4 * 6);
        let runtime = Runtime {
            ops: &p.ops,
            lockdown: None,
            target: Target::Nothing,
        };
        let (_, steps) = p.explain(
            &peer(1200, &[1500]),
            &p.listeners[0],
            &start("format"),
            &runtime,
        );
        let text = steps.join("; ");
        assert!(text.contains("as a member of group"), "{text}");
        assert!(text.contains("ops `storage` is off"), "{text}");
    }

    /// Pins: job.start meets the action's own tier and ops; unknown actions are not found.
    #[test]
    fn starting_a_job_needs_what_its_action_declares() {
        let p = load(JOBS).unwrap().policy;
        let o = p.ops.clone();
        let rt = rt(&o);
        let (main, ro) = (&p.listeners[0], &p.listeners[1]);
        let reader = peer(1100, &[1400]);
        let operator = peer(1200, &[1500]);
        let nobody = peer(54321, &[]);

        assert!(allowed(p.authorize(&reader, main, &start("report"), &rt)));
        assert!(!allowed(p.authorize(&nobody, main, &start("report"), &rt)));
        // Too low a tier: answered exactly as an action that does not exist.
        let d = p.authorize(&reader, main, &start("restart"), &rt);
        assert_eq!(
            d,
            Decision::Deny {
                tier: Tier::ReadOnly,
                kind: ErrorKind::NotFound,
                reason: "no action `restart`".into()
            }
        );
        let Decision::Deny { reason, .. } = p.authorize(&reader, main, &start("zzz"), &rt) else {
            panic!("an undeclared action was allowed");
        };
        assert_eq!(reason, "no action `zzz`");
        assert!(allowed(p.authorize(
            &operator,
            main,
            &start("restart"),
            &rt
        )));
        assert!(
            !allowed(p.authorize(&operator, ro, &start("restart"), &rt)),
            "listener cap"
        );
        let d = p.authorize(&operator, main, &start("format"), &rt);
        assert!(
            matches!(&d, Decision::Deny { reason, .. } if reason.contains("`storage`")),
            "{d:?}"
        );
        let d = p.authorize(&operator, main, &start("nope"), &rt);
        assert!(
            matches!(
                &d,
                Decision::Deny {
                    kind: ErrorKind::NotFound,
                    ..
                }
            ),
            "{d:?}"
        );

        let visible: Vec<&str> = p
            .actions
            .values()
            .filter(|a| p.could_start(&reader, main, a, &rt))
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(visible, ["report"]);
        let describe = |who: &PeerIdentity, a: &str| {
            p.authorize(
                who,
                main,
                &Request::ActionsDescribe(warden_proto::request::ActionParams {
                    action: a.to_owned().try_into().unwrap(),
                }),
                &rt,
            )
        };
        assert!(allowed(describe(&reader, "report")));
        let hidden = describe(&reader, "restart");
        let missing = describe(&reader, "nope");
        assert!(matches!(
            hidden,
            Decision::Deny {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
        assert!(matches!(
            missing,
            Decision::Deny {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
    }

    /// Pins: someone else's job is denied exactly like a job that does not exist; admins see all.
    #[test]
    fn jobs_belong_to_their_requester_and_to_admins() {
        let p = load(JOBS).unwrap().policy;
        let o = p.ops.clone();
        let main = &p.listeners[0];
        let alice = peer(1200, &[1500]);
        let bob = peer(1201, &[1500]);
        let admin = peer(1300, &[1600]);
        let id: warden_proto::JobId = "job_00000000000000aa".to_owned().try_into().unwrap();
        let get = Request::JobGet(JobParams { job_id: id.clone() });
        let owned_by = |uid| Runtime {
            ops: &o,
            lockdown: None,
            target: Target::Job {
                owner: Some(Uid(uid)),
            },
        };
        let missing = Runtime {
            ops: &o,
            lockdown: None,
            target: Target::Job { owner: None },
        };

        assert!(allowed(p.authorize(&alice, main, &get, &owned_by(1200))));
        assert!(allowed(p.authorize(&admin, main, &get, &owned_by(1200))));
        let foreign = p.authorize(&bob, main, &get, &owned_by(1200));
        let absent = p.authorize(&bob, main, &get, &missing);
        assert_eq!(
            foreign, absent,
            "a stranger must not tell someone else's job from no job"
        );
        assert!(
            matches!(&absent, Decision::Deny { kind: ErrorKind::NotFound, reason, .. }
            if reason == "no such job"),
        );
        // Without a lookup the gate fails closed.
        assert!(!allowed(p.authorize(&alice, main, &get, &rt(&o))));
        // An admin capped to read_only by its listener is no admin there.
        assert!(!allowed(p.authorize(
            &admin,
            &p.listeners[1],
            &get,
            &owned_by(1200)
        )));

        let all = Request::JobList(JobListParams {
            scope: warden_proto::request::Scope::All,
            state: None,
            limit: None,
        });
        let reader = peer(1100, &[1400]);
        assert!(!allowed(p.authorize(&reader, main, &all, &rt(&o))));
        assert!(allowed(p.authorize(&alice, main, &all, &rt(&o))));
    }

    const RESOURCES: &str = r#"
[tiers]
read_only_groups = ["wro"]
operator_groups = ["wops"]
admin_groups = ["wadm"]
[[listener]]
path = "/run/w/main.sock"
[[resource]]
kind = "workspace"
base_dir = "/srv/ws"
max_per_uid = 2
tier = "read_only"
[[resource]]
kind = "vm"
base_dir = "/srv/vm"
max_per_uid = 2
tier = "operator"
"#;

    fn named(kind: &str) -> warden_proto::request::ResourceParams {
        warden_proto::request::ResourceParams {
            kind: kind.into(),
            name: "ws1".into(),
        }
    }

    /// Pins: creating needs the kind's tier and is refused under a lockdown; get and delete
    /// reach only the owner and admins, and a stranger's answer equals the one for no resource.
    #[test]
    fn resources_belong_to_their_owner_and_to_admins() {
        let p = load(RESOURCES).unwrap().policy;
        let o = BTreeMap::new();
        let main = &p.listeners[0];
        let (alice, bob) = (peer(1200, &[1400]), peer(1201, &[1400]));
        let (operator, admin) = (peer(1300, &[1500]), peer(1301, &[1600]));
        let create = |kind: &str| {
            Request::ResourceCreate(warden_proto::request::ResourceCreateParams {
                kind: kind.into(),
                name: "ws1".into(),
                owner: None,
            })
        };
        assert!(allowed(p.authorize(
            &alice,
            main,
            &create("workspace"),
            &rt(&o)
        )));
        assert!(!allowed(p.authorize(&alice, main, &create("vm"), &rt(&o))));
        assert!(allowed(p.authorize(
            &operator,
            main,
            &create("vm"),
            &rt(&o)
        )));
        assert!(matches!(
            p.authorize(&alice, main, &create("nope"), &rt(&o)),
            Decision::Deny {
                kind: ErrorKind::NotFound,
                ..
            }
        ));
        let lockdown = Lockdown {
            reason: "incident".into(),
            by_uid: 0,
            since: "now".into(),
        };
        let locked = Runtime {
            ops: &o,
            lockdown: Some(&lockdown),
            target: Target::Resource {
                owner: Some(Uid(1200)),
            },
        };
        for request in [
            create("workspace"),
            Request::ResourceDelete(named("workspace")),
        ] {
            assert!(matches!(
                p.authorize(&admin, main, &request, &locked),
                Decision::Deny {
                    kind: ErrorKind::LockedDown,
                    ..
                }
            ));
        }

        let owned_by = |uid| Runtime {
            ops: &o,
            lockdown: None,
            target: Target::Resource {
                owner: Some(Uid(uid)),
            },
        };
        let missing = Runtime {
            ops: &o,
            lockdown: None,
            target: Target::Resource { owner: None },
        };
        for request in [
            Request::ResourceGet(named("workspace")),
            Request::ResourceDelete(named("workspace")),
        ] {
            assert!(allowed(p.authorize(
                &alice,
                main,
                &request,
                &owned_by(1200)
            )));
            assert!(allowed(p.authorize(
                &admin,
                main,
                &request,
                &owned_by(1200)
            )));
            let foreign = p.authorize(&bob, main, &request, &owned_by(1200));
            assert_eq!(foreign, p.authorize(&bob, main, &request, &missing));
            assert!(
                matches!(&foreign, Decision::Deny { kind: ErrorKind::NotFound, reason, .. }
                if reason == "no such resource")
            );
            // An operator is no owner, and without a lookup the gate fails closed.
            assert!(!allowed(p.authorize(
                &operator,
                main,
                &request,
                &owned_by(1200)
            )));
            assert!(!allowed(p.authorize(&alice, main, &request, &rt(&o))));
        }
        let list = Request::ResourceList(Default::default());
        assert!(allowed(p.authorize(&alice, main, &list, &rt(&o))));
    }

    /// Pins: job.start and actions.describe agree on which actions exist for a caller: both hide
    /// an action whose tier the caller lacks (on that listener) as `not_found`; one the caller
    /// may see but that a brake stops is described, and its start gets the brake's refusal.
    #[test]
    fn start_and_describe_agree_on_what_exists() {
        let p = load(JOBS).unwrap().policy;
        let o = p.ops.clone();
        let rt = rt(&o);
        let (main, ro) = (&p.listeners[0], &p.listeners[1]);
        let reader = peer(1100, &[1400]);
        let operator = peer(1200, &[1500]);
        let describe = |who: &PeerIdentity, l: &ListenerPolicy, a: &str| {
            p.authorize(
                who,
                l,
                &Request::ActionsDescribe(warden_proto::request::ActionParams {
                    action: a.to_owned().try_into().unwrap(),
                }),
                &rt,
            )
        };
        for (who, l, action) in [
            (&reader, main, "restart"),
            (&reader, main, "format"),
            (&operator, ro, "restart"),
            (&reader, main, "nope"),
        ] {
            let hidden = Decision::Deny {
                tier: p.effective(who, l).tier,
                kind: ErrorKind::NotFound,
                reason: format!("no action `{action}`"),
            };
            assert_eq!(describe(who, l, action), hidden, "describe {action}");
            assert_eq!(
                p.authorize(who, l, &start(action), &rt),
                hidden,
                "start {action}"
            );
        }
        // `format` needs ops `storage`, which is off: visible, and its start says why it fails.
        assert!(allowed(describe(&operator, main, "format")));
        let d = p.authorize(&operator, main, &start("format"), &rt);
        assert!(
            matches!(&d, Decision::Deny { kind: ErrorKind::Forbidden, reason, .. }
                if reason.contains("ops `storage`")),
            "{d:?}"
        );
    }

    /// Pins: what the gate allowed is what it hands on: job.start's `Allow` carries the very
    /// action spec of the policy it judged with, not a copy a handler would look up again.
    #[test]
    fn an_allowed_start_carries_the_judged_spec() {
        let p = load(JOBS).unwrap().policy;
        let o = p.ops.clone();
        let d = p.authorize(
            &peer(1100, &[1400]),
            &p.listeners[0],
            &start("report"),
            &rt(&o),
        );
        let Decision::Allow {
            tier,
            judged: Judged::Action(spec),
        } = d
        else {
            panic!("{d:?}");
        };
        assert_eq!(tier, Tier::ReadOnly);
        let name: ActionName = "report".to_owned().try_into().unwrap();
        assert!(Arc::ptr_eq(&spec, &p.actions[&name]));
        // The same request judged against a policy loaded anew carries that policy's spec.
        let q = load(JOBS).unwrap().policy;
        let again = q.authorize(
            &peer(1100, &[1400]),
            &q.listeners[0],
            &start("report"),
            &rt(&o),
        );
        assert_ne!(again, d_of(&spec));
        fn d_of(spec: &Arc<ActionSpec>) -> Decision {
            Decision::Allow {
                tier: Tier::ReadOnly,
                judged: Judged::Action(Arc::clone(spec)),
            }
        }
    }

    const HOOKS: &str = r#"
[tiers]
read_only_groups = ["wro"]
[ops]
storage = true
[[listener]]
path = "/run/w/main.sock"
[[action]]
name = "provision"
argv = ["/bin/true", "{path}"]
ops = ["storage"]
mutating = true
params.path = { type = "string" }
[[action]]
name = "look"
argv = ["/bin/true"]
tier = "read_only"
ops = ["storage"]
mutating = false
[[resource]]
kind = "share"
base_dir = "/srv/shares"
max_per_uid = 3
tier = "read_only"
on_create = "provision"
on_delete = "look"
"#;

    fn create(kind: &str) -> Request {
        Request::ResourceCreate(
            serde_json::from_value(serde_json::json!({"kind": kind, "name": "a"})).unwrap(),
        )
    }

    fn delete(kind: &str) -> Request {
        Request::ResourceDelete(
            serde_json::from_value(serde_json::json!({"kind": kind, "name": "a"})).unwrap(),
        )
    }

    /// Pins: a resource kind's hooks pass their actions' brakes in the gate: with the hook's ops
    /// off, create and delete are refused naming the toggle; under a lockdown a create is
    /// refused; allowed, the decision carries the kind and the hook it judged.
    #[test]
    fn hooks_meet_their_actions_ops_and_the_lockdown() {
        let p = load(HOOKS).unwrap().policy;
        let l = &p.listeners[0];
        let user = peer(1100, &[1400]);
        let on = ops(&[("storage", true)]);
        let owned = Runtime {
            ops: &on,
            lockdown: None,
            target: Target::Resource {
                owner: Some(Uid(1100)),
            },
        };
        let Decision::Allow {
            judged: Judged::Create { kind, hook },
            ..
        } = p.authorize(&user, l, &create("share"), &rt(&on))
        else {
            panic!("a create with its brakes released was refused");
        };
        assert!(Arc::ptr_eq(&kind, &p.resources["share"]));
        assert_eq!(hook.unwrap().name.as_str(), "provision");
        let Decision::Allow {
            judged: Judged::Delete { hook: Some(hook) },
            ..
        } = p.authorize(&user, l, &delete("share"), &owned)
        else {
            panic!("the owner's delete was refused");
        };
        assert_eq!(hook.name.as_str(), "look");

        let off = ops(&[("storage", false)]);
        for (request, target) in [
            (create("share"), Target::Nothing),
            (
                delete("share"),
                Target::Resource {
                    owner: Some(Uid(1100)),
                },
            ),
        ] {
            let runtime = Runtime {
                ops: &off,
                lockdown: None,
                target,
            };
            let d = p.authorize(&user, l, &request, &runtime);
            assert!(
                matches!(&d, Decision::Deny { kind: ErrorKind::Forbidden, reason, .. }
                    if reason.contains("ops `storage`") && reason.contains("resource kind share")),
                "{d:?}"
            );
        }
        let lockdown = Lockdown {
            reason: "incident".into(),
            by_uid: 0,
            since: "2026-12-05T00:00:00Z".into(),
        };
        let locked = Runtime {
            ops: &on,
            lockdown: Some(&lockdown),
            target: Target::Nothing,
        };
        let d = p.authorize(&peer(0, &[]), l, &create("share"), &locked);
        assert!(
            matches!(
                &d,
                Decision::Deny {
                    kind: ErrorKind::LockedDown,
                    ..
                }
            ),
            "{d:?}"
        );
    }

    /// Pins: an action that is a resource kind's hook cannot be started directly, not even by
    /// root, and is not described or listed: its `owner`, `uid` and `path` come only from the
    /// kernel and the registry through its kind.
    #[test]
    fn hook_actions_start_only_through_their_kind() {
        let p = load(HOOKS).unwrap().policy;
        let l = &p.listeners[0];
        let on = ops(&[("storage", true)]);
        let root = peer(0, &[]);
        for hook in ["provision", "look"] {
            let d = p.authorize(&root, l, &start(hook), &rt(&on));
            assert_eq!(
                d,
                Decision::Deny {
                    tier: Tier::Admin,
                    kind: ErrorKind::NotFound,
                    reason: format!("no action `{hook}`"),
                }
            );
            let name: ActionName = hook.to_owned().try_into().unwrap();
            assert!(!p.could_start(&root, l, &p.actions[&name], &rt(&on)));
        }
        assert_eq!(
            p.actions
                .values()
                .filter(|a| !a.hook_for.is_empty())
                .count(),
            2
        );
    }
}
