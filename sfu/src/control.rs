//! The node's side of the control channel (`protocol::control`): carries out signalling's
//! requests on the [`Engine`] and reports back what happens to the participants.
//!
//! One [`Node`] per process; each control link (one per signalling instance using this
//! node, or the in-process pair of channels in a single node) is served by
//! [`Node::serve`]. A participant belongs to the link that joined it: its events go back
//! on that link, and it is removed when that link ends (its browser's websocket lived on
//! that signalling instance).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use protocol::control::{ControlOp, ControlOutcome, ControlRequest, NodeMsg, PROBE_LIFETIME_MS};
use protocol::{
    ConsultationId, ErrorCode, MAX_CANDIDATE_BYTES, MAX_SDP_BYTES, MediaEndReason, ParticipantId,
    VisitId,
};
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::engine::{Engine, EngineError, EngineEvent};

/// Messages that may wait for a slow link before its requests are back-pressured.
pub const LINK_QUEUE: usize = 1024;

/// How long a node that starts moving its calls waits for its record to say so (for
/// signalling to place them elsewhere) before it tells them to move anyway.
const ANNOUNCE_WAIT: Duration = Duration::from_secs(2);
/// How often a draining node looks whether its calls have all ended.
const DRAIN_POLL: Duration = Duration::from_millis(250);

/// Whether a node takes consultations (see [`Node::drain`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// Takes new consultations.
    Serving,
    /// Takes no new consultation; the ones it carries go on until `until`.
    Draining { until: tokio::time::Instant },
    /// Moving the calls it carries to other nodes; nobody may join.
    Moving,
}

/// The SFU node: its engine and who joined through which link.
#[derive(Debug)]
pub struct Node {
    engine: Arc<Engine>,
    members: Mutex<HashMap<u128, Member>>,
    next_link: AtomicU64,
    /// Whether it takes consultations; watched by the heartbeat, which writes a change
    /// into the node's record at once.
    service: watch::Sender<Service>,
    /// The service the node's record says, as last written (by the heartbeat).
    announced: watch::Sender<Service>,
}

#[derive(Debug, Clone)]
struct Member {
    consultation: ConsultationId,
    visit: Option<VisitId>,
    link: u64,
    out: mpsc::Sender<NodeMsg>,
}

/// What the node reports in its heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    pub participants: u32,
    pub consultations: u32,
}

fn failed(code: ErrorCode, message: impl Into<String>) -> ControlOutcome {
    ControlOutcome::Failed {
        code,
        message: message.into(),
    }
}

fn engine_failure(e: &EngineError) -> ControlOutcome {
    let code = match e {
        EngineError::UnknownParticipant => ErrorCode::NotFound,
        EngineError::AlreadyJoined => ErrorCode::AlreadyExists,
        EngineError::BadSdp(_) | EngineError::NoOfferPending | EngineError::BadCandidate(_) => {
            ErrorCode::InvalidInput
        }
        EngineError::NoFreePort => ErrorCode::Unavailable,
        EngineError::WebRtc(_) => ErrorCode::Internal,
    };
    failed(code, e.to_string())
}

fn key(p: ParticipantId) -> u128 {
    p.0.as_u128()
}

fn participant(key: u128) -> ParticipantId {
    ParticipantId(Uuid::from_u128(key))
}

impl Node {
    pub fn new(engine: Arc<Engine>) -> Arc<Self> {
        Arc::new(Self {
            engine,
            members: Mutex::new(HashMap::new()),
            next_link: AtomicU64::new(1),
            service: watch::Sender::new(Service::Serving),
            announced: watch::Sender::new(Service::Serving),
        })
    }

    pub fn engine(&self) -> &Arc<Engine> {
        &self.engine
    }

    /// Whether the node takes consultations now.
    pub fn service(&self) -> Service {
        *self.service.borrow()
    }

    /// Wakes when [`Self::service`] changes.
    pub fn watch_service(&self) -> watch::Receiver<Service> {
        self.service.subscribe()
    }

    /// The heartbeat wrote a record saying `service`.
    pub fn announced(&self, service: Service) {
        self.announced.send_replace(service);
    }

