//! The shipped example configuration, example actions and systemd units stay true: the example
//! loads, with the example actions pasted in too; their helpers are shipped and parse; the socket
//! units open exactly the example's listeners with the same modes; and the service unit is valid
//! and gives jobs what they need, and no more.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use warden_policy::{ActionSpec, Directory, Loaded, Policy};
use warden_proto::{ActionName, Gid, Uid};

/// Resolves every name to an id of its own, as on a host where the example's groups exist.
struct EveryName;

fn id_of(name: &str) -> u32 {
    name.bytes()
        .fold(1000u32, |h, b| h.wrapping_mul(31).wrapping_add(b.into()))
}

impl Directory for EveryName {
    fn group_gid(&self, name: &str) -> io::Result<Option<Gid>> {
        Ok(Some(Gid(id_of(name))))
    }
    fn user(&self, name: &str) -> io::Result<Option<(Uid, Gid)>> {
        Ok(Some((Uid(id_of(name)), Gid(id_of(name)))))
    }
}

fn dist_path(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../dist")
        .join(name)
}

fn dist(name: &str) -> String {
    std::fs::read_to_string(dist_path(name)).unwrap()
}

#[test]
fn the_example_configuration_loads_without_problems() {
    let loaded = Policy::load(&dist("warden.toml"), "dist/warden.toml", &EveryName).unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    assert_eq!(
        loaded.policy.limits,
        warden_proto::Limits::default(),
        "the example shows the defaults"
    );
    // Its [jobs] table shows the defaults too: without it, the same settings.
    let text = dist("warden.toml");
    let start = text.find("[jobs]\n").unwrap();
    let end = start + text[start..].find("\n\n").unwrap();
    let without = format!("{}{}", &text[..start], &text[end..]);
    let defaults = Policy::load(&without, "dist/warden.toml", &EveryName).unwrap();
    assert_eq!(loaded.policy.jobs, defaults.policy.jobs);
    // Its [fleet] tables show the defaults, the real identity locations included.
    assert_eq!(loaded.policy.fleet, warden_policy::FleetPolicy::default());
}

/// `(ListenStream, SocketMode, SocketGroup)` of a socket unit, which must have one socket.
fn socket_unit(name: &str) -> (String, u32, Option<String>) {
    let unit = dist(name);
    let value = |key: &str| -> Vec<String> {
        unit.lines()
            .filter_map(|l| l.strip_prefix(key))
            .map(str::to_owned)
            .collect()
    };
    let streams = value("ListenStream=");
    let modes = value("SocketMode=");
    assert_eq!(
        (streams.len(), modes.len()),
        (1, 1),
        "{name}: SocketMode= applies to the whole unit"
    );
    assert_eq!(value("Service="), ["wardend.service"], "{name}");
    let mode = u32::from_str_radix(&modes[0], 8).unwrap();
    (streams[0].clone(), mode, value("SocketGroup=").pop())
}

#[test]
fn each_socket_unit_opens_one_example_listener_with_its_mode_and_group() {
    let policy = Policy::load(&dist("warden.toml"), "dist/warden.toml", &EveryName)
        .unwrap()
        .policy;
    let units = [
        socket_unit("wardend.socket"),
        socket_unit("wardend-ro.socket"),
    ];
    let want: Vec<(String, u32, Option<String>)> = policy
        .listeners
        .iter()
        .map(|l| {
            (
                l.path.display().to_string(),
                l.mode,
                l.group.as_ref().map(|g| g.0.clone()),
            )
        })
        .collect();
    assert_eq!(units.to_vec(), want);
    let service = dist("wardend.service");
    assert!(service.contains("Sockets=wardend.socket wardend-ro.socket"));
}

/// Where the example actions' helpers are installed (dist/examples/bin goes there).
const HELPERS: &str = "/usr/libexec/warden/";

/// The example configuration with the example actions pasted at its end, as an admin would.
fn with_examples() -> Loaded {
    let text = format!("{}\n{}", dist("warden.toml"), dist("examples/actions.toml"));
    Policy::load(&text, "warden.toml + examples/actions.toml", &EveryName).unwrap()
}

fn action<'a>(loaded: &'a Loaded, name: &str) -> &'a ActionSpec {
    &loaded.policy.actions[&ActionName::try_from(name.to_owned()).unwrap()]
}

/// Pins: the example actions, pasted into the example configuration, load with no warning.
#[test]
fn the_example_actions_load_in_the_example_configuration() {
    let loaded = with_examples();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let names: Vec<&str> = loaded.policy.actions.keys().map(|a| a.as_str()).collect();
    assert_eq!(
        names,
        [
            "disk-usage",
            "mount-image",
            "restart-unit",
            "set-web-password",
            "unmount-image"
        ]
    );
}

