//! Seals and the anchor, kept in the ledger database away from the log: the head of the chain
//! every [`SEAL_EVERY`] records and at shutdown, and the last record removed by retention, from
//! which what remains of the log is checked.

use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use rusqlite::OptionalExtension;

use super::record::{Head, now_text};

/// Records between seals.
pub(crate) const SEAL_EVERY: u64 = 1000;

/// Seals: `(seq, hash)` of the log's head every [`SEAL_EVERY`] records and at shutdown, kept in
/// the ledger database, away from the log. A log cut short, even while the daemon was stopped,
/// no longer reaches its last seal.
#[derive(Debug)]
pub(crate) struct Seals {
    conn: rusqlite::Connection,
}

impl Seals {
    /// Opens the seal table in the database at `path` (created 0600 if missing).
    pub(crate) fn open(path: &Path) -> io::Result<Seals> {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let sql = |e: rusqlite::Error| io::Error::other(e.to_string());
        let conn = rusqlite::Connection::open(path).map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        // A seal is rare and must hold: each one is flushed to disk.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS audit_seals (
                 seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, ts TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS audit_anchor (
                 id INTEGER PRIMARY KEY CHECK (id = 1),
                 seq INTEGER NOT NULL, hash TEXT NOT NULL, ts TEXT NOT NULL);",
        )
        .map_err(sql)?;
        Ok(Seals { conn })
    }

    /// Where the retained log begins: the last record removed by retention (`seq`, hash), from
    /// which the chain of what remains is checked. `None` while nothing was removed.
    pub(crate) fn anchor(&self) -> io::Result<Option<Head>> {
        self.conn
            .query_row("SELECT seq, hash FROM audit_anchor WHERE id = 1", [], |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            })
            .optional()
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Moves the anchor to `head` (records up to it are about to be removed) and drops the seals
    /// it covers, in one transaction flushed to disk.
    pub(super) fn set_anchor(&mut self, head: &Head) -> io::Result<()> {
        let sql = |e: rusqlite::Error| io::Error::other(e.to_string());
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT OR REPLACE INTO audit_anchor (id, seq, hash, ts) VALUES (1, ?1, ?2, ?3)",
            rusqlite::params![head.seq as i64, head.hash, now_text()],
        )
        .map_err(sql)?;
        tx.execute("DELETE FROM audit_seals WHERE seq <= ?1", [head.seq as i64])
            .map_err(sql)?;
        tx.commit().map_err(sql)
    }

    pub(super) fn put(&self, head: &Head) -> io::Result<()> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO audit_seals (seq, hash, ts) VALUES (?1, ?2, ?3)",
                rusqlite::params![head.seq as i64, head.hash, now_text()],
            )
            .map(|_| ())
            .map_err(|e| io::Error::other(e.to_string()))
    }

    /// Every seal, oldest first.
    pub(crate) fn all(&self) -> io::Result<Vec<Head>> {
        let sql = |e: rusqlite::Error| io::Error::other(e.to_string());
        let mut stmt = self
            .conn
            .prepare("SELECT seq, hash FROM audit_seals ORDER BY seq")
            .map_err(sql)?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Head {
                    seq: r.get::<_, i64>(0)? as u64,
                    hash: r.get(1)?,
                })
            })
            .map_err(sql)?;
        rows.collect::<Result<_, _>>().map_err(sql)
    }
}
