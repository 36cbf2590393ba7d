//! The varlink listener against the real daemon: a raw client speaking NUL-terminated JSON
//! (introspection, a call, unknown methods, malformed and oversized messages), a call refused to
//! a throwaway user by the same gate as on the warden socket, and the `varlink` Python package
//! (PyPI) introspecting and calling the socket.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::TestDaemon;
use serde_json::{Value, json};
use warden_testkit::users::TestUser;

/// A warden socket and a varlink socket, a small frame limit, and one quick action.
fn daemon() -> TestDaemon {
    daemon_with("")
}

/// [`daemon`] with `extra` appended, and an action only admins may run.
fn daemon_with(extra: &str) -> TestDaemon {
    TestDaemon::start(&format!(
        "[limits]\nmax_frame = 4096\n\
         [[listener]]\npath = \"{{dir}}/warden.sock\"\nmode = \"0666\"\n\
         [[listener]]\npath = \"{{dir}}/warden.varlink\"\nmode = \"0666\"\nprotocol = \"varlink\"\n\
         [[action]]\nname = \"say\"\nargv = [\"/bin/echo\", \"hello\", \"{{who}}\"]\n\
         tier = \"read_only\"\nmutating = false\ntimeout_s = 10\n\
         [action.params.who]\ntype = \"string\"\nmax_len = 16\n\
         [[action]]\nname = \"admin-only\"\nargv = [\"/bin/true\"]\n\
         tier = \"admin\"\nmutating = false\ntimeout_s = 10\n\
         [[action]]\nname = \"slow\"\nargv = [\"/bin/sh\", \"-c\", \"sleep 0.3; \
         echo 'progress 50 half' >&$WARDEN_STATUS_FD; sleep 0.6\"]\n\
         tier = \"read_only\"\nmutating = false\ntimeout_s = 10\n{extra}"
    ))
}

fn varlink_path(d: &TestDaemon) -> PathBuf {
    d.dir.path().join("warden.varlink")
}

/// A raw varlink client: one message out, one reply in.
struct Raw(UnixStream);

impl Raw {
    fn connect(path: &Path) -> Raw {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Raw(s)
    }

    fn send(&mut self, bytes: &[u8]) {
        self.0.write_all(bytes).unwrap();
    }

    fn call(&mut self, msg: Value) -> Value {
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(0);
        self.send(&bytes);
        self.reply().unwrap()
    }

    /// The next reply, or `None` once the daemon closed the connection.
    fn reply(&mut self) -> Option<Value> {
        let mut out = Vec::new();
        let mut byte = [0u8; 1];
        loop {
            match self.0.read(&mut byte) {
                Ok(0) | Err(_) => return None,
                Ok(_) if byte[0] == 0 => return Some(serde_json::from_slice(&out).unwrap()),
                Ok(_) => out.push(byte[0]),
            }
        }
    }
}

/// Pins: GetInfo names the io.warden interface, and GetInterfaceDescription returns its IDL
/// with the methods and the stable error kinds.
#[test]
fn introspection_describes_io_warden() {
    let d = daemon();
    let mut c = Raw::connect(&varlink_path(&d));
    let info = c.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(info["parameters"]["product"], "wardend", "{info}");
    assert_eq!(
        info["parameters"]["interfaces"],
        json!(["org.varlink.service", "io.warden"])
    );
    let desc = c.call(
        json!({"method": "org.varlink.service.GetInterfaceDescription",
        "parameters": {"interface": "io.warden"}}),
    );
    let text = desc["parameters"]["description"].as_str().unwrap();
    assert!(text.contains("interface io.warden"), "{text}");
    for needle in [
        "method Status()",
        "method StartJob(",
        "error Forbidden",
        "error RateLimited",
    ] {
        assert!(text.contains(needle), "{needle} missing from:\n{text}");
    }
    let missing = c.call(
        json!({"method": "org.varlink.service.GetInterfaceDescription",
        "parameters": {"interface": "com.example.nope"}}),
    );
    assert_eq!(missing["error"], "org.varlink.service.InterfaceNotFound");
}

