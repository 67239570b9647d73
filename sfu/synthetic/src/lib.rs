//! A synthetic participant on the `webrtc` crate, for tests and load tests: it publishes
//! VP8-shaped video (frames of realistic size: keyframes when asked and every 3 s, five
//! times a delta frame, deltas varying by ±20 %; packets of at most [`VIDEO_PAYLOAD`]
//! bytes) and Opus-sized audio (32 kbit/s in 20 ms packets), answers the SFU's subscriber
//! offers, and measures what it receives. Its media bytes are filler but for the VP8
//! headers an SFU reads; the last [`STAMP_LEN`] bytes of every payload carry the
//! publisher's send time and the packet's index in its stream, so a receiver measures
//! forwarding latency and loss without trusting the relay's sequence numbers.
//!
//! A crate of its own, beside the SFU, so that `consult` and `sfu` never link the
//! `webrtc` crate or this code: only tests and the load tests depend on it. Its
//! connections are built from the SFU's [`sfu::engine::client_recipe`], so they offer and
//! answer as the SFU expects a browser to ([`client`]).

mod client;

pub use client::{ClientIce, peer_connection, peer_connection_with};

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

use sfu::engine::{Engine, EngineError, EngineEvent, LiveGuard};

/// What a synthetic participant publishes.
#[derive(Debug, Clone, Copy)]
pub struct Publish {
    /// Video bitrate in kbit/s (packets of [`VIDEO_PAYLOAD`] bytes, 30 frames a second).
    pub video_kbps: u32,
    /// Whether to publish 32 kbit/s of Opus-sized audio (one packet every 20 ms).
    pub audio: bool,
}

/// The largest video payload (a browser packetizes to about this size).
pub const VIDEO_PAYLOAD: usize = 1100;

/// Bytes at the end of each payload: send time (µs since [`epoch`], u64 BE) and index in
/// the stream (u32 BE).
pub const STAMP_LEN: usize = 12;

/// Per-track tasks alive (the synthetic participants' remote track readers): back to zero
/// after everyone leaves unless something leaks. Read by the churn benchmark.
static LIVE_TRACK_TASKS: AtomicUsize = AtomicUsize::new(0);

/// Per-track tasks alive in this process.
pub fn live_track_tasks() -> usize {
    LIVE_TRACK_TASKS.load(Ordering::Relaxed)
}

/// The clock every synthetic participant of this process stamps and reads.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn micros_since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Packets received on one stream, and one past the highest index seen on it.
#[derive(Debug, Default)]
struct StreamCount {
    received: AtomicU64,
    span: AtomicU64,
}

/// Received and expected packets, summed over a participant's streams; the difference of
/// two readings gives the loss between them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub received: u64,
    pub expected: u64,
}

/// What a synthetic participant received and was asked.
/// A received video track, its SSRC and the newest sequence number seen on it.
type LastVideo = (Arc<dyn TrackRemote>, u32, u16);

#[derive(Default)]
pub struct Stats {
    /// Packets received per (publisher stream id, audio or video).
    received: Mutex<HashMap<(String, bool), u64>>,
    /// All packets received.
    pub packets: AtomicU64,
    /// Keyframe requests (PLI) that reached this participant's video.
    pub plis: AtomicU32,
    /// The last video track received from.
    last_video: Mutex<Option<LastVideo>>,
    /// Each received stream's counts.
    streams: Mutex<Vec<Arc<StreamCount>>>,
    /// Publisher-to-receiver latency of each packet since the last [`Stats::take_latency`],
    /// in µs.
    latency: Mutex<Option<hdrhistogram::Histogram<u64>>>,
}

impl std::fmt::Debug for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stats")
            .field("packets", &self.packets)
            .field("plis", &self.plis)
            .finish_non_exhaustive()
    }
}

