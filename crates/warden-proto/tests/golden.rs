//! Golden fixtures: every message shape on the wire, byte for byte (field order included), as the
//! real encoders write it. A failing case means the wire contract changed: if that is intended,
//! bump PROTOCOL_VERSION when it is incompatible, then re-bless with `WARDEN_BLESS=1`.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::json;
use warden_proto::envelope::{self, Envelope, Id};
use warden_proto::jobs::*;
use warden_proto::messages::*;
use warden_proto::request::HelloParams;
use warden_proto::{
    ErrorKind, Gid, JobId, Limits, Method, Pid, Request, RpcError, Tier, Uid, error,
};

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Tracks whether a JSON scan is inside a string literal.
#[derive(Default)]
struct InString {
    inside: bool,
    escaped: bool,
}

impl InString {
    /// Feeds one character met inside a string; a closing quote ends the string.
    fn feed(&mut self, c: char) {
        match (self.escaped, c) {
            (true, _) => self.escaped = false,
            (false, '\\') => self.escaped = true,
            (false, '"') => self.inside = false,
            _ => {}
        }
    }
}

/// Removes whitespace outside strings, keeping everything else (and the order) as written.
fn minify(text: &str) -> String {
    let (mut out, mut s) = (String::new(), InString::default());
    for c in text.chars() {
        if s.inside {
            out.push(c);
            s.feed(c);
        } else if !c.is_whitespace() {
            s.inside = c == '"';
            out.push(c);
        }
    }
    out
}

/// Indents compact JSON two spaces a level, keeping field order (for blessing new fixtures).
fn pretty(compact: &str) -> String {
    let (mut out, mut depth, mut s) = (String::new(), 0usize, InString::default());
    let mut chars = compact.chars().peekable();
    while let Some(c) = chars.next() {
        if s.inside {
            out.push(c);
            s.feed(c);
            continue;
        }
        match c {
            '"' => {
                s.inside = true;
                out.push(c);
            }
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                if chars.peek() == Some(&close) {
                    out.push(c);
                    out.push(close);
                    chars.next();
                } else {
                    depth += 1;
                    out.push(c);
                    out.push('\n');
                    out.push_str(&"  ".repeat(depth));
                }
            }
            '}' | ']' => {
                depth -= 1;
                out.push('\n');
                out.push_str(&"  ".repeat(depth));
                out.push(c);
            }
            ',' => {
                out.push_str(",\n");
                out.push_str(&"  ".repeat(depth));
            }
            ':' => out.push_str(": "),
            _ => out.push(c),
        }
    }
    out.push('\n');
    out
}

fn check(name: &str, bytes: Vec<u8>) {
    let compact = String::from_utf8(bytes).unwrap();
    let path = golden_dir().join(format!("{name}.json"));
    if std::env::var_os("WARDEN_BLESS").is_some() {
        std::fs::write(&path, pretty(&compact)).unwrap();
    }
    let fixture = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (run with WARDEN_BLESS=1 to create it)",
            path.display()
        )
    });
    assert_eq!(minify(&fixture), compact, "wire shape of {name} changed");
}

fn peer() -> PeerInfo {
    PeerInfo {
        uid: Uid(1000),
        gid: Gid(1000),
        pid: Pid(4242),
        groups: vec![Gid(1000), Gid(1500)],
        exe: Some("/usr/bin/warden".into()),
    }
}

fn listener() -> ListenerInfo {
    ListenerInfo {
        path: "/run/warden/warden.sock".into(),
        max_tier: Tier::Admin,
    }
}

fn ok<T: serde::Serialize>(result: &T) -> Vec<u8> {
    envelope::result_response(&Id::number(1), result).unwrap()
}

