//! Reading configuration files safely: the main file and each drop-in in `warden.d` beside it
//! are opened (following a symlink, as any path is), and the opened file must be a regular file
//! owned by root (or the daemon's own user) that no group or other user may write; only then is
//! its text read, from the same descriptor, so what was checked is what is read. The drop-in
//! directory passes the same owner and mode test. It never reads a file it has not checked.

use std::io::{self, Read};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::SettingsError;

/// The directory of drop-ins, beside the main configuration file.
pub const DROPIN_DIR: &str = "warden.d";

/// Where the drop-ins of the configuration file `config` live: `<its directory>/warden.d`.
pub(crate) fn dir_of(config: &Path) -> PathBuf {
    config
        .parent()
        .map_or_else(|| PathBuf::from(DROPIN_DIR), |p| p.join(DROPIN_DIR))
}

/// Why `m` (of something at `path`) may not be trusted: owned by someone other than root or
/// `trusted`, or writable by its group or others.
fn untrusted(m: &std::fs::Metadata, trusted: u32) -> Option<String> {
    if m.uid() != 0 && m.uid() != trusted {
        return Some(format!(
            "owned by uid {}; it must be root's (chown root {{}})",
            m.uid()
        ));
    }
    let mode = m.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Some(format!(
            "mode {mode:04o} lets {} write it (chmod go-w {{}})",
            if mode & 0o002 != 0 {
                "every user"
            } else {
                "its group"
            }
        ));
    }
    None
}

fn refuse(path: &Path, why: String) -> SettingsError {
    let shown = path.display().to_string();
    SettingsError::Unsafe {
        path: path.to_owned(),
        why: why.replace("{}", &shown),
    }
}

/// The text of the configuration file at `path`, once the opened file passed the owner and
/// mode test.
pub(crate) fn read_checked(path: &Path, trusted: u32) -> Result<String, SettingsError> {
    let read = |source| SettingsError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(read)?;
    let m = file.metadata().map_err(read)?;
    if !m.is_file() {
        return Err(refuse(path, "not a regular file".into()));
    }
    if let Some(why) = untrusted(&m, trusted) {
        return Err(refuse(path, why));
    }
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(read)?;
    Ok(text)
}

/// The drop-ins in `dir`, in lexical (byte) order of their names: every `*.toml` whose name does
/// not begin with `.` (editors' and package managers' temporary files). No directory, no
/// drop-ins; a directory someone besides root could write is refused.
pub(crate) fn list(dir: &Path, trusted: u32) -> Result<Vec<PathBuf>, SettingsError> {
    let read = |source| SettingsError::Read {
        path: dir.to_owned(),
        source,
    };
    let m = match std::fs::metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(read(e)),
    };
    if !m.is_dir() {
        return Err(refuse(dir, "not a directory".into()));
    }
    if let Some(why) = untrusted(&m, trusted) {
        return Err(refuse(dir, why));
    }
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let name = entry.map_err(read)?.file_name();
        let bytes = name.as_encoded_bytes();
        if bytes.ends_with(b".toml") && !bytes.starts_with(b".") {
            names.push(name);
        }
    }
    names.sort();
    Ok(names.into_iter().map(|n| dir.join(n)).collect())
}
