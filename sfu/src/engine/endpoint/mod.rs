//! The SFU's media endpoint, sans-IO: it owns whole rooms and every one of their peer
//! connections (the `rtc` crate's sans-IO core), and does no IO and reads no clock.
//!
//! Inputs: [`Endpoint::handle_datagram`] (a UDP datagram or an ICE-TCP frame, with the
//! local and remote address), [`Endpoint::handle_command`] (join, publish, candidate,
//! subscriber answer, media state, ICE restart, leave; the answer is returned) and
//! [`Endpoint::handle_timeout`], each with the time `now`. Outputs, polled after each
//! input: [`Endpoint::poll_transmit`] (datagrams to send), [`Endpoint::poll_event`] (what
//! to tell a participant's owner), [`Endpoint::poll_timeout`] (when to call
//! `handle_timeout` next) and [`Endpoint::poll_closed_path`] (ICE-TCP streams no
//! connection uses any more). The same shape as the `rtc` core itself, str0m's `Rtc` and
//! quinn-proto's `Endpoint`; the media loop ([`super::media_loop`]) moves datagrams,
//! commands and time in and out, and the tests drive it over a simulated network
//! ([`sim`]).
//!
//! After an input, every connection it touched is *serviced* (lazily, at the first poll
//! or the next command): its datagrams are queued, its events handled (connection
//! states, published tracks), and what it read handled. A publisher's RTP is handed to
//! the forwarding core, which writes each subscriber's copy straight into that
//! subscriber's connection, so one received packet becomes its N copies within the same
//! call, with no allocation, channel, lock or timer per copy; the copies' datagrams wait
//! in one queue reused across calls.
//!
//! Datagrams reach their connection by source address; an unknown address opens a route
//! only with a STUN check naming the connection's ICE username fragment (which the core
//! then authenticates with the password only the browser was given).
//!
//! Subscriber negotiation is a small state machine per participant ([`Negotiation`]):
//! when the room's tracks change, the subscriber connection's tracks are reconciled and
//! one offer goes out; new tracks are routed once the answer is applied and the
//! connection is up (packets written before DTLS-SRTP is ready would be dropped, the
//! first keyframe among them).
//!
//! This file holds the state and the inputs and outputs; the rest is by job: [`routing`]
//! (datagrams to their connection), [`connections`] (connections and participants, and
//! servicing what the core did), [`forwarding`] (media through the forwarding core),
//! [`negotiation`] (offers, answers, codecs, media state), [`bandwidth`] (each
//! subscriber's share, layers and the limits on publishers) and [`probe`] (probing a
//! downlink before a move up).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use protocol::{LinkFigures, MediaLeg, MediaState};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::{RTCIceConnectionState, RTCPeerConnectionState};
use rtc::peer_connection::transport::{
    CandidateConfig, CandidateHostConfig, RTCIceCandidate, RTCIceCandidateInit,
};
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RTCRtpCodecParameters, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpReceiverId, RTCRtpSenderId};
use rtc::sansio::Protocol;
use rtc::shared::{TaggedBytesMut, TransportContext, TransportProtocol};

use super::liveness::{self, Liveness};
use super::{
    EngineError, EngineEvent, Estimate, LIVE_PARTICIPANTS, LiveGuard, LoopCounters, Recipe, Role,
    codec_parameters, connection_guard, connection_recipe, media_track, webrtc_err,
};
use crate::bwe::LayerChoice;
use crate::codec::{self, Codec, CodecSet, publish_codecs};
use crate::forward::{
    Forward, Forwarder, KeyframeRequest, Layer, MAX_LAYERS, MediaKind, PeerId, RtpMeta, TrackId,
};
use bandwidth::Uplink;

mod bandwidth;
mod connections;

/// A sans-IO peer connection in `role` ([`connection_recipe`]), as the endpoint's
/// connections and its tests' browsers are made, with the downlink estimate of a
/// subscriber leg.
fn sansio_connection(
    role: Role,
    now: Instant,
) -> Result<(RTCPeerConnection, LegCells), EngineError> {
    let Recipe {
        media,
        registry,
        settings,
        estimate,
        downstream_loss,
        repair,
        playout,
    } = connection_recipe(role, SettingEngineBuilder::new())?;
    let pc = RTCPeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .build(now)
        .map_err(webrtc_err)?;
    Ok((
        pc,
        LegCells {
            estimate,
            downstream_loss,
            repair,
            playout,
        },
    ))
}

