//! The engine: the one module that speaks `webrtc`. It owns the peer connections and the
//! tasks around them, and carries out what the forwarding core decides.
//!
//! Each participant has two peer connections, as LiveKit does: a *publisher* connection
//! the browser offers on (it sends its camera and microphone), and a *subscriber*
//! connection the SFU offers on (it sends everyone else's tracks). Each side only ever
//! offers on its own connection, so renegotiation never collides.
//!
//! Tasks: one per published track (reads RTP, asks the core where it goes, hands each copy
//! straight to the subscriber connection's driver without waiting: a full driver queue
//! drops that copy for that subscriber alone, so one slow subscriber never stalls a
//! publisher), one per subscribed track (reads the subscriber's RTCP: NACKs and keyframe
//! requests), and one negotiation loop per participant (reconciles the subscriber
//! connection with the room's published tracks, one offer at a time).
//!
//! Each leg's interceptor chain holds only what that direction needs, because every
//! interceptor handles every packet: the publisher leg (the SFU receives) generates NACKs,
//! receiver reports and transport-wide congestion feedback for the browser's estimator;
//! the subscriber leg (the SFU sends) generates sender reports (lip sync) and surfaces the
//! browser's NACKs and keyframe requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::FutureExt;
use protocol::{IceCandidate, MediaLeg};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{
    Attribute, Interceptor, NackGeneratorBuilder, Packet, ReceiverReportBuilder,
    SenderReportBuilder, Slot, StreamInfo, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::rtp;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::sansio::Protocol;
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    MediaEngine, PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler,
    RTCConfigurationBuilder, RTCIceCandidateInit, RTCIceGatheringState, RTCPeerConnectionState,
    RTCSessionDescription, Registry, SettingEngineBuilder,
};
use webrtc::rtp_transceiver::RtpSender;

pub mod synthetic;

use crate::forward::{
    CachedPacket, Forward, Forwarder, KeyframeRequest, MediaKind, PeerId, RtpMeta, TrackId,
};

/// How long an offer waits for candidates to be gathered (loopback and host candidates
/// are immediate; this bounds a misconfigured STUN server).
const GATHER_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the SFU waits for a browser to answer its offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// Candidates kept per leg before its remote description (a browser sends a handful).
const MAX_EARLY_CANDIDATES: usize = 32;

/// Peer connections whose event handler is still alive (a connection frees its handler
/// when it is freed), and engine participants still allocated: both return to zero after
/// everyone leaves unless something leaks. Read by the churn benchmark.
static LIVE_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_PARTICIPANTS: AtomicUsize = AtomicUsize::new(0);
/// Per-track tasks alive (engine: subscriber RTCP readers; synthetic: remote track readers).
static LIVE_TRACK_TASKS: AtomicUsize = AtomicUsize::new(0);

/// A guard that counts one live per-track task.
pub fn track_task_guard() -> LiveGuard {
    LiveGuard::new(&LIVE_TRACK_TASKS)
}

/// Per-track tasks alive in this process (see [`track_task_guard`]).
pub fn live_track_tasks() -> usize {
    LIVE_TRACK_TASKS.load(Ordering::Relaxed)
}

/// Counts one live object of a kind for as long as it exists.
#[derive(Debug)]
pub struct LiveGuard(&'static AtomicUsize);

impl LiveGuard {
    fn new(counter: &'static AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// (peer connections alive, engine participants alive) in this process, counting those of
/// synthetic participants too.
pub fn live_objects() -> (usize, usize) {
    (
        LIVE_CONNECTIONS.load(Ordering::Relaxed),
        LIVE_PARTICIPANTS.load(Ordering::Relaxed),
    )
}

/// A guard that counts one live peer connection (held by its event handler).
pub fn connection_guard() -> LiveGuard {
    LiveGuard::new(&LIVE_CONNECTIONS)
}

/// What the engine did about NACKs since it started.
#[derive(Debug, Default)]
pub struct NackCounters {
    /// Packets sent again from the core's cache.
    pub resent: std::sync::atomic::AtomicU64,
    /// Packets the SFU never received, NACKed to their publisher.
    pub upstream: std::sync::atomic::AtomicU64,
}

/// Where and how the engine binds its media sockets.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address ICE binds to (a concrete address: `0.0.0.0` would expand to every
    /// non-loopback interface).
    pub bind_ip: IpAddr,
    /// The address browsers reach `bind_ip` at, for a server behind 1:1 NAT: candidates
    /// the SFU sends carry it instead of `bind_ip`.
    pub announced_ip: Option<IpAddr>,
    /// The UDP (and ICE-TCP) ports connections bind, inclusive; each connection takes one
    /// port of the range, so it must hold two per participant. `None`: any free port.
    pub ports: Option<(u16, u16)>,
    /// Also offer ICE over TCP (passive, on the same port number as UDP), for networks
    /// that block UDP.
    pub ice_tcp: bool,
}

/// Parses a media port range, `FIRST-LAST` (inclusive).
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let bad = || format!("{s:?} is not a port range FIRST-LAST, e.g. 40000-40999");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let a: u16 = a.trim().parse().map_err(|_| bad())?;
    let b: u16 = b.trim().parse().map_err(|_| bad())?;
    if a == 0 || b < a {
        return Err(bad());
    }
    Ok((a, b))
}

impl EngineConfig {
    /// Any free UDP port on `bind_ip`, announced as it is, no TCP.
    pub fn new(bind_ip: IpAddr) -> Self {
        Self {
            bind_ip,
            announced_ip: None,
            ports: None,
            ice_tcp: false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("no such participant")]
    UnknownParticipant,
    #[error("the participant has already joined")]
    AlreadyJoined,
    #[error("the SDP was refused: {0}")]
    BadSdp(String),
    #[error("no offer is waiting for an answer")]
    NoOfferPending,
    #[error("the ICE candidate was refused: {0}")]
    BadCandidate(String),
    #[error("no free media port in the configured range")]
    NoFreePort,
    #[error("webrtc: {0}")]
    WebRtc(String),
}

fn webrtc_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::WebRtc(e.to_string())
}

/// What the engine tells its owner (signalling) about a participant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EngineEvent {
    /// An offer for the participant's subscriber connection: send it to the browser and
    /// give its answer to [`Engine::subscriber_answer`].
    SubscriberOffer { participant: u128, sdp: String },
    /// The participant's publisher connection changed state.
    Connection { participant: u128, connected: bool },
}

