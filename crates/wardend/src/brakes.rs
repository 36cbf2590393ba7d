//! The brakes an administrator pulls at run time: ops toggles and the lockdown. Both are kept in
//! the root-owned state directory (`ops.json`, `lockdown.json`, mode 0600), written whole with a
//! rename so a crash leaves the old file or the new one, and read back at start: a lockdown
//! survives a restart.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use warden_policy::Lockdown;

use crate::files::{read_json, remove_durably, write_atomic};

/// Ops toggles and lockdown in force.
#[derive(Debug)]
pub(crate) struct Brakes {
    dir: PathBuf,
    ops: RwLock<BTreeMap<String, bool>>,
    lockdown: RwLock<Option<Lockdown>>,
    /// Held while a change is saved: one change at a time, and the read locks every request
    /// takes are held only for the swap, never while a file is flushed.
    saving: std::sync::Mutex<()>,
}

const OPS: &str = "ops.json";
const LOCKDOWN: &str = "lockdown.json";

impl Brakes {
    /// The configured toggles with the changes saved in `state_dir` on top (a saved toggle the
    /// configuration no longer declares is dropped), and a saved lockdown.
    pub(crate) fn open(
        state_dir: &Path,
        configured: &BTreeMap<String, bool>,
    ) -> io::Result<Brakes> {
        let mut ops = configured.clone();
        if let Some(saved) = read_json::<BTreeMap<String, bool>>(&state_dir.join(OPS))? {
            for (name, on) in saved {
                match ops.get_mut(&name) {
                    Some(slot) => *slot = on,
                    None => {
                        tracing::warn!(op = %name, "a saved ops toggle is no longer declared in [ops]; ignored")
                    }
                }
            }
        }
        let lockdown = read_json::<Lockdown>(&state_dir.join(LOCKDOWN))?;
        if let Some(l) = &lockdown {
            tracing::warn!(reason = %l.reason, by_uid = l.by_uid, since = %l.since, "warden is locked down");
        }
        Ok(Brakes {
            dir: state_dir.to_owned(),
            ops: RwLock::new(ops),
            lockdown: RwLock::new(lockdown),
            saving: std::sync::Mutex::new(()),
        })
    }

    /// After a reload: toggles the configuration newly declares come in at their defaults,
    /// dropped ones go, the others keep their state.
    pub(crate) fn reconfigure(&self, declared: &BTreeMap<String, bool>) {
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut ops = self.ops.write().unwrap_or_else(PoisonError::into_inner);
        ops.retain(|name, _| declared.contains_key(name));
        for (name, on) in declared {
            ops.entry(name.clone()).or_insert(*on);
        }
    }

    pub(crate) fn ops(&self) -> RwLockReadGuard<'_, BTreeMap<String, bool>> {
        self.ops.read().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lockdown(&self) -> RwLockReadGuard<'_, Option<Lockdown>> {
        self.lockdown.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Switches `name`, saved before it takes effect. `Ok(None)` if no such toggle is declared.
    pub(crate) fn set_op(
        &self,
        name: &str,
        on: bool,
    ) -> io::Result<Option<BTreeMap<String, bool>>> {
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = self.ops().clone();
        if !next.contains_key(name) {
            return Ok(None);
        }
        next.insert(name.to_owned(), on);
        write_atomic(&self.dir, OPS, &serde_json::to_vec_pretty(&next)?)?;
        let mut ops = self.ops.write().unwrap_or_else(PoisonError::into_inner);
        *ops = next;
        Ok(Some(ops.clone()))
    }

    /// Engages the lockdown (replacing one in force), saved before it takes effect.
    pub(crate) fn engage(&self, lockdown: Lockdown) -> io::Result<()> {
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        write_atomic(&self.dir, LOCKDOWN, &serde_json::to_vec_pretty(&lockdown)?)?;
        *self
            .lockdown
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Some(lockdown);
        Ok(())
    }

    /// Releases the lockdown; the previous one, if any.
    pub(crate) fn release(&self) -> io::Result<Option<Lockdown>> {
        let _saving = self.saving.lock().unwrap_or_else(PoisonError::into_inner);
        remove_durably(&self.dir, LOCKDOWN)?;
        Ok(self
            .lockdown
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: toggles and the lockdown are saved private, read back by the next start, and a
    /// saved toggle the configuration dropped is ignored.
    #[test]
    fn brakes_survive_a_restart_in_private_files() {
        let dir = tempfile::tempdir().unwrap();
        let configured: BTreeMap<String, bool> =
            [("storage".to_owned(), true), ("power".to_owned(), false)].into();
        let b = Brakes::open(dir.path(), &configured).unwrap();
        assert!(!b.set_op("storage", false).unwrap().unwrap()["storage"]);
        assert!(b.set_op("nope", true).unwrap().is_none());
        let lockdown = Lockdown {
            reason: "incident".into(),
            by_uid: 0,
            since: "2026-11-29T23:00:00Z".into(),
        };
        b.engage(lockdown.clone()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        for f in [OPS, LOCKDOWN] {
            let mode = std::fs::metadata(dir.path().join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        let fewer: BTreeMap<String, bool> = [("power".to_owned(), false)].into();
        let again = Brakes::open(dir.path(), &configured).unwrap();
        assert!(!again.ops()["storage"]);
        assert_eq!(*again.lockdown(), Some(lockdown));
        assert!(
            !Brakes::open(dir.path(), &fewer)
                .unwrap()
                .ops()
                .contains_key("storage")
        );
        assert!(again.release().unwrap().is_some());
        assert!(
            Brakes::open(dir.path(), &configured)
                .unwrap()
                .lockdown()
                .is_none()
        );
    }
}