#[test]
fn requests_match_their_fixtures_and_parse_back() {
    let hello = json!({"protocol": 1, "client": "warden-cli", "features": []});
    let job = json!({"job_id": "job_3f2a9c0d5e7b8a61"});
    let cases = [
        ("request.hello", Method::Hello, hello),
        ("request.health", Method::Health, json!({})),
        ("request.version", Method::Version, json!({})),
        ("request.whoami", Method::Whoami, json!({})),
        ("request.status", Method::Status, json!({})),
        ("request.actions_list", Method::ActionsList, json!({})),
        (
            "request.actions_describe",
            Method::ActionsDescribe,
            json!({"action": "restart-unit"}),
        ),
        (
            "request.job_start",
            Method::JobStart,
            json!({"action": "restart-unit", "params": {"unit": "nginx.service"}, "idempotency_key": "deploy-42"}),
        ),
        (
            "request.job_start_fleet",
            Method::JobStart,
            json!({
                "action": "restart-unit",
                "params": {"unit": "nginx.service"},
                "idempotency_key": "dsp_0123456789abcdef0123456789abcdef",
                "fleet": {
                    "operator": "alice",
                    "server": "fleet.example.com",
                    "dispatch_id": "dsp_0123456789abcdef0123456789abcdef",
                    "tier": "operator"
                }
            }),
        ),
        (
            "request.actions_list_fleet",
            Method::ActionsList,
            json!({"fleet": true}),
        ),
        ("request.job_get", Method::JobGet, job.clone()),
        (
            "request.job_list",
            Method::JobList,
            json!({"scope": "all", "state": "running", "limit": 20}),
        ),
        ("request.job_cancel", Method::JobCancel, job.clone()),
        (
            "request.job_wait",
            Method::JobWait,
            json!({"job_id": "job_3f2a9c0d5e7b8a61", "timeout_ms": 30000}),
        ),
        (
            "request.job_logs",
            Method::JobLogs,
            json!({"job_id": "job_3f2a9c0d5e7b8a61", "from": 0, "follow": true}),
        ),
        ("request.job_watch", Method::JobWatch, job),
        ("request.audit_verify", Method::AuditVerify, json!({})),
        ("request.ops_get", Method::OpsGet, json!({})),
        (
            "request.alerts_list",
            Method::AlertsList,
            json!({"limit": 20}),
        ),
        ("request.policy_reload", Method::PolicyReload, json!({})),
        ("request.doctor", Method::Doctor, json!({})),
        ("request.host_identity", Method::HostIdentity, json!({})),
        (
            "request.policy_explain",
            Method::PolicyExplain,
            json!({"user": "alice", "method": "job.start", "action": "restart-unit", "params": {"unit": "nginx.service"}}),
        ),
        (
            "request.events_subscribe",
            Method::EventsSubscribe,
            json!({"topics": ["job", "lockdown", "alert"]}),
        ),
        (
            "request.ops_set",
            Method::OpsSet,
            json!({"name": "storage", "enabled": false, "reason": "disk replacement"}),
        ),
        (
            "request.lockdown_engage",
            Method::LockdownEngage,
            json!({"reason": "incident 42: keys may have leaked"}),
        ),
        (
            "request.lockdown_release",
            Method::LockdownRelease,
            json!({}),
        ),
        (
            "request.resource_create",
            Method::ResourceCreate,
            json!({"kind": "workspace", "name": "ws1", "owner": "alice"}),
        ),
        (
            "request.resource_delete",
            Method::ResourceDelete,
            json!({"kind": "workspace", "name": "ws1"}),
        ),
        (
            "request.resource_get",
            Method::ResourceGet,
            json!({"kind": "workspace", "name": "ws1"}),
        ),
        (
            "request.resource_list",
            Method::ResourceList,
            json!({"kind": "workspace"}),
        ),
        (
            "request.audit_query",
            Method::AuditQuery,
            json!({"since": "2026-11-29T00:00:00Z", "uid": 1000, "decision": "deny", "limit": 50}),
        ),
        (
            "request.audit_query_page",
            Method::AuditQuery,
            json!({"after_seq": 1000, "limit": 1000}),
        ),
    ];
    for (name, method, params) in cases {
        let bytes = envelope::request(1, method.as_str(), &params).unwrap();
        let env = Envelope::parse(&bytes).unwrap();
        let req = Request::parse(Method::from_name(&env.method).unwrap(), env.params).unwrap();
        assert_eq!(req.method(), method);
        check(name, bytes);
    }
    let typed: HelloParams = serde_json::from_value(json!({"protocol": 1, "client": "c"})).unwrap();
    assert!(typed.features.is_empty(), "features may be omitted");
}

