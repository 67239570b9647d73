//! A connection's media session: joining a consultation's media on its SFU node,
//! relaying the browser's offers, answers, candidates and reports to the node (and the
//! node's to the browser), and keeping a lost connection's session for
//! [`RESUME_GRACE`] so that a page back on a new connection takes it over.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use protocol::control::{ControlOp, ControlOutcome};
use protocol::{
    CallRole, ClientMsg, ClinicId, ConsultationId, ErrorCode, IceServer, MAX_CANDIDATE_BYTES,
    MAX_SDP_BYTES, MediaEndReason, MediaPath, ParticipantId, ServerMsg, Timestamp,
};
use tokio::sync::{mpsc, oneshot};

use super::{Connection, QUALITY_REPORT_MIN, app_error, error};
use crate::auth::Principal;
use crate::media::{Link, MEDIA_QUEUE, MediaSender};
use crate::store::QualityReport;
use crate::turn::Subject;

/// A request for a live connection's media session in `consultation`.
pub(super) struct Handover {
    pub(super) consultation: ConsultationId,
    pub(super) reply: oneshot::Sender<MediaSession>,
}

pub(super) async fn next_handover(rx: &mut Option<mpsc::Receiver<Handover>>) -> Option<Handover> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// A connection's participant on an SFU node, and its own channel for what the node says
/// and for the answers to requests that run on their own tasks: a message of a session
/// the browser already left can never reach the next one.
pub(super) struct MediaSession {
    pub(super) participant: ParticipantId,
    pub(super) link: Arc<Link>,
    pub(super) tx: MediaSender,
    pub(super) rx: mpsc::Receiver<ServerMsg>,
    /// Where the consultation is: the clinic whose room holds it, and its id.
    pub(super) clinic: ClinicId,
    pub(super) consultation: ConsultationId,
    /// How the browser last said its media reaches the SFU (recorded only on a change).
    pub(super) path: Option<MediaPath>,
    /// When it joined, and when its browser last reported the call's quality.
    pub(super) started_at: Timestamp,
    pub(super) last_quality: Option<Instant>,
}

