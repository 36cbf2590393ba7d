//! warden-server: where hosts enroll and operators work. Sites and their rotatable enrollment
//! keys, the enrollment decision, machine credentials and the audit trail, in SQLite (one file,
//! no setup) or PostgreSQL.
//!
//! Key material is never stored: enrollment keys as Argon2id hashes, machine keys as SHA-256.
//! This crate is never linked into the root daemon.

pub mod admin;
pub mod api;
pub mod auth;
pub mod db;
pub mod enroll;
pub mod keys;
pub mod limiter;
pub mod store;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use api::{AppState, Cidr};
use keys::Verifier;

/// Waiting verifications the pool queues past its busy slots.
pub const VERIFY_QUEUE: usize = 64;

/// How a server runs.
#[derive(Debug, Clone)]
pub struct Config {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub listen: SocketAddr,
    pub trusted_proxies: Vec<Cidr>,
    /// PEM certificate chain and private key: serve HTTPS instead of HTTP.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Concurrent Argon2id verifications (default: the number of CPUs).
    pub verify_slots: usize,
    pub verify_queue: usize,
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
        }
    }
}

/// A server bound and serving, for tests and the binary.
#[derive(Debug)]
pub struct Running {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Running {
    /// Stops accepting, lets requests in flight finish, and returns.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap_or(Ok(()))
    }

    /// Resolves when the server stops on its own (it does not, unless it fails).
    pub async fn wait(&mut self) -> std::io::Result<()> {
        (&mut self.task).await.unwrap_or(Ok(()))
    }
}

/// Opens the database, binds `config.listen` and serves.
pub async fn start(config: &Config) -> anyhow::Result<Running> {
    let db = db::Db::open(&config.data_dir, config.database_url.as_deref()).await?;
    let state = Arc::new(AppState {
        db,
        verifier: Verifier::new(config.verify_slots, config.verify_queue)?,
        limiter: limiter::Limiter::default(),
        login_limiter: limiter::Limiter::default(),
        signing: auth::SigningKey::load_or_create(&config.data_dir)?,
        trusted_proxies: config.trusted_proxies.clone(),
    });
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let app = api::router(Arc::clone(&state)).into_make_service_with_connect_info::<SocketAddr>();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = match &config.tls {
        None => tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        }),
        Some((cert, key)) => {
            let tls = axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot use {} and {} for TLS: {e}",
                        cert.display(),
                        key.display()
                    )
                })?;
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                let _ = rx.await;
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(10)));
            });
            let listener = listener.into_std()?;
            tokio::spawn(async move {
                axum_server::from_tcp_rustls(listener, tls)?
                    .handle(handle)
                    .serve(app)
                    .await
            })
        }
    };
    Ok(Running {
        addr,
        state,
        stop: Some(tx),
        task,
    })
}
