//! `wardend doctor`: the installation's security posture, each finding with a severity and a
//! fix. It reads files only; it changes nothing and needs no running daemon.

use std::fmt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use warden_policy::Policy;

use crate::audit::{self, Seals, Verdict};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Ok,
    Warning,
    Error,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// One thing checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub severity: Severity,
    pub what: String,
    /// How to put it right; empty for `Ok`.
    pub fix: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Ok => "ok     ",
            Severity::Warning => "warning",
            Severity::Error => "error  ",
        };
        write!(f, "{label} {}", self.what)?;
        if !self.fix.is_empty() {
            write!(f, "\n        fix: {}", self.fix)?;
        }
        Ok(())
    }
}

fn ok(what: String) -> Finding {
    Finding {
        severity: Severity::Ok,
        what,
        fix: String::new(),
    }
}

fn bad(severity: Severity, what: String, fix: String) -> Finding {
    Finding {
        severity,
        what,
        fix,
    }
}

/// `path` must be root's and writable by no one else (`mode` the most it may allow).
fn owned_by_root(out: &mut Vec<Finding>, path: &Path, max_mode: u32, what: &str) {
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return;
    };
    let mode = m.mode() & 0o7777;
    let shown = path.display();
    if m.file_type().is_symlink() {
        out.push(bad(
            Severity::Error,
            format!("{what} {shown} is a symlink"),
            format!("replace it with the file itself, owned by root, mode {max_mode:04o}"),
        ));
    } else if m.uid() != 0 || mode & !max_mode != 0 {
        out.push(bad(
            Severity::Error,
            format!(
                "{what} {shown} is owned by uid {} with mode {mode:04o}",
                m.uid()
            ),
            format!("chown root:root {shown} && chmod {max_mode:04o} {shown}"),
        ));
    } else {
        out.push(ok(format!("{what} {shown} is root's, mode {mode:04o}")));
    }
}

