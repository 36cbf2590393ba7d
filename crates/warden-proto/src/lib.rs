//! warden-proto: the local wire protocol between clients and `wardend`, shared by both ends.
//!
//! It owns the frame codec (4-byte big-endian length + JSON), the JSON-RPC 2.0 envelope, the
//! stable error kinds, the method names and the typed request and result messages. It holds no
//! policy and does no I/O beyond the generic async frame helpers; the wire format is a contract,
//! so every shape here has a golden fixture under `tests/golden/` and an incompatible change
//! bumps [`PROTOCOL_VERSION`].

pub mod envelope;
pub mod error;
pub mod frame;
pub mod harness;
pub mod ids;
pub mod jobs;
pub mod limits;
pub mod messages;
pub mod method;
pub mod paths;
pub mod request;
#[cfg(feature = "schema")]
pub mod schema;
pub mod tier;

pub use envelope::{Envelope, EnvelopeError, Id};
pub use error::{ErrorData, ErrorKind, RpcError};
pub use frame::{DEFAULT_MAX_FRAME, FrameDecoder, FrameError, HEADER_LEN};
pub use ids::{ActionName, Gid, JobId, Pid, Uid};
pub use limits::Limits;
pub use method::Method;
pub use request::{ParamsError, Request};
pub use tier::Tier;

/// The protocol version spoken by this build. Bumped on any incompatible change to a message.
pub const PROTOCOL_VERSION: u32 = 1;