impl Stats {
    /// Packets received per (publisher stream id, `true` for video).
    pub fn received(&self) -> HashMap<(String, bool), u64> {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Packets received and expected so far on all streams.
    pub fn delivery(&self) -> Delivery {
        let streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        streams.iter().fold(Delivery::default(), |d, c| Delivery {
            received: d.received + c.received.load(Ordering::Relaxed),
            expected: d.expected + c.span.load(Ordering::Relaxed),
        })
    }

    /// The latencies recorded since the last call (µs), and starts a new recording.
    pub fn take_latency(&self) -> hdrhistogram::Histogram<u64> {
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        h.take().unwrap_or_else(new_histogram)
    }

    fn record(&self, stamp: Option<(u64, u32)>, count: &StreamCount) {
        let Some((sent, index)) = stamp else { return };
        count.received.fetch_add(1, Ordering::Relaxed);
        count
            .span
            .fetch_max(u64::from(index) + 1, Ordering::Relaxed);
        let now = micros_since_epoch();
        let mut h = self.latency.lock().unwrap_or_else(|p| p.into_inner());
        let _ = h
            .get_or_insert_with(new_histogram)
            .record(now.saturating_sub(sent).max(1));
    }

    /// How many publishers this participant received both audio and video from, at least
    /// `min` packets of each.
    pub fn sources_with_both(&self, min: u64) -> usize {
        let r = self.received();
        let mut streams: Vec<&String> = r.keys().map(|(s, _)| s).collect();
        streams.sort();
        streams.dedup();
        streams
            .into_iter()
            .filter(|s| {
                [false, true]
                    .iter()
                    .all(|v| r.get(&((*s).clone(), *v)).copied().unwrap_or(0) >= min)
            })
            .count()
    }
}

fn new_histogram() -> hdrhistogram::Histogram<u64> {
    // 1 µs to 60 s at three significant figures.
    hdrhistogram::Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The stamp at the end of a payload: (send time in µs, index).
fn read_stamp(payload: &[u8]) -> Option<(u64, u32)> {
    let at = payload.len().checked_sub(STAMP_LEN)?;
    let sent = u64::from_be_bytes(payload[at..at + 8].try_into().ok()?);
    let index = u32::from_be_bytes(payload[at + 8..].try_into().ok()?);
    Some((sent, index))
}

/// The reader task of each received track, by track id, so a track the SFU stopped
/// sending (its m-line went inactive: the crate does not end such a track) is stopped too.
type Readers = Arc<Mutex<HashMap<String, CancellationToken>>>;

struct Handler {
    _live: LiveGuard,
    gathered: Arc<Notify>,
    stats: Option<Arc<Stats>>,
    readers: Readers,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            self.gathered.notify_waiters();
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(stats) = self.stats.clone() else {
            return;
        };
        let stop = CancellationToken::new();
        let id = track.track_id().await.to_string();
        if let Some(old) = self
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, stop.clone())
        {
            old.cancel();
        }
        tokio::spawn(async move {
            let _live = LiveGuard::new(&LIVE_TRACK_TASKS);
            let key = (
                track.stream_id().await.to_string(),
                track.kind().await == RtpCodecKind::Video,
            );
            let count = Arc::new(StreamCount::default());
            stats
                .streams
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(count.clone());
            let mut n = 0u64;
            loop {
                let ev = tokio::select! {
                    () = stop.cancelled() => break,
                    ev = track.poll() => match ev {
                        Some(ev) => ev,
                        None => break,
                    },
                };
                if matches!(ev, TrackRemoteEvent::OnEnded | TrackRemoteEvent::OnEnding) {
                    break; // The SFU removed this track (its publisher left).
                }
                if let TrackRemoteEvent::OnRtpPacket(p) = ev {
                    if key.1 {
                        *stats.last_video.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some((track.clone(), p.header.ssrc, p.header.sequence_number));
                    }
                    n += 1;
                    stats.packets.fetch_add(1, Ordering::Relaxed);
                    stats.record(read_stamp(&p.payload), &count);
                    // Publish the count every 16 packets, not per packet.
                    if n % 16 == 1 {
                        stats
                            .received
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(key.clone(), n);
                    }
                }
            }
        });
    }
}

/// One synthetic participant joined to an engine's room.
pub struct Participant {
    pub key: u128,
    pub stats: Arc<Stats>,
    publisher: Arc<dyn PeerConnection>,
    subscriber: Arc<dyn PeerConnection>,
    stop: CancellationToken,
}

impl std::fmt::Debug for Participant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Participant")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

fn track(kind: RtpCodecKind, ssrc: u32, codec: RTCRtpCodec) -> Arc<TrackLocalStaticRTP> {
    client::local_track(
        format!("synthetic-{ssrc}"),
        format!("{kind}-{ssrc}"),
        kind,
        ssrc,
        codec,
    )
}

