//! `/metrics` in the Prometheus text exposition format (version 0.0.4), served on its own
//! listener (`--metrics-listen`, off by default) and never on the API's: links up, link
//! upgrades and enrollments by outcome, dispatches and host parts by state, request latencies
//! by route family, and the database pool. Every label value is one of a fixed set written
//! here, never a value a peer sent, so a client cannot grow the series or put text into them;
//! no machine id, site code, key or token is ever a label.
//!
//! Hand-written: the format is a few lines of text, the counters are atomics the handlers
//! already bump, and the counts of dispatches come from the database at scrape time.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// Enrollment outcomes, as the `outcome` label says them.
pub const ENROLL_OUTCOMES: &[&str] = &[
    "new",
    "reuse",
    "pending",
    "rejected",
    "site_conflict",
    "banned",
    "quarantined",
    "rate_limited",
    "busy",
    "bad_request",
    "error",
];

/// Route families, as the `family` label says them.
pub const FAMILIES: &[&str] = &[
    "enroll",
    "agent",
    "link",
    "auth",
    "sites",
    "machines",
    "dispatches",
    "events",
    "health",
    "openapi",
    "console",
    "other",
];

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// One family's latency histogram: counts per bucket (not cumulative), the count, the sum.
#[derive(Debug, Default)]
struct Histogram {
    buckets: [AtomicU64; 11],
    count: AtomicU64,
    sum_us: AtomicU64,
}

