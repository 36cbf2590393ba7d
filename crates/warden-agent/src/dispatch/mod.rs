//! Remote dispatch on the agent's side: between the link and wardend. It reports the host's
//! fleet actions after each Welcome and when they change; takes each Dispatch to wardend
//! (recording it in the [`spool`] first, answering a dispatch it already knows from the spool);
//! runs one [`job`] task per accepted dispatch that streams the job's output and state back and
//! survives lost links and agent restarts; and turns Cancel into `job.cancel`.
//!
//! It owns the routing of dispatch messages and the link's send queue for them (bounded: a
//! sender waits for room). It must never judge a dispatch itself (wardend does, under the
//! host's policy), never keep a dispatch's params on disk, and never log a link message's text.

pub mod job;
pub mod spool;
pub mod wardend;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use warden_fleet_proto::DispatchId;
use warden_fleet_proto::link::{AgentMessage, ServerMessage};
use warden_proto::request::{FleetOrigin, FleetTier};

use crate::agent::Stop;
use job::{JobCtl, JobTask};
use spool::{Answer, Meta, Spool, SpoolError};

/// Each job's spool holds at most this many bytes of output the server has not stored; past
/// it the rest is not spooled and the end says `output_truncated`.
pub const SPOOL_CAP: u64 = 64 * 1024 * 1024;
/// How often the host's fleet actions are asked for again (sent when they changed).
pub const ACTIONS_POLL: Duration = Duration::from_secs(60);
/// Room on a link's send queue for dispatch messages: senders wait beyond it.
pub const LINK_QUEUE: usize = 8;
/// A refusal is remembered (to answer a Dispatch sent again) this long.
const REFUSAL_KEPT_S: u64 = 24 * 3600;
/// The tier the agent asks for: the link's Dispatch carries none, and wardend caps it by
/// `[fleet] max_tier` anyway.
const FLEET_TIER: FleetTier = FleetTier::Operator;

/// The send side of the link that is up.
#[derive(Debug, Clone)]
pub struct LinkOut {
    tx: mpsc::Sender<AgentMessage>,
}

impl LinkOut {
    /// Waits for room on the link's queue; `None` once the link is gone.
    pub async fn permit(&self) -> Option<mpsc::OwnedPermit<AgentMessage>> {
        self.tx.clone().reserve_owned().await.ok()
    }

    pub fn send(&self, permit: mpsc::OwnedPermit<AgentMessage>, msg: AgentMessage) {
        permit.send(msg);
    }

    /// Sends `msg`, waiting for room; `false` when the link is gone.
    pub async fn send_wait(&self, msg: AgentMessage) -> bool {
        self.tx.send(msg).await.is_ok()
    }
}

/// What the agent knows of a dispatch.
enum Entry {
    /// wardend is being asked; `cancel`: a Cancel came meanwhile, sent on once it answers.
    Starting {
        cancel: bool,
    },
    Accepted {
        job_id: String,
        ctl: JobCtl,
    },
    Refused {
        kind: String,
        message: String,
        /// When the dispatch arrived (seconds since the epoch).
        at: u64,
    },
    /// The server stored the job's end and the spool forgot it; kept (like a refusal) so a
    /// Dispatch arriving again is answered with the same job and nothing is followed again.
    Done {
        job_id: String,
        /// When the end was stored (seconds since the epoch).
        at: u64,
    },
}

/// How dispatch is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub state_dir: PathBuf,
    pub wardend_socket: PathBuf,
    pub spool_cap: u64,
    pub actions_poll: Duration,
}

struct Inner {
    settings: Settings,
    spool: Arc<Spool>,
    entries: Mutex<HashMap<DispatchId, Entry>>,
    link: watch::Sender<Option<LinkOut>>,
    stop: Stop,
}