/// Pins: calls go through the daemon's request path (root is admin here) and a job started over
/// varlink runs, is waited for, streamed with `more`, and has its logs.
#[test]
fn status_whoami_and_a_job_over_varlink() {
    let d = daemon();
    let mut c = Raw::connect(&varlink_path(&d));
    let status = c.call(json!({"method": "io.warden.Status"}));
    assert!(status["parameters"]["status"].is_object(), "{status}");
    let me = c.call(json!({"method": "io.warden.Whoami"}));
    assert_eq!(me["parameters"]["whoami"]["peer"]["uid"], 0, "{me}");
    assert_eq!(me["parameters"]["whoami"]["tier"], "admin", "{me}");
    let actions = c.call(json!({"method": "io.warden.ListActions"}));
    let names: Vec<&str> = actions["parameters"]["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    assert_eq!(names, ["admin-only", "say", "slow"], "{actions}");
    let started = c.call(json!({"method": "io.warden.StartJob",
        "parameters": {"action": "say", "params": {"who": "varlink"}}}));
    let id = started["parameters"]["job"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned();
    let done = c.call(json!({"method": "io.warden.WaitJob", "parameters": {"job_id": id}}));
    assert_eq!(done["parameters"]["job"]["state"], "succeeded", "{done}");
    let logs = c.call(json!({"method": "io.warden.JobLogs", "parameters": {"job_id": id}}));
    assert_eq!(logs["parameters"]["data"], "hello varlink\n", "{logs}");
    // `more` on a finished job: the final record, without `continues`.
    let watched = c.call(json!({"method": "io.warden.WatchJob", "more": true,
        "parameters": {"job_id": id}}));
    assert_eq!(
        watched["parameters"]["job"]["state"], "succeeded",
        "{watched}"
    );
    assert!(
        watched.get("continues").is_none_or(|v| v == false),
        "{watched}"
    );
    // oneway: no reply at all; the next call's reply is the next thing read.
    c.send(b"{\"method\":\"io.warden.Status\",\"oneway\":true}\0");
    let after = c.call(json!({"method": "org.varlink.service.GetInfo"}));
    assert_eq!(after["parameters"]["product"], "wardend", "{after}");
}

/// Starts the `slow` action over varlink; its job id.
fn start_slow(c: &mut Raw) -> String {
    let started = c.call(json!({"method": "io.warden.StartJob",
        "parameters": {"action": "slow", "params": {}}}));
    started["parameters"]["job"]["job_id"]
        .as_str()
        .unwrap_or_else(|| panic!("{started}"))
        .to_owned()
}

/// Pins: `more: true` on WatchJob streams the job's updates as replies with `continues: true`,
/// then the final record without it.
#[test]
fn watch_job_with_more_streams_progress() {
    let d = daemon();
    let mut c = Raw::connect(&varlink_path(&d));
    let id = start_slow(&mut c);
    let mut r = c.call(json!({"method": "io.warden.WatchJob", "more": true,
        "parameters": {"job_id": id}}));
    let mut updates = Vec::new();
    while r["continues"] == true {
        updates.push(r["parameters"]["job"]["progress"].clone());
        r = c.reply().unwrap();
    }
    assert_eq!(r["parameters"]["job"]["state"], "succeeded", "{r}");
    assert!(
        updates.contains(&json!(50)),
        "no progress 50 among {updates:?}"
    );
}

/// Pins: calls the varlink layer answers itself (introspection, unknown methods) still take
/// request tokens: past the burst they are refused io.warden.RateLimited with a retry hint.
#[test]
fn introspection_counts_against_the_rate_limit() {
    let d = TestDaemon::start(
        "[limits]\nrequests_per_second = 0.01\nburst = 3\n\
         [[listener]]\npath = \"{dir}/warden.sock\"\nmode = \"0666\"\n\
         [[listener]]\npath = \"{dir}/warden.varlink\"\nmode = \"0666\"\nprotocol = \"varlink\"\n",
    );
    let mut c = Raw::connect(&varlink_path(&d));
    // The implicit hello took the first token.
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(c.call(json!({"method": "org.varlink.service.GetInfo"})));
    }
    assert_eq!(
        answers[0]["parameters"]["product"], "wardend",
        "{answers:?}"
    );
    let last = &answers[3];
    assert_eq!(last["error"], "io.warden.RateLimited", "{answers:?}");
    assert!(
        last["parameters"]["retry_after_ms"].as_u64().unwrap() > 0,
        "{last}"
    );
}

/// Pins: replies come in the order of the calls, even when an earlier call waits for a job and
/// a later one could be answered at once.
#[test]
fn pipelined_calls_are_answered_in_order() {
    let d = daemon();
    let mut c = Raw::connect(&varlink_path(&d));
    let id = start_slow(&mut c);
    let mut both = json!({"method": "io.warden.WaitJob", "parameters": {"job_id": id}})
        .to_string()
        .into_bytes();
    both.push(0);
    both.extend_from_slice(b"{\"method\":\"io.warden.Whoami\"}\0");
    c.send(&both);
    let first = c.reply().unwrap();
    assert_eq!(first["parameters"]["job"]["state"], "succeeded", "{first}");
    let second = c.reply().unwrap();
    assert_eq!(second["parameters"]["whoami"]["tier"], "admin", "{second}");
}

/// Pins: unknown methods and bad parameters get the standard varlink errors and the connection
/// stays usable; a message that is not JSON is answered and the connection closed.
#[test]
fn unknown_methods_and_malformed_messages_are_refused() {
    let d = daemon();
    let mut c = Raw::connect(&varlink_path(&d));
    let r = c.call(json!({"method": "io.warden.Reboot"}));
    assert_eq!(r["error"], "org.varlink.service.MethodNotFound", "{r}");
    assert_eq!(r["parameters"]["method"], "io.warden.Reboot");
    let r = c.call(json!({"method": "io.warden.GetJob", "parameters": {"bogus": 1}}));
    assert_eq!(r["error"], "io.warden.BadRequest", "{r}");
    assert!(r["parameters"]["correlation_id"].is_string(), "{r}");
    let r = c.call(json!({"method": "io.warden.Status"}));
    assert!(r["parameters"]["status"].is_object(), "still usable: {r}");
    c.send(b"this is not json\0");
    let r = c.reply().unwrap();
    assert_eq!(r["error"], "org.varlink.service.InvalidParameter", "{r}");
    assert!(
        c.reply().is_none(),
        "the connection is closed after garbage"
    );
}

/// Pins: bytes without a NUL past max_frame are refused with one error and the connection closed,
/// as an oversized frame is on the warden socket.
#[test]
fn a_message_without_nul_within_max_frame_is_refused() {
    let d = daemon();
    let mut c = Raw::connect(&varlink_path(&d));
    c.send(&vec![b' '; 5000]);
    let r = c.reply().unwrap();
    assert_eq!(r["error"], "io.warden.BadRequest", "{r}");
    assert!(
        r["parameters"]["message"]
            .as_str()
            .unwrap()
            .contains("max_frame"),
        "{r}"
    );
    assert!(c.reply().is_none(), "closed after the oversized message");
}

/// A Python snippet run as `user` that sends one varlink message and prints the reply.
const PY_CALL: &str = "import socket,sys\n\
s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n\
s.sendall(sys.argv[2].encode()+b'\\0'); b=b''\n\
while not b.endswith(b'\\0'):\n    c=s.recv(4096)\n    if not c: break\n    b+=c\n\
print(b.rstrip(b'\\0').decode())\n";

/// Pins: identity comes from the kernel and the same gate judges: a throwaway read_only user is
/// told it is itself, may ask Status, neither sees nor starts an admin action (NotFound, as on
/// the warden socket) while root on the same socket starts it; a user with no tier is refused
/// Status with io.warden.Forbidden.
#[test]
fn a_user_with_a_lower_tier_is_refused_by_the_same_gate() {
    if !warden_testkit::root_or_skip("a_user_with_a_lower_tier_is_refused_by_the_same_gate") {
        return;
    }
    let user = TestUser::create(&[]);
    let stranger = TestUser::create(&[]);
    let d = daemon_with(&format!("[tiers.users]\n{} = \"read_only\"\n", user.name));
    let path = varlink_path(&d);
    let call = |who: &TestUser, msg: Value| -> Value {
        let out = who
            .command(Path::new("/usr/bin/python3"))
            .args(["-c", PY_CALL])
            .arg(&path)
            .arg(msg.to_string())
            .stdin(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let me = call(
        &user,
        json!({"method": "io.warden.Whoami", "parameters": {}}),
    );
    assert_eq!(me["parameters"]["whoami"]["peer"]["uid"], user.uid, "{me}");
    assert_eq!(me["parameters"]["whoami"]["tier"], "read_only", "{me}");
    let r = call(&user, json!({"method": "io.warden.Status"}));
    assert!(r["parameters"]["status"].is_object(), "{r}");
    let r = call(
        &user,
        json!({"method": "io.warden.StartJob",
        "parameters": {"action": "admin-only", "params": {}}}),
    );
    // The gate hides actions above the caller's tier, exactly as on the warden socket.
    assert_eq!(r["error"], "io.warden.NotFound", "{r}");
    assert!(r["parameters"]["correlation_id"].is_string(), "{r}");
    let listed = call(&user, json!({"method": "io.warden.ListActions"}));
    let listed = listed["parameters"]["actions"].as_array().unwrap();
    assert!(!listed.is_empty());
    assert!(
        listed.iter().all(|a| a["name"] != "admin-only"),
        "{listed:?}"
    );
    let r = call(&stranger, json!({"method": "io.warden.Status"}));
    assert_eq!(r["error"], "io.warden.Forbidden", "{r}");
    let mut root = Raw::connect(&path);
    let ok = root.call(json!({"method": "io.warden.StartJob",
        "parameters": {"action": "admin-only", "params": {}}}));
    assert!(ok["parameters"]["job"]["job_id"].is_string(), "{ok}");
}

/// The Python script driven by the PyPI `varlink` package.
const PY_VARLINK: &str = r#"
import json, sys, varlink
addr = "unix:" + sys.argv[1]
with varlink.Client(address=addr) as client:
    info = client.get_interfaces()
    assert "io.warden" in info, info
    iface = client.get_interface("io.warden")
    assert "Status" in iface.members and "Forbidden" in iface.members, list(iface.members)
    with client.open("io.warden", namespaced=True) as w:
        st = w.Status()
        assert st.status is not None
        job = w.StartJob("say", {"who": "py"}, None).job
        done = w.WaitJob(job["job_id"], None).job
        assert done["state"] == "succeeded", done
        try:
            w.GetJob("job_nope")
            raise SystemExit("GetJob of a missing job did not fail")
        except varlink.VarlinkError as e:
            assert e.error().startswith("io.warden."), e.error()
print("ok")
"#;

fn venv_python() -> Result<PathBuf, String> {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target"));
    let venv = target.join("varlink-venv");
    let python = venv.join("bin/python3");
    let has = |p: &Path| {
        Command::new(p)
            .args(["-c", "import varlink"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && has(&python) {
        return Ok(python);
    }
    let out = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .output()
        .map_err(|e| format!("python3: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "python3 -m venv failed (python3-venv missing?): {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let out = Command::new(venv.join("bin/pip"))
        .args([
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "varlink==31.0.0",
        ])
        .output()
        .map_err(|e| format!("pip: {e}"))?;
    if !out.status.success() || !has(&python) {
        return Err(format!(
            "pip install varlink==31.0.0 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(python)
}

/// Pins: the `varlink` Python package (PyPI) introspects the socket, parses our IDL, calls
/// Status, runs a job to its end, and sees a daemon error as an io.warden error.
#[test]
fn the_python_varlink_package_introspects_and_calls() {
    let python = match venv_python() {
        Ok(p) => p,
        Err(why) => {
            if std::env::var("WARDEN_REQUIRE_ROOT_TESTS").as_deref() == Ok("1") {
                panic!("cannot make the varlink venv and WARDEN_REQUIRE_ROOT_TESTS=1: {why}");
            }
            eprintln!("skipping the varlink Python test: {why}");
            return;
        }
    };
    let d = daemon();
    let out = Command::new(&python)
        .args(["-c", PY_VARLINK])
        .arg(varlink_path(&d))
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "ok",
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
