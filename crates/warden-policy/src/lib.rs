//! warden-policy: the configuration model (`warden.toml`) and the gate.
//!
//! Everything here is pure: no file, socket, clock or name-service access. Text comes in from the
//! daemon, names are resolved through a [`compile::Directory`] the daemon supplies, and the caller's
//! identity arrives as a [`gate::PeerIdentity`] that tests build by hand. That is what lets the
//! whole decision table be unit-tested without a daemon. No handler decides permissions on its
//! own: [`compile::Policy::authorize`] is the only place a request is judged.

pub mod actions;
pub mod compile;
pub mod config;
pub mod dropin;
pub mod endpoints;
pub mod fleet;
pub mod gate;
pub mod resources;
pub mod tiers;

pub use actions::{ActionSpec, Checked, ParamError};
pub use compile::{
    AuditSettings, Directory, JobSettings, ListenerPolicy, Loaded, LoadedFiles, Policy,
};
pub use config::{ConfigError, Problem};
pub use dropin::{ConfigErrors, Located, Source};
pub use endpoints::EndpointSpec;
pub use fleet::{DiskSerial, FleetPolicy, IdentitySources};
pub use gate::{Decision, ExeDigest, Lockdown, MountNs, PeerIdentity, Runtime};
pub use resources::ResourceKind;
pub use tiers::Effective;
