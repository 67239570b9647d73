//! The engine: the one module tree that speaks WebRTC (the `rtc` crate's sans-IO core). It
//! owns the peer connections and carries out what the forwarding core decides. The
//! synthetic clients of tests and load tests (the `sfu-synthetic` crate, on the `webrtc`
//! crate) build their connections from [`client_recipe`], so both sides speak alike.
//!
//! Each participant has two peer connections, as LiveKit does: a *publisher* connection
//! the browser offers on (it sends its camera and microphone), and a *subscriber*
//! connection the SFU offers on (it sends everyone else's tracks). Each side only ever
//! offers on its own connection, so renegotiation never collides.
//!
//! The SFU drives the connections itself, as Janus's event loops do: a few media loops
//! (one per core), each a single task owning whole rooms, one UDP socket (and one ICE-TCP
//! listener) that all its connections share, and every connection's state. A datagram is
//! routed to its connection by source address, or by the ICE username of the STUN check
//! that opened it; a publisher's packet is forwarded to every subscriber of the room in
//! the same turn of the loop, with no task, channel or lock per connection or per packet
//! ([`media_loop`]). Each leg's interceptor chain holds only what that direction needs,
//! because every interceptor handles every packet: the publisher leg (the SFU receives)
//! generates NACKs, receiver reports and transport-wide congestion feedback for the
//! browser's estimator, and takes REMB (the most the SFU tells it to send); the subscriber
//! leg (the SFU sends) numbers its packets for transport-wide congestion feedback and
//! estimates the browser's downlink from that feedback (Google Congestion Control, the
//! `rtc` crate's), generates sender reports (lip sync) and surfaces the browser's NACKs and
//! keyframe requests.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{IceCandidate, LinkFigures, MediaLeg, MediaState};

use crate::metrics::{LoopCounters, NodeMetrics};
use rtc::ice::mdns::MulticastDnsMode;
use rtc::interceptor::{
    Attribute, CongestionControlBuilder, NackGeneratorBuilder, NackResponderBuilder, Packet,
    ReceiverReportBuilder, Registry, SenderReportBuilder, Slot, TaggedPacket,
};
use rtc::media_stream::MediaStreamTrack;
use rtc::peer_connection::configuration::interceptor_registry::{
    configure_simulcast_extension_headers, configure_twcc_receiver_only, configure_twcc_sender_only,
};
use rtc::peer_connection::configuration::media_engine::MediaEngine;
use rtc::peer_connection::configuration::setting_engine::{SettingEngine, SettingEngineBuilder};
use rtc::peer_connection::transport::RTCIceCandidateInit;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use rtc::rtcp::receiver_report::ReceiverReport;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::rtp_transceiver::rtp_sender::{
    RTCPFeedback, RTCRtpCodec, RTCRtpCodecParameters, RTCRtpCodingParameters,
    RTCRtpEncodingParameters, RTCRtpHeaderExtensionCapability, RtpCodecKind,
};
use tokio::sync::{mpsc, oneshot};

use crate::codec::Codec;

pub mod endpoint;
mod feedback;
mod liveness;
mod media_loop;
mod nacks;
mod playout;
mod reports;
mod tap;
mod tcp;
mod xr;

use endpoint::{Answer, Command};
use media_loop::{LoopHandle, Request};

/// Peer connections alive (the SFU's, and the synthetic clients' whose event handler a
/// connection frees when it is freed), and engine participants still allocated: both
/// return to zero after everyone leaves unless something leaks. Read by the churn
/// benchmark.
static LIVE_CONNECTIONS: AtomicUsize = AtomicUsize::new(0);
static LIVE_PARTICIPANTS: AtomicUsize = AtomicUsize::new(0);

