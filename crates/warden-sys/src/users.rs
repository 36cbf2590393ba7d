//! Name service look-ups (`getpwuid_r`, `getgrnam_r`, …) through nix. Answers `Ok(None)` for
//! "no such entry" and `Err` only when the look-up itself failed, so callers never confuse an
//! unknown account with a broken name service.

use std::io;

use nix::unistd::{Gid, Group, Uid, User};

fn to_io(e: nix::Error) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// The user name of `uid`, if the passwd database has one.
pub fn user_name(uid: u32) -> io::Result<Option<String>> {
    Ok(User::from_uid(Uid::from_raw(uid))
        .map_err(to_io)?
        .map(|u| u.name))
}

/// The uid and primary gid of the user called `name`.
pub fn user_by_name(name: &str) -> io::Result<Option<(u32, u32)>> {
    Ok(User::from_name(name)
        .map_err(to_io)?
        .map(|u| (u.uid.as_raw(), u.gid.as_raw())))
}

/// The primary gid of `uid`, if the passwd database has an entry.
pub fn primary_gid(uid: u32) -> io::Result<Option<u32>> {
    Ok(User::from_uid(Uid::from_raw(uid))
        .map_err(to_io)?
        .map(|u| u.gid.as_raw()))
}

/// The group name of `gid`.
pub fn group_name(gid: u32) -> io::Result<Option<String>> {
    Ok(Group::from_gid(Gid::from_raw(gid))
        .map_err(to_io)?
        .map(|g| g.name))
}

/// The gid of the group called `name`.
pub fn group_by_name(name: &str) -> io::Result<Option<u32>> {
    Ok(Group::from_name(name)
        .map_err(to_io)?
        .map(|g| g.gid.as_raw()))
}

/// The supplementary groups `user` gets at login with primary group `gid` (`getgrouplist`),
/// which include `gid` itself.
pub fn group_list(user: &str, gid: u32) -> io::Result<Vec<u32>> {
    let name = std::ffi::CString::new(user)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "user name contains NUL"))?;
    let mut groups: Vec<u32> = nix::unistd::getgrouplist(&name, Gid::from_raw(gid))
        .map_err(to_io)?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(groups)
}

/// This process's supplementary groups, sorted.
pub fn current_groups() -> io::Result<Vec<u32>> {
    let mut groups: Vec<u32> = nix::unistd::getgroups()
        .map_err(to_io)?
        .into_iter()
        .map(|g| g.as_raw())
        .collect();
    groups.sort_unstable();
    groups.dedup();
    Ok(groups)
}

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// The effective gid of this process.
pub fn effective_gid() -> u32 {
    rustix::process::getegid().as_raw()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_is_known_by_uid_and_name() {
        assert_eq!(user_name(0).unwrap().as_deref(), Some("root"));
        assert_eq!(user_by_name("root").unwrap(), Some((0, 0)));
        assert_eq!(group_by_name("root").unwrap(), Some(0));
        assert_eq!(group_name(0).unwrap().as_deref(), Some("root"));
    }

    #[test]
    fn root_s_group_list_contains_its_primary_group() {
        assert!(group_list("root", 0).unwrap().contains(&0));
        assert!(
            group_list("no-such-user-wdn", 12345)
                .unwrap()
                .contains(&12345)
        );
    }

    #[test]
    fn unknown_entries_are_none_not_errors() {
        assert_eq!(user_name(3_999_999_999).unwrap(), None);
        assert_eq!(user_by_name("no-such-user-wdn").unwrap(), None);
        assert_eq!(group_by_name("no-such-group-wdn").unwrap(), None);
    }
}
