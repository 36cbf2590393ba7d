//! The machine id as a pure function of what the identity files held: which source counts
//! (the DMI product UUID, else board serial and disk serial, else `/etc/machine-id`), how a
//! value is normalised so the same hardware always gives the same id, and which values are
//! placeholders that many machines share. It reads no file and logs nothing.

use sha2::{Digest, Sha256};
use warden_proto::messages::{HostIdentityResult, IdentitySource};

/// The namespace hashed before every source: changing it changes every machine id.
pub const NAMESPACE: &str = "warden machine id v1";

/// The prefix of a machine id.
pub const PREFIX: &str = "muid_";

/// The raw contents of the identity files; `None` where a file was missing or unreadable.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Signals {
    pub product_uuid: Option<String>,
    pub board_serial: Option<String>,
    pub disk_serial: Option<String>,
    pub machine_id: Option<String>,
}

/// The machine id, and why better sources were passed over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derived {
    pub identity: HostIdentityResult,
    /// One line per source not used, e.g. `dmi_product_uuid: a placeholder value`.
    pub passed_over: Vec<String>,
}

/// No source gave a usable value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no usable machine identity: {}", .passed_over.join("; "))]
pub struct NoIdentity {
    pub passed_over: Vec<String>,
}

/// Values firmware and drivers write when nobody filled the field in: shared by many machines,
/// so never an identity. Compared trimmed and case-insensitively.
const PLACEHOLDERS: &[&str] = &[
    "03000200-0400-0500-0006-000700080009",
    "not settable",
    "not present",
    "not specified",
    "not applicable",
    "not available",
    "default string",
    "to be filled by o.e.m.",
    "to be filled by oem",
    "o.e.m.",
    "oem",
    "system serial number",
    "system product name",
    "base board serial number",
    "chassis serial number",
    "serial number",
    "serial",
    "none",
    "null",
    "n/a",
    "na",
    "unknown",
    "invalid",
    "empty",
    "0123456789",
    "123456789",
    "1234567890",
    "0123456789abcdef",
];

/// `raw` without surrounding whitespace or NUL padding, or why it cannot identify a machine.
fn cleaned(raw: &str) -> Result<&str, &'static str> {
    let v = raw.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    if v.is_empty() {
        return Err("empty");
    }
    if v.chars().any(char::is_control) {
        return Err("holds control characters");
    }
    if PLACEHOLDERS.iter().any(|p| v.eq_ignore_ascii_case(p)) {
        return Err("a placeholder value");
    }
    // All zeros, all F, all X…: one character repeated, separators aside.
    let mut significant = v
        .chars()
        .filter(|c| !matches!(c, '-' | ' ' | ':' | '.' | '_'));
    let first = significant.next();
    if first.is_none_or(|f| significant.all(|c| c.eq_ignore_ascii_case(&f))) {
        return Err("one character repeated");
    }
    Ok(v)
}

/// A UUID in its canonical form (lowercase, 8-4-4-4-12), or why it is not usable.
fn uuid(raw: &str) -> Result<String, &'static str> {
    let v = cleaned(raw)?;
    let hex: String = v.chars().filter(|&c| c != '-').collect();
    if hex.len() != 32 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("not a UUID");
    }
    let hex = hex.to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// A systemd machine id (32 hex digits, lowercase), or why it is not usable.
fn machine_id(raw: &str) -> Result<String, &'static str> {
    let v = cleaned(raw)?;
    if v.len() != 32 || !v.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err("not 32 hexadecimal digits (uninitialized?)");
    }
    Ok(v.to_ascii_lowercase())
}

