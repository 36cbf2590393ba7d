//! A file system that never answers: a FUSE mount whose server never replies, not even to the
//! kernel's `INIT`. Every lookup below it blocks until the mount is dropped, as it would under a
//! FUSE server its owner stopped. For tests that prove the daemon does not wait on such a file
//! system. Needs root (`mount`); dropping it aborts the connection (what waits gets `ENOTCONN`)
//! and detaches the mount.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A stalled FUSE mount on a directory; released when dropped.
#[derive(Debug)]
pub struct StalledFuse {
    /// The server's end of the connection. Nobody reads it; closing it aborts the connection.
    device: Option<File>,
    dir: PathBuf,
}

impl StalledFuse {
    /// Mounts a stalled file system on `dir` (which must exist).
    pub fn mount(dir: &Path) -> StalledFuse {
        let device = File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap();
        // mount(8) gets the device as its standard input, so the option names fd 0; the kernel
        // takes its own reference to the device during mount(2), and this process keeps its own.
        let out = Command::new("mount")
            .args(["-i", "-t", "fuse.wardenstall", "-o"])
            .arg("fd=0,rootmode=40000,user_id=0,group_id=0,allow_other")
            .arg("wardenstall")
            .arg(dir)
            .stdin(Stdio::from(device.try_clone().unwrap()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a FUSE file system failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        StalledFuse {
            device: Some(device),
            dir: dir.to_owned(),
        }
    }
}

impl Drop for StalledFuse {
    fn drop(&mut self) {
        // Close the server's end first, so whatever waits on the mount fails instead of
        // waiting forever, then detach the mount.
        drop(self.device.take());
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
    }
}
