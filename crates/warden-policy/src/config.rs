//! The file model of `warden.toml`, parsed with unknown keys refused. Every value that can be
//! wrong on its own is checked while it is deserialized, so its error carries the line it is on;
//! checks that need more than one value use spans kept with [`Spanned`].

use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer};
use toml::Spanned;
use warden_proto::{Limits, Tier};

/// A problem found in a configuration file, at a line where known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    /// The 1-based column, where the TOML parser names one (syntax and type errors).
    pub column: Option<usize>,
    pub message: String,
}

/// A configuration that cannot be used, with every problem found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    /// The file name (or other label) the text came from.
    pub origin: String,
    pub problems: Vec<Problem>,
}

impl Problem {
    /// `origin:line: message`, the form editors and CI logs link to.
    pub fn display<'a>(&'a self, origin: &'a str) -> impl fmt::Display + 'a {
        Located(self, origin, "")
    }

    /// `origin:line: warning: message`.
    pub fn display_warning<'a>(&'a self, origin: &'a str) -> impl fmt::Display + 'a {
        Located(self, origin, "warning: ")
    }
}

struct Located<'a>(&'a Problem, &'a str, &'static str);

impl fmt::Display for Located<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Located(p, origin, label) = self;
        match (p.line, p.column) {
            (Some(line), Some(column)) => {
                write!(f, "{origin}:{line}:{column}: {label}{}", p.message)
            }
            (Some(line), None) => write!(f, "{origin}:{line}: {label}{}", p.message),
            (None, _) => write!(f, "{origin}: {label}{}", p.message),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}", p.display(&self.origin))?;
        }
        Ok(())
    }
}

/// 1-based column (in characters) of a byte offset.
pub(crate) fn column_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    let start = text.as_bytes()[..end]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    text.get(start..end).map_or(1, |s| s.chars().count() + 1)
}

/// 1-based line of a byte offset.
pub(crate) fn line_of(text: &str, span: &Range<usize>) -> usize {
    let end = span.start.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The whole file.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default)]
    pub daemon: DaemonSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub tiers: TiersSection,
    #[serde(default, rename = "listener")]
    pub listeners: Vec<Spanned<ListenerSection>>,
    #[serde(default)]
    pub ops: BTreeMap<Spanned<OpName>, bool>,
    #[serde(default)]
    pub guards: GuardsSection,
    #[serde(default)]
    pub jobs: JobsSection,
    #[serde(default)]
    pub audit: AuditSection,
    #[serde(default, rename = "action")]
    pub actions: Vec<Spanned<ActionSection>>,
    #[serde(default, rename = "resource")]
    pub resources: Vec<Spanned<ResourceSection>>,
    #[serde(default)]
    pub fleet: Option<Spanned<crate::fleet::FleetSection>>,
}

/// One `[[resource]]`: a kind of directory users own.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResourceSection {
    pub kind: Spanned<String>,
    /// Where the directories are made; root's, and not writable by anyone else.
    pub base_dir: Spanned<AbsPath>,
    #[serde(default = "default_resource_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub name_pattern: Option<Spanned<String>>,
    /// Resources of this kind one uid may own.
    pub max_per_uid: Ranged<1, 1_000_000>,
    /// The tier needed to create one.
    pub tier: Tier,
    /// Declared actions run with the resource's `kind`, `name`, `owner`, `uid` and `path` as
    /// parameters (those the action declares).
    #[serde(default)]
    pub on_create: Option<Spanned<String>>,
    #[serde(default)]
    pub on_delete: Option<Spanned<String>>,
}

fn default_resource_mode() -> Mode {
    Mode(0o700)
}

/// `[jobs]`: how jobs are kept.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsSection {
    /// Largest output log per job; later output is dropped after a truncation marker.
    pub log_cap_bytes: Ranged<4096, { 1 << 30 }>,
    /// Finished jobs kept in memory (older ones are read from the ledger).
    pub keep_finished: Ranged<1, 100_000>,
    /// Days finished jobs stay in the ledger.
    pub history_days: Ranged<1, 3650>,
    /// Seconds shutdown waits for jobs that cannot be cancelled.
    pub shutdown_grace_s: Ranged<0, 3600>,
    /// Jobs one uid may have queued or running at once; more are refused with `busy`.
    pub max_active_per_uid: Ranged<1, 100_000>,
    /// Finished jobs of one uid kept in the ledger; older ones are pruned with their logs.
    pub history_per_uid: Ranged<1, 1_000_000>,
}