/// What a connection's interceptors share with the endpoint.
struct LegCells {
    estimate: Option<Estimate>,
    downstream_loss: Option<super::reports::DownstreamLoss>,
    repair: Option<Arc<super::nacks::Repair>>,
    playout: Option<super::playout::PlayoutDelay>,
}
mod forwarding;
mod negotiation;
mod probe;
mod routing;
#[cfg(test)]
pub(crate) mod sim;
#[cfg(test)]
mod tests;

use connections::follow_local_ufrag;
use connections::{add_early_candidates, touch};
use forwarding::request_keyframe;

/// How long the SFU waits for a browser to answer its offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long after a failed negotiation the SFU offers again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Candidates kept per leg before its remote description (a browser sends a handful).
const MAX_EARLY_CANDIDATES: usize = 32;
/// Remote addresses one connection may be reached from (one per candidate pair tried).
const MAX_ADDRS_PER_CONN: usize = 8;
/// The soonest a connection's timer fires again after it was serviced.
const MIN_TIMER_STEP: Duration = Duration::from_millis(1);
/// How often negotiation deadlines and liveness are checked (a deadline of
/// [`Endpoint::poll_timeout`] while any connection is open).
const TICK: Duration = Duration::from_millis(250);

/// The most STUN checks a connection keeps until its remote description is set (the
/// newest from each address).
const EARLY_CHECKS: usize = 8;
/// The most DTLS datagrams a connection keeps until its ICE has chosen a path (a
/// browser's first flight is one to three).
const EARLY_DTLS: usize = 8;
/// How often each subscriber connection's loss and round trip (from its browser's
/// congestion control feedback) go into the node's metrics.
const SAMPLE_LINKS: Duration = Duration::from_secs(5);

/// A publisher connection not heard for this long (its browser sends audio 50 times a
/// second, or every 400 ms in silence with DTX, and sender reports every second) had its
/// path interrupted: when it is heard again, the subscribers of its videos restart at
/// keyframes asked for at once ([`Forwarder::restart_track`]). A subscriber connection is
/// judged by its ICE restarts instead: its browser's feedback is not regular enough (a
/// Firefox receiver's reports came more than 1 s apart, and each "outage" restarted its
/// videos; [`Forwarder::restart_peer`] once it connects after a restart).
const OUTAGE: Duration = Duration::from_millis(1_000);

/// A request from the engine (signalling's way in), for [`Endpoint::handle_command`].
#[derive(Debug)]
pub enum Command {
    /// Adds a participant to a room (made on this endpoint if new): its two connections.
    Join { room: u128, participant: u128 },
    /// The browser's offer for its publisher connection; answered with [`Answer::Sdp`].
    Publish { participant: u128, offer: String },
    /// A candidate the browser trickled for one of its connections.
    Candidate {
        participant: u128,
        leg: MediaLeg,
        candidate: RTCIceCandidateInit,
    },
    /// The browser's answer to the last [`EngineEvent::SubscriberOffer`].
    SubscriberAnswer { participant: u128, answer: String },
    /// What the participant's browser sends now.
    MediaState {
        participant: u128,
        state: MediaState,
    },
    /// The browser lost its path: its subscriber connection is offered again with new ICE
    /// credentials.
    RestartIce { participant: u128 },
    /// Whether the participant receives the others' video (`on`) or only their sound.
    ReceiveVideo { participant: u128, on: bool },
    /// Removes a participant and closes its connections.
    Leave { participant: u128 },
}

/// What a command that succeeded answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    Done,
    /// The SFU's SDP answer (to [`Command::Publish`]).
    Sdp(String),
}

/// One datagram (or ICE-TCP frame) to send.
#[derive(Debug)]
pub struct Transmit {
    pub proto: TransportProtocol,
    /// The local address it goes out of (the UDP socket's, or the ICE-TCP listener's).
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: BytesMut,
}

