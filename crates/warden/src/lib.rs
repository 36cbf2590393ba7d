//! The `warden` command line's declarations, as a library so that the man pages and shell
//! completions can be generated from the very definitions the binary parses (`warden-docgen`).
//! Everything the CLI does lives in the binary (`main.rs`); this library must never talk to
//! the daemon.

pub mod cli;
