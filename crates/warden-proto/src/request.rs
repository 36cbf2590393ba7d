//! Typed requests: a method plus its params, parsed once at the edge with unknown fields refused,
//! so handlers never see raw JSON.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::ids::{ActionName, JobId};
use crate::jobs::JobState;
use crate::method::Method;

/// Longest client name accepted in `hello`, in characters.
pub const MAX_CLIENT_NAME: usize = 64;
/// Most feature names accepted in `hello`.
pub const MAX_FEATURES: usize = 32;

/// A request whose params have been validated.
#[derive(Debug, Clone, PartialEq)]
pub enum Request {
    Hello(HelloParams),
    Health,
    Version,
    Whoami,
    Status,
    ActionsList(ActionsListParams),
    ActionsDescribe(ActionParams),
    JobStart(JobStartParams),
    JobGet(JobParams),
    JobList(JobListParams),
    JobCancel(JobParams),
    JobWait(JobWaitParams),
    JobLogs(JobLogsParams),
    JobWatch(JobParams),
    AuditVerify,
    AuditQuery(AuditQueryParams),
    OpsGet,
    OpsSet(OpsSetParams),
    LockdownEngage(LockdownParams),
    LockdownRelease,
    AlertsList(AlertsParams),
    EventsSubscribe(SubscribeParams),
    PolicyReload,
    PolicyExplain(ExplainParams),
    Doctor,
    ResourceCreate(ResourceCreateParams),
    ResourceDelete(ResourceParams),
    ResourceList(ResourceListParams),
    ResourceGet(ResourceParams),
    /// The host's machine identity, as wardend derives it (for the fleet agent and admins).
    HostIdentity,
}

/// Longest idempotency key, in bytes.
pub const MAX_IDEMPOTENCY_KEY: usize = 128;
/// Most parameters one `job.start` may carry.
pub const MAX_JOB_PARAMS: usize = 64;
/// Longest `job.wait` in milliseconds (one hour).
pub const MAX_WAIT_MS: u64 = 3_600_000;
/// Most jobs one `job.list` returns.
pub const MAX_LIST: u32 = 1000;

/// `{action}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionParams {
    pub action: ActionName,
}

/// `job.start {action, params, idempotency_key?, fleet?}`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JobStartParams {
    pub action: ActionName,
    /// Parameter values, checked against the action's declaration.
    #[serde(default)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// The same key from the same uid within 10 minutes returns the same job (a fleet start's
    /// key is its dispatch id, kept as long as the job's record).
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// Set only by the fleet agent: the request comes from a fleet operator through it.
    /// (Boxed: rare, and it would make every request larger.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Box<FleetOrigin>>,
}

/// Longest fleet operator or server name, in bytes.
pub const MAX_FLEET_NAME: usize = 64;

/// The tier a fleet operator claims for a dispatch (capped by the host's `[fleet] max_tier`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum FleetTier {
    Operator,
    Admin,
}

impl From<FleetTier> for crate::Tier {
    fn from(t: FleetTier) -> crate::Tier {
        match t {
            FleetTier::Operator => crate::Tier::Operator,
            FleetTier::Admin => crate::Tier::Admin,
        }
    }
}

/// `job.start`'s `fleet`: who asked through the fleet, for which dispatch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct FleetOrigin {
    /// The operator's name on the fleet server.
    pub operator: String,
    /// The fleet server's name.
    pub server: String,
    /// `dsp_` and 32 lowercase hex digits.
    pub dispatch_id: String,
    pub tier: FleetTier,
}

impl FleetOrigin {
    /// The job's origin: `fleet:<operator>@<server>`.
    pub fn origin(&self) -> String {
        format!("fleet:{}@{}", self.operator, self.server)
    }