/// Where an endpoint is reached: the addresses its host candidates name.
#[derive(Debug, Clone)]
pub struct EndpointConfig {
    /// The UDP address it receives on.
    pub udp: SocketAddr,
    /// The ICE-TCP listener's address, with ICE-TCP.
    pub tcp: Option<SocketAddr>,
    /// (private, public): candidates in its SDP carry `public` instead of `private`.
    pub announced: Option<(IpAddr, IpAddr)>,
    /// This loop's counters.
    pub counters: LoopCounters,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct ConnId(u64);

/// A parsed packet kept in a track's cache, shared by every subscriber's copy.
#[derive(Debug, Clone)]
struct Cached(Arc<rtp::Packet>);

/// How a packet reaches one subscriber: its connection and sender, its SSRC and the
/// payload type of each codec its browser accepted.
#[derive(Debug, Clone)]
struct Route {
    conn: ConnId,
    sender: RTCRtpSenderId,
    ssrc: u32,
    payload_types: Vec<(Codec, u8)>,
}

/// One peer connection and what the loop knows about it.
struct Conn {
    pc: RTCPeerConnection,
    participant: u128,
    leg: MediaLeg,
    ufrag: String,
    /// Remote addresses routed to it.
    addrs: Vec<(TransportProtocol, SocketAddr)>,
    /// The deadline last asked of the core (a timer entry exists for it).
    deadline: Option<Instant>,
    /// In the list of connections to service this turn.
    queued: bool,
    /// Whether a remote description is set; candidates wait in `early` until it is.
    described: bool,
    early: Vec<RTCIceCandidateInit>,
    /// STUN checks that came before the remote description, the newest from each address
    /// (at most [`EARLY_CHECKS`]): answered once it is set. A browser answering the SFU's
    /// offer checks the path at once, before its answer has reached the SFU; refused, a
    /// check is tried again only after the browser's retransmission timer. Only the
    /// newest is answered: Chrome takes each answer's delay as a round trip, and with
    /// several it judges the path stable, pings it every 2.5 s and so nominates it up to
    /// 2.5 s later, and sets its DTLS retransmission timer to twice the first (seen:
    /// 2 to 6 s more to connect, `join-time.test.mjs`).
    early_checks: Vec<TaggedBytesMut>,
    /// Whether its ICE has chosen a path; until then the core drops DTLS, so what comes
    /// is kept in `early_dtls` (at most [`EARLY_DTLS`]) and handed over when it has. A
    /// browser starts DTLS as soon as a check is answered, and nominates the path only
    /// with its next check.
    ice_connected: bool,
    early_dtls: Vec<TaggedBytesMut>,
    /// Publisher leg: the core's track ids of the tracks it receives → the room's ids.
    tracks: HashMap<String, TrackId>,
    /// Whether the browser is still there (see [`liveness`]).
    liveness: Liveness,
    /// Subscriber leg: its browser's downlink estimate ([`crate::bwe`]).
    estimate: Option<Estimate>,
    /// Publisher leg: the worst loss on its subscribers' downlinks, which its receiver
    /// reports carry (set every tick).
    downstream_loss: Option<super::reports::DownstreamLoss>,
    /// Publisher leg: its browser's round trip, which times the SFU's NACKs for what it
    /// sends (set every tick from the subscriber leg's measure), and what they found
    /// missing.
    repair: Option<Arc<super::nacks::Repair>>,
    /// Subscriber leg: the minimum playout delay its video is sent with (set every tick).
    playout: Option<super::playout::PlayoutDelay>,
    /// Subscriber leg: when its link next goes into the metrics ([`SAMPLE_LINKS`]).
    next_link_sample: Instant,
    /// Bytes received on it (a publisher leg: what its browser sends).
    received_bytes: u64,
    /// When its browser was last heard (anything the core accepted).
    last_heard: Option<Instant>,
    /// Its ICE restarted and it has not connected since.
    ice_restarted: bool,
    _live: LiveGuard,
}

impl Conn {
    /// Subscriber leg: its browser's round trip as its last congestion feedback implied, in
    /// microseconds (0: none yet, or another leg).
    fn rtt_us(&self) -> u64 {
        self.estimate
            .as_ref()
            .map_or(0, |e| e.rtt_us.load(Ordering::Relaxed))
    }

    /// Subscriber leg: how long its packets wait in its path's queues, as its last
    /// congestion feedback said (`None`: no figure yet, or another leg).
    fn queue(&self) -> Option<Duration> {
        self.estimate
            .as_ref()
            .map(|e| e.queue_us.load(Ordering::Relaxed))
            .filter(|us| *us != crate::bwe::NO_QUEUE_FIGURE)
            .map(Duration::from_micros)
    }

