//! What a daemon runs with: a policy compiled from `/etc/warden/warden.toml` (or the file named
//! by `--config`), the built-in default when the default file is absent, or the demo policy of
//! `--dev`; plus the overrides given on the command line. Reading files and resolving names
//! happens here so that `warden-policy` stays pure: the main file and the drop-ins beside it
//! (`warden.d/*.toml`) are opened here, and each must be root's (or the daemon user's) and
//! writable by no one else before its text is read.

use std::io;
use std::path::{Path, PathBuf};

use warden_policy::{ConfigErrors, Directory, Located, Policy, Problem, Source};
use warden_proto::messages::DaemonMode;
use warden_proto::{Gid, Uid};
use warden_sys::activation::ActivatedListener;

use crate::identity::PidfdSource;

mod dev;
mod dropin;
mod risks;

use dev::dev_config;
pub use dropin::DROPIN_DIR;
pub use risks::{Risk, risks};

/// The drop-in directory of the configuration file `config`.
pub fn dropin_dir(config: &Path) -> PathBuf {
    dropin::dir_of(config)
}

/// The configuration file read when `--config` is not given.
pub const DEFAULT_CONFIG: &str = "/etc/warden/warden.toml";

/// Everything a [`crate::Daemon`] needs to start.
#[derive(Debug)]
pub struct Settings {
    pub policy: Policy,
    pub mode: DaemonMode,
    /// Where the policy came from, for logs and `check-config`.
    pub origin: String,
    /// Problems that do not stop the daemon (e.g. a tier mapped to a group that does not exist),
    /// each with the file it is in.
    pub warnings: Vec<Located>,
    /// The drop-in files read, in the order they were read.
    pub dropins: Vec<PathBuf>,
    /// Besides root, the one uid allowed to own the directories above a socket: the daemon's own.
    pub trusted_uid: u32,
    /// Listening sockets passed in by systemd, matched to listeners by path.
    pub activated: Vec<ActivatedListener>,
    pub(crate) pidfd_source: PidfdSource,
    /// Whether reloads are announced to systemd (`RELOADING=1`, `READY=1`): the `wardend`
    /// binary's choice; a daemon embedded in another process (tests) stays quiet.
    pub systemd_notify: bool,
    /// The file the policy was read from, for reloading it; `None` for built-in ones. A system
    /// daemon keeps its default path here even when that file is absent (its drop-ins are read
    /// beside it, and a reload reads both again).
    pub config_path: Option<PathBuf>,
    /// Whether `config_path` was named on the command line (so must exist).
    pub config_explicit: bool,
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    /// A configuration file (or the drop-in directory) that someone besides root could change.
    #[error("{path}: refused: {why}")]
    Unsafe { path: PathBuf, why: String },
    // Transparent: with `{0}` and a source, `{:#}` would print every problem twice.
    #[error(transparent)]
    Config(#[from] ConfigErrors),
    #[error("cannot find the current directory: {0}")]
    CurrentDir(io::Error),
}

/// Name look-ups through the system's name service (`getgrnam_r`, `getpwnam_r`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemDirectory;

impl Directory for SystemDirectory {
    fn group_gid(&self, name: &str) -> io::Result<Option<Gid>> {
        Ok(warden_sys::users::group_by_name(name)?.map(Gid))
    }

    fn user(&self, name: &str) -> io::Result<Option<(Uid, Gid)>> {
        Ok(warden_sys::users::user_by_name(name)?.map(|(uid, gid)| (Uid(uid), Gid(gid))))
    }
}

impl Settings {
    /// Settings from configuration text; `origin` labels problems.
    pub fn from_toml(
        text: &str,
        origin: &str,
        mode: DaemonMode,
    ) -> Result<Settings, SettingsError> {
        Self::from_files(Source { origin, text }, &[], mode)
    }

