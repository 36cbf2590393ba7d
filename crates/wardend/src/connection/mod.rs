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
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use tokio::time::{Instant, Sleep};
use warden_policy::ListenerPolicy;
use warden_proto::error::code;
use warden_proto::{ErrorKind, FrameDecoder, FrameError, RpcError};
use warden_sys::peer::PeerCred;

use crate::call::{Session, correlation_id, framed_error};
use crate::dispatch::{self, Outcome};
use crate::identity;
use crate::limits::{Slot, TokenBucket};
use crate::state::Shared;
use tasks::Tasks;

mod read;
mod tasks;

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