    /// Subscriber leg: what its downlink shows now (loss and queue), for a layer choice
    /// (`probes`: whether its downlink can be probed).
    fn downlink(&self, probes: bool) -> crate::bwe::DownlinkState {
        crate::bwe::DownlinkState {
            loss_ppm: self.loss_ppm(),
            queue: self.queue(),
            probes,
            shed: false,
            carried: None,
        }
    }

    /// Subscriber leg: the share of packets its downlink lost over its estimator's
    /// window, in millionths (`None`: no figure yet, or another leg).
    fn loss_ppm(&self) -> Option<u64> {
        self.estimate
            .as_ref()
            .map(|e| e.loss_ppm.load(Ordering::Relaxed))
            .filter(|ppm| *ppm != crate::bwe::NO_LOSS_FIGURE)
    }
}

/// A published track: what subscribers need to create theirs, its publisher's payload
/// types, and the way back to the publisher for keyframe requests and NACKs.
#[derive(Debug, Clone)]
struct Published {
    publisher: PeerId,
    kind: MediaKind,
    /// The codec it was published in (subscribers' tracks start with it; the packets'
    /// payload types say what follows).
    codec: Codec,
    /// The publisher's payload types (of its last offer) and their codecs.
    payload_types: Vec<(u8, Codec)>,
    conn: ConnId,
    receiver: RTCRtpReceiverId,
    /// Each simulcast layer's SSRC (0: none); a track without simulcast has layer 0 only.
    ssrcs: [u32; MAX_LAYERS],
    /// What each layer sends ([`bandwidth`]).
    rates: [LayerRate; MAX_LAYERS],
    /// What its layers below the top sent, in bits per second, when the top layer last
    /// arrived (a browser sends its lower layers more while it stops its top one).
    lower_bps: u64,
    /// Whether its publisher was told to pause its lower layers ([`bandwidth`]).
    lower: crate::bwe::LowerLayers,
}

/// What one layer of a published track sends: bytes counted as packets come, turned into
/// bits per second once per [`bandwidth`] window.
#[derive(Debug, Clone, Copy, Default)]
struct LayerRate {
    bytes: u64,
    sample: Option<(Instant, u64)>,
    bps: u64,
}

impl Published {
    /// The layer of a packet's SSRC (a track without simulcast: 0).
    fn layer_of(&self, ssrc: u32) -> Option<Layer> {
        self.ssrcs
            .iter()
            .position(|s| *s == ssrc && ssrc != 0)
            .map(|l| l as Layer)
    }

    /// Whether it comes in more than one layer.
    fn simulcast(&self) -> bool {
        self.ssrcs.iter().filter(|s| **s != 0).count() > 1
    }

    /// Its highest layer (0 without simulcast).
    fn top_layer(&self) -> usize {
        self.ssrcs.iter().rposition(|s| *s != 0).unwrap_or(0)
    }

    fn codec_of(&self, payload_type: u8) -> Option<Codec> {
        self.payload_types
            .iter()
            .find(|(pt, _)| *pt == payload_type)
            .map(|(_, c)| *c)
    }
}

/// One consultation on this loop.
#[derive(Default)]
struct Room {
    forwarder: Forwarder<Cached, Route>,
    tracks: HashMap<TrackId, Published>,
    members: Vec<u128>,
}

/// Where a participant's subscriber negotiation stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Negotiation {
    Idle,
    /// An offer went out at this time; its answer is awaited.
    Offered(Instant),
    /// The last attempt failed; offer again from this time.
    Retry(Instant),
}

/// What a participant's subscriber connection sends now.
struct Subscribed {
    sender: RTCRtpSenderId,
    ssrc: u32,
    kind: MediaKind,
    /// The codecs (and their payload types) the browser's last answer accepted for it.
    payload_types: Vec<(Codec, u8)>,
    routed: bool,
    /// A simulcast video: the layer it gets.
    layers: LayerChoice,
}