/// The next media message of the session, if there is one (otherwise never).
pub(super) async fn next_media(media: &mut Option<MediaSession>) -> Option<ServerMsg> {
    match media {
        Some(s) => s.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// How long a lost connection's media session waits for `resume_media`.
pub(super) const RESUME_GRACE: Duration = Duration::from_secs(15);

/// Media sessions of lost connections, each kept for [`RESUME_GRACE`] under its owner's
/// key (a patient's visit, a member of staff's sign-in) and then left. The SFU keeps the
/// participant meanwhile, so a page back within the grace restarts ICE instead of joining
/// again.
#[derive(Default)]
pub(in crate::server) struct Parked {
    sessions: std::sync::Mutex<HashMap<String, (u64, MediaSession)>>,
    tickets: std::sync::atomic::AtomicU64,
    /// Live connections by key: a page back on a new connection before its old one was
    /// seen to be lost takes the session from it.
    live: std::sync::Mutex<HashMap<String, Vec<LiveConnection>>>,
}

/// A live connection (its id) and the way to ask it for its media session.
type LiveConnection = (u64, mpsc::Sender<Handover>);

impl std::fmt::Debug for Parked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        f.debug_struct("Parked")
            .field("sessions", &self.lock().keys().collect::<Vec<_>>())
            .field(
                "live",
                &live.iter().map(|(k, v)| (k, v.len())).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl Parked {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (u64, MediaSession)>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn park(self: &Arc<Self>, key: String, session: MediaSession) {
        let ticket = self
            .tickets
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Some((_, older)) = self.lock().insert(key.clone(), (ticket, session)) {
            older.leave();
        }
        let parked = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RESUME_GRACE).await;
            let expired = {
                let mut sessions = parked.lock();
                match sessions.get(&key) {
                    Some((t, _)) if *t == ticket => sessions.remove(&key),
                    _ => None,
                }
            };
            if let Some((_, session)) = expired {
                session.leave();
            }
        });
    }

    pub(super) fn register(&self, key: &str, id: u64, handover: mpsc::Sender<Handover>) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.entry(key.to_owned()).or_default().push((id, handover));
    }

    pub(super) fn unregister(&self, key: &str, id: u64) {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(list) = live.get_mut(key) {
            list.retain(|(i, _)| *i != id);
            if list.is_empty() {
                live.remove(key);
            }
        }
    }

    /// The session `key` has in `consultation`, wherever it is: kept after its connection
    /// was lost, or still on another live connection of `key` (which hands it over and
    /// closes). The old connection may be seen to go while this asks: a connection that
    /// ends parks its session before it leaves the live list and before its handover
    /// channel closes, so when it neither answers nor is listed, the session is parked by
    /// then, and looked for there again.
    pub(super) async fn claim(
        &self,
        key: &str,
        consultation: ConsultationId,
        except: u64,
    ) -> Option<MediaSession> {
        if let Some(s) = self.take(key, consultation) {
            return Some(s);
        }
        if let Some(s) = self.take_from_live(key, consultation, except).await {
            return Some(s);
        }
        self.take(key, consultation)
    }

    /// The session in `consultation` of another live connection of `key`, which hands it
    /// over and closes.
    async fn take_from_live(
        &self,
        key: &str,
        consultation: ConsultationId,
        except: u64,
    ) -> Option<MediaSession> {
        let others: Vec<mpsc::Sender<Handover>> = {
            let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
            live.get(key)?
                .iter()
                .filter(|(i, _)| *i != except)
                .map(|(_, tx)| tx.clone())
                .collect()
        };
        for tx in others {
            let (reply, answer) = oneshot::channel();
            if tx
                .try_send(Handover {
                    consultation,
                    reply,
                })
                .is_err()
            {
                continue;
            }
            if let Ok(Ok(session)) = tokio::time::timeout(Duration::from_secs(1), answer).await {
                return Some(session);
            }
        }
        None
    }

    /// The session `key` left in `consultation`, if it is still kept.
    fn take(&self, key: &str, consultation: ConsultationId) -> Option<MediaSession> {
        let mut sessions = self.lock();
        match sessions.get(key) {
            Some((_, s)) if s.consultation == consultation => sessions.remove(key).map(|(_, s)| s),
            _ => None,
        }
    }
}

impl MediaSession {
    /// Removes the participant from its node, without waiting.
    pub(super) fn leave(self) {
        self.link.unroute(self.participant);
        tokio::spawn(async move {
            let _ = self
                .link
                .request(ControlOp::Leave {
                    participant: self.participant,
                })
                .await;
        });
    }
}