    /// Takes the node out of service: no new consultation from now; the calls it carries
    /// go on until they end or `deadline` passes, then whoever is left is moved to another
    /// node ([`MediaEndReason::NodeMoved`]: their browsers join again, and signalling
    /// places them elsewhere, since the node's record says it is moving). Returns once the
    /// node carries nobody, or it was put back into service ([`Self::resume`]). Calling it
    /// again while draining sets a new deadline (a deadline of zero moves the calls now).
    pub async fn drain(self: &Arc<Self>, deadline: Duration) {
        let until = tokio::time::Instant::now() + deadline;
        self.service.send_modify(|s| {
            if *s != Service::Moving {
                *s = Service::Draining { until };
            }
        });
        tracing::info!(
            deadline_s = deadline.as_secs(),
            "draining: no new consultations"
        );
        loop {
            match self.service() {
                Service::Serving => return,
                Service::Moving => break,
                Service::Draining { until } => {
                    if self.load().participants == 0 {
                        tracing::info!("drained: every call here ended");
                        return;
                    }
                    if tokio::time::Instant::now() >= until {
                        self.service.send_replace(Service::Moving);
                        break;
                    }
                }
            }
            tokio::time::sleep(DRAIN_POLL).await;
        }
        self.move_calls().await;
    }

    /// Puts a draining node back into service (calls it already moved stay where they went).
    pub fn resume(&self) {
        let before = self.service.send_replace(Service::Serving);
        if before != Service::Serving {
            tracing::info!("back in service");
        }
    }

    /// Tells everyone here to join again elsewhere, once the node's record says it is
    /// moving (or after [`ANNOUNCE_WAIT`], for a node that keeps no record).
    async fn move_calls(&self) {
        let mut announced = self.announced.subscribe();
        let _ = tokio::time::timeout(ANNOUNCE_WAIT, announced.wait_for(|s| *s == Service::Moving))
            .await;
        let load = self.load();
        tracing::info!(
            participants = load.participants,
            consultations = load.consultations,
            "deadline passed: moving the calls left to other nodes"
        );
        self.remove_where(|_| true, MediaEndReason::NodeMoved).await;
    }

    pub fn load(&self) -> Load {
        let members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        let mut consultations: Vec<ConsultationId> =
            members.values().map(|m| m.consultation).collect();
        consultations.sort_unstable();
        consultations.dedup();
        Load {
            participants: u32::try_from(members.len()).unwrap_or(u32::MAX),
            consultations: u32::try_from(consultations.len()).unwrap_or(u32::MAX),
        }
    }

    /// Serves one control link until `requests` ends, then removes every participant that
    /// joined through it.
    pub async fn serve(
        self: Arc<Self>,
        mut requests: mpsc::Receiver<ControlRequest>,
        out: mpsc::Sender<NodeMsg>,
    ) {
        let link = self.next_link.fetch_add(1, Ordering::Relaxed);
        let (events_tx, mut events) = mpsc::unbounded_channel();
        loop {
            tokio::select! {
                request = requests.recv() => {
                    let Some(request) = request else { break };
                    // A participant's state (what it sends, whether it takes video) is
                    // applied here, in the order it came: two changes in a row end as the
                    // browser left them. Its engine call is a quick one.
                    if request.op.is_state() {
                        let outcome = self.handle(link, request.op, &out, events_tx.clone()).await;
                        let _ = out.send(NodeMsg::Reply { id: request.id, outcome }).await;
                        continue;
                    }
                    // Every other request on its own task: an offer being answered does not
                    // hold up the rest (early candidates are queued by the engine).
                    let node = self.clone();
                    let out = out.clone();
                    let events = events_tx.clone();
                    tokio::spawn(async move {
                        let id = request.id;
                        let outcome = node.handle(link, request.op, &out, events).await;
                        let _ = out.send(NodeMsg::Reply { id, outcome }).await;
                    });
                }
                Some(event) = events.recv() => self.engine_event(event).await,
            }
        }
        let mine: Vec<u128> = {
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<u128> = members
                .iter()
                .filter(|(_, m)| m.link == link)
                .map(|(k, _)| *k)
                .collect();
            for k in &keys {
                members.remove(k);
            }
            keys
        };
        for k in mine {
            let _ = self.engine.leave(k).await;
        }
        tracing::debug!(link, "control link ended");
    }

