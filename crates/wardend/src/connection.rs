//! One client connection: reading frames with the hello and mid-frame deadlines, handing each
//! frame to [`crate::dispatch`], writing the answer, and closing on framing violations.
//!
//! It must never hold memory for a peer that is not sending: while idle it keeps no read
//! buffer, and a frame's body is only reserved after its length passed the limit. It must never
//! let one peer hold its slot forever: the body of a frame has `frame_timeout_ms` to arrive, the
//! first request `hello_timeout_ms`, an answer the peer does not read `frame_timeout_ms`, and a
//! connection that sends nothing while no request of its own runs is closed after
//! `idle_timeout_ms`.

use std::io;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep, sleep_until};
use warden_policy::ListenerPolicy;
use warden_proto::error::code;
use warden_proto::{ErrorKind, FrameDecoder, FrameError, RpcError};
use warden_sys::peer::PeerCred;

use crate::call::{Outbound, Session, correlation_id, framed_error};
use crate::dispatch::{self, Later, Outcome};
use crate::identity;
use crate::limits::{Slot, TokenBucket};
use crate::state::Shared;

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 1024;
/// Requests one connection may have running at once.
const MAX_IN_FLIGHT: usize = 16;
/// Notifications waiting to be written, per connection.
const OUTBOUND_QUEUE: usize = 64;
/// How long requests that may change something still get to finish once the daemon stops:
/// less than the daemon's own grace for its connections, so their answers can still be sent.
const FINISH_GRACE: Duration = Duration::from_secs(5);

/// A request that waits for something (the ledger, the audit log, a job), polled by its
/// connection's own task alongside the socket. No task of its own: spawning one per request,
/// and handing its answer back through a channel, cost more than many requests themselves.
struct Running {
    /// To answer it if the connection ends first, or if running it panics.
    handle: dispatch::LaterHandle,
    answer: dispatch::CatchUnwind<dyn Future<Output = Option<Vec<u8>>> + Send>,
    shared: Arc<Shared>,
}

impl Future for Running {
    type Output = Option<Vec<u8>>;

    /// A panic costs this request an `internal` answer, not its connection and the other
    /// requests running on it. (One inside the handler is caught closer, so that its audit
    /// record gets an outcome.) A request that panicked is finished: it is not polled again.
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        self.answer.poll_unpin(cx).map(|answer| match answer {
            Ok(answer) => answer,
            Err(panic) => self.handle.panicked(&self.shared, &*panic),
        })
    }
}

/// What a connection needs once it has requests that wait. Made on the first such request, so
/// a connection that only asks `status` does not pay for it.
struct Tasks {
    /// Where running requests send notifications (job output, events) on the way.
    tx: Outbound,
    rx: tokio::sync::mpsc::Receiver<Vec<u8>>,
    running: FuturesUnordered<Running>,
    /// Final answers held back until the notifications their requests queued before them are
    /// sent: a request's answer must not overtake its own last output chunk or event.
    held: std::collections::VecDeque<Vec<u8>>,
}

/// A connection whose peer has been identified.
pub(crate) struct Connection {
    shared: Arc<Shared>,
    stream: UnixStream,
    /// Bytes read but not yet decoded; empty (and unallocated) while idle.
    buf: BytesMut,
    decoder: FrameDecoder,
    session: Session,
    /// When `hello` must have arrived by; `None` once it has.
    hello_deadline: Option<Instant>,
    /// Armed once `hello` is done: fires `idle_timeout_ms` after the peer was last heard from
    /// (or its last running request ended). One timer for the whole connection, moved only when
    /// it fires early, so a busy connection does not pay for a timer on every request.
    idle: Option<std::pin::Pin<Box<Sleep>>>,
    /// When the peer last sent a frame, or its last running request ended.
    last_heard: Instant,
    /// Set at shutdown: answer only what the peer already sent, then close.
    draining: bool,
    /// The last request waited for something (the ledger, the audit log, a job) before it
    /// could be answered; see [`Connection::try_read`].
    last_waited: bool,
    /// This connection's own view of the daemon's shutdown. A child token, so waiting on it
    /// takes only this connection's lock: every connection polling one shared token would make
    /// them all contend on its lock once per request.
    /// Registered once and polled in place for the whole connection.
    shutdown: std::pin::Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    /// Requests that wait, once there has been one.
    tasks: Option<Tasks>,
    /// Set on a `protocol = "varlink"` listener: translates its messages to and from frames.
    varlink: Option<crate::varlink::Codec>,
    /// Holds this connection's place under the connection caps.
    _slot: Slot,
}

