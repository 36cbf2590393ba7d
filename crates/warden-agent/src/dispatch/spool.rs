//! The dispatch spool: what the agent must not forget about a dispatch across a lost link or
//! its own restart. Layout, under `state_dir/spool/` (0700, the agent's own):
//!
//! ```text
//! spool/<dispatch_id>/meta.json          0600  the record (see [`Meta`])
//! spool/<dispatch_id>/<seq, 20 digits>.chunk  0600  one output chunk {offset, data}
//! ```
//!
//! It owns every file under `spool/`. Each file is written to a temporary name (exclusive,
//! no symlink followed, 0600), fsynced, renamed into place and the directory fsynced, so a crash
//! leaves the old version or the new one. A chunk file is durable before the record counts it;
//! a chunk file past the record's count is a leftover of a crash and is written again. It must
//! never hold a dispatch's params (they may be secret; the server sends a Dispatch again until
//! it is answered) and never keep a chunk the server has acknowledged.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use warden_fleet_proto::DispatchId;

/// The spool's folder under the state directory.
pub const SPOOL_DIR: &str = "spool";
const META: &str = "meta.json";
/// A chunk or record file longer than this is not ours.
const MAX_FILE: u64 = 8 * 1024 * 1024;

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool: cannot {step} {path}: {source}")]
    Io {
        step: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "spool: {path} must be a directory of the agent's user, mode 0700 (found mode {mode:04o}, \
         uid {uid}); fix: chown and chmod 0700 it, or move it away"
    )]
    Unsafe { path: PathBuf, mode: u32, uid: u32 },
    #[error("spool: {path} is not a spool file: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

fn io<'a>(step: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        step,
        path: path.into(),
        source,
    }
}

/// wardend's answer to a dispatch, as recorded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Answer {
    Accepted { job_id: String },
    Refused { kind: String, message: String },
}

/// How the job ended, as recorded once wardend said so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndRecord {
    pub state: String,
    pub exit_code: Option<i32>,
    pub result: Option<serde_json::Value>,
}

/// One dispatch's record (local state, not a wire type).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Meta {
    pub dispatch_id: DispatchId,
    pub action: String,
    pub operator: String,
    pub server: String,
    /// Seconds since the epoch when the dispatch arrived.
    pub received_at: u64,
    /// `None` until wardend answered.
    pub answer: Option<Answer>,
    /// wardend's byte offset to follow the job's output from.
    pub next_offset: u64,
    /// The last chunk spooled (0: none yet).
    pub last_seq: u64,
    /// The last chunk the server has stored.
    pub acked_seq: u64,
    /// Bytes of output in chunks not yet acknowledged.
    pub held_bytes: u64,
    /// Output was dropped: the spool's cap was reached, or wardend's log was truncated.
    pub truncated: bool,
    /// Bytes not spooled since the cap was reached.
    pub dropped_bytes: u64,
    pub ended: Option<EndRecord>,
}

/// One output chunk as spooled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Chunk {
    pub offset: u64,
    pub data: String,
}

/// The spool directory, checked.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    uid: u32,
}

fn chunk_name(seq: u64) -> String {
    format!("{seq:020}.chunk")
}

