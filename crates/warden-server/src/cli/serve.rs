//! `warden-server serve`: builds the [`Config`] from the flags, starts the server, tells
//! systemd when it is ready and when it stops, and on SIGTERM or SIGINT stops gracefully
//! (requests in flight may finish until the drain deadline). On SIGHUP it reads the TLS
//! certificate and key again; a pair it cannot use is logged and the one in use stays.

use std::path::PathBuf;
use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};

use super::ServeArgs;
use crate::Config;

/// Tells systemd (when it runs the server as `Type=notify`) how the server is doing.
fn notify(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "sd_notify failed");
    }
}

/// SIGHUP: the certificate and key read again, or why not (the pair in use then stays).
async fn reload_tls(running: &crate::Running, config: &Config) {
    let Some((cert, key)) = &config.tls else {
        tracing::info!(
            event = "tls.reload",
            "SIGHUP: no TLS configured, nothing to reload"
        );
        return;
    };
    match running.reload_tls().await {
        Ok(()) => tracing::info!(
            event = "tls.reload",
            cert = %cert.display(),
            key = %key.display(),
            "SIGHUP: TLS certificate and key reloaded; new connections get them"
        ),
        Err(e) => tracing::warn!(
            event = "tls.reload_failed",
            cert = %cert.display(),
            key = %key.display(),
            error = %e,
            "SIGHUP: cannot use the new TLS certificate and key; keeping the ones in use"
        ),
    }
}

/// Serves until the server fails or a signal stops it. With `json`, once it listens it prints
/// one line on stdout, `{"listen", "metrics_listen", "tls"}` (for scripts that start it on port
/// 0); its log stays on stderr.
pub async fn run(
    data_dir: PathBuf,
    database_url: Option<String>,
    args: ServeArgs,
    json: bool,
) -> anyhow::Result<()> {
    let ServeArgs {
        listen,
        trusted_proxies,
        tls_cert,
        tls_key,
        header_timeout_ms,
        body_timeout_ms,
        idle_timeout_ms,
        max_connections,
        drain_timeout_ms,
        link,
        dispatch_offline_wait,
        server_name,
        metrics_listen,
    } = args;
    // In place before anything is served, so a stop at any moment is a graceful one.
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut config = Config::new(data_dir);
    config.database_url = database_url;
    config.listen = listen;
    config.trusted_proxies = trusted_proxies;
    config.tls = tls_cert.zip(tls_key);
    config.limits = crate::serve::Limits {
        header_timeout: Duration::from_millis(header_timeout_ms),
        body_timeout: Duration::from_millis(body_timeout_ms),
        idle_timeout: Duration::from_millis(idle_timeout_ms),
        max_connections: usize::try_from(max_connections).unwrap_or(usize::MAX),
        drain_timeout: Duration::from_millis(drain_timeout_ms),
    };
    config.link = link.config();
    config.dispatch.offline_wait = dispatch_offline_wait;
    config.metrics_listen = metrics_listen;
    if let Some(name) = server_name {
        anyhow::ensure!(
            !name.is_empty() && name.len() <= 253 && name.bytes().all(|b| b.is_ascii_graphic()),
            "--server-name must be 1 to 253 printable ASCII characters"
        );
        config.dispatch.server_name = name;
    }
    let mut running = crate::start(&config).await?;
    if let Some(at) = running.metrics_addr {
        tracing::info!(metrics_addr = %at, "serving /metrics");
    }
    tracing::info!(listen = %running.addr, tls = config.tls.is_some(), "warden-server serving");
    if json {
        println!(
            "{}",
            serde_json::json!({
                "listen": running.addr.to_string(),
                "metrics_listen": running.metrics_addr.map(|a| a.to_string()),
                "tls": config.tls.is_some(),
            })
        );
    }
    notify(&[sd_notify::NotifyState::Ready]);
    let signal = loop {
        tokio::select! {
            r = running.wait() => return Ok(r?),
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = hup.recv() => reload_tls(&running, &config).await,
        }
    };
    notify(&[sd_notify::NotifyState::Stopping]);
    tracing::info!(
        signal,
        drain_ms = drain_timeout_ms,
        "stopping: finishing the requests in flight"
    );
    running.stop().await?;
    tracing::info!("stopped");
    Ok(())
}