/// `muid_` + hex SHA-256 over the namespace, the source's name and its values, each part
/// ended by a NUL so no two different inputs hash the same bytes.
pub fn hash(source: IdentitySource, values: &[&str]) -> String {
    let mut h = Sha256::new();
    h.update(NAMESPACE.as_bytes());
    h.update([0]);
    h.update(source.as_str().as_bytes());
    for v in values {
        h.update([0]);
        h.update(v.as_bytes());
    }
    let digest = h.finalize();
    let mut out = String::with_capacity(PREFIX.len() + 64);
    out.push_str(PREFIX);
    for b in digest {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// The machine id from the best usable source.
pub fn derive(signals: &Signals) -> Result<Derived, NoIdentity> {
    let mut passed_over = Vec::new();
    let missing = "missing or unreadable";
    let found = |source, values: &[&str], degraded, passed_over| Derived {
        identity: HostIdentityResult {
            machine_id: hash(source, values),
            source,
            degraded,
        },
        passed_over,
    };

    match signals
        .product_uuid
        .as_deref()
        .ok_or(missing)
        .and_then(uuid)
    {
        Ok(u) => {
            return Ok(found(
                IdentitySource::DmiProductUuid,
                &[&u],
                false,
                passed_over,
            ));
        }
        Err(why) => passed_over.push(format!("{}: {why}", IdentitySource::DmiProductUuid)),
    }

    let board = signals
        .board_serial
        .as_deref()
        .ok_or(missing)
        .and_then(cleaned);
    let disk = signals
        .disk_serial
        .as_deref()
        .ok_or(missing)
        .and_then(cleaned);
    match (board, disk) {
        (Ok(b), Ok(d)) => {
            return Ok(found(
                IdentitySource::BoardAndDiskSerial,
                &[b, d],
                false,
                passed_over,
            ));
        }
        (b, d) => passed_over.push(format!(
            "{}: board serial {}, disk serial {}",
            IdentitySource::BoardAndDiskSerial,
            b.map_or_else(|why| why, |_| "usable"),
            d.map_or_else(|why| why, |_| "usable"),
        )),
    }

    match signals
        .machine_id
        .as_deref()
        .ok_or(missing)
        .and_then(machine_id)
    {
        Ok(m) => Ok(found(IdentitySource::MachineId, &[&m], true, passed_over)),
        Err(why) => {
            passed_over.push(format!("{}: {why}", IdentitySource::MachineId));
            Err(NoIdentity { passed_over })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UUID: &str = "4C4C4544-0051-3510-8057-B3C04F4E3432";
    const MID: &str = "3d1219c7c4c5404aaa1f6d2a48adfda4";

    fn s(
        uuid: Option<&str>,
        board: Option<&str>,
        disk: Option<&str>,
        mid: Option<&str>,
    ) -> Signals {
        Signals {
            product_uuid: uuid.map(str::to_owned),
            board_serial: board.map(str::to_owned),
            disk_serial: disk.map(str::to_owned),
            machine_id: mid.map(str::to_owned),
        }
    }

    fn source(signals: &Signals) -> IdentitySource {
        derive(signals).unwrap().identity.source
    }

    /// Pins: a real product UUID wins, is not degraded, and the id is `muid_` and 64
    /// lowercase hex digits, as the fleet's `MachineId` requires.
    #[test]
    fn a_real_product_uuid_is_the_source() {
        let d = derive(&s(Some(UUID), Some("B1"), Some("D1"), Some(MID))).unwrap();
        assert_eq!(d.identity.source, IdentitySource::DmiProductUuid);
        assert!(!d.identity.degraded);
        assert!(d.passed_over.is_empty());
        let id = &d.identity.machine_id;
        assert!(
            has_machine_id_shape(id),
            "{id} is not muid_ + 64 lowercase hex"
        );
    }

    fn has_machine_id_shape(id: &str) -> bool {
        id.strip_prefix(PREFIX).is_some_and(|h| {
            h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
    }

    /// Pins: the same values give the same id however they are padded or cased (a UUID's case
    /// and surrounding whitespace, NUL padding), and the id is exactly SHA-256 over the
    /// domain-separated namespace, so other implementations can reproduce it.
    #[test]
    fn the_id_is_deterministic_and_normalised() {
        let a = derive(&s(Some(UUID), None, None, None)).unwrap();
        let b = derive(&s(
            Some(&format!("  {}\n\0", UUID.to_lowercase())),
            Some("other"),
            None,
            None,
        ))
        .unwrap();
        assert_eq!(a.identity, b.identity);
        let mut h = Sha256::new();
        h.update(
            b"warden machine id v1\x00dmi_product_uuid\x004c4c4544-0051-3510-8057-b3c04f4e3432",
        );
        let want: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.identity.machine_id, format!("muid_{want}"));
        let m1 = derive(&s(None, None, None, Some(MID))).unwrap();
        let m2 = derive(&s(
            None,
            None,
            None,
            Some(&format!("{}\n", MID.to_uppercase())),
        ))
        .unwrap();
        assert_eq!(m1.identity, m2.identity);
    }

    /// Pins: degenerate product UUIDs (empty, all zeros, all F, the well-known placeholder,
    /// the firmware's filler strings in any case, not a UUID at all) are passed over.
    #[test]
    fn degenerate_product_uuids_are_passed_over() {
        for bad in [
            "",
            "   \n",
            "00000000-0000-0000-0000-000000000000",
            "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "03000200-0400-0500-0006-000700080009",
            "Not Settable",
            "NOT PRESENT",
            "Default string",
            " To be filled by O.E.M. ",
            "not-a-uuid",
            "4C4C4544-0051-3510-8057-B3C04F4E343",
            "4C4C4544\u{1}0051-3510-8057-B3C04F4E3432",
        ] {
            let d = derive(&s(
                Some(bad),
                Some("BSN-12345"),
                Some("WD-WX1234"),
                Some(MID),
            ))
            .unwrap();
            assert_eq!(
                d.identity.source,
                IdentitySource::BoardAndDiskSerial,
                "{bad:?} was taken as a UUID"
            );
            assert!(
                d.passed_over[0].starts_with("dmi_product_uuid: "),
                "{:?}",
                d.passed_over
            );
        }
    }

    /// Pins: board and disk serials count only together and only when neither is a
    /// placeholder; otherwise `/etc/machine-id` is used and the answer is degraded.
    #[test]
    fn serials_need_both_and_otherwise_machine_id_is_degraded() {
        let both = s(None, Some("BSN-12345"), Some("WD-WX1234"), Some(MID));
        assert_eq!(source(&both), IdentitySource::BoardAndDiskSerial);
        assert!(!derive(&both).unwrap().identity.degraded);
        for (board, disk) in [
            (Some("BSN-12345"), None),
            (None, Some("WD-WX1234")),
            (Some("Default string"), Some("WD-WX1234")),
            (Some("BSN-12345"), Some("0000000000")),
            (Some("To Be Filled By O.E.M."), Some("WD-WX1234")),
            (Some("XXXXXXXX"), Some("WD-WX1234")),
            (Some("BSN-12345"), Some("")),
        ] {
            let d = derive(&s(Some("Not Settable"), board, disk, Some(MID))).unwrap();
            assert_eq!(
                d.identity.source,
                IdentitySource::MachineId,
                "{board:?} {disk:?}"
            );
            assert!(d.identity.degraded);
            assert_eq!(d.passed_over.len(), 2, "{:?}", d.passed_over);
        }
    }

    /// Pins: different hardware gives different ids, the same value under another source
    /// gives another id, and the order of board and disk serial matters.
    #[test]
    fn different_fixtures_give_different_ids() {
        let id = |sig: Signals| derive(&sig).unwrap().identity.machine_id;
        let ids = [
            id(s(Some(UUID), None, None, None)),
            id(s(
                Some("4c4c4544-0051-3510-8057-b3c04f4e3433"),
                None,
                None,
                None,
            )),
            id(s(None, Some("BSN-1"), Some("DSK-1"), None)),
            id(s(None, Some("BSN-1"), Some("DSK-2"), None)),
            id(s(None, Some("DSK-1"), Some("BSN-1"), None)),
            id(s(None, None, None, Some(MID))),
            id(s(
                None,
                None,
                None,
                Some("3d1219c7c4c5404aaa1f6d2a48adfda5"),
            )),
        ];
        let unique: std::collections::BTreeSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "{ids:#?}");
        // Domain separation: the bytes "a\0b" as one serial never equal "a" + "b".
        assert_ne!(
            hash(IdentitySource::BoardAndDiskSerial, &["a", "b"]),
            hash(IdentitySource::BoardAndDiskSerial, &["ab", ""])
        );
    }

    /// Pins: with nothing usable (no files, an uninitialized or all-zero machine-id) there is
    /// no identity, and the error says why each source was passed over.
    #[test]
    fn nothing_usable_is_no_identity_with_reasons() {
        for mid in [
            None,
            Some("uninitialized\n"),
            Some(&*"0".repeat(32)),
            Some("abc"),
        ] {
            let e = derive(&s(None, None, None, mid)).unwrap_err();
            assert_eq!(e.passed_over.len(), 3, "{e}");
            let text = e.to_string();
            assert!(
                text.contains("dmi_product_uuid: missing or unreadable"),
                "{text}"
            );
            assert!(text.contains("machine_id: "), "{text}");
        }
    }
}
