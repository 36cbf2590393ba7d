//! Reading records back: every field of a [`Filter`] narrows the selection, and a query
//! answers a bounded page of it.

use std::io;
use std::path::Path;

use serde_json::Value;

use super::segments::{Line, Lines, files_after};

/// What [`query`] selects; every field narrows it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Filter {
    pub since: Option<std::time::SystemTime>,
    pub until: Option<std::time::SystemTime>,
    pub uid: Option<u32>,
    pub action: Option<String>,
    pub job_id: Option<String>,
    pub decision: Option<String>,
    pub after_seq: Option<u64>,
}

impl Filter {
    fn matches(&self, r: &Value) -> bool {
        let text = |key: &str, want: &Option<String>| {
            want.as_deref().is_none_or(|w| r[key].as_str() == Some(w))
        };
        let ts = || {
            r["ts"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
        };
        self.after_seq
            .is_none_or(|after| r["seq"].as_u64().is_some_and(|s| s > after))
            && self
                .uid
                .is_none_or(|u| r["peer"]["uid"].as_u64() == Some(u64::from(u)))
            && text("action", &self.action)
            && text("job_id", &self.job_id)
            && text("decision", &self.decision)
            && self.since.is_none_or(|t| ts().is_some_and(|ts| ts >= t))
            && self.until.is_none_or(|t| ts().is_some_and(|ts| ts < t))
    }
}

/// Records of the log at `path` that match `filter`, oldest first, at most `limit` of them,
/// and whether matching records were left out. With `filter.after_seq`, the first `limit`
/// after it (so a caller pages on from the last one it got, and gets each record once);
/// without, the newest `limit`. Reads a line at a time and keeps at most `limit` records.
pub(crate) fn query(path: &Path, filter: &Filter, limit: usize) -> io::Result<(Vec<Value>, bool)> {
    let mut kept = std::collections::VecDeque::with_capacity(limit.min(1024));
    let mut more = false;
    if limit == 0 {
        return Ok((Vec::new(), false));
    }
    let mut lines = Lines::new(files_after(path, filter.after_seq.unwrap_or(0))?);
    while let Some(line) = lines.next_line()? {
        let Line::Text(line) = line else {
            continue;
        };
        let Ok(record) = serde_json::from_slice::<Value>(line) else {
            continue;
        };
        if !filter.matches(&record) {
            continue;
        }
        if kept.len() == limit {
            more = true;
            if filter.after_seq.is_some() {
                break;
            }
            kept.pop_front();
        }
        kept.push_back(record);
    }
    Ok((kept.into(), more))
}
