//! The forwarding core: which packet goes to whom, rewritten how; which NACKs are answered
//! from the cache; when a publisher is asked for a keyframe.
//!
//! Sans-IO: no sockets, no clock, no tasks. The engine (the one module that speaks
//! `webrtc`) feeds it packets and feedback with the time, and carries out what it says.
//! Per packet it does no allocation and no lookup beyond the track's: the packet is kept
//! in the track's cache (a reference count) and each subscriber gets a rewritten header.
//!
//! A subscriber's outgoing sequence numbers are the publisher's plus an offset that changes
//! only when forwarding restarts (after a pause, or on another simulcast layer), so the
//! subscriber sees one gapless stream and its NACKs map back to cached packets by
//! subtraction.
//!
//! **Simulcast.** A video track may come in up to [`MAX_LAYERS`] layers (the same camera
//! at several resolutions, each its own RTP stream). Each subscriber receives one layer at
//! a time: the engine sets the layer it should get ([`Forwarder::set_target_layer`]), and
//! the core moves it there at that layer's next keyframe (asked for at once), continuing
//! its sequence numbers, its RTP timestamps (by the time since its last packet) and, for
//! VP8, its picture IDs, so that its browser sees one stream whose resolution changed.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::codec::{Codec, CodecSet, PictureId, Vp8Ids};
use crate::packet_cache::PacketCache;

#[cfg(test)]
mod tests;

/// At most one keyframe request per published track in this interval: a publisher asked
/// for keyframes too often spends its bandwidth on them.
pub const KEYFRAME_REQUEST_INTERVAL: Duration = Duration::from_millis(500);

/// A video track whose packets stop this long and come back with some missing (its
/// publisher's path was cut and restored, or moved) restarts its subscribers at the next
/// keyframe, asked for at once: their decoders lost frames that nobody can resend.
pub const RESUME_GAP: Duration = Duration::from_millis(500);

/// A packet is resent to one subscriber at most once per [`resend_interval`]: its browser
/// asks again every round trip until the packet arrives, and a NACK repeated before the
/// first retransmission could have arrived is not answered twice. This is the interval
/// while the subscriber's round trip is not known.
pub const RESEND_INTERVAL: Duration = Duration::from_millis(100);

/// The shortest [`resend_interval`]: Chrome asks again at most every 20 ms (its NACK
/// timer), whatever the round trip.
pub const RESEND_INTERVAL_MIN: Duration = Duration::from_millis(5);

/// The longest [`resend_interval`], however long the measured round trip.
pub const RESEND_INTERVAL_MAX: Duration = Duration::from_millis(250);

/// How soon a packet may be resent to a subscriber whose measured round trip is
/// `round_trip`: three quarters of it (a measured round trip is a little longer than the
/// one the browser times its NACKs by), within [`RESEND_INTERVAL_MIN`] and
/// [`RESEND_INTERVAL_MAX`]; [`RESEND_INTERVAL`] while it is not known. A fixed 100 ms
/// refused Chrome's repeated NACKs on short paths for 100 ms: at 20 % loss and a 2 ms round
/// trip, a lost retransmission came too late for its frame (measured: 95 to 147 NACKs
/// refused a minute, 45 keyframe requests, 7 frames a second).
pub fn resend_interval(round_trip: Option<Duration>) -> Duration {
    round_trip.map_or(RESEND_INTERVAL, |rtt| {
        (rtt * 3 / 4).clamp(RESEND_INTERVAL_MIN, RESEND_INTERVAL_MAX)
    })
}

/// A packet that came this long ago is not resent: the subscriber's jitter buffer has
/// moved past it, and sending it only takes bandwidth from what comes next.
pub const RESEND_MAX_AGE: Duration = Duration::from_millis(1_000);

/// Retransmissions to one subscriber of one track are at most half of the packets
/// forwarded to it, after a first burst of this many: on a link that drops because it is
/// full, answering every NACK adds to what overflows it (measured: 13 times the stream
/// in the simulated 300 kbit/s link before this limit).
pub const RESEND_BURST: u16 = 32;