/// One participant: its two connections and its subscriber negotiation.
struct Member {
    id: PeerId,
    room: u128,
    publisher: ConnId,
    subscriber: ConnId,
    subscribed: HashMap<TrackId, Subscribed>,
    negotiation: Negotiation,
    /// The room's tracks changed since the last offer.
    dirty: bool,
    /// Its browser asked for an ICE restart: the next offer carries new credentials.
    ice_restart: bool,
    /// Where the subscriber connection stands: new tracks are routed once it is up.
    subscriber_state: RTCPeerConnectionState,
    /// What its browser says it sends (for the others to show).
    state: MediaState,
    /// Codecs: see [`Codecs`].
    codecs: Codecs,
    /// What its browser sends, and the limit the others' downlinks set it ([`bandwidth`]).
    uplink: Uplink,
    /// Its browser asked for no video (sound only): every video track it is subscribed
    /// to is paused for it, and its downlink limits no publisher.
    video_off: bool,
    /// Until when its downlink counts as losing packets: its video then waits for the
    /// SFU's retransmissions too ([`super::playout`]).
    downlink_lossy_until: Option<Instant>,
    /// The minimum playout delay written to its video ([`super::playout`]).
    playout: super::playout::Settle,
    /// What each video it receives may take of its downlink, as of the last tick
    /// ([`bandwidth`]); `None` before its first estimate, or in sound only.
    video_share: Option<u64>,
    /// Its share, per video, of what its downlink delivered over the last second
    /// ([`crate::bwe::DownlinkState::carried`]).
    video_carried: Option<u64>,
    /// Its subscriber connection's probe track, added with its first video ([`probe`]).
    probe: Option<probe::ProbeTrack>,
    /// Whether its downlink keeps queueing ([`bandwidth`]).
    queue_watch: crate::bwe::QueueWatch,
    _live: LiveGuard,
}

/// What the SFU knows of a participant's video codecs, from its publisher offers.
#[derive(Debug, Clone)]
struct Codecs {
    /// The video codecs of its last offer, in its browser's order (empty before the first).
    offered: Vec<Codec>,
    /// What its browser can receive: what it offered (every policy codec until it has).
    receives: CodecSet,
    /// The video codecs its subscriber connection's first answer with video accepted: the
    /// `rtc` core keeps that connection to them.
    accepts_video: Option<CodecSet>,
    /// The same for audio (Opus, and RED if its browser takes it).
    accepts_audio: Option<CodecSet>,
    /// Every payload type of its last offer that the policy holds, and its codec.
    payload_types: Vec<(u8, Codec)>,
    /// The video codec the last answer told it to send.
    sends: Option<Codec>,
    /// The codec a renegotiation was asked for (not asked again until it offers).
    asked: Option<Codec>,
}

impl Codecs {
    fn new() -> Self {
        Self {
            offered: Vec::new(),
            receives: CodecSet::all_video(),
            accepts_video: None,
            accepts_audio: None,
            payload_types: Vec::new(),
            sends: None,
            asked: None,
        }
    }
}

/// The id of the media stream a participant's tracks arrive in at the others.
fn stream_id(peer: PeerId) -> String {
    format!("p{}", peer.0)
}

/// A subscriber leg's loss and round trip, as its estimator last had them from the
/// browser's feedback, into the node's histograms every [`SAMPLE_LINKS`]; with its
/// estimate, the figures its browser is told (none before the first feedback).
fn sample_link(c: &mut Conn, counters: &LoopCounters, now: Instant) -> Option<LinkFigures> {
    let e = c.estimate.as_ref().filter(|_| now >= c.next_link_sample)?;
    c.next_link_sample = now + SAMPLE_LINKS;
    let loss = e.loss_ppm.load(Ordering::Relaxed);
    if loss != crate::bwe::NO_LOSS_FIGURE {
        #[allow(clippy::cast_precision_loss)]
        counters.loss.observe(loss as f64 / 1e6);
    }
    let rtt = e.rtt_us.load(Ordering::Relaxed);
    if rtt > 0 {
        #[allow(clippy::cast_precision_loss)]
        counters.rtt.observe(rtt as f64 / 1e6);
    }
    let bitrate = e.bitrate.load(Ordering::Relaxed);
    (bitrate > 0).then(|| LinkFigures {
        down_kbps: u32::try_from(bitrate / 1_000).unwrap_or(u32::MAX),
        rtt_ms: u32::try_from(rtt / 1_000).unwrap_or(u32::MAX),
        loss_pct: if loss == crate::bwe::NO_LOSS_FIGURE {
            0
        } else {
            u8::try_from((loss + 5_000) / 10_000)
                .unwrap_or(100)
                .min(100)
        },
    })
}