/// What reading produced.
enum Next {
    Frame(Bytes),
    /// A varlink answer the translation gave itself; close after it if set.
    Reply(Vec<u8>, bool),
    /// An answer or notification from a request that waited.
    Outbound(Vec<u8>),
    /// The peer closed between frames, or shutdown found nothing left to answer.
    Done,
    Broken(Violation),
    Io(io::Error),
}

/// Framing failures; each closes the connection.
enum Violation {
    Length(FrameError),
    HelloTimeout,
    FrameTimeout,
    Truncated,
    /// Not a violation of the protocol, but closed the same way: nothing sent for
    /// `idle_timeout_ms` while nothing of this connection ran.
    Idle,
}

impl Connection {
    /// Identifies the peer. On failure the connection is refused with one error frame.
    pub(crate) fn open(
        shared: Arc<Shared>,
        listener: Arc<ListenerPolicy>,
        stream: UnixStream,
        cred: PeerCred,
        slot: Slot,
        span: tracing::Span,
        connection: u64,
    ) -> Option<Connection> {
        let identified =
            identity::identify(&stream, cred, &shared.policy().guards, shared.pidfd_source);
        let identity::Identified { peer, exe_pin } = match identified {
            Ok(p) => p,
            Err(e) => {
                shared.stats.identity_unreadable.inc();
                let err = RpcError::new(
                    ErrorKind::Forbidden,
                    "the kernel did not confirm who is calling; connection refused",
                    correlation_id(),
                );
                if let Some(suppressed) = shared.logs.admit(warden_proto::Uid(cred.uid)) {
                    tracing::warn!(parent: &span, correlation_id = %err.data.correlation_id, error = %e, suppressed,
                        "refused a connection: identity not confirmed");
                }
                let varlink = listener.protocol == warden_policy::config::ListenerProtocol::Varlink;
                let frame = framed_error(None, &err).and_then(|f| match varlink {
                    false => Some(f),
                    true => crate::varlink::Codec::new(shared.limits.max_frame).encode(&f),
                });
                if let Some(frame) = frame {
                    let _ = stream.try_write(&frame);
                }
                return None;
            }
        };
        tracing::debug!(parent: &span, groups = ?peer.groups, exe = ?peer.exe, listener = %listener.path.display(), "connected");
        let now = Instant::now();
        let limits = &shared.limits;
        let session = Session {
            span,
            peer: Arc::new(peer),
            exe_pin: exe_pin.map(Arc::new),
            connection,
            caller: None,
            listener,
            bucket: TokenBucket::new(limits.requests_per_second, limits.burst, now),
            client: None,
            invalid_frames: 0,
        };
        let shutdown = Box::pin(shared.shutdown.child_token().cancelled_owned());
        let varlink = match session.listener.protocol {
            warden_policy::config::ListenerProtocol::Warden => None,
            warden_policy::config::ListenerProtocol::Varlink => {
                Some(crate::varlink::Codec::new(limits.max_frame))
            }
        };
        Some(Connection {
            varlink,
            shutdown,
            tasks: None,
            decoder: FrameDecoder::new(limits.max_frame),
            hello_deadline: Some(now + Duration::from_millis(limits.hello_timeout_ms)),
            idle: None,
            last_heard: now,
            shared,
            stream,
            buf: BytesMut::new(),
            session,
            draining: false,
            last_waited: false,
            _slot: slot,
        })
    }

