//! Serving connections: HTTP/1.1 over plain TCP or TLS, with the bounds that keep one client
//! from holding the server for everyone else. A cap on concurrent connections (past it a new
//! connection is closed at once, so the listen queue keeps draining); a deadline for a request's
//! head (and for the TLS handshake before it), which is also how long a kept-alive connection
//! may wait for its next request; a deadline for its body; and an idle deadline for a
//! connection on which nothing moves while no request is being handled (a client that does not
//! read its answer). At stop: no new connections, every connection finishes the request it is in
//! and closes, and whatever is still open when the drain deadline passes is cut.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum_server::accept::Accept;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, oneshot, watch};
use tokio::task::JoinSet;
use tower_service::Service;

/// The bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time for a request's head (request line and headers) to arrive, counted from when the
    /// connection is ready for it; also the TLS handshake's deadline.
    pub header_timeout: Duration,
    /// Time for a request's body to arrive once its head has.
    pub body_timeout: Duration,
    /// A connection on which no byte moves for this long, while no request is being handled,
    /// is closed.
    pub idle_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
    /// How long a stop waits for requests in flight before it cuts them.
    pub drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 4096,
            drain_timeout: Duration::from_secs(10),
        }
    }
}

/// File descriptors kept back from the connection cap for the database, the log and the rest.
const FD_RESERVE: u64 = 64;

/// `limits.max_connections`, lowered to what this process's open-file limit allows (with a
/// reserve), so that the cap, not `EMFILE`, is what a flood of connections meets.
pub fn fitted_max_connections(limits: &Limits) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    match soft {
        Some(n) if n.saturating_sub(FD_RESERVE) < limits.max_connections as u64 => {
            let fitted = usize::try_from(n.saturating_sub(FD_RESERVE))
                .unwrap_or(1)
                .max(1);
            tracing::warn!(
                wanted = limits.max_connections,
                allowed = fitted,
                open_file_limit = n,
                "the open-file limit is below the connection cap; raise it (LimitNOFILE)"
            );
            fitted
        }
        _ => limits.max_connections,
    }
}

/// `max_links`, lowered so that the links and the connection cap together fit this process's
/// open-file limit (with the reserve): a link holds its descriptor after it leaves the
/// connection cap, so it needs room of its own.
pub fn fitted_max_links(max_links: usize, max_connections: usize) -> usize {
    let soft = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    let Some(n) = soft else { return max_links };
    let room = n.saturating_sub(FD_RESERVE + max_connections as u64);
    if room >= max_links as u64 {
        return max_links;
    }
    let fitted = usize::try_from(room).unwrap_or(1).max(1);
    tracing::warn!(
        wanted = max_links,
        allowed = fitted,
        open_file_limit = n,
        "the open-file limit leaves room for fewer links than --link-max; raise it (LimitNOFILE)"
    );
    fitted
}

/// The clock every connection's idle deadline counts on: milliseconds since the server began.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
        })
    }

    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long until the connection counts as idle; `None` once it is.
    fn idle_in(&self, idle: Duration) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return Some(idle);
        }
        let last = self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        idle.checked_sub(last.elapsed()).filter(|d| !d.is_zero())
    }
}

/// A request being handled, for as long as its handler runs.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn begin(a: &Arc<Activity>) -> InFlight {
        a.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(a))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream that notes when bytes last moved on it.
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The server's certificate and key: read from their files at start, and again at each
/// [`Tls::reload`] (SIGHUP). A reload swaps what new connections get; connections already
/// open keep the certificate they began with.
#[derive(Clone)]
pub struct Tls {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    config: RustlsConfig,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

/// Reads a certificate chain and its key into a config that offers HTTP/1.1 only (the only
/// protocol served). Fails when either file is unreadable, not PEM, or the key is not the
/// certificate's.
async fn tls_config(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> io::Result<Arc<rustls::ServerConfig>> {
    let read = RustlsConfig::from_pem_file(cert, key).await?;
    let mut inner = (*read.get_inner()).clone();
    inner.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(inner))
}

impl Tls {
    /// Reads `cert` and `key`.
    pub async fn load(cert: &std::path::Path, key: &std::path::Path) -> io::Result<Tls> {
        let config = RustlsConfig::from_config(tls_config(cert, key).await?);
        Ok(Tls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            config,
        })
    }