/// See the module's documentation.
pub struct Endpoint {
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    announced: Option<(IpAddr, IpAddr)>,
    counters: LoopCounters,
    conns: HashMap<ConnId, Conn>,
    next_conn: u64,
    by_ufrag: HashMap<String, ConnId>,
    by_addr: HashMap<(TransportProtocol, SocketAddr), ConnId>,
    members: HashMap<u128, Member>,
    rooms: HashMap<u128, Room>,
    next_peer: u32,
    /// (deadline, connection); entries whose deadline the connection no longer has are
    /// skipped when they come up.
    timers: BinaryHeap<Reverse<(Instant, ConnId)>>,
    /// The next check of negotiation deadlines and liveness ([`TICK`]), while any
    /// connection is open.
    next_tick: Option<Instant>,
    /// The next probe packets, while any subscriber's downlink is probed ([`probe`]).
    next_probe: Option<Instant>,
    /// The time of the last input (outputs are computed as of then).
    now: Instant,
    /// Connections to service before the next output.
    touched: Vec<ConnId>,
    /// Participants whose subscriber connection should be reconciled.
    dirty: Vec<u128>,
    /// Outputs, reused across calls.
    transmits: VecDeque<Transmit>,
    events_out: VecDeque<EngineEvent>,
    closed_paths: VecDeque<SocketAddr>,
    /// Scratch space for one connection's events and reads, kept to reuse.
    events: Vec<RTCPeerConnectionEvent>,
    reads: Vec<RTCMessage>,
}