fn codec(mime: &str, clock_rate: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.into(),
        clock_rate,
        channels,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: vec![],
    }
}

async fn local_sdp(
    pc: &Arc<dyn PeerConnection>,
    wait: impl Future<Output = ()>,
) -> Result<String, EngineError> {
    let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
    pc.local_description()
        .await
        .map(|d| d.sdp)
        .ok_or_else(|| EngineError::WebRtc("no local description".into()))
}

fn err(e: impl std::fmt::Display) -> EngineError {
    EngineError::WebRtc(e.to_string())
}

/// Stops the readers of tracks whose transceiver no longer receives.
async fn stop_inactive_readers(pc: &Arc<dyn PeerConnection>, readers: &Readers) {
    for t in pc.get_transceivers().await {
        let receiving = matches!(
            t.current_direction().await,
            Ok(RTCRtpTransceiverDirection::Recvonly | RTCRtpTransceiverDirection::Sendrecv)
        );
        if receiving {
            continue;
        }
        if let Ok(Some(r)) = t.receiver().await {
            let id = r.track().track_id().await.to_string();
            if let Some(stop) = readers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&id)
            {
                stop.cancel();
            }
        }
    }
}

static NEXT_SSRC: AtomicU32 = AtomicU32::new(0x0C00_0000);

/// How a synthetic participant exchanges descriptions with the SFU: the engine's API
/// directly, or (in signalling's tests and the load tests) the websocket a browser uses.
#[async_trait::async_trait]
pub trait Signal: Send + Sync + 'static {
    /// Sends the publisher connection's offer; returns the SFU's answer.
    async fn publish(&self, offer: String) -> Result<String, EngineError>;
    /// Sends the answer to the SFU's last subscriber offer.
    async fn subscriber_answer(&self, answer: String) -> Result<(), EngineError>;
}

/// The engine's API as a [`Signal`].
struct EngineSignal {
    engine: Arc<Engine>,
    key: u128,
}

#[async_trait::async_trait]
impl Signal for EngineSignal {
    async fn publish(&self, offer: String) -> Result<String, EngineError> {
        self.engine.publish(self.key, offer).await
    }
    async fn subscriber_answer(&self, answer: String) -> Result<(), EngineError> {
        self.engine.subscriber_answer(self.key, answer).await
    }
}

impl Participant {
    /// Joins `room` on `engine` with sockets on `ip`; publishes if `publish` says so, and
    /// always subscribes to the others.
    pub async fn join(
        engine: &Arc<Engine>,
        ip: IpAddr,
        room: u128,
        key: u128,
        publish: Option<Publish>,
    ) -> Result<Self, EngineError> {
        Self::join_with(engine, ip, room, key, publish, ClientIce::default()).await
    }