impl Connection {
    /// A media message: joining and leaving are answered here; offers, answers and
    /// candidates go to the node on their own tasks (their answers arrive on the session's
    /// channel),
    /// so a node gathering candidates never holds up this connection's other traffic.
    pub(super) async fn media_message(
        &mut self,
        principal: &Principal,
        msg: ClientMsg,
    ) -> Option<ServerMsg> {
        let not_joined = || {
            Some(error(
                None,
                ErrorCode::InvalidInput,
                "join the consultation's media first",
            ))
        };
        match msg {
            ClientMsg::JoinMedia { consultation } => {
                if let Some(old) = self.media.take() {
                    old.leave();
                }
                // A page joining again (its session could not be resumed) is no longer the
                // self it left behind: that one leaves now, not at the end of the grace, so
                // nobody sees a frozen copy of this person meanwhile.
                if let Some(key) = &self.park_key {
                    if let Some(old) = self.state.parked.take(key, consultation) {
                        old.leave();
                    }
                }
                Some(self.join_media(principal, consultation).await)
            }
            ClientMsg::ResumeMedia { consultation } => {
                if self.media.is_some() {
                    return Some(error(
                        None,
                        ErrorCode::Conflict,
                        "already in a media session",
                    ));
                }
                let key = self.park_key.clone()?;
                let parked = self.state.parked.clone();
                match parked.claim(&key, consultation, self.id).await {
                    Some(session) => {
                        tracing::debug!(%consultation, "media resumed");
                        self.media = Some(session);
                        Some(ServerMsg::MediaResumed { consultation })
                    }
                    None => {
                        tracing::debug!(%consultation, ?parked, "no media session to resume");
                        Some(error(
                            None,
                            ErrorCode::NotFound,
                            "no media session to resume: join again",
                        ))
                    }
                }
            }
            ClientMsg::LeaveMedia => {
                let session = self.media.take()?;
                session.leave();
                Some(ServerMsg::MediaEnded {
                    reason: MediaEndReason::Left,
                })
            }
            ClientMsg::PublishOffer { sdp } | ClientMsg::SubscriberAnswer { sdp }
                if sdp.len() > MAX_SDP_BYTES =>
            {
                Some(error(None, ErrorCode::InvalidInput, "the SDP is too long"))
            }
            ClientMsg::IceCandidate { candidate, .. }
                if candidate.candidate.len() > MAX_CANDIDATE_BYTES =>
            {
                Some(error(
                    None,
                    ErrorCode::InvalidInput,
                    "the ICE candidate is too long",
                ))
            }
            ClientMsg::PublishOffer { sdp } => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                let op = ControlOp::Publish {
                    participant: s.participant,
                    sdp,
                };
                self.relay(op, |o| match o {
                    ControlOutcome::Answer { sdp } => Some(ServerMsg::PublishAnswer { sdp }),
                    _ => None,
                });
                None
            }
            ClientMsg::SubscriberAnswer { sdp } => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                let op = ControlOp::SubscriberAnswer {
                    participant: s.participant,
                    sdp,
                };
                self.relay(op, |_| Some(ServerMsg::SubscriberAnswerApplied));
                None
            }
            ClientMsg::MediaState(state) => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                let op = ControlOp::MediaState {
                    participant: s.participant,
                    state,
                };
                self.relay_in_order(op).await;
                None
            }
            ClientMsg::CallQuality(figures) if !figures.valid() => Some(error(
                None,
                ErrorCode::InvalidInput,
                "a share of more than a thousand per thousand",
            )),
            ClientMsg::CallQuality(figures) => {
                let Some(s) = &mut self.media else {
                    return not_joined();
                };
                // At most one report per QUALITY_REPORT_MIN of a session; more are dropped.
                let now = Instant::now();
                if s.last_quality
                    .is_some_and(|t| now.duration_since(t) < QUALITY_REPORT_MIN)
                {
                    return None;
                }
                s.last_quality = Some(now);
                let report = QualityReport {
                    clinic: s.clinic.clone(),
                    consultation: s.consultation,
                    session: s.participant,
                    role: match principal {
                        Principal::Patient(_) => CallRole::Patient,
                        Principal::Staff(_) => CallRole::Clinician,
                    },
                    started_at: s.started_at,
                    updated_at: crate::service::now(),
                    figures,
                };
                // Best effort, and no answer: the call goes on whatever the store says.
                if let Err(e) = self.state.service.record_call_quality(report).await {
                    tracing::debug!(error = %e, "call quality not recorded");
                }
                None
            }
            ClientMsg::ReceiveVideo { on } => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                let op = ControlOp::ReceiveVideo {
                    participant: s.participant,
                    on,
                };
                self.relay_in_order(op).await;
                None
            }
            ClientMsg::MediaPath { path } => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                if s.path == Some(path) {
                    return None;
                }
                let (clinic, consultation) = (s.clinic.clone(), s.consultation);
                // Best effort, and no answer: a report that crosses the person's leaving
                // the consultation has nothing left to describe.
                match self
                    .state
                    .service
                    .media_path(principal, &clinic, consultation, path)
                    .await
                {
                    Ok(()) => {
                        if let Some(s) = &mut self.media {
                            s.path = Some(path);
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "media path not recorded"),
                }
                None
            }
            ClientMsg::RestartIce => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                let op = ControlOp::RestartIce {
                    participant: s.participant,
                };
                self.relay(op, |_| None);
                // Fresh credentials for the connections' new gathering: coturn checks a
                // credential's expiry when an allocation is made, so one from the start of
                // a long call would be refused now. Sent before the node's new offer.
                Some(ServerMsg::IceServers {
                    ice_servers: self.ice_servers(principal),
                })
            }
            ClientMsg::IceCandidate { leg, candidate } => {
                let Some(s) = &self.media else {
                    return not_joined();
                };
                let op = ControlOp::Candidate {
                    participant: s.participant,
                    leg,
                    candidate,
                };
                self.relay(op, |_| None);
                None
            }
            ClientMsg::Hello { .. } | ClientMsg::Command { .. } => None,
        }
    }

    async fn join_media(
        &mut self,
        principal: &Principal,
        consultation: ConsultationId,
    ) -> ServerMsg {
        let place = match self
            .state
            .service
            .place_media(principal, consultation)
            .await
        {
            Ok(p) => p,
            Err(e) => return app_error(None, &e),
        };
        let participant = ParticipantId::random();
        let (tx, rx) = mpsc::channel(MEDIA_QUEUE);
        place.link.route(participant, tx.clone());
        let joined = place
            .link
            .request(ControlOp::Join {
                consultation,
                participant,
                visit: place.visit,
            })
            .await;
        match joined {
            Ok(_) => {
                tracing::debug!(node = %place.node, %consultation, "media joined");
                self.media = Some(MediaSession {
                    participant,
                    link: place.link,
                    tx,
                    rx,
                    clinic: place.clinic,
                    consultation,
                    path: None,
                    started_at: crate::service::now(),
                    last_quality: None,
                });
                ServerMsg::MediaJoined {
                    consultation,
                    ice_servers: self.ice_servers(principal),
                }
            }
            Err(e) => {
                place.link.unroute(participant);
                app_error(None, &e)
            }
        }
    }

    /// The ICE servers for this person's media, with a TURN credential of their own minted
    /// now: it travels in the message it is put in only, never in a log.
    fn ice_servers(&self, principal: &Principal) -> Vec<IceServer> {
        let subject = match principal {
            Principal::Patient(visit) => Subject::Visit(*visit),
            Principal::Staff(claims) => Subject::Staff(&claims.sub),
        };
        let now_secs = crate::service::now().0 / 1000;
        self.state
            .service
            .media()
            .map(|m| m.ice_servers().for_call(subject, now_secs))
            .unwrap_or_default()
    }

    /// Puts `op` on the link to this connection's node now, so that it reaches the node
    /// after everything this connection sent before (a state that changes twice ends as
    /// the browser left it), then awaits its outcome on its own task; a refusal comes back
    /// on the session's channel.
    async fn relay_in_order(&mut self, op: ControlOp) {
        let Some(s) = &self.media else { return };
        let tx = s.tx.clone();
        match s.link.submit(op).await {
            Ok(pending) => {
                tokio::spawn(async move {
                    if let Err(e) = pending.outcome().await {
                        let _ = tx.send(app_error(None, &e)).await;
                    }
                });
            }
            Err(e) => {
                let _ = tx.send(app_error(None, &e)).await;
            }
        }
    }

    /// Sends `op` to this connection's node on its own task; what `answer` makes of the
    /// outcome, or the refusal, comes back on the session's channel.
    fn relay(&self, op: ControlOp, answer: fn(ControlOutcome) -> Option<ServerMsg>) {
        let Some(s) = &self.media else { return };
        let link = s.link.clone();
        let tx = s.tx.clone();
        tokio::spawn(async move {
            let reply = match link.request(op).await {
                Ok(o) => answer(o),
                Err(e) => Some(app_error(None, &e)),
            };
            if let Some(r) = reply {
                let _ = tx.send(r).await;
            }
        });
    }
}
