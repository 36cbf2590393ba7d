//! warden-server: where hosts enroll and operators work. Sites and their rotatable enrollment
//! keys, the enrollment decision, machine credentials and the audit trail, in SQLite (one file,
//! no setup) or PostgreSQL.
//!
//! Key material is never stored: enrollment keys as Argon2id hashes, machine keys as SHA-256.
//! This crate is never linked into the root daemon.
//!
//! Where things are: a connection enters in [`serve`] (deadlines, the cap, the drain), its
//! request is routed by [`http`] (one file per endpoint family, every error an
//! [`http::ApiError`]), judged by [`enroll`] or [`auth`], remote dispatch fanned out by
//! [`dispatch`], and written by [`store`] (every SQL
//! statement, the pool and migrations in [`store::db`]). [`state::AppState`] is what the
//! handlers share; [`cli`] is the command line. The wire types are `warden_fleet_proto`'s.

pub mod auth;
pub mod budget;
pub mod cli;
pub mod dispatch;
pub mod enroll;
pub mod http;
pub mod keys;
pub mod limiter;
pub mod link;
pub mod metrics;
pub mod proxy;
pub mod serve;
pub mod state;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use proxy::Cidr;
pub use state::AppState;

use keys::Verifier;

/// Waiting verifications the pool queues past its busy slots.
pub const VERIFY_QUEUE: usize = 64;
/// Argon2id slots kept for logins alone.
pub const LOGIN_VERIFY_SLOTS: usize = 2;
/// Waiting login verifications queued past the login slots.
pub const LOGIN_VERIFY_QUEUE: usize = 16;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    pub trusted_proxies: Vec<Cidr>,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Concurrent Argon2id verifications of enrollments (default: the number of CPUs).
    pub verify_slots: usize,
    pub verify_queue: usize,
    /// Argon2id verifications of logins, on slots of their own.
    pub login_verify_slots: usize,
    pub login_verify_queue: usize,
    /// How long each login waits first for a name that keeps failing.
    pub login_slowdown: Duration,
    /// Deadlines and the connection cap.
    pub limits: serve::Limits,
    /// The window of the audit trail's budget for refusals.
    pub event_window: Duration,
    /// The agent link's timing and bounds.
    pub link: link::LinkConfig,
    /// Remote dispatch's engine.
    pub dispatch: dispatch::DispatchConfig,
    /// Where `/metrics` is served (plain HTTP, no login): off unless set.
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    pub fn new(data_dir: PathBuf) -> Config {
        Config {
            data_dir,
            database_url: None,
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            trusted_proxies: Vec::new(),
            tls: None,
            verify_slots: std::thread::available_parallelism().map_or(2, usize::from),
            verify_queue: VERIFY_QUEUE,
            login_verify_slots: LOGIN_VERIFY_SLOTS,
            login_verify_queue: LOGIN_VERIFY_QUEUE,
            login_slowdown: Duration::from_secs(1),
            limits: serve::Limits::default(),
            event_window: budget::WINDOW,
            link: link::LinkConfig::default(),
            dispatch: dispatch::DispatchConfig::default(),
            metrics_listen: None,
        }
    }
}

/// A server bound and serving, for tests and the binary.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// The metrics listener's stop and task.
    metrics: Option<(
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    )>,
    pub state: Arc<AppState>,
    /// The certificate and key served, when TLS is on.
    tls: Option<serve::Tls>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    flusher: tokio::task::JoinHandle<()>,
    /// The link's wheel and database loops.
    link_tasks: (tokio::task::JoinHandle<()>, tokio::task::JoinHandle<()>),
    /// The dispatch engine's task.
    engine: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish (cutting what is left when the drain
    /// deadline passes), tells every linked agent when to come back (spread out) and closes its
    /// link, writes what the audit budget only counted, and returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some((tx, task)) = self.metrics.take() {
            let _ = tx.send(());
            let _ = task.await;
        }
        let served = (&mut self.task).await.unwrap_or(Ok(()));
        self.engine.abort();
        self.state.link.stop().await;
        self.link_tasks.0.abort();
        self.link_tasks.1.abort();
        self.flusher.abort();
        self.state.budget.flush(&self.state.db).await;
        served
    }

    /// Reads the TLS certificate and key files again (SIGHUP): new connections get the new
    /// pair; connections already open are unaffected. A pair that cannot be used is refused
    /// and the one in use stays. Without TLS there is nothing to do.
    pub async fn reload_tls(&self) -> std::io::Result<()> {
        match &self.tls {
            None => Ok(()),
            Some(tls) => tls.reload().await,
        }
    }

    /// Resolves when the server stops on its own (it does not, unless it fails).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        (&mut self.task).await.unwrap_or(Ok(()))
    }
}