    async fn handle(
        self: &Arc<Self>,
        link: u64,
        op: ControlOp,
        out: &mpsc::Sender<NodeMsg>,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> ControlOutcome {
        match op {
            ControlOp::Join {
                consultation,
                participant,
                visit,
            } => {
                if let Err(refused) = self.open_to(consultation) {
                    return refused;
                }
                let k = key(participant);
                let member = Member {
                    consultation,
                    visit,
                    link,
                    out: out.clone(),
                };
                if let Err(refused) = self.enlist(k, member) {
                    return refused;
                }
                match self.engine.join(consultation.0.as_u128(), k, events).await {
                    Ok(()) => ControlOutcome::Done,
                    Err(e) => {
                        self.forget(k);
                        engine_failure(&e)
                    }
                }
            }
            ControlOp::Publish { participant, sdp } => {
                if sdp.len() > MAX_SDP_BYTES {
                    return failed(ErrorCode::InvalidInput, "the SDP is too long");
                }
                match self.engine.publish(key(participant), sdp).await {
                    Ok(sdp) => ControlOutcome::Answer { sdp },
                    Err(e) => engine_failure(&e),
                }
            }
            ControlOp::SubscriberAnswer { participant, sdp } => {
                if sdp.len() > MAX_SDP_BYTES {
                    return failed(ErrorCode::InvalidInput, "the SDP is too long");
                }
                match self.engine.subscriber_answer(key(participant), sdp).await {
                    Ok(()) => ControlOutcome::Done,
                    Err(e) => engine_failure(&e),
                }
            }
            ControlOp::Candidate {
                participant,
                leg,
                candidate,
            } => {
                if candidate.candidate.len() > MAX_CANDIDATE_BYTES {
                    return failed(ErrorCode::InvalidInput, "the candidate is too long");
                }
                match self
                    .engine
                    .add_candidate(key(participant), leg, candidate)
                    .await
                {
                    Ok(()) => ControlOutcome::Done,
                    Err(e) => engine_failure(&e),
                }
            }
            ControlOp::RestartIce { participant } => {
                match self.engine.restart_ice(key(participant)).await {
                    Ok(()) => ControlOutcome::Done,
                    Err(e) => engine_failure(&e),
                }
            }
            ControlOp::ReceiveVideo { participant, on } => {
                match self.engine.receive_video(key(participant), on).await {
                    Ok(()) => ControlOutcome::Done,
                    Err(e) => engine_failure(&e),
                }
            }
            ControlOp::MediaState { participant, state } => {
                match self.engine.media_state(key(participant), state).await {
                    Ok(()) => ControlOutcome::Done,
                    Err(e) => engine_failure(&e),
                }
            }
            ControlOp::Leave { participant } => {
                let k = key(participant);
                if self.forget(k).is_none() {
                    return failed(ErrorCode::NotFound, "no such participant");
                }
                let _ = self.engine.leave(k).await;
                ControlOutcome::Done
            }
            ControlOp::RemoveVisit {
                consultation,
                visit,
            } => {
                self.remove_where(
                    |m| m.consultation == consultation && m.visit == Some(visit),
                    MediaEndReason::RemovedFromConsultation,
                )
                .await;
                ControlOutcome::Done
            }
            ControlOp::EndConsultation { consultation } => {
                self.remove_where(
                    |m| m.consultation == consultation,
                    MediaEndReason::ConsultationEnded,
                )
                .await;
                ControlOutcome::Done
            }
            ControlOp::Probe { participant, sdp } => {
                if sdp.len() > MAX_SDP_BYTES {
                    return failed(ErrorCode::InvalidInput, "the SDP is too long");
                }
                if self.service() != Service::Serving {
                    return failed(ErrorCode::Unavailable, "this media server is draining");
                }
                self.probe(link, participant, sdp, out, events).await
            }
            ControlOp::Drain { deadline_ms } => {
                let node = self.clone();
                tokio::spawn(async move {
                    node.drain(Duration::from_millis(deadline_ms)).await;
                });
                ControlOutcome::Done
            }
            ControlOp::Resume => {
                self.resume();
                ControlOutcome::Done
            }
        }
    }

    /// Whether a participant of `consultation` may join here now: always while serving;
    /// while draining, only into a consultation the node carries; never while moving.
    fn open_to(&self, consultation: ConsultationId) -> Result<(), ControlOutcome> {
        match self.service() {
            Service::Serving => Ok(()),
            Service::Draining { .. } => {
                let carried = self
                    .members
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .any(|m| m.consultation == consultation);
                if carried {
                    Ok(())
                } else {
                    Err(failed(
                        ErrorCode::Unavailable,
                        "this media server is draining and takes no new consultation",
                    ))
                }
            }
            Service::Moving => Err(failed(
                ErrorCode::Unavailable,
                "this media server is moving its calls elsewhere",
            )),
        }
    }

    /// A pre-call check: a participant alone in a room of its own, publishing; removed
    /// after [`PROBE_LIFETIME_MS`] (or when its link ends).
    async fn probe(
        self: &Arc<Self>,
        link: u64,
        participant: ParticipantId,
        sdp: String,
        out: &mpsc::Sender<NodeMsg>,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> ControlOutcome {
        let k = key(participant);
        let member = Member {
            consultation: ConsultationId(participant.0),
            visit: None,
            link,
            out: out.clone(),
        };
        if let Err(refused) = self.enlist(k, member) {
            return refused;
        }
        let answer = match self.engine.join(k, k, events).await {
            Ok(()) => self.engine.publish(k, sdp).await,
            Err(e) => Err(e),
        };
        // Answered: it lives its lifetime; refused: it goes now.
        let answered = answer.is_ok();
        let node = self.clone();
        tokio::spawn(async move {
            if answered {
                tokio::time::sleep(Duration::from_millis(PROBE_LIFETIME_MS)).await;
            }
            if node.forget(k).is_some() {
                let _ = node.engine.leave(k).await;
            }
        });
        match answer {
            Ok(sdp) => ControlOutcome::Answer { sdp },
            Err(e) => engine_failure(&e),
        }
    }

    /// Records a new participant, unless one with that id exists.
    fn enlist(&self, k: u128, member: Member) -> Result<(), ControlOutcome> {
        let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
        if members.contains_key(&k) {
            return Err(failed(
                ErrorCode::AlreadyExists,
                "the participant has joined",
            ));
        }
        members.insert(k, member);
        Ok(())
    }

    fn forget(&self, k: u128) -> Option<Member> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&k)
    }