impl Default for JobsSection {
    fn default() -> Self {
        JobsSection {
            log_cap_bytes: Ranged(16 << 20),
            keep_finished: Ranged(200),
            history_days: Ranged(30),
            shutdown_grace_s: Ranged(25),
            max_active_per_uid: Ranged(64),
            history_per_uid: Ranged(1000),
        }
    }
}

/// `[audit]`: how much the audit log keeps, and how much one uid may make it record.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Size at which the live file is closed as a segment.
    pub segment_bytes: Ranged<4096, { 1 << 32 }>,
    /// Closed segments kept; older ones are removed (at least one is always kept).
    pub keep_segments: Ranged<1, 1_000_000>,
    /// Bytes of closed segments kept; 0 for no limit besides `keep_segments`.
    pub max_bytes: Ranged<0, { 1 << 50 }>,
    /// Requests that change something (and so are recorded) one uid other than root may make
    /// per minute; more are refused with `rate_limited`.
    pub uid_changes_per_minute: Ranged<1, 1_000_000>,
}

impl Default for AuditSection {
    fn default() -> Self {
        AuditSection {
            segment_bytes: Ranged(64 << 20),
            keep_segments: Ranged(16),
            max_bytes: Ranged(0),
            uid_changes_per_minute: Ranged(120),
        }
    }
}

/// One `[[action]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionSection {
    pub name: Spanned<String>,
    #[serde(default)]
    pub description: String,
    pub argv: Spanned<Vec<Spanned<String>>>,
    #[serde(default)]
    pub params: BTreeMap<Spanned<String>, Spanned<ParamSection>>,
    #[serde(default)]
    pub run_as: Option<RunAsSection>,
    #[serde(default)]
    pub env: BTreeMap<Spanned<String>, String>,
    #[serde(default)]
    pub env_keep: Vec<Spanned<String>>,
    #[serde(default)]
    pub cwd: Option<AbsPath>,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: Ranged<1, 604_800>,
    #[serde(default)]
    pub cancel: CancelSection,
    #[serde(default)]
    pub concurrency_group: Option<Spanned<String>>,
    #[serde(default = "yes")]
    pub queue: bool,
    #[serde(default = "default_action_tier")]
    pub tier: Tier,
    #[serde(default)]
    pub ops: Vec<Spanned<String>>,
    #[serde(default = "yes")]
    pub mutating: bool,
    #[serde(default)]
    pub remote: bool,
    #[serde(default)]
    pub rollback: Option<Spanned<Vec<Spanned<String>>>>,
    #[serde(default)]
    pub reconcile: Option<Spanned<Vec<Spanned<String>>>>,
    /// A template written to the job's stdin: how a secret reaches a job unseen by other users.
    #[serde(default)]
    pub stdin: Option<Spanned<String>>,
}

fn default_timeout_s() -> Ranged<1, 604_800> {
    Ranged(3600)
}

fn yes() -> bool {
    true
}

fn default_action_tier() -> Tier {
    Tier::Operator
}

/// `[action.run_as]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunAsSection {
    pub user: Spanned<String>,
    #[serde(default)]
    pub group: Option<Spanned<String>>,
}

/// `[action.cancel]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CancelSection {
    pub signal: SignalName,
    pub grace_s: Ranged<0, 3600>,
}

impl Default for CancelSection {
    fn default() -> Self {
        CancelSection {
            signal: SignalName("SIGTERM".into()),
            grace_s: Ranged(5),
        }
    }
}

/// A signal that may ask a job to stop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignalName(pub String);

/// Signals an action may use to ask a job to stop.
pub const CANCEL_SIGNALS: &[&str] = &[
    "SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2", "SIGKILL",
];