/// Pins: each example action has the tier, ops, mutating flag, undo and identity its comments
/// promise: only disk-usage is for viewers, and it runs unprivileged.
#[test]
fn the_example_actions_have_their_intended_authority() {
    let loaded = with_examples();
    let got: Vec<String> = loaded
        .policy
        .actions
        .values()
        .map(|a| {
            assert!(!a.description.is_empty(), "{} has no description", a.name);
            format!(
                "{} tier={} ops={:?} mutating={} rollback={} reconcile={} run_as={}",
                a.name,
                a.tier,
                a.ops,
                a.mutating,
                a.rollback.is_some(),
                a.reconcile.is_some(),
                a.run_as.as_ref().map_or("-", |r| r.user.as_str()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            "disk-usage tier=read_only ops=[] mutating=false rollback=false reconcile=false run_as=nobody",
            "mount-image tier=operator ops=[\"storage\"] mutating=true rollback=true reconcile=true run_as=-",
            "restart-unit tier=operator ops=[\"system\"] mutating=true rollback=false reconcile=false run_as=-",
            "set-web-password tier=admin ops=[\"system\"] mutating=true rollback=false reconcile=false run_as=-",
            "unmount-image tier=operator ops=[\"storage\"] mutating=true rollback=false reconcile=false run_as=-",
        ]
    );
    // Jobs that change the host queue behind each other; the two image actions share a group.
    let groups: Vec<Option<&str>> = ["restart-unit", "mount-image", "unmount-image"]
        .iter()
        .map(|n| action(&loaded, n).concurrency_group.as_deref())
        .collect();
    assert_eq!(groups, [Some("units"), Some("images"), Some("images")]);
    assert!(!action(&loaded, "restart-unit").remote && action(&loaded, "disk-usage").remote);
}

/// Pins: the example that takes a secret passes it on stdin, never in argv.
#[test]
fn the_example_secret_goes_on_stdin() {
    let loaded = with_examples();
    let a = action(&loaded, "set-web-password");
    assert!(a.params["password"].secret);
    assert!(
        a.argv
            .iter()
            .all(|t| t.params().all(|p| !a.params[p].secret))
    );
    let stdin = a.stdin.as_ref().unwrap();
    assert_eq!(stdin.params().collect::<Vec<_>>(), ["password"]);
}

/// Pins: every helper an example action runs is shipped in dist/examples/bin, executable, and
/// passes `sh -n`; and every shipped helper is used.
#[test]
fn the_example_helpers_are_shipped_executable_and_parse() {
    let loaded = with_examples();
    let mut used = BTreeSet::new();
    for a in loaded.policy.actions.values() {
        let programs = [Some(&a.argv), a.rollback.as_ref(), a.reconcile.as_ref()];
        for argv in programs.into_iter().flatten() {
            let program = argv[0].literal().unwrap();
            if let Some(helper) = program.strip_prefix(HELPERS) {
                used.insert(helper.to_owned());
            }
        }
    }
    let shipped: BTreeSet<String> = std::fs::read_dir(dist_path("examples/bin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(used, shipped);
    for helper in &shipped {
        let path = dist_path("examples/bin").join(helper);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o111, 0o111, "{helper} is not executable");
        let out = Command::new("sh").arg("-n").arg(&path).output().unwrap();
        assert!(
            out.status.success(),
            "{helper}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// `KEY=value` assignments of a unit file, in order (comments skipped).
fn assignments(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

/// The value a unit's last assignment of `key` gives it (a later line overrides an earlier).
fn last_value<'a>(unit: &'a [(String, String)], key: &str) -> Option<&'a str> {
    unit.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Pins: the service unit delegates a writable cgroup subtree to wardend (per-job cgroups),
/// keeps the whole job tree in its kill scope, and bounds capabilities to exactly what wardend
/// and the example actions need (no CAP_SYS_ADMIN: systemd mounts for mount-image).
#[test]
fn the_service_unit_gives_jobs_what_they_need_and_no_more() {
    let unit = assignments(&dist("wardend.service"));
    let last = |key: &str| last_value(&unit, key);
    assert_eq!(last("Delegate"), Some("yes"));
    assert_eq!(
        last("ProtectControlGroups"),
        Some("no"),
        "a read-only /sys/fs/cgroup defeats Delegate="
    );
    assert_eq!(last("KillMode"), Some("control-group"));
    let caps: BTreeSet<&str> = unit
        .iter()
        .filter(|(k, _)| k == "CapabilityBoundingSet")
        .flat_map(|(_, v)| v.split_whitespace())
        .collect();
    let want = BTreeSet::from([
        "CAP_CHOWN",
        "CAP_SYS_PTRACE",
        "CAP_DAC_READ_SEARCH",
        "CAP_SETUID",
        "CAP_SETGID",
        "CAP_KILL",
    ]);
    assert_eq!(caps, want);
    for hardening in [
        "NoNewPrivileges",
        "PrivateTmp",
        "PrivateDevices",
        "ProtectKernelTunables",
        "RestrictNamespaces",
    ] {
        assert_eq!(last(hardening), Some("yes"), "{hardening}");
    }
    assert_eq!(last("ProtectSystem"), Some("strict"));
    assert_eq!(last("RestrictAddressFamilies"), Some("AF_UNIX"));
    // The tighter sandbox: system calls of a system service (set*id for run_as among them,
    // mount and the like not), no network namespace to reach anything but Unix sockets, and a
    // refused call fails the call instead of killing the job.
    assert_eq!(last("SystemCallFilter"), Some("@system-service"));
    assert_eq!(last("SystemCallErrorNumber"), Some("EPERM"));
    for hardening in ["PrivateMounts", "PrivateNetwork", "LockPersonality"] {
        assert_eq!(last(hardening), Some("yes"), "{hardening}");
    }
    assert_eq!(last("ProtectProc"), Some("invisible"));
}

/// Pins: `systemctl reload wardend` sends SIGHUP to the main process of a Type=notify service
/// (wardend answers with RELOADING=1 and READY=1), and the watchdog is on.
#[test]
fn the_service_unit_reloads_with_sighup_and_keeps_a_watchdog() {
    let unit = assignments(&dist("wardend.service"));
    let last = |key: &str| last_value(&unit, key);
    assert_eq!(last("Type"), Some("notify"));
    assert_eq!(last("NotifyAccess"), Some("main"));
    assert_eq!(last("ExecReload"), Some("/bin/kill -HUP $MAINPID"));
    assert_eq!(last("WatchdogSec"), Some("30s"));
}

/// Pins: the example actions load as a drop-in (warden.d/examples.toml) beside the example
/// configuration, exactly as when pasted into it.
#[test]
fn the_example_actions_load_as_a_drop_in() {
    let main = dist("warden.toml");
    let examples = dist("examples/actions.toml");
    let loaded = Policy::load_with_dropins(
        warden_policy::Source {
            origin: "warden.toml",
            text: &main,
        },
        &[warden_policy::Source {
            origin: "warden.d/examples.toml",
            text: &examples,
        }],
        &EveryName,
    )
    .unwrap();
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let pasted: Vec<_> = with_examples().policy.actions.keys().cloned().collect();
    let dropped: Vec<_> = loaded.policy.actions.keys().cloned().collect();
    assert_eq!(dropped, pasted);
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Pins: the fleet server's unit runs it as its own unprivileged user with no capability at all,
/// its data private.
#[test]
fn the_server_unit_runs_without_privilege() {
    let unit = assignments(&dist("warden-server.service"));
    let last = |key: &str| last_value(&unit, key);
    assert_eq!(last("User"), Some("warden-server"));
    assert_eq!(last("CapabilityBoundingSet"), Some(""));
    assert_eq!(last("StateDirectoryMode"), Some("0700"));
    assert_eq!(last("NoNewPrivileges"), Some("yes"));
    assert_eq!(last("ProtectSystem"), Some("strict"));
    assert!(
        last("ExecStart")
            .unwrap()
            .contains("--data-dir /var/lib/warden-server")
    );
}

/// Pins: `systemd-analyze verify` accepts the five units without a complaint (unknown keys and
/// bad values included), where systemd-analyze is installed.
#[test]
fn the_units_pass_systemd_analyze_verify() {
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        eprintln!("skipping: systemd-analyze is not installed");
        return;
    };
    assert!(out.status.success());
    let dir = TempDir(std::env::temp_dir().join(format!("warden-dist-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let units = [
        "wardend.service",
        "wardend.socket",
        "wardend-ro.socket",
        "warden-server.service",
        "warden-agent.service",
    ];
    for name in units {
        // verify checks that ExecStart= names an executable; none is installed here.
        let text = dist(name)
            .replace("ExecStart=/usr/bin/wardend ", "ExecStart=/bin/sh ")
            .replace("ExecStart=/usr/bin/warden-server ", "ExecStart=/bin/sh ")
            .replace("ExecStart=/usr/bin/warden-agent ", "ExecStart=/bin/sh ");
        std::fs::write(dir.0.join(name), text).unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .args(units.map(|u| dir.0.join(u)))
        .output()
        .unwrap();
    let complaints = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && complaints.trim().is_empty(),
        "{complaints}"
    );
}