/// A parsed packet kept in a track's cache, shared by every subscriber's copy.
#[derive(Debug, Clone)]
struct Cached(Arc<rtp::Packet>);

impl CachedPacket for Cached {
    fn rtp_timestamp(&self) -> u32 {
        self.0.header.timestamp
    }
}

/// How a packet reaches one subscriber: its local track, its SSRC and the payload type
/// negotiated on its connection.
#[derive(Clone)]
struct Route {
    local: Arc<TrackLocalStaticRTP>,
    ssrc: u32,
    payload_type: u8,
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("ssrc", &self.ssrc)
            .field("payload_type", &self.payload_type)
            .finish_non_exhaustive()
    }
}

/// A published track: what subscribers need to create theirs, and the way back to the
/// publisher for keyframe requests.
#[derive(Clone)]
struct PublishedTrack {
    publisher: PeerId,
    kind: MediaKind,
    codec: RTCRtpCodec,
    remote: Arc<dyn TrackRemote>,
    media_ssrc: u32,
}

impl std::fmt::Debug for PublishedTrack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PublishedTrack")
            .field("publisher", &self.publisher)
            .field("kind", &self.kind)
            .field("media_ssrc", &self.media_ssrc)
            .finish()
    }
}

/// One consultation on this node.
#[derive(Debug, Default)]
struct Room {
    state: Mutex<RoomState>,
}

#[derive(Debug, Default)]
struct RoomState {
    forwarder: Forwarder<Cached, Route>,
    tracks: HashMap<TrackId, PublishedTrack>,
    participants: HashMap<PeerId, Arc<Participant>>,
}

fn lock(room: &Room) -> MutexGuard<'_, RoomState> {
    // Every critical section leaves the state consistent before it can panic.
    room.state.lock().unwrap_or_else(|p| p.into_inner())
}

/// One participant's two connections and the state of its subscriber negotiation.
struct Participant {
    key: u128,
    id: PeerId,
    room: Weak<Room>,
    publisher: Arc<dyn PeerConnection>,
    subscriber: Arc<dyn PeerConnection>,
    publisher_gathered: Arc<Notify>,
    subscriber_gathered: Arc<Notify>,
    /// Whether the subscriber connection is up (DTLS-SRTP keys ready): packets written
    /// before are dropped by the crate, so routes wait for it.
    subscriber_connected: watch::Receiver<bool>,
    /// Set when the room's tracks changed: the negotiation loop reconciles.
    dirty: Notify,
    answer: Mutex<Option<oneshot::Sender<String>>>,
    events: mpsc::UnboundedSender<EngineEvent>,
    /// Candidates trickled before the connection's remote description, per leg.
    early: Mutex<EarlyCandidates>,
    closed: CancellationToken,
    nacks: Arc<NackCounters>,
    /// (bind address, announced address) when candidates must be rewritten.
    announced: Option<(IpAddr, IpAddr)>,
    _live: LiveGuard,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("key", &self.key)
            .field("id", &self.id)
            .finish()
    }
}

/// The SFU node's media engine: rooms and participants.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    /// The runtime the engine's connections and tasks live on (the one it was made on),
    /// whoever calls it: media work stays on the SFU's threads.
    runtime: tokio::runtime::Handle,
    rooms: Mutex<HashMap<u128, Arc<Room>>>,
    participants: Mutex<HashMap<u128, Arc<Participant>>>,
    next_id: AtomicU32,
    nacks: Arc<NackCounters>,
    /// The next port of the configured range to try.
    next_port: AtomicU32,
}

