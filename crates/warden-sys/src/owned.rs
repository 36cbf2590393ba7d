//! Directories made for, and removed on behalf of, their owners inside a base directory the
//! daemon keeps. Every step works relative to a descriptor of the base directory and never
//! follows a symlink, so nothing an owner plants inside their directory (or swaps in while a
//! removal runs) can turn a change into one outside it.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags};

/// Deepest directory nesting a removal walks into; deeper trees are refused, not followed.
pub const MAX_DEPTH: usize = 256;
/// Passes over one directory before a removal gives up on an owner who keeps filling it.
const PASSES: usize = 4;

/// An opened base directory.
#[derive(Debug)]
pub struct BaseDir {
    fd: OwnedFd,
    /// The file system it is on: a removal does not cross into another (a mount inside).
    dev: u64,
    path: PathBuf,
}

fn c_name(name: &str) -> io::Result<CString> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("`{}` is not one directory entry", name.escape_debug()),
        ));
    }
    CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a name"))
}

/// The mode of a base directory (and of each parent) the daemon creates: owners must be able to
/// reach their own directories inside it.
pub const BASE_DIR_MODE: u32 = 0o755;

/// Creates `path` and each missing parent with exactly `mode`. The mode is set after `mkdir`,
/// because the daemon's umask (077) would otherwise narrow it to 0700 and lock every owner out
/// of what they own. Directories that already exist are left as they are.
fn make_missing(path: &Path, mode: u32) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut at = Some(path);
    while let Some(p) = at {
        match std::fs::symlink_metadata(p) {
            Ok(_) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => missing.push(p),
            Err(e) => return Err(e),
        }
        at = p.parent().filter(|p| !p.as_os_str().is_empty());
    }
    for dir in missing.into_iter().rev() {
        match rustix::fs::mkdir(dir, Mode::from_raw_mode(0o700)) {
            Ok(()) => {
                // Opened without following a symlink, so the mode lands on what was just made.
                let fd = rustix::fs::open(dir, dir_flags(), Mode::empty())?;
                rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode))?;
            }
            Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

fn dir_flags() -> OFlags {
    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC
}

impl BaseDir {
    /// Opens `path`, creating it (mode 0755) if it is missing. It must be a directory owned by
    /// this process's user and writable by nobody else; otherwise another user could swap
    /// names in it between the daemon's steps.
    pub fn open(path: &Path) -> io::Result<BaseDir> {
        make_missing(path, BASE_DIR_MODE)?;
        let fd = rustix::fs::open(path, dir_flags(), Mode::empty())?;
        let st = rustix::fs::fstat(&fd)?;
        let me = rustix::process::geteuid().as_raw();
        if st.st_uid != me || st.st_mode & 0o022 != 0 {
            return Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                format!(
                    "{} must be owned by uid {me} and writable by nobody else (it is uid {}, mode {:04o})",
                    path.display(),
                    st.st_uid,
                    st.st_mode & 0o7777
                ),
            ));
        }
        Ok(BaseDir {
            fd,
            dev: st.st_dev,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the directory `name` (mode 0700, owned by this process) and returns it opened.
    pub fn make_dir(&self, name: &str) -> io::Result<OwnedFd> {
        let c = c_name(name)?;
        rustix::fs::mkdirat(&self.fd, &c, Mode::from_raw_mode(0o700))?;
        Ok(rustix::fs::openat(
            &self.fd,
            &c,
            dir_flags(),
            Mode::empty(),
        )?)
    }

    /// Gives the opened directory `dir` to `uid`:`gid` with permission bits `mode`. The mode is
    /// set after the owner, since changing the owner may clear set-id bits.
    pub fn hand_over(dir: &OwnedFd, uid: u32, gid: u32, mode: u32) -> io::Result<()> {
        rustix::fs::fchown(
            dir,
            Some(rustix::fs::Uid::from_raw(uid)),
            Some(rustix::fs::Gid::from_raw(gid)),
        )?;
        rustix::fs::fchmod(dir, Mode::from_raw_mode(mode))?;
        Ok(())
    }

    /// Renames `from` to `to`, failing with `AlreadyExists` if `to` exists.
    pub fn rename_new(&self, from: &str, to: &str) -> io::Result<()> {
        rustix::fs::renameat_with(
            &self.fd,
            &c_name(from)?,
            &self.fd,
            &c_name(to)?,
            RenameFlags::NOREPLACE,
        )?;
        Ok(())
    }

    /// Whether the entry `name` exists (a symlink counts as itself).
    pub fn exists(&self, name: &str) -> io::Result<bool> {
        match rustix::fs::statat(&self.fd, &c_name(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(_) => Ok(true),
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Whether `name` is a directory owned by `uid` (a symlink is not).
    pub fn is_dir_of(&self, name: &str, uid: u32) -> io::Result<bool> {
        match rustix::fs::statat(&self.fd, &c_name(name)?, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) => {
                Ok(FileType::from_raw_mode(st.st_mode) == FileType::Directory && st.st_uid == uid)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Makes renames and removals in the base directory durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&self.fd)?)
    }

    /// The names in the base directory.
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for entry in rustix::fs::Dir::read_from(&self.fd)? {
            let entry = entry?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(String::from_utf8_lossy(name).into_owned());
            }
        }
        Ok(out)
    }

    /// Removes `name` and everything under it without following a symlink anywhere: links are
    /// removed as links, and a directory swapped for a link mid-walk is removed as a link. It
    /// does not descend into another file system mounted inside.
    pub fn remove_tree(&self, name: &str) -> io::Result<()> {
        remove_entry(self.fd.as_fd(), &c_name(name)?, self.dev, 0)
    }
}

/// Removes the entry `name` of the directory `parent`.
fn remove_entry(parent: BorrowedFd<'_>, name: &CStr, dev: u64, depth: usize) -> io::Result<()> {
    let st = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return unlink(parent, name, AtFlags::empty());
    }
    if st.st_dev != dev {
        return Err(io::Error::other(format!(
            "{} is another file system mounted inside; not removing into it",
            name.to_string_lossy()
        )));
    }
    if depth >= MAX_DEPTH {
        return Err(io::Error::other(format!(
            "directories nested deeper than {MAX_DEPTH} levels"
        )));
    }
    let dir = match rustix::fs::openat(parent, name, dir_flags(), Mode::empty()) {
        Ok(fd) => fd,
        // Swapped for a link or a file since the look: remove that instead, as itself.
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            return unlink(parent, name, AtFlags::empty());
        }
        Err(rustix::io::Errno::NOENT) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let opened = rustix::fs::fstat(&dir)?;
    if opened.st_dev != st.st_dev || opened.st_ino != st.st_ino {
        return Err(io::Error::other(format!(
            "{} changed while it was being removed",
            name.to_string_lossy()
        )));
    }
    for _ in 0..PASSES {
        let mut names: Vec<CString> = Vec::new();
        for entry in rustix::fs::Dir::read_from(&dir)? {
            let entry = entry?;
            let n = entry.file_name();
            if n.to_bytes() != b"." && n.to_bytes() != b".." {
                names.push(n.to_owned());
            }
        }
        if names.is_empty() {
            break;
        }
        for n in &names {
            remove_entry(dir.as_fd(), n, dev, depth + 1)?;
        }
    }
    unlink(parent, name, AtFlags::REMOVEDIR)
}

