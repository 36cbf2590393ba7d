//! Result messages. Results do not refuse unknown fields, so a client keeps working when a newer
//! daemon adds a field (adding a field is a compatible change; removing or renaming one bumps the
//! protocol).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::ids::{Gid, Pid, Uid};
use crate::limits::Limits;
use crate::tier::Tier;

/// The caller as the kernel reported it when it connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PeerInfo {
    pub uid: Uid,
    pub gid: Gid,
    pub pid: Pid,
    /// Supplementary groups from `SO_PEERGROUPS`, as of connect.
    pub groups: Vec<Gid>,
    /// Executable path, read under a pidfd; `null` when it could not be verified.
    pub exe: Option<String>,
}

/// The socket a caller came in through and the tier it caps callers at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ListenerInfo {
    pub path: String,
    pub max_tier: Tier,
}

/// Answer to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HelloResult {
    pub protocol: u32,
    pub daemon_version: String,
    /// The requested features this daemon supports.
    pub features: Vec<String>,
    pub max_frame: u32,
    pub peer: PeerInfo,
    pub tier: Tier,
    /// Capability toggles in force.
    pub ops: BTreeMap<String, bool>,
    pub listener: ListenerInfo,
    /// Present while a lockdown refuses every request that changes state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockdown: Option<LockdownInfo>,
}

/// Answer to `health`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HealthResult {
    /// Always `"ok"` from a daemon that can answer at all.
    pub status: String,
}

/// Answer to `version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct VersionResult {
    pub daemon_version: String,
    pub protocol: u32,
}

/// Answer to `audit.verify`: whether the audit log's hash chain is whole, and if not, the
/// first record where it breaks and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditVerifyResult {
    pub intact: bool,
    /// Records checked (up to the first bad one).
    pub records: u64,
    /// The last record the daemon wrote.
    pub head_seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_bad_seq: Option<u64>,
    /// `modified`, `missing`, `reordered` or `truncated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
    /// Records up to this `seq` were removed by retention; the check starts after it, from the
    /// hash sealed there. Absent while nothing was removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor_seq: Option<u64>,
}

/// Answer to `ops.get` and `ops.set`: every toggle in force, and for `ops.set` the running jobs
/// asked to stop because an op they need was switched off.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct OpsResult {
    pub ops: std::collections::BTreeMap<String, bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopping: Vec<crate::JobId>,
}

/// An engaged lockdown, as `hello`, `status` and `lockdown.*` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LockdownInfo {
    pub reason: String,
    pub by_uid: u32,
    /// RFC 3339.
    pub since: String,
}

/// Answer to `lockdown.engage` and `lockdown.release`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct LockdownResult {
    /// `None` once released.
    pub lockdown: Option<LockdownInfo>,
    /// Running jobs that change state, asked to stop by the engagement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stopping: Vec<crate::JobId>,
}

/// One finding of `doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DoctorFinding {
    /// `ok`, `warning` or `error`.
    pub severity: String,
    pub what: String,
    /// How to put it right; empty when ok.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fix: String,
}

/// Answer to `doctor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct DoctorResult {
    pub findings: Vec<DoctorFinding>,
}

/// Answer to `policy.explain`: the gate's decision and every step that led to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ExplainResult {
    /// `allow` or `deny`.
    pub decision: String,
    /// The caller's tier on that listener.
    pub tier: Tier,
    /// For a denial: its error kind and reason, as the caller would get them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub steps: Vec<String>,
    /// For an allowed `job.start` with `params`: `ok`, or why the values would be refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<String>,
}

/// Answer to `policy.reload`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct PolicyReloadResult {
    /// Parts of the file that changed but take effect only after a restart.
    pub needs_restart: Vec<String>,
    /// Problems that do not stop the new policy, as `check-config` prints them.
    pub warnings: Vec<String>,
}

/// Something an administrator should look at now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Alert {
    pub id: u64,
    /// RFC 3339.
    pub ts: String,
    /// `denial_flood`, `protocol_violations`, `lockdown`, `ops`, `audit_broken`.
    pub kind: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
}

/// Answer to `alerts.list`: the newest alerts, oldest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AlertsResult {
    pub alerts: Vec<Alert>,
}

/// Answer to `audit.query`: the records that matched, oldest first, as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct AuditQueryResult {
    pub records: Vec<serde_json::Value>,
    /// The last record the daemon wrote.
    pub head_seq: u64,
    /// Matching records were left out: with `after_seq`, later ones (ask again with `after_seq`
    /// set to the last `seq` answered); without, older ones.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub more: bool,
}

/// Where a caller's tier came from, before any listener cap.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(tag = "by", rename_all = "snake_case")]
pub enum GrantSource {
    /// uid 0 is always admin.
    Root,
    /// A `[tiers.users]` entry.
    User { name: String },
    /// Membership (primary or supplementary, as of connect) of a group in `[tiers]`.
    Group { name: String, gid: Gid },
    /// The user running a `--dev` daemon.
    DevMode,
    /// No mapping applies.
    Unmapped,
}