/// A leg's candidates that arrived before its remote description (they cannot be added
/// yet), and whether that description is set.
#[derive(Debug, Default)]
struct EarlyCandidates {
    publisher: (bool, Vec<RTCIceCandidateInit>),
    subscriber: (bool, Vec<RTCIceCandidateInit>),
}

impl EarlyCandidates {
    fn leg(&mut self, leg: MediaLeg) -> &mut (bool, Vec<RTCIceCandidateInit>) {
        match leg {
            MediaLeg::Publisher => &mut self.publisher,
            MediaLeg::Subscriber => &mut self.subscriber,
        }
    }
}

static NEXT_SSRC: AtomicU32 = AtomicU32::new(0x5F00_0000);

fn new_ssrc() -> u32 {
    NEXT_SSRC.fetch_add(1, Ordering::Relaxed)
}

impl Engine {
    /// Must be called within a tokio runtime: the engine's work runs on it.
    pub fn new(config: EngineConfig) -> Arc<Self> {
        Arc::new(Self {
            config,
            runtime: tokio::runtime::Handle::current(),
            rooms: Mutex::new(HashMap::new()),
            participants: Mutex::new(HashMap::new()),
            next_id: AtomicU32::new(1),
            nacks: Arc::default(),
            next_port: AtomicU32::new(0),
        })
    }

    /// What the engine did about NACKs so far.
    pub fn nacks(&self) -> &NackCounters {
        &self.nacks
    }

    /// Participants connected now, on every room of this node (its load).
    pub fn participant_count(&self) -> usize {
        self.participants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    fn participant(&self, key: u128) -> Result<Arc<Participant>, EngineError> {
        self.participants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&key)
            .cloned()
            .ok_or(EngineError::UnknownParticipant)
    }

    /// Adds a participant to a room (creating the room): their two connections are made;
    /// offers for the subscriber connection arrive on `events`.
    pub async fn join(
        self: &Arc<Self>,
        room: u128,
        participant: u128,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<(), EngineError> {
        let this = self.clone();
        self.runtime
            .spawn(async move { this.join_here(room, participant, events).await })
            .await
            .map_err(webrtc_err)?
    }

    async fn join_here(
        self: &Arc<Self>,
        room: u128,
        participant: u128,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<(), EngineError> {
        if self.participant(participant).is_ok() {
            return Err(EngineError::AlreadyJoined);
        }
        let room = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(room)
            .or_default()
            .clone();
        let id = PeerId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let publisher_gathered = Arc::new(Notify::new());
        let subscriber_gathered = Arc::new(Notify::new());
        let (connected_tx, subscriber_connected) = watch::channel(false);
        let publisher = self
            .peer_connection(
                Role::ServerReceiving,
                Arc::new(PublisherHandler {
                    _live: connection_guard(),
                    room: Arc::downgrade(&room),
                    peer: id,
                    key: participant,
                    gathered: publisher_gathered.clone(),
                    events: events.clone(),
                }),
            )
            .await?;
        let subscriber = match self
            .peer_connection(
                Role::ServerSending,
                Arc::new(SubscriberHandler {
                    _live: connection_guard(),
                    gathered: subscriber_gathered.clone(),
                    connected: connected_tx,
                }),
            )
            .await
        {
            Ok(pc) => pc,
            Err(e) => {
                let _ = publisher.close().await;
                return Err(e);
            }
        };
        let p = Arc::new(Participant {
            key: participant,
            id,
            room: Arc::downgrade(&room),
            publisher,
            subscriber,
            publisher_gathered,
            subscriber_gathered,
            subscriber_connected,
            dirty: Notify::new(),
            answer: Mutex::new(None),
            events,
            early: Mutex::default(),
            closed: Default::default(),
            nacks: self.nacks.clone(),
            announced: self.config.announced_ip.map(|a| (self.config.bind_ip, a)),
            _live: LiveGuard::new(&LIVE_PARTICIPANTS),
        });
        self.participants
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(participant, p.clone());
        lock(&room).participants.insert(id, p.clone());
        tokio::spawn(negotiation_loop(p.clone()));
        p.dirty.notify_one();
        Ok(())
    }

    /// The browser's offer for its publisher connection; returns the SFU's answer (with
    /// its candidates).
    pub async fn publish(&self, participant: u128, offer: String) -> Result<String, EngineError> {
        let p = self.participant(participant)?;
        let desc =
            RTCSessionDescription::offer(offer).map_err(|e| EngineError::BadSdp(e.to_string()))?;
        p.publisher
            .set_remote_description(desc)
            .await
            .map_err(|e| EngineError::BadSdp(e.to_string()))?;
        flush_early_candidates(&p, MediaLeg::Publisher).await;
        let answer = p.publisher.create_answer(None).await.map_err(webrtc_err)?;
        // Registered before gathering can finish: notify_waiters wakes only registered
        // waiters, and a lost notice would hold the answer for GATHER_TIMEOUT.
        let gathered = p.publisher_gathered.notified();
        tokio::pin!(gathered);
        gathered.as_mut().enable();
        p.publisher
            .set_local_description(answer)
            .await
            .map_err(webrtc_err)?;
        let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered).await;
        let sdp = p
            .publisher
            .local_description()
            .await
            .map(|d| d.sdp)
            .ok_or_else(|| EngineError::WebRtc("no local description".into()))?;
        Ok(self.announce(sdp))
    }

    /// A candidate the browser trickled for one of its connections; kept until that
    /// connection's remote description is set if it comes early. An empty candidate
    /// (end of candidates) is accepted and does nothing.
    pub async fn add_candidate(
        &self,
        participant: u128,
        leg: MediaLeg,
        candidate: IceCandidate,
    ) -> Result<(), EngineError> {
        let p = self.participant(participant)?;
        let init = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_m_line_index,
            username_fragment: candidate.username_fragment,
            ..Default::default()
        };
        {
            let mut early = p.early.lock().unwrap_or_else(|e| e.into_inner());
            let (ready, queue) = early.leg(leg);
            if !*ready {
                if queue.len() >= MAX_EARLY_CANDIDATES {
                    return Err(EngineError::BadCandidate("too many candidates".into()));
                }
                queue.push(init);
                return Ok(());
            }
        }
        let pc = match leg {
            MediaLeg::Publisher => &p.publisher,
            MediaLeg::Subscriber => &p.subscriber,
        };
        pc.add_ice_candidate(init)
            .await
            .map_err(|e| EngineError::BadCandidate(e.to_string()))
    }

