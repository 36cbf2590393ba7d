//! The fleet's one wire vocabulary, shared by `warden-server` and `warden-agent`: the
//! enrollment request and answer, the error body and its kinds, the validated identifiers and
//! keys, and every message of the agent link. Neither end defines these privately, so the two
//! cannot drift apart.
//!
//! This crate holds types and their validation only: no I/O, no clock, no randomness. Key types
//! never print their secret in `Debug`.

pub mod enroll;
pub mod error;
pub mod ids;
pub mod link;

pub use enroll::{Disposition, EnrollRequest, Enrolled, Labels, MachineState};
pub use error::{ErrorBody, ErrorInfo, ErrorKind};
pub use ids::{
    DispatchId, EnrollmentKey, Hostname, IdError, KeyVersion, MachineId, MachineKey, SiteCode,
};