/// A layer this long without a packet of media (padding does not count) is not sent to
/// anyone: its publisher stopped it (browsers stop their upper layers when their uplink
/// cannot carry them, and may go on probing on them with padding).
pub const LAYER_IDLE: Duration = Duration::from_millis(1_000);

/// The most simulcast layers a video track may have.
pub const MAX_LAYERS: usize = 3;

/// A simulcast layer of a video track, 0 the lowest resolution; a track without simulcast
/// (and every audio track) has layer 0 only.
pub type Layer = u8;

/// A participant's connection, as the engine numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// One published track, as the engine numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TrackId(pub u32);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaKind {
    Audio,
    Video,
}

/// What the core needs of an incoming RTP packet (the engine parses it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpMeta {
    pub seq: u16,
    pub timestamp: u32,
    /// The first packet of a keyframe (video); decoding can start here.
    pub keyframe: bool,
    /// The codec of its payload type. A publisher may switch codecs mid-stream (when the
    /// codecs its consultation can receive change); each subscriber then restarts at the
    /// new codec's first keyframe, if it can decode it.
    pub codec: Codec,
    /// Its simulcast layer (below [`MAX_LAYERS`]; others are not forwarded).
    pub layer: Layer,
    /// VP8: its picture numbering, renumbered for a subscriber that changed layers.
    pub vp8: Vp8Ids,
    /// No payload: padding only. Browsers probe their uplink with such packets, also on a
    /// simulcast layer they have stopped encoding, so they do not say that it arrives.
    pub padding: bool,
}

impl RtpMeta {
    /// The meta of a packet of `codec` and `layer`: whether its payload starts a keyframe,
    /// and (VP8) its picture numbering.
    pub fn of(seq: u16, timestamp: u32, payload: &Bytes, codec: Codec, layer: Layer) -> Self {
        let vp8 = match codec {
            Codec::Vp8 => crate::codec::vp8_ids(payload).unwrap_or_default(),
            _ => Vp8Ids::default(),
        };
        RtpMeta {
            seq,
            timestamp,
            keyframe: codec.is_keyframe(payload),
            codec,
            layer,
            vp8,
            padding: payload.is_empty(),
        }
    }
}

/// One packet to send to one subscriber: the cached packet with this header, by the route
/// the engine gave when subscribing (its connection, its SSRC, its payload types).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forward<'a, P, R> {
    pub to: PeerId,
    pub track: TrackId,
    pub route: &'a R,
    pub seq: u16,
    pub timestamp: u32,
    /// The payload's codec (the subscriber's payload type for it goes in the header).
    pub codec: Codec,
    /// VP8 picture numbering to write into the payload, when it is not the packet's own
    /// (the subscriber changed layers); `None`: the payload goes as it is.
    pub vp8: Option<Vp8Ids>,
    pub packet: &'a P,
}

/// Ask this publisher for a keyframe of this layer of this track (PLI).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyframeRequest {
    pub publisher: PeerId,
    pub track: TrackId,
    pub layer: Layer,
}

/// What a subscriber's NACK led to.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct NackOutcome {
    /// Packets sent again from the cache.
    pub resent: usize,
    /// Publisher sequence numbers the SFU never received: NACK them upstream.
    pub upstream: Vec<u16>,
    /// The layer they are of.
    pub layer: Layer,
    /// Packets held but not resent: resent less than a [`resend_interval`] ago, older than
    /// [`RESEND_MAX_AGE`], or over the subscriber's budget ([`RESEND_BURST`]).
    pub refused: usize,
}

