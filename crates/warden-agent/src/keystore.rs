//! The key store: the one machine key this host holds (and its version), in
//! `state_dir/machine.key`, a file 0600 in a 0700 directory, both owned by the agent's uid.
//!
//! It owns every read and write of that file. A write goes to a temporary file in the same
//! directory, is fsynced, renamed over the key file, the directory fsynced, and the result read
//! back, so a crash at any moment leaves the old key or the new one, never a torn file. Before
//! it reads or writes anything it checks the directory and the file through their open
//! descriptors (no symlink followed, exact owner, no access for group or others) and refuses,
//! saying what it found and what to run, when they are wrong. It must never log or print a key,
//! and never delete one: a key is only ever replaced by a newer key.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, FlockOperation, Mode, OFlags};
use rustix::io::Errno;
use serde::{Deserialize, Serialize};
use warden_fleet_proto::{KeyVersion, MachineKey};

/// The key file's name in the state directory.
pub const KEY_FILE: &str = "machine.key";
/// The temporary file a write goes through.
pub const TEMP_FILE: &str = "machine.key.tmp";
/// Held (flock) while an agent uses the directory, so two agents never share one key.
pub const LOCK_FILE: &str = "agent.lock";
/// A key file is a few dozen bytes; anything longer is not ours.
const MAX_FILE: u64 = 4096;

/// Why the key store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error(
        "refusing to start: {path} is a symlink; the key store must be a real {what}. \
         Fix: remove the link and let the agent create it (or use StateDirectory= in its unit)"
    )]
    Symlink { path: PathBuf, what: &'static str },
    #[error("refusing to start: {path} is not a {what}")]
    WrongType { path: PathBuf, what: &'static str },
    #[error(
        "refusing to start: {path} is mode {found:04o}; it must be {want:04o} (nothing for group \
         or others). Fix: chmod {want:04o} {path}"
    )]
    Mode {
        path: PathBuf,
        found: u32,
        want: u32,
    },
    #[error(
        "refusing to start: {path} is owned by {found}, not by the agent's user {want}. \
         Fix: chown {want_name}: {path} (or run the agent as {found})"
    )]
    Owner {
        path: PathBuf,
        found: String,
        want: String,
        want_name: String,
    },
    #[error(
        "refusing to start: another warden-agent is using {path} (its lock is held); \
         one agent per state directory"
    )]
    Locked { path: PathBuf },
    #[error(
        "{path} holds no valid key file ({reason}); the agent never overwrites it blindly: \
             move it away to enroll again"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("key store: cannot {step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key store: {path} did not read back as the key just written")]
    ReadBack { path: PathBuf },
}

/// What the key file holds.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub key: MachineKey,
    /// The version the server gave it (`None` until a link's Welcome says: enrollment answers
    /// carry no version).
    pub version: Option<KeyVersion>,
}

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // MachineKey's Debug is redacted already; spelled out so this stays true.
        f.debug_struct("StoredKey")
            .field("key", &"wmk_…(redacted)")
            .field("version", &self.version)
            .finish()
    }
}

/// The file's layout (local state, not a wire type).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    machine_key: MachineKey,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    key_version: Option<KeyVersion>,
}

/// An open, checked key store.
#[derive(Debug)]
pub struct KeyStore {
    dir: PathBuf,
    /// The directory, opened once and checked: every later open is relative to it, so a
    /// directory swapped under the path afterwards is never written to.
    dirfd: OwnedFd,
    /// The flock on [`LOCK_FILE`], held for as long as this value lives.
    _lock: OwnedFd,
    uid: u32,
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(Errno) -> KeyStoreError + 'a {
    move |e| KeyStoreError::Io {
        step,
        path: path.into(),
        source: e.into(),
    }
}

fn who(uid: u32) -> (String, String) {
    match warden_sys::users::user_name(uid) {
        Ok(Some(name)) => (format!("uid {uid} ({name})"), name),
        _ => (format!("uid {uid}"), uid.to_string()),
    }
}

