//! The methods of the protocol, by wire name. Adding a variant forces a gate declaration for it:
//! `warden_policy::endpoints::spec` matches exhaustively, and a test enumerates [`Method::ALL`].

use std::fmt;

/// Every method a client may call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Hello,
    Health,
    Version,
    Whoami,
    Status,
    ActionsList,
    ActionsDescribe,
    JobStart,
    JobGet,
    JobList,
    JobCancel,
    JobWait,
    JobLogs,
    JobWatch,
    AuditVerify,
    AuditQuery,
    OpsGet,
    OpsSet,
    LockdownEngage,
    LockdownRelease,
    AlertsList,
    EventsSubscribe,
    PolicyReload,
    PolicyExplain,
    Doctor,
    ResourceCreate,
    ResourceDelete,
    ResourceList,
    ResourceGet,
    HostIdentity,
}

impl Method {
    pub const ALL: [Method; 30] = [
        Method::Hello,
        Method::Health,
        Method::Version,
        Method::Whoami,
        Method::Status,
        Method::ActionsList,
        Method::ActionsDescribe,
        Method::JobStart,
        Method::JobGet,
        Method::JobList,
        Method::JobCancel,
        Method::JobWait,
        Method::JobLogs,
        Method::JobWatch,
        Method::AuditVerify,
        Method::AuditQuery,
        Method::OpsGet,
        Method::OpsSet,
        Method::LockdownEngage,
        Method::LockdownRelease,
        Method::AlertsList,
        Method::EventsSubscribe,
        Method::PolicyReload,
        Method::PolicyExplain,
        Method::Doctor,
        Method::ResourceCreate,
        Method::ResourceDelete,
        Method::ResourceList,
        Method::ResourceGet,
        Method::HostIdentity,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Method::Hello => "hello",
            Method::Health => "health",
            Method::Version => "version",
            Method::Whoami => "whoami",
            Method::Status => "status",
            Method::ActionsList => "actions.list",
            Method::ActionsDescribe => "actions.describe",
            Method::JobStart => "job.start",
            Method::JobGet => "job.get",
            Method::JobList => "job.list",
            Method::JobCancel => "job.cancel",
            Method::JobWait => "job.wait",
            Method::JobLogs => "job.logs",
            Method::JobWatch => "job.watch",
            Method::AuditVerify => "audit.verify",
            Method::AuditQuery => "audit.query",
            Method::OpsGet => "ops.get",
            Method::OpsSet => "ops.set",
            Method::LockdownEngage => "lockdown.engage",
            Method::LockdownRelease => "lockdown.release",
            Method::AlertsList => "alerts.list",
            Method::EventsSubscribe => "events.subscribe",
            Method::PolicyReload => "policy.reload",
            Method::PolicyExplain => "policy.explain",
            Method::Doctor => "doctor",
            Method::ResourceCreate => "resource.create",
            Method::ResourceDelete => "resource.delete",
            Method::ResourceList => "resource.list",
            Method::ResourceGet => "resource.get",
            Method::HostIdentity => "host.identity",
        }
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.as_str() == name)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_method_round_trips_its_wire_name() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.as_str()), Some(m));
        }
        assert_eq!(Method::from_name("Hello"), None);
        assert_eq!(Method::from_name(""), None);
    }
}
