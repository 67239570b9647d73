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

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::{MediaLeg, MediaState};
use rand::Rng;
use rand::distr::Alphanumeric;
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

/// Binds up to `wanted` loops' sockets as configured: ports of the range in turn (UDP,
/// and TCP on the same port number with ICE-TCP), or any free port. At least one.
pub(super) fn bind(config: &EngineConfig, wanted: usize) -> Result<Vec<Sockets>, EngineError> {
    let ip = config.bind_ip;
    let mut out = Vec::with_capacity(wanted);
    let one = |port: u16| -> Option<Sockets> {
        let udp = std::net::UdpSocket::bind((ip, port)).ok()?;
        let port = udp.local_addr().ok()?.port();
        let tcp = if config.ice_tcp {
            Some(std::net::TcpListener::bind((ip, port)).ok()?)
        } else {
            None
        };
        udp.set_nonblocking(true).ok()?;
        let sock = socket2::SockRef::from(&udp);
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        if let Some(t) = &tcp {
            t.set_nonblocking(true).ok()?;
        }
        Some(Sockets { udp, tcp })
    };
    match config.ports {
        Some((first, last)) => {
            for port in first..=last {
                if out.len() == wanted {
                    break;
                }
                if let Some(s) = one(port) {
                    out.push(s);
                }
            }
        }
        None => {
            // Port 0 for UDP; TCP then wants the same number, which may be taken.
            for _ in 0..wanted * 4 {
                if out.len() == wanted {
                    break;
                }
                if let Some(s) = one(0) {
                    out.push(s);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(EngineError::NoFreePort);
    }
    Ok(out)
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

impl CachedPacket for Cached {
    fn rtp_timestamp(&self) -> u32 {
        self.0.header.timestamp
    }
}

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
}

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

impl Net {
    fn send(&mut self, msg: TaggedBytesMut) {
        let peer = msg.transport.peer_addr;
        match msg.transport.transport_protocol {
            // A full socket buffer drops the datagram, as a full link would; the receiver's
            // NACK or keyframe request recovers.
            TransportProtocol::UDP if self.udp.try_send_to(&msg.message, peer).is_err() => {
                self.send_errors += 1;
            }
            TransportProtocol::TCP => {
                if let Some(out) = self.tcp_out.get(&peer) {
                    let _ = out.try_send(msg.message.freeze());
                }
            }
            _ => {}
        }
    }

    fn local(&self, proto: TransportProtocol) -> SocketAddr {
        match proto {
            TransportProtocol::TCP => self.tcp_addr.unwrap_or(self.udp_addr),
            _ => self.udp_addr,
        }
    }
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

fn random_token(len: usize) -> String {
    rand::rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Marks a connection for servicing this turn.
fn touch(conns: &mut HashMap<ConnId, Conn>, touched: &mut Vec<ConnId>, id: ConnId) {
    if let Some(c) = conns.get_mut(&id) {
        if !c.queued {
            c.queued = true;
            touched.push(id);
        }
    }
}

/// Writes one forwarded packet, with that subscriber's header, into its connection. The
/// payload is shared with the cache; nothing waits.
fn send_forward(
    conns: &mut HashMap<ConnId, Conn>,
    touched: &mut Vec<ConnId>,
    fw: Forward<'_, Cached, Route>,
    now: Instant,
) {
    let Some(c) = conns.get_mut(&fw.route.conn) else {
        return;
    };
    // The core forwards only codecs the subscriber accepted, whose payload types it has.
    let Some(payload_type) = fw
        .route
        .payload_types
        .iter()
        .find(|(codec, _)| *codec == fw.codec)
        .map(|(_, pt)| *pt)
    else {
        return;
    };
    let out = rtp::Packet {
        header: rtp::Header {
            version: 2,
            marker: fw.packet.0.header.marker,
            payload_type,
            sequence_number: fw.seq,
            timestamp: fw.timestamp,
            ssrc: fw.route.ssrc,
            ..Default::default()
        },
        payload: fw.packet.0.payload.clone(),
    };
    let Some(mut sender) = c.pc.rtp_sender(fw.route.sender) else {
        return;
    };
    if sender.write_rtp(now, out).is_ok() && !c.queued {
        c.queued = true;
        touched.push(fw.route.conn);
    }
}

/// Sends a PLI to the publisher of the requested track.
fn request_keyframe(
    conns: &mut HashMap<ConnId, Conn>,
    touched: &mut Vec<ConnId>,
    room: &Room,
    req: KeyframeRequest,
    now: Instant,
) {
    let Some(t) = room.tracks.get(&req.track) else {
        return;
    };
    let Some(c) = conns.get_mut(&t.conn) else {
        return;
    };
    if let Some(mut receiver) = c.pc.rtp_receiver(t.receiver) {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: t.media_ssrc,
        };
        let _ = receiver.write_rtcp(now, vec![Box::new(pli)]);
    }
    touch(conns, touched, t.conn);
}

/// The ICE username fragment a STUN request names as the receiver's (`ours:theirs`).
fn stun_local_ufrag(data: &[u8]) -> Option<String> {
    let mut m = rtc::stun::message::Message::new();
    m.unmarshal_binary(data).ok()?;
    let username = m.get(rtc::stun::attributes::ATTR_USERNAME).ok()?;
    let username = std::str::from_utf8(&username).ok()?;
    Some(username.split(':').next()?.to_owned())
}

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

    /// Reads what the UDP socket holds, up to one batch.
    fn read_udp(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..RECV_BATCH {
            match self.net.udp.try_recv_from(buf) {
                Ok((n, peer)) => {
                    self.datagram(TransportProtocol::UDP, peer, BytesMut::from(&buf[..n]), now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier send: nothing to read this time.
                Err(_) => {}
            }
        }
    }

    /// Hands one datagram (or ICE-TCP frame) to its connection.
    fn datagram(
        &mut self,
        proto: TransportProtocol,
        peer: SocketAddr,
        data: BytesMut,
        now: Instant,
    ) {
        let id = if rtc::stun::message::is_stun_message(&data) {
            match self.stun_route(proto, peer, &data) {
                Some(id) => id,
                None => return,
            }
        } else {
            match self.by_addr.get(&(proto, peer)) {
                Some(id) => *id,
                None => return,
            }
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.net.local(proto),
                peer_addr: peer,
                ecn: None,
                transport_protocol: proto,
            },
            message: data,
        };
        match c.pc.handle_read(msg) {
            // Accepted, so authenticated (a STUN check with its credentials, DTLS, SRTP).
            Ok(()) => {
                if c.liveness.heard(now) == Some(liveness::Change::Heard) {
                    tracing::debug!(participant = c.participant, leg = ?c.leg, "heard again");
                }
            }
            Err(e) => tracing::trace!(error = %e, "datagram refused"),
        }
        touch(&mut self.conns, &mut self.touched, id);
    }

    /// The connection a STUN message is for: the one its username names (which then
    /// owns the source address), else the one the address already belongs to.
    fn stun_route(
        &mut self,
        proto: TransportProtocol,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<ConnId> {
        let key = (proto, peer);
        let named = stun_local_ufrag(data).and_then(|u| self.by_ufrag.get(&u).copied());
        let Some(id) = named else {
            return self.by_addr.get(&key).copied();
        };
        if self.by_addr.get(&key) != Some(&id) {
            let c = self.conns.get_mut(&id)?;
            // The oldest route gives way (a browser that moved networks, a closed stream).
            if c.addrs.len() >= MAX_ADDRS_PER_CONN {
                let oldest = c.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&id) {
                    self.by_addr.remove(&oldest);
                }
            }
            c.addrs.push(key);
            if let Some(old) = self.by_addr.insert(key, id) {
                if let Some(o) = self.conns.get_mut(&old) {
                    o.addrs.retain(|a| *a != key);
                }
            }
        }
        Some(id)
    }

    /// Handles the timers that are due.
    fn timeouts(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.deadline != Some(at) {
                continue;
            }
            c.deadline = None;
            if let Err(e) = c.pc.handle_timeout(now) {
                tracing::debug!(error = %e, "connection timer");
            }
            touch(&mut self.conns, &mut self.touched, id);
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

    /// Sends a connection's datagrams, handles its events and what it read, and keeps
    /// its timer.
    fn service(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        let mut reads = std::mem::take(&mut self.reads);
        c.queued = false;
        while let Some(msg) = c.pc.poll_write() {
            self.net.send(msg);
        }
        while let Some(e) = c.pc.poll_event() {
            events.push(e);
        }
        while let Some(m) = c.pc.poll_read() {
            reads.push(m.message);
        }
        // A deadline already past that handling did not move would spin the loop: the
        // core is asked again a millisecond later at the earliest (as the `webrtc`
        // crate's driver does).
        let deadline = c.pc.poll_timeout().map(|at| at.max(now + MIN_TIMER_STEP));
        if deadline != c.deadline {
            c.deadline = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, id)));
            }
        }
        let (key, leg) = (c.participant, c.leg);
        for e in events.drain(..) {
            self.on_event(id, key, leg, e, now);
        }
        for m in reads.drain(..) {
            self.on_read(id, key, leg, m, now);
        }
        self.events = events;
        self.reads = reads;
    }

    fn on_event(
        &mut self,
        id: ConnId,
        key: u128,
        leg: MediaLeg,
        event: RTCPeerConnectionEvent,
        now: Instant,
    ) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(participant = key, ?leg, %state, "connection state");
                if state == RTCPeerConnectionState::Connected {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.liveness.connected(now);
                    }
                }
                self.connection_state(key, leg, state, now);
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if leg == MediaLeg::Publisher =>
            {
                self.publish_track(id, key, init);
            }
            RTCPeerConnectionEvent::OnTrack(
                RTCTrackEvent::OnClose(track) | RTCTrackEvent::OnClosing(track),
            ) if leg == MediaLeg::Publisher => self.unpublish_track(id, key, &track),
            _ => {}
        }
    }

    fn connection_state(
        &mut self,
        key: u128,
        leg: MediaLeg,
        state: RTCPeerConnectionState,
        now: Instant,
    ) {
        match leg {
            MediaLeg::Publisher => {
                let connected = match state {
                    RTCPeerConnectionState::Connected => true,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => false,
                    _ => return,
                };
                if let Some(m) = self.members.get(&key) {
                    let _ = m.events.send(EngineEvent::Connection {
                        participant: key,
                        connected,
                    });
                }
            }
            MediaLeg::Subscriber => {
                let Some(m) = self.members.get_mut(&key) else {
                    return;
                };
                m.subscriber_state = state;
                if state == RTCPeerConnectionState::Connected {
                    self.route_new_tracks(key, now);
                }
            }
        }
    }

    fn on_read(&mut self, id: ConnId, key: u128, leg: MediaLeg, message: RTCMessage, now: Instant) {
        match (leg, message) {
            (MediaLeg::Publisher, RTCMessage::RtpPacket(track, packet)) => {
                let Some(track) = self.conns.get(&id).and_then(|c| c.tracks.get(&track)) else {
                    return;
                };
                let track = *track;
                let Some(room) = self.members.get(&key).map(|m| m.room) else {
                    return;
                };
                self.forward(room, track, packet, now);
            }
            (MediaLeg::Subscriber, RTCMessage::RtcpPacket(track, packets)) => {
                // The subscriber's local tracks are named `t<TrackId>`.
                let Some(track) = track
                    .strip_prefix('t')
                    .and_then(|n| n.parse().ok())
                    .map(TrackId)
                else {
                    return;
                };
                self.subscriber_rtcp(key, track, &packets, now);
            }
            _ => {}
        }
    }

    /// One packet of a published track, to every subscriber the core routes it to.
    fn forward(&mut self, room: u128, track: TrackId, packet: rtp::Packet, now: Instant) {
        let Self {
            rooms,
            conns,
            touched,
            ..
        } = self;
        let Some(r) = rooms.get_mut(&room) else {
            return;
        };
        let Some(t) = r.tracks.get(&track) else {
            return;
        };
        // A payload type its offer did not give (the core lets none through): nothing to
        // forward it as.
        let Some(codec) = t.codec_of(packet.header.payload_type) else {
            return;
        };
        let meta = RtpMeta {
            seq: packet.header.sequence_number,
            timestamp: packet.header.timestamp,
            keyframe: codec.is_keyframe(&packet.payload),
            codec,
        };
        let request = r
            .forwarder
            .on_rtp(track, meta, Cached(Arc::new(packet)), now, |fw| {
                send_forward(conns, touched, fw, now);
            });
        if let Some(req) = request {
            request_keyframe(conns, touched, r, req, now);
        }
    }

    /// A subscriber's NACKs (resent from the cache, or passed upstream for what the SFU
    /// never got) and keyframe requests for one track.
    fn subscriber_rtcp(
        &mut self,
        key: u128,
        track: TrackId,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let Self {
            rooms,
            conns,
            touched,
            members,
            nacks,
            ..
        } = self;
        let Some(m) = members.get(&key) else {
            return;
        };
        let Some(r) = rooms.get_mut(&m.room) else {
            return;
        };
        let lost: Vec<u16> = packets
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            .flat_map(|n| n.nacks.iter().flat_map(|pair| pair.packet_list()))
            .collect();
        if !lost.is_empty() {
            let outcome = r.forwarder.on_nack(track, m.id, &lost, |fw| {
                send_forward(conns, touched, fw, now);
            });
            nacks
                .resent
                .fetch_add(outcome.resent as u64, Ordering::Relaxed);
            if !outcome.upstream.is_empty() {
                nacks
                    .upstream
                    .fetch_add(outcome.upstream.len() as u64, Ordering::Relaxed);
                if let Some(t) = r.tracks.get(&track) {
                    if let Some(mut receiver) = conns
                        .get_mut(&t.conn)
                        .and_then(|c| c.pc.rtp_receiver(t.receiver))
                    {
                        let nack = TransportLayerNack {
                            sender_ssrc: 0,
                            media_ssrc: t.media_ssrc,
                            nacks: nack_pairs_from_sequence_numbers(&outcome.upstream),
                        };
                        let _ = receiver.write_rtcp(now, vec![Box::new(nack)]);
                    }
                    touch(conns, touched, t.conn);
                }
            }
        }
        let wants_keyframe = packets.iter().any(|p| {
            p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
        });
        if wants_keyframe {
            if let Some(req) = r.forwarder.on_keyframe_request(track, now) {
                request_keyframe(conns, touched, r, req, now);
            }
        }
    }

    /// A track the publisher connection started receiving: the room's other participants
    /// subscribe to it.
    fn publish_track(&mut self, id: ConnId, key: u128, init: RTCTrackEventInit) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let (publisher, room) = (m.id, m.room);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let Some(mut receiver) = c.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let media_ssrc = match init.ssrc {
            0 => receiver.track().ssrcs().next().unwrap_or(0),
            s => s,
        };
        let rtp_kind = receiver.track().kind();
        let mime = match receiver.track().codec(media_ssrc) {
            Some(codec) => codec.mime_type.clone(),
            None => match receiver.get_parameters().rtp_parameters.codecs.first() {
                Some(c) => c.rtp_codec.mime_type.clone(),
                None => return,
            },
        };
        // The core only negotiates the policy's codecs.
        let Some(codec) = Codec::from_mime(&mime) else {
            return;
        };
        let kind = match rtp_kind {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let payload_types = m.codecs.payload_types.clone();
        let track = TrackId(NEXT_TRACK.fetch_add(1, Ordering::Relaxed));
        c.tracks.insert(init.track_id, track);
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.forwarder.add_track(track, publisher, kind);
        r.tracks.insert(
            track,
            Published {
                publisher,
                kind,
                codec,
                payload_types,
                conn: id,
                receiver: init.receiver_id,
                media_ssrc,
            },
        );
        tracing::debug!(track = track.0, ?kind, "publishing");
        let others: Vec<u128> = r.members.iter().copied().filter(|k| *k != key).collect();
        for o in others {
            self.mark_dirty(o);
        }
    }

    /// A track the publisher stopped sending (renegotiated away).
    fn unpublish_track(&mut self, id: ConnId, key: u128, core_track: &str) {
        let Some(track) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.tracks.remove(core_track))
        else {
            return;
        };
        let Some(room) = self.members.get(&key).map(|m| m.room) else {
            return;
        };
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.forwarder.remove_track(track);
        r.tracks.remove(&track);
        let others: Vec<u128> = r.members.iter().copied().filter(|k| *k != key).collect();
        for o in others {
            self.mark_dirty(o);
        }
    }

    fn mark_dirty(&mut self, key: u128) {
        if let Some(m) = self.members.get_mut(&key) {
            m.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Reconciles a participant's subscriber connection with the room's tracks and
    /// offers, unless an offer is already out (its answer brings the next round).
    fn negotiate(&mut self, key: u128, now: Instant) {
        let Self {
            members,
            conns,
            rooms,
            touched,
            announced,
            ..
        } = self;
        let Some(m) = members.get_mut(&key) else {
            return;
        };
        // An offer is out: its answer brings the next round.
        if m.negotiation != Negotiation::Idle {
            return;
        }
        m.dirty = false;
        let (Some(r), Some(c)) = (rooms.get_mut(&m.room), conns.get_mut(&m.subscriber)) else {
            return;
        };
        let mut changed = false;
        let gone: Vec<TrackId> = m
            .subscribed
            .keys()
            .filter(|t| !r.tracks.contains_key(t))
            .copied()
            .collect();
        for t in gone {
            if let Some(s) = m.subscribed.remove(&t) {
                r.forwarder.unsubscribe(t, m.id);
                let _ = c.pc.remove_track(s.sender);
                changed = true;
            }
        }
        for (t, p) in &r.tracks {
            if p.publisher == m.id || m.subscribed.contains_key(t) {
                continue;
            }
            let ssrc = NEXT_SSRC.fetch_add(1, Ordering::Relaxed);
            let rtp_kind = match p.kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            let (payload_type, _) = p.codec.payload_types();
            let codec = RTCRtpCodec {
                rtcp_feedback: vec![],
                ..codec_parameters(p.codec, payload_type, p.codec.fmtp()).rtp_codec
            };
            let local = media_track(
                stream_id(p.publisher),
                format!("t{}", t.0),
                rtp_kind,
                ssrc,
                codec,
            );
            // The core reuses the transceiver (m-line) of a track removed earlier, so a
            // long consultation with many joins and leaves does not grow its SDP forever.
            match c.pc.add_track(local).and_then(|sender| {
                if p.kind == MediaKind::Video {
                    offer_every_video_codec(&mut c.pc, sender, p.codec)?;
                }
                Ok(sender)
            }) {
                Ok(sender) => {
                    m.subscribed.insert(
                        *t,
                        Subscribed {
                            sender,
                            ssrc,
                            kind: p.kind,
                            payload_types: Vec::new(),
                            routed: false,
                        },
                    );
                    changed = true;
                }
                Err(e) => tracing::warn!(error = %e, "could not add a track for a subscriber"),
            }
        }
        // Tracks added by a negotiation that failed are still unrouted: offer them again.
        if !changed && m.subscribed.values().all(|s| s.routed) {
            return;
        }
        let offered =
            c.pc.create_offer(None)
                .and_then(|offer| c.pc.set_local_description(now, offer))
                .map_err(webrtc_err)
                .and_then(|()| {
                    c.pc.local_description()
                        .map(|d| d.sdp)
                        .ok_or_else(|| EngineError::WebRtc("no local description".into()))
                });
        match offered {
            Ok(sdp) => {
                let sdp = match announced {
                    Some((private, public)) => crate::sdp::announce(&sdp, *private, *public),
                    None => sdp,
                };
                tracing::debug!(
                    participant = key,
                    tracks = m.subscribed.len(),
                    "subscriber offer"
                );
                let _ = m.events.send(EngineEvent::SubscriberOffer {
                    participant: key,
                    sdp,
                });
                m.negotiation = Negotiation::Offered(now);
            }
            Err(e) => {
                tracing::info!(participant = key, error = %e, "subscriber offer failed; retrying");
                m.negotiation = Negotiation::Retry(now + RETRY_AFTER);
            }
        }
        touch(conns, touched, m.subscriber);
    }

    /// Routes a participant's newly negotiated tracks once its subscriber connection is
    /// up and no offer is out, asking their publishers for a keyframe.
    fn route_new_tracks(&mut self, key: u128, now: Instant) {
        let Self {
            members,
            conns,
            rooms,
            touched,
            ..
        } = self;
        let Some(m) = members.get_mut(&key) else {
            return;
        };
        if m.subscriber_state != RTCPeerConnectionState::Connected
            || m.negotiation != Negotiation::Idle
        {
            return;
        }
        let (Some(r), Some(c)) = (rooms.get_mut(&m.room), conns.get_mut(&m.subscriber)) else {
            return;
        };
        let _ = c;
        let mut requests = Vec::new();
        for (t, s) in m.subscribed.iter_mut().filter(|(_, s)| !s.routed) {
            // The answer refused every codec of it (a browser that cannot decode any):
            // nothing can be sent, so it stays unrouted.
            if s.payload_types.is_empty() {
                continue;
            }
            let route = Route {
                conn: m.subscriber,
                sender: s.sender,
                ssrc: s.ssrc,
                payload_types: s.payload_types.clone(),
            };
            s.routed = true;
            tracing::debug!(participant = key, track = t.0, "routed");
            let accepts: CodecSet = s.payload_types.iter().map(|(c, _)| *c).collect();
            let subscribed = r.forwarder.subscribe(*t, m.id, route, now);
            let accepted = match s.kind {
                MediaKind::Video => r.forwarder.accept_codecs(*t, m.id, accepts, now),
                MediaKind::Audio => None,
            };
            requests.extend(subscribed.or(accepted));
        }
        for req in requests {
            request_keyframe(conns, touched, r, req, now);
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
            Command::Leave { participant, reply } => {
                let _ = reply.send(self.leave(participant));
            }
        }
    }

    /// A new connection with its host candidates (UDP, and passive TCP with ICE-TCP).
    fn open_conn(
        &mut self,
        role: Role,
        participant: u128,
        leg: MediaLeg,
        now: Instant,
    ) -> Result<ConnId, EngineError> {
        let ufrag = random_token(16);
        let settings =
            SettingEngineBuilder::new().with_ice_credentials(ufrag.clone(), random_token(32));
        let (media, registry, settings) = connection_recipe(role, settings)?;
        let mut pc = RTCPeerConnectionBuilder::new()
            .with_configuration(RTCConfigurationBuilder::new().build())
            .with_media_engine(media)
            .with_setting_engine(settings)
            .with_interceptor_registry(registry)
            .build(now)
            .map_err(webrtc_err)?;
        let mut hosts = vec![("udp", self.net.udp_addr, Default::default())];
        if let Some(tcp) = self.net.tcp_addr {
            hosts.push(("tcp", tcp, rtc::ice::tcp_type::TcpType::Passive));
        }
        for (network, addr, tcp_type) in hosts {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: network.to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type,
            }
            .new_candidate_host()
            .map_err(webrtc_err)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(webrtc_err)?;
            pc.add_local_candidate(init).map_err(webrtc_err)?;
        }
        // End of candidates: the SFU has no others.
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(webrtc_err)?;
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.by_ufrag.insert(ufrag.clone(), id);
        self.conns.insert(
            id,
            Conn {
                pc,
                participant,
                leg,
                ufrag,
                addrs: Vec::new(),
                deadline: None,
                queued: false,
                described: false,
                early: Vec::new(),
                tracks: HashMap::new(),
                liveness: Liveness::default(),
                _live: connection_guard(),
            },
        );
        touch(&mut self.conns, &mut self.touched, id);
        Ok(id)
    }

    /// Closes a connection (its last datagrams go out) and forgets its routes.
    fn close_conn(&mut self, id: ConnId) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        let _ = c.pc.close();
        while let Some(msg) = c.pc.poll_write() {
            self.net.send(msg);
        }
        self.by_ufrag.remove(&c.ufrag);
        for a in c.addrs {
            if self.by_addr.get(&a) == Some(&id) {
                self.by_addr.remove(&a);
                if a.0 == TransportProtocol::TCP {
                    self.net.tcp_out.remove(&a.1);
                }
            }
        }
    }

    fn join(
        &mut self,
        room: u128,
        key: u128,
        events: mpsc::UnboundedSender<EngineEvent>,
        now: Instant,
    ) -> Result<(), EngineError> {
        if self.members.contains_key(&key) {
            return Err(EngineError::AlreadyJoined);
        }
        let publisher = self.open_conn(Role::ServerReceiving, key, MediaLeg::Publisher, now)?;
        let subscriber = match self.open_conn(Role::ServerSending, key, MediaLeg::Subscriber, now) {
            Ok(c) => c,
            Err(e) => {
                self.close_conn(publisher);
                return Err(e);
            }
        };
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        self.rooms.entry(room).or_default().members.push(key);
        self.members.insert(
            key,
            Member {
                id,
                room,
                publisher,
                subscriber,
                events,
                subscribed: HashMap::new(),
                negotiation: Negotiation::Idle,
                dirty: false,
                subscriber_state: RTCPeerConnectionState::New,
                state: MediaState::default(),
                codecs: Codecs::new(),
                _live: LiveGuard::new(&LIVE_PARTICIPANTS),
            },
        );
        // What everyone already here sends, for the newcomer's tiles.
        if let (Some(r), Some(m)) = (self.rooms.get(&room), self.members.get(&key)) {
            for other in r.members.iter().filter(|k| **k != key) {
                if let Some(o) = self.members.get(other) {
                    let _ = m.events.send(EngineEvent::PeerState {
                        participant: key,
                        stream: stream_id(o.id),
                        state: o.state,
                    });
                }
            }
        }
        self.mark_dirty(key);
        Ok(())
    }

    fn leg(&mut self, key: u128, leg: MediaLeg) -> Result<(ConnId, &mut Conn), EngineError> {
        let m = self
            .members
            .get(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        let id = match leg {
            MediaLeg::Publisher => m.publisher,
            MediaLeg::Subscriber => m.subscriber,
        };
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(EngineError::UnknownParticipant)?;
        Ok((id, c))
    }

    /// The browser's (first or renewed) offer for its publisher connection. Its video is
    /// answered with the codecs everyone else in the room can receive, in the browser's
    /// order ([`publish_codecs`]); what it offered is what it can receive, which may make
    /// other publishers switch ([`Self::reconcile_codecs`]).
    fn publish(&mut self, key: u128, offer: String, now: Instant) -> Result<String, EngineError> {
        let sections = crate::sdp::media_codecs(&offer).map_err(EngineError::BadSdp)?;
        let room = self
            .members
            .get(&key)
            .ok_or(EngineError::UnknownParticipant)?
            .room;
        let receivable = self.receivable_by_others(room, key);
        let (id, c) = self.leg(key, MediaLeg::Publisher)?;
        let desc =
            RTCSessionDescription::offer(offer).map_err(|e| EngineError::BadSdp(e.to_string()))?;
        c.pc.set_remote_description(now, desc)
            .map_err(|e| EngineError::BadSdp(e.to_string()))?;
        add_early_candidates(key, c);
        c.liveness.expect(now);
        let mut offered: Option<Vec<Codec>> = None;
        let mut receives = CodecSet::EMPTY;
        let mut sends = None;
        for section in sections.iter().filter(|s| s.video) {
            let mut order = Vec::new();
            for (_, codec) in &section.codecs {
                receives.insert(*codec);
                if !order.contains(codec) {
                    order.push(*codec);
                }
            }
            let chosen = publish_codecs(&order, receivable);
            sends = sends.or(chosen.first().copied());
            let params = chosen
                .iter()
                .filter_map(|codec| {
                    let (pt, _) = section.codecs.iter().find(|(_, c)| c == codec)?;
                    Some(codec_parameters(*codec, *pt, codec.fmtp()))
                })
                .collect();
            if !order.is_empty() {
                prefer_codecs(&mut c.pc, &section.mid, params).map_err(webrtc_err)?;
            }
            offered.get_or_insert(order);
        }
        let answer = c.pc.create_answer(None).map_err(webrtc_err)?;
        c.pc.set_local_description(now, answer)
            .map_err(webrtc_err)?;
        let sdp =
            c.pc.local_description()
                .map(|d| d.sdp)
                .ok_or_else(|| EngineError::WebRtc("no local description".into()))?;
        touch(&mut self.conns, &mut self.touched, id);
        let payload_types: Vec<(u8, Codec)> = sections
            .iter()
            .flat_map(|s| s.codecs.iter().copied())
            .collect();
        if let Some(m) = self.members.get_mut(&key) {
            let codecs = &mut m.codecs;
            if let Some(offered) = offered {
                codecs.offered = offered;
                codecs.receives = receives;
            }
            codecs.sends = sends;
            codecs.asked = None;
            codecs.payload_types = payload_types.clone();
            if let Some(r) = self.rooms.get_mut(&room) {
                for t in r.tracks.values_mut().filter(|t| t.publisher == m.id) {
                    t.payload_types = payload_types.clone();
                }
            }
        }
        self.reconcile_codecs(room);
        Ok(match self.announced {
            Some((private, public)) => crate::sdp::announce(&sdp, private, public),
            None => sdp,
        })
    }

    /// The video codecs every participant of `room` but `key` can receive.
    fn receivable_by_others(&self, room: u128, key: u128) -> CodecSet {
        let Some(r) = self.rooms.get(&room) else {
            return CodecSet::all_video();
        };
        r.members
            .iter()
            .filter(|k| **k != key)
            .filter_map(|k| self.members.get(k))
            .fold(CodecSet::all_video(), |set, m| {
                set.intersect(m.codecs.receives)
            })
    }

    /// Asks each publisher of `room` whose video codec is no longer the one it should send
    /// (someone joined who cannot decode it, or left and it can have its own choice back)
    /// for a new offer; its answer then names the right one.
    fn reconcile_codecs(&mut self, room: u128) {
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        let mut ask = Vec::new();
        for key in &r.members {
            let Some(m) = self.members.get(key) else {
                continue;
            };
            if m.codecs.offered.is_empty() {
                continue;
            }
            let receivable = self.receivable_by_others(room, *key);
            let want = publish_codecs(&m.codecs.offered, receivable)
                .first()
                .copied();
            if want != m.codecs.sends && want != m.codecs.asked {
                ask.push((*key, want));
            }
        }
        for (key, want) in ask {
            if let Some(m) = self.members.get_mut(&key) {
                tracing::debug!(participant = key, ?want, sends = ?m.codecs.sends, "publisher codec to change");
                m.codecs.asked = want;
                let _ = m
                    .events
                    .send(EngineEvent::PublishRenegotiate { participant: key });
            }
        }
    }

    /// A participant's browser says what it sends: everyone else in its room is told.
    fn media_state(&mut self, key: u128, state: MediaState) -> Result<(), EngineError> {
        let m = self
            .members
            .get_mut(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        m.state = state;
        let (room, stream) = (m.room, stream_id(m.id));
        let Some(r) = self.rooms.get(&room) else {
            return Ok(());
        };
        for o in r.members.iter().filter(|k| **k != key) {
            if let Some(other) = self.members.get(o) {
                let _ = other.events.send(EngineEvent::PeerState {
                    participant: *o,
                    stream: stream.clone(),
                    state,
                });
            }
        }
        Ok(())
    }

    fn candidate(
        &mut self,
        key: u128,
        leg: MediaLeg,
        candidate: RTCIceCandidateInit,
    ) -> Result<(), EngineError> {
        let (id, c) = self.leg(key, leg)?;
        if candidate.candidate.is_empty() {
            return Ok(());
        }
        if !c.described {
            if c.early.len() >= MAX_EARLY_CANDIDATES {
                return Err(EngineError::BadCandidate("too many candidates".into()));
            }
            c.early.push(candidate);
            return Ok(());
        }
        c.pc.add_remote_candidate(candidate)
            .map_err(|e| EngineError::BadCandidate(e.to_string()))?;
        touch(&mut self.conns, &mut self.touched, id);
        Ok(())
    }

    fn subscriber_answer(
        &mut self,
        key: u128,
        answer: String,
        now: Instant,
    ) -> Result<(), EngineError> {
        let m = self
            .members
            .get_mut(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        if !matches!(m.negotiation, Negotiation::Offered(_)) {
            return Err(EngineError::NoOfferPending);
        }
        let id = m.subscriber;
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(EngineError::UnknownParticipant)?;
        let sections = crate::sdp::media_codecs(&answer);
        let applied = RTCSessionDescription::answer(answer)
            .and_then(|desc| c.pc.set_remote_description(now, desc))
            .map_err(|e| EngineError::BadSdp(e.to_string()))
            .and_then(|()| sections.map_err(EngineError::BadSdp));
        let sections = match applied {
            Ok(sections) => sections,
            Err(e) => {
                m.negotiation = Negotiation::Retry(now + RETRY_AFTER);
                return Err(e);
            }
        };
        if !sections.is_empty() {
            c.liveness.expect(now);
        }
        // What the browser accepted of each track: the codecs (and payload types) of its
        // media section.
        for s in m.subscribed.values_mut() {
            let Some(mid) = sender_mid(&mut c.pc, s.sender) else {
                continue;
            };
            if let Some(section) = sections.iter().find(|x| x.mid == mid) {
                s.payload_types = section.codecs.iter().map(|(pt, c)| (*c, *pt)).collect();
            }
        }
        add_early_candidates(key, c);
        tracing::debug!(participant = key, "subscriber answer applied");
        m.negotiation = Negotiation::Idle;
        let again = m.dirty;
        touch(&mut self.conns, &mut self.touched, id);
        self.route_new_tracks(key, now);
        if again {
            self.mark_dirty(key);
        }
        Ok(())
    }

    fn leave(&mut self, key: u128) -> Result<(), EngineError> {
        let m = self
            .members
            .remove(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        if let Some(r) = self.rooms.get_mut(&m.room) {
            r.members.retain(|k| *k != key);
            for t in r.forwarder.remove_peer(m.id) {
                r.tracks.remove(&t);
            }
            r.tracks.retain(|_, t| t.publisher != m.id);
            let others = r.members.clone();
            if others.is_empty() {
                self.rooms.remove(&m.room);
            }
            for o in others {
                self.mark_dirty(o);
            }
            // Someone who could not decode a codec may have left.
            self.reconcile_codecs(m.room);
        }
        self.close_conn(m.publisher);
        self.close_conn(m.subscriber);
        Ok(())
    }
}

/// Adds the candidates that arrived before the connection's remote description; later
/// ones are added as they come.
fn add_early_candidates(key: u128, c: &mut Conn) {
    c.described = true;
    for candidate in std::mem::take(&mut c.early) {
        if let Err(e) = c.pc.add_remote_candidate(candidate) {
            tracing::debug!(participant = key, error = %e, "early candidate refused");
        }
    }
}

/// Lets the video track of `sender` be sent in every video codec of the policy, `first`
/// first: the browser's answer keeps those it can decode, and a publisher that switches
/// codec (see [`crate::codec`]) reaches this subscriber without a new negotiation.
fn offer_every_video_codec(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    first: Codec,
) -> Result<(), rtc::shared::error::Error> {
    let mut order = vec![first];
    order.extend(Codec::VIDEO.into_iter().filter(|c| *c != first));
    let codecs = order
        .into_iter()
        .map(|c| codec_parameters(c, c.payload_types().0, c.fmtp()))
        .collect();
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    for id in transceivers {
        if let Some(mut t) = pc.rtp_transceiver(id) {
            if t.sender() == Some(sender) {
                return t.set_codec_preferences(codecs);
            }
        }
    }
    Ok(())
}

/// The media id (`mid`) of the transceiver that holds `sender`, once negotiated.
fn sender_mid(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> Option<String> {
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    transceivers.into_iter().find_map(|id| {
        let t = pc.rtp_transceiver(id)?;
        if t.sender() == Some(sender) {
            t.mid().clone()
        } else {
            None
        }
    })
}

/// Sets the codecs (in order) the transceiver of media section `mid` answers with.
fn prefer_codecs(
    pc: &mut RTCPeerConnection,
    mid: &str,
    codecs: Vec<RTCRtpCodecParameters>,
) -> Result<(), rtc::shared::error::Error> {
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    for id in transceivers {
        if let Some(mut t) = pc.rtp_transceiver(id) {
            if t.mid().as_deref() == Some(mid) {
                return t.set_codec_preferences(codecs);
            }
        }
    }
    Ok(())
}