    /// Why this origin is malformed, or `None`.
    pub fn problem(&self) -> Option<String> {
        let name_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= MAX_FLEET_NAME
                && s.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'@' && b != b':')
        };
        if !name_ok(&self.operator) {
            return Some(format!(
                "`fleet.operator` must be 1 to {MAX_FLEET_NAME} printable ASCII characters, no spaces, `@` or `:`"
            ));
        }
        if !name_ok(&self.server) {
            return Some(format!(
                "`fleet.server` must be 1 to {MAX_FLEET_NAME} printable ASCII characters, no spaces, `@` or `:`"
            ));
        }
        let hex = self.dispatch_id.strip_prefix("dsp_");
        if !hex.is_some_and(|h| {
            h.len() == 32
                && h.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        }) {
            return Some("`fleet.dispatch_id` must be `dsp_` and 32 lowercase hex digits".into());
        }
        None
    }
}

/// `actions.list {fleet?}`
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionsListParams {
    /// The host's `remote = true` actions as the fleet principal may run them (the fleet
    /// agent only).
    #[serde(default)]
    pub fleet: bool,
}

/// `{job_id}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JobParams {
    pub job_id: JobId,
}

/// Whose jobs `job.list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The caller's own jobs.
    #[default]
    Mine,
    /// Everyone's (operators and admins), metadata only.
    All,
}

/// `job.list {scope, state, limit}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JobListParams {
    #[serde(default)]
    pub scope: Scope,
    #[serde(default)]
    pub state: Option<JobState>,
    /// At most [`MAX_LIST`]; 50 when absent.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `ops.set {name, enabled, reason}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct OpsSetParams {
    pub name: String,
    pub enabled: bool,
    /// Why, for the audit log: 1 to 256 characters.
    pub reason: String,
}

/// `events.subscribe {topics}`: any of `job`, `ops`, `lockdown`, `alert`, `audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SubscribeParams {
    pub topics: Vec<String>,
}

/// `policy.explain {uid | user, listener, method, action, params}`: how the gate would decide a
/// request from that caller on that listener (the first configured when absent).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ExplainParams {
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub user: Option<String>,
    /// A listener's socket path.
    #[serde(default)]
    pub listener: Option<String>,
    pub method: String,
    /// For `job.start`.
    #[serde(default)]
    pub action: Option<String>,
    /// For `job.start`: the values to check against the action's declaration.
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    /// For `job.start`: the fleet origin, as the agent would send it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<Box<FleetOrigin>>,
}

/// `alerts.list {limit}`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AlertsParams {
    /// 50 when absent.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// `lockdown.engage {reason}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LockdownParams {
    /// Why, shown to everyone refused meanwhile: 1 to 256 characters.
    pub reason: String,
}

/// The most records one `audit.query` answers.
pub const MAX_AUDIT_RECORDS: u32 = 1000;

/// `audit.query {since, until, uid, action, job_id, decision, after_seq, limit}`: every field
/// narrows the selection. With `after_seq`, the first `limit` matching records after it are
/// answered (a page; the next one starts after the last `seq` answered); without, the newest
/// `limit`. Oldest first either way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AuditQueryParams {
    /// RFC 3339 time; records at or after it.
    #[serde(default)]
    pub since: Option<String>,
    /// RFC 3339 time; records before it.
    #[serde(default)]
    pub until: Option<String>,
    /// The peer's uid.
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub action: Option<String>,
    #[serde(default)]
    pub job_id: Option<String>,
    /// `allow` or `deny`.
    #[serde(default)]
    pub decision: Option<String>,
    /// Only records after this `seq`, the first `limit` of them (to page through or follow the
    /// log).
    #[serde(default)]
    pub after_seq: Option<u64>,
    /// 1 to [`MAX_AUDIT_RECORDS`] (more is answered as [`MAX_AUDIT_RECORDS`], 0 is refused);
    /// 100 when absent.
    #[serde(default)]
    pub limit: Option<u32>,
}

/// Longest resource kind or name accepted at the edge, in bytes (a file name's limit). Each
/// kind's own pattern narrows names further.
pub const MAX_RESOURCE_NAME: usize = 255;

