//! Listening sockets: making the runtime and state directories, refusing socket paths a non-root
//! user could tamper with, replacing a dead daemon's socket (never a live one), setting the
//! configured mode and group, and adopting sockets systemd passed in.
//!
//! Ordering: the process umask is 077 (set in `main`), so a freshly bound socket starts as 0600
//! and nobody but the daemon can connect until its group and mode are applied.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use warden_policy::{ListenerPolicy, Policy};
use warden_proto::messages::DaemonMode;
use warden_sys::activation::ActivatedListener;
use warden_sys::fs::{chown_nofollow, owner_of, set_mode_nofollow};

/// Why the daemon could not set up its sockets or directories. Each names what it was doing.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("refusing {path}: {reason}; a local user could swap it for a path of their choosing")]
    UnsafeDirectory { path: PathBuf, reason: String },
    #[error("directory {path} does not exist: {source}")]
    MissingDirectory { path: PathBuf, source: io::Error },
    #[error("cannot create directory {path}: {source}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("{path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("another daemon is listening on {path}; stop it first")]
    SocketInUse { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it by hand if it is not needed")]
    NotASocket { path: PathBuf },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot inspect {path}: {source}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("cannot bind {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot set mode {mode:04o} on {path}: {source}")]
    SetMode {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("cannot set group {group} on {path}: {source}")]
    SetGroup {
        path: PathBuf,
        group: String,
        source: io::Error,
    },
    #[error("systemd passed a socket for {path}, which no [[listener]] declares")]
    UnexpectedActivatedSocket { path: PathBuf },
}

/// A socket ready to accept.
#[derive(Debug)]
pub(crate) struct Bound {
    pub policy: Arc<ListenerPolicy>,
    pub listener: tokio::net::UnixListener,
    /// The socket file this daemon created (path, device, inode), removed at shutdown if it is
    /// still the same file. `None` for sockets systemd owns.
    pub created: Option<(PathBuf, u64, u64)>,
}

/// Creates the runtime directory (0755, or 0700 in dev mode) and the state directory (0700) when
/// missing, and refuses to run if either sits where a non-root user could change it.
pub(crate) fn prepare_dirs(
    policy: &Policy,
    mode: DaemonMode,
    trusted_uid: u32,
) -> Result<(), ListenError> {
    let runtime_mode = match mode {
        DaemonMode::System => 0o755,
        DaemonMode::Dev => 0o700,
    };
    ensure_dir(&policy.runtime_dir, runtime_mode, trusted_uid)?;
    ensure_dir(&policy.state_dir, 0o700, trusted_uid)?;
    Ok(())
}

fn ensure_dir(dir: &Path, mode: u32, trusted_uid: u32) -> Result<(), ListenError> {
    match owner_of(dir) {
        Ok(o) if o.is_dir => {}
        Ok(_) => return Err(ListenError::NotADirectory { path: dir.into() }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if let Some(parent) = dir.parent() {
                check_dir_chain(parent, trusted_uid)?;
            }
            std::fs::DirBuilder::new()
                .mode(mode)
                .create(dir)
                .map_err(|source| ListenError::CreateDir {
                    path: dir.into(),
                    source,
                })?;
            // The umask may have narrowed the mode; set it exactly.
            set_mode_nofollow(dir, mode).map_err(|source| ListenError::SetMode {
                path: dir.into(),
                mode,
                source,
            })?;
        }
        Err(source) => {
            return Err(ListenError::Inspect {
                path: dir.into(),
                source,
            });
        }
    }
    check_dir_chain(dir, trusted_uid).map(|_| ())
}

/// Resolves `dir` and checks it and every directory above it: each must be owned by root or by
/// `trusted_uid` and writable by neither group nor others. Returns the resolved path.
pub(crate) fn check_dir_chain(dir: &Path, trusted_uid: u32) -> Result<PathBuf, ListenError> {
    let canonical = std::fs::canonicalize(dir).map_err(|source| ListenError::MissingDirectory {
        path: dir.into(),
        source,
    })?;
    for ancestor in canonical.ancestors() {
        let o = owner_of(ancestor).map_err(|source| ListenError::Inspect {
            path: ancestor.into(),
            source,
        })?;
        let reason = if !o.is_dir {
            Some("it is not a directory".to_owned())
        } else if o.uid != 0 && o.uid != trusted_uid {
            Some(format!("it is owned by uid {}", o.uid))
        } else if o.mode & 0o022 != 0 {
            Some(format!(
                "it is writable by users other than its owner (mode {:04o})",
                o.mode
            ))
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(ListenError::UnsafeDirectory {
                path: ancestor.into(),
                reason,
            });
        }
    }
    Ok(canonical)
}