fn unlink(parent: BorrowedFd<'_>, name: &CStr, flags: AtFlags) -> io::Result<()> {
    match rustix::fs::unlinkat(parent, name, flags) {
        Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt, symlink};

    use super::*;

    fn base() -> (tempfile::TempDir, BaseDir) {
        let t = tempfile::tempdir().expect("tempdir");
        let path = t.path().join("base");
        let b = BaseDir::open(&path).expect("open base");
        (t, b)
    }

    /// Pins: a made directory is handed over with exactly the owner and mode asked for.
    #[test]
    fn a_made_directory_has_the_owner_and_mode_asked_for() {
        let (_t, b) = base();
        let me = rustix::process::geteuid().as_raw();
        let gid = rustix::process::getegid().as_raw();
        let fd = b.make_dir("ws").unwrap();
        BaseDir::hand_over(&fd, me, gid, 0o750).unwrap();
        let md = std::fs::symlink_metadata(b.path().join("ws")).unwrap();
        assert_eq!((md.uid(), md.gid(), md.mode() & 0o7777), (me, gid, 0o750));
        assert!(b.make_dir("ws").is_err(), "made twice");
        assert!(b.make_dir("../x").is_err());
    }

    /// Pins: a removal takes links as links: the file a planted symlink points at, and the
    /// directory a planted link to a directory points at, both survive.
    #[test]
    fn removal_never_follows_a_planted_symlink() {
        let (t, b) = base();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), "precious").unwrap();
        b.make_dir("ws").unwrap();
        let ws = b.path().join("ws");
        std::fs::create_dir_all(ws.join("a/b/c")).unwrap();
        std::fs::write(ws.join("a/b/c/f"), "x").unwrap();
        symlink(outside.join("keep"), ws.join("a/link-to-file")).unwrap();
        symlink(&outside, ws.join("a/b/link-to-dir")).unwrap();
        b.remove_tree("ws").unwrap();
        assert!(!ws.exists());
        assert_eq!(
            std::fs::read_to_string(outside.join("keep")).unwrap(),
            "precious"
        );
    }

    /// Pins: a base directory others may write to is refused, and removing what is not there
    /// is not an error.
    #[test]
    fn a_base_others_can_write_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("open");
        std::fs::create_dir(&path).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = BaseDir::open(&path).unwrap_err();
        assert!(e.to_string().contains("writable by nobody else"), "{e}");
        let (_t, b) = base();
        b.remove_tree("never-made").unwrap();
        assert!(b.names().unwrap().is_empty());
    }
}
