//! A media loop: one task that owns whole rooms and drives every one of their peer
//! connections (the `rtc` crate's sans-IO core) over one shared UDP socket and, with
//! ICE-TCP, one listener.
//!
//! One turn of the loop: take what is ready (a batch of datagrams, a TCP frame, a
//! command from the engine, due timers), feed it to the connections it is for, then
//! *service* every connection touched: send its datagrams, handle its events (connection
//! states, published tracks), and handle what it read. A publisher's RTP is handed to the
//! forwarding core, which writes each subscriber's copy straight into that subscriber's
//! connection, so one received packet becomes its N copies on the wire within the same
//! turn, with no task wake-up, channel, lock or timer per copy.
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
//! This file holds the loop's state and its `select!`; the rest is by job: [`net`]
//! (sockets and routing datagrams), [`connections`] (connections and participants, and
//! servicing what the core did), [`forwarding`] (media through the forwarding core),
//! [`negotiation`] (offers, answers, codecs, media state).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::{MediaLeg, MediaState};
use rtc::peer_connection::RTCPeerConnection;
use rtc::peer_connection::RTCPeerConnectionBuilder;
use rtc::peer_connection::configuration::RTCConfigurationBuilder;
use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::peer_connection::event::{RTCPeerConnectionEvent, RTCTrackEvent, RTCTrackEventInit};
use rtc::peer_connection::message::RTCMessage;
use rtc::peer_connection::sdp::RTCSessionDescription;
use rtc::peer_connection::state::RTCPeerConnectionState;
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
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use super::liveness::{self, Liveness};
use super::tcp::{self, TcpIn};
use super::{
    EngineConfig, EngineError, EngineEvent, LIVE_PARTICIPANTS, LiveGuard, NackCounters, Role,
    codec_parameters, connection_guard, connection_recipe, media_track, webrtc_err,
};
use crate::codec::{Codec, CodecSet, publish_codecs};
use crate::forward::{
    CachedPacket, Forward, Forwarder, KeyframeRequest, MediaKind, PeerId, RtpMeta, TrackId,
};

mod connections;
mod forwarding;
mod negotiation;
mod net;

use connections::follow_local_ufrag;
use connections::{add_early_candidates, touch};
use forwarding::request_keyframe;
pub(super) use net::bind;

/// How long the SFU waits for a browser to answer its offer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long after a failed negotiation the SFU offers again.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// Candidates kept per leg before its remote description (a browser sends a handful).
const MAX_EARLY_CANDIDATES: usize = 32;
/// Datagrams read in one turn before the connections they touched are serviced.
const RECV_BATCH: usize = 64;
/// The largest datagram read (larger ones are truncated, and fail to decrypt).
const RECV_BUF: usize = 2048;
/// The kernel buffers asked for on the shared UDP socket. Every connection of the loop
/// shares them, so they must absorb a burst of the whole loop's traffic while the loop
/// is busy (hundreds of DTLS handshakes at once, say): with the default ~200 KB, the
/// buffer overflowed at 200 participants and handshake flights were lost. Capped by
/// `net.core.rmem_max` / `wmem_max` (raise those for large nodes).
const SOCKET_BUFFER: usize = 8 << 20;
/// ICE-TCP streams one loop keeps open at most.
const MAX_TCP_STREAMS: usize = 4096;
/// Remote addresses one connection may be reached from (one per candidate pair tried).
const MAX_ADDRS_PER_CONN: usize = 8;
/// The soonest a connection's timer fires again after it was serviced.
const MIN_TIMER_STEP: Duration = Duration::from_millis(1);
/// How often negotiation deadlines (and dropped sends) are checked.
const TICK: Duration = Duration::from_millis(250);