    /// Serves requests until the peer leaves, breaks the protocol, or the daemon shuts down.
    pub(crate) async fn serve(mut self) {
        let mut peer_gone = false;
        if self.varlink.is_some() {
            // Varlink has no handshake: the daemon greets itself for the peer, through the same
            // path, so the session is set up (and limited) as on the warden socket.
            let hello = crate::varlink::Codec::hello();
            if let Outcome::Now { frame, close } =
                dispatch::handle(&self.shared, &mut self.session, &hello)
                && (close || self.session.client.is_none())
            {
                let _ = self.send(frame).await;
                return;
            }
            self.hello_deadline = None;
            let idle = Duration::from_millis(self.shared.limits.idle_timeout_ms);
            self.idle = Some(Box::pin(tokio::time::sleep(idle)));
        }
        loop {
            match self.next_frame().await {
                Next::Frame(frame) => {
                    match dispatch::handle(&self.shared, &mut self.session, &frame) {
                        Outcome::Now { frame, close } => {
                            self.last_waited = false;
                            if self.hello_deadline.is_some() && self.session.client.is_some() {
                                self.hello_deadline = None;
                                let idle =
                                    Duration::from_millis(self.shared.limits.idle_timeout_ms);
                                self.idle = Some(Box::pin(tokio::time::sleep(idle)));
                            }
                            if !self.send(frame).await || close {
                                break;
                            }
                        }
                        Outcome::Later(later) => {
                            self.last_waited = true;
                            if let Some(refusal) = self.start_task(later)
                                && !self.send(Some(refusal)).await
                            {
                                break;
                            }
                        }
                    }
                }
                Next::Outbound(frame) => {
                    if !self.send(Some(frame)).await {
                        break;
                    }
                }
                Next::Reply(reply, close) => {
                    if close {
                        // Not a varlink call at all: a violation, counted as a frame that is
                        // not JSON-RPC is on the warden socket, and the connection ends.
                        let stats = &self.shared.stats;
                        stats.invalid_jsonrpc.inc();
                        stats.closed_for_violations.inc();
                        self.shared.alerts.violation(self.session.peer.uid.0);
                    }
                    // Introspection and unknown methods are answered here, but cost the peer a
                    // request token all the same, as on the warden socket.
                    let reply = match self.charge() {
                        Err(wait) if !close && !reply.is_empty() => {
                            crate::varlink::rate_limited(crate::limits::retry_ms(wait))
                        }
                        _ => reply,
                    };
                    if !reply.is_empty() && !self.write_raw(&reply).await || close {
                        break;
                    }
                }
                Next::Done => {
                    peer_gone = !self.draining;
                    break;
                }
                Next::Io(e) => {
                    tracing::debug!(parent: &self.session.span, error = %e, "connection failed");
                    break;
                }
                Next::Broken(v) => {
                    self.refuse(v);
                    break;
                }
            }
        }
        self.end_tasks(peer_gone).await;
        tracing::debug!(parent: &self.session.span, "closed");
    }

    /// Takes a request token from this connection's bucket and its uid's, as
    /// [`dispatch::handle`] does for every request; the time to wait if either is empty.
    fn charge(&mut self) -> Result<(), Duration> {
        let now = Instant::now();
        let stats = &self.shared.stats;
        self.session.bucket.try_take(now).inspect_err(|_| {
            stats.rate_limited_connection.inc();
        })?;
        self.shared
            .admission
            .take_uid_token(self.session.peer.uid, now)
            .inspect_err(|_| stats.rate_limited_uid.inc())
    }

    /// Runs a request that waits beside the others of this connection; returns a refusal to
    /// send instead when too many are already running on it.
    fn start_task(&mut self, later: Later) -> Option<Vec<u8>> {
        let tasks = self.tasks.get_or_insert_with(|| {
            let (tx, rx) = tokio::sync::mpsc::channel(OUTBOUND_QUEUE);
            Tasks {
                tx,
                rx,
                running: FuturesUnordered::new(),
                held: std::collections::VecDeque::new(),
            }
        });
        let handle = later.handle();
        if tasks.running.len() >= MAX_IN_FLIGHT {
            return handle.refuse(
                &self.shared,
                ErrorKind::Busy,
                &format!("{MAX_IN_FLIGHT} requests are already running on this connection"),
                Some(Duration::from_millis(100)),
            );
        }
        let answer = dispatch::later(Arc::clone(&self.shared), later, tasks.tx.clone());
        tasks.running.push(Running {
            handle,
            answer: dispatch::CatchUnwind(Box::pin(answer)),
            shared: Arc::clone(&self.shared),
        });
        None
    }

