//! Test support shared by warden's test suites: temporary directories the daemon accepts,
//! root-only test gating, throwaway users and groups that are always removed, commands run as
//! another user through the real kernel credentials, a blocking raw-frame client, and a file
//! system that never answers.

#![allow(clippy::unwrap_used)]

pub mod deps;
pub mod fuse;
pub mod raw;
pub mod users;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Whether this process runs as root.
pub fn is_root() -> bool {
    warden_sys::users::effective_uid() == 0
}

/// For tests that need root: `true` when root. Otherwise prints why the test is skipped and
/// returns `false`, unless `WARDEN_REQUIRE_ROOT_TESTS=1`, in which case the test fails.
pub fn root_or_skip(test: &str) -> bool {
    if is_root() {
        return true;
    }
    if std::env::var("WARDEN_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
        panic!("{test} needs root and WARDEN_REQUIRE_ROOT_TESTS=1 forbids skipping it");
    }
    eprintln!("skipping {test}: it creates users and groups and needs root");
    false
}

/// Whether every directory from `dir` up to `/` is owned by root or this user and writable by
/// no one else: the daemon's own rule for socket directories.
fn chain_is_safe(dir: &Path) -> bool {
    let me = warden_sys::users::effective_uid();
    let Ok(canonical) = std::fs::canonicalize(dir) else {
        return false;
    };
    canonical.ancestors().all(|a| {
        warden_sys::fs::owner_of(a)
            .is_ok_and(|o| o.is_dir && (o.uid == 0 || o.uid == me) && o.mode & 0o022 == 0)
    })
}

/// The directory temporary test directories go in: `$WARDEN_TEST_DIR`, else `/run/warden-tests`
/// as root, else `$XDG_RUNTIME_DIR`, else `target/tmp`; the first whose ancestors are safe.
fn test_base() -> PathBuf {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("WARDEN_TEST_DIR") {
        candidates.push(d.into());
    }
    if is_root() {
        let run = PathBuf::from("/run/warden-tests");
        let _ = std::fs::create_dir(&run);
        let _ = std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755));
        candidates.push(run);
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR") {
        candidates.push(d.into());
    }
    // target/<profile>/deps/<test binary> → target/tmp
    if let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|e| e.ancestors().nth(3).map(Path::to_path_buf))
    {
        let tmp = target.join("tmp");
        let _ = std::fs::create_dir_all(&tmp);
        candidates.push(tmp);
    }
    candidates
        .into_iter()
        .find(|c| chain_is_safe(c))
        .expect("no directory for test sockets is safe from other users; set WARDEN_TEST_DIR")
}

/// A temporary directory (mode 0755, so throwaway users can reach sockets in it) whose every
/// ancestor is safe from other users, as the daemon requires of socket directories. Removed
/// when dropped.
pub fn safe_tempdir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("wdt-")
        .tempdir_in(test_base())
        .unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Replaces every `{dir}` in `template` with `dir`: configuration text for a test.
pub fn config(template: &str, dir: &Path) -> String {
    template.replace("{dir}", &dir.display().to_string())
}

/// Copies `bin` into `dir` (mode 0755) so another user can run it even when the build tree sits
/// under a directory only root can enter.
pub fn runnable_copy(bin: &Path, dir: &Path) -> PathBuf {
    // The copy is written by a separate `install` process, never through a descriptor of
    // this one: a test thread that forks while this process holds the copy open for writing
    // hands that descriptor to its child until the child execs, and an exec of the copy in
    // that window fails with ETXTBSY ("Text file busy").
    let dest = dir.join(bin.file_name().unwrap());
    let status = std::process::Command::new("install")
        .args(["-m", "0755"])
        .arg(bin)
        .arg(&dest)
        .status()
        .unwrap();
    assert!(status.success(), "install {} failed", dest.display());
    dest
}

/// A random lowercase hex string of `n` bytes.
pub fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A binary of another workspace package, built beside the running test binary
/// (`target/<profile>/<name>`). `cargo test --workspace` builds every binary before it runs
/// any test.
pub fn sibling_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe.ancestors().nth(2).unwrap().join(name);
    assert!(
        bin.exists(),
        "{} is not built; run the tests with `cargo test --workspace`",
        bin.display()
    );
    bin
}

/// This process's resident memory, in KiB (`VmRSS`), for tests that bound memory growth.
pub fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}