    /// [`Self::join`] with an ICE agent that behaves as `ice` says.
    pub async fn join_with(
        engine: &Arc<Engine>,
        ip: IpAddr,
        room: u128,
        key: u128,
        publish: Option<Publish>,
        ice: ClientIce,
    ) -> Result<Self, EngineError> {
        let (events_tx, mut events) = mpsc::unbounded_channel();
        engine.join(room, key, events_tx).await?;
        let (offers_tx, offers) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Some(ev) = events.recv().await {
                if let EngineEvent::SubscriberOffer { sdp, .. } = ev
                    && offers_tx.send(sdp).is_err()
                {
                    return;
                }
            }
        });
        let signal = Arc::new(EngineSignal {
            engine: engine.clone(),
            key,
        });
        Self::connect_with(signal, offers, ip, key, publish, ice).await
    }

    /// Connects through `signal`: answers each subscriber offer that arrives on `offers`,
    /// and publishes if `publish` says so. `key` only names it.
    pub async fn connect(
        signal: Arc<dyn Signal>,
        offers: mpsc::UnboundedReceiver<String>,
        ip: IpAddr,
        key: u128,
        publish: Option<Publish>,
    ) -> Result<Self, EngineError> {
        Self::connect_with(signal, offers, ip, key, publish, ClientIce::default()).await
    }

    /// [`Self::connect`] with an ICE agent that behaves as `ice` says.
    pub async fn connect_with(
        signal: Arc<dyn Signal>,
        mut offers: mpsc::UnboundedReceiver<String>,
        ip: IpAddr,
        key: u128,
        publish: Option<Publish>,
        ice: ClientIce,
    ) -> Result<Self, EngineError> {
        let stats = Arc::new(Stats::default());
        let stop = CancellationToken::new();

        let sub_gathered = Arc::new(Notify::new());
        let readers = Readers::default();
        let subscriber = peer_connection_with(
            ip,
            Arc::new(Handler {
                _live: sfu::engine::connection_guard(),
                gathered: sub_gathered.clone(),
                stats: Some(stats.clone()),
                readers: readers.clone(),
            }),
            ice,
        )
        .await?;
        let (e, s) = (signal.clone(), subscriber.clone());
        let readers_for_answers = readers.clone();
        tokio::spawn(async move {
            while let Some(sdp) = offers.recv().await {
                let answered = async {
                    s.set_remote_description(RTCSessionDescription::offer(sdp).map_err(err)?)
                        .await
                        .map_err(err)?;
                    let answer = s.create_answer(None).await.map_err(err)?;
                    // Registered before gathering can finish, or its notice is lost
                    // (notify_waiters wakes only registered waiters) and the answer
                    // waits out local_sdp's timeout.
                    let wait = sub_gathered.notified();
                    tokio::pin!(wait);
                    wait.as_mut().enable();
                    s.set_local_description(answer).await.map_err(err)?;
                    let sdp = local_sdp(&s, wait).await?;
                    stop_inactive_readers(&s, &readers_for_answers).await;
                    e.subscriber_answer(sdp).await
                };
                if let Err(e) = answered.await {
                    tracing::warn!(error = %e, "synthetic participant could not answer");
                }
            }
        });

        let pub_gathered = Arc::new(Notify::new());
        let publisher = peer_connection_with(
            ip,
            Arc::new(Handler {
                _live: sfu::engine::connection_guard(),
                gathered: pub_gathered.clone(),
                stats: None,
                readers: Readers::default(),
            }),
            ice,
        )
        .await?;
        let me = Self {
            key,
            stats,
            publisher,
            subscriber,
            stop,
        };
        if let Some(spec) = publish {
            me.publish(signal.as_ref(), spec, pub_gathered).await?;
        }
        Ok(me)
    }

    async fn publish(
        &self,
        signal: &dyn Signal,
        spec: Publish,
        gathered: Arc<Notify>,
    ) -> Result<(), EngineError> {
        let vssrc = NEXT_SSRC.fetch_add(1, Ordering::Relaxed);
        let assrc = NEXT_SSRC.fetch_add(1, Ordering::Relaxed);
        let video = track(
            RtpCodecKind::Video,
            vssrc,
            codec("video/VP8", 90_000, 0, ""),
        );
        let audio = track(
            RtpCodecKind::Audio,
            assrc,
            codec("audio/opus", 48_000, 2, "minptime=10;useinbandfec=1"),
        );
        let mut senders = Vec::new();
        for t in [video.clone(), audio.clone()] {
            let init = RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Sendonly,
                streams: vec![],
                send_encodings: vec![],
            };
            let tr = self
                .publisher
                .add_transceiver_from_track(t as Arc<dyn TrackLocal>, Some(init))
                .await
                .map_err(err)?;
            senders.push(
                tr.sender()
                    .await
                    .map_err(err)?
                    .ok_or_else(|| err("no sender"))?,
            );
        }
        let offer = self.publisher.create_offer(None).await.map_err(err)?;
        let wait = gathered.notified();
        tokio::pin!(wait);
        wait.as_mut().enable();
        self.publisher
            .set_local_description(offer)
            .await
            .map_err(err)?;
        let sdp = local_sdp(&self.publisher, wait).await?;
        let answer = signal.publish(sdp).await?;
        self.publisher
            .set_remote_description(RTCSessionDescription::answer(answer).map_err(err)?)
            .await
            .map_err(err)?;
        let mut pts = Vec::new();
        for (s, mime) in senders.iter().zip(["video/VP8", "audio/opus"]) {
            let params = s.get_parameters().await.map_err(err)?;
            let pt = params
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                .map(|c| c.payload_type)
                .ok_or_else(|| err(format!("{mime} not negotiated")))?;
            pts.push(pt);
        }
        let want_keyframe = Arc::new(AtomicBool::new(true));
        let (stats, w, v) = (self.stats.clone(), want_keyframe.clone(), video.clone());
        tokio::spawn(async move {
            while let Some(ev) = v.poll().await {
                if let TrackLocalEvent::OnRtcpPacket(pkts) = ev
                    && pkts
                        .iter()
                        .any(|r| r.as_any().is::<PictureLossIndication>())
                {
                    stats.plis.fetch_add(1, Ordering::Relaxed);
                    w.store(true, Ordering::Relaxed);
                }
            }
        });
        let sender = Sender {
            video,
            audio: spec.audio.then_some(audio),
            vssrc,
            assrc,
            vpt: pts[0],
            apt: pts[1],
            want_keyframe,
            frame_bytes: spec.video_kbps as usize * 1000 / 8 / FPS as usize,
        };
        tokio::spawn(sender.run(self.stop.clone()));
        Ok(())
    }

    /// Asks the SFU again for the `count` video packets before the newest one received,
    /// as a subscriber that lost them would (a NACK). Returns how many it asked for.
    pub async fn nack_recent_video(&self, count: u16) -> usize {
        let last = self
            .stats
            .last_video
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let Some((track, ssrc, newest)) = last else {
            return 0;
        };
        let lost: Vec<u16> = (1..=count).map(|k| newest.wrapping_sub(k)).collect();
        let nack = TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: nack_pairs_from_sequence_numbers(&lost),
        };
        match track.write_rtcp(vec![Box::new(nack)]).await {
            Ok(()) => lost.len(),
            Err(_) => 0,
        }
    }

    /// Leaves the room and closes both connections.
    pub async fn leave(self, engine: &Engine) {
        let _ = engine.leave(self.key).await;
        self.close().await;
    }

    /// Stops sending and closes both connections (the SFU side is the caller's business).
    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.publisher.close().await;
        let _ = self.subscriber.close().await;
    }
}

