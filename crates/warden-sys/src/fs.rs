//! File-system facts and changes the daemon needs about its own sockets and directories:
//! ownership and mode without following symlinks.

use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

/// Owner, group and permission bits of `path` itself (a symlink is reported, not followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits including setuid/setgid/sticky (`st_mode & 0o7777`).
    pub mode: u32,
    pub is_dir: bool,
    pub is_symlink: bool,
    pub is_socket: bool,
    pub dev: u64,
    pub ino: u64,
}

/// `lstat(2)` reduced to what ownership checks need.
pub fn owner_of(path: &Path) -> io::Result<Owner> {
    let md = std::fs::symlink_metadata(path)?;
    let ft = md.file_type();
    Ok(Owner {
        uid: md.uid(),
        gid: md.gid(),
        mode: md.mode() & 0o7777,
        is_dir: ft.is_dir(),
        is_symlink: ft.is_symlink(),
        is_socket: std::os::unix::fs::FileTypeExt::is_socket(&ft),
        dev: md.dev(),
        ino: md.ino(),
    })
}

/// Sets the permission bits of `path`. Refuses a symlink, so a swapped link cannot redirect the
/// change to another file.
pub fn set_mode_nofollow(path: &Path, mode: u32) -> io::Result<()> {
    if owner_of(path)?.is_symlink {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "refusing to change the mode through a symlink",
        ));
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Changes the owner and/or group of `path` itself, never a symlink's target.
pub fn chown_nofollow(path: &Path, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    std::os::unix::fs::lchown(path, uid, gid)
}

/// Where a path below a prefix leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beneath {
    /// It exists, and no component below the prefix is a symlink.
    Exists,
    /// Its last component does not exist; its parent exists without symlinks below the prefix.
    Missing,
}

/// Resolves `rel` below the directory `prefix` as the kernel would, refusing any symlink or
/// `..` on the way (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a path that passes
/// cannot lead out of `prefix`, whatever links someone planted under it. The prefix itself is
/// opened normally (it comes from the administrator's configuration).
pub fn resolve_beneath(prefix: &Path, rel: &Path) -> io::Result<Beneath> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let base = rustix::fs::open(
        prefix,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let flags = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    let open = |p: &Path| {
        // No O_NOFOLLOW: with it, a final symlink would be opened as itself instead of refused.
        rustix::fs::openat2(
            &base,
            p,
            OFlags::PATH | OFlags::CLOEXEC,
            Mode::empty(),
            flags,
        )
    };
    if rel.as_os_str().is_empty() {
        return Ok(Beneath::Exists);
    }
    match open(rel) {
        Ok(_) => Ok(Beneath::Exists),
        Err(rustix::io::Errno::NOENT) => {
            let parent = rel.parent().unwrap_or(Path::new(""));
            if !parent.as_os_str().is_empty() {
                open(parent)?;
            }
            Ok(Beneath::Missing)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: a symlink anywhere below the prefix is refused, even one that stays inside.
    #[test]
    fn resolve_beneath_refuses_every_symlink_and_escape() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("allowed");
        std::fs::create_dir_all(base.join("sub")).unwrap();
        std::fs::write(base.join("sub/file"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", base.join("out")).unwrap();
        std::os::unix::fs::symlink("sub", base.join("inside")).unwrap();
        std::os::unix::fs::symlink("/etc/shadow", base.join("sub/shadow")).unwrap();
        let r = |p: &str| resolve_beneath(&base, Path::new(p));
        assert_eq!(r("sub/file").unwrap(), Beneath::Exists);
        assert_eq!(r("sub").unwrap(), Beneath::Exists);
        assert_eq!(r("sub/new-file").unwrap(), Beneath::Missing);
        assert_eq!(r("").unwrap(), Beneath::Exists);
        for bad in [
            "out",
            "out/shadow",
            "inside/file",
            "sub/shadow",
            "../allowed/sub",
            "nope/new",
        ] {
            assert!(r(bad).is_err(), "{bad} resolved");
        }
    }

    #[test]
    fn set_mode_nofollow_refuses_symlinks_and_changes_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let link = dir.path().join("l");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        set_mode_nofollow(&file, 0o640).unwrap();
        assert_eq!(owner_of(&file).unwrap().mode, 0o640);
        assert!(set_mode_nofollow(&link, 0o777).is_err());
        assert_eq!(owner_of(&file).unwrap().mode, 0o640);
        assert!(owner_of(&link).unwrap().is_symlink);
    }
}