/// A request from the engine, with the channel its answer goes back on.
#[derive(Debug)]
pub(super) enum Command {
    Join {
        room: u128,
        participant: u128,
        events: mpsc::UnboundedSender<EngineEvent>,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Publish {
        participant: u128,
        offer: String,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Candidate {
        participant: u128,
        leg: MediaLeg,
        candidate: RTCIceCandidateInit,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    SubscriberAnswer {
        participant: u128,
        answer: String,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    MediaState {
        participant: u128,
        state: MediaState,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    RestartIce {
        participant: u128,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
    Leave {
        participant: u128,
        reply: oneshot::Sender<Result<(), EngineError>>,
    },
}

/// The engine's way to one loop.
#[derive(Debug)]
pub(super) struct LoopHandle {
    pub tx: mpsc::UnboundedSender<Command>,
    /// The UDP address the loop receives on.
    pub udp: SocketAddr,
}

/// One loop's sockets, bound before it starts.
#[derive(Debug)]
pub(super) struct Sockets {
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
}

/// Starts a loop on the current runtime.
pub(super) fn spawn(
    sockets: Sockets,
    announced: Option<(IpAddr, IpAddr)>,
    nacks: Arc<NackCounters>,
) -> Result<LoopHandle, EngineError> {
    let udp = UdpSocket::from_std(sockets.udp).map_err(webrtc_err)?;
    let udp_addr = udp.local_addr().map_err(webrtc_err)?;
    let tcp = sockets
        .tcp
        .map(TcpListener::from_std)
        .transpose()
        .map_err(webrtc_err)?;
    let tcp_addr = match &tcp {
        Some(l) => Some(l.local_addr().map_err(webrtc_err)?),
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (tcp_tx, tcp_rx) = mpsc::channel(1024);
    let media_loop = MediaLoop {
        net: Net {
            udp,
            udp_addr,
            tcp_addr,
            tcp_out: HashMap::new(),
            send_errors: 0,
            reported_errors: 0,
        },
        announced,
        nacks,
        conns: HashMap::new(),
        next_conn: 0,
        by_ufrag: HashMap::new(),
        by_addr: HashMap::new(),
        members: HashMap::new(),
        rooms: HashMap::new(),
        next_peer: 1,
        timers: BinaryHeap::new(),
        touched: Vec::new(),
        dirty: Vec::new(),
        events: Vec::new(),
        reads: Vec::new(),
    };
    tokio::spawn(media_loop.run(rx, tcp, tcp_tx, tcp_rx));
    Ok(LoopHandle { tx, udp: udp_addr })
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
    /// Publisher leg: the core's track ids of the tracks it receives → the room's ids.
    tracks: HashMap<String, TrackId>,
    /// Whether the browser is still there (see [`liveness`]).
    liveness: Liveness,
    _live: LiveGuard,
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
    media_ssrc: u32,
    /// When its last packet came (a video track resuming after a gap asks for a keyframe).
    last_packet: Option<Instant>,
}

/// A video track whose packets stop this long and come back (its publisher's path was cut
/// and restored, or moved) asks for a keyframe at once: its subscribers' decoders lost
/// what came between.
const RESUME_GAP: Duration = Duration::from_millis(500);

impl Published {
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
}

/// One participant: its two connections and its subscriber negotiation.
struct Member {
    id: PeerId,
    room: u128,
    publisher: ConnId,
    subscriber: ConnId,
    events: mpsc::UnboundedSender<EngineEvent>,
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
    accepts: Option<CodecSet>,
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
            accepts: None,
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

/// The loop's sockets.
struct Net {
    udp: UdpSocket,
    udp_addr: SocketAddr,
    tcp_addr: Option<SocketAddr>,
    /// Each accepted ICE-TCP stream's way out, by the peer's address.
    tcp_out: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    /// Datagrams the socket refused (its buffer full), and how many were last reported.
    send_errors: u64,
    reported_errors: u64,
}

struct MediaLoop {
    net: Net,
    announced: Option<(IpAddr, IpAddr)>,
    nacks: Arc<NackCounters>,
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
    /// Connections to service before the loop waits again.
    touched: Vec<ConnId>,
    /// Participants whose subscriber connection should be reconciled.
    dirty: Vec<u128>,
    /// Scratch space for one connection's events and reads, kept to reuse.
    events: Vec<RTCPeerConnectionEvent>,
    reads: Vec<RTCMessage>,
}

static NEXT_SSRC: AtomicU32 = AtomicU32::new(0x5F00_0000);
static NEXT_TRACK: AtomicU32 = AtomicU32::new(1);

impl MediaLoop {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        tcp: Option<TcpListener>,
        tcp_tx: mpsc::Sender<TcpIn>,
        mut tcp_rx: mpsc::Receiver<TcpIn>,
    ) {
        let mut buf = vec![0u8; RECV_BUF];
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            self.flush(Instant::now());
            let next = self.timers.peek().map(|Reverse((at, _))| *at);
            if next != armed {
                armed = next;
                timer
                    .as_mut()
                    .reset(next.map_or_else(far, tokio::time::Instant::from_std));
            }
            let accept = async {
                match &tcp {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            };
            // Unbiased: under a steady stream of datagrams the other arms still get their
            // turn.
            tokio::select! {
                ready = self.net.udp.readable() => {
                    if ready.is_ok() {
                        self.read_udp(&mut buf);
                    }
                }
                () = &mut timer => {
                    armed = None;
                    self.timeouts(Instant::now());
                }
                command = commands.recv() => match command {
                    Some(c) => self.command(c, Instant::now()),
                    // The engine is gone: close everything and stop.
                    None => break,
                },
                Some(frame) = tcp_rx.recv() => match frame {
                    TcpIn::Frame { peer, data } => {
                        self.datagram(TransportProtocol::TCP, peer, data, Instant::now());
                    }
                    TcpIn::Closed { peer } => {
                        let key = (TransportProtocol::TCP, peer);
                        self.net.tcp_out.remove(&peer);
                        if let Some(id) = self.by_addr.remove(&key) {
                            if let Some(c) = self.conns.get_mut(&id) {
                                c.addrs.retain(|a| *a != key);
                            }
                        }
                    }
                },
                accepted = accept => {
                    if let Ok((stream, peer)) = accepted {
                        if self.net.tcp_out.len() < MAX_TCP_STREAMS {
                            let (out_tx, out_rx) = mpsc::channel(tcp::STREAM_QUEUE);
                            self.net.tcp_out.insert(peer, out_tx);
                            tokio::spawn(tcp::serve_stream(stream, peer, tcp_tx.clone(), out_rx));
                        }
                    }
                }
                _ = tick.tick() => self.tick(Instant::now()),
            }
        }
        let everyone: Vec<u128> = self.members.keys().copied().collect();
        for key in everyone {
            let _ = self.leave(key);
        }
    }

    /// Services every touched connection, and reconciles the subscriber connections
    /// whose room changed, until nothing is left to do this turn.
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
    /// gone silent, and datagrams dropped since the last tick.
    fn tick(&mut self, now: Instant) {
        let mut failed = Vec::new();
        for c in self.conns.values_mut() {
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
            if let Some(m) = self.members.get(&key) {
                let _ = m.events.send(EngineEvent::Connection {
                    participant: key,
                    connected: false,
                });
            }
        }
        if self.net.send_errors != self.net.reported_errors {
            tracing::warn!(
                dropped = self.net.send_errors - self.net.reported_errors,
                "media datagrams dropped: the socket's send buffer was full"
            );
            self.net.reported_errors = self.net.send_errors;
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
    }

    fn command(&mut self, command: Command, now: Instant) {
        match command {
            Command::Join {
                room,
                participant,
                events,
                reply,
            } => {
                let _ = reply.send(self.join(room, participant, events, now));
            }
            Command::Publish {
                participant,
                offer,
                reply,
            } => {
                let _ = reply.send(self.publish(participant, offer, now));
            }
            Command::Candidate {
                participant,
                leg,
                candidate,
                reply,
            } => {
                let _ = reply.send(self.candidate(participant, leg, candidate));
            }
            Command::SubscriberAnswer {
                participant,
                answer,
                reply,
            } => {
                let _ = reply.send(self.subscriber_answer(participant, answer, now));
            }
            Command::MediaState {
                participant,
                state,
                reply,
            } => {
                let _ = reply.send(self.media_state(participant, state));
            }
            Command::RestartIce { participant, reply } => {
                let _ = reply.send(self.restart_ice(participant));
            }
            Command::Leave { participant, reply } => {
                let _ = reply.send(self.leave(participant));
            }
        }
    }
}
