//! File systems that do not answer, for tests that prove the daemon never waits on one: a FUSE
//! mount whose server never replies, not even to the kernel's `INIT` (every lookup below it
//! blocks, as under a FUSE server its owner stopped), and one whose server serves a program but
//! leaves every later `open` of it waiting. Both need root (`mount`); dropping them ends the
//! connection (what waits gets an error) and detaches the mount.

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

/// A FUSE file system with one executable file, `exe` (a copy of some program), served from
/// memory by a thread of this process. Only the first `open` of the file is answered: later
/// ones are left waiting, as under a server that hangs, until the mount is dropped. So a
/// program can be started from it (exec opens the file once; its pages are read as it runs),
/// and whoever opens the file again afterwards waits. Needs root.
#[derive(Debug)]
pub struct HangingOpenFuse {
    device: std::sync::Arc<File>,
    dir: PathBuf,
    /// Requests (`unique`) of the opens left waiting.
    waiting: std::sync::Arc<std::sync::Mutex<Vec<u64>>>,
    server: Option<std::thread::JoinHandle<()>>,
}

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_BATCH_FORGET: u32 = 42;
const ENOENT: i32 = 2;
const EIO: i32 = 5;
const ENOSYS: i32 = 38;

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(b[at..at + 4].try_into().unwrap())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_ne_bytes(b[at..at + 8].try_into().unwrap())
}

/// `struct fuse_attr` for node 1 (the root directory) or 2 (the file of `size` bytes).
fn attr(node: u64, size: u64) -> Vec<u8> {
    let (mode, nlink, size) = if node == 1 {
        (0o040_755u32, 2u32, 0)
    } else {
        (0o100_755u32, 1u32, size)
    };
    let mut a = Vec::with_capacity(88);
    for v in [node, size, size.div_ceil(512), 0, 0, 0] {
        a.extend_from_slice(&v.to_ne_bytes());
    }
    for v in [0u32, 0, 0, mode, nlink, 0, 0, 0, 4096, 0] {
        a.extend_from_slice(&v.to_ne_bytes());
    }
    a
}

fn reply(device: &File, unique: u64, error: i32, body: &[u8]) {
    use std::io::Write;
    let mut out = Vec::with_capacity(16 + body.len());
    out.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&(-error).to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(body);
    // The request may have been interrupted meanwhile (ENOENT): nothing to do about it.
    let _ = (&*device).write(&out);
}

fn serve(device: &File, content: &[u8], waiting: &std::sync::Mutex<Vec<u64>>) {
    use std::io::Read;
    let mut buf = vec![0u8; 1 << 20 | 4096];
    let mut opened = false;
    loop {
        // ENODEV once the file system is unmounted and the connection gone.
        let Ok(n) = (&*device).read(&mut buf) else {
            return;
        };
        let req = &buf[..n];
        let (opcode, unique, node) = (u32_at(req, 4), u64_at(req, 8), u64_at(req, 16));
        let arg = &req[40..];
        match opcode {
            FUSE_INIT => {
                let mut out = Vec::with_capacity(64);
                for v in [7u32, 38, u32_at(arg, 8), 0] {
                    out.extend_from_slice(&v.to_ne_bytes());
                }
                out.extend_from_slice(&16u16.to_ne_bytes());
                out.extend_from_slice(&12u16.to_ne_bytes());
                out.extend_from_slice(&(128u32 * 1024).to_ne_bytes());
                out.extend_from_slice(&1u32.to_ne_bytes());
                out.resize(64, 0);
                reply(device, unique, 0, &out);
            }
            FUSE_LOOKUP => {
                if node == 1 && arg.starts_with(b"exe\0") {
                    let mut out = Vec::with_capacity(128);
                    for v in [2u64, 1, 3600, 3600] {
                        out.extend_from_slice(&v.to_ne_bytes());
                    }
                    out.extend_from_slice(&[0u8; 8]);
                    out.extend_from_slice(&attr(2, content.len() as u64));
                    reply(device, unique, 0, &out);
                } else {
                    reply(device, unique, ENOENT, &[]);
                }
            }
            FUSE_GETATTR => {
                let mut out = Vec::with_capacity(104);
                out.extend_from_slice(&3600u64.to_ne_bytes());
                out.extend_from_slice(&[0u8; 8]);
                out.extend_from_slice(&attr(node, content.len() as u64));
                reply(device, unique, 0, &out);
            }
            FUSE_OPEN if !opened => {
                opened = true;
                // FOPEN_KEEP_CACHE: pages read once stay valid.
                let mut out = vec![0u8; 16];
                out[8..12].copy_from_slice(&2u32.to_ne_bytes());
                reply(device, unique, 0, &out);
            }
            FUSE_OPEN => waiting.lock().unwrap().push(unique),
            FUSE_READ => {
                let (offset, size) = (u64_at(arg, 8) as usize, u32_at(arg, 16) as usize);
                let from = offset.min(content.len());
                let to = (offset + size).min(content.len());
                reply(device, unique, 0, &content[from..to]);
            }
            FUSE_RELEASE | FUSE_FLUSH => reply(device, unique, 0, &[]),
            FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT => {}
            _ => reply(device, unique, ENOSYS, &[]),
        }
    }
}

impl HangingOpenFuse {
    /// Mounts the file system on `dir` (which must exist), with `program`'s bytes as `exe`.
    pub fn mount(dir: &Path, program: &Path) -> HangingOpenFuse {
        let content = std::fs::read(program).unwrap();
        let device = File::options()
            .read(true)
            .write(true)
            .open("/dev/fuse")
            .unwrap();
        let out = Command::new("mount")
            .args(["-i", "-t", "fuse.wardenhang", "-o"])
            .arg("fd=0,rootmode=40000,user_id=0,group_id=0,allow_other")
            .arg("wardenhang")
            .arg(dir)
            .stdin(Stdio::from(device.try_clone().unwrap()))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mounting a FUSE file system failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The device can be read only once it is mounted; the first access to the mount waits
        // for the answer to INIT, which the server gives first.
        let device = std::sync::Arc::new(device);
        let waiting = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let server = {
            let (device, waiting) = (device.clone(), waiting.clone());
            std::thread::spawn(move || serve(&device, &content, &waiting))
        };
        HangingOpenFuse {
            device,
            dir: dir.to_owned(),
            waiting,
            server: Some(server),
        }
    }

    /// The served program's path.
    pub fn exe(&self) -> PathBuf {
        self.dir.join("exe")
    }

    /// How many opens are waiting now.
    pub fn waiting_opens(&self) -> usize {
        self.waiting.lock().unwrap().len()
    }
}

impl Drop for HangingOpenFuse {
    fn drop(&mut self) {
        // Fail the opens left waiting, so nothing holds the mount, then unmount: the
        // connection ends and the server thread with it.
        for unique in self.waiting.lock().unwrap().drain(..) {
            reply(&self.device, unique, EIO, &[]);
        }
        let _ = Command::new("umount").arg("-l").arg(&self.dir).output();
        if let Some(server) = self.server.take() {
            let _ = server.join();
        }
    }
}