    /// Ends the connection's running requests. Those that only read or wait are stopped where
    /// they stand (answered if their answer is ready, else refused `unavailable`). Those that may
    /// change something run to their end (see [`dispatch::changes_state`]), for a peer that left
    /// too, but once the daemon stops only for [`FINISH_GRACE`]. Unless the peer has left, then
    /// sends the notifications already queued and every answer and refusal.
    async fn end_tasks(&mut self, peer_gone: bool) {
        let Some(mut tasks) = self.tasks.take() else {
            return;
        };
        let mut frames = Vec::new();
        while let Ok(frame) = tasks.rx.try_recv() {
            frames.push(frame);
        }
        frames.extend(tasks.held.drain(..));
        // Stopped first, so nothing streams notifications (events, output) while the others
        // finish: what this connection holds stays bounded however long they take.
        let (finish, stop): (Vec<Running>, Vec<Running>) = std::mem::take(&mut tasks.running)
            .into_iter()
            .partition(|r| r.handle.changes_state());
        for mut running in stop {
            match (&mut running).now_or_never() {
                Some(answer) => frames.extend(answer),
                None if !peer_gone => frames.extend(self.closing(&running.handle)),
                None => {}
            }
        }
        drop(tasks);
        let mut finish: FuturesUnordered<Running> = finish.into_iter().collect();
        let stopping = self.shared.shutdown.clone();
        let limit = async move {
            stopping.cancelled().await;
            tokio::time::sleep(FINISH_GRACE).await;
        };
        tokio::pin!(limit);
        loop {
            tokio::select! {
                answer = finish.next() => match answer {
                    Some(answer) => frames.extend(answer),
                    None => break,
                },
                () = &mut limit => break,
            }
        }
        // What is still running now is dropped where it stands (and audited as unfinished).
        if peer_gone {
            return;
        }
        for running in finish.iter() {
            frames.extend(self.closing(&running.handle));
        }
        drop(finish);
        let deadline = Instant::now() + Duration::from_millis(200);
        for frame in frames {
            let Some(frame) = self.wire(frame) else {
                continue;
            };
            let write = tokio::time::timeout_at(deadline, self.stream.write_all(&frame));
            if !matches!(write.await, Ok(Ok(()))) {
                break;
            }
        }
    }

    /// The refusal of a request still running when its connection ends.
    fn closing(&self, handle: &dispatch::LaterHandle) -> Option<Vec<u8>> {
        handle.refuse(
            &self.shared,
            ErrorKind::Unavailable,
            "the connection or the daemon is closing",
            None,
        )
    }