/// `a` comes after `b` in RTP sequence order (modulo 2^16).
pub fn seq_after(a: u16, b: u16) -> bool {
    a != b && a.wrapping_sub(b) < 0x8000
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DownState {
    /// Video: nothing is sent until a keyframe starts.
    WaitingForKeyframe,
    Forwarding,
    /// Stopped on purpose (bandwidth, camera off for this viewer).
    Paused,
}

/// What a subscriber's packets must be to be forwarded: the video waits for a keyframe
/// in a codec the subscriber accepts.
fn accepted(accepts: CodecSet, codec: Codec) -> bool {
    accepts.contains(codec) || !codec.is_video()
}

/// One subscriber of one track.
#[derive(Debug)]
struct Down<R> {
    peer: PeerId,
    route: R,
    state: DownState,
    /// Outgoing seq = incoming seq + offset.
    offset: u16,
    /// The first outgoing seq of the current run; NACKs for earlier ones are stale.
    run_start: u16,
    /// The highest outgoing seq sent so far.
    highest: Option<u16>,
    forwarded: u64,
    /// The video codecs the subscriber's browser accepted for this track.
    accepts: CodecSet,
    /// Retransmissions it may still have, in halves: one per packet forwarded, two per
    /// packet resent, at most 2 x [`RESEND_BURST`].
    resend_budget: u16,
    /// When each cached packet was last resent to it: by the cache's slot, the incoming
    /// seq and the milliseconds after the packet's arrival. Allocated at its first NACK.
    resent: Option<Box<[(u16, u16)]>>,
    /// The layer it is forwarded (when forwarding), and the one it should be.
    layer: Layer,
    target: Layer,
    /// Outgoing RTP timestamp = incoming + this; changes when it changes layers.
    ts_offset: u32,
    /// VP8: outgoing picture ID and TL0PICIDX = incoming + these.
    picture_offset: u16,
    tl0_offset: u8,
    /// The newest packet sent to it: when, its timestamp and picture numbering as sent.
    last: Option<Sent>,
}

/// What a subscriber's next layer goes on from.
#[derive(Debug, Clone, Copy)]
struct Sent {
    at: Instant,
    timestamp: u32,
    vp8: Vp8Ids,
}

/// No retransmission yet (a time after arrival no resend can have, being past
/// [`RESEND_MAX_AGE`]).
const NEVER_RESENT: u16 = u16::MAX;

impl<R> Down<R> {
    fn new(peer: PeerId, route: R, target: Layer) -> Self {
        Down {
            peer,
            route,
            state: DownState::WaitingForKeyframe,
            offset: 0,
            run_start: 0,
            highest: None,
            forwarded: 0,
            accepts: CodecSet::all_video(),
            resend_budget: RESEND_BURST * 2,
            resent: None,
            layer: target,
            target,
            ts_offset: 0,
            picture_offset: 0,
            tl0_offset: 0,
            last: None,
        }
    }

    /// Starts (or restarts) forwarding at this packet, continuing the outgoing numbering;
    /// on another layer than before, its timestamps and picture numbering go on from the
    /// last packet sent.
    fn start(&mut self, meta: &RtpMeta, now: Instant) {
        let out = self.highest.map_or(meta.seq, |h| h.wrapping_add(1));
        self.offset = out.wrapping_sub(meta.seq);
        self.run_start = out;
        self.state = DownState::Forwarding;
        if meta.layer != self.layer {
            self.layer = meta.layer;
            if let Some(last) = self.last {
                // The time since the last packet, at the codec's clock (at least a tick:
                // the new frame is a new frame).
                let ms = now.saturating_duration_since(last.at).as_millis();
                let ticks = (ms * u128::from(meta.codec.clock_rate()) / 1_000).max(1);
                let next = last.timestamp.wrapping_add(ticks as u32);
                self.ts_offset = next.wrapping_sub(meta.timestamp);
                if let (Some(sent), Some(id)) = (last.vp8.picture_id, meta.vp8.picture_id) {
                    let next = sent.plus(1).value;
                    self.picture_offset = next.wrapping_sub(id.value) & (id.modulus() - 1);
                }
                if let (Some(sent), Some(tl0)) = (last.vp8.tl0, meta.vp8.tl0) {
                    self.tl0_offset = sent.wrapping_add(1).wrapping_sub(tl0);
                }
            }
        }
    }

    /// A packet's VP8 numbering as this subscriber gets it.
    fn vp8(&self, ids: Vp8Ids) -> Vp8Ids {
        Vp8Ids {
            picture_id: ids
                .picture_id
                .map(|p: PictureId| p.plus(self.picture_offset)),
            tl0: ids.tl0.map(|t| t.wrapping_add(self.tl0_offset)),
        }
    }

    /// The rewrite a packet needs for this subscriber, if any.
    fn rewrite(&self, ids: Vp8Ids) -> Option<Vp8Ids> {
        let out = self.vp8(ids);
        (out != ids).then_some(out)
    }
}

/// A packet in a layer's cache.
#[derive(Debug, Clone)]
struct Kept<P> {
    packet: P,
    codec: Codec,
    arrived: Instant,
    timestamp: u32,
    vp8: Vp8Ids,
}

/// One layer of a published track, as it arrives.
#[derive(Debug)]
struct Incoming<P> {
    /// The codec of its last packet.
    codec: Option<Codec>,
    /// Packets by incoming seq, with what a retransmission needs of them.
    cache: PacketCache<Kept<P>>,
    last_keyframe_request: Option<Instant>,
    /// When the newest packet came, and its sequence number.
    newest: Option<(Instant, u16)>,
    /// When a packet with a payload last came: padding alone keeps no layer active.
    media_at: Option<Instant>,
    /// Packets it never received, by the cache's slot: the incoming seq and when it was
    /// last NACKed upstream for a subscriber. Allocated at the first.
    asked: Option<AskedUpstream>,
}

/// By a cache slot: an incoming seq and when it was last asked of the publisher.
type AskedUpstream = Box<[(u16, Option<Instant>)]>;

impl<P: Clone> Incoming<P> {
    fn new() -> Self {
        Incoming {
            codec: None,
            cache: PacketCache::default(),
            last_keyframe_request: None,
            newest: None,
            media_at: None,
            asked: None,
        }
    }

    fn active(&self, now: Instant) -> bool {
        self.media_at
            .is_some_and(|at| now.saturating_duration_since(at) < LAYER_IDLE)
    }
}

#[derive(Debug)]
struct Published<P, R> {
    publisher: PeerId,
    kind: MediaKind,
    /// The codec of the last packet received, whatever its layer.
    codec: Option<Codec>,
    /// Its layers as they arrive, by layer (one until a packet of another comes).
    layers: Vec<Incoming<P>>,
    subscribers: Vec<Down<R>>,
}

impl<P: Clone, R> Published<P, R> {
    /// A keyframe request for `layer`, unless one was sent less than
    /// [`KEYFRAME_REQUEST_INTERVAL`] ago.
    fn request_keyframe(
        &mut self,
        track: TrackId,
        layer: Layer,
        now: Instant,
    ) -> Option<KeyframeRequest> {
        if self.kind != MediaKind::Video {
            return None;
        }
        let l = self.layers.get_mut(usize::from(layer))?;
        if l.last_keyframe_request
            .is_some_and(|t| now.saturating_duration_since(t) < KEYFRAME_REQUEST_INTERVAL)
        {
            return None;
        }
        l.last_keyframe_request = Some(now);
        Some(KeyframeRequest {
            publisher: self.publisher,
            track,
            layer,
        })
    }

    fn down(&mut self, peer: PeerId) -> Option<&mut Down<R>> {
        self.subscribers.iter_mut().find(|d| d.peer == peer)
    }

    /// The highest layer that is arriving (the highest that ever came if none is now).
    fn best_layer(&self, now: Instant) -> Layer {
        let top = self.layers.len().saturating_sub(1);
        let best = (0..self.layers.len())
            .rev()
            .find(|&l| self.layers[l].active(now))
            .unwrap_or(top);
        best as Layer
    }
}

/// The forwarding state of a set of participants (one consultation): every published
/// track and its subscribers. `P` is the cached packet, `R` the engine's route to a
/// subscriber.
#[derive(Debug)]
pub struct Forwarder<P, R> {
    tracks: HashMap<TrackId, Published<P, R>>,
}

impl<P, R> Default for Forwarder<P, R> {
    fn default() -> Self {
        Self {
            tracks: HashMap::new(),
        }
    }
}

impl<P: Clone, R> Forwarder<P, R> {
    pub fn add_track(&mut self, track: TrackId, publisher: PeerId, kind: MediaKind) {
        self.tracks.insert(
            track,
            Published {
                publisher,
                kind,
                codec: None,
                layers: vec![Incoming::new()],
                subscribers: Vec::new(),
            },
        );
    }

    /// Removes a track; returns the peers that were subscribed to it.
    pub fn remove_track(&mut self, track: TrackId) -> Vec<PeerId> {
        self.tracks
            .remove(&track)
            .map(|t| t.subscribers.into_iter().map(|d| d.peer).collect())
            .unwrap_or_default()
    }

    /// Removes a peer: the tracks it published and its subscriptions. Returns the removed
    /// tracks.
    pub fn remove_peer(&mut self, peer: PeerId) -> Vec<TrackId> {
        let gone: Vec<TrackId> = self
            .tracks
            .iter()
            .filter(|(_, t)| t.publisher == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in &gone {
            self.tracks.remove(id);
        }
        for t in self.tracks.values_mut() {
            t.subscribers.retain(|d| d.peer != peer);
        }
        gone
    }

    /// `peer` starts receiving `track` by `route`, accepting every video codec until
    /// [`Self::accept_codecs`] says otherwise. Audio flows at once; video waits for a
    /// keyframe, which is requested here.
    pub fn subscribe(
        &mut self,
        track: TrackId,
        peer: PeerId,
        route: R,
        now: Instant,
    ) -> Option<KeyframeRequest> {
        let t = self.tracks.get_mut(&track)?;
        if t.publisher == peer || t.down(peer).is_some() {
            return None;
        }
        // Audio starts at its next packet, video at a keyframe; either way the run starts
        // there (an audio subscriber that began "forwarding" with a run start of 0 dropped
        // every packet numbered 32768 and above, as late, until the numbers wrapped). It
        // starts on the best layer arriving; the engine moves it as its downlink allows.
        let layer = t.best_layer(now);
        t.subscribers.push(Down::new(peer, route, layer));
        t.request_keyframe(track, layer, now)
    }

    /// The video codecs `peer`'s browser accepted for `track`. Packets in any other codec
    /// are not sent to it, and no keyframe is asked for on its behalf while the publisher
    /// sends one of those; when the publisher switches to one it accepts, it starts at the
    /// next keyframe.
    pub fn accept_codecs(
        &mut self,
        track: TrackId,
        peer: PeerId,
        accepts: CodecSet,
        now: Instant,
    ) -> Option<KeyframeRequest> {
        let t = self.tracks.get_mut(&track)?;
        let d = t.subscribers.iter_mut().find(|d| d.peer == peer)?;
        let was = d.accepts;
        d.accepts = accepts;
        let layer = d.target;
        let codec = t.layers.get(usize::from(layer))?.codec?;
        if accepted(was, codec) == accepted(accepts, codec) {
            return None;
        }
        if d.state == DownState::Paused {
            return None;
        }
        d.state = DownState::WaitingForKeyframe;
        if accepted(accepts, codec) {
            t.request_keyframe(track, layer, now)
        } else {
            None
        }
    }

    /// The layer `peer` should receive of video `track` (clamped to the layers that came).
    /// It moves there at that layer's next keyframe, asked for here; until then it keeps
    /// the layer it has.
    pub fn set_target_layer(
        &mut self,
        track: TrackId,
        peer: PeerId,
        layer: Layer,
        now: Instant,
    ) -> Option<KeyframeRequest> {
        let t = self.tracks.get_mut(&track)?;
        let layer = layer.min(t.layers.len().saturating_sub(1) as Layer);
        let d = t.subscribers.iter_mut().find(|d| d.peer == peer)?;
        if d.target == layer {
            return None;
        }
        d.target = layer;
        let settled = d.state == DownState::Forwarding && d.layer == layer;
        if d.state == DownState::Paused || settled {
            return None;
        }
        t.request_keyframe(track, layer, now)
    }

    /// The layer `peer` is meant to receive of `track`, and the one it receives now (none
    /// while it waits for a keyframe or is paused).
    pub fn layers_of(&self, track: TrackId, peer: PeerId) -> Option<(Layer, Option<Layer>)> {
        let t = self.tracks.get(&track)?;
        let d = t.subscribers.iter().find(|d| d.peer == peer)?;
        Some((
            d.target,
            (d.state == DownState::Forwarding).then_some(d.layer),
        ))
    }

    /// Whether `layer` of `track` is arriving (a packet within [`LAYER_IDLE`]).
    pub fn layer_active(&self, track: TrackId, layer: Layer, now: Instant) -> bool {
        self.tracks
            .get(&track)
            .and_then(|t| t.layers.get(usize::from(layer)))
            .is_some_and(|l| l.active(now))
    }

    pub fn unsubscribe(&mut self, track: TrackId, peer: PeerId) {
        if let Some(t) = self.tracks.get_mut(&track) {
            t.subscribers.retain(|d| d.peer != peer);
        }
    }

    /// Stops sending `track` to `peer` (e.g. to save its bandwidth) until [`Self::resume`].
    pub fn pause(&mut self, track: TrackId, peer: PeerId) {
        if let Some(d) = self.tracks.get_mut(&track).and_then(|t| t.down(peer)) {
            d.state = DownState::Paused;
        }
    }

    /// Sends `track` to `peer` again, from the next keyframe for video.
    pub fn resume(
        &mut self,
        track: TrackId,
        peer: PeerId,
        now: Instant,
    ) -> Option<KeyframeRequest> {
        let t = self.tracks.get_mut(&track)?;
        let d = t.down(peer)?;
        if d.state != DownState::Paused {
            return None;
        }
        // Restarts at the next packet (audio) or keyframe (video; asked for here).
        d.state = DownState::WaitingForKeyframe;
        let layer = d.target;
        t.request_keyframe(track, layer, now)
    }

    /// One RTP packet from a publisher: cached, then handed to `sink` once per subscriber
    /// that should get it (those on its layer, and those moving to its layer at this
    /// keyframe). May ask for a keyframe (a subscriber is still waiting for one).
    pub fn on_rtp(
        &mut self,
        track: TrackId,
        meta: RtpMeta,
        packet: P,
        now: Instant,
        mut sink: impl FnMut(Forward<'_, P, R>),
    ) -> Option<KeyframeRequest> {
        let t = self.tracks.get_mut(&track)?;
        let audio = t.kind == MediaKind::Audio;
        let layer = usize::from(meta.layer);
        if layer >= MAX_LAYERS || (audio && layer > 0) {
            return None;
        }
        while t.layers.len() <= layer {
            t.layers.push(Incoming::new());
        }
        t.codec = Some(meta.codec);
        let Published {
            layers,
            subscribers,
            ..
        } = t;
        let l = &mut layers[layer];
        // Whether those forwarded this layer must restart at its next keyframe.
        let mut restart = false;
        if l.codec != Some(meta.codec) {
            // A new codec decodes only from its own keyframe: everyone restarts there.
            restart = l.codec.is_some() && !audio;
            l.codec = Some(meta.codec);
        }
        // A late packet says nothing of a gap.
        if l.newest
            .is_none_or(|(_, newest)| seq_after(meta.seq, newest))
        {
            if let Some((at, newest)) = l.newest {
                // Back after a gap that lost packets: the subscribers' decoders cannot go
                // on from here. They restart at a keyframe (asked for below), with their
                // numbering continued, so there is no hole for them to NACK.
                let lost = meta.seq != newest.wrapping_add(1);
                restart |= lost && !audio && now.saturating_duration_since(at) >= RESUME_GAP;
            }
            l.newest = Some((now, meta.seq));
        }
        if !meta.padding {
            l.media_at = Some(now);
        }
        let mut waiting = false;
        for d in subscribers.iter_mut() {
            if restart && d.state == DownState::Forwarding && d.layer == meta.layer {
                d.state = DownState::WaitingForKeyframe;
            }
            if !accepted(d.accepts, meta.codec) {
                continue;
            }
            let starts = meta.keyframe || audio;
            match d.state {
                DownState::Paused => continue,
                DownState::Forwarding if d.layer == meta.layer => {}
                // Moving to another layer, at its keyframe.
                DownState::Forwarding if d.target == meta.layer && starts => d.start(&meta, now),
                // Waiting for a keyframe (nothing to show): its layer's, or a lower one's
                // (browsers send every layer's keyframe together, and the layer it was
                // given may have stopped); it moves up at its own layer's keyframe.
                DownState::WaitingForKeyframe if meta.layer <= d.target && starts => {
                    d.start(&meta, now)
                }
                _ => {
                    // Padding on a layer whose encoding stopped brings no keyframe.
                    waiting |= d.target == meta.layer && !meta.padding;
                    continue;
                }
            }
            let out = meta.seq.wrapping_add(d.offset);
            if out != d.run_start && !seq_after(out, d.run_start) {
                continue; // Late packet from before this run started.
            }
            let timestamp = meta.timestamp.wrapping_add(d.ts_offset);
            if d.highest.is_none_or(|h| seq_after(out, h)) {
                d.highest = Some(out);
                d.last = Some(Sent {
                    at: now,
                    timestamp,
                    vp8: d.vp8(meta.vp8),
                });
            }
            d.forwarded += 1;
            d.resend_budget = (d.resend_budget + 1).min(RESEND_BURST * 2);
            sink(Forward {
                to: d.peer,
                track,
                route: &d.route,
                seq: out,
                timestamp,
                codec: meta.codec,
                vp8: d.rewrite(meta.vp8),
                packet: &packet,
            });
        }
        l.cache.insert(
            meta.seq,
            Kept {
                packet,
                codec: meta.codec,
                arrived: now,
                timestamp: meta.timestamp,
                vp8: meta.vp8,
            },
        );
        if waiting {
            t.request_keyframe(track, meta.layer, now)
        } else {
            None
        }
    }

    /// A subscriber lost these outgoing sequence numbers: resend what the cache holds,
    /// within the limits (once per `interval`, see [`resend_interval`]; [`RESEND_MAX_AGE`],
    /// [`RESEND_BURST`]); report what the SFU itself never received so it can be NACKed
    /// upstream.
    pub fn on_nack(
        &mut self,
        track: TrackId,
        peer: PeerId,
        lost: &[u16],
        now: Instant,
        interval: Duration,
        mut sink: impl FnMut(Forward<'_, P, R>),
    ) -> NackOutcome {
        let mut outcome = NackOutcome::default();
        let Some(t) = self.tracks.get_mut(&track) else {
            return outcome;
        };
        let Published {
            layers,
            subscribers,
            ..
        } = t;
        let Some(d) = subscribers.iter_mut().find(|d| d.peer == peer) else {
            return outcome;
        };
        let Some(highest) = d.highest else {
            return outcome;
        };
        // This run's packets are all of the layer it forwards.
        outcome.layer = d.layer;
        let Some(Incoming { cache, asked, .. }) = layers.get_mut(usize::from(d.layer)) else {
            return outcome;
        };
        for &out in lost {
            let in_run = out == d.run_start || seq_after(out, d.run_start);
            let sent = out == highest || seq_after(highest, out);
            if !(in_run && sent) {
                continue; // Before this run, or never sent: nothing to repair.
            }
            let seq = out.wrapping_sub(d.offset);
            match cache.get(seq) {
                // A packet of this number in a codec the subscriber refused: it was not
                // what it was sent (the publisher used the number again), so nothing to
                // repair with.
                Some(k) if !accepted(d.accepts, k.codec) => {}
                Some(k) => {
                    let age = now.saturating_duration_since(k.arrived);
                    if age > RESEND_MAX_AGE {
                        outcome.refused += 1;
                        continue;
                    }
                    // Below RESEND_MAX_AGE, so below NEVER_RESENT.
                    let age_ms = u16::try_from(age.as_millis()).unwrap_or(NEVER_RESENT - 1);
                    let slots = d.resent.get_or_insert_with(|| {
                        vec![(0, NEVER_RESENT); cache.capacity()].into_boxed_slice()
                    });
                    let slot = &mut slots[cache.slot(seq)];
                    let again = slot.0 == seq
                        && slot.1 != NEVER_RESENT
                        && u128::from(age_ms.saturating_sub(slot.1)) < interval.as_millis();
                    if again || d.resend_budget < 2 {
                        outcome.refused += 1;
                        continue;
                    }
                    d.resend_budget -= 2;
                    *slot = (seq, age_ms);
                    outcome.resent += 1;
                    sink(Forward {
                        to: d.peer,
                        track,
                        route: &d.route,
                        seq: out,
                        timestamp: k.timestamp.wrapping_add(d.ts_offset),
                        codec: k.codec,
                        vp8: d.rewrite(k.vp8),
                        packet: &k.packet,
                    });
                }
                // Never received: asked of the publisher for its subscribers at most
                // once per RESEND_MAX_AGE, whoever asks (every subscriber NACKs it, each
                // again every round trip, and the SFU's own NACK generator asks too;
                // measured before, simulated: 1,658 upstream for 74 lost in 10 s).
                None => {
                    let asked = asked.get_or_insert_with(|| {
                        vec![(0, None); cache.capacity()].into_boxed_slice()
                    });
                    let slot = &mut asked[cache.slot(seq)];
                    let recent = slot.0 == seq
                        && slot
                            .1
                            .is_some_and(|at| now.saturating_duration_since(at) < RESEND_MAX_AGE);
                    if !recent {
                        *slot = (seq, Some(now));
                        outcome.upstream.push(seq);
                    }
                }
            }
        }
        outcome
    }

    /// `peer`'s path was interrupted (its browser was not heard for a while) and is back:
    /// what was sent to it meanwhile is lost and older than anything worth resending, so
    /// each video it receives restarts at the next keyframe, asked for here, with its
    /// numbering continued (the hole is before the new run: its NACKs for it are not
    /// answered, and the keyframe lets its decoder go on).
    pub fn restart_peer(
        &mut self,
        peer: PeerId,
        now: Instant,
        mut request: impl FnMut(KeyframeRequest),
    ) {
        for (id, t) in &mut self.tracks {
            if t.kind != MediaKind::Video {
                continue;
            }
            let Some(d) = t.subscribers.iter_mut().find(|d| d.peer == peer) else {
                continue;
            };
            if d.state != DownState::Forwarding {
                continue;
            }
            d.state = DownState::WaitingForKeyframe;
            let layer = d.target;
            if let Some(r) = t.request_keyframe(*id, layer, now) {
                request(r);
            }
        }
    }

    /// The publisher of video `track` is back after an outage (its browser was not heard
    /// for a while): its subscribers restart at its next keyframe, asked for here, whether
    /// or not its numbering shows a gap (a browser may hold back what it could not send,
    /// and its subscribers' decoders still lost their place).
    pub fn restart_track(
        &mut self,
        track: TrackId,
        now: Instant,
        mut request: impl FnMut(KeyframeRequest),
    ) {
        let Some(t) = self.tracks.get_mut(&track) else {
            return;
        };
        if t.kind != MediaKind::Video {
            return;
        }
        let mut wanted = [false; MAX_LAYERS];
        for d in &mut t.subscribers {
            if d.state == DownState::Forwarding {
                d.state = DownState::WaitingForKeyframe;
            }
            if d.state == DownState::WaitingForKeyframe {
                wanted[usize::from(d.target)] = true;
            }
        }
        for (layer, _) in wanted.iter().enumerate().filter(|(_, w)| **w) {
            if let Some(r) = t.request_keyframe(track, layer as Layer, now) {
                request(r);
            }
        }
    }

    /// Subscriber `peer` asked for a keyframe (PLI or FIR): pass it on for the layer it
    /// receives, at most once per [`KEYFRAME_REQUEST_INTERVAL`] per layer however many
    /// ask.
    pub fn on_keyframe_request(
        &mut self,
        track: TrackId,
        peer: PeerId,
        now: Instant,
    ) -> Option<KeyframeRequest> {
        let t = self.tracks.get_mut(&track)?;
        let d = t.subscribers.iter().find(|d| d.peer == peer)?;
        let layer = if d.state == DownState::Forwarding {
            d.layer
        } else {
            d.target
        };
        t.request_keyframe(track, layer, now)
    }

    /// Packets sent to `peer` on `track` so far (including retransmissions not counted).
    pub fn forwarded(&self, track: TrackId, peer: PeerId) -> u64 {
        self.tracks
            .get(&track)
            .and_then(|t| t.subscribers.iter().find(|d| d.peer == peer))
            .map_or(0, |d| d.forwarded)
    }

    /// The codec a track's packets are in now (none before its first packet).
    pub fn codec(&self, track: TrackId) -> Option<Codec> {
        self.tracks.get(&track)?.codec
    }

    /// The publisher and kind of a track.
    pub fn track(&self, track: TrackId) -> Option<(PeerId, MediaKind)> {
        self.tracks.get(&track).map(|t| (t.publisher, t.kind))
    }
}
