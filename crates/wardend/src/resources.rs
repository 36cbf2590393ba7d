//! Owned resources: directories made for their owners under each kind's base directory, and
//! the registry of who owns which (`state_dir/resources.json`, mode 0600).
//!
//! **One lock, one order.** Every create and delete holds the registry lock from its first
//! file-system step until the registry file is saved, and nothing else is locked under it (the
//! policy is read before). Steps of a create: make `.warden-new-<random>` in the base
//! directory, hand it to its owner with the kind's mode, save the registry with the new entry,
//! rename it to its name (never over an existing one), flush the base directory. Steps of a
//! delete: rename the directory to `.warden-trash-<random>`, save the registry without it,
//! flush, then remove the trash without following any symlink. Each failed step undoes the ones
//! before it, so disk and registry agree. A crash leaves at most a `.warden-*` directory, which
//! the next start removes, and registry entries whose directory never got its name, which the
//! next start drops: neither was ever acknowledged. Names beginning with `.` are never
//! resource names, so the work names cannot collide with one.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use serde::{Deserialize, Serialize};
use warden_policy::ResourceKind;
use warden_proto::Uid;
use warden_proto::messages::ResourceInfo;
use warden_sys::owned::BaseDir;

use crate::files::{read_json, write_atomic};

/// The registry's file in the state directory.
pub(crate) const FILE: &str = "resources.json";

const NEW: &str = ".warden-new-";
const TRASH: &str = ".warden-trash-";

/// One registered resource.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub kind: String,
    pub name: String,
    pub owner_uid: u32,
    pub owner: String,
    /// The base directory it was made in (a reload may move the kind's).
    pub base_dir: PathBuf,
    pub mode: u32,
    pub created: String,
}

impl Entry {
    pub(crate) fn info(&self) -> ResourceInfo {
        ResourceInfo {
            kind: self.kind.clone(),
            name: self.name.clone(),
            owner_uid: Uid(self.owner_uid),
            owner: self.owner.clone(),
            path: self
                .base_dir
                .join(&self.name)
                .to_string_lossy()
                .into_owned(),
            mode: format!("{:04o}", self.mode),
            created: self.created.clone(),
            hook_job: None,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    resources: Vec<Entry>,
}

/// Who a new resource is for, resolved by the caller from the passwd database.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
}

/// Why a change was refused or failed; each is answered with its own error kind.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResourceError {
    #[error("{0}")]
    Conflict(String),
    #[error("no such resource")]
    Missing,
    #[error("{0}")]
    Io(String),
}

type Key = (String, String);

/// The registry and the one lock of resource changes.
#[derive(Debug)]
pub(crate) struct Registry {
    state_dir: PathBuf,
    entries: Mutex<BTreeMap<Key, Entry>>,
}

/// A step a test may make fail, for one resource name (see [`inject_fault`]).
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Handing the new directory to its owner.
    Chown,
}

static FAULTS: Mutex<Vec<(String, Fault)>> = Mutex::new(Vec::new());

/// Test hook: the next create of a resource called `name` fails at `fault`. Reachable only
/// through the library (tests run the daemon in-process); nothing in a configuration or the
/// protocol can set it.
#[doc(hidden)]
pub fn inject_fault(name: &str, fault: Fault) {
    FAULTS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((name.to_owned(), fault));
}

fn faulted(name: &str, fault: Fault) -> io::Result<()> {
    let mut faults = FAULTS.lock().unwrap_or_else(PoisonError::into_inner);
    match faults.iter().position(|(n, f)| n == name && *f == fault) {
        Some(i) => {
            faults.remove(i);
            Err(io::Error::other(format!("injected fault at {fault:?}")))
        }
        None => Ok(()),
    }
}

/// `prefix` and 16 random hex digits (uniqueness only: the base directory is not writable by
/// others), made as a correlation id is.
fn work_name(prefix: &str) -> String {
    format!("{prefix}{}", crate::call::correlation_id())
}

fn io_failure(what: &str, e: &io::Error) -> ResourceError {
    ResourceError::Io(format!("{what}: {e}"))
}