/// Who a resource is made for: a user name or a uid. Only root may name one; from anyone else
/// it is ignored (and the audit record says so).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(untagged)]
pub enum OwnerRef {
    Uid(u32),
    Name(String),
}

impl std::fmt::Display for OwnerRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OwnerRef::Uid(uid) => write!(f, "uid {uid}"),
            OwnerRef::Name(name) => write!(f, "`{}`", name.escape_debug()),
        }
    }
}

/// `resource.create {kind, name, owner?}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourceCreateParams {
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub owner: Option<OwnerRef>,
}

/// `resource.delete` and `resource.get`: `{kind, name}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourceParams {
    pub kind: String,
    pub name: String,
}

/// `resource.list {kind?}`: the caller's own resources (an admin's answer holds everyone's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResourceListParams {
    #[serde(default)]
    pub kind: Option<String>,
}

/// `job.wait {job_id, timeout_ms}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JobWaitParams {
    pub job_id: JobId,
    /// At most [`MAX_WAIT_MS`]; 30000 when absent.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

/// `job.logs {job_id, from, follow}`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct JobLogsParams {
    pub job_id: JobId,
    /// Byte offset to start at.
    #[serde(default)]
    pub from: u64,
    /// Keep streaming new output (as `job.output` notifications) until the job ends.
    #[serde(default)]
    pub follow: bool,
}

/// Params of `hello`, the mandatory first request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct HelloParams {
    /// Protocol version the client speaks.
    pub protocol: u32,
    /// What the client calls itself; recorded for attribution, never trusted for identity.
    pub client: ClientName,
    /// Optional protocol features the client can use.
    #[serde(default)]
    pub features: Vec<FeatureName>,
}

/// A client's self-chosen name: 1 to 64 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ClientName(String);

impl ClientName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ClientName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let chars = s.chars().count();
        if chars == 0 || chars > MAX_CLIENT_NAME {
            return Err(format!(
                "`client` must be 1 to {MAX_CLIENT_NAME} characters"
            ));
        }
        if s.chars().any(char::is_control) {
            return Err("`client` must not contain control characters".into());
        }
        Ok(ClientName(s))
    }
}

impl From<ClientName> for String {
    fn from(c: ClientName) -> String {
        c.0
    }
}

/// A feature name: 1 to 64 of `a-z 0-9 _ . -`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FeatureName(String);

impl FeatureName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for FeatureName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let ok = (1..=64).contains(&s.len())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b));
        if ok {
            Ok(FeatureName(s))
        } else {
            Err("a feature name is 1 to 64 of a-z, 0-9, `_`, `.`, `-`".into())
        }
    }
}

impl From<FeatureName> for String {
    fn from(f: FeatureName) -> String {
        f.0
    }
}