    /// Removes the matching participants and tells each one's link why.
    async fn remove_where(&self, matches: impl Fn(&Member) -> bool, reason: MediaEndReason) {
        let gone: Vec<(u128, Member)> = {
            let mut members = self.members.lock().unwrap_or_else(|e| e.into_inner());
            let keys: Vec<u128> = members
                .iter()
                .filter(|(_, m)| matches(m))
                .map(|(k, _)| *k)
                .collect();
            keys.into_iter()
                .filter_map(|k| members.remove(&k).map(|m| (k, m)))
                .collect()
        };
        for (k, m) in gone {
            let _ = self.engine.leave(k).await;
            let _ = m
                .out
                .send(NodeMsg::Left {
                    participant: participant(k),
                    reason,
                })
                .await;
        }
    }

    async fn engine_event(&self, event: EngineEvent) {
        match event {
            EngineEvent::PeerState {
                participant: k,
                stream,
                state,
            } => {
                self.tell(
                    k,
                    NodeMsg::PeerState {
                        participant: participant(k),
                        stream,
                        state,
                    },
                )
                .await;
            }
            EngineEvent::PublishRenegotiate { participant: k } => {
                self.tell(
                    k,
                    NodeMsg::PublishRenegotiate {
                        participant: participant(k),
                    },
                )
                .await;
            }
            EngineEvent::PublishLayers {
                participant: k,
                mid,
                paused,
            } => {
                self.tell(
                    k,
                    NodeMsg::PublishLayers {
                        participant: participant(k),
                        mid,
                        paused,
                    },
                )
                .await;
            }
            EngineEvent::Link {
                participant: k,
                figures,
            } => {
                self.tell(
                    k,
                    NodeMsg::Link {
                        participant: participant(k),
                        figures,
                    },
                )
                .await;
            }
            EngineEvent::SubscriberOffer {
                participant: k,
                sdp,
            } => {
                if let Some(m) = self.member(k) {
                    let _ = m
                        .out
                        .send(NodeMsg::SubscriberOffer {
                            participant: participant(k),
                            sdp,
                        })
                        .await;
                }
            }
            EngineEvent::Connection {
                participant: k,
                connected: true,
            } => {
                if let Some(m) = self.member(k) {
                    let _ = m
                        .out
                        .send(NodeMsg::Connection {
                            participant: participant(k),
                            connected: true,
                        })
                        .await;
                }
            }
            // Failed (ICE or DTLS) or closed by the peer: free it. A participant removed on
            // purpose is already forgotten, so this says nothing twice.
            EngineEvent::Connection {
                participant: k,
                connected: false,
            } => {
                if let Some(m) = self.forget(k) {
                    let _ = self.engine.leave(k).await;
                    let _ = m
                        .out
                        .send(NodeMsg::Left {
                            participant: participant(k),
                            reason: MediaEndReason::ConnectionFailed,
                        })
                        .await;
                }
            }
        }
    }