    /// Rewrites the candidates of an SDP the SFU sends for the announced address.
    fn announce(&self, sdp: String) -> String {
        match self.config.announced_ip {
            Some(public) => crate::sdp::announce(&sdp, self.config.bind_ip, public),
            None => sdp,
        }
    }

    /// The participants in a room now.
    pub fn room_participants(&self, room: u128) -> Vec<u128> {
        let room = self
            .rooms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&room)
            .cloned();
        match room {
            Some(r) => lock(&r).participants.values().map(|p| p.key).collect(),
            None => Vec::new(),
        }
    }

    /// The browser's answer to the last [`EngineEvent::SubscriberOffer`].
    pub async fn subscriber_answer(
        &self,
        participant: u128,
        answer: String,
    ) -> Result<(), EngineError> {
        let p = self.participant(participant)?;
        let waiting = p.answer.lock().unwrap_or_else(|e| e.into_inner()).take();
        waiting
            .ok_or(EngineError::NoOfferPending)?
            .send(answer)
            .map_err(|_| EngineError::NoOfferPending)
    }

    /// Removes a participant: closes their connections; the others' subscriber connections
    /// drop their tracks.
    pub async fn leave(&self, participant: u128) -> Result<(), EngineError> {
        let p = self
            .participants
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&participant)
            .ok_or(EngineError::UnknownParticipant)?;
        p.closed.cancel();
        if let Some(room) = p.room.upgrade() {
            let others: Vec<Arc<Participant>> = {
                let mut s = lock(&room);
                s.participants.remove(&p.id);
                for t in s.forwarder.remove_peer(p.id) {
                    s.tracks.remove(&t);
                }
                s.participants.values().cloned().collect()
            };
            for o in others {
                o.dirty.notify_one();
            }
            let empty = lock(&room).participants.is_empty();
            if empty {
                self.rooms
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|_, r| !Arc::ptr_eq(r, &room));
            }
        }
        let _ = p.publisher.close().await;
        let _ = p.subscriber.close().await;
        Ok(())
    }

    /// A connection bound as configured: a port of the range (the next free one, in
    /// turn), or any free port; with a passive ICE-TCP listener on the same port number if
    /// configured.
    async fn peer_connection(
        &self,
        role: Role,
        handler: Arc<dyn PeerConnectionEventHandler>,
    ) -> Result<Arc<dyn PeerConnection>, EngineError> {
        let ip = self.config.bind_ip;
        let Some((first, last)) = self.config.ports else {
            let tcp = self.config.ice_tcp.then(|| format!("{ip}:0"));
            return build_peer_connection(role, format!("{ip}:0"), tcp, handler).await;
        };
        let span = u32::from(last.saturating_sub(first)) + 1;
        for _ in 0..span {
            let port = first + (self.next_port.fetch_add(1, Ordering::Relaxed) % span) as u16;
            // Probe first: the crate skips an address it cannot bind and still succeeds
            // when another one (the TCP listener) bound.
            let free = std::net::UdpSocket::bind((ip, port)).is_ok()
                && (!self.config.ice_tcp || std::net::TcpListener::bind((ip, port)).is_ok());
            if !free {
                continue;
            }
            let tcp = self.config.ice_tcp.then(|| format!("{ip}:{port}"));
            let udp = format!("{ip}:{port}");
            match build_peer_connection(role, udp, tcp, handler.clone()).await {
                Ok(pc) => return Ok(pc),
                // Taken between the probe and the bind: try the next one.
                Err(e) => tracing::debug!(port, error = %e, "media port busy"),
            }
        }
        Err(EngineError::NoFreePort)
    }
}