/// Counts one live object of a kind for as long as it exists.
#[derive(Debug)]
pub struct LiveGuard(&'static AtomicUsize);

impl LiveGuard {
    /// Counts one more in `counter` until dropped.
    pub fn new(counter: &'static AtomicUsize) -> Self {
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

/// Where and how the engine binds its media sockets.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// The address ICE binds to (a concrete address: `0.0.0.0` would expand to every
    /// non-loopback interface).
    pub bind_ip: IpAddr,
    /// The address browsers reach `bind_ip` at, for a server behind 1:1 NAT: candidates
    /// the SFU sends carry it instead of `bind_ip`.
    pub announced_ip: Option<IpAddr>,
    /// The UDP (and ICE-TCP) ports the media loops bind, inclusive: each loop (one per
    /// core the SFU may use) takes one port of the range, and all its connections share
    /// it. `None`: any free port.
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
    #[error("too few free media ports in the configured range (one per core is needed)")]
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
    /// What another participant of the room sends now (microphone, camera, screen); their
    /// tracks arrive at this participant in the media stream `stream`.
    PeerState {
        participant: u128,
        stream: String,
        state: MediaState,
    },
    /// The participant's browser should send a new offer for its publisher connection: the
    /// video codecs everyone else in its room can receive changed.
    PublishRenegotiate { participant: u128 },
    /// The participant's browser should send, of its simulcast video in media section
    /// `mid`, the layers named in `paused` (by rid) only as thumbnails, the others as set
    /// up.
    PublishLayers {
        participant: u128,
        mid: String,
        paused: Vec<String>,
    },
    /// What the engine measures of the participant's downlink (every few seconds while
    /// media flows to it).
    Link {
        participant: u128,
        figures: LinkFigures,
    },
}

impl EngineEvent {
    /// The participant it is for.
    pub fn participant(&self) -> u128 {
        match self {
            EngineEvent::SubscriberOffer { participant, .. }
            | EngineEvent::Connection { participant, .. }
            | EngineEvent::PeerState { participant, .. }
            | EngineEvent::PublishRenegotiate { participant }
            | EngineEvent::PublishLayers { participant, .. }
            | EngineEvent::Link { participant, .. } => *participant,
        }
    }
}

/// Where a room lives and who is in it.
#[derive(Debug)]
struct RoomEntry {
    media_loop: usize,
    participants: Vec<u128>,
}

/// The SFU node's media engine: it places rooms on its media loops and passes each
/// request to the loop that owns the participant.
#[derive(Debug)]
pub struct Engine {
    loops: Vec<LoopHandle>,
    /// Room → its loop and participants; participant → its room. One lock, taken per
    /// request (never per packet).
    placement: Mutex<Placement>,
    metrics: NodeMetrics,
}

#[derive(Debug, Default)]
struct Placement {
    rooms: HashMap<u128, RoomEntry>,
    participants: HashMap<u128, u128>,
}

impl Engine {
    /// Binds the media sockets (one UDP port, and one TCP port with ICE-TCP, per media
    /// loop; one loop per core this process may use) and starts the loops on the current
    /// tokio runtime.
    pub fn new(config: EngineConfig) -> Result<Arc<Self>, EngineError> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::with_loops(config, cores)
    }

    /// As [`Engine::new`] with `loops` media loops.
    pub fn with_loops(config: EngineConfig, loops: usize) -> Result<Arc<Self>, EngineError> {
        let metrics = NodeMetrics::default();
        let sockets = media_loop::bind(&config, loops.max(1))?;
        let announced = config.announced_ip.map(|a| (config.bind_ip, a));
        let loops = sockets
            .into_iter()
            .enumerate()
            .map(|(i, s)| media_loop::spawn(s, announced, metrics.media_loop(i)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Arc::new(Self {
            loops,
            placement: Mutex::default(),
            metrics,
        }))
    }

    /// The UDP addresses the media loops receive on (one per loop).
    pub fn media_addrs(&self) -> Vec<std::net::SocketAddr> {
        self.loops.iter().map(|l| l.udp).collect()
    }

    /// What the engine counted so far (forwarded packets, NACKs, …).
    pub fn metrics(&self) -> &NodeMetrics {
        &self.metrics
    }

    /// Participants connected now, on every room of this node (its load).
    pub fn participant_count(&self) -> usize {
        self.placement().participants.len()
    }

    fn placement(&self) -> std::sync::MutexGuard<'_, Placement> {
        self.placement.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The loop that owns a participant.
    fn loop_of(&self, participant: u128) -> Result<&LoopHandle, EngineError> {
        let p = self.placement();
        let room = p
            .participants
            .get(&participant)
            .ok_or(EngineError::UnknownParticipant)?;
        p.rooms
            .get(room)
            .and_then(|r| self.loops.get(r.media_loop))
            .ok_or(EngineError::UnknownParticipant)
    }

    async fn ask(
        &self,
        to: &LoopHandle,
        command: Command,
        events: Option<mpsc::UnboundedSender<EngineEvent>>,
    ) -> Result<Answer, EngineError> {
        let (reply, rx) = oneshot::channel();
        to.tx
            .send(Request {
                command,
                events,
                reply,
            })
            .map_err(|_| EngineError::WebRtc("the media loop has stopped".into()))?;
        rx.await
            .map_err(|_| EngineError::WebRtc("the media loop has stopped".into()))?
    }

    /// [`Self::ask`] for a command answered with nothing but success.
    async fn ask_done(&self, participant: u128, command: Command) -> Result<(), EngineError> {
        let to = self.loop_of(participant)?;
        self.ask(to, command, None).await.map(|_| ())
    }

    /// Adds a participant to a room (placing the room on the least loaded media loop if
    /// it is new): their two connections are made; offers for the subscriber connection
    /// arrive on `events`.
    pub async fn join(
        &self,
        room: u128,
        participant: u128,
        events: mpsc::UnboundedSender<EngineEvent>,
    ) -> Result<(), EngineError> {
        let at = {
            let mut p = self.placement();
            if p.participants.contains_key(&participant) {
                return Err(EngineError::AlreadyJoined);
            }
            let at = match p.rooms.get(&room) {
                Some(r) => r.media_loop,
                None => {
                    let mut load = vec![0usize; self.loops.len()];
                    for r in p.rooms.values() {
                        load[r.media_loop] += r.participants.len();
                    }
                    (0..load.len()).min_by_key(|i| load[*i]).unwrap_or(0)
                }
            };
            p.rooms
                .entry(room)
                .or_insert_with(|| RoomEntry {
                    media_loop: at,
                    participants: Vec::new(),
                })
                .participants
                .push(participant);
            p.participants.insert(participant, room);
            at
        };
        let joined = self
            .ask(
                &self.loops[at],
                Command::Join { room, participant },
                Some(events),
            )
            .await
            .map(|_| ());
        if joined.is_err() {
            self.forget(participant);
        }
        joined
    }

    /// Removes a participant from the placement (and its room when it was the last).
    fn forget(&self, participant: u128) -> bool {
        let mut p = self.placement();
        let Some(room) = p.participants.remove(&participant) else {
            return false;
        };
        if let Some(r) = p.rooms.get_mut(&room) {
            r.participants.retain(|k| *k != participant);
            if r.participants.is_empty() {
                p.rooms.remove(&room);
            }
        }
        true
    }

    /// The browser's offer for its publisher connection; returns the SFU's answer (with
    /// its candidates).
    pub async fn publish(&self, participant: u128, offer: String) -> Result<String, EngineError> {
        let to = self.loop_of(participant)?;
        match self
            .ask(to, Command::Publish { participant, offer }, None)
            .await?
        {
            Answer::Sdp(sdp) => Ok(sdp),
            Answer::Done => Err(EngineError::WebRtc("no answer".into())),
        }
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
        let candidate = RTCIceCandidateInit {
            candidate: candidate.candidate,
            sdp_mid: candidate.sdp_mid,
            sdp_mline_index: candidate.sdp_m_line_index,
            username_fragment: candidate.username_fragment,
            ..Default::default()
        };
        self.ask_done(
            participant,
            Command::Candidate {
                participant,
                leg,
                candidate,
            },
        )
        .await
    }

    /// The browser's answer to the last [`EngineEvent::SubscriberOffer`].
    pub async fn subscriber_answer(
        &self,
        participant: u128,
        answer: String,
    ) -> Result<(), EngineError> {
        self.ask_done(
            participant,
            Command::SubscriberAnswer {
                participant,
                answer,
            },
        )
        .await
    }

    /// What the participant's browser sends now; the others in its room are told.
    pub async fn media_state(
        &self,
        participant: u128,
        state: MediaState,
    ) -> Result<(), EngineError> {
        self.ask_done(participant, Command::MediaState { participant, state })
            .await
    }

    /// Whether the participant receives the others' video (`on`) or only their sound.
    pub async fn receive_video(&self, participant: u128, on: bool) -> Result<(), EngineError> {
        self.ask_done(participant, Command::ReceiveVideo { participant, on })
            .await
    }

    /// The participant's browser lost its path: its subscriber connection is offered again
    /// with new ICE credentials (the browser restarts its publisher connection itself).
    pub async fn restart_ice(&self, participant: u128) -> Result<(), EngineError> {
        self.ask_done(participant, Command::RestartIce { participant })
            .await
    }

    /// Removes a participant: closes their connections; the others' subscriber connections
    /// drop their tracks.
    pub async fn leave(&self, participant: u128) -> Result<(), EngineError> {
        let to = self.loop_of(participant)?;
        self.forget(participant);
        self.ask(to, Command::Leave { participant }, None)
            .await
            .map(|_| ())
    }
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

/// A connection's downlink estimate, loss and round trip, as the subscriber leg's
/// estimator ([`crate::bwe::DownlinkEstimator`]) last said.
pub type Estimate = Arc<crate::bwe::Downlink>;

/// What a connection in some role is made of.
pub(crate) struct Recipe {
    pub media: MediaEngine,
    pub registry: Registry,
    pub settings: SettingEngine,
    /// The subscriber leg's downlink estimate (the SFU's sending role only).
    pub estimate: Option<Estimate>,
    /// The publisher leg's loss after the SFU, which its reports carry (the SFU's
    /// receiving role only).
    pub downstream_loss: Option<reports::DownstreamLoss>,
    /// The publisher leg's browser's round trip, which times its NACKs, and what they found
    /// missing (the SFU's receiving role only).
    pub repair: Option<Arc<nacks::Repair>>,
    /// The subscriber leg's minimum playout delay (the SFU's sending role only).
    pub playout: Option<playout::PlayoutDelay>,
}

/// What a client connection (the synthetic participants', full ICE, both directions'
/// interceptors) is made of; see [`client_recipe`].
#[allow(missing_debug_implementations)] // the `rtc` crate's engines have no Debug
pub struct ClientRecipe {
    pub media: MediaEngine,
    pub registry: Registry,
    pub settings: SettingEngine,
}

/// The codecs, interceptors and settings of a client connection: what the synthetic
/// participants of tests and load tests (the `sfu-synthetic` crate) are built from, so
/// that they speak exactly as the SFU's own connections expect a browser to. `settings`
/// may set the client's ICE timers.
pub fn client_recipe(settings: SettingEngineBuilder) -> Result<ClientRecipe, EngineError> {
    let Recipe {
        media,
        registry,
        settings,
        ..
    } = connection_recipe(Role::Client, settings)?;
    Ok(ClientRecipe {
        media,
        registry,
        settings,
    })
}

/// How many times a synthetic client NACKs a missing packet before it gives it up.
const NACKS_PER_PACKET: u16 = 10;

/// How often a synthetic client asks again for what it misses: as Chrome, whose NACK
/// timer runs every 20 ms (it asks again once its round trip has passed; the `rtc` crate's
/// generator asks every interval, so this is Chrome on a path of about 20 ms).
const CLIENT_NACK_INTERVAL: Duration = Duration::from_millis(20);

/// How far behind the newest packet of a stream an SRTP packet may come and still be taken
/// (and checked against replay), in packets: as Chrome and Firefox (libsrtp's
/// `window_size` there). The `rtc` crate's default, 64, is under half a second of a
/// 1.5 Mbit/s video: a retransmission asked for a second time on a 150 ms path came
/// later than that and was dropped as a replay, and asked for again, up to ten times.
const SRTP_REPLAY_WINDOW: usize = 1024;

/// The codecs, interceptors and settings of a connection in `role`, shared by the SFU's
/// connections and the synthetic clients so that both speak exactly the same.
fn connection_recipe(role: Role, settings: SettingEngineBuilder) -> Result<Recipe, EngineError> {
    let mut media = MediaEngine::default();
    // No retransmission format (RTX) on the publisher leg: browsers then resend what the
    // SFU NACKs on the layer's own SSRC. With simulcast their RTX streams are named only
    // by an RTP header extension (repaired-rtp-stream-id), which the `rtc` crate does not
    // map to a layer, so every retransmission sent that way was dropped.
    register_codecs(&mut media, role != Role::ServerReceiving)?;
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
            .with(Slot::ReceiverReport, ReceiverReportBuilder::new().build());
    }
    if matches!(role, Role::ServerReceiving | Role::Client) {
        // The publisher's browser takes the SFU's REMB as the most it may send (its own
        // estimate from the SFU's congestion feedback still applies below it); clients
        // offer it as browsers do.
        media.register_feedback(
            RTCPFeedback {
                typ: "goog-remb".to_owned(),
                parameter: String::new(),
            },
            RtpCodecKind::Video,
        );
    }
    if matches!(role, Role::ServerSending | Role::Client) {
        // Video waits for what the links lose to be repaired ([`playout`]); clients accept
        // the extension as browsers do.
        media
            .register_header_extension(
                RTCRtpHeaderExtensionCapability {
                    uri: playout::URI.to_owned(),
                },
                RtpCodecKind::Video,
                None,
            )
            .map_err(webrtc_err)?;
    }
    let (mut estimate, mut downstream_loss, mut repair, mut playout) = (None, None, None, None);
    match role {
        Role::ServerReceiving => {
            // The SFU asks for what the browser's uplink lost by the round trip
            // ([`nacks`]); its reports tell the browser of its audio only, and of its
            // subscribers' loss ([`reports`]).
            let r = Arc::new(nacks::Repair::default());
            let loss = reports::DownstreamLoss::default();
            registry = registry
                .with(Slot::NackGenerator, nacks::interceptor(r.clone()))
                .with(
                    Slot::from(reports::SLOT),
                    reports::interceptor(loss.clone()),
                );
            (repair, downstream_loss) = (Some(r), Some(loss));
        }
        Role::ServerSending => {
            // Each packet to the browser numbered for its congestion feedback, and that
            // feedback turned into an estimate of its downlink (no pacer: the SFU forwards
            // as packets come, and adapts what it forwards instead; see `crate::bwe`); the
            // browser's receiver reference times answered ([`xr`]); the playout delay
            // written ([`playout`]).
            let e = Estimate::default();
            let delay = playout::PlayoutDelay::default();
            registry = configure_twcc_sender_only(registry, &mut media)
                .map_err(webrtc_err)?
                .with(
                    Slot::CongestionControl,
                    CongestionControlBuilder::new(crate::bwe::DownlinkEstimator::new(e.clone()))
                        .build(),
                )
                .with(Slot::from(feedback::SLOT), feedback::interceptor(e.clone()))
                .with(Slot::from(xr::SLOT), xr::interceptor())
                .with(
                    Slot::from(playout::SLOT),
                    playout::interceptor(delay.clone()),
                );
            (estimate, playout) = (Some(e), Some(delay));
        }
        Role::Client => {
            // A synthetic client asks as Chrome does on a short path, each missing packet
            // at most 10 times (the crate's default asks until it leaves the log), and
            // answers NACKs from what it sent, as a browser does.
            registry = registry
                .with(
                    Slot::NackGenerator,
                    NackGeneratorBuilder::new()
                        .with_interval(CLIENT_NACK_INTERVAL)
                        .with_max_nacks_per_packet(NACKS_PER_PACKET)
                        .build(),
                )
                .with(Slot::NackResponder, NackResponderBuilder::new().build());
        }
    }
    if sending {
        registry = registry
            .with(Slot::SenderReport, SenderReportBuilder::new().build())
            .with(
                Slot::from(14_000),
                tap::Tap::new(RtcpToApplication {
                    receiver_reports: role == Role::Client,
                }),
            );
    }
    let settings = settings
        .with_multicast_dns_mode(MulticastDnsMode::Disabled)
        .with_lite(role != Role::Client)
        .with_srtp_replay_protection_window(SRTP_REPLAY_WINDOW);
    // The SFU judges liveness itself, by any authenticated input ([`liveness`]): the
    // core's ICE timers count STUN checks only.
    let settings = if role == Role::Client {
        settings
    } else {
        settings.with_ice_timeouts(Some(Duration::ZERO), Some(Duration::ZERO), None)
    }
    .build();
    Ok(Recipe {
        media,
        registry,
        settings,
        estimate,
        downstream_loss,
        repair,
        playout,
    })
}

/// Registers the codec policy ([`crate::codec`]): Opus and RED around it; VP8 and H264
/// (constrained baseline, packetization-mode 1), each with NACK, PLI and FIR feedback,
/// and with its retransmission format if `rtx` (transport-wide congestion control
/// feedback is added with its interceptor).
fn register_codecs(media: &mut MediaEngine, rtx: bool) -> Result<(), EngineError> {
    for codec in Codec::ALL {
        let (payload_type, rtx_type) = codec.payload_types();
        let kind = if codec.is_video() {
            RtpCodecKind::Video
        } else {
            RtpCodecKind::Audio
        };
        media
            .register_codec(codec_parameters(codec, payload_type, codec.fmtp()), kind)
            .map_err(webrtc_err)?;
        if let Some(rtx) = rtx.then_some(rtx_type).flatten() {
            let rtx = RTCRtpCodecParameters {
                rtp_codec: RTCRtpCodec {
                    mime_type: "video/rtx".to_owned(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line: format!("apt={payload_type}"),
                    rtcp_feedback: vec![],
                },
                payload_type: rtx,
            };
            media.register_codec(rtx, kind).map_err(webrtc_err)?;
        }
    }
    Ok(())
}

/// The `rtc` crate's parameters of a policy codec at a payload type, with its format
/// line (the SFU's own, or as a browser offered it).
fn codec_parameters(codec: Codec, payload_type: u8, fmtp: &str) -> RTCRtpCodecParameters {
    let feedback = |typ: &str, parameter: &str| RTCPFeedback {
        typ: typ.to_owned(),
        parameter: parameter.to_owned(),
    };
    RTCRtpCodecParameters {
        rtp_codec: RTCRtpCodec {
            mime_type: codec.mime().to_owned(),
            clock_rate: codec.clock_rate(),
            channels: codec.channels(),
            sdp_fmtp_line: fmtp.to_owned(),
            rtcp_feedback: if codec.is_video() {
                vec![
                    feedback("nack", ""),
                    feedback("nack", "pli"),
                    feedback("ccm", "fir"),
                ]
            } else {
                vec![]
            },
        },
        payload_type,
    }
}

/// A track sending one SSRC of one codec, in media stream `stream`.
pub fn media_track(
    stream: String,
    id: String,
    kind: RtpCodecKind,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> MediaStreamTrack {
    MediaStreamTrack::new(
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
    )
}

/// Marks keyframe requests, NACKs and REMB from the far end for delivery to the application
/// (otherwise the interceptor chain ends them), and receiver reports if
/// `receiver_reports` (a synthetic client's, for tests); other RTCP is left to the chain.
#[derive(Debug, Default)]
struct RtcpToApplication {
    receiver_reports: bool,
}

impl tap::Hook for RtcpToApplication {
    fn read(
        &mut self,
        msg: &mut TaggedPacket,
        _: &mut std::collections::VecDeque<TaggedPacket>,
    ) -> bool {
        if let Packet::Rtcp(pkts) = &msg.message.packet {
            let wanted: Vec<_> = pkts
                .iter()
                .filter(|p| {
                    let p = p.as_any();
                    p.is::<PictureLossIndication>()
                        || p.is::<FullIntraRequest>()
                        || p.is::<TransportLayerNack>()
                        || p.is::<ReceiverEstimatedMaximumBitrate>()
                        || (self.receiver_reports && p.is::<ReceiverReport>())
                })
                .cloned()
                .collect();
            if wanted.is_empty() {
                return false;
            }
            msg.message.packet = Packet::Rtcp(wanted);
            msg.message.add(Attribute::DeliverToApplication);
        }
        true
    }
}
