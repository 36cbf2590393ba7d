//! Listening sockets and the daemon's files: modes and groups as configured, directories safe
//! from other users, stale sockets replaced but live ones kept, read-only listeners, and a
//! shutdown that answers what was already received.

#![allow(clippy::unwrap_used)]

mod common;

use std::os::unix::fs::PermissionsExt;

use common::TestDaemon;
use serde_json::json;
use warden_proto::messages::DaemonMode;
use warden_testkit::raw::{RawClient, error_kind};
use wardend::{Daemon, Settings, StartError, listener::ListenError};

fn settings(template: &str, dir: &std::path::Path) -> Settings {
    Settings::from_toml(
        &warden_testkit::config(template, dir),
        "test",
        DaemonMode::System,
    )
    .unwrap()
}

const TWO_LISTENERS: &str = r#"
[daemon]
runtime_dir = "{dir}/run"
state_dir = "{dir}/state"
[[listener]]
path = "{dir}/run/warden.sock"
mode = "0660"
[[listener]]
path = "{dir}/run/ro.sock"
mode = "0666"
max_tier = "read_only"
"#;

#[test]
fn sockets_and_directories_get_exactly_the_configured_owner_and_mode() {
    let d = TestDaemon::start(TWO_LISTENERS);
    let me = warden_sys::users::effective_uid();
    let check = |rel: &str, mode: u32, is_socket: bool| {
        let o = warden_sys::fs::owner_of(&d.dir.path().join(rel)).unwrap();
        assert_eq!((o.uid, o.mode, o.is_socket), (me, mode, is_socket), "{rel}");
    };
    check("run", 0o755, false);
    check("state", 0o700, false);
    check("run/warden.sock", 0o660, true);
    check("run/ro.sock", 0o666, true);
}

#[test]
fn the_listener_group_is_set_on_the_socket() {
    if !warden_testkit::root_or_skip("the_listener_group_is_set_on_the_socket") {
        return;
    }
    let g = warden_testkit::users::TestGroup::create();
    let d = TestDaemon::start(&format!(
        "[[listener]]\npath = \"{{dir}}/g.sock\"\nmode = \"0660\"\ngroup = \"{}\"\n",
        g.name
    ));
    let o = warden_sys::fs::owner_of(d.socket()).unwrap();
    assert_eq!((o.uid, o.gid, o.mode), (0, g.gid, 0o660));
}

#[test]
fn a_read_only_listener_caps_even_root_at_read_only() {
    let d = TestDaemon::start(TWO_LISTENERS);
    let mut c = RawClient::connect(&d.sockets()[1]);
    let hello = c.call(1, "hello", json!({"protocol": 1, "client": "t"}));
    assert_eq!(hello["result"]["tier"], "read_only");
    let who = c.call(2, "whoami", json!({}));
    assert_eq!(who["result"]["granted"]["by"], "root");
    assert_eq!(who["result"]["capped"], true);
    assert!(
        who["result"]["reason"]
            .as_str()
            .unwrap()
            .contains("capped at read_only by listener")
    );
    let mut main = RawClient::hello(&d.sockets()[0]);
    assert_eq!(main.call(3, "whoami", json!({}))["result"]["tier"], "admin");
}

#[test]
fn a_socket_directory_writable_by_others_stops_the_daemon_from_starting() {
    let dir = warden_testkit::safe_tempdir();
    let open = dir.path().join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o1777)).unwrap();
    let s = settings(
        "[daemon]\nruntime_dir = \"{dir}/run\"\nstate_dir = \"{dir}/state\"\n[[listener]]\npath = \"{dir}/open/w.sock\"\n",
        dir.path(),
    );
    let err = Daemon::spawn_thread(s).unwrap_err();
    assert!(
        matches!(&err, StartError::Listen(ListenError::UnsafeDirectory { path, .. }) if path.ends_with("open")),
        "{err}"
    );
    assert!(!open.join("w.sock").exists());
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_daemon_is_not_displaced() {
    let dir = warden_testkit::safe_tempdir();
    let template = "[daemon]\nruntime_dir = \"{dir}\"\nstate_dir = \"{dir}/state\"\n[[listener]]\npath = \"{dir}/w.sock\"\n";
    // A socket file left behind by a process that is gone.
    drop(std::os::unix::net::UnixListener::bind(dir.path().join("w.sock")).unwrap());
    let first = Daemon::spawn_thread(settings(template, dir.path())).unwrap();
    RawClient::hello(first.socket());

    let err = Daemon::spawn_thread(settings(template, dir.path())).unwrap_err();
    assert!(
        matches!(err, StartError::Listen(ListenError::SocketInUse { .. })),
        "{err}"
    );
    // The first daemon still serves.
    RawClient::hello(first.socket());
}

#[test]
fn a_plain_file_at_the_socket_path_is_never_deleted() {
    let dir = warden_testkit::safe_tempdir();
    std::fs::write(dir.path().join("w.sock"), b"keep me").unwrap();
    let s = settings(
        "[daemon]\nruntime_dir = \"{dir}\"\nstate_dir = \"{dir}/state\"\n[[listener]]\npath = \"{dir}/w.sock\"\n",
        dir.path(),
    );
    let err = Daemon::spawn_thread(s).unwrap_err();
    assert!(
        matches!(err, StartError::Listen(ListenError::NotASocket { .. })),
        "{err}"
    );
    assert_eq!(
        std::fs::read(dir.path().join("w.sock")).unwrap(),
        b"keep me"
    );
}

#[test]
fn shutdown_answers_requests_already_sent_then_closes_and_removes_the_socket() {
    let mut d = TestDaemon::start("");
    let path = d.socket().to_path_buf();
    let mut c = RawClient::hello(&path);
    let mut idle = RawClient::hello(&path);
    for i in 0..5 {
        c.send(10 + i, "health", json!({}));
    }
    d.stop();
    for i in 0..5 {
        assert_eq!(c.recv()["id"], 10 + i);
    }
    assert!(c.is_closed());
    assert!(idle.is_closed());
    assert!(!path.exists(), "the socket file is removed");
    assert!(std::os::unix::net::UnixStream::connect(&path).is_err());
}

#[test]
fn the_pidfd_open_fallback_identifies_callers_like_so_peerpidfd() {
    let d = TestDaemon::start_with("", Settings::force_pidfd_open_fallback);
    let mut c = RawClient::connect(d.socket());
    let hello = c.call(1, "hello", json!({"protocol": 1, "client": "t"}));
    assert_eq!(hello["result"]["peer"]["pid"], std::process::id());
    let exe = std::env::current_exe().unwrap();
    assert_eq!(hello["result"]["peer"]["exe"], exe.to_str().unwrap());
}

#[test]
fn identity_comes_from_the_kernel_not_from_hello() {
    let d = TestDaemon::start("");
    let mut c = RawClient::connect(d.socket());
    // Fields a client might try to claim are not part of hello at all.
    let r = c.call(1, "hello", json!({"protocol": 1, "client": "t", "uid": 0}));
    assert_eq!(error_kind(&r), Some("bad_request"));
    assert!(
        r["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown field `uid`")
    );
    let mut c = RawClient::hello(d.socket());
    let r = c.call(2, "whoami", json!({}));
    assert_eq!(
        r["result"]["peer"]["uid"],
        warden_sys::users::effective_uid()
    );
    assert_eq!(r["result"]["peer"]["pid"], std::process::id());
}
