//! `actions.list` and `actions.describe`: the actions a caller could start now. Which ones those
//! are is the gate's answer (`Policy::could_start`), not this file's.

use warden_policy::Runtime;
use warden_policy::gate::Target;
use warden_proto::ErrorKind;
use warden_proto::jobs::{ActionInfo, ActionList};
use warden_proto::request::ActionParams;

use crate::call::{Failure, Session};
use crate::state::Shared;

pub(super) fn list(shared: &Shared, s: &Session) -> ActionList {
    let ops = shared.brakes.ops();
    let lockdown = shared.brakes.lockdown();
    let runtime = Runtime {
        ops: &ops,
        lockdown: lockdown.as_ref(),
        target: Target::Nothing,
    };
    ActionList {
        actions: shared
            .policy()
            .actions
            .values()
            .filter(|a| {
                shared
                    .policy()
                    .could_start(&s.peer, &s.listener, a, &runtime)
            })
            .map(|a| a.info())
            .collect(),
    }
}

/// `actions.list {fleet: true}`: the host's `remote = true` actions within `[fleet] max_tier`,
/// as `actions.describe` shows them. The gate allowed only the fleet agent.
pub(super) fn fleet_list(shared: &Shared, s: &Session) -> ActionList {
    let policy = shared.policy();
    ActionList {
        actions: policy
            .fleet_actions(&s.listener, warden_proto::Tier::Admin)
            .map(|a| a.info())
            .collect(),
    }
}

pub(super) fn describe(shared: &Shared, p: &ActionParams) -> Result<ActionInfo, Failure> {
    // The gate already hid actions the caller could not start.
    shared
        .policy()
        .actions
        .get(&p.action)
        .map(|a| a.info())
        .ok_or_else(|| Failure::new(ErrorKind::NotFound, format!("no action `{}`", p.action)))
}
