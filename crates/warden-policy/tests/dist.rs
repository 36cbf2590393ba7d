//! The shipped example configuration and systemd units stay true: the example loads, and the
//! socket unit opens exactly the example's listeners with the same modes.

#![allow(clippy::unwrap_used)]

use std::io;

use warden_policy::{Directory, Policy};
use warden_proto::{Gid, Uid};

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

fn dist(name: &str) -> String {
    std::fs::read_to_string(format!("{}/../../dist/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
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