impl<'de> Deserialize<'de> for SignalName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if CANCEL_SIGNALS.contains(&s.as_str()) {
            Ok(SignalName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "signal `{s}` must be one of {}",
                CANCEL_SIGNALS.join(", ")
            )))
        }
    }
}

/// `[action.params.NAME]`, by `type`. (No `Spanned` inside: serde buffers the fields of an
/// internally tagged enum, which loses positions; problems point at the table instead.)
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ParamSection {
    String {
        #[serde(default = "default_max_len")]
        max_len: Ranged<1, 65_536>,
        #[serde(default)]
        pattern: Option<String>,
        #[serde(default)]
        secret: bool,
    },
    Enum {
        values: Vec<String>,
        #[serde(default)]
        secret: bool,
    },
    Int {
        #[serde(default = "int_min")]
        min: i64,
        #[serde(default = "int_max")]
        max: i64,
        #[serde(default)]
        secret: bool,
    },
    Bool {
        #[serde(default)]
        secret: bool,
    },
    Path {
        under: Vec<AbsPath>,
        #[serde(default)]
        must_exist: bool,
        #[serde(default)]
        secret: bool,
    },
}

fn default_max_len() -> Ranged<1, 65_536> {
    Ranged(256)
}

fn int_min() -> i64 {
    i64::MIN
}

fn int_max() -> i64 {
    i64::MAX
}

/// `[daemon]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    pub state_dir: AbsPath,
    pub runtime_dir: AbsPath,
}

impl Default for DaemonSection {
    fn default() -> Self {
        DaemonSection {
            state_dir: AbsPath(PathBuf::from("/var/lib/warden")),
            runtime_dir: AbsPath(PathBuf::from("/run/warden")),
        }
    }
}

/// `[limits]`, each value range-checked as it is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_frame: Ranged<256, { 16 << 20 }>,
    pub max_connections: Ranged<1, 1_000_000>,
    pub max_connections_per_uid: Ranged<1, 1_000_000>,
    pub admin_reserve: Ranged<0, 1_000_000>,
    pub requests_per_second: Rate,
    pub burst: Ranged<1, 1_000_000>,
    pub uid_requests_per_second: Rate,
    pub uid_burst: Ranged<1, 1_000_000>,
    pub hello_timeout_ms: Ranged<10, 600_000>,
    pub frame_timeout_ms: Ranged<10, 600_000>,
    pub idle_timeout_ms: Ranged<10, 86_400_000>,
}

impl Default for LimitsSection {
    fn default() -> Self {
        let d = Limits::default();
        LimitsSection {
            max_frame: Ranged(d.max_frame.into()),
            max_connections: Ranged(d.max_connections.into()),
            max_connections_per_uid: Ranged(d.max_connections_per_uid.into()),
            admin_reserve: Ranged(d.admin_reserve.into()),
            requests_per_second: Rate(d.requests_per_second),
            burst: Ranged(d.burst.into()),
            uid_requests_per_second: Rate(d.uid_requests_per_second),
            uid_burst: Ranged(d.uid_burst.into()),
            hello_timeout_ms: Ranged(d.hello_timeout_ms),
            frame_timeout_ms: Ranged(d.frame_timeout_ms),
            idle_timeout_ms: Ranged(d.idle_timeout_ms),
        }
    }
}

impl LimitsSection {
    /// The limits in their wire form. The ranges above keep every value within `u32`.
    pub fn to_limits(&self) -> Limits {
        let u = |v: u64| u32::try_from(v).unwrap_or(u32::MAX);
        Limits {
            max_frame: u(self.max_frame.0),
            max_connections: u(self.max_connections.0),
            max_connections_per_uid: u(self.max_connections_per_uid.0),
            admin_reserve: u(self.admin_reserve.0),
            requests_per_second: self.requests_per_second.0,
            burst: u(self.burst.0),
            uid_requests_per_second: self.uid_requests_per_second.0,
            uid_burst: u(self.uid_burst.0),
            hello_timeout_ms: self.hello_timeout_ms.0,
            frame_timeout_ms: self.frame_timeout_ms.0,
            idle_timeout_ms: self.idle_timeout_ms.0,
        }
    }
}

