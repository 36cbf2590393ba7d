//! Reads the identity files named in `[fleet.identity]`, and finds the serial of the disk
//! holding `/` through sysfs when `disk_serial = "root-disk"`. Reads only regular files and at
//! most a few KiB of each (a FIFO or a huge file configured by mistake cannot stall or bloat the
//! daemon); any failure is a missing signal, never an error.

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use warden_policy::{DiskSerial, IdentitySources};

use super::derive::Signals;

/// The most read of one identity file.
const MAX_READ: u64 = 4096;

/// How many stacked block devices (device-mapper, md) are followed down to a disk.
const MAX_STACK: usize = 8;

/// Every signal the sources name, as read now.
pub fn signals(sources: &IdentitySources) -> Signals {
    Signals {
        product_uuid: text(&sources.product_uuid),
        board_serial: text(&sources.board_serial),
        disk_serial: match &sources.disk_serial {
            DiskSerial::File(p) => text(p),
            DiskSerial::RootDisk => root_disk_serial(),
        },
        machine_id: text(&sources.machine_id),
    }
}

/// The first [`MAX_READ`] bytes of a regular file, as text.
fn text(path: &Path) -> Option<String> {
    bytes(path).map(|b| String::from_utf8_lossy(&b).into_owned())
}

fn bytes(path: &Path) -> Option<Vec<u8>> {
    if !std::fs::metadata(path).ok()?.is_file() {
        return None;
    }
    let mut out = Vec::new();
    std::fs::File::open(path)
        .ok()?
        .take(MAX_READ)
        .read_to_end(&mut out)
        .ok()?;
    Some(out)
}

/// `(major, minor)` of a Linux `dev_t`, as glibc's `gnu_dev_major`/`gnu_dev_minor` split it.
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    (major, minor)
}

/// The serial of the whole disk holding `/`: its sysfs device, up from a partition to the
/// disk, down through a device-mapper or md device with exactly one member, then `serial`
/// (virtio), `device/serial` (NVMe, some SCSI) or the unit serial page `device/vpd_pg80`
/// (SATA and SAS through SCSI). `None` on a root with no block device (overlay, tmpfs, NFS).
pub fn root_disk_serial() -> Option<String> {
    let dev = std::fs::metadata("/").ok()?.dev();
    let (major, minor) = split_dev(dev);
    if major == 0 {
        return None;
    }
    let start = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    disk_serial_from(&start)
}

/// [`root_disk_serial`] from the sysfs directory of a block device.
fn disk_serial_from(block: &Path) -> Option<String> {
    let mut node = std::fs::canonicalize(block).ok()?;
    for _ in 0..MAX_STACK {
        if node.join("partition").exists() {
            node = node.parent()?.to_path_buf();
        }
        let members: Vec<PathBuf> = std::fs::read_dir(node.join("slaves"))
            .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        match members.as_slice() {
            [] => return serial_of(&node),
            [one] => node = std::fs::canonicalize(one).ok()?,
            // Spread over several disks: no one disk names the machine.
            _ => return None,
        }
    }
    None
}

fn serial_of(disk: &Path) -> Option<String> {
    for name in ["serial", "device/serial"] {
        if let Some(s) = text(&disk.join(name))
            && !s.trim().is_empty()
        {
            return Some(s);
        }
    }
    vpd_unit_serial(&bytes(&disk.join("device/vpd_pg80"))?)
}

/// The serial number in a SCSI Unit Serial Number VPD page (0x80): a 4-byte header whose
/// last byte is the length, then that many ASCII bytes.
fn vpd_unit_serial(page: &[u8]) -> Option<String> {
    if page.get(1) != Some(&0x80) {
        return None;
    }
    let len = usize::from(*page.get(3)?);
    let serial = page.get(4..4 + len)?;
    Some(String::from_utf8_lossy(serial).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: `dev_t` splits as glibc does, for small and large numbers.
    #[test]
    fn dev_numbers_split_like_glibc() {
        assert_eq!(split_dev(0xfe00), (254, 0));
        assert_eq!(split_dev(0x0801), (8, 1));
        // major 259 (NVMe partitions), minor 300.
        let dev = (259 << 8) | (300 & 0xff) | ((300 & !0xff) << 12);
        assert_eq!(split_dev(dev), (259, 300));
    }

    /// Pins: the SCSI serial page is read by its length byte, and anything else is refused.
    #[test]
    fn the_unit_serial_page_is_parsed_by_its_length() {
        let mut page = vec![0x00, 0x80, 0x00, 0x08];
        page.extend_from_slice(b"WD-X1234trailing");
        assert_eq!(vpd_unit_serial(&page).as_deref(), Some("WD-X1234"));
        assert_eq!(vpd_unit_serial(&[0x00, 0x83, 0x00, 0x01, b'x']), None);
        assert_eq!(vpd_unit_serial(&[0x00, 0x80, 0x00, 0x09, b'x']), None);
    }

    /// Pins: a partition leads to its disk, a single-member stacked device to its member, and
    /// the disk's `serial` or `device/serial` is read; several members give nothing.
    #[test]
    fn the_root_disk_is_found_through_partitions_and_stacks() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let disk = sys.join("devices/vda");
        std::fs::create_dir_all(disk.join("vda1")).unwrap();
        std::fs::write(disk.join("vda1/partition"), "1\n").unwrap();
        std::fs::write(disk.join("serial"), "VIRT-42\n").unwrap();
        assert_eq!(
            disk_serial_from(&disk.join("vda1")).as_deref(),
            Some("VIRT-42\n")
        );
        let nvme = sys.join("devices/nvme0n1");
        std::fs::create_dir_all(nvme.join("device")).unwrap();
        std::fs::write(nvme.join("device/serial"), "S4EWNX0N123").unwrap();
        let dm = sys.join("devices/dm-0");
        std::fs::create_dir_all(dm.join("slaves")).unwrap();
        std::os::unix::fs::symlink(&nvme, dm.join("slaves/nvme0n1")).unwrap();
        assert_eq!(disk_serial_from(&dm).as_deref(), Some("S4EWNX0N123"));
        std::os::unix::fs::symlink(&disk, dm.join("slaves/vda")).unwrap();
        assert_eq!(disk_serial_from(&dm), None);
        // A FIFO is never opened.
        let fifo = sys.join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        assert_eq!(text(&fifo), None);
    }
}