static NEXT_SSRC: AtomicU32 = AtomicU32::new(0x5F00_0000);
static NEXT_TRACK: AtomicU32 = AtomicU32::new(1);

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("udp", &self.udp_addr)
            .field("tcp", &self.tcp_addr)
            .field("connections", &self.conns.len())
            .field("participants", &self.members.len())
            .field("rooms", &self.rooms.len())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// An endpoint with no rooms; `now` is the time of its first input at the latest.
    pub fn new(config: EndpointConfig, now: Instant) -> Self {
        Self {
            udp_addr: config.udp,
            tcp_addr: config.tcp,
            announced: config.announced,
            counters: config.counters,
            conns: HashMap::new(),
            next_conn: 0,
            by_ufrag: HashMap::new(),
            by_addr: HashMap::new(),
            members: HashMap::new(),
            rooms: HashMap::new(),
            next_peer: 1,
            timers: BinaryHeap::new(),
            next_tick: None,
            next_probe: None,
            now,
            touched: Vec::new(),
            dirty: Vec::new(),
            transmits: VecDeque::new(),
            events_out: VecDeque::new(),
            closed_paths: VecDeque::new(),
            events: Vec::new(),
            reads: Vec::new(),
        }
    }

    /// One datagram (UDP) or frame (ICE-TCP) that arrived at `local` from `remote`.
    /// Anything that is not for a known connection, or that the core refuses, changes
    /// nothing.
    pub fn handle_datagram(
        &mut self,
        proto: TransportProtocol,
        local: SocketAddr,
        remote: SocketAddr,
        bytes: BytesMut,
        now: Instant,
    ) {
        let now = self.advance(now);
        self.datagram(proto, local, remote, bytes, now);
    }

    /// Carries out a command; its answer is returned, its consequences (offers to send,
    /// datagrams) are polled.
    pub fn handle_command(
        &mut self,
        command: Command,
        now: Instant,
    ) -> Result<Answer, EngineError> {
        let now = self.advance(now);
        self.flush(now);
        let done = |r: Result<(), EngineError>| r.map(|()| Answer::Done);
        match command {
            Command::Join { room, participant } => done(self.join(room, participant, now)),
            Command::Publish { participant, offer } => {
                self.publish(participant, offer, now).map(Answer::Sdp)
            }
            Command::Candidate {
                participant,
                leg,
                candidate,
            } => done(self.candidate(participant, leg, candidate)),
            Command::SubscriberAnswer {
                participant,
                answer,
            } => done(self.subscriber_answer(participant, answer, now)),
            Command::MediaState { participant, state } => {
                done(self.media_state(participant, state))
            }
            Command::RestartIce { participant } => done(self.restart_ice(participant)),
            Command::ReceiveVideo { participant, on } => {
                done(self.receive_video(participant, on, now))
            }
            Command::Leave { participant } => done(self.leave(participant)),
        }
    }

    /// Handles the timers due by `now`: the connections', and (every [`TICK`]) answers
    /// not given in time, failed negotiations due to be tried again and connections gone
    /// silent.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        self.flush(now);
        self.timeouts(now);
        if self.next_tick.is_some_and(|at| at <= now) {
            self.next_tick = Some(now + TICK);
            self.tick(now);
        }
        if self.next_probe.is_some_and(|at| at <= now) {
            self.send_probes(now);
        }
    }

    /// An ICE-TCP stream from `remote` ended: its route is forgotten.
    pub fn handle_path_closed(&mut self, proto: TransportProtocol, remote: SocketAddr) {
        let key = (proto, remote);
        if let Some(id) = self.by_addr.remove(&key) {
            if let Some(c) = self.conns.get_mut(&id) {
                c.addrs.retain(|a| *a != key);
            }
        }
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.flush_pending();
        self.transmits.pop_front()
    }

    /// The next event for a participant's owner (each names its participant).
    pub fn poll_event(&mut self) -> Option<EngineEvent> {
        self.flush_pending();
        self.events_out.pop_front()
    }

    /// The ICE-TCP streams (by remote address) that no connection uses any more: the
    /// owner closes them.
    pub fn poll_closed_path(&mut self) -> Option<SocketAddr> {
        self.closed_paths.pop_front()
    }

    /// When [`Self::handle_timeout`] should be called next: the earliest of the
    /// connections' timers and the next [`TICK`]. `None`: nothing to wait for.
    pub fn poll_timeout(&mut self) -> Option<Instant> {
        self.flush_pending();
        // Skip entries that are stale (the connection's deadline moved, or it is gone).
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if self.conns.get(&id).is_some_and(|c| c.deadline == Some(at)) {
                break;
            }
            self.timers.pop();
        }
        let conn = self.timers.peek().map(|Reverse((at, _))| *at);
        [conn, self.next_tick, self.next_probe]
            .into_iter()
            .flatten()
            .min()
    }

    /// Participants on this endpoint.
    pub fn participants(&self) -> usize {
        self.members.len()
    }

    /// Everyone leaves (the endpoint is shutting down); their last datagrams are queued.
    pub fn close(&mut self) {
        let everyone: Vec<u128> = self.members.keys().copied().collect();
        for key in everyone {
            let _ = self.leave(key);
        }
        self.next_tick = None;
        self.next_probe = None;
    }

    /// The time of an input: never before the last one's, whatever the caller passes.
    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn flush_pending(&mut self) {
        if !self.touched.is_empty() || !self.dirty.is_empty() {
            self.flush(self.now);
        }
        if self.conns.is_empty() {
            self.next_tick = None;
            self.next_probe = None;
        } else if self.next_tick.is_none() {
            self.next_tick = Some(self.now + TICK);
        }
    }

    /// Services every touched connection, and reconciles the subscriber connections
    /// whose room changed, until nothing is left to do.
    fn flush(&mut self, now: Instant) {
        loop {
            while let Some(id) = self.touched.pop() {
                self.service(id, now);
            }
            if self.dirty.is_empty() {
                return;
            }
            for key in std::mem::take(&mut self.dirty) {
                self.negotiate(key, now);
            }
        }
    }

    /// Answers not given in time, failed negotiations due to be tried again, connections
    /// gone silent.
    fn tick(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for c in self.conns.values_mut() {
            if let Some(figures) = sample_link(c, &self.counters, now) {
                if self.members.contains_key(&c.participant) {
                    self.events_out.push_back(EngineEvent::Link {
                        participant: c.participant,
                        figures,
                    });
                }
            }
            match c.liveness.check(now) {
                Some(liveness::Change::Silent) => {
                    tracing::debug!(participant = c.participant, leg = ?c.leg, "silent");
                }
                Some(liveness::Change::Failed) => failed.push(c.participant),
                _ => {}
            }
        }
        for key in failed {
            tracing::info!(participant = key, "media connection failed: nothing heard");
            if self.members.contains_key(&key) {
                self.events_out.push_back(EngineEvent::Connection {
                    participant: key,
                    connected: false,
                });
            }
        }
        let mut again = Vec::new();
        for (key, m) in &mut self.members {
            match m.negotiation {
                Negotiation::Offered(at) if now.duration_since(at) >= ANSWER_TIMEOUT => {
                    tracing::info!(
                        participant = key,
                        "no answer to the subscriber offer in time; retrying"
                    );
                    m.negotiation = Negotiation::Retry(now + RETRY_AFTER);
                }
                Negotiation::Retry(at) if now >= at => {
                    m.negotiation = Negotiation::Idle;
                    again.push(*key);
                }
                _ => {}
            }
        }
        for key in again {
            self.mark_dirty(key);
        }
        self.limit_uplinks(now);
    }
}