/// Adds the candidates of `leg` that arrived before its remote description, and lets
/// later ones through directly.
async fn flush_early_candidates(p: &Participant, leg: MediaLeg) {
    let queued = {
        let mut early = p.early.lock().unwrap_or_else(|e| e.into_inner());
        let (ready, queue) = early.leg(leg);
        *ready = true;
        std::mem::take(queue)
    };
    let pc = match leg {
        MediaLeg::Publisher => &p.publisher,
        MediaLeg::Subscriber => &p.subscriber,
    };
    for c in queued {
        if let Err(e) = pc.add_ice_candidate(c).await {
            tracing::debug!(participant = p.key, error = %e, "early candidate refused");
        }
    }
}

/// A peer connection as the SFU makes them: VP8, Opus and the other default codecs, the
/// default interceptors plus one that surfaces keyframe requests, no mDNS, ICE bound to
/// `bind_ip` only. Public so that test and load-test clients speak exactly the same.
pub async fn peer_connection(
    bind_ip: IpAddr,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, EngineError> {
    build_peer_connection(Role::Client, format!("{bind_ip}:0"), None, handler).await
}

/// What a connection is for. The SFU's connections run ICE-lite (they only answer checks;
/// the browser nominates, so both agree on the pair before DTLS starts) and carry the
/// interceptors of their one direction; clients (the synthetic participants) run full ICE
/// with the crate's usual set for both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// The SFU's publisher leg: it receives a participant's media.
    ServerReceiving,
    /// The SFU's subscriber leg: it sends the others' media to a participant.
    ServerSending,
    Client,
}

async fn build_peer_connection(
    role: Role,
    udp: String,
    tcp: Option<String>,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, EngineError> {
    let mut media = MediaEngine::default();
    media.register_default_codecs().map_err(webrtc_err)?;
    // NACK and PLI feedback for video on every connection: the browser sends both to the
    // SFU's subscriber leg, and the SFU sends both to its publisher leg.
    for parameter in ["", "pli"] {
        media.register_feedback(
            RTCPFeedback {
                typ: "nack".to_owned(),
                parameter: parameter.to_owned(),
            },
            RtpCodecKind::Video,
        );
    }
    configure_simulcast_extension_headers(&mut media).map_err(webrtc_err)?;
    // The crate's default set (`register_default_interceptors`) less its NACK responder
    // (NACKs are answered by the forwarding core from one cache per published track, not by
    // a responder that buffers every packet once per subscriber); on the SFU's legs only
    // the half for that leg's direction, since every interceptor handles every packet.
    let receiving = matches!(role, Role::ServerReceiving | Role::Client);
    let sending = matches!(role, Role::ServerSending | Role::Client);
    let mut registry = Registry::new();
    if receiving {
        registry = configure_twcc_receiver_only(registry, &mut media)
            .map_err(webrtc_err)?
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build())
            .with(Slot::NackGenerator, NackGeneratorBuilder::new().build());
    }
    if sending {
        registry = registry
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            .with(Slot::from(14_000), RtcpToApplication::default());
    }
    let settings = SettingEngineBuilder::new()
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_lite(role != Role::Client)
        .build();
    let mut builder = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![udp]);
    if let Some(tcp) = tcp {
        builder = builder.with_tcp_addrs(vec![tcp]);
    }
    let pc = builder.build().await.map_err(webrtc_err)?;
    Ok(Arc::new(pc))
}

/// A local track sending one SSRC of one codec, in media stream `stream`.
pub(crate) fn local_track(
    stream: String,
    id: String,
    kind: RtpCodecKind,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        stream,
        id.clone(),
        id,
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

/// Marks keyframe requests and NACKs from the far end for delivery to the application
/// (otherwise the interceptor chain ends them); other RTCP is left to the chain.
#[derive(Default)]
struct RtcpToApplication {
    read: std::collections::VecDeque<TaggedPacket>,
    write: std::collections::VecDeque<TaggedPacket>,
}

impl std::fmt::Debug for RtcpToApplication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RtcpToApplication")
    }
}

impl Protocol<TaggedPacket, TaggedPacket, ()> for RtcpToApplication {
    type Rout = TaggedPacket;
    type Wout = TaggedPacket;
    type Eout = ();
    type Error = rtc::shared::error::Error;
    type Time = Instant;