struct Sender {
    video: Arc<TrackLocalStaticRTP>,
    audio: Option<Arc<TrackLocalStaticRTP>>,
    vssrc: u32,
    assrc: u32,
    vpt: u8,
    apt: u8,
    want_keyframe: Arc<AtomicBool>,
    /// Mean bytes of a video frame at the asked bitrate.
    frame_bytes: usize,
}

/// Video frames per second.
const FPS: u32 = 30;
/// A keyframe is this many times a delta frame.
const KEYFRAME_FACTOR: usize = 5;
/// Bytes of Opus per 20 ms packet: 32 kbit/s.
const OPUS_BYTES: usize = 80;

/// Appends the stamp for packet `index` of a stream.
fn stamp(payload: &mut Vec<u8>, index: u32) {
    payload.extend_from_slice(&micros_since_epoch().to_be_bytes());
    payload.extend_from_slice(&index.to_be_bytes());
}

/// The VP8 payloads of one frame of `size` bytes: a payload descriptor (S=1 on the first
/// packet, partition 0), then on the first packet the frame tag (P=0 on a keyframe, with
/// the keyframe start code and a 640×480 size), filler, and each packet's stamp.
fn vp8_frame(size: usize, key: bool, next_index: &mut u32) -> Vec<Bytes> {
    let per_packet = VIDEO_PAYLOAD - 1 - STAMP_LEN;
    let packets = size.div_ceil(per_packet).max(1);
    let chunk = size.div_ceil(packets);
    (0..packets)
        .map(|i| {
            let mut p = Vec::with_capacity(chunk + 1 + STAMP_LEN);
            p.push(if i == 0 { 0x10 } else { 0x00 });
            if i == 0 {
                // Frame tag: P bit, version 0, show_frame, partition size (filler).
                p.extend_from_slice(&[if key { 0x10 } else { 0x11 }, 0x02, 0x00]);
                if key {
                    p.extend_from_slice(&[0x9d, 0x01, 0x2a, 0x80, 0x02, 0xe0, 0x01]);
                }
            }
            p.resize(chunk.max(p.len()) + 1, 0x55);
            stamp(&mut p, *next_index);
            *next_index = next_index.wrapping_add(1);
            Bytes::from(p)
        })
        .collect()
}