/// The dispatch side of the agent, shared by every link of a run.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("spool", &self.inner.spool.path())
            .finish_non_exhaustive()
    }
}

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Dispatcher {
    /// Opens the spool and resumes every dispatch on record: jobs wardend accepted are
    /// followed again from the spooled offset.
    pub fn open(settings: Settings, stop: Stop) -> Result<Dispatcher, SpoolError> {
        let spool = Arc::new(Spool::open(&settings.state_dir)?);
        let (link, _) = watch::channel(None);
        let d = Dispatcher {
            inner: Arc::new(Inner {
                settings,
                spool,
                entries: Mutex::new(HashMap::new()),
                link,
                stop,
            }),
        };
        for loaded in d.inner.spool.load() {
            let meta = match loaded {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(error = %e, "dispatch: a spooled dispatch cannot be read; left alone");
                    continue;
                }
            };
            let id = meta.dispatch_id.clone();
            match meta.answer.clone() {
                Some(Answer::Accepted { job_id }) => {
                    tracing::info!(dispatch_id = %id, job_id = %job_id,
                        next_offset = meta.next_offset, last_seq = meta.last_seq,
                        acked_seq = meta.acked_seq, "dispatch: resuming from the spool");
                    d.spawn_job(meta, job_id);
                }
                Some(Answer::Refused { kind, message })
                    if now_s().saturating_sub(meta.received_at) < REFUSAL_KEPT_S =>
                {
                    let at = meta.received_at;
                    d.entries().insert(id, Entry::Refused { kind, message, at });
                }
                // Not answered before a crash (the server sends it again, and the same
                // idempotency key finds the same job), or an old refusal.
                _ => {
                    let _ = d.inner.spool.forget(&id);
                }
            }
        }
        Ok(d)
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<DispatchId, Entry>> {
        // A panic elsewhere while holding it leaves the map usable.
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A link is up: returns the queue the link sends from, and starts reporting actions and
    /// resending what the server has not stored.
    pub fn link_up(&self) -> mpsc::Receiver<AgentMessage> {
        let (tx, rx) = mpsc::channel(LINK_QUEUE);
        let out = LinkOut { tx };
        self.inner.link.send_replace(Some(out.clone()));
        let settings = self.inner.settings.clone();
        let stop = self.inner.stop.clone();
        tokio::spawn(async move { report_actions(settings, out, stop).await });
        rx
    }

    /// The link is down.
    pub fn link_down(&self) {
        self.inner.link.send_replace(None);
    }

    /// Handles a dispatch message from the server; never waits.
    pub fn on_message(&self, msg: ServerMessage) {
        match msg {
            ServerMessage::Dispatch {
                dispatch_id,
                action,
                params,
                operator,
                server,
            } => {
                let d = self.clone();
                tokio::spawn(async move {
                    d.dispatch(dispatch_id, action, params, operator, server)
                        .await;
                });
            }
            ServerMessage::Cancel { dispatch_id } => {
                let job = match self.entries().get_mut(&dispatch_id) {
                    Some(Entry::Accepted { job_id, .. }) => Some(job_id.clone()),
                    Some(Entry::Starting { cancel }) => {
                        *cancel = true;
                        tracing::info!(dispatch_id = %dispatch_id,
                            "dispatch: Cancel before wardend answered; cancelling once it does");
                        return;
                    }
                    _ => None,
                };
                match job {
                    Some(job_id) => self.cancel_job(dispatch_id, job_id),
                    None => self.cancel_unknown(dispatch_id),
                }
            }
            ServerMessage::OutputStored { dispatch_id, seq } => {
                if let Some(Entry::Accepted { ctl, .. }) = self.entries().get(&dispatch_id) {
                    ctl.acked.send_if_modified(|a| {
                        let newer = seq > *a;
                        *a = (*a).max(seq);
                        newer
                    });
                }
            }
            ServerMessage::EndStored { dispatch_id } => {
                if let Some(Entry::Accepted { ctl, .. }) = self.entries().get(&dispatch_id) {
                    ctl.end_stored.send_replace(true);
                }
            }
            // The session handles the rest.
            ServerMessage::Welcome { .. }
            | ServerMessage::Heartbeat {}
            | ServerMessage::NewKey { .. }
            | ServerMessage::Goodbye { .. } => {}
        }
    }

    /// A Cancel for a dispatch that never ran here (its Dispatch never arrived, or wardend
    /// refused it): answers `refused {kind: "not_found"}` so the server closes the part, and
    /// remembers that answer so a Dispatch arriving after it (sent again) starts nothing.
    fn cancel_unknown(&self, dispatch_id: DispatchId) {
        let answer = {
            let mut entries = self.entries();
            match entries.get(&dispatch_id) {
                // Refused already: the same answer again.
                Some(Entry::Refused { kind, message, .. }) => AgentMessage::Refused {
                    dispatch_id: dispatch_id.clone(),
                    kind: kind.clone(),
                    message: message.clone(),
                },
                Some(_) => return,
                None => {
                    let kind = "not_found".to_owned();
                    let message =
                        "cancelled before its dispatch reached this host; nothing ran here"
                            .to_owned();
                    entries.insert(
                        dispatch_id.clone(),
                        Entry::Refused {
                            kind: kind.clone(),
                            message: message.clone(),
                            at: now_s(),
                        },
                    );
                    AgentMessage::Refused {
                        dispatch_id: dispatch_id.clone(),
                        kind,
                        message,
                    }
                }
            }
        };
        tracing::info!(dispatch_id = %dispatch_id,
            "dispatch: Cancel for a dispatch with no job here; answered refused");
        let d = self.clone();
        tokio::spawn(async move { d.answer(answer).await });
    }

    /// Runs `f` on the spool off the runtime's thread (files are fsynced).
    async fn on_disk(
        &self,
        f: impl FnOnce(&Spool) -> Result<(), SpoolError> + Send + 'static,
    ) -> Result<(), String> {
        let spool = Arc::clone(&self.inner.spool);
        match tokio::task::spawn_blocking(move || f(&spool)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Answers on the link that is up now (if the link is gone, the server sends the Dispatch
    /// again on the next one).
    async fn answer(&self, msg: AgentMessage) {
        let out = self.inner.link.borrow().clone();
        if let Some(out) = out {
            out.send_wait(msg).await;
        }
    }

    async fn dispatch(
        &self,
        id: DispatchId,
        action: String,
        params: serde_json::Map<String, serde_json::Value>,
        operator: String,
        server: String,
    ) {
        let known = {
            let mut entries = self.entries();
            let known = match entries.get(&id) {
                Some(Entry::Starting { .. }) => return,
                Some(Entry::Accepted { job_id, .. } | Entry::Done { job_id, .. }) => {
                    Some(AgentMessage::Accepted {
                        dispatch_id: id.clone(),
                        job_id: job_id.clone(),
                    })
                }
                Some(Entry::Refused { kind, message, .. }) => Some(AgentMessage::Refused {
                    dispatch_id: id.clone(),
                    kind: kind.clone(),
                    message: message.clone(),
                }),
                None => None,
            };
            if known.is_none() {
                entries.insert(id.clone(), Entry::Starting { cancel: false });
            }
            known
        };
        if let Some(answer) = known {
            tracing::info!(dispatch_id = %id, "dispatch: sent again; answered from the spool");
            self.answer(answer).await;
            return;
        }
        let mut meta = Meta {
            dispatch_id: id.clone(),
            action: action.clone(),
            operator: operator.clone(),
            server: server.clone(),
            received_at: now_s(),
            answer: None,
            next_offset: 0,
            last_seq: 0,
            acked_seq: 0,
            held_bytes: 0,
            truncated: false,
            dropped_bytes: 0,
            ended: None,
        };
        let m = meta.clone();
        if let Err(why) = self.on_disk(move |s| s.create(&m)).await {
            tracing::error!(dispatch_id = %id, error = %why, "dispatch: cannot record it; refusing");
            self.entries().remove(&id);
            self.answer(AgentMessage::Refused {
                dispatch_id: id,
                kind: "unavailable".into(),
                message: "the agent cannot record the dispatch in its spool".into(),
            })
            .await;
            return;
        }
        let fleet = FleetOrigin {
            operator: operator.clone(),
            server: server.clone(),
            dispatch_id: id.to_string(),
            tier: FLEET_TIER,
        };
        let started = wardend::start(
            &self.inner.settings.wardend_socket,
            &action,
            &params,
            &fleet,
        )
        .await;
        let answer = match started {
            Ok(s) => {
                let job_id = s.job_id.to_string();
                tracing::info!(dispatch_id = %id, job_id = %job_id, action = %action,
                    operator = %operator, existing = s.existing, "dispatch: wardend accepted");
                meta.answer = Some(Answer::Accepted {
                    job_id: job_id.clone(),
                });
                let m = meta.clone();
                if let Err(e) = self.on_disk(move |s| s.save(&m)).await {
                    tracing::error!(dispatch_id = %id, error = %e,
                        "dispatch: cannot record the job; following it until the agent stops");
                }
                self.spawn_job(meta, job_id.clone());
                AgentMessage::Accepted {
                    dispatch_id: id,
                    job_id,
                }
            }
            Err(warden_client::ClientError::Rpc(e)) => {
                let kind = e.kind().as_str().to_owned();
                // The kind travels on its own; the message is wardend's alone.
                let message = e.message.clone();
                tracing::info!(dispatch_id = %id, action = %action, operator = %operator,
                    kind = %kind, "dispatch: wardend refused");
                meta.answer = Some(Answer::Refused {
                    kind: kind.clone(),
                    message: message.clone(),
                });
                let m = meta.clone();
                if let Err(e) = self.on_disk(move |s| s.save(&m)).await {
                    tracing::warn!(dispatch_id = %id, error = %e, "dispatch: cannot record the refusal");
                }
                let mut entries = self.entries();
                // Old refusals go (their spool records went at the last start or go now).
                let now = now_s();
                entries.retain(|old, e| match e {
                    Entry::Refused { at, .. } | Entry::Done { at, .. }
                        if now.saturating_sub(*at) >= REFUSAL_KEPT_S =>
                    {
                        let _ = self.inner.spool.forget(old);
                        false
                    }
                    _ => true,
                });
                entries.insert(
                    id.clone(),
                    Entry::Refused {
                        kind: kind.clone(),
                        message: message.clone(),
                        at: meta.received_at,
                    },
                );
                drop(entries);
                AgentMessage::Refused {
                    dispatch_id: id,
                    kind,
                    message,
                }
            }
            Err(e) => {
                // Not wardend's answer: nothing to remember, a later Dispatch asks again.
                tracing::warn!(dispatch_id = %id, error = %e, "dispatch: cannot ask wardend");
                let gone = id.clone();
                let _ = self.on_disk(move |s| s.forget(&gone)).await;
                self.entries().remove(&id);
                AgentMessage::Refused {
                    dispatch_id: id,
                    kind: "unavailable".into(),
                    message: format!("the agent cannot reach wardend: {e}"),
                }
            }
        };
        self.answer(answer).await;
    }

    /// Asks wardend to cancel a dispatch's job and logs what it says (the job's end arrives
    /// through its task as usual).
    fn cancel_job(&self, dispatch_id: DispatchId, job_id: String) {
        let socket = self.inner.settings.wardend_socket.clone();
        tokio::spawn(async move {
            match wardend::cancel(&socket, &job_id).await {
                Ok(r) => tracing::info!(dispatch_id = %dispatch_id, job_id = %job_id,
                    state = r.state.as_str(), "dispatch: cancelled as the server asked"),
                Err(e) => tracing::warn!(dispatch_id = %dispatch_id, job_id = %job_id,
                    kind = e.kind().map(|k| k.as_str()), error = %e,
                    "dispatch: wardend did not cancel the job"),
            }
        });
    }

    /// Starts the task of an accepted dispatch (and sends on a Cancel that came meanwhile).
    fn spawn_job(&self, meta: Meta, job_id: String) {
        let id = meta.dispatch_id.clone();
        let (ctl, acked, end_stored) = job::control(meta.acked_seq);
        let before = self.entries().insert(
            id.clone(),
            Entry::Accepted {
                job_id: job_id.clone(),
                ctl,
            },
        );
        if let Some(Entry::Starting { cancel: true }) = before {
            self.cancel_job(id.clone(), job_id.clone());
        }
        let me = self.clone();
        let done_job = job_id.clone();
        let task = JobTask {
            spool: Arc::clone(&self.inner.spool),
            socket: self.inner.settings.wardend_socket.clone(),
            meta,
            job_id,
            cap: self.inner.settings.spool_cap,
            links: self.inner.link.subscribe(),
            acked,
            end_stored,
            stop: self.inner.stop.clone(),
            done: Box::new(move || {
                let now = now_s();
                let mut entries = me.entries();
                // Old ends go (they hold no spool record).
                entries.retain(|_, e| {
                    !matches!(e, Entry::Done { at, .. } if now.saturating_sub(*at) >= REFUSAL_KEPT_S)
                });
                entries.insert(
                    id,
                    Entry::Done {
                        job_id: done_job,
                        at: now,
                    },
                );
            }),
        };
        tokio::spawn(task.run());
    }
}

/// Reports the host's fleet actions on one link: once now, then whenever they change.
async fn report_actions(settings: Settings, out: LinkOut, stop: Stop) {
    let mut last: Option<Vec<warden_fleet_proto::link::RemoteAction>> = None;
    let mut warned = false;
    loop {
        match wardend::fleet_actions(&settings.wardend_socket).await {
            Ok(actions) => {
                warned = false;
                if last.as_ref() != Some(&actions) {
                    tracing::info!(
                        count = actions.len(),
                        "dispatch: reporting the host's fleet actions"
                    );
                    let msg = AgentMessage::Actions {
                        actions: actions.clone(),
                    };
                    if !out.send_wait(msg).await {
                        return;
                    }
                    last = Some(actions);
                }
            }
            Err(e) => {
                if !warned {
                    warned = true;
                    tracing::warn!(error = %e, kind = e.kind().map(|k| k.as_str()),
                        "dispatch: cannot ask wardend for the host's fleet actions");
                }
            }
        }
        tokio::select! {
            () = stop.wait() => return,
            () = out.tx.closed() => return,
            () = tokio::time::sleep(settings.actions_poll) => {}
        }
    }
}
