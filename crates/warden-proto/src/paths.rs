//! Where clients look for the daemon: the system socket, else the socket of a `--dev` daemon
//! started by the same user (under `$XDG_RUNTIME_DIR`, or the current directory without one).

use std::path::PathBuf;

/// The socket of a system daemon with the built-in default configuration.
pub const SYSTEM_SOCKET: &str = "/run/warden/warden.sock";

/// The runtime directory a `--dev` daemon uses: `$XDG_RUNTIME_DIR/warden`, or `./warden-dev`
/// when that variable is unset or not an absolute path.
pub fn dev_runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir.join("warden"),
        _ => std::env::current_dir()
            .unwrap_or_else(|_| PathBuf::from("."))
            .join("warden-dev"),
    }
}

/// The socket a `--dev` daemon listens on by default.
pub fn dev_socket() -> PathBuf {
    dev_runtime_dir().join("warden.sock")
}