    fn handle_read(&mut self, mut msg: TaggedPacket) -> Result<(), Self::Error> {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            let wanted: Vec<_> = pkts
                .iter()
                .filter(|p| {
                    let p = p.as_any();
                    p.is::<PictureLossIndication>()
                        || p.is::<FullIntraRequest>()
                        || p.is::<TransportLayerNack>()
                })
                .cloned()
                .collect();
            if wanted.is_empty() {
                return Ok(());
            }
            msg.message.packet = Packet::Rtcp(wanted);
            msg.message.add(Attribute::DeliverToApplication);
        }
        self.read.push_back(msg);
        Ok(())
    }
    fn poll_read(&mut self) -> Option<TaggedPacket> {
        self.read.pop_front()
    }
    fn handle_write(&mut self, msg: TaggedPacket) -> Result<(), Self::Error> {
        self.write.push_back(msg);
        Ok(())
    }
    fn poll_write(&mut self) -> Option<TaggedPacket> {
        self.write.pop_front()
    }
}

impl Interceptor for RtcpToApplication {
    fn bind_local_stream(&mut self, _: &StreamInfo) {}
    fn unbind_local_stream(&mut self, _: &StreamInfo) {}
    fn bind_remote_stream(&mut self, _: &StreamInfo) {}
    fn unbind_remote_stream(&mut self, _: &StreamInfo) {}
}

struct PublisherHandler {
    _live: LiveGuard,
    room: Weak<Room>,
    peer: PeerId,
    key: u128,
    gathered: Arc<Notify>,
    events: mpsc::UnboundedSender<EngineEvent>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for PublisherHandler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            self.gathered.notify_waiters();
        }
    }

    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let connected = match s {
            RTCPeerConnectionState::Connected => true,
            RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => false,
            _ => return,
        };
        let _ = self.events.send(EngineEvent::Connection {
            participant: self.key,
            connected,
        });
    }

    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        // Callbacks run on the connection's driver: hand the work to a task at once.
        tokio::spawn(publish_track(self.room.clone(), self.peer, track));
    }
}

struct SubscriberHandler {
    _live: LiveGuard,
    gathered: Arc<Notify>,
    connected: watch::Sender<bool>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for SubscriberHandler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            self.gathered.notify_waiters();
        }
    }

    async fn on_connection_state_change(&self, s: RTCPeerConnectionState) {
        let _ = self.connected.send(s == RTCPeerConnectionState::Connected);
    }
}

static NEXT_TRACK: AtomicU32 = AtomicU32::new(1);

/// Whether a VP8 RTP payload starts a keyframe: the start of partition 0 whose frame
/// header's P bit is 0.
pub(crate) fn vp8_keyframe(payload: &Bytes) -> bool {
    let mut vp8 = Vp8Packet::default();
    match vp8.depacketize(payload) {
        Ok(frame) => vp8.s == 1 && vp8.pid == 0 && frame.first().is_some_and(|b| b & 0x01 == 0),
        Err(_) => false,
    }
}

/// Reads one published track until it ends, handing each packet to the forwarding core.
async fn publish_track(room: Weak<Room>, publisher: PeerId, track: Arc<dyn TrackRemote>) {
    let Some(media_ssrc) = track.ssrcs().await.first().copied() else {
        return;
    };
    let Some(codec) = track.codec(media_ssrc).await else {
        return;
    };
    let kind = match track.kind().await {
        RtpCodecKind::Audio => MediaKind::Audio,
        _ => MediaKind::Video,
    };
    let vp8 = codec.mime_type.eq_ignore_ascii_case("video/vp8");
    let id = TrackId(NEXT_TRACK.fetch_add(1, Ordering::Relaxed));
    let others = {
        let Some(r) = room.upgrade() else { return };
        let mut s = lock(&r);
        s.forwarder.add_track(id, publisher, kind);
        s.tracks.insert(
            id,
            PublishedTrack {
                publisher,
                kind,
                codec,
                remote: track.clone(),
                media_ssrc,
            },
        );
        s.participants
            .values()
            .filter(|p| p.id != publisher)
            .cloned()
            .collect::<Vec<_>>()
    };
    for o in others {
        o.dirty.notify_one();
    }
    tracing::debug!(track = id.0, ?kind, "publishing");
    while let Some(ev) = track.poll().await {
        let packet = match ev {
            TrackRemoteEvent::OnRtpPacket(packet) => packet,
            // The browser stopped sending it (renegotiated away) or it closed.
            TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnEnding => break,
            _ => continue,
        };
        let Some(r) = room.upgrade() else { return };
        let meta = RtpMeta {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            keyframe: vp8 && vp8_keyframe(&packet.payload),
        };
        let request = {
            let mut s = lock(&r);
            s.forwarder.on_rtp(
                id,
                meta,
                Cached(Arc::new(packet)),
                Instant::now(),
                send_forward,
            )
        };
        if let Some(req) = request {
            send_keyframe_request(&r, req).await;
        }
    }
    if let Some(r) = room.upgrade() {
        let others: Vec<Arc<Participant>> = {
            let mut s = lock(&r);
            s.forwarder.remove_track(id);
            s.tracks.remove(&id);
            s.participants.values().cloned().collect()
        };
        for o in others {
            o.dirty.notify_one();
        }
    }
}