    async fn next_frame(&mut self) -> Next {
        let frame_timeout = Duration::from_millis(self.shared.limits.frame_timeout_ms);
        let mut frame_deadline: Option<Instant> = None;
        loop {
            // Answers held back go out once the notifications queued before them have.
            if let Some(t) = self.tasks.as_mut()
                && !t.held.is_empty()
            {
                return match t.rx.try_recv() {
                    Ok(frame) => Next::Outbound(frame),
                    Err(_) => match t.held.pop_front() {
                        Some(answer) => Next::Outbound(answer),
                        None => continue,
                    },
                };
            }
            // A varlink peer gets its replies in the order of its calls: while one of its calls
            // waits (a job, the ledger), the next is left unread, without a deadline.
            let blocked = self.varlink.as_ref().is_some_and(|c| c.busy())
                && self
                    .tasks
                    .as_ref()
                    .is_some_and(|t| !t.running.is_empty() || !t.held.is_empty());
            let decoded = match self.varlink.as_mut() {
                Some(_) if blocked => Ok(None),
                None => self
                    .decoder
                    .decode(&mut self.buf)
                    .map(|f| f.map(Next::Frame)),
                Some(codec) => codec.decode(&mut self.buf).map(|m| {
                    m.map(|m| match m {
                        crate::varlink::Inbound::Request(frame) => Next::Frame(frame),
                        crate::varlink::Inbound::Reply { bytes, close } => {
                            Next::Reply(bytes, close)
                        }
                    })
                }),
            };
            match decoded {
                Ok(Some(next)) => {
                    if self.idle.is_some() {
                        self.last_heard = Instant::now();
                    }
                    return next;
                }
                Ok(None) => {}
                Err(e) => return Next::Broken(Violation::Length(e)),
            }
            if self.buf.is_empty() {
                // Idle between frames: hold no buffer for a peer that is not sending.
                if self.buf.capacity() > 0 {
                    self.buf = BytesMut::new();
                }
            } else if frame_deadline.is_none() && !blocked {
                frame_deadline = Some(Instant::now() + frame_timeout);
            }
            if self.draining {
                match self.read_now() {
                    Ok(0) if !self.buf.is_empty() => return Next::Broken(Violation::Truncated),
                    Ok(0) => return Next::Done,
                    Ok(_) => continue,
                    // Nothing more was sent before shutdown: a partial frame is dropped.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Next::Done,
                    Err(e) => return Next::Io(e),
                }
            }
            let deadline = match (frame_deadline, self.hello_deadline) {
                (Some(f), Some(h)) => Some(f.min(h)),
                (f, h) => f.or(h),
            };
            // Idle only between frames, and only while no request of its own runs (a wait, a
            // subscription): those hold the connection open for as long as they last.
            let idle_armed = self.idle.is_some()
                && self.buf.is_empty()
                && self.tasks.as_ref().is_none_or(|t| t.running.is_empty());
            let idle_timer = self.idle.as_mut();
            let (outbound, running) = match self.tasks.as_mut() {
                Some(t) => (Some(&mut t.rx), Some(&mut t.running)),
                None => (None, None),
            };
            tokio::select! {
                biased;
                _ = &mut self.shutdown => {
                    self.draining = true;
                }
                Some(frame) = async { match outbound { Some(rx) => rx.recv().await, None => std::future::pending().await } } => {
                    return Next::Outbound(frame);
                }
                // A request that finished without an answer (it was a notification) has
                // nothing to send; the loop goes on.
                Some(answer) = async {
                    match running {
                        Some(r) if !r.is_empty() => r.next().await,
                        _ => std::future::pending().await,
                    }
                } => {
                    // The connection's idle clock starts when its last running request ends.
                    if self.tasks.as_ref().is_some_and(|t| t.running.is_empty()) {
                        self.last_heard = Instant::now();
                    }
                    if let Some(frame) = answer {
                        // Polling the request may have queued notifications just before it
                        // ended: those go first.
                        if let Some(t) = self.tasks.as_mut() {
                            t.held.push_back(frame);
                        }
                        continue;
                    }
                }
                ready = self.stream.readable(), if !blocked => {
                    if let Err(e) = ready {
                        return Next::Io(e);
                    }
                    match self.try_read() {
                        Ok(0) if self.buf.is_empty() => return Next::Done,
                        Ok(0) => return Next::Broken(Violation::Truncated),
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => return Next::Io(e),
                    }
                }
                () = async {
                    match idle_timer {
                        Some(t) => t.await,
                        None => std::future::pending().await,
                    }
                }, if idle_armed => {
                    let due = self.last_heard + Duration::from_millis(self.shared.limits.idle_timeout_ms);
                    if due <= Instant::now() {
                        return Next::Broken(Violation::Idle);
                    }
                    // Heard from since the timer was set: wait for the rest.
                    if let Some(t) = self.idle.as_mut() {
                        t.as_mut().reset(due);
                    }
                }
                // Built only when polled: most iterations have no deadline and need no timer.
                _ = async { sleep_until(deadline.unwrap_or_else(Instant::now)).await }, if deadline.is_some() => {
                    let hello_expired = self.hello_deadline.is_some_and(|h| h <= Instant::now());
                    return Next::Broken(if hello_expired {
                        Violation::HelloTimeout
                    } else {
                        Violation::FrameTimeout
                    });
                }
            }
        }
    }

