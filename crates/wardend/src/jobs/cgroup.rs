//! A cgroup (v2) per job, so that cancel, timeout, shutdown and crash recovery end the whole job
//! with `cgroup.kill`: grandchildren and double-forked daemons included, which neither a
//! parent-death signal (it reaches only the direct child) nor a process-group signal (a daemon
//! leaves the group) can promise.
//!
//! Jobs live under `<cgroup2 mount><the daemon's own cgroup>/warden-<tag>/<job id>`, where the
//! tag is derived from the state directory, so a restarted daemon finds the cgroups of the jobs
//! it lost. Under systemd the unit needs `Delegate=yes`. Where no cgroup can be made, jobs fall
//! back to process groups and `status` says so.

use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};

/// The cgroup directory this daemon's jobs go under.
#[derive(Debug, Clone)]
pub(crate) struct CgroupTree {
    root: PathBuf,
}

/// One job's cgroup.
#[derive(Debug, Clone)]
pub(crate) struct JobCgroup {
    path: PathBuf,
}

/// Where the cgroup2 hierarchy is mounted, from `/proc/self/mountinfo` (never assumed: hybrid
/// systems mount it at `/sys/fs/cgroup/unified`).
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // "... mount_point options - fstype source super_options"
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next()? == "cgroup2")
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
    })
}

/// This process's cgroup2 path, from the `0::` line of `/proc/self/cgroup`.
fn own_cgroup(cgroup: &str) -> Option<PathBuf> {
    cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(|p| PathBuf::from(p.trim_start_matches('/')))
}

impl CgroupTree {
    /// Finds or makes this daemon's job cgroup directory. `Err` says why jobs cannot have
    /// cgroups here (the daemon then uses process groups).
    pub(crate) fn discover(state_dir: &Path) -> io::Result<CgroupTree> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let mount = cgroup2_mount(&mountinfo).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "no cgroup2 hierarchy is mounted")
        })?;
        let own = own_cgroup(&std::fs::read_to_string("/proc/self/cgroup")?).ok_or_else(|| {
            io::Error::new(io::ErrorKind::NotFound, "this process has no cgroup2 path")
        })?;
        let tag: String = Sha256::digest(state_dir.as_os_str().as_encoded_bytes())[..4]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let root = mount.join(own).join(format!("warden-{tag}"));
        match std::fs::create_dir(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            // Said in `status`: name the directory, so whoever reads it knows what to delegate.
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("cannot create {}: {e}", root.display()),
                ));
            }
        }
        // cgroup.kill (Linux 5.14) is what makes a cgroup worth having.
        let tree = CgroupTree { root };
        let probe = tree.create("probe")?;
        let has_kill = probe.path.join("cgroup.kill").exists();
        probe.remove();
        if !has_kill {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "cgroup.kill is not available",
            ));
        }
        Ok(tree)
    }

    /// Removes the daemon's job cgroup directory, if no job cgroup is left in it.
    pub(crate) fn remove_root(&self) {
        let _ = std::fs::remove_dir(&self.root);
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// Makes the cgroup `name` (a job id, or one with a suffix) for a process of a job.
    pub(crate) fn create(&self, name: &str) -> io::Result<JobCgroup> {
        let path = self.root.join(name);
        match std::fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        Ok(JobCgroup { path })
    }

    /// Kills and removes every job cgroup left under the root (after a crash, what is left
    /// belongs to jobs that are now `lost`). Returns how many held processes.
    pub(crate) async fn clear_leftovers(&self) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        let mut populated = 0;
        for entry in entries.flatten() {
            if !entry.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let cg = JobCgroup { path: entry.path() };
            if cg.is_populated() {
                populated += 1;
                let _ = cg.kill();
                cg.wait_empty(Duration::from_secs(5)).await;
            }
            cg.remove();
        }
        populated
    }
}

impl JobCgroup {
    /// The cgroup's directory, to create the job's process inside it.
    pub(crate) fn dir(&self) -> io::Result<OwnedFd> {
        Ok(std::fs::File::open(&self.path)?.into())
    }

    /// SIGKILL to every process in the cgroup, at once.
    pub(crate) fn kill(&self) -> io::Result<()> {
        std::fs::write(self.path.join("cgroup.kill"), b"1")
    }

    pub(crate) fn is_populated(&self) -> bool {
        std::fs::read_to_string(self.path.join("cgroup.events"))
            .map(|e| e.lines().any(|l| l == "populated 1"))
            .unwrap_or(false)
    }

    /// Waits until no process is left in the cgroup, at most `limit`. `true` if it emptied.
    pub(crate) async fn wait_empty(&self, limit: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if !self.is_populated() {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Removes the (empty) cgroup.
    pub(crate) fn remove(&self) {
        let _ = std::fs::remove_dir(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_and_own_path_are_read_not_assumed() {
        let mountinfo = "24 30 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                         41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup2_mount("1 2 0:1 / /proc rw - proc proc rw\n"), None);
        let cgroup = "4:memory:/x\n0::/system.slice/wardend.service\n";
        assert_eq!(
            own_cgroup(cgroup),
            Some(PathBuf::from("system.slice/wardend.service"))
        );
        assert_eq!(own_cgroup("0::/\n"), Some(PathBuf::from("")));
    }
}