/// Hands one forwarded packet, with that subscriber's header, to its connection's driver
/// without waiting and with no task in between. The payload is shared; the one allocation
/// is the crate's (`write_rtp` is an `async_trait` method, so its future is boxed).
fn send_forward(fw: Forward<'_, Cached, Route>) {
    let out = rtp::Packet {
        header: rtp::Header {
            version: 2,
            marker: fw.packet.0.header.marker,
            payload_type: fw.route.payload_type,
            sequence_number: fw.seq,
            timestamp: fw.timestamp,
            ssrc: fw.route.ssrc,
            ..Default::default()
        },
        payload: fw.packet.0.payload.clone(),
    };
    // Not ready at once means the driver's queue is full (that subscriber is far behind)
    // or the track is being unbound: the copy is dropped for that subscriber alone, and a
    // NACK can still fetch it from the cache. Dropping the pending write cancels it.
    let _ = fw.route.local.write_rtp(out).now_or_never();
}

/// Sends a PLI to the publisher of the requested track.
async fn send_keyframe_request(room: &Room, req: KeyframeRequest) {
    let target = lock(room)
        .tracks
        .get(&req.track)
        .map(|t| (t.remote.clone(), t.media_ssrc));
    if let Some((remote, media_ssrc)) = target {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        let _ = remote.write_rtcp(vec![Box::new(pli)]).await;
    }
}

/// What a participant's subscriber connection sends now.
struct Subscribed {
    local: Arc<TrackLocalStaticRTP>,
    sender: Arc<dyn RtpSender>,
    ssrc: u32,
    kind: MediaKind,
    mime: String,
    routed: bool,
    /// Stops this track's RTCP reader when the track is removed or the participant leaves.
    stop: CancellationToken,
}

/// Reconciles a participant's subscriber connection with the room's tracks: adds and
/// removes local tracks, offers, waits for the answer, then starts forwarding.
async fn negotiation_loop(p: Arc<Participant>) {
    let mut subscribed: HashMap<TrackId, Subscribed> = HashMap::new();
    loop {
        tokio::select! {
            () = p.closed.cancelled() => return,
            () = p.dirty.notified() => {}
        }
        let Some(room) = p.room.upgrade() else { return };
        let wanted: Vec<(TrackId, PublishedTrack)> = {
            let s = lock(&room);
            s.tracks
                .iter()
                .filter(|(_, t)| t.publisher != p.id)
                .map(|(id, t)| (*id, t.clone()))
                .collect()
        };
        let mut changed = false;
        // Drop what is no longer published.
        let gone: Vec<TrackId> = subscribed
            .keys()
            .filter(|id| !wanted.iter().any(|(w, _)| w == *id))
            .copied()
            .collect();
        for id in gone {
            if let Some(s) = subscribed.remove(&id) {
                s.stop.cancel();
                lock(&room).forwarder.unsubscribe(id, p.id);
                let _ = p.subscriber.remove_track(&s.sender).await;
                changed = true;
            }
        }
        // Add what is new.
        for (id, t) in &wanted {
            if subscribed.contains_key(id) {
                continue;
            }
            let ssrc = new_ssrc();
            let rtp_kind = match t.kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            let codec = RTCRtpCodec {
                rtcp_feedback: vec![],
                ..t.codec.clone()
            };
            let local = local_track(
                format!("p{}", t.publisher.0),
                format!("t{}", id.0),
                rtp_kind,
                ssrc,
                codec,
            );
            // `add_track` reuses the transceiver (m-line) of a track removed earlier, so a
            // long consultation with many joins and leaves does not grow its SDP forever;
            // `add_transceiver_from_track` would always add one.
            match p
                .subscriber
                .add_track(local.clone() as Arc<dyn TrackLocal>)
                .await
            {
                Ok(sender) => {
                    subscribed.insert(
                        *id,
                        Subscribed {
                            local,
                            sender,
                            ssrc,
                            kind: t.kind,
                            mime: t.codec.mime_type.to_lowercase(),
                            routed: false,
                            stop: p.closed.child_token(),
                        },
                    );
                    changed = true;
                }
                Err(e) => tracing::warn!(error = %e, "could not add a track for a subscriber"),
            }
        }
        // Tracks added by a negotiation that failed are still unrouted: offer them again.
        if !changed && subscribed.values().all(|s| s.routed) {
            continue;
        }
        if let Err(e) = offer_and_wait(&p, p.announced).await {
            if p.closed.is_cancelled() {
                return;
            }
            tracing::info!(participant = p.key, error = %e, "subscriber negotiation failed; retrying");
            tokio::select! {
                () = p.closed.cancelled() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => p.dirty.notify_one(),
            }
            continue;
        }
        // Negotiated: route the new tracks once the connection can carry them (the first
        // keyframe, asked for on subscribing, would otherwise be lost).
        let mut connected = p.subscriber_connected.clone();
        tokio::select! {
            () = p.closed.cancelled() => return,
            up = connected.wait_for(|up| *up) => if up.is_err() { return },
        }
        for (id, s) in subscribed.iter_mut().filter(|(_, s)| !s.routed) {
            let Ok(params) = s.sender.get_parameters().await else {
                continue;
            };
            let Some(pt) = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.to_lowercase() == s.mime)
                .map(|c| c.payload_type)
            else {
                continue;
            };
            let route = Route {
                local: s.local.clone(),
                ssrc: s.ssrc,
                payload_type: pt,
            };
            let request = lock(&room)
                .forwarder
                .subscribe(*id, p.id, route, Instant::now());
            s.routed = true;
            if let Some(req) = request {
                send_keyframe_request(&room, req).await;
            }
            if s.kind == MediaKind::Video {
                tokio::spawn(subscriber_rtcp(
                    p.room.clone(),
                    *id,
                    p.id,
                    s.local.clone(),
                    p.nacks.clone(),
                    s.stop.clone(),
                ));
            }
        }
    }
}

