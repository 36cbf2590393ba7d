//! Human output: short, aligned, and only what a person needs at a glance.

use std::fmt::Write;

use crate::time::timestamp;
use warden_proto::messages::{
    AlertsResult, AuditVerifyResult, DoctorResult, ExplainResult, GrantSource, LockdownResult,
    OpsResult, PolicyReloadResult, ResourceInfo, ResourceList, StatusResult, WhoamiResult,
};

/// `3d 4h`, `5m 12s`, `42s`.
fn duration(ms: u64) -> String {
    let s = ms / 1000;
    let (d, h, m, s) = (s / 86_400, s / 3600 % 24, s / 60 % 60, s % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

/// `name 3, other 1`, or `none` when every count is zero.
fn nonzero<T: serde::Serialize>(counts: &T) -> String {
    let v = serde_json::to_value(counts).unwrap_or_default();
    let parts: Vec<String> = v
        .as_object()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| v.as_u64().filter(|n| *n > 0).map(|n| format!("{k} {n}")))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

pub fn status(s: &StatusResult) -> String {
    let l = &s.limits;
    let mode = match s.mode {
        warden_proto::messages::DaemonMode::System => "system",
        warden_proto::messages::DaemonMode::Dev => "DEV MODE",
    };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "wardend {} (protocol {}, {mode}), up {}",
        s.daemon_version,
        s.protocol,
        duration(s.uptime_ms)
    );
    let _ = writeln!(
        out,
        "connections  {} open, {} accepted (max {} + {} for admins, {} per uid; idle ones closed after {} ms)",
        s.connections.open,
        s.connections.accepted,
        l.max_connections,
        l.admin_reserve,
        l.max_connections_per_uid,
        l.idle_timeout_ms
    );
    let _ = writeln!(
        out,
        "rates        {}/s per connection (burst {}), {}/s per uid (burst {})",
        l.requests_per_second, l.burst, l.uid_requests_per_second, l.uid_burst
    );
    let _ = writeln!(
        out,
        "frames       up to {} bytes; hello within {} ms; a frame within {} ms",
        l.max_frame, l.hello_timeout_ms, l.frame_timeout_ms
    );
    for (i, listener) in s.listeners.iter().enumerate() {
        let label = if i == 0 { "listeners" } else { "" };
        let _ = writeln!(
            out,
            "{label:<12} {} (up to {})",
            listener.path, listener.max_tier
        );
    }
    let j = &s.jobs;
    let stopping = match &j.cgroups {
        true => "one cgroup each".to_owned(),
        false => format!(
            "process groups only ({})",
            j.cgroup_note.as_deref().unwrap_or("no cgroups")
        ),
    };
    let _ = writeln!(
        out,
        "jobs         {} running, {} queued; {stopping}",
        j.running, j.queued
    );
    let _ = writeln!(out, "violations   {}", nonzero(&s.violations));
    let _ = writeln!(out, "refusals     {}", nonzero(&s.refusals));
    if let Some(l) = &s.lockdown {
        let _ = writeln!(
            out,
            "LOCKDOWN     by uid {} since {}: {} (warden lockdown release lifts it)",
            l.by_uid,
            timestamp(&l.since),
            l.reason
        );
    }
    out
}

pub fn host_identity(h: &warden_proto::messages::HostIdentityResult) -> String {
    let mut out = format!("machine id  {}\nsource      {}\n", h.machine_id, h.source);
    if h.degraded {
        out.push_str(
            "degraded    only /etc/machine-id was usable: a reinstall makes this host a new \
             machine to the fleet\n",
        );
    }
    out
}

pub fn whoami(w: &WhoamiResult) -> String {
    let p = &w.peer;
    let user = w
        .user
        .as_deref()
        .map_or("no passwd entry".to_owned(), str::to_owned);
    let groups: Vec<String> = p.groups.iter().map(|g| g.to_string()).collect();
    let mut out = String::new();
    let _ = writeln!(out, "uid {} ({user}), gid {}, pid {}", p.uid, p.gid, p.pid);
    let _ = writeln!(
        out,
        "groups   {}",
        if groups.is_empty() {
            "none".into()
        } else {
            groups.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "exe      {}",
        p.exe.as_deref().unwrap_or("(not verified)")
    );
    let _ = writeln!(out, "tier     {}: {}", w.tier, w.reason);
    if let GrantSource::Unmapped = w.granted.source {
        let _ = writeln!(
            out,
            "         ask an administrator to map your user or a group to a tier in warden.toml"
        );
    }
    let _ = writeln!(
        out,
        "listener {} (up to {})",
        w.listener.path, w.listener.max_tier
    );
    out
}

/// One event notification on one line.
pub fn event(method: &str, p: &serde_json::Value) -> String {
    if method == "events.lagged" {
        return format!("lagged: {} events lost", p["dropped"]);
    }
    let topic = p["topic"].as_str().unwrap_or("?");
    let e = &p["event"];
    match topic {
        "job" => format!(
            "job      {} {} {} (uid {})",
            e["job_id"].as_str().unwrap_or(""),
            e["action"].as_str().unwrap_or(""),
            e["state"].as_str().unwrap_or(""),
            e["uid"]
        ),
        "audit" => format!("audit    {}", audit_record(e)),
        _ => format!("{topic:<8} {e}"),
    }
}

pub fn alerts(a: &AlertsResult) -> String {
    if a.alerts.is_empty() {
        return "no alerts\n".to_owned();
    }
    let mut out = String::new();
    for alert in &a.alerts {
        let _ = writeln!(
            out,
            "{} {:<20} {}",
            timestamp(&alert.ts),
            alert.kind,
            alert.message
        );
    }
    out
}

pub fn doctor(d: &DoctorResult) -> String {
    if d.findings.is_empty() {
        return "no findings\n".to_owned();
    }
    let mut out = String::new();
    for f in &d.findings {
        let _ = writeln!(out, "{:<7} {}", f.severity, f.what);
        if !f.fix.is_empty() {
            let _ = writeln!(out, "        fix: {}", f.fix);
        }
    }
    out
}

pub fn explained(r: &ExplainResult) -> String {
    let mut out = String::new();
    for step in &r.steps {
        let _ = writeln!(out, "  {step}");
    }
    match (&r.kind, &r.reason) {
        (Some(kind), Some(reason)) => {
            let _ = writeln!(out, "deny ({kind}): {reason}");
        }
        _ => {
            let _ = writeln!(out, "allow at tier {}", r.tier);
        }
    }
    if let Some(p) = &r.params {
        let _ = writeln!(out, "params: {p}");
    }
    out
}

pub fn reloaded(r: &PolicyReloadResult) -> String {
    let mut out = String::new();
    for w in &r.warnings {
        let _ = writeln!(out, "{w}");
    }
    if r.needs_restart.is_empty() {
        out.push_str("policy reloaded\n");
    } else {
        let _ = writeln!(
            out,
            "policy reloaded; {} changed too and take effect after a restart",
            r.needs_restart.join(", ")
        );
    }
    out
}

pub fn ops(o: &OpsResult) -> String {
    let mut out = String::new();
    if o.ops.is_empty() {
        out.push_str("no ops toggles\n");
    }
    for (name, on) in &o.ops {
        let _ = writeln!(out, "{name:<12} {}", if *on { "on" } else { "off" });
    }
    for id in &o.stopping {
        let _ = writeln!(out, "stopping {id}");
    }
    out
}

pub fn lockdown(l: &LockdownResult) -> String {
    let mut out = match &l.lockdown {
        Some(d) => format!(
            "locked down by uid {} since {}: {}\n",
            d.by_uid,
            timestamp(&d.since),
            d.reason
        ),
        None => "lockdown released\n".to_owned(),
    };
    for id in &l.stopping {
        let _ = writeln!(out, "stopping {id}");
    }
    out
}

/// One audit record on one line: seq, time, event, who, what, and how it went.
pub fn audit_record(r: &serde_json::Value) -> String {
    let s = |k: &str| r[k].as_str().unwrap_or("");
    let seq = r["seq"].as_u64().unwrap_or(0);
    let mut line = format!("{seq:>6} {} {:<15}", timestamp(s("ts")), s("event"));
    if let Some(uid) = r["peer"]["uid"].as_u64() {
        let _ = write!(line, " uid {uid}");
    }
    for key in ["method", "action", "decision", "outcome", "job_id"] {
        if !s(key).is_empty() {
            let _ = write!(line, " {}", s(key));
        }
        // A resource's records name it in their params.
        if let (true, Some(kind), Some(name)) = (
            key == "action",
            r["params"]["kind"].as_str(),
            r["params"]["name"].as_str(),
        ) {
            let _ = write!(line, " {kind}/{name}");
        }
    }
    if !s("reason").is_empty() {
        let _ = write!(line, " ({})", s("reason"));
    }
    line
}

pub fn audit_verify(v: &AuditVerifyResult) -> String {
    // Once retention removed old segments, the check starts after the anchor.
    let first = v.anchor_seq.unwrap_or(0) + 1;
    let from = match v.anchor_seq {
        Some(anchor) => {
            format!(" (from record {first}; records to {anchor} were removed by retention)")
        }
        None => String::new(),
    };
    match (v.first_bad_seq, &v.problem) {
        (Some(seq), Some(problem)) => format!(
            "audit log broken at record {seq}: {problem} (records {first} to {} are intact; the daemon wrote {}){from}\n",
            seq.saturating_sub(1),
            v.head_seq
        ),
        _ => format!("audit log intact: {} records{from}\n", v.records),
    }
}

pub fn resource(r: &ResourceInfo) -> String {
    let mut out = format!(
        "{}/{}  {}  owner {} ({})  mode {}  created {}\n",
        r.kind,
        r.name,
        r.path,
        r.owner,
        r.owner_uid,
        r.mode,
        timestamp(&r.created)
    );
    if let Some(job) = &r.hook_job {
        let _ = writeln!(out, "hook job {job}");
    }
    out
}

pub fn resource_deleted(r: &ResourceInfo) -> String {
    format!("deleted {}/{} ({})\n", r.kind, r.name, r.path)
}

pub fn resources(l: &ResourceList) -> String {
    if l.resources.is_empty() {
        return "no resources\n".to_owned();
    }
    let mut out = String::new();
    for r in &l.resources {
        let _ = writeln!(
            out,
            "{:<12} {:<24} {:<12} {}",
            r.kind, r.name, r.owner, r.path
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_short() {
        assert_eq!(duration(42_000), "42s");
        assert_eq!(duration(312_000), "5m 12s");
        assert_eq!(duration(3_700_000), "1h 1m");
        assert_eq!(duration(90_000_000), "1d 1h");
    }
}