impl Spool {
    /// Opens (creating it 0700) `state_dir/spool` and checks it is the agent's own.
    pub fn open(state_dir: &Path) -> Result<Spool, SpoolError> {
        let dir = state_dir.join(SPOOL_DIR);
        let uid = rustix::process::geteuid().as_raw();
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", &dir)(e)),
        }
        let spool = Spool { dir, uid };
        spool.check_dir(&spool.dir)?;
        Ok(spool)
    }

    /// The spool's directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn check_dir(&self, path: &Path) -> Result<(), SpoolError> {
        let md = std::fs::symlink_metadata(path).map_err(io("inspect", path))?;
        let mode = md.mode() & 0o7777;
        if !md.is_dir() || md.uid() != self.uid || mode != 0o700 {
            return Err(SpoolError::Unsafe {
                path: path.into(),
                mode,
                uid: md.uid(),
            });
        }
        Ok(())
    }

    fn job_dir(&self, id: &DispatchId) -> PathBuf {
        self.dir.join(id.as_str())
    }

    /// Writes `bytes` to `dir/name` atomically and durably (0600).
    fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), SpoolError> {
        let temp = dir.join(format!("{name}.tmp"));
        let path = dir.join(name);
        match std::fs::remove_file(&temp) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &temp)(e)),
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc_nofollow())
            .open(&temp)
            .map_err(io("create", &temp))?;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod", &temp))?;
        if let Err(e) = f.write_all(bytes).and_then(|()| f.sync_all()) {
            let _ = std::fs::remove_file(&temp);
            return Err(io("write", &temp)(e));
        }
        drop(f);
        std::fs::rename(&temp, &path).map_err(io("rename into place", &path))?;
        sync_dir(dir)
    }

    /// Records a new dispatch (before wardend is asked).
    pub fn create(&self, meta: &Meta) -> Result<(), SpoolError> {
        let dir = self.job_dir(&meta.dispatch_id);
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io("create", &dir)(e)),
        }
        self.check_dir(&dir)?;
        sync_dir(&self.dir)?;
        self.save(meta)
    }

    /// Replaces a dispatch's record.
    pub fn save(&self, meta: &Meta) -> Result<(), SpoolError> {
        let dir = self.job_dir(&meta.dispatch_id);
        let body = serde_json::to_vec(meta).map_err(|e| SpoolError::Corrupt {
            path: dir.join(META),
            reason: e.to_string(),
        })?;
        Self::write_atomic(&dir, META, &body)
    }

    /// Writes chunk `seq` (the record is saved after, by the caller).
    pub fn put_chunk(&self, id: &DispatchId, seq: u64, chunk: &Chunk) -> Result<(), SpoolError> {
        let dir = self.job_dir(id);
        let body = serde_json::to_vec(chunk).map_err(|e| SpoolError::Corrupt {
            path: dir.join(chunk_name(seq)),
            reason: e.to_string(),
        })?;
        Self::write_atomic(&dir, &chunk_name(seq), &body)
    }

    /// Reads chunk `seq` back.
    pub fn chunk(&self, id: &DispatchId, seq: u64) -> Result<Chunk, SpoolError> {
        let path = self.job_dir(id).join(chunk_name(seq));
        read_json(&path)
    }

    /// Drops chunks `from..=to` (acknowledged by the server).
    pub fn drop_chunks(&self, id: &DispatchId, from: u64, to: u64) -> Result<(), SpoolError> {
        let dir = self.job_dir(id);
        for seq in from..=to {
            let path = dir.join(chunk_name(seq));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io("remove", &path)(e)),
            }
        }
        Ok(())
    }

    /// Forgets a dispatch and everything spooled for it.
    pub fn forget(&self, id: &DispatchId) -> Result<(), SpoolError> {
        let dir = self.job_dir(id);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", &dir)(e)),
        }
        sync_dir(&self.dir)
    }

    /// Every dispatch on record, after a restart. Leftover temporary files and chunks past a
    /// record's count are removed; an unreadable record is reported and left alone.
    pub fn load(&self) -> Vec<Result<Meta, SpoolError>> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => return vec![Err(io("list", &self.dir)(e))],
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.parse::<DispatchId>().ok()) else {
                continue;
            };
            let dir = self.job_dir(&id);
            if let Err(e) = self.check_dir(&dir) {
                out.push(Err(e));
                continue;
            }
            let meta: Meta = match read_json(&dir.join(META)) {
                Ok(m) => m,
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
            };
            if let Ok(files) = std::fs::read_dir(&dir) {
                for f in files.flatten() {
                    let n = f.file_name();
                    let n = n.to_string_lossy();
                    let stale = n.ends_with(".tmp")
                        || n.strip_suffix(".chunk")
                            .and_then(|s| s.parse::<u64>().ok())
                            .is_some_and(|s| s > meta.last_seq || s <= meta.acked_seq);
                    if stale {
                        let _ = std::fs::remove_file(f.path());
                    }
                }
            }
            out.push(Ok(meta));
        }
        out
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, SpoolError> {
    use std::io::Read;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc_nofollow())
        .open(path)
        .map_err(io("open", path))?;
    let mut text = Vec::new();
    f.take(MAX_FILE + 1)
        .read_to_end(&mut text)
        .map_err(io("read", path))?;
    if text.len() as u64 > MAX_FILE {
        return Err(SpoolError::Corrupt {
            path: path.into(),
            reason: format!("longer than {MAX_FILE} bytes"),
        });
    }
    serde_json::from_slice(&text).map_err(|e| SpoolError::Corrupt {
        path: path.into(),
        reason: e.to_string(),
    })
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("fsync", dir))
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> DispatchId {
        "dsp_0123456789abcdef0123456789abcdef".parse().unwrap()
    }

    fn meta() -> Meta {
        Meta {
            dispatch_id: id(),
            action: "a".into(),
            operator: "o".into(),
            server: "s".into(),
            received_at: 1,
            answer: None,
            next_offset: 0,
            last_seq: 0,
            acked_seq: 0,
            held_bytes: 0,
            truncated: false,
            dropped_bytes: 0,
            ended: None,
        }
    }

    /// Pins: records and chunks are 0600 in 0700 directories, read back as written, chunks
    /// past the record's count or already acknowledged are removed at load, and forget
    /// removes the dispatch.
    #[test]
    fn round_trip_modes_and_leftovers() {
        let base = tempfile::tempdir().unwrap();
        let spool = Spool::open(base.path()).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(spool.path()), 0o700);
        let mut m = meta();
        spool.create(&m).unwrap();
        let dir = spool.path().join(id().as_str());
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(META)), 0o600);
        for seq in 1..=3 {
            let c = Chunk {
                offset: seq * 10,
                data: format!("chunk {seq}"),
            };
            spool.put_chunk(&id(), seq, &c).unwrap();
            assert_eq!(spool.chunk(&id(), seq).unwrap(), c);
        }
        assert_eq!(mode(&dir.join(chunk_name(2))), 0o600);
        m.last_seq = 2;
        m.acked_seq = 1;
        spool.save(&m).unwrap();
        let loaded = spool.load();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].as_ref().unwrap(), &m);
        assert!(!dir.join(chunk_name(1)).exists());
        assert!(dir.join(chunk_name(2)).exists());
        assert!(!dir.join(chunk_name(3)).exists());
        spool.forget(&id()).unwrap();
        assert!(!dir.exists());
        // A spool open to others is refused, saying what to fix.
        std::fs::set_permissions(spool.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = Spool::open(base.path()).unwrap_err().to_string();
        assert!(e.contains("0755") && e.contains("0700"), "{e}");
    }
}