/// A small deterministic generator for frame-size variation.
fn next_random(state: &mut u64) -> u64 {
    *state = state
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *state >> 33
}

impl Sender {
    async fn run(self, stop: CancellationToken) {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (mut vseq, mut aseq, mut audio_sent, mut frames) = (0u16, 0u16, 0u32, 0u32);
        let (mut vindex, mut aindex) = (0u32, 0u32);
        let mut last_key = Instant::now();
        let mut random = u64::from(self.vssrc);
        // Over a 3 s keyframe interval the mean stays at `frame_bytes`.
        let gop = 3 * FPS as usize;
        let delta_mean = self.frame_bytes * gop / (gop - 1 + KEYFRAME_FACTOR);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            let ms = u32::try_from(start.elapsed().as_millis()).unwrap_or(u32::MAX);
            let header = |pt, seq, ts, ssrc, marker| rtp::Header {
                version: 2,
                marker,
                payload_type: pt,
                sequence_number: seq,
                timestamp: ts,
                ssrc,
                ..Default::default()
            };
            if let Some(audio) = &self.audio {
                while audio_sent < ms / 20 {
                    audio_sent += 1;
                    aseq = aseq.wrapping_add(1);
                    let mut payload = vec![0x55u8; OPUS_BYTES - STAMP_LEN];
                    stamp(&mut payload, aindex);
                    aindex = aindex.wrapping_add(1);
                    let p = rtp::Packet {
                        header: header(self.apt, aseq, audio_sent * 960, self.assrc, true),
                        payload: Bytes::from(payload),
                    };
                    if audio.write_rtp(p).await.is_err() {
                        return;
                    }
                }
            }
            while frames < ms * FPS / 1000 {
                frames += 1;
                let key = self.want_keyframe.swap(false, Ordering::Relaxed)
                    || last_key.elapsed() > Duration::from_secs(3);
                let size = if key {
                    last_key = Instant::now();
                    delta_mean * KEYFRAME_FACTOR
                } else {
                    // ±20 % around the mean.
                    let jitter = next_random(&mut random) % 41;
                    delta_mean * (80 + jitter as usize) / 100
                };
                let payloads = vp8_frame(size, key, &mut vindex);
                let count = payloads.len();
                for (i, payload) in payloads.into_iter().enumerate() {
                    vseq = vseq.wrapping_add(1);
                    let p = rtp::Packet {
                        header: header(self.vpt, vseq, frames * 3000, self.vssrc, i + 1 == count),
                        payload,
                    };
                    if self.video.write_rtp(p).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_vp8_and_stamped_in_order() {
        let mut index = 7;
        let key = vp8_frame(20_000, true, &mut index);
        assert_eq!(index, 7 + key.len() as u32);
        assert!(key.len() > 1 && key.iter().all(|p| p.len() <= VIDEO_PAYLOAD));
        assert!(sfu::codec::Codec::Vp8.is_keyframe(&key[0]));
        assert!(
            !sfu::codec::Codec::Vp8.is_keyframe(&key[1]),
            "only the first packet starts it"
        );
        let delta = vp8_frame(3_000, false, &mut index);
        assert!(!sfu::codec::Codec::Vp8.is_keyframe(&delta[0]));
        let (_, first) = read_stamp(&delta[0]).unwrap();
        let (_, second) = read_stamp(&delta[1]).unwrap();
        assert_eq!(
            (first, second),
            (7 + key.len() as u32, 8 + key.len() as u32)
        );
        let bytes: usize = delta.iter().map(|p| p.len() - 1 - STAMP_LEN).sum();
        assert!((3_000..3_000 + delta.len()).contains(&bytes), "{bytes}");
    }

    #[test]
    fn delivery_counts_gaps_as_lost() {
        let stats = Stats::default();
        let count = Arc::new(StreamCount::default());
        stats.streams.lock().unwrap().push(count.clone());
        for index in [0u32, 1, 2, 5, 6] {
            stats.record(Some((micros_since_epoch(), index)), &count);
        }
        assert_eq!(
            stats.delivery(),
            Delivery {
                received: 5,
                expected: 7
            }
        );
        assert_eq!(stats.take_latency().len(), 5);
        assert_eq!(
            stats.take_latency().len(),
            0,
            "a new recording starts empty"
        );
    }
}