/// Checks what `fd` (opened from `path`) is: a `dir` or a file, owned by `uid`, no bits for
/// group or others.
fn check(fd: impl AsFd, path: &Path, dir: bool, uid: u32) -> Result<(), KeyStoreError> {
    let st = rfs::fstat(fd).map_err(io("stat", path))?;
    let ft = rfs::FileType::from_raw_mode(st.st_mode);
    let what = if dir { "directory" } else { "file" };
    let right_type = if dir {
        ft == rfs::FileType::Directory
    } else {
        ft == rfs::FileType::RegularFile
    };
    if !right_type {
        return Err(KeyStoreError::WrongType {
            path: path.into(),
            what,
        });
    }
    if st.st_uid != uid {
        let (found, _) = who(st.st_uid);
        let (want, want_name) = who(uid);
        return Err(KeyStoreError::Owner {
            path: path.into(),
            found,
            want,
            want_name,
        });
    }
    let mode = st.st_mode & 0o7777;
    let want = if dir { 0o700 } else { 0o600 };
    if mode & 0o7077 != 0 || mode & want != want {
        return Err(KeyStoreError::Mode {
            path: path.into(),
            found: mode,
            want,
        });
    }
    Ok(())
}

/// Opens `name` in `dirfd` without following a symlink; `Ok(None)` when it does not exist.
fn open_in(
    dirfd: &OwnedFd,
    name: &str,
    path: &Path,
    what: &'static str,
) -> Result<Option<OwnedFd>, KeyStoreError> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK;
    match rfs::openat(dirfd, name, flags, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::NOENT) => Ok(None),
        Err(Errno::LOOP) => Err(KeyStoreError::Symlink {
            path: path.into(),
            what,
        }),
        Err(e) => Err(io("open", path)(e)),
    }
}

impl KeyStore {
    /// Opens (creating it 0700 when missing) and checks the state directory, takes its lock,
    /// and checks the key file if there is one.
    pub fn open(dir: &Path) -> Result<KeyStore, KeyStoreError> {
        let uid = rustix::process::geteuid().as_raw();
        match rfs::mkdir(dir, Mode::from_raw_mode(0o700)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(io("create", dir)(e)),
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let dirfd = match rfs::open(dir, flags, Mode::empty()) {
            Ok(fd) => fd,
            Err(Errno::LOOP | Errno::NOTDIR)
                if std::fs::symlink_metadata(dir).is_ok_and(|m| m.file_type().is_symlink()) =>
            {
                return Err(KeyStoreError::Symlink {
                    path: dir.into(),
                    what: "directory",
                });
            }
            Err(Errno::NOTDIR) => {
                return Err(KeyStoreError::WrongType {
                    path: dir.into(),
                    what: "directory",
                });
            }
            Err(e) => return Err(io("open", dir)(e)),
        };
        check(&dirfd, dir, true, uid)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock = rfs::openat(
            &dirfd,
            LOCK_FILE,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(|e| match e {
            Errno::LOOP => KeyStoreError::Symlink {
                path: lock_path.clone(),
                what: "file",
            },
            e => io("open", &lock_path)(e),
        })?;
        check(&lock, &lock_path, false, uid)?;
        rfs::flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| match e {
            Errno::WOULDBLOCK => KeyStoreError::Locked { path: dir.into() },
            e => io("lock", &lock_path)(e),
        })?;
        let store = KeyStore {
            dir: dir.into(),
            dirfd,
            _lock: lock,
            uid,
        };
        store.load()?;
        Ok(store)
    }

    /// The key file's path.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY_FILE)
    }

    /// The key held, if any, after checking the file again.
    pub fn load(&self) -> Result<Option<StoredKey>, KeyStoreError> {
        let path = self.key_path();
        let Some(fd) = open_in(&self.dirfd, KEY_FILE, &path, "file")? else {
            return Ok(None);
        };
        check(&fd, &path, false, self.uid)?;
        let mut text = String::new();
        std::fs::File::from(fd)
            .take(MAX_FILE + 1)
            .read_to_string(&mut text)
            .map_err(|source| KeyStoreError::Io {
                step: "read",
                path: path.clone(),
                source,
            })?;
        let corrupt = |reason: String| KeyStoreError::Corrupt {
            path: path.clone(),
            reason,
        };
        if text.len() as u64 > MAX_FILE {
            return Err(corrupt(format!("longer than {MAX_FILE} bytes")));
        }
        // serde_json's message names the position, never the value: no key in the error.
        let d: OnDisk = serde_json::from_str(&text).map_err(|e| corrupt(e.to_string()))?;
        Ok(Some(StoredKey {
            key: d.machine_key,
            version: d.key_version,
        }))
    }