/// Every check, for the configuration at `config` that loaded as `policy`.
pub fn run(config: &Path, policy: &Policy) -> Vec<Finding> {
    let mut out = Vec::new();
    owned_by_root(&mut out, config, 0o644, "configuration");
    let dropins = crate::settings::dropin_dir(config);
    if dropins.is_dir() {
        owned_by_root(&mut out, &dropins, 0o755, "drop-in directory");
        let mut files: Vec<_> = std::fs::read_dir(&dropins)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        for f in files {
            owned_by_root(&mut out, &f, 0o644, "drop-in");
        }
    }

    let state = &policy.state_dir;
    if state.exists() {
        owned_by_root(&mut out, state, 0o700, "state directory");
        for (name, mode) in [
            ("ledger.db", 0o600),
            ("ops.json", 0o600),
            ("lockdown.json", 0o600),
            (crate::resources::FILE, 0o600),
            ("audit", 0o700),
            ("audit/audit.log", 0o600),
            ("jobs", 0o700),
        ] {
            owned_by_root(&mut out, &state.join(name), mode, "state");
        }
        for segment in audit::closed_segments(&state.join("audit").join(audit::FILE)) {
            owned_by_root(&mut out, &segment, 0o600, "state");
        }
    } else {
        out.push(bad(
            Severity::Warning,
            format!("state directory {} does not exist yet", state.display()),
            "start wardend once; it creates it root's, mode 0700".into(),
        ));
    }

    // Another user able to write a base directory could swap names between the daemon's steps.
    for kind in policy.resources.values() {
        owned_by_root(
            &mut out,
            &kind.base_dir,
            0o755,
            &format!("base_dir of resource kind {}", kind.kind),
        );
    }

    for l in &policy.listeners {
        match std::fs::symlink_metadata(&l.path) {
            Ok(m) if m.file_type().is_socket() => {
                let mode = m.mode() & 0o777;
                let gid_ok = l.group.as_ref().is_none_or(|(_, gid)| m.gid() == gid.0);
                if mode != l.mode || !gid_ok {
                    out.push(bad(
                        Severity::Error,
                        format!(
                            "socket {} has mode {mode:04o} and gid {}; the configuration says {:04o}{}",
                            l.path.display(),
                            m.gid(),
                            l.mode,
                            l.group
                                .as_ref()
                                .map(|(n, _)| format!(" and group {n}"))
                                .unwrap_or_default()
                        ),
                        "restart wardend (or its socket unit) so it makes the socket again".into(),
                    ));
                } else {
                    out.push(ok(format!(
                        "socket {} has mode {mode:04o}",
                        l.path.display()
                    )));
                }
            }
            Ok(_) => out.push(bad(
                Severity::Error,
                format!("{} is not a socket", l.path.display()),
                "remove it; wardend makes its sockets itself".into(),
            )),
            Err(_) => out.push(bad(
                Severity::Warning,
                format!(
                    "socket {} does not exist (is wardend running?)",
                    l.path.display()
                ),
                "systemctl start wardend.socket".into(),
            )),
        }
    }

    unit_hardening(&mut out);

    let log = state.join("audit").join(audit::FILE);
    if log.exists() {
        let sealed =
            Seals::open(&state.join("ledger.db")).and_then(|s| Ok((s.all()?, s.anchor()?)));
        match sealed
            .and_then(|(seals, anchor)| audit::verify_from(&log, None, &seals, anchor.as_ref()))
        {
            Ok(Verdict::Intact { records }) => {
                out.push(ok(format!("audit log intact: {records} records")));
            }
            Ok(Verdict::Broken { seq, problem }) => out.push(bad(
                Severity::Error,
                format!("audit log broken at record {seq}: {}", problem.as_str()),
                "keep the file as evidence, find out who changed it; see warden audit verify"
                    .into(),
            )),
            Err(e) => out.push(bad(
                Severity::Error,
                format!("cannot check the audit log: {e}"),
                "check the state directory's files".into(),
            )),
        }
    }

    let ledger = state.join("ledger.db");
    if ledger.exists() {
        let checked = rusqlite::Connection::open_with_flags(
            &ledger,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get::<_, String>(0)));
        match checked {
            Ok(s) if s == "ok" => out.push(ok("ledger integrity check passes".into())),
            Ok(s) => out.push(bad(
                Severity::Error,
                format!("ledger integrity check fails: {s}"),
                "stop wardend and restore ledger.db from a backup".into(),
            )),
            Err(e) => out.push(bad(
                Severity::Error,
                format!("cannot open the ledger: {e}"),
                "check the state directory's files".into(),
            )),
        }
    }
    out
}

/// The installed systemd unit keeps its hardening and lets jobs have cgroups.
fn unit_hardening(out: &mut Vec<Finding>) {
    let Some((path, text)) = [
        "/etc/systemd/system/wardend.service",
        "/usr/lib/systemd/system/wardend.service",
        "/lib/systemd/system/wardend.service",
    ]
    .iter()
    .find_map(|p| std::fs::read_to_string(p).ok().map(|t| (*p, t))) else {
        return;
    };
    let has = |line: &str| text.lines().any(|l| l.trim() == line);
    for (line, why) in [
        (
            "NoNewPrivileges=yes",
            "set-user-ID programs gain nothing in a job",
        ),
        ("ProtectSystem=strict", "jobs cannot write the system"),
        (
            "SystemCallFilter=@system-service",
            "jobs cannot mount, load modules or reboot by themselves",
        ),
        ("Delegate=yes", "each job gets a cgroup of its own"),
        (
            "KillMode=control-group",
            "nothing outlives a stopped daemon",
        ),
    ] {
        if has(line) {
            out.push(ok(format!("{path} has {line}")));
        } else {
            out.push(bad(
                Severity::Warning,
                format!("{path} lacks {line} ({why})"),
                "install dist/wardend.service again, and relax it only in a drop-in".into(),
            ));
        }
    }
    if !text
        .lines()
        .any(|l| l.trim_start().starts_with("CapabilityBoundingSet="))
    {
        out.push(bad(
            Severity::Warning,
            format!("{path} does not narrow CapabilityBoundingSet="),
            "install dist/wardend.service again".into(),
        ));
    }
}
