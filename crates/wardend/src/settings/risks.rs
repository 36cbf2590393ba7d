//! Configurations that load but are risky: what `check-config` prints as warnings and the
//! daemon logs at start and reload. It reads the file system (owners and modes of path
//! prefixes) and changes nothing.

use warden_policy::Policy;
use warden_proto::Tier;

/// Environment variables that make a program load code of the caller's choosing; kept from the
/// daemon's environment into a root job, they would run it as root.
const LOADER_VARIABLES: [&str; 10] = [
    "LD_PRELOAD",
    "LD_LIBRARY_PATH",
    "LD_AUDIT",
    "PYTHONPATH",
    "PYTHONSTARTUP",
    "PERL5LIB",
    "RUBYLIB",
    "NODE_OPTIONS",
    "BASH_ENV",
    "ENV",
];

/// Something in a configuration that loads but is risky.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Risk {
    /// The action it concerns, if one.
    pub action: Option<warden_proto::ActionName>,
    pub message: String,
}

/// Configurations that load but are risky: what `check-config` warns about.
pub fn risks(policy: &Policy) -> Vec<Risk> {
    let mut out = Vec::new();
    for message in listener_risks(policy) {
        out.push(Risk {
            action: None,
            message,
        });
    }
    for a in policy.actions.values() {
        for message in action_risks(a) {
            out.push(Risk {
                action: Some(a.name.clone()),
                message,
            });
        }
    }
    out
}

fn listener_risks(policy: &Policy) -> Vec<String> {
    let mut out = Vec::new();
    // Whether anyone but root can get above read_only at all.
    let elevated = policy
        .tiers
        .groups
        .values()
        .any(|(t, _)| *t > Tier::ReadOnly)
        || policy
            .tiers
            .users
            .values()
            .any(|(t, _)| *t > Tier::ReadOnly);
    for l in &policy.listeners {
        if elevated && l.mode & 0o002 != 0 && l.max_tier > Tier::ReadOnly {
            out.push(format!(
                "listener {} may be opened by every user (mode {:04o}) and reaches tier {}; \
                 set max_tier = \"read_only\" or narrow its mode",
                l.path.display(),
                l.mode,
                l.max_tier
            ));
        }
    }
    out
}

fn action_risks(a: &warden_policy::ActionSpec) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    if a.mutating && a.tier <= Tier::ReadOnly {
        out.push(format!(
            "action `{}` changes state and any read_only caller may start it; \
             raise its tier or set mutating = false",
            a.name
        ));
    }
    if a.timeout >= std::time::Duration::from_secs(3600) {
        out.push(format!(
            "action `{}` may run for {} s (timeout_s unset or long); give it the timeout it needs",
            a.name,
            a.timeout.as_secs()
        ));
    }
    let root = a.run_as.as_ref().is_none_or(|r| r.uid.0 == 0);
    for name in &a.env_keep {
        if root && LOADER_VARIABLES.contains(&name.as_str()) {
            out.push(format!(
                "action `{}` runs as root and keeps `{name}` from the daemon's environment, \
                 which makes programs load other code",
                a.name
            ));
        }
    }
    for (pname, spec) in &a.params {
        let warden_policy::actions::ParamRule::Path { under, .. } = &spec.rule else {
            continue;
        };
        for prefix in under {
            let Ok(m) = std::fs::metadata(prefix) else {
                continue;
            };
            if m.uid() != 0 || m.mode() & 0o022 != 0 {
                out.push(format!(
                    "param `{pname}` of action `{}` takes paths under {}, which a non-root \
                     user can write (owner uid {}, mode {:04o}): they could swap a component \
                     between the check and the job's use",
                    a.name,
                    prefix.display(),
                    m.uid(),
                    m.mode() & 0o7777
                ));
            }
        }
    }
    out
}