#[test]
fn results_match_their_fixtures() {
    let ops: BTreeMap<String, bool> = [("network".into(), false), ("storage".into(), true)].into();
    check(
        "result.hello",
        ok(&HelloResult {
            protocol: 1,
            daemon_version: "0.1.0".into(),
            features: vec![],
            max_frame: 1_048_576,
            peer: peer(),
            tier: Tier::Operator,
            ops: ops.clone(),
            listener: listener(),
            lockdown: None,
        }),
    );
    let lockdown = LockdownInfo {
        reason: "incident 42: keys may have leaked".into(),
        by_uid: 0,
        since: "2026-11-29T23:00:00Z".into(),
    };
    check(
        "result.ops",
        ok(&OpsResult {
            ops: ops.clone(),
            stopping: vec![JobId::try_from("job_3f2a9c0d5e7b8a61".to_owned()).unwrap()],
        }),
    );
    check(
        "result.policy_reload",
        ok(&PolicyReloadResult {
            needs_restart: vec!["[[listener]]".into()],
            warnings: vec![
                "/etc/warden/warden.toml:12: warning: group `wheel` does not exist; its operator mapping has no effect".into(),
            ],
        }),
    );
    check(
        "result.policy_explain",
        ok(&ExplainResult {
            decision: "deny".into(),
            tier: Tier::ReadOnly,
            kind: Some(ErrorKind::Forbidden),
            reason: Some("action restart-unit needs tier operator; you have read_only".into()),
            steps: vec![
                "job.start needs tier read_only".into(),
                "the caller has tier read_only as a member of group warden (998)".into(),
                "action restart-unit needs tier operator, ops system, and changes state".into(),
                "the caller has tier read_only as a member of group warden (998)".into(),
            ],
            params: None,
        }),
    );
    check(
        "result.host_identity",
        ok(&HostIdentityResult {
            machine_id: format!("muid_{}", "3f".repeat(32)),
            source: IdentitySource::DmiProductUuid,
            degraded: false,
        }),
    );
    check(
        "result.host_identity_degraded",
        ok(&HostIdentityResult {
            machine_id: format!("muid_{}", "a0".repeat(32)),
            source: IdentitySource::MachineId,
            degraded: true,
        }),
    );
    check(
        "result.doctor",
        ok(&DoctorResult {
            findings: vec![
                DoctorFinding {
                    severity: "ok".into(),
                    what: "audit log intact: 1204 records".into(),
                    fix: String::new(),
                },
                DoctorFinding {
                    severity: "error".into(),
                    what: "state directory /var/lib/warden is owned by uid 0 with mode 0755".into(),
                    fix: "chown root:root /var/lib/warden && chmod 0700 /var/lib/warden".into(),
                },
            ],
        }),
    );
    check(
        "result.alerts",
        ok(&AlertsResult {
            alerts: vec![Alert {
                id: 7,
                ts: "2026-11-29T23:01:02.345Z".into(),
                kind: "denial_flood".into(),
                message: "uid 1000 was refused more than 100 times within a minute; further refusals are counted".into(),
                uid: Some(1000),
            }],
        }),
    );
    check(
        "result.lockdown_engage",
        ok(&LockdownResult {
            lockdown: Some(lockdown),
            stopping: vec![],
        }),
    );
    let ws1 = ResourceInfo {
        kind: "workspace".into(),
        name: "ws1".into(),
        owner_uid: Uid(1000),
        owner: "alice".into(),
        path: "/srv/workspaces/ws1".into(),
        mode: "0700".into(),
        created: "2026-11-30T00:00:00Z".into(),
        hook_job: Some(JobId::try_from("job_3f2a9c0d5e7b8a61".to_owned()).unwrap()),
    };
    check("result.resource", ok(&ws1));
    check(
        "result.resource_list",
        ok(&ResourceList {
            resources: vec![ResourceInfo {
                hook_job: None,
                ..ws1
            }],
        }),
    );
    check(
        "result.lockdown_release",
        ok(&LockdownResult {
            lockdown: None,
            stopping: vec![],
        }),
    );
    check(
        "result.health",
        ok(&HealthResult {
            status: "ok".into(),
        }),
    );
    check(
        "result.audit_verify_intact",
        ok(&AuditVerifyResult {
            intact: true,
            records: 1204,
            head_seq: 1204,
            first_bad_seq: None,
            problem: None,
            anchor_seq: None,
        }),
    );
    check(
        "result.audit_verify_retained",
        ok(&AuditVerifyResult {
            intact: true,
            records: 1204,
            head_seq: 6204,
            first_bad_seq: None,
            problem: None,
            anchor_seq: Some(5000),
        }),
    );
    check(
        "result.audit_verify_broken",
        ok(&AuditVerifyResult {
            intact: false,
            records: 41,
            head_seq: 1204,
            first_bad_seq: Some(42),
            problem: Some("modified".into()),
            anchor_seq: None,
        }),
    );
    check(
        "result.audit_query",
        ok(&AuditQueryResult {
            records: vec![json!({
                "seq": 41, "ts": "2026-11-29T22:41:08.892Z",
                "prev": "5cb0708bfd226c307586efb999a988deb4e8584ae0e35de3090048a8326e129c",
                "event": "denied",
                "peer": {"uid": 1000, "gid": 1000, "pid": 4242, "exe": "/usr/bin/warden", "client": "warden-cli"},
                "method": "job.start", "action": "restart-unit", "decision": "deny",
                "reason": "restart-unit needs tier operator; you have read_only",
                "outcome": "forbidden", "correlation_id": "9f0c2a41d3e87b65"
            })],
            head_seq: 1204,
            more: true,
        }),
    );
    check(
        "result.version",
        ok(&VersionResult {
            daemon_version: "0.1.0".into(),
            protocol: 1,
        }),
    );
    check(
        "result.whoami",
        ok(&WhoamiResult {
            peer: peer(),
            user: Some("alice".into()),
            tier: Tier::ReadOnly,
            granted: Grant {
                tier: Tier::Operator,
                source: GrantSource::Group {
                    name: "wardenops".into(),
                    gid: Gid(1500),
                },
            },
            listener: ListenerInfo {
                path: "/run/warden/ro.sock".into(),
                max_tier: Tier::ReadOnly,
            },
            capped: true,
            reason: "operator as a member of group wardenops, capped at read_only by listener /run/warden/ro.sock".into(),
        }),
    );
    check(
        "result.status",
        ok(&StatusResult {
            daemon_version: "0.1.0".into(),
            protocol: 1,
            mode: DaemonMode::System,
            uptime_ms: 61_000,
            connections: ConnectionCounts {
                open: 2,
                accepted: 9,
            },
            violations: ViolationCounts {
                frame_too_large: 1,
                ..Default::default()
            },
            refusals: RefusalCounts {
                rate_limited_uid: 3,
                ..Default::default()
            },
            jobs: JobCounts {
                running: 1,
                queued: 0,
                cgroups: true,
                cgroup_note: None,
            },
            limits: Limits::default(),
            listeners: vec![listener()],
            lockdown: None,
        }),
    );
}