impl Registry {
    /// Reads the registry and finishes what a crash left: removes `.warden-*` work directories
    /// in every declared kind's base directory, and drops entries whose directory is missing.
    /// An unreadable registry is an error: who owns what cannot be guessed.
    pub(crate) fn open(
        state_dir: &Path,
        kinds: &BTreeMap<String, std::sync::Arc<ResourceKind>>,
    ) -> io::Result<Registry> {
        let saved: Saved = read_json(&state_dir.join(FILE))?.unwrap_or_default();
        let mut entries = BTreeMap::new();
        for e in saved.resources {
            entries.insert((e.kind.clone(), e.name.clone()), e);
        }
        for kind in kinds.values() {
            if !kind.base_dir.exists() {
                continue;
            }
            let base = match BaseDir::open(&kind.base_dir) {
                Ok(b) => b,
                Err(e) => {
                    tracing::error!(kind = %kind.kind, error = %e, "cannot open a resource base directory");
                    continue;
                }
            };
            for name in base.names()? {
                if (name.starts_with(NEW) || name.starts_with(TRASH))
                    && let Err(e) = base.remove_tree(&name)
                {
                    tracing::error!(path = %kind.base_dir.join(&name).display(), error = %e,
                        "cannot remove what an interrupted resource change left");
                }
            }
        }
        let before = entries.len();
        entries.retain(|_, e: &mut Entry| {
            let there = BaseDir::open(&e.base_dir)
                .and_then(|b| b.is_dir_of(&e.name, e.owner_uid))
                .unwrap_or(true);
            if !there {
                tracing::warn!(kind = %e.kind, name = %e.name, owner_uid = e.owner_uid,
                    "a registered resource's directory is missing; dropping it from the registry");
            }
            there
        });
        let registry = Registry {
            state_dir: state_dir.to_owned(),
            entries: Mutex::new(entries),
        };
        if registry.lock().len() != before {
            registry.save(&registry.lock())?;
        }
        Ok(registry)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Key, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn save(&self, entries: &BTreeMap<Key, Entry>) -> io::Result<()> {
        let saved = Saved {
            resources: entries.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(io::Error::other)?;
        write_atomic(&self.state_dir, FILE, &bytes)
    }

    /// The owner of `kind`/`name`, if it is registered.
    pub(crate) fn owner(&self, kind: &str, name: &str) -> Option<Uid> {
        self.lock()
            .get(&(kind.to_owned(), name.to_owned()))
            .map(|e| Uid(e.owner_uid))
    }

    pub(crate) fn get(&self, kind: &str, name: &str) -> Option<Entry> {
        self.lock()
            .get(&(kind.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Registered resources, of one owner when `uid` is given, of one kind when `kind` is.
    pub(crate) fn list(&self, uid: Option<u32>, kind: Option<&str>) -> Vec<Entry> {
        self.lock()
            .values()
            .filter(|e| uid.is_none_or(|u| e.owner_uid == u))
            .filter(|e| kind.is_none_or(|k| e.kind == k))
            .cloned()
            .collect()
    }

    /// Makes `name` of `kind` for `owner` (blocking: run it off the runtime's threads).
    pub(crate) fn create(
        &self,
        kind: &ResourceKind,
        name: &str,
        owner: &Owner,
    ) -> Result<Entry, ResourceError> {
        let mut entries = self.lock();
        let key = (kind.kind.clone(), name.to_owned());
        if entries.contains_key(&key) {
            return Err(ResourceError::Conflict(format!(
                "resource {}/{name} already exists",
                kind.kind
            )));
        }
        let owned = entries
            .values()
            .filter(|e| e.kind == kind.kind && e.owner_uid == owner.uid)
            .count();
        if owned >= kind.max_per_uid {
            return Err(ResourceError::Conflict(format!(
                "quota reached: kind {} allows {} per owner (max_per_uid)",
                kind.kind, kind.max_per_uid
            )));
        }
        let base = BaseDir::open(&kind.base_dir)
            .map_err(|e| io_failure("opening the kind's base_dir", &e))?;
        if base
            .exists(name)
            .map_err(|e| io_failure("looking in base_dir", &e))?
        {
            return Err(ResourceError::Conflict(format!(
                "{} already holds an unregistered `{name}`; an administrator must move it",
                kind.base_dir.display()
            )));
        }
        let work = work_name(NEW);
        let undo_dir = |base: &BaseDir| {
            if let Err(e) = base.remove_tree(&work) {
                tracing::error!(path = %kind.base_dir.join(&work).display(), error = %e,
                    "cannot undo a failed resource create; the next start removes it");
            }
        };
        let dir = base
            .make_dir(&work)
            .map_err(|e| io_failure("making the directory", &e))?;
        if let Err(e) = faulted(name, Fault::Chown)
            .and_then(|()| BaseDir::hand_over(&dir, owner.uid, owner.gid, kind.mode))
        {
            undo_dir(&base);
            return Err(io_failure("handing the directory to its owner", &e));
        }
        drop(dir);
        let entry = Entry {
            kind: kind.kind.clone(),
            name: name.to_owned(),
            owner_uid: owner.uid,
            owner: owner.name.clone(),
            base_dir: kind.base_dir.clone(),
            mode: kind.mode,
            created: crate::clock::now_rfc3339(),
        };
        entries.insert(key.clone(), entry.clone());
        if let Err(e) = self.save(&entries) {
            entries.remove(&key);
            undo_dir(&base);
            return Err(io_failure("saving the registry", &e));
        }
        if let Err(e) = base.rename_new(&work, name).and_then(|()| base.sync()) {
            entries.remove(&key);
            if let Err(e) = self.save(&entries) {
                tracing::error!(error = %e, "cannot save the registry after a failed create; the next start drops the entry");
            }
            undo_dir(&base);
            let e = if e.kind() == io::ErrorKind::AlreadyExists {
                ResourceError::Conflict(format!("resource {}/{name} already exists", kind.kind))
            } else {
                io_failure("naming the directory", &e)
            };
            return Err(e);
        }
        Ok(entry)
    }

    /// Removes `kind`/`name` from disk and the registry (blocking: run it off the runtime's
    /// threads). With `owner`, only if it still belongs to that uid (what was allowed may have
    /// been deleted and made again by someone else since).
    pub(crate) fn delete(
        &self,
        kind: &str,
        name: &str,
        owner: Option<u32>,
    ) -> Result<Entry, ResourceError> {
        let mut entries = self.lock();
        let key = (kind.to_owned(), name.to_owned());
        let Some(entry) = entries
            .get(&key)
            .filter(|e| owner.is_none_or(|o| e.owner_uid == o))
            .cloned()
        else {
            return Err(ResourceError::Missing);
        };
        let base = BaseDir::open(&entry.base_dir)
            .map_err(|e| io_failure("opening the kind's base_dir", &e))?;
        let trash = work_name(TRASH);
        match base.rename_new(name, &trash) {
            Ok(()) => {}
            // Gone from disk already (removed by hand): only the registry is left to fix.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_failure("moving the directory aside", &e)),
        }
        entries.remove(&key);
        if let Err(e) = self.save(&entries) {
            entries.insert(key, entry);
            if let Err(e) = base.rename_new(&trash, name) {
                tracing::error!(error = %e, kind, name,
                    "cannot put a resource back after a failed delete");
            }
            return Err(io_failure("saving the registry", &e));
        }
        let synced = base.sync();
        drop(entries);
        if let Err(e) = synced.and_then(|()| base.remove_tree(&trash)) {
            // The resource is gone from its name and the registry; what is left has a work
            // name nobody can ask for, and the next start removes it.
            tracing::error!(path = %entry.base_dir.join(&trash).display(), error = %e,
                "cannot remove all of a deleted resource yet");
        }
        Ok(entry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(base: &Path) -> BTreeMap<String, std::sync::Arc<ResourceKind>> {
        let text = format!(
            "[[resource]]\nkind = \"ws\"\nbase_dir = \"{}\"\nmax_per_uid = 5\ntier = \"read_only\"\n",
            base.display()
        );
        warden_policy::Policy::load(&text, "t", &crate::settings::SystemDirectory)
            .unwrap()
            .policy
            .resources
    }

    fn me() -> Owner {
        let uid = warden_sys::users::effective_uid();
        Owner {
            uid,
            gid: warden_sys::users::effective_gid(),
            name: warden_sys::users::user_name(uid)
                .unwrap()
                .unwrap_or_else(|| "me".into()),
        }
    }

    /// Pins: a restart removes the work directories a crash left and drops entries whose
    /// directory never got its name, keeping the rest; the registry file is private.
    #[test]
    fn a_restart_finishes_what_a_crash_left() {
        let t = warden_testkit::safe_tempdir();
        let (state, base) = (t.path().join("state"), t.path().join("base"));
        std::fs::create_dir(&state).unwrap();
        let kinds = kinds(&base);
        let registry = Registry::open(&state, &kinds).unwrap();
        let kept = registry.create(&kinds["ws"], "kept", &me()).unwrap();
        registry.create(&kinds["ws"], "lost", &me()).unwrap();
        drop(registry);
        // A create cut off after its registry save, and a delete cut off before its removal.
        std::fs::remove_dir(base.join("lost")).unwrap();
        std::fs::create_dir_all(base.join(".warden-new-0011/inner")).unwrap();
        std::fs::create_dir_all(base.join(".warden-trash-0022/inner")).unwrap();
        let registry = Registry::open(&state, &kinds).unwrap();
        assert_eq!(registry.list(None, None), vec![kept]);
        let mut names = BaseDir::open(&base).unwrap().names().unwrap();
        names.sort();
        assert_eq!(names, vec!["kept".to_owned()]);
        let md = warden_sys::fs::owner_of(&state.join(FILE)).unwrap();
        assert_eq!(md.mode, 0o600);
        let saved: Saved = read_json(&state.join(FILE)).unwrap().unwrap();
        assert_eq!(saved.resources.len(), 1);
    }

    /// Pins: a registry that cannot be read stops the start instead of forgetting who owns what.
    #[test]
    fn an_unreadable_registry_is_an_error() {
        let t = warden_testkit::safe_tempdir();
        std::fs::write(t.path().join(FILE), "{not json").unwrap();
        let e = Registry::open(t.path(), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains(FILE), "{e}");
    }

    /// Pins: a delete that names an owner removes nothing when the resource has another one.
    #[test]
    fn a_delete_for_another_owner_removes_nothing() {
        let t = warden_testkit::safe_tempdir();
        let base = t.path().join("base");
        let kinds = kinds(&base);
        let registry = Registry::open(t.path(), &kinds).unwrap();
        let owner = me();
        registry.create(&kinds["ws"], "x", &owner).unwrap();
        let other = owner.uid.wrapping_add(1);
        assert!(matches!(
            registry.delete("ws", "x", Some(other)),
            Err(ResourceError::Missing)
        ));
        assert!(base.join("x").is_dir());
        registry.delete("ws", "x", Some(owner.uid)).unwrap();
        assert!(!base.join("x").exists());
    }
}