/// Offers on the subscriber connection and applies the browser's answer.
async fn offer_and_wait(
    p: &Participant,
    announced: Option<(IpAddr, IpAddr)>,
) -> Result<(), EngineError> {
    let offer = p.subscriber.create_offer(None).await.map_err(webrtc_err)?;
    let gathered = p.subscriber_gathered.notified();
    tokio::pin!(gathered);
    gathered.as_mut().enable(); // as in `publish`
    p.subscriber
        .set_local_description(offer)
        .await
        .map_err(webrtc_err)?;
    let _ = tokio::time::timeout(GATHER_TIMEOUT, gathered).await;
    let sdp = p
        .subscriber
        .local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| EngineError::WebRtc("no local description".into()))?;
    let sdp = match announced {
        Some((private, public)) => crate::sdp::announce(&sdp, private, public),
        None => sdp,
    };
    let (tx, rx) = oneshot::channel();
    *p.answer.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
    let _ = p.events.send(EngineEvent::SubscriberOffer {
        participant: p.key,
        sdp,
    });
    let answer = tokio::select! {
        () = p.closed.cancelled() => return Err(EngineError::UnknownParticipant),
        a = tokio::time::timeout(ANSWER_TIMEOUT, rx) => a
            .map_err(|_| EngineError::WebRtc("no answer in time".into()))?
            .map_err(|_| EngineError::NoOfferPending)?,
    };
    let desc =
        RTCSessionDescription::answer(answer).map_err(|e| EngineError::BadSdp(e.to_string()))?;
    p.subscriber
        .set_remote_description(desc)
        .await
        .map_err(|e| EngineError::BadSdp(e.to_string()))?;
    flush_early_candidates(p, MediaLeg::Subscriber).await;
    Ok(())
}

/// Resends what the core's cache holds of `lost`; NACKs the rest to the publisher.
async fn answer_nack(
    room: &Room,
    track: TrackId,
    subscriber: PeerId,
    lost: &[u16],
    nacks: &NackCounters,
) {
    let (outcome, publisher) = {
        let mut s = lock(room);
        let outcome = s.forwarder.on_nack(track, subscriber, lost, send_forward);
        let publisher = s
            .tracks
            .get(&track)
            .map(|t| (t.remote.clone(), t.media_ssrc));
        (outcome, publisher)
    };
    nacks
        .resent
        .fetch_add(outcome.resent as u64, Ordering::Relaxed);
    if outcome.upstream.is_empty() {
        return;
    }
    nacks
        .upstream
        .fetch_add(outcome.upstream.len() as u64, Ordering::Relaxed);
    if let Some((remote, media_ssrc)) = publisher {
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc,
            nacks: nack_pairs_from_sequence_numbers(&outcome.upstream),
        };
        let _ = remote.write_rtcp(vec![Box::new(nack)]).await;
    }
}

/// Passes a subscriber's NACKs and keyframe requests for one track to the forwarding core.
async fn subscriber_rtcp(
    room: Weak<Room>,
    track: TrackId,
    subscriber: PeerId,
    local: Arc<TrackLocalStaticRTP>,
    nacks: Arc<NackCounters>,
    stop: CancellationToken,
) {
    let _live = track_task_guard();
    loop {
        let ev = tokio::select! {
            () = stop.cancelled() => return,
            ev = local.poll() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let TrackLocalEvent::OnRtcpPacket(pkts) = ev else {
            continue;
        };
        let Some(r) = room.upgrade() else { return };
        let lost: Vec<u16> = pkts
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            .flat_map(|n| n.nacks.iter().flat_map(|pair| pair.packet_list()))
            .collect();
        if !lost.is_empty() {
            answer_nack(&r, track, subscriber, &lost, &nacks).await;
        }
        let wants_keyframe = pkts.iter().any(|p| {
            p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
        });
        if !wants_keyframe {
            continue;
        }
        let request = lock(&r)
            .forwarder
            .on_keyframe_request(track, Instant::now());
        if let Some(req) = request {
            send_keyframe_request(&r, req).await;
        }
    }
}
