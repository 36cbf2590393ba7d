//! warden-sys: every call into the kernel that needs `unsafe`, and the thin safe wrappers around
//! the ones that do not, so the rest of warden reads as plain Rust and forbids `unsafe` outright.
//!
//! Each `unsafe` block states the invariant that makes it sound in a `// SAFETY:` comment. This
//! crate holds no policy and makes no decisions: it reports what the kernel says and returns the
//! kernel's error when it cannot.

pub mod activation;
pub mod fs;
pub mod owned;
pub mod peer;
pub mod process;
pub mod spawn;
pub mod users;