    /// Sends `msg` on the link that joined participant `k`, if it is still here.
    async fn tell(&self, k: u128, msg: NodeMsg) {
        if let Some(m) = self.member(k) {
            let _ = m.out.send(msg).await;
        }
    }

    fn member(&self, k: u128) -> Option<Member> {
        self.members
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&k)
            .cloned()
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};

    use protocol::MediaState;

    use super::*;
    use crate::engine::EngineConfig;

    fn join(id: u64, consultation: ConsultationId, participant: ParticipantId) -> ControlRequest {
        ControlRequest {
            id,
            op: ControlOp::Join {
                consultation,
                participant,
                visit: None,
            },
        }
    }

    /// A node on one media loop serving one control link: the node, the way in and the
    /// way out (room for `queue` messages each way).
    fn serving_node(
        queue: usize,
    ) -> (
        Arc<Node>,
        mpsc::Sender<ControlRequest>,
        mpsc::Receiver<NodeMsg>,
    ) {
        let engine =
            Engine::with_loops(EngineConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST)), 1).unwrap();
        let node = Node::new(engine);
        let (requests, requests_rx) = mpsc::channel(queue);
        let (out_tx, out) = mpsc::channel(queue);
        tokio::spawn(node.clone().serve(requests_rx, out_tx));
        (node, requests, out)
    }

    /// The reply to request `id`, skipping other messages (kept in `others`).
    async fn reply(
        out: &mut mpsc::Receiver<NodeMsg>,
        id: u64,
        others: &mut Vec<NodeMsg>,
    ) -> ControlOutcome {
        loop {
            match tokio::time::timeout(Duration::from_secs(5), out.recv()).await {
                Ok(Some(NodeMsg::Reply { id: got, outcome })) if got == id => return outcome,
                Ok(Some(other)) => others.push(other),
                other => panic!("no reply to {id}: {other:?}"),
            }
        }
    }

    fn refused(o: &ControlOutcome) -> bool {
        matches!(
            o,
            ControlOutcome::Failed {
                code: ErrorCode::Unavailable,
                ..
            }
        )
    }

    #[tokio::test]
    async fn a_draining_node_keeps_its_calls_until_the_deadline_then_moves_them() {
        let (node, requests, mut out) = serving_node(16);
        let mut others = Vec::new();
        let carried = ConsultationId(Uuid::new_v4());
        let (a, b) = (ParticipantId(Uuid::new_v4()), ParticipantId(Uuid::new_v4()));

        requests.send(join(1, carried, a)).await.unwrap();
        assert_eq!(reply(&mut out, 1, &mut others).await, ControlOutcome::Done);

        let draining = tokio::spawn({
            let node = node.clone();
            async move { node.drain(Duration::from_millis(600)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(matches!(node.service(), Service::Draining { .. }));
        // The consultation it carries may still be joined; a new one may not.
        requests.send(join(2, carried, b)).await.unwrap();
        assert_eq!(reply(&mut out, 2, &mut others).await, ControlOutcome::Done);
        let new = ConsultationId(Uuid::new_v4());
        requests
            .send(join(3, new, ParticipantId(Uuid::new_v4())))
            .await
            .unwrap();
        assert!(refused(&reply(&mut out, 3, &mut others).await));

        // The deadline passes (the node keeps no record: it waits its announce time):
        // both are told to move, and the drain ends with nobody left.
        tokio::time::timeout(Duration::from_secs(5), draining)
            .await
            .expect("the drain ends")
            .unwrap();
        assert_eq!(node.service(), Service::Moving);
        assert_eq!(node.load().participants, 0);
        while let Ok(m) = out.try_recv() {
            others.push(m);
        }
        let mut moved: Vec<ParticipantId> = others
            .iter()
            .filter_map(|m| match m {
                NodeMsg::Left {
                    participant,
                    reason: MediaEndReason::NodeMoved,
                } => Some(*participant),
                _ => None,
            })
            .collect();
        moved.sort();
        let mut both = vec![a, b];
        both.sort();
        assert_eq!(moved, both);
        // Moving: not even the carried consultation may be joined.
        requests
            .send(join(4, carried, ParticipantId(Uuid::new_v4())))
            .await
            .unwrap();
        assert!(refused(&reply(&mut out, 4, &mut others).await));

        // Back in service: anything may be joined again.
        requests
            .send(ControlRequest {
                id: 5,
                op: ControlOp::Resume,
            })
            .await
            .unwrap();
        assert_eq!(reply(&mut out, 5, &mut others).await, ControlOutcome::Done);
        requests
            .send(join(6, new, ParticipantId(Uuid::new_v4())))
            .await
            .unwrap();
        assert_eq!(reply(&mut out, 6, &mut others).await, ControlOutcome::Done);
    }

    /// A participant's state changed many times in a row (camera off, on, off...): the
    /// others are told every change in the order it was sent, and end with the last.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn state_changes_are_applied_in_the_order_they_were_sent() {
        let (_node, requests, mut out) = serving_node(256);
        let mut others = Vec::new();
        let call = ConsultationId(Uuid::new_v4());
        let (a, b) = (ParticipantId(Uuid::new_v4()), ParticipantId(Uuid::new_v4()));
        requests.send(join(1, call, a)).await.unwrap();
        assert_eq!(reply(&mut out, 1, &mut others).await, ControlOutcome::Done);
        requests.send(join(2, call, b)).await.unwrap();
        assert_eq!(reply(&mut out, 2, &mut others).await, ControlOutcome::Done);
        let sent: Vec<bool> = (0..40).map(|i| i % 3 != 1).collect();
        for (i, video) in sent.iter().enumerate() {
            let op = ControlOp::MediaState {
                participant: a,
                state: MediaState {
                    audio: true,
                    video: *video,
                    screen: false,
                },
            };
            requests
                .send(ControlRequest {
                    id: 10 + i as u64,
                    op,
                })
                .await
                .unwrap();
        }
        for i in 0..sent.len() {
            assert_eq!(
                reply(&mut out, 10 + i as u64, &mut others).await,
                ControlOutcome::Done
            );
        }
        // Give the last events time to come out, then read what b was told.
        tokio::time::sleep(Duration::from_millis(200)).await;
        while let Ok(m) = out.try_recv() {
            others.push(m);
        }
        let told: Vec<bool> = others
            .iter()
            .filter_map(|m| match m {
                NodeMsg::PeerState {
                    participant, state, ..
                } if *participant == b => Some(state.video),
                _ => None,
            })
            .collect();
        // b was told a's state once as it joined, then every change.
        assert_eq!(told.len(), sent.len() + 1, "{told:?}");
        assert_eq!(told[1..], sent[..], "b was told the changes out of order");
    }

    #[tokio::test]
    async fn a_drain_ends_at_once_when_the_calls_end() {
        let engine =
            Engine::with_loops(EngineConfig::new(IpAddr::V4(Ipv4Addr::LOCALHOST)), 1).unwrap();
        let node = Node::new(engine);
        // Nobody here: drained as soon as it looks.
        tokio::time::timeout(Duration::from_secs(2), node.drain(Duration::from_secs(600)))
            .await
            .expect("an empty node drains at once");
        assert!(matches!(node.service(), Service::Draining { .. }));
    }
}