/// Binds every configured listener, or adopts the socket systemd passed for it. On failure,
/// removes the socket files it already created, so a failed start leaves nothing behind.
pub(crate) fn bind_all(
    policy: &Policy,
    mut activated: Vec<ActivatedListener>,
    trusted_uid: u32,
) -> Result<Vec<Bound>, ListenError> {
    let mut out: Vec<Bound> = Vec::new();
    let result = (|| {
        for lp in &policy.listeners {
            let passed = activated
                .iter()
                .position(|a| same_path(&a.path, &lp.path))
                .map(|i| activated.swap_remove(i));
            out.push(prepare(lp, passed, trusted_uid)?);
        }
        match activated.first() {
            Some(extra) => Err(ListenError::UnexpectedActivatedSocket {
                path: extra.path.clone(),
            }),
            None => Ok(()),
        }
    })();
    if let Err(e) = result {
        let created: Vec<_> = out.iter().filter_map(|b| b.created.clone()).collect();
        remove_created(&created);
        return Err(e);
    }
    Ok(out)
}

/// One listener, bound here or adopted from systemd, with its mode and group applied.
fn prepare(
    lp: &ListenerPolicy,
    passed: Option<ActivatedListener>,
    trusted_uid: u32,
) -> Result<Bound, ListenError> {
    let (std_listener, created) = match passed {
        Some(a) => (a.listener, None),
        None => {
            let (l, created) = bind_one(&lp.path, trusted_uid)?;
            (l, Some(created))
        }
    };
    let bound_err = |source| ListenError::Bind {
        path: lp.path.clone(),
        source,
    };
    // Until this returns, a failure must still remove the file bound above.
    let finish = || {
        apply_mode_and_group(&lp.path, lp)?;
        std_listener.set_nonblocking(true).map_err(bound_err)?;
        tokio::net::UnixListener::from_std(std_listener).map_err(bound_err)
    };
    match finish() {
        Ok(listener) => Ok(Bound {
            policy: Arc::new(lp.clone()),
            listener,
            created,
        }),
        Err(e) => {
            remove_created(created.as_slice());
            Err(e)
        }
    }
}

fn same_path(a: &Path, b: &Path) -> bool {
    a == b
        || matches!((std::fs::canonicalize(a), std::fs::canonicalize(b)), (Ok(x), Ok(y)) if x == y)
}

fn bind_one(
    path: &Path,
    trusted_uid: u32,
) -> Result<(std::os::unix::net::UnixListener, (PathBuf, u64, u64)), ListenError> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    check_dir_chain(parent, trusted_uid)?;
    clear_stale(path)?;
    let listener =
        std::os::unix::net::UnixListener::bind(path).map_err(|source| ListenError::Bind {
            path: path.into(),
            source,
        })?;
    let o = owner_of(path).map_err(|source| ListenError::Inspect {
        path: path.into(),
        source,
    })?;
    Ok((listener, (path.into(), o.dev, o.ino)))
}

/// Removes a socket file left by a daemon that is gone; refuses a live socket or any other file.
fn clear_stale(path: &Path) -> Result<(), ListenError> {
    let o = match owner_of(path) {
        Ok(o) => o,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ListenError::Inspect {
                path: path.into(),
                source,
            });
        }
    };
    if !o.is_socket {
        return Err(ListenError::NotASocket { path: path.into() });
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(ListenError::SocketInUse { path: path.into() }),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => std::fs::remove_file(path)
            .map_err(|source| ListenError::RemoveStale {
                path: path.into(),
                source,
            }),
        Err(source) => Err(ListenError::Inspect {
            path: path.into(),
            source,
        }),
    }
}