    /// Reads the files again; on success new connections get the new pair. On failure the
    /// pair in use stays, and the error says why.
    pub async fn reload(&self) -> io::Result<()> {
        let fresh = tls_config(&self.cert, &self.key).await?;
        self.config.reload_from_config(fresh);
        Ok(())
    }

    /// The acceptor, with the handshake bounded by the header deadline. It reads the current
    /// pair at each handshake.
    pub fn acceptor(&self, limits: &Limits) -> RustlsAcceptor {
        RustlsAcceptor::new(self.config.clone()).handshake_timeout(limits.header_timeout)
    }
}

/// Accepts and serves connections on `listener` until `stop` fires (or its sender is dropped),
/// then drains within `limits.drain_timeout`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<RustlsAcceptor>,
    router: axum::Router,
    limits: Limits,
    mut stop: oneshot::Receiver<()>,
) -> io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let (drain_tx, drain_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut last_warning: Option<Instant> = None;
    let mut warn = |what: &str| {
        // At most one line a minute: a flood must not become a log flood.
        if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(60)) {
            last_warning = Some(Instant::now());
            tracing::warn!("{what}");
        }
    };
    loop {
        tokio::select! {
            _ = &mut stop => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of descriptors or memory: wait a moment instead of spinning.
                        warn(&format!("cannot accept a connection: {e}"));
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    warn(&format!(
                        "{} connections open, the most allowed: new ones are closed at once",
                        limits.max_connections
                    ));
                    drop(stream);
                    continue;
                };
                let (tls, router, drain) = (tls.clone(), router.clone(), drain_rx.clone());
                conns.spawn(async move {
                    connection(stream, peer, tls, router, limits, drain).await;
                    drop(permit);
                });
            }
        }
    }
    drop(listener);
    let _ = drain_tx.send(true);
    let deadline = tokio::time::sleep(limits.drain_timeout);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            next = conns.join_next() => if next.is_none() { break },
            _ = &mut deadline => {
                tracing::warn!(
                    open = conns.len(),
                    "the drain deadline passed: cutting the connections still open"
                );
                conns.shutdown().await;
                break;
            }
        }
    }
    Ok(())
}

async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<RustlsAcceptor>,
    router: axum::Router,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let activity = Activity::new();
    let stream = Tracked {
        inner: stream,
        activity: Arc::clone(&activity),
    };
    match tls {
        None => http(stream, peer, router, limits, activity, drain).await,
        Some(acceptor) => {
            let handshake = tokio::select! {
                r = acceptor.accept(stream, ()) => r,
                _ = drain.wait_for(|d| *d) => return,
            };
            if let Ok((stream, _)) = handshake {
                http(stream, peer, router, limits, activity, drain).await;
            }
        }
    }
}

async fn http<S>(
    stream: S,
    peer: SocketAddr,
    router: axum::Router,
    limits: Limits,
    activity: Arc<Activity>,
    mut drain: watch::Receiver<bool>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let service = {
        let activity = Arc::clone(&activity);
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            req.extensions_mut().insert(ConnectInfo(peer));
            let busy = InFlight::begin(&activity);
            let mut router = router.clone();
            async move {
                let answer: Result<_, Infallible> = router.call(req).await;
                drop(busy);
                answer
            }
        })
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true);
    // With upgrades: an agent link leaves this connection (and its cap and deadlines) once it
    // is upgraded, and lives on under the link hub's own bounds.
    let conn = builder
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        let idle = activity.idle_in(limits.idle_timeout);
        tokio::select! {
            _ = conn.as_mut() => return,
            _ = drain.wait_for(|d| *d), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = tokio::time::sleep(idle.unwrap_or_default()) => {
                if activity.idle_in(limits.idle_timeout).is_none() {
                    return;
                }
            }
        }
    }
}
