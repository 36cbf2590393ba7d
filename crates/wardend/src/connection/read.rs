//! Reading a connection: frames with the hello, mid-frame and idle deadlines, the answers and
//! notifications of requests that waited, and the daemon's shutdown, in one loop.
//!
//! It must never hold a read buffer for a peer that is not sending, nor reserve a frame's body
//! before its length passed the limit.

use std::io;
use std::os::fd::AsFd;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::stream::StreamExt;
use tokio::time::{Instant, sleep_until};

use super::{Connection, Next, Violation};

/// Bytes asked of the kernel per read.
const READ_CHUNK: usize = 1024;

impl Connection {
    pub(super) async fn next_frame(&mut self) -> Next {
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
    pub(super) fn try_read(&mut self) -> io::Result<usize> {
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
    pub(super) fn read_now(&mut self) -> io::Result<usize> {
        let mut chunk = [0u8; READ_CHUNK];
        let n = warden_sys::peer::recv_now(self.stream.as_fd(), &mut chunk)?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }
}