fn job_id() -> JobId {
    "job_3f2a9c0d5e7b8a61".to_owned().try_into().unwrap()
}

fn record() -> JobRecord {
    JobRecord {
        job_id: job_id(),
        action: "restart-unit".to_owned().try_into().unwrap(),
        state: JobState::Running,
        progress: Some(40),
        phase: Some("restart".into()),
        message: Some("waiting for the unit".into()),
        committed: true,
        exit_code: None,
        result: None,
        malformed_status_lines: 0,
        requester: Requester {
            uid: Uid(1000),
            gid: Gid(1000),
            pid: Pid(4242),
            exe: Some("/usr/bin/warden".into()),
            client: "warden-cli".into(),
            connection: 17,
        },
        origin: "local".into(),
        dispatch_id: None,
        params: [
            ("unit".to_owned(), json!("nginx.service")),
            ("token".to_owned(), json!("<redacted>")),
        ]
        .into(),
        created_at: "2026-11-22T09:39:17.641Z".into(),
        started_at: Some("2026-11-22T09:39:17.642Z".into()),
        ended_at: None,
    }
}

#[test]
fn job_messages_match_their_fixtures() {
    check(
        "result.actions_list",
        ok(&ActionList {
            actions: vec![ActionInfo {
                name: "restart-unit".to_owned().try_into().unwrap(),
                description: "Restart one of the allowed systemd units".into(),
                tier: Tier::Operator,
                ops: vec!["system".into()],
                mutating: true,
                params: [
                    (
                        "unit".to_owned(),
                        ParamInfo {
                            kind: ParamKind::Enum {
                                values: vec!["nginx.service".into(), "postfix.service".into()],
                            },
                            secret: false,
                        },
                    ),
                    (
                        "token".to_owned(),
                        ParamInfo {
                            kind: ParamKind::String {
                                max_len: 64,
                                pattern: Some("[A-Za-z0-9]+".into()),
                            },
                            secret: true,
                        },
                    ),
                ]
                .into(),
                timeout_s: 60,
                concurrency_group: Some("units".into()),
                rollback: false,
            }],
        }),
    );
    check(
        "result.job_started",
        ok(&JobStarted {
            job_id: job_id(),
            existing: false,
        }),
    );
    check("result.job", ok(&record()));
    check(
        "result.job_list",
        ok(&JobList {
            jobs: vec![JobSummary {
                job_id: job_id(),
                action: "restart-unit".to_owned().try_into().unwrap(),
                state: JobState::Succeeded,
                progress: Some(100),
                requester_uid: Uid(1000),
                origin: "local".into(),
                dispatch_id: None,
                created_at: "2026-11-22T09:39:17.641Z".into(),
                ended_at: Some("2026-11-22T09:39:19.002Z".into()),
            }],
        }),
    );
    // A job a fleet dispatch started: its origin names the operator and server, and its
    // record and summary carry the dispatch id.
    let fleet_record = JobRecord {
        origin: "fleet:alice@fleet.example.com".into(),
        dispatch_id: Some("dsp_0123456789abcdef0123456789abcdef".into()),
        ..record()
    };
    check("result.job_fleet", ok(&fleet_record));
    check(
        "result.job_list_fleet",
        ok(&JobList {
            jobs: vec![warden_proto::jobs::JobSummary {
                origin: fleet_record.origin.clone(),
                dispatch_id: fleet_record.dispatch_id.clone(),
                job_id: job_id(),
                action: fleet_record.action.clone(),
                state: JobState::Succeeded,
                progress: Some(100),
                requester_uid: Uid(998),
                created_at: "2026-11-22T09:39:17.641Z".into(),
                ended_at: Some("2026-11-22T09:39:19.002Z".into()),
            }],
        }),
    );
    let chunk = LogChunk {
        job_id: job_id(),
        from: 0,
        next: 18,
        data: "restarting nginx\n".into(),
        truncated: false,
        ended: false,
    };
    check("result.job_logs", ok(&chunk));
    check(
        "notification.job_output",
        envelope::notification(notification::JOB_OUTPUT, &chunk).unwrap(),
    );
    check(
        "notification.job_update",
        envelope::notification(notification::JOB_UPDATE, &record()).unwrap(),
    );
    check(
        "error.not_found",
        envelope::error_response(
            Some(&Id::number(1)),
            &RpcError::new(
                ErrorKind::NotFound,
                "no such job",
                "a1b2c3d4e5f60718".into(),
            ),
        )
        .unwrap(),
    );
    check(
        "error.conflict",
        envelope::error_response(
            Some(&Id::number(1)),
            &RpcError::new(
                ErrorKind::Conflict,
                "past commit point: the job's effect remains and its action has no rollback",
                "0f1e2d3c4b5a6978".into(),
            ),
        )
        .unwrap(),
    );
}

