//! The machine list operators page through: filters (site, state, text, connected, last seen)
//! and keyset pages ordered by hostname then machine id, so any page costs the same with
//! 100,000 machines as with ten (no `OFFSET`: a page starts where the cursor says, on an
//! index; see migration 0006). The cursor is opaque to callers; it never holds anything but a
//! hostname and a machine id.

use super::machines::{CONNECTED_WITHIN_MS, Machine, machine_cols, machine_of};
use super::{Db, Result, StoreError, now_ms};
use crate::keys::hex;

/// What to list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MachineQuery {
    /// A site code.
    pub site: Option<String>,
    /// active, pending, quarantined or removed.
    pub state: Option<String>,
    /// Part of a machine id or hostname.
    pub text: Option<String>,
    /// Only machines with (`true`) or without (`false`) a live link, as the `connected` field
    /// reports it.
    pub connected: Option<bool>,
    /// Only machines last seen after this time (ms).
    pub seen_after: Option<i64>,
    /// Only machines last seen before this time (ms).
    pub seen_before: Option<i64>,
    /// The page starts after this machine.
    pub after: Option<Cursor>,
    /// At most this many.
    pub limit: i64,
}

/// Where a page ends: the last machine's hostname and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cursor {
    hostname: String,
    machine_id: String,
}

/// Longest cursor accepted.
const MAX_CURSOR: usize = 2048;

impl Cursor {
    /// `hex(hostname).machine_id`.
    pub fn encode(&self) -> String {
        format!("{}.{}", hex(self.hostname.as_bytes()), self.machine_id)
    }

    /// A cursor [`Cursor::encode`] made; anything else is a bad request.
    pub fn decode(s: &str) -> Result<Cursor> {
        let bad = || StoreError::BadRequest("`after` is not a cursor this server gave".into());
        if s.len() > MAX_CURSOR {
            return Err(bad());
        }
        let (host, id) = s.split_once('.').ok_or_else(bad)?;
        let hostname = unhex(host)
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(bad)?;
        if id.is_empty() {
            return Err(bad());
        }
        Ok(Cursor {
            hostname,
            machine_id: id.to_owned(),
        })
    }
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The page query, with the site and state conditions given: `$1` site code, `$2` state,
/// `$3` text pattern, `$4`/`$5` the cursor, `$6` connected (0 any, 1 yes, 2 no), `$7`/`$8`
/// last seen bounds, `$9` the oldest `last_seen_ms` that still counts as connected, `$10` the
/// limit, `$11` 1 for banned machines only (a ban is kept apart from the state, by machine
/// id, so it outlives a removal). Every variant names every parameter (PostgreSQL must type
/// each one).
///
/// `LEFT JOIN` keeps SQLite from reordering the join: it walks `machines` on the index that
/// has the page's order and stops at the limit, instead of sorting every machine of a site.
macro_rules! page {
    ($site:literal, $state:literal) => {
        concat!(
            machine_cols!(),
            " FROM machines m LEFT JOIN sites s ON s.id = m.site_id WHERE ",
            $site,
            " AND ",
            $state,
            " AND ($3 = '' OR m.machine_id LIKE $3 OR m.hostname LIKE $3)
             AND ($6 = 0 OR ($6 = 1 AND m.linked_ms IS NOT NULL AND m.last_seen_ms >= $9)
                  OR ($6 = 2 AND (m.linked_ms IS NULL OR m.last_seen_ms < $9)))
             AND m.last_seen_ms > $7 AND m.last_seen_ms < $8
             AND (m.hostname, m.machine_id) > ($4, $5)
             AND ($11 = 0 OR EXISTS (SELECT 1 FROM bans b WHERE b.machine_id = m.machine_id))
             ORDER BY m.hostname, m.machine_id LIMIT $10"
        )
    };
}

impl Db {
    /// One page of machines matching `q`, and the cursor of the next page (`None` on the last).
    pub async fn machines(&self, q: &MachineQuery) -> Result<(Vec<Machine>, Option<Cursor>)> {
        // `banned` is asked for like a state, but a banned machine keeps its own state.
        let banned = q.state.as_deref() == Some("banned");
        let state = q.state.as_deref().filter(|_| !banned);
        // One static statement per combination, so each can start on its own index.
        let sql = match (q.site.is_some(), state.is_some()) {
            (false, false) => page!("$1 = ''", "$2 = ''"),
            (true, false) => page!(
                "m.site_id = (SELECT id FROM sites WHERE site_code = $1)",
                "$2 = ''"
            ),
            (false, true) => page!("$1 = ''", "m.state = $2"),
            (true, true) => page!(
                "m.site_id = (SELECT id FROM sites WHERE site_code = $1)",
                "m.state = $2"
            ),
        };
        let pattern = q
            .text
            .as_deref()
            .filter(|t| !t.is_empty())
            .map(|t| format!("%{}%", t.replace(['%', '_'], "")));
        let limit = q.limit.clamp(1, 1000);
        let (host, id) = q
            .after
            .as_ref()
            .map_or(("", ""), |c| (c.hostname.as_str(), c.machine_id.as_str()));
        let rows = sqlx::query(sql)
            .bind(q.site.as_deref().unwrap_or(""))
            .bind(state.unwrap_or(""))
            .bind(pattern.as_deref().unwrap_or(""))
            .bind(host)
            .bind(id)
            .bind(match q.connected {
                None => 0i64,
                Some(true) => 1,
                Some(false) => 2,
            })
            .bind(q.seen_after.unwrap_or(i64::MIN))
            .bind(q.seen_before.unwrap_or(i64::MAX))
            .bind(now_ms() - CONNECTED_WITHIN_MS)
            // One more than asked: whether a next page exists is known, not guessed.
            .bind(limit + 1)
            .bind(i64::from(banned))
            .fetch_all(&self.pool)
            .await?;
        let mut machines = rows.iter().map(machine_of).collect::<Result<Vec<_>>>()?;
        let next = if machines.len() as i64 > limit {
            machines.truncate(limit as usize);
            machines.last().map(|m| Cursor {
                hostname: m.hostname.clone(),
                machine_id: m.machine_id.clone(),
            })
        } else {
            None
        };
        Ok((machines, next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: a cursor survives its encoding (any hostname bytes), and what the server did not
    /// make is refused as a bad request, never a panic.
    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = Cursor {
            hostname: "web.01 ü.x".into(),
            machine_id: "muid_ab".into(),
        };
        assert_eq!(Cursor::decode(&c.encode()).unwrap(), c);
        for bad in [
            "",
            "zz.muid",
            "6162",
            "616.muid",
            "6162.",
            &"a".repeat(4096),
        ] {
            assert!(
                matches!(Cursor::decode(bad), Err(StoreError::BadRequest(_))),
                "{bad}"
            );
        }
    }
}
