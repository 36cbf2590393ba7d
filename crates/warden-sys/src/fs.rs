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

#[cfg(test)]
mod tests {
    use super::*;

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