/// The tier a caller was granted and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct Grant {
    pub tier: Tier,
    #[serde(flatten)]
    pub source: GrantSource,
}

/// Answer to `whoami`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct WhoamiResult {
    pub peer: PeerInfo,
    /// User name of the uid; `null` when the passwd database has no entry.
    pub user: Option<String>,
    /// The tier in force: the grant, capped by the listener.
    pub tier: Tier,
    pub granted: Grant,
    pub listener: ListenerInfo,
    /// Whether the listener's `max_tier` lowered the grant.
    pub capped: bool,
    /// One sentence saying why, for people.
    pub reason: String,
}

/// Whether the daemon runs as a system service or as an unprivileged `--dev` instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum DaemonMode {
    System,
    Dev,
}

/// Connection counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ConnectionCounts {
    /// Connections open now.
    pub open: u64,
    /// Connections admitted since start.
    pub accepted: u64,
}

/// Protocol violations since start, by class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ViolationCounts {
    /// Frames announcing length 0.
    pub frame_empty: u64,
    /// Frames announcing more than `max_frame`.
    pub frame_too_large: u64,
    /// Connections closed in the middle of a frame.
    pub frame_truncated: u64,
    /// Frames whose body did not arrive within `frame_timeout_ms`.
    pub frame_timeout: u64,
    /// Connections that sent no `hello` within `hello_timeout_ms`.
    pub hello_timeout: u64,
    /// Connections whose first request was not a valid `hello`.
    pub hello_missing: u64,
    /// Frames that were not JSON or not JSON-RPC 2.0 requests.
    pub invalid_jsonrpc: u64,
    /// Connections closed for repeated invalid frames.
    pub closed_for_violations: u64,
    /// Connections closed because they did not read their responses.
    pub write_timeout: u64,
}

/// Requests and connections refused to protect other callers, since start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct RefusalCounts {
    /// Connections refused at `max_connections`.
    pub busy_total: u64,
    /// Connections refused at `max_connections_per_uid`.
    pub busy_uid: u64,
    /// Requests refused by a connection's token bucket.
    pub rate_limited_connection: u64,
    /// Requests refused by a uid's token bucket.
    pub rate_limited_uid: u64,
    /// Connections refused because the kernel would not tell who was calling.
    pub identity_unreadable: u64,
}

/// Jobs now, and how the daemon can stop them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct JobCounts {
    pub running: u64,
    pub queued: u64,
    /// Whether each job gets its own cgroup (so stopping it reaches every process it started).
    pub cgroups: bool,
    /// Without cgroups, why: jobs are then stopped through their process group.
    pub cgroup_note: Option<String>,
}

/// Answer to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct StatusResult {
    pub daemon_version: String,
    pub protocol: u32,
    pub mode: DaemonMode,
    pub uptime_ms: u64,
    pub connections: ConnectionCounts,
    pub violations: ViolationCounts,
    pub refusals: RefusalCounts,
    pub jobs: JobCounts,
    pub limits: Limits,
    pub listeners: Vec<ListenerInfo>,
    /// Present while a lockdown refuses every request that changes state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lockdown: Option<LockdownInfo>,
}

/// One owned resource: `resource.create`, `resource.get`, `resource.delete` (what was removed)
/// and each entry of `resource.list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResourceInfo {
    pub kind: String,
    pub name: String,
    /// The owner as the kernel reported the caller (or as root named them).
    pub owner_uid: Uid,
    /// The owner's user name from the passwd database at creation.
    pub owner: String,
    /// The directory.
    pub path: String,
    /// Its permission bits, octal (`"0700"`).
    pub mode: String,
    /// RFC 3339.
    pub created: String,
    /// The job of the kind's `on_create` (for create) or `on_delete` (for delete) hook, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hook_job: Option<crate::ids::JobId>,
}

/// `resource.list`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct ResourceList {
    pub resources: Vec<ResourceInfo>,
}

/// Which hardware signal a host's machine id was derived from, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "snake_case")]
pub enum IdentitySource {
    /// The DMI (SMBIOS) product UUID of the machine.
    DmiProductUuid,
    /// The DMI board serial together with the serial of the root disk.
    BoardAndDiskSerial,
    /// `/etc/machine-id`: changes with a reinstall, so the answer is `degraded`.
    MachineId,
}

impl IdentitySource {
    /// The wire name, also the name hashed into the machine id.
    pub fn as_str(self) -> &'static str {
        match self {
            IdentitySource::DmiProductUuid => "dmi_product_uuid",
            IdentitySource::BoardAndDiskSerial => "board_and_disk_serial",
            IdentitySource::MachineId => "machine_id",
        }
    }
}

impl std::fmt::Display for IdentitySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.pad(self.as_str())
    }
}

/// Answer to `host.identity`: the machine id a fleet knows this host by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
pub struct HostIdentityResult {
    /// `muid_` and 64 lowercase hex digits: SHA-256 over a fixed namespace and the source's
    /// values, so the same hardware gives the same id across reinstalls.
    pub machine_id: String,
    pub source: IdentitySource,
    /// True when only `/etc/machine-id` was usable: a reinstall makes this host a new machine.
    pub degraded: bool,
}