/// `[tiers]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct TiersSection {
    #[serde(default)]
    pub admin_groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub operator_groups: Vec<Spanned<String>>,
    #[serde(default)]
    pub read_only_groups: Vec<Spanned<String>>,
    /// User name → tier.
    #[serde(default)]
    pub users: BTreeMap<Spanned<String>, Tier>,
}

/// One `[[listener]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub path: AbsPath,
    #[serde(default = "default_listener_mode")]
    pub mode: Mode,
    #[serde(default)]
    pub group: Option<Spanned<String>>,
    #[serde(default = "default_max_tier")]
    pub max_tier: Tier,
    /// What the socket speaks: `"warden"` (length-prefixed JSON-RPC) or `"varlink"`.
    #[serde(default)]
    pub protocol: ListenerProtocol,
}

/// The wire protocol of one listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// Length-prefixed JSON-RPC 2.0 frames (docs/PROTOCOL.md).
    #[default]
    Warden,
    /// NUL-terminated varlink messages, interface `io.warden`.
    Varlink,
}

fn default_listener_mode() -> Mode {
    Mode(0o660)
}

fn default_max_tier() -> Tier {
    Tier::Admin
}

/// `[guards]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct GuardsSection {
    #[serde(default)]
    pub mutating_uids: Option<Vec<u32>>,
    #[serde(default)]
    pub mutating_exes: Option<Vec<ExeGuardSection>>,
}

/// One entry of `guards.mutating_exes`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExeGuardSection {
    pub path: AbsPath,
    #[serde(default)]
    pub sha256: Option<Sha256Hex>,
}

/// An absolute path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AbsPath(pub PathBuf);

impl<'de> Deserialize<'de> for AbsPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let p = PathBuf::from(&s);
        if !p.is_absolute() {
            return Err(serde::de::Error::custom(format!(
                "path `{s}` must be absolute"
            )));
        }
        if p.components().any(|c| c == std::path::Component::ParentDir) {
            return Err(serde::de::Error::custom(format!(
                "path `{s}` must not contain `..`"
            )));
        }
        Ok(AbsPath(p))
    }
}

/// A permission mode written as an octal string (`"0660"`), at most `0777`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mode(pub u32);

impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let bad = || {
            serde::de::Error::custom(format!(
                "mode `{s}` must be an octal string from \"0000\" to \"0777\", e.g. \"0660\""
            ))
        };
        if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return Err(bad());
        }
        let m = u32::from_str_radix(&s, 8).map_err(|_| bad())?;
        if m > 0o777 {
            return Err(bad());
        }
        Ok(Mode(m))
    }
}

/// An integer within `MIN..=MAX`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ranged<const MIN: u64, const MAX: u64>(pub u64);

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for Ranged<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(d)?;
        match u64::try_from(v) {
            Ok(v) if (MIN..=MAX).contains(&v) => Ok(Ranged(v)),
            _ => Err(serde::de::Error::custom(format!(
                "{v} is out of range: must be from {MIN} to {MAX}"
            ))),
        }
    }
}

/// A positive, finite rate in requests per second (an integer or a float).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Num {
            I(i64),
            F(f64),
        }
        let v = match Num::deserialize(d)? {
            Num::I(i) => i as f64,
            Num::F(f) => f,
        };
        if v.is_finite() && v > 0.0 && v <= 1e9 {
            Ok(Rate(v))
        } else {
            Err(serde::de::Error::custom(format!(
                "{v} is not a rate: must be above 0 and at most 1e9 per second"
            )))
        }
    }
}

/// An ops toggle name: `[a-z][a-z0-9_-]{0,31}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct OpName(pub String);

impl<'de> Deserialize<'de> for OpName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let ok = (1..=32).contains(&s.len())
            && s.starts_with(|c: char| c.is_ascii_lowercase())
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(OpName(s))
        } else {
            Err(serde::de::Error::custom(format!(
                "op name `{s}` must be 1 to 32 of a-z, 0-9, `_`, `-`, starting with a letter"
            )))
        }
    }
}

