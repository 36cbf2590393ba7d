//! `audit.verify`: checks the audit log's hash chain against what the daemon last wrote.

use warden_proto::messages::AuditVerifyResult;

use super::Reply;
use crate::audit::{self, Verdict};
use crate::dispatch::Failure;
use crate::server::Shared;

pub(super) async fn verify(shared: &Shared) -> Result<Reply<'static>, Failure> {
    // Everything written so far is on disk first, so the file can be held against the head.
    let head = shared
        .audit
        .flush()
        .await
        .map_err(|e| Failure::internal(e.to_string()))?;
    let path = shared.audit.path().to_owned();
    let checked = head.clone();
    let seals = shared
        .audit
        .seals()
        .map_err(|e| Failure::internal(format!("reading the audit seals: {e}")))?;
    // Reads the whole log: off the runtime's threads.
    let verdict = tokio::task::spawn_blocking(move || audit::verify(&path, Some(&checked), &seals))
        .await
        .map_err(|e| Failure::internal(e.to_string()))?
        .map_err(|e| Failure::internal(format!("reading the audit log: {e}")))?;
    Ok(Reply::AuditVerify(match verdict {
        Verdict::Intact { records } => AuditVerifyResult {
            intact: true,
            records,
            head_seq: head.seq,
            first_bad_seq: None,
            problem: None,
        },
        Verdict::Broken { seq, problem } => AuditVerifyResult {
            intact: false,
            records: seq.saturating_sub(1),
            head_seq: head.seq,
            first_bad_seq: Some(seq),
            problem: Some(problem.as_str().to_owned()),
        },
    }))
}
