//! `audit.verify` checks the audit log's hash chain against what the daemon last wrote;
//! `audit.query` reads records from it, a page at a time.

use warden_proto::ErrorKind;
use warden_proto::messages::{AuditQueryResult, AuditVerifyResult};
use warden_proto::request::{AuditQueryParams, MAX_AUDIT_RECORDS};

use super::Reply;
use crate::audit::{self, Verdict};
use crate::call::Failure;
use crate::state::Shared;

pub(super) async fn verify(shared: &Shared) -> Result<Reply<'static>, Failure> {
    // Everything written so far is on disk first, so the file can be held against the head.
    let head = shared
        .audit
        .flush()
        .await
        .map_err(|e| Failure::internal(e.to_string()))?;
    let audit = std::sync::Arc::clone(&shared.audit);
    let checked = head.clone();
    // Reads the whole log, a line at a time: off the runtime's threads.
    let (verdict, anchor_seq) = tokio::task::spawn_blocking(move || audit.verify(Some(&checked)))
        .await
        .map_err(|e| Failure::internal(e.to_string()))?
        .map_err(|e| Failure::internal(format!("reading the audit log: {e}")))?;
    Ok(Reply::AuditVerify(match verdict {
        Verdict::Intact { records } => AuditVerifyResult {
            intact: true,
            records,
            // Records the daemon chained after the flush (a retention cut's own record) were
            // verified too: the head reported is the last one verified.
            head_seq: head.seq.max(anchor_seq.unwrap_or(0) + records),
            first_bad_seq: None,
            problem: None,
            anchor_seq,
        },
        Verdict::Broken { seq, problem } => {
            shared.alerts.raise_once_a_minute(
                "audit verify",
                "audit_broken",
                format!(
                    "the audit log is broken at record {seq}: {}",
                    problem.as_str()
                ),
                None,
            );
            AuditVerifyResult {
                intact: false,
                records: seq.saturating_sub(1 + anchor_seq.unwrap_or(0)),
                head_seq: head.seq,
                first_bad_seq: Some(seq),
                problem: Some(problem.as_str().to_owned()),
                anchor_seq,
            }
        }
    }))
}

pub(super) async fn query(shared: &Shared, p: AuditQueryParams) -> Result<Reply<'static>, Failure> {
    let time = |name: &str, t: Option<String>| -> Result<_, Failure> {
        t.map(|t| {
            humantime::parse_rfc3339_weak(&t).map_err(|_| {
                Failure::new(
                    ErrorKind::BadRequest,
                    format!("{name} must be an RFC 3339 time, e.g. 2026-11-29T08:00:00Z"),
                )
            })
        })
        .transpose()
    };
    let limit = match p.limit {
        None => 100,
        Some(0) => {
            return Err(Failure::new(
                ErrorKind::BadRequest,
                format!("limit must be from 1 to {MAX_AUDIT_RECORDS}; page with after_seq"),
            ));
        }
        Some(n) => n.min(MAX_AUDIT_RECORDS),
    } as usize;
    let filter = audit::Filter {
        since: time("since", p.since)?,
        until: time("until", p.until)?,
        uid: p.uid,
        action: p.action,
        job_id: p.job_id,
        decision: p.decision,
        after_seq: p.after_seq,
    };
    let head = shared
        .audit
        .flush()
        .await
        .map_err(|e| Failure::internal(e.to_string()))?;
    let audit = std::sync::Arc::clone(&shared.audit);
    let (records, more) = tokio::task::spawn_blocking(move || audit.query(&filter, limit))
        .await
        .map_err(|e| Failure::internal(e.to_string()))?
        .map_err(|e| Failure::internal(format!("reading the audit log: {e}")))?;
    Ok(Reply::AuditQuery(AuditQueryResult {
        records,
        head_seq: head.seq,
        more,
    }))
}