/// A SHA-256 digest written as 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sha256Hex(pub [u8; 32]);

impl<'de> Deserialize<'de> for Sha256Hex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        parse_sha256(&s)
            .map(Sha256Hex)
            .ok_or_else(|| serde::de::Error::custom("sha256 must be 64 hexadecimal digits"))
    }
}

fn parse_sha256(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses the text of a configuration file.
pub fn parse(text: &str, origin: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|e| parse_error(text, origin, &e))
}

/// A TOML parser's error at its line and column.
pub(crate) fn parse_error(text: &str, origin: &str, e: &toml::de::Error) -> ConfigError {
    ConfigError {
        origin: origin.to_owned(),
        problems: vec![Problem {
            line: e.span().map(|s| line_of(text, &s)),
            column: e.span().map(|s| column_of(text, &s)),
            message: e.message().trim_end().to_owned(),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> ConfigError {
        parse(text, "w.toml").unwrap_err()
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = parse("", "w.toml").unwrap();
        assert_eq!(c.limits.to_limits(), Limits::default());
        assert_eq!(c.daemon.runtime_dir.0, PathBuf::from("/run/warden"));
        assert!(c.listeners.is_empty());
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_line() {
        let e = err("[daemon]\nstate_dir = \"/x\"\n\n[limits]\nmax_conections = 3\n");
        assert_eq!(e.problems[0].line, Some(5));
        assert!(
            e.problems[0]
                .message
                .contains("unknown field `max_conections`"),
            "{e}"
        );
        assert!(e.to_string().starts_with("w.toml:5:1: "), "{e}");

        let e = err("[[listener]]\npath = \"/run/a.sock\"\nowner = \"x\"\n");
        assert_eq!(e.problems[0].line, Some(3));
        assert!(e.problems[0].message.contains("`owner`"), "{e}");

        let e = err("colour = 1\n");
        assert_eq!(e.problems[0].line, Some(1));
    }

    #[test]
    fn bad_values_are_errors_at_their_line() {
        for (text, line, needle) in [
            ("[limits]\n\nmax_frame = 10\n", 3, "out of range"),
            ("[limits]\nrequests_per_second = 0\n", 2, "not a rate"),
            ("[limits]\nburst = -1\n", 2, "out of range"),
            ("[[listener]]\npath = \"/a\"\nmode = \"0999\"\n", 3, "octal"),
            ("[[listener]]\npath = \"/a\"\nmode = \"4755\"\n", 3, "octal"),
            ("[[listener]]\npath = \"rel.sock\"\n", 2, "absolute"),
            (
                "[[listener]]\npath = \"/a\"\nmax_tier = \"root\"\n",
                3,
                "unknown variant",
            ),
            ("[ops]\nStorage = true\n", 2, "op name"),
            (
                "[guards]\nmutating_exes = [{path = \"/bin/x\", sha256 = \"zz\"}]\n",
                2,
                "sha256",
            ),
            ("[tiers.users]\nalice = \"boss\"\n", 2, "unknown variant"),
        ] {
            let e = err(text);
            assert_eq!(e.problems[0].line, Some(line), "{text}: {e}");
            assert!(e.problems[0].message.contains(needle), "{text}: {e}");
        }
    }

    #[test]
    fn valid_values_parse() {
        let c = parse(
            r#"
[limits]
requests_per_second = 2.5
max_frame = 256
[[listener]]
path = "/run/warden/ro.sock"
mode = "0666"
max_tier = "read_only"
[guards]
mutating_exes = [{ path = "/usr/bin/x", sha256 = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF" }]
"#,
            "w.toml",
        )
        .unwrap();
        assert_eq!(c.limits.to_limits().requests_per_second, 2.5);
        assert_eq!(c.listeners[0].get_ref().mode, Mode(0o666));
        let sha = c.guards.mutating_exes.unwrap()[0].sha256.unwrap();
        assert_eq!(sha.0[31], 0xff);
    }
}