/// Params that do not fit the method. An ordinary `bad_request`, not a protocol violation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid params for {method}: {reason}")]
pub struct ParamsError {
    pub method: Method,
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

impl Request {
    /// Types the params of `method`. Params must be a JSON object when present.
    pub fn parse(method: Method, params: Option<&RawValue>) -> Result<Request, ParamsError> {
        let raw = params.map_or("{}", RawValue::get);
        if !raw.trim_start().starts_with('{') {
            return Err(ParamsError {
                method,
                reason: "params must be a JSON object".into(),
            });
        }
        Ok(match method {
            Method::Hello => {
                let p: HelloParams = typed(method, raw)?;
                if p.features.len() > MAX_FEATURES {
                    return Err(ParamsError {
                        method,
                        reason: format!("at most {MAX_FEATURES} features"),
                    });
                }
                Request::Hello(p)
            }
            Method::Health => none(method, raw, Request::Health)?,
            Method::Version => none(method, raw, Request::Version)?,
            Method::Whoami => none(method, raw, Request::Whoami)?,
            Method::Status => none(method, raw, Request::Status)?,
            Method::ActionsList => Request::ActionsList(typed(method, raw)?),
            Method::AuditVerify => none(method, raw, Request::AuditVerify)?,
            Method::AuditQuery => Request::AuditQuery(typed(method, raw)?),
            Method::OpsGet => none(method, raw, Request::OpsGet)?,
            Method::OpsSet => Request::OpsSet(typed(method, raw)?),
            Method::LockdownEngage => Request::LockdownEngage(typed(method, raw)?),
            Method::LockdownRelease => none(method, raw, Request::LockdownRelease)?,
            Method::AlertsList => Request::AlertsList(typed(method, raw)?),
            Method::EventsSubscribe => Request::EventsSubscribe(typed(method, raw)?),
            Method::PolicyReload => none(method, raw, Request::PolicyReload)?,
            Method::PolicyExplain => Request::PolicyExplain(typed(method, raw)?),
            Method::Doctor => none(method, raw, Request::Doctor)?,
            Method::ActionsDescribe => Request::ActionsDescribe(typed(method, raw)?),
            Method::JobStart => {
                let p: JobStartParams = typed(method, raw)?;
                let reason = if p.params.len() > MAX_JOB_PARAMS {
                    Some(format!("at most {MAX_JOB_PARAMS} params"))
                } else if p.params.keys().any(|k| k.is_empty() || k.len() > 64) {
                    Some("param names are 1 to 64 bytes".into())
                } else if p
                    .idempotency_key
                    .as_ref()
                    .is_some_and(|k| k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY)
                {
                    Some(format!(
                        "`idempotency_key` must be 1 to {MAX_IDEMPOTENCY_KEY} bytes"
                    ))
                } else if let Some(f) = &p.fleet {
                    f.problem().or_else(|| {
                        p.idempotency_key
                            .as_ref()
                            .is_some_and(|k| *k != f.dispatch_id)
                            .then(|| {
                                "`idempotency_key` of a fleet start must be its dispatch id".into()
                            })
                    })
                } else {
                    None
                };
                if let Some(reason) = reason {
                    return Err(ParamsError { method, reason });
                }
                Request::JobStart(p)
            }
            Method::JobGet => Request::JobGet(typed(method, raw)?),
            Method::JobList => {
                let p: JobListParams = typed(method, raw)?;
                if p.limit.is_some_and(|l| l == 0 || l > MAX_LIST) {
                    return Err(ParamsError {
                        method,
                        reason: format!("`limit` must be 1 to {MAX_LIST}"),
                    });
                }
                Request::JobList(p)
            }
            Method::JobCancel => Request::JobCancel(typed(method, raw)?),
            Method::JobWait => {
                let p: JobWaitParams = typed(method, raw)?;
                if p.timeout_ms.is_some_and(|t| t > MAX_WAIT_MS) {
                    return Err(ParamsError {
                        method,
                        reason: format!("`timeout_ms` must be at most {MAX_WAIT_MS}"),
                    });
                }
                Request::JobWait(p)
            }
            Method::JobLogs => Request::JobLogs(typed(method, raw)?),
            Method::JobWatch => Request::JobWatch(typed(method, raw)?),
            Method::ResourceCreate => {
                let p: ResourceCreateParams = typed(method, raw)?;
                resource_sizes(method, &p.kind, &p.name)?;
                if let Some(OwnerRef::Name(n)) = &p.owner
                    && n.len() > MAX_RESOURCE_NAME
                {
                    return Err(ParamsError {
                        method,
                        reason: format!("`owner` must be at most {MAX_RESOURCE_NAME} bytes"),
                    });
                }
                Request::ResourceCreate(p)
            }
            Method::ResourceDelete => {
                let p: ResourceParams = typed(method, raw)?;
                resource_sizes(method, &p.kind, &p.name)?;
                Request::ResourceDelete(p)
            }
            Method::ResourceGet => {
                let p: ResourceParams = typed(method, raw)?;
                resource_sizes(method, &p.kind, &p.name)?;
                Request::ResourceGet(p)
            }
            Method::ResourceList => Request::ResourceList(typed(method, raw)?),
            Method::HostIdentity => none(method, raw, Request::HostIdentity)?,
        })
    }