    /// Settings from a main file's text and its drop-ins' (in the order they were read).
    fn from_files(
        main: Source<'_>,
        dropins: &[Source<'_>],
        mode: DaemonMode,
    ) -> Result<Settings, SettingsError> {
        let loaded = Policy::load_with_dropins(main, dropins, &SystemDirectory)?;
        let mut warnings = loaded.warnings;
        // A risk of an action is reported at the action's declaration, in whichever file.
        warnings.extend(risks(&loaded.policy).into_iter().map(|risk| {
            let at = risk.action.and_then(|a| loaded.declared.get(a.as_str()));
            Located {
                origin: at
                    .map_or(main.origin, |(origin, _)| origin.as_str())
                    .to_owned(),
                problem: Problem {
                    line: at.map(|(_, line)| *line),
                    column: None,
                    message: risk.message,
                },
            }
        }));
        Ok(Settings {
            policy: loaded.policy,
            mode,
            origin: main.origin.to_owned(),
            warnings,
            dropins: Vec::new(),
            trusted_uid: warden_sys::users::effective_uid(),
            activated: Vec::new(),
            pidfd_source: PidfdSource::Socket,
            systemd_notify: false,
            config_path: None,
            config_explicit: false,
        })
    }

    /// Settings of a system daemon from `path` and the drop-ins in `warden.d` beside it. When
    /// `path` was not given explicitly and does not exist, the built-in default applies (one
    /// socket anyone may open, only root is admin), with the drop-ins still read.
    pub fn system(path: &Path, explicit: bool) -> Result<Settings, SettingsError> {
        let trusted = warden_sys::users::effective_uid();
        let dropin_paths = dropin::list(&dropin::dir_of(path), trusted)?;
        let mut texts = Vec::with_capacity(dropin_paths.len());
        for p in &dropin_paths {
            texts.push((p.display().to_string(), dropin::read_checked(p, trusted)?));
        }
        let dropins: Vec<Source<'_>> = texts
            .iter()
            .map(|(origin, text)| Source { origin, text })
            .collect();
        let origin = path.display().to_string();
        let mut s = match dropin::read_checked(path, trusted) {
            Ok(text) => {
                let mut s = Self::from_files(
                    Source {
                        origin: &origin,
                        text: &text,
                    },
                    &dropins,
                    DaemonMode::System,
                )?;
                s.config_path = Some(path.to_owned());
                s
            }
            Err(SettingsError::Read { source, .. })
                if source.kind() == io::ErrorKind::NotFound && !explicit =>
            {
                let origin = "built-in default configuration";
                let mut s =
                    Self::from_files(Source { origin, text: "" }, &dropins, DaemonMode::System)?;
                s.warnings.push(Located {
                    origin: origin.to_owned(),
                    problem: Problem {
                        line: None,
                        column: None,
                        message: format!(
                            "{} does not exist; using the built-in default (only root is admin)",
                            path.display()
                        ),
                    },
                });
                s.config_path = Some(path.to_owned());
                s
            }
            Err(e) => return Err(e),
        };
        s.dropins = dropin_paths;
        s.config_explicit = explicit;
        Ok(s)
    }

    /// Settings of `wardend --dev`: the demo policy, a private socket (mode 0600) under the
    /// user's runtime directory, and the user running it as admin.
    pub fn dev(
        socket: Option<PathBuf>,
        state_dir: Option<PathBuf>,
    ) -> Result<Settings, SettingsError> {
        let socket = match socket {
            Some(p) => absolute(p)?,
            None => warden_proto::paths::dev_socket(),
        };
        let runtime = socket
            .parent()
            .map_or_else(warden_proto::paths::dev_runtime_dir, Path::to_path_buf);
        let state = match state_dir {
            Some(p) => absolute(p)?,
            None => runtime.join("state"),
        };
        // The fleet agent of a try-out (`warden-agent --dev`) runs as the same user; root may
        // not be the fleet's agent, so as root the demo has no fleet.
        let agent = match warden_sys::users::effective_uid() {
            0 => None,
            uid => warden_sys::users::user_name(uid).ok().flatten(),
        };
        let text = dev_config(&runtime, &state, &socket, agent.as_deref());
        let mut s = Self::from_toml(&text, "built-in dev configuration", DaemonMode::Dev)?;
        s.policy.grant_dev_admin(Uid(s.trusted_uid));
        Ok(s)
    }

    /// `--socket PATH`: replaces the first listener's path.
    pub fn override_socket(&mut self, path: PathBuf) -> Result<(), SettingsError> {
        let path = absolute(path)?;
        if let Some(first) = self.policy.listeners.first_mut() {
            first.path = path;
        }
        Ok(())
    }

    /// `--state-dir DIR`.
    pub fn override_state_dir(&mut self, dir: PathBuf) -> Result<(), SettingsError> {
        self.policy.state_dir = absolute(dir)?;
        Ok(())
    }

    /// Makes identification use `pidfd_open` plus re-checks instead of `SO_PEERPIDFD`, as on
    /// kernels before 6.5. For tests of that path.
    pub fn force_pidfd_open_fallback(&mut self) {
        self.pidfd_source = PidfdSource::PidfdOpen;
    }
}

fn absolute(p: PathBuf) -> Result<PathBuf, SettingsError> {
    if p.is_absolute() {
        Ok(p)
    } else {
        Ok(std::env::current_dir()
            .map_err(SettingsError::CurrentDir)?
            .join(p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_settings_put_a_private_socket_in_the_runtime_dir_and_make_the_user_admin() {
        let s = Settings::dev(Some("/run/user/4242/warden/warden.sock".into()), None).unwrap();
        assert_eq!(s.mode, DaemonMode::Dev);
        let l = &s.policy.listeners[0];
        assert_eq!(l.path, PathBuf::from("/run/user/4242/warden/warden.sock"));
        assert_eq!(l.mode, 0o600);
        assert_eq!(s.policy.runtime_dir, PathBuf::from("/run/user/4242/warden"));
        assert_eq!(
            s.policy.state_dir,
            PathBuf::from("/run/user/4242/warden/state")
        );
        assert_eq!(
            s.policy.tiers.dev_admin,
            Some(Uid(warden_sys::users::effective_uid()))
        );
        assert_eq!(s.policy.ops.get("storage"), Some(&true));
        let names: Vec<&str> = s.policy.actions.keys().map(|a| a.as_str()).collect();
        assert_eq!(names, ["demo-commit", "demo-progress", "disk-usage"]);
        assert_eq!(
            s.policy.resources["workspace"].base_dir,
            PathBuf::from("/run/user/4242/warden/state/workspaces")
        );
        let commit = s
            .policy
            .actions
            .values()
            .find(|a| a.name.as_str() == "demo-commit")
            .unwrap();
        assert!(commit.rollback.is_some() && commit.mutating);
    }

    /// Pins: check-config's risk warnings: an open socket reaching past read_only, a mutating
    /// action any viewer may start, an hour-long timeout, a loader variable kept into a root
    /// job, a path prefix others can write. A careful configuration gets none.
    #[test]
    fn risky_configurations_are_named() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let risky = format!(
            r#"[tiers.users]
root = "operator"
[[listener]]
path = "/run/w/a.sock"
mode = "0666"
[[action]]
name = "wipe"
argv = ["/bin/rm", "-f", "{{path}}"]
tier = "read_only"
env_keep = ["LD_PRELOAD"]
[action.params.path]
type = "path"
under = ["{}"]
"#,
            open.display()
        );
        let s = Settings::from_toml(&risky, "t", DaemonMode::System).unwrap();
        let all: Vec<&str> = s
            .warnings
            .iter()
            .map(|w| w.problem.message.as_str())
            .collect();
        let said = |what: &str| all.iter().any(|m| m.contains(what));
        assert!(said("may be opened by every user"), "{all:?}");
        assert!(said("changes state and any read_only caller"), "{all:?}");
        assert!(said("may run for 3600 s"), "{all:?}");
        assert!(said("keeps `LD_PRELOAD`"), "{all:?}");
        assert!(said("which a non-root user can write"), "{all:?}");
        let careful = "[[listener]]\npath = \"/run/w/a.sock\"\nmode = \"0660\"\n\
                       [[action]]\nname = \"look\"\nargv = [\"/bin/true\"]\n\
                       tier = \"read_only\"\nmutating = false\ntimeout_s = 30\n";
        let s = Settings::from_toml(careful, "t", DaemonMode::System).unwrap();
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    /// Pins: run by a user with a name, the demo turns the fleet on with that user as its agent
    /// and offers the demo actions to it (`remote = true`); run by root, it has no fleet.
    #[test]
    fn the_dev_demo_offers_its_actions_to_an_agent_running_as_the_same_user() {
        let dir = Path::new("/tmp/w");
        let (uid, _) = warden_sys::users::user_by_name("nobody")
            .unwrap()
            .expect("a `nobody` user");
        let text = dev_config(dir, &dir.join("s"), &dir.join("w.sock"), Some("nobody"));
        let s = Settings::from_toml(&text, "dev", DaemonMode::Dev).unwrap();
        assert_eq!(s.policy.fleet.agent_uid(), Some(Uid(uid)));
        let remote: Vec<&str> = s
            .policy
            .actions
            .values()
            .filter(|a| a.remote)
            .map(|a| a.name.as_str())
            .collect();
        assert_eq!(remote, ["demo-commit", "demo-progress"]);
        let text = dev_config(dir, &dir.join("s"), &dir.join("w.sock"), None);
        let s = Settings::from_toml(&text, "dev", DaemonMode::Dev).unwrap();
        assert_eq!(s.policy.fleet.agent_uid(), None);
    }

    #[test]
    fn paths_with_quotes_survive_the_dev_config() {
        let s = Settings::dev(
            Some("/tmp/we\"ird\\dir/w.sock".into()),
            Some("/tmp/s".into()),
        )
        .unwrap();
        assert_eq!(
            s.policy.listeners[0].path,
            PathBuf::from("/tmp/we\"ird\\dir/w.sock")
        );
        // Braces in the state directory are literal text in the demo actions' argv.
        let s = Settings::dev(Some("/tmp/w.sock".into()), Some("/tmp/{odd}".into())).unwrap();
        let commit = &s
            .policy
            .actions
            .values()
            .find(|a| a.name.as_str() == "demo-commit");
        let rollback = commit.unwrap().rollback.as_ref().unwrap();
        let values = [("name".to_owned(), "x".to_owned())].into();
        assert_eq!(
            warden_policy::actions::render(rollback, &values),
            ["/bin/rm", "-f", "/tmp/{odd}/demo/x"]
        );
    }

    #[test]
    fn a_missing_default_file_means_the_built_in_default_but_a_named_one_is_an_error() {
        let missing = Path::new("/nonexistent/warden.toml");
        let s = Settings::system(missing, false).unwrap();
        assert_eq!(
            s.policy.listeners[0].path,
            PathBuf::from("/run/warden/warden.sock")
        );
        assert_eq!(s.warnings.len(), 1);
        assert!(matches!(
            Settings::system(missing, true),
            Err(SettingsError::Read { .. })
        ));
    }

    /// Pins: without its (default) main file, a daemon still reads the drop-ins beside where it
    /// would be, and keeps that path so a reload reads them again.
    #[test]
    fn drop_ins_apply_beside_a_missing_default_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join(DROPIN_DIR);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        let f = d.join("a.toml");
        std::fs::write(
            &f,
            "[[action]]\nname = \"x\"\nargv = [\"/bin/true\"]\ntimeout_s = 5\n",
        )
        .unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let main = dir.path().join("warden.toml");
        let s = Settings::system(&main, false).unwrap();
        assert!(s.policy.actions.keys().any(|a| a.as_str() == "x"));
        assert_eq!(s.dropins, [f]);
        assert_eq!(s.config_path.as_deref(), Some(main.as_path()));
        assert!(!s.config_explicit);
        assert!(matches!(
            Settings::system(&main, true),
            Err(SettingsError::Read { .. })
        ));
    }

    #[test]
    fn socket_override_replaces_the_first_listener_only() {
        let mut s = Settings::from_toml(
            "[[listener]]\npath = \"/run/a.sock\"\n[[listener]]\npath = \"/run/b.sock\"\n",
            "t",
            DaemonMode::System,
        )
        .unwrap();
        s.override_socket("/run/c.sock".into()).unwrap();
        let paths: Vec<_> = s.policy.listeners.iter().map(|l| l.path.clone()).collect();
        assert_eq!(
            paths,
            [PathBuf::from("/run/c.sock"), PathBuf::from("/run/b.sock")]
        );
    }
}
