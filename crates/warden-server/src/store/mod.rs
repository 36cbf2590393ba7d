//! Every SQL statement of the server, one file per table family: sites and their enrollment
//! keys, machines and their keys and bans, the enrollment's transaction, the audit events,
//! operators with their sessions and API tokens, and the server's own secrets. Nothing above
//! this module writes SQL. Every change that must not interleave with another is one
//! transaction whose first statement writes (so SQLite takes its write lock at once and
//! PostgreSQL locks the row it orders by).
//!
//! Keys, passwords and tokens are stored only as hashes, and never logged from here.

pub mod counts;
pub mod db;
pub mod dispatch;
pub mod enroll;
pub mod events;
pub mod links;
pub mod machine_list;
pub mod machines;
pub mod operators;
pub mod secrets;
pub mod sites;

pub use db::{Backend, Db, SQLITE_FILE, is_unique_violation, now_ms};
pub use enroll::{EnrollTarget, ExistingMachine, Placement};
pub use events::Event;
pub use machine_list::{Cursor, MachineQuery};
pub use machines::{MAX_BULK, Machine, MachineKeyInfo, Removal};
pub use sites::{IssuedKey, KeyInfo, Site};

/// Errors of the store, by what the caller should answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("{0}")]
    Other(#[from] anyhow::Error),
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The tenant of this server's sites (one for now).
pub const TENANT: &str = "default";