    /// The resource (kind, name) this request is about, if it names an existing one: the gate
    /// decides ownership from it.
    pub fn resource(&self) -> Option<(&str, &str)> {
        match self {
            Request::ResourceDelete(p) | Request::ResourceGet(p) => Some((&p.kind, &p.name)),
            _ => None,
        }
    }

    /// The job this request is about, if any: the gate decides ownership from it.
    pub fn job(&self) -> Option<&JobId> {
        match self {
            Request::JobGet(p) | Request::JobCancel(p) | Request::JobWatch(p) => Some(&p.job_id),
            Request::JobWait(p) => Some(&p.job_id),
            Request::JobLogs(p) => Some(&p.job_id),
            _ => None,
        }
    }

    pub fn method(&self) -> Method {
        match self {
            Request::Hello(_) => Method::Hello,
            Request::Health => Method::Health,
            Request::Version => Method::Version,
            Request::Whoami => Method::Whoami,
            Request::Status => Method::Status,
            Request::ActionsList(_) => Method::ActionsList,
            Request::ActionsDescribe(_) => Method::ActionsDescribe,
            Request::JobStart(_) => Method::JobStart,
            Request::JobGet(_) => Method::JobGet,
            Request::JobList(_) => Method::JobList,
            Request::JobCancel(_) => Method::JobCancel,
            Request::JobWait(_) => Method::JobWait,
            Request::JobLogs(_) => Method::JobLogs,
            Request::JobWatch(_) => Method::JobWatch,
            Request::AuditVerify => Method::AuditVerify,
            Request::AuditQuery(_) => Method::AuditQuery,
            Request::OpsGet => Method::OpsGet,
            Request::OpsSet(_) => Method::OpsSet,
            Request::LockdownEngage(_) => Method::LockdownEngage,
            Request::LockdownRelease => Method::LockdownRelease,
            Request::AlertsList(_) => Method::AlertsList,
            Request::EventsSubscribe(_) => Method::EventsSubscribe,
            Request::PolicyReload => Method::PolicyReload,
            Request::PolicyExplain(_) => Method::PolicyExplain,
            Request::Doctor => Method::Doctor,
            Request::ResourceCreate(_) => Method::ResourceCreate,
            Request::ResourceDelete(_) => Method::ResourceDelete,
            Request::ResourceList(_) => Method::ResourceList,
            Request::ResourceGet(_) => Method::ResourceGet,
            Request::HostIdentity => Method::HostIdentity,
        }
    }
}

fn typed<T: DeserializeOwned>(method: Method, raw: &str) -> Result<T, ParamsError> {
    serde_json::from_str(raw).map_err(|e| ParamsError {
        method,
        reason: e.to_string(),
    })
}

/// Kind and name within [`MAX_RESOURCE_NAME`] bytes: what a kind's own rules then check.
fn resource_sizes(method: Method, kind: &str, name: &str) -> Result<(), ParamsError> {
    if kind.is_empty() || kind.len() > MAX_RESOURCE_NAME || name.len() > MAX_RESOURCE_NAME {
        return Err(ParamsError {
            method,
            reason: format!("`kind` and `name` must be at most {MAX_RESOURCE_NAME} bytes"),
        });
    }
    Ok(())
}

fn none(method: Method, raw: &str, request: Request) -> Result<Request, ParamsError> {
    typed::<NoParams>(method, raw).map(|_| request)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(s: &str) -> Box<RawValue> {
        RawValue::from_string(s.to_owned()).unwrap()
    }

    /// Pins: a fleet origin is typed with unknown fields refused; operator and server are
    /// short printable names, the dispatch id is `dsp_` and 32 lowercase hex digits, the tier
    /// operator or admin, and an idempotency key other than the dispatch id is refused.
    #[test]
    fn fleet_origins_are_typed_and_validated() {
        let start = |fleet: &str, key: &str| {
            Request::parse(
                Method::JobStart,
                Some(&raw(&format!(
                    r#"{{"action":"a","params":{{}}{key},"fleet":{fleet}}}"#
                ))),
            )
        };
        let good = r#"{"operator":"alice","server":"hq.example","dispatch_id":"dsp_0123456789abcdef0123456789abcdef","tier":"admin"}"#;
        let Request::JobStart(p) = start(good, "").unwrap() else {
            panic!("not a job.start");
        };
        let f = p.fleet.unwrap();
        assert_eq!(f.origin(), "fleet:alice@hq.example");
        assert_eq!(f.tier, FleetTier::Admin);
        assert!(
            start(
                good,
                r#","idempotency_key":"dsp_0123456789abcdef0123456789abcdef""#
            )
            .is_ok()
        );
        for (fleet, key, needle) in [
            (good, r#","idempotency_key":"other""#, "dispatch id"),
            (&good.replace("alice", "al ice"), "", "fleet.operator"),
            (&good.replace("alice", "a@b"), "", "fleet.operator"),
            (
                &good.replace("alice", &"a".repeat(65)),
                "",
                "fleet.operator",
            ),
            (&good.replace("hq.example", ""), "", "fleet.server"),
            (&good.replace("dsp_0123", "dsp_X123"), "", "dispatch_id"),
            (&good.replace("dsp_0123", "dsp_123"), "", "dispatch_id"),
            (&good.replace("dsp_", "job_"), "", "dispatch_id"),
            (&good.replace("admin", "root"), "", "unknown variant"),
            (
                &good.replace("\"tier\"", "\"extra\":1,\"tier\""),
                "",
                "unknown field",
            ),
        ] {
            let e = start(fleet, key).unwrap_err();
            assert!(e.reason.contains(needle), "{fleet} {key}: {}", e.reason);
        }
        let list = |p: &str| Request::parse(Method::ActionsList, Some(&raw(p)));
        assert_eq!(
            list(r#"{"fleet":true}"#).unwrap(),
            Request::ActionsList(ActionsListParams { fleet: true })
        );
        assert_eq!(
            list("{}").unwrap(),
            Request::ActionsList(ActionsListParams::default())
        );
        assert!(list(r#"{"fleet":1}"#).is_err());
        assert!(list(r#"{"fleets":true}"#).is_err());
    }

    #[test]
    fn hello_params_are_typed_and_validated() {
        let r = Request::parse(
            Method::Hello,
            Some(&raw(r#"{"protocol":1,"client":"cli","features":["x.y"]}"#)),
        )
        .unwrap();
        let Request::Hello(p) = r else { panic!() };
        assert_eq!(p.client.as_str(), "cli");
        for bad in [
            r#"{"protocol":1}"#,
            r#"{"protocol":1,"client":""}"#,
            r#"{"protocol":1,"client":"a\u0007b"}"#,
            r#"{"protocol":-1,"client":"a"}"#,
            r#"{"protocol":1,"client":"a","features":["UPPER"]}"#,
            r#"{"protocol":1,"client":"a","extra":true}"#,
            r#"[1,"a"]"#,
        ] {
            assert!(
                Request::parse(Method::Hello, Some(&raw(bad))).is_err(),
                "{bad}"
            );
        }
        let long = format!(r#"{{"protocol":1,"client":"{}"}}"#, "é".repeat(65));
        assert!(Request::parse(Method::Hello, Some(&raw(&long))).is_err());
    }

    #[test]
    fn parameterless_methods_accept_nothing_or_an_empty_object_only() {
        for m in [
            Method::Health,
            Method::Version,
            Method::Whoami,
            Method::Status,
            Method::HostIdentity,
        ] {
            assert_eq!(Request::parse(m, None).unwrap().method(), m);
            assert_eq!(Request::parse(m, Some(&raw("{}"))).unwrap().method(), m);
            let err = Request::parse(m, Some(&raw(r#"{"verbose":true}"#))).unwrap_err();
            assert!(err.to_string().contains("unknown field `verbose`"), "{err}");
            assert!(Request::parse(m, Some(&raw("[]"))).is_err());
        }
    }
}