    /// Reads what the socket holds.
    ///
    /// Whether to read once more after a read that came back short (it found the socket empty)
    /// depends on how this peer's last request went. After one answered at once, the peer has
    /// often sent its next request by the time this task reads again (it runs between our
    /// answer and that read), so reading again finds it without waiting for the event loop to
    /// report it. After one that waited, reading again only hears "empty" (one system call in
    /// three per request, and a turn of the loop): the short read is then reported to the event
    /// loop as `WouldBlock`, which clears the socket's readiness. Nothing can be missed either
    /// way: tokio clears readiness only if no event came since it read it, so data or a close
    /// arriving meanwhile still wakes the loop, and a close already seen stays seen.
    fn try_read(&mut self) -> io::Result<usize> {
        let settle = self.last_waited;
        let mut chunk = [0u8; READ_CHUNK];
        let mut got = 0;
        let fd = self.stream.as_fd();
        let read = self.stream.try_io(tokio::io::Interest::READABLE, || {
            got = warden_sys::peer::recv_now(fd, &mut chunk)?;
            if settle && got > 0 && got < READ_CHUNK {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            Ok(got)
        });
        match read {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {}
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        self.buf.extend_from_slice(&chunk[..got]);
        Ok(got)
    }

    /// Reads what the kernel holds for this connection now, whatever the event loop believes
    /// about readiness (it may not have seen the data yet): at shutdown, requests a client sent
    /// before the daemon stopped must still be answered.
    fn read_now(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = warden_sys::peer::recv_now(self.stream.as_fd(), &mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    /// Writes one answer; `false` if the connection is finished.
    async fn send(&mut self, frame: Option<Vec<u8>>) -> bool {
        let Some(frame) = frame else {
            return false;
        };
        let Some(frame) = self.wire(frame) else {
            // A varlink call that asked for no reply.
            return true;
        };
        self.write_raw(&frame).await
    }

    /// What goes on the wire for a frame: itself, or its varlink reply (`None`: none is due).
    fn wire(&mut self, frame: Vec<u8>) -> Option<Vec<u8>> {
        match self.varlink.as_mut() {
            None => Some(frame),
            Some(codec) => codec.encode(&frame),
        }
    }

    /// Writes bytes already in the peer's protocol; `false` if the connection is finished.
    ///
    /// An answer that fits the socket's send buffer is written at once and needs no deadline;
    /// only the rest of one that does not fit waits, for at most `frame_timeout_ms`. (Making
    /// the deadline for every answer cost a clock read and two atomic operations on the
    /// runtime's handle, which every worker thread shares, per answer.)
    async fn write_raw(&mut self, frame: &[u8]) -> bool {
        let rest = match self.stream.try_write(frame) {
            Ok(n) if n == frame.len() => return true,
            Ok(n) => &frame[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => frame,
            Err(e) => {
                tracing::debug!(parent: &self.session.span, error = %e, "write failed");
                return false;
            }
        };
        let limit = Duration::from_millis(self.shared.limits.frame_timeout_ms);
        match tokio::time::timeout(limit, self.stream.write_all(rest)).await {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::debug!(parent: &self.session.span, error = %e, "write failed");
                false
            }
            Err(_) => {
                // The peer stopped reading its answers: it only holds up itself, so close.
                self.shared.stats.write_timeout.inc();
                false
            }
        }
    }

    /// Answers a framing violation with one error frame (best effort, never blocking) and counts
    /// it. An idle connection gets its one frame too, uncounted.
    fn refuse(&mut self, v: Violation) {
        if let Violation::Idle = v {
            // Not the peer's fault, so neither counted nor alerted; said once, then closed.
            tracing::debug!(parent: &self.session.span, "closing an idle connection");
            let err = RpcError::new(
                ErrorKind::Unavailable,
                format!(
                    "closed: nothing sent for idle_timeout_ms ({} ms)",
                    self.shared.limits.idle_timeout_ms
                ),
                correlation_id(),
            );
            if let Some(frame) = framed_error(None, &err).and_then(|f| self.wire(f)) {
                let _ = self.stream.try_write(&frame);
            }
            return;
        }
        self.shared.alerts.violation(self.session.peer.uid.0);
        let stats = &self.shared.stats;
        let limits = &self.shared.limits;
        let message = match v {
            Violation::Length(e) => {
                match e {
                    FrameError::Empty { .. } => stats.frame_empty.inc(),
                    FrameError::TooLarge { .. } => stats.frame_too_large.inc(),
                }
                e.to_string()
            }
            Violation::HelloTimeout => {
                stats.hello_timeout.inc();
                format!(
                    "no hello within hello_timeout_ms ({} ms)",
                    limits.hello_timeout_ms
                )
            }
            Violation::FrameTimeout => {
                stats.frame_timeout.inc();
                format!(
                    "frame not complete within frame_timeout_ms ({} ms)",
                    limits.frame_timeout_ms
                )
            }
            Violation::Truncated => {
                stats.frame_truncated.inc();
                tracing::debug!(parent: &self.session.span, "peer closed in the middle of a frame");
                return;
            }
            // Answered above.
            Violation::Idle => return,
        };
        let err = RpcError::with_code(
            code::INVALID_REQUEST,
            ErrorKind::BadRequest,
            message,
            correlation_id(),
        );
        dispatch::log_refusal(&self.shared, &self.session, None, &err);
        if let Some(frame) = framed_error(None, &err).and_then(|f| self.wire(f)) {
            let _ = self.stream.try_write(&frame);
        }
    }
}