    /// Replaces the key file with `key`, atomically and durably, and reads it back.
    pub fn store(&self, key: &StoredKey) -> Result<(), KeyStoreError> {
        let path = self.key_path();
        let temp = self.dir.join(TEMP_FILE);
        let body = serde_json::to_string(&OnDisk {
            machine_key: key.key.clone(),
            key_version: key.version,
        })
        .map_err(|e| KeyStoreError::Io {
            step: "encode",
            path: path.clone(),
            source: e.into(),
        })?;
        // A temp file left by a crash is ours and useless (the rename never happened).
        match rfs::unlinkat(&self.dirfd, TEMP_FILE, rfs::AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(e) => return Err(io("remove", &temp)(e)),
        }
        // EXCL + NOFOLLOW: a file or link planted under the temp name is never written through.
        let fd = rfs::openat(
            &self.dirfd,
            TEMP_FILE,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(io("create", &temp))?;
        // The umask may only have taken bits away; make it exactly 0600.
        rfs::fchmod(&fd, Mode::from_raw_mode(0o600)).map_err(io("chmod", &temp))?;
        let mut file = std::fs::File::from(fd);
        let written = file
            .write_all(format!("{body}\n").as_bytes())
            .and_then(|()| file.sync_all());
        if let Err(source) = written {
            let _ = rfs::unlinkat(&self.dirfd, TEMP_FILE, rfs::AtFlags::empty());
            return Err(KeyStoreError::Io {
                step: "write",
                path: temp,
                source,
            });
        }
        drop(file);
        // The contents are durable before the name points at them...
        rfs::renameat(&self.dirfd, TEMP_FILE, &self.dirfd, KEY_FILE)
            .map_err(io("rename into place", &path))?;
        // ...and the rename is durable before anyone is told the key is stored.
        rfs::fsync(&self.dirfd).map_err(io("fsync", &self.dir))?;
        match self.load()? {
            Some(back) if back == *key => Ok(()),
            _ => Err(KeyStoreError::ReadBack { path }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn key(n: u8) -> StoredKey {
        StoredKey {
            key: format!("wmk_{}", format!("{n:02x}").repeat(32))
                .parse()
                .unwrap(),
            version: Some(KeyVersion(u64::from(n))),
        }
    }

    /// Pins: a fresh store creates its directory 0700, holds no key, stores one 0600, reads
    /// it back, replaces it, and leaves no temp file.
    #[test]
    fn store_and_replace() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        let s = KeyStore::open(&dir).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o700);
        assert!(s.load().unwrap().is_none());
        s.store(&key(1)).unwrap();
        assert_eq!(mode(&s.key_path()), 0o600);
        assert_eq!(s.load().unwrap(), Some(key(1)));
        s.store(&key(2)).unwrap();
        assert_eq!(s.load().unwrap(), Some(key(2)));
        assert!(!dir.join(TEMP_FILE).exists());
        assert!(!format!("{:?}", key(2)).contains("0202"));
    }

    /// Pins: a second agent on the same directory is refused while the first holds it.
    #[test]
    fn one_agent_per_directory() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        let _first = KeyStore::open(&dir).unwrap();
        assert!(matches!(
            KeyStore::open(&dir),
            Err(KeyStoreError::Locked { .. })
        ));
    }

    /// Pins: a directory or key file open to group/others, a symlinked key file, and a
    /// garbage key file are each refused with the path and what was found.
    #[test]
    fn refusals() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("state");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
        let e = KeyStore::open(&dir).unwrap_err().to_string();
        assert!(e.contains("mode 0750") && e.contains("chmod 0700"), "{e}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        {
            let s = KeyStore::open(&dir).unwrap();
            s.store(&key(3)).unwrap();
        }
        let file = dir.join(KEY_FILE);
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
        let e = KeyStore::open(&dir).unwrap_err().to_string();
        assert!(
            e.contains("mode 0640") && e.contains(file.to_str().unwrap()),
            "{e}"
        );
        std::fs::remove_file(&file).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", &file).unwrap();
        let e = KeyStore::open(&dir).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        std::fs::remove_file(&file).unwrap();
        std::fs::write(&file, "not a key").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(matches!(
            KeyStore::open(&dir),
            Err(KeyStoreError::Corrupt { .. })
        ));
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        let e = KeyStore::open(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
    }
}
