//! Throwaway users and groups for tests, created with `useradd`/`groupadd` and removed on drop
//! (also when the test panics), and commands run as them with `setpriv`, so the daemon sees
//! their credentials from the kernel exactly as it would in production.

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

/// `useradd`/`groupadd` lock /etc/passwd; tests in one binary take turns.
static ACCOUNTS: Mutex<()> = Mutex::new(());

fn run_admin(program: &str, args: &[&str]) {
    let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
    // Another test binary may hold the lock files for a moment: retry a few times.
    for attempt in 0..40 {
        let out = Command::new(program).args(args).output().unwrap();
        if out.status.success() {
            return;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        if attempt == 39 || !(err.contains("lock") || err.contains("try again")) {
            panic!("{program} {args:?} failed: {err}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A group that exists until dropped.
#[derive(Debug)]
pub struct TestGroup {
    pub name: String,
    pub gid: u32,
}

impl TestGroup {
    pub fn create() -> TestGroup {
        let name = format!("wdg{}", crate::random_hex(4));
        run_admin("groupadd", &[&name]);
        let gid = warden_sys::users::group_by_name(&name).unwrap().unwrap();
        TestGroup { name, gid }
    }
}

impl Drop for TestGroup {
    fn drop(&mut self) {
        let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// A user (no home, no login shell, its own primary group) that exists until dropped.
#[derive(Debug)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

impl TestUser {
    /// A user whose supplementary groups in /etc/group are `groups`.
    pub fn create(groups: &[&TestGroup]) -> TestUser {
        let name = format!("wdt{}", crate::random_hex(4));
        let list: Vec<&str> = groups.iter().map(|g| g.name.as_str()).collect();
        let list = list.join(",");
        let mut args = vec![
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
        ];
        if !list.is_empty() {
            args.extend(["--groups", &list]);
        }
        args.push(&name);
        run_admin("useradd", &args);
        let (uid, gid) = warden_sys::users::user_by_name(&name).unwrap().unwrap();
        TestUser { name, uid, gid }
    }

    /// `program` run as this user with the groups /etc/group gives it (`--init-groups`).
    pub fn command(&self, program: &Path) -> Command {
        as_ids(self.uid, self.gid, Groups::Init, program)
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _turn = ACCOUNTS.lock().unwrap_or_else(|e| e.into_inner());
        let _ = Command::new("userdel").arg(&self.name).output();
        // --user-group made a group of the same name; userdel removes it unless shared.
        let _ = Command::new("groupdel").arg(&self.name).output();
    }
}

/// Which supplementary groups a process run with [`as_ids`] gets.
#[derive(Debug, Clone)]
pub enum Groups {
    /// What /etc/group says for the user (needs a passwd entry).
    Init,
    /// None at all.
    Clear,
    /// Exactly these, whatever /etc/group says.
    List(Vec<u32>),
}

/// `program` run under uid `uid` and gid `gid` (which need no passwd entry) via `setpriv`.
pub fn as_ids(uid: u32, gid: u32, groups: Groups, program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    match groups {
        Groups::Init => c.arg("--init-groups"),
        Groups::Clear => c.arg("--clear-groups"),
        Groups::List(g) => {
            let list: Vec<String> = g.iter().map(u32::to_string).collect();
            c.arg(format!("--groups={}", list.join(",")))
        }
    };
    c.arg("--").arg(program);
    c
}