fn apply_mode_and_group(path: &Path, lp: &ListenerPolicy) -> Result<(), ListenError> {
    // Group before mode: the file stays 0600 (umask) until both are right.
    if let Some((name, gid)) = &lp.group {
        chown_nofollow(path, None, Some(gid.0)).map_err(|source| ListenError::SetGroup {
            path: path.into(),
            group: name.clone(),
            source,
        })?;
    }
    set_mode_nofollow(path, lp.mode).map_err(|source| ListenError::SetMode {
        path: path.into(),
        mode: lp.mode,
        source,
    })
}

/// Removes the socket files this daemon created, if they are still the files it created. (A
/// file that replaced a socket can reuse its inode number at once on tmpfs, so the file type is
/// checked too.)
pub(crate) fn remove_created(created: &[(PathBuf, u64, u64)]) {
    for (path, dev, ino) in created {
        if let Ok(o) = owner_of(path)
            && o.is_socket
            && o.dev == *dev
            && o.ino == *ino
            && let Err(e) = std::fs::remove_file(path)
        {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove socket at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir() -> tempfile::TempDir {
        warden_testkit::safe_tempdir()
    }

    #[test]
    fn a_world_writable_parent_is_refused_by_name() {
        let d = dir();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let err = check_dir_chain(&open, warden_sys::users::effective_uid()).unwrap_err();
        assert!(
            matches!(&err, ListenError::UnsafeDirectory { path, .. } if path.ends_with("open")),
            "{err}"
        );
        assert!(err.to_string().contains("mode 1777"), "{err}");
    }

    #[test]
    fn a_directory_owned_by_another_user_is_refused() {
        if !warden_testkit::root_or_skip("a_directory_owned_by_another_user_is_refused") {
            return;
        }
        let d = dir();
        let theirs = d.path().join("theirs");
        std::fs::create_dir(&theirs).unwrap();
        chown_nofollow(&theirs, Some(54321), None).unwrap();
        let err = check_dir_chain(&theirs, 0).unwrap_err();
        assert!(
            matches!(&err, ListenError::UnsafeDirectory { reason, .. } if reason.contains("uid 54321")),
            "{err}"
        );
        // A socket cannot be bound below it either.
        let err = bind_one(&theirs.join("s.sock"), 0).unwrap_err();
        assert!(matches!(err, ListenError::UnsafeDirectory { .. }), "{err}");
    }

    #[test]
    fn a_stale_socket_is_replaced_but_a_live_one_or_a_plain_file_is_not() {
        let d = dir();
        let path = d.path().join("s.sock");
        let live = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(matches!(
            clear_stale(&path),
            Err(ListenError::SocketInUse { .. })
        ));
        drop(live);
        clear_stale(&path).unwrap();
        assert!(!path.exists());
        std::fs::write(&path, b"data").unwrap();
        assert!(matches!(
            clear_stale(&path),
            Err(ListenError::NotASocket { .. })
        ));
        assert!(path.exists());
        let link = d.path().join("l.sock");
        std::os::unix::fs::symlink("/etc/passwd", &link).unwrap();
        assert!(matches!(
            clear_stale(&link),
            Err(ListenError::NotASocket { .. })
        ));
    }

    #[test]
    fn a_failed_start_removes_the_sockets_it_already_created() {
        let d = dir();
        let text = warden_testkit::config(
            "[[listener]]\npath = \"{dir}/first.sock\"\n[[listener]]\npath = \"{dir}/second.sock\"\n",
            d.path(),
        );
        let policy = warden_policy::Policy::load(&text, "t", &crate::SystemDirectory)
            .unwrap()
            .policy;
        // The second path is taken by a plain file, so the second listener fails.
        std::fs::write(d.path().join("second.sock"), b"x").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let err = bind_all(&policy, Vec::new(), warden_sys::users::effective_uid()).unwrap_err();
        assert!(matches!(err, ListenError::NotASocket { .. }), "{err}");
        assert!(
            !d.path().join("first.sock").exists(),
            "the first socket was left behind"
        );
        assert!(d.path().join("second.sock").exists());
    }

    #[test]
    fn created_sockets_are_removed_only_if_still_the_same_file() {
        let d = dir();
        let path = d.path().join("s.sock");
        let (l, created) = bind_one(&path, warden_sys::users::effective_uid()).unwrap();
        drop(l);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"someone else's").unwrap();
        remove_created(&[created]);
        assert!(
            path.exists(),
            "a file that replaced the socket is left alone"
        );
    }
}
