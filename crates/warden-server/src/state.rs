//! What every request handler shares: the database, the Argon2id pools, the failure limiters,
//! the audit budget, the session signing key and the server's settings. Built once by
//! [`crate::start`]; it holds no HTTP types, so the HTTP routes and the link both sit above it
//! and neither imports the other.

use std::time::Duration;

use crate::auth::SigningKey;
use crate::budget::EventBudget;
use crate::keys::Verifier;
use crate::limiter::Limiter;
use crate::proxy::Cidr;
use crate::store::Db;

/// What every handler shares.
#[derive(Debug)]
pub struct AppState {
    pub db: Db,
    /// Argon2id slots for enrollments.
    pub verifier: Verifier,
    /// Argon2id slots of their own for logins, so an enrollment flood cannot take them.
    pub login_verifier: Verifier,
    /// Failed enrollments per (site code, address).
    pub limiter: Limiter,
    /// Failed enrollments per address, across site codes.
    pub enroll_addr_limiter: Limiter,
    /// Failed logins per (operator name, address): the lockout for a name.
    pub login_limiter: Limiter,
    /// Failed logins per address, across names.
    pub login_addr_limiter: Limiter,
    /// Failed logins per name from anywhere: never a lockout, only a slowdown.
    pub login_name_failures: Limiter,
    /// How long each login for a name that keeps failing waits before it is checked.
    pub login_slowdown: Duration,
    /// Refusals recorded one by one per window.
    pub budget: EventBudget,
    pub signing: SigningKey,
    pub trusted_proxies: Vec<Cidr>,
    /// Whether this server serves TLS: the console's cookie is then `Secure` and every answer
    /// carries `Strict-Transport-Security`.
    pub tls: bool,
    /// Time a request body has to arrive.
    pub body_timeout: Duration,
    /// The agent links this process holds.
    pub link: std::sync::Arc<crate::link::Hub>,
    /// Remote dispatch's fan-out engine.
    pub dispatch: std::sync::Arc<crate::dispatch::Engine>,
    /// The counters `/metrics` shows.
    pub metrics: crate::metrics::Metrics,
}