#[test]
fn grant_sources_each_have_a_fixed_shape() {
    let sources = [
        ("grant.root", GrantSource::Root),
        (
            "grant.user",
            GrantSource::User {
                name: "alice".into(),
            },
        ),
        ("grant.dev_mode", GrantSource::DevMode),
        ("grant.unmapped", GrantSource::Unmapped),
    ];
    for (name, source) in sources {
        let g = Grant {
            tier: Tier::Admin,
            source,
        };
        let bytes = serde_json::to_vec(&g).unwrap();
        let back: Grant = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(back, g);
        check(name, bytes);
    }
}

#[test]
fn errors_match_their_fixtures() {
    let id = Id::number(1);
    check(
        "error.forbidden",
        envelope::error_response(
            Some(&id),
            &RpcError::new(
                ErrorKind::Forbidden,
                "status needs tier read_only; you have none",
                "3f2a9c0d5e7b8a61".into(),
            ),
        )
        .unwrap(),
    );
    check(
        "error.rate_limited",
        envelope::error_response(
            Some(&id),
            &RpcError::new(
                ErrorKind::RateLimited,
                "too many requests on this connection (20/s, burst 40)",
                "0b1c2d3e4f506172".into(),
            )
            .retry_after_ms(50),
        )
        .unwrap(),
    );
    check(
        "error.frame_too_large",
        envelope::error_response(
            None,
            &RpcError::with_code(
                error::code::INVALID_REQUEST,
                ErrorKind::BadRequest,
                "frame length 1048577 exceeds max_frame 1048576",
                "8899aabbccddeeff".into(),
            ),
        )
        .unwrap(),
    );
    check(
        "error.internal_for_admin",
        envelope::error_response(
            Some(&id),
            &RpcError::new(
                ErrorKind::Internal,
                "internal error",
                "0011223344556677".into(),
            )
            .detail("handler panicked: index out of bounds"),
        )
        .unwrap(),
    );
}