/// The counters this process keeps for `/metrics`.
#[derive(Debug)]
pub struct Metrics {
    enrollments: [AtomicU64; 11],
    latency: [Histogram; 12],
    /// Link upgrades refused for want of a live key (none, unknown, retired, banned or
    /// quarantined); the other outcomes are the link hub's own counters.
    pub link_refused_key: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            enrollments: Default::default(),
            latency: Default::default(),
            link_refused_key: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one enrollment with `outcome` (one of [`ENROLL_OUTCOMES`]; others count as
    /// `error`).
    pub fn enrollment(&self, outcome: &str) {
        let i = ENROLL_OUTCOMES
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(ENROLL_OUTCOMES.len() - 1);
        self.enrollments[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one request of `family` that took `seconds`.
    fn observe(&self, family: usize, seconds: f64) {
        let h = &self.latency[family];
        if let Some(b) = BUCKETS.iter().position(|le| seconds <= *le) {
            h.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        h.count.fetch_add(1, Ordering::Relaxed);
        h.sum_us
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// The family of a request path (an index into [`FAMILIES`]).
pub fn family(path: &str) -> usize {
    let name = match path.strip_prefix("/v1/") {
        None => "console",
        Some(rest) => {
            let first = rest.split('/').next().unwrap_or("");
            match first {
                "enroll" => "enroll",
                "agent" if rest.starts_with("agent/link") => "link",
                "agent" => "agent",
                "login" | "logout" | "session" | "tokens" => "auth",
                "sites" => "sites",
                "machines" => "machines",
                "dispatches" => "dispatches",
                "events" => "events",
                "health" => "health",
                "openapi.json" => "openapi",
                _ => "other",
            }
        }
    };
    FAMILIES.iter().position(|f| *f == name).unwrap_or(0)
}

/// Middleware on the API's router: times each request by its family.
pub async fn time_requests(
    State(state): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let family = family(req.uri().path());
    let began = Instant::now();
    let answer = next.run(req).await;
    state.metrics.observe(family, began.elapsed().as_secs_f64());
    answer
}

/// The router of the metrics listener: `GET /metrics` and nothing else.
pub fn router(state: Arc<AppState>) -> axum::Router {
    axum::Router::new()
        .route("/metrics", axum::routing::get(scrape))
        .fallback(|| async { (axum::http::StatusCode::NOT_FOUND, "only /metrics here\n") })
        .with_state(state)
}

async fn scrape(State(state): State<Arc<AppState>>) -> Response {
    let body = render(&state).await;
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response()
}

/// Writes a metric's `# HELP` and `# TYPE` lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub async fn render(state: &AppState) -> String {
    let mut out = String::new();
    let m = &state.metrics;
    let hub = &state.link;

    head(
        &mut out,
        "warden_links_connected",
        "gauge",
        "Agent links this process holds.",
    );
    let _ = writeln!(out, "warden_links_connected {}", hub.registry.len());

    head(
        &mut out,
        "warden_link_upgrades_total",
        "counter",
        "Link upgrade requests by outcome.",
    );
    let s = &hub.stats;
    for (outcome, n) in [
        ("accepted", s.upgrades.load(Ordering::Relaxed)),
        ("refused_rate", s.refused_rate.load(Ordering::Relaxed)),
        ("refused_full", s.refused_full.load(Ordering::Relaxed)),
        (
            "refused_duplicate",
            s.refused_duplicate.load(Ordering::Relaxed),
        ),
        ("refused_key", m.link_refused_key.load(Ordering::Relaxed)),
    ] {
        let _ = writeln!(
            out,
            "warden_link_upgrades_total{{outcome=\"{outcome}\"}} {n}"
        );
    }

    head(
        &mut out,
        "warden_enrollments_total",
        "counter",
        "Enrollment requests by outcome.",
    );
    for (outcome, n) in ENROLL_OUTCOMES.iter().zip(&m.enrollments) {
        let n = n.load(Ordering::Relaxed);
        let _ = writeln!(out, "warden_enrollments_total{{outcome=\"{outcome}\"}} {n}");
    }

    let up = match state.db.dispatch_counts().await {
        Ok(d) => match state.db.dispatch_host_counts().await {
            Ok(h) => Some((d, h)),
            Err(e) => {
                tracing::warn!(error = %e, "metrics: cannot count dispatch parts");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "metrics: cannot count dispatches");
            None
        }
    };
    head(
        &mut out,
        "warden_database_up",
        "gauge",
        "1 when the counts below could be read from the database, else 0.",
    );
    let _ = writeln!(out, "warden_database_up {}", u8::from(up.is_some()));
    if let Some((dispatches, parts)) = up {
        head(
            &mut out,
            "warden_dispatches",
            "gauge",
            "Dispatches in the database by state.",
        );
        for (st, n) in dispatches {
            let _ = writeln!(out, "warden_dispatches{{state=\"{}\"}} {n}", label(&st));
        }
        head(
            &mut out,
            "warden_dispatch_hosts",
            "gauge",
            "Dispatch host parts in the database by state.",
        );
        for (st, n) in parts {
            let _ = writeln!(out, "warden_dispatch_hosts{{state=\"{}\"}} {n}", label(&st));
        }
    }

    head(
        &mut out,
        "warden_http_request_duration_seconds",
        "histogram",
        "Time to answer an API request, by route family.",
    );
    for (family, h) in FAMILIES.iter().zip(&m.latency) {
        let mut cumulative = 0;
        for (le, b) in BUCKETS.iter().zip(&h.buckets) {
            cumulative += b.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "warden_http_request_duration_seconds_bucket{{family=\"{family}\",le=\"{le}\"}} {cumulative}"
            );
        }
        let count = h.count.load(Ordering::Relaxed);
        let sum = h.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "warden_http_request_duration_seconds_bucket{{family=\"{family}\",le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "warden_http_request_duration_seconds_sum{{family=\"{family}\"}} {sum}"
        );
        let _ = writeln!(
            out,
            "warden_http_request_duration_seconds_count{{family=\"{family}\"}} {count}"
        );
    }

    let pool = &state.db.pool;
    let (size, idle) = (pool.size(), pool.num_idle() as u32);
    head(
        &mut out,
        "warden_db_pool_connections",
        "gauge",
        "Database pool connections by state.",
    );
    let _ = writeln!(out, "warden_db_pool_connections{{state=\"idle\"}} {idle}");
    let _ = writeln!(
        out,
        "warden_db_pool_connections{{state=\"in_use\"}} {}",
        size.saturating_sub(idle)
    );
    head(
        &mut out,
        "warden_db_pool_size",
        "gauge",
        "Database pool connections open.",
    );
    let _ = writeln!(out, "warden_db_pool_size {size}");
    head(
        &mut out,
        "warden_db_pool_max",
        "gauge",
        "Database pool connections allowed.",
    );
    let _ = writeln!(
        out,
        "warden_db_pool_max {}",
        pool.options().get_max_connections()
    );
    out
}

/// A state as a label value: the database's states are fixed words, but anything else is
/// reduced to `[a-z_]` so the exposition stays valid.
fn label(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_lowercase() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins: paths map to their family; an unknown `/v1` path is `other`, never its own label.
    #[test]
    fn paths_fall_into_fixed_families() {
        let f = |p| FAMILIES[family(p)];
        assert_eq!(f("/v1/enroll"), "enroll");
        assert_eq!(f("/v1/agent/link"), "link");
        assert_eq!(f("/v1/agent/whoami"), "agent");
        assert_eq!(f("/v1/login"), "auth");
        assert_eq!(f("/v1/dispatches/d_1/hosts"), "dispatches");
        assert_eq!(f("/v1/no-such-thing-<script>"), "other");
        assert_eq!(f("/"), "console");
        assert_eq!(label("running"), "running");
        assert_eq!(label("a\"b\n"), "a_b_");
    }
}