/// Opens the database, binds `config.listen` and serves.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let file = config.data_dir.join(store::SQLITE_FILE);
    let fresh = config.database_url.is_none() && !file.exists();
    let db = store::Db::open(&config.data_dir, config.database_url.as_deref()).await?;
    if fresh {
        tracing::info!(database = %file.display(), "no database here yet: created a new one");
    }
    let signing = auth::SigningKey::load_or_create(&db).await?;
    let mut link_config = config.link.clone();
    link_config.max_links = serve::fitted_max_links(
        link_config.max_links,
        serve::fitted_max_connections(&config.limits),
    );
    let hub = link::Hub::new(link_config, db.clone(), signing.clone());
    let link_tasks = link::watch::spawn(&hub);
    let engine = dispatch::Engine::new(Arc::clone(&hub), db.clone(), config.dispatch.clone());
    let engine_task = engine.spawn();
    let capacity = limiter::MAX_KEYS;
    let state = Arc::new(AppState {
        db,
        verifier: Verifier::new(config.verify_slots, config.verify_queue)?,
        login_verifier: Verifier::new(config.login_verify_slots, config.login_verify_queue)?,
        limiter: limiter::Limiter::default(),
        enroll_addr_limiter: limiter::Limiter::new(limiter::ADDRESS_FAILURES, capacity),
        login_limiter: limiter::Limiter::default(),
        login_addr_limiter: limiter::Limiter::default(),
        login_name_failures: limiter::Limiter::new(u32::MAX, capacity),
        login_slowdown: config.login_slowdown,
        budget: budget::EventBudget::new(budget::PER_WINDOW, config.event_window),
        signing,
        trusted_proxies: config.trusted_proxies.clone(),
        tls: config.tls.is_some(),
        body_timeout: config.limits.body_timeout,
        link: hub,
        dispatch: engine,
        metrics: metrics::Metrics::default(),
    });
    let mut limits = config.limits;
    limits.max_connections = serve::fitted_max_connections(&limits);
    let tls = match &config.tls {
        None => None,
        Some((cert, key)) => Some(serve::Tls::load(cert, key).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot use {} and {} for TLS: {e}",
                cert.display(),
                key.display()
            )
        })?),
    };
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = http::router(Arc::clone(&state));
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let acceptor = tls.as_ref().map(|t| t.acceptor(&limits));
    let task = tokio::spawn(serve::serve(listener, acceptor, app, limits, rx));
    let (metrics_addr, metrics_stop, metrics_task) = match config.metrics_listen {
        None => (None, None, None),
        Some(at) => {
            let listener = tokio::net::TcpListener::bind(at).await?;
            let addr = listener.local_addr()?;
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let limits = serve::Limits {
                max_connections: 16,
                ..limits
            };
            let router = metrics::router(Arc::clone(&state));
            let task = tokio::spawn(serve::serve(listener, None, router, limits, rx));
            (Some(addr), Some(tx), Some(task))
        }
    };
    let flusher = tokio::spawn({
        let state = Arc::clone(&state);
        async move {
            let mut tick =
                tokio::time::interval(state.budget.window.max(Duration::from_millis(100)));
            tick.tick().await;
            loop {
                tick.tick().await;
                state.budget.flush(&state.db).await;
            }
        }
    });
    Ok(Running {
        addr,
        metrics_addr,
        metrics: metrics_stop.zip(metrics_task),
        state,
        tls,
        stop: Some(tx),
        task,
        flusher,
        link_tasks,
        engine: engine_task,
    })
}
