//! RTP and RTCP from the network, parsed by the `rtc` crate as the engine's connections
//! parse them, driving the forwarding core (`sfu::forward`) with random subscriptions,
//! pauses, codec acceptances, codec switches and departures, as the engine does: each
//! packet's codec from its payload type, its keyframe flag from `Codec::is_keyframe`.
//!
//! Whatever arrives, no panic, and after every step what the core promises holds, checked
//! against a model of who subscribes to what:
//! - a packet goes only to a current, unpaused subscriber, never back to its publisher,
//!   and only in a codec that subscriber accepts;
//! - a video subscriber's run starts at a keyframe (after subscribing, resuming, a codec
//!   switch or a change of what it accepts), and its outgoing sequence numbers continue
//!   where the last run ended (no jump);
//! - a NACK is answered only to the subscriber who sent it, only with sequence numbers it
//!   named, never more packets than it named, and one packet at most once per
//!   `resend_interval` (each peer with its own round trip, or none measured);
//! - the core's idea of each track's codec is the codec of its last packet;
//! - simulcast (each packet's layer from its SSRC, as the engine maps them): a subscriber
//!   gets one layer at a time; when it changes layers, the first packet of the new layer
//!   is a keyframe, of a layer no higher than the one the core was told, its sequence numbers
//!   continue with no jump, and its timestamps move forward; an audio packet of any layer
//!   but 0 goes nowhere.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;
use rtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::{Marshal, Unmarshal};
use sfu::codec::{Codec, CodecSet};
use sfu::forward::{
    Forwarder, Layer, MAX_LAYERS, MediaKind, PeerId, RtpMeta, TrackId, resend_interval, seq_after,
};

/// Few tracks and peers, so that operations meet each other.
const TRACKS: u8 = 4;
const PEERS: u8 = 4;

#[derive(Debug, Arbitrary)]
enum Op {
    AddTrack {
        track: u8,
        publisher: u8,
        video: bool,
    },
    RemoveTrack {
        track: u8,
    },
    RemovePeer {
        peer: u8,
    },
    Subscribe {
        track: u8,
        peer: u8,
    },
    Unsubscribe {
        track: u8,
        peer: u8,
    },
    Pause {
        track: u8,
        peer: u8,
    },
    Resume {
        track: u8,
        peer: u8,
    },
    /// What a subscriber's answer accepted: VP8, H264.
    Accept {
        track: u8,
        peer: u8,
        vp8: bool,
        h264: bool,
    },
    /// An RTP packet built from its fields (payload type picks the codec, as the
    /// publisher's offer gave them).
    Rtp {
        track: u8,
        seq: u16,
        timestamp: u32,
        pt: u8,
        payload: Vec<u8>,
    },
    /// A run of consecutive packets (sequence numbers advancing), the common case.
    Burst {
        track: u8,
        first: u16,
        count: u8,
        pt: u8,
        keyframe_at: u8,
    },
    /// Any bytes as an RTP datagram.
    RawRtp {
        track: u8,
        datagram: Vec<u8>,
    },
    /// Any bytes as an RTCP datagram from a subscriber about a track.
    RawRtcp {
        track: u8,
        peer: u8,
        datagram: Vec<u8>,
    },
    /// A NACK built from its fields.
    Nack {
        track: u8,
        peer: u8,
        lost: Vec<u16>,
    },
    Pli {
        track: u8,
    },
    Tick {
        ms: u16,
    },
    /// The layer a subscriber should get (what the engine decides from its downlink).
    Layer {
        track: u8,
        peer: u8,
        layer: u8,
    },
}

/// The codec of a payload type, as a publisher's offer maps them (the engine drops
/// packets of any other payload type).
fn codec_of(pt: u8) -> Option<Codec> {
    match pt & 0x7f {
        96 | 120 => Some(Codec::Vp8),
        102 | 125 => Some(Codec::H264),
        111 => Some(Codec::Opus),
        63 => Some(Codec::Red),
        _ => None,
    }
}

/// What a payload type byte of the fuzzer becomes: mostly a known one.
fn pick_pt(pt: u8) -> u8 {
    [96, 102, 111, 120, 125, 97, 63][usize::from(pt) % 7]
}

/// A keyframe in each video codec, to make bursts start decodable.
fn keyframe_payload(codec: Codec) -> Vec<u8> {
    match codec {
        Codec::Vp8 => vec![0x10, 0x00, 0x9d, 0x01, 0x2a],
        Codec::H264 => vec![0x65, 0x88, 0x84],
        Codec::Opus => vec![0xfc, 0xff, 0xfe],
        Codec::Red => vec![0x6f, 0xfc, 0xff, 0xfe],
    }
}

fn delta_payload(codec: Codec) -> Vec<u8> {
    match codec {
        Codec::Vp8 => vec![0x10, 0x01, 0x00, 0x00],
        Codec::H264 => vec![0x41, 0x9a, 0x00],
        Codec::Opus => vec![0xfc, 0xff, 0xfe],
        Codec::Red => vec![0x6f, 0xfc, 0xff, 0xfe],
    }
}

/// One subscription, as the model sees it.
#[derive(Debug, Default)]
struct Sub {
    paused: bool,
    accepts: Option<CodecSet>,
    /// The next packet sent must be a keyframe (video) and continue the numbering.
    restart: bool,
    highest: Option<u16>,
    /// The first outgoing sequence number of the current run.
    run_start: Option<u16>,
    /// When each outgoing sequence number was last resent.
    resent_at: HashMap<u16, Instant>,
    /// The layer of the last packet it got, and that packet's outgoing timestamp.
    layer: Option<Layer>,
    timestamp: Option<u32>,
}

impl Sub {
    fn accepts(&self, codec: Codec) -> bool {
        !codec.is_video()
            || self
                .accepts
                .unwrap_or_else(CodecSet::all_video)
                .contains(codec)
    }
}

#[derive(Debug)]
struct Track {
    publisher: u8,
    video: bool,
    /// The codec of each layer's last packet.
    codec: HashMap<Layer, Codec>,
    subs: HashMap<u8, Sub>,
}

struct World {
    f: Forwarder<Bytes, u8>,
    now: Instant,
    tracks: HashMap<u8, Track>,
}

impl World {
    fn rtp(&mut self, track: u8, raw: Bytes) {
        let Ok(packet) = rtc::rtp::packet::Packet::unmarshal(&mut raw.clone()) else {
            return;
        };
        let Some(codec) = codec_of(packet.header.payload_type) else {
            return;
        };
        // Each SSRC a layer, as the engine maps a simulcast track's rids (the packets the
        // fuzzer builds are all of layer 0).
        let layer = (packet.header.ssrc % (MAX_LAYERS as u32 + 1)) as Layer;
        let meta = RtpMeta::of(
            packet.header.sequence_number,
            packet.header.timestamp,
            &packet.payload,
            codec,
            layer,
        );
        let vp8 = meta.vp8;
        // The layers each subscriber is meant to get, before the packet moves any.
        let targets: HashMap<u8, Layer> = self
            .tracks
            .get(&track)
            .map(|t| {
                t.subs
                    .keys()
                    .filter_map(|&p| {
                        let (target, _) =
                            self.f.layers_of(TrackId(track.into()), PeerId(p.into()))?;
                        Some((p, target))
                    })
                    .collect()
            })
            .unwrap_or_default();
        let model = self.tracks.get_mut(&track);
        let mut sent_to = Vec::new();
        let request = self
            .f
            .on_rtp(TrackId(track.into()), meta, raw, self.now, |fw| {
                let to = u8::try_from(fw.to.0).expect("a peer of ours");
                assert_eq!(*fw.route, to, "the route given when subscribing");
                assert_eq!(fw.codec, codec);
                if let Some(ids) = fw.vp8 {
                    // Only the numbering is rewritten, at its own width.
                    assert_eq!(
                        ids.picture_id.map(|p| p.wide),
                        vp8.picture_id.map(|p| p.wide)
                    );
                    assert_eq!(ids.tl0.is_some(), vp8.tl0.is_some());
                }
                sent_to.push((to, fw.seq, fw.timestamp));
            });
        let dropped = usize::from(layer) >= MAX_LAYERS;
        let Some(t) = model.filter(|t| !dropped && (t.video || layer == 0)) else {
            assert!(
                sent_to.is_empty(),
                "a packet of an unknown track was forwarded"
            );
            assert!(request.is_none());
            return;
        };
        // A codec switch restarts every video subscriber of that layer at the new codec's
        // keyframe.
        if t.video && t.codec.get(&layer).is_some_and(|c| *c != codec) {
            for s in t.subs.values_mut() {
                if s.layer == Some(layer) {
                    s.restart = true;
                }
            }
        }
        t.codec.insert(layer, codec);
        for (to, out, timestamp) in sent_to {
            assert_ne!(to, t.publisher, "a packet went back to its publisher");
            let Some(s) = t.subs.get_mut(&to) else {
                panic!("a packet went to {to}, who does not subscribe to {track}");
            };
            assert!(!s.paused, "a packet went to a paused subscriber");
            assert!(
                s.accepts(codec),
                "{codec:?} went to a subscriber that refused it"
            );
            let moved = s.layer.is_some_and(|l| l != layer);
            if moved {
                // A new layer: at its keyframe, never above the one it was given (a
                // subscriber waiting for a keyframe may start on a lower one), its
                // numbering going on and its timestamps forward.
                assert!(
                    meta.keyframe,
                    "moved to layer {layer} at a packet that is no keyframe"
                );
                assert!(
                    targets.get(&to).is_some_and(|t| layer <= *t),
                    "moved to layer {layer}, above the one it was given ({:?})",
                    targets.get(&to)
                );
                if let Some(before) = s.timestamp {
                    let ahead = timestamp.wrapping_sub(before);
                    assert!(ahead != 0 && ahead < 0x8000_0000, "the timestamp went back");
                }
                s.restart = true;
            }
            s.layer = Some(layer);
            s.timestamp = Some(timestamp);
            if s.restart {
                if t.video {
                    assert!(
                        meta.keyframe,
                        "a video run started at a packet that is no keyframe"
                    );
                }
                if let Some(h) = s.highest {
                    assert_eq!(out, h.wrapping_add(1), "the outgoing numbering jumped");
                }
                s.restart = false;
                s.run_start = Some(out);
            }
            if s.highest.is_none_or(|h| seq_after(out, h)) {
                s.highest = Some(out);
            }
        }
        if request.is_some() {
            assert!(t.video, "a keyframe asked for on audio");
        }
        assert_eq!(self.f.codec(TrackId(track.into())), Some(codec));
    }

    /// The core's idea of a subscriber's layers against the model's.
    fn layer(&mut self, track: u8, peer: u8, layer: Layer) {
        let request =
            self.f
                .set_target_layer(TrackId(track.into()), PeerId(peer.into()), layer, self.now);
        let Some(t) = self.tracks.get(&track) else {
            assert!(request.is_none(), "a keyframe asked for an unknown track");
            return;
        };
        match self.f.layers_of(TrackId(track.into()), PeerId(peer.into())) {
            None => assert!(!t.subs.contains_key(&peer), "a subscriber the core forgot"),
            Some((target, current)) => {
                assert!(
                    t.subs.contains_key(&peer),
                    "a subscriber the model never made"
                );
                assert!(usize::from(target) < MAX_LAYERS);
                assert!(target <= layer, "a target above the one given");
                if let Some(r) = request {
                    assert!(t.video, "a keyframe asked for on audio");
                    assert_eq!(r.layer, target, "a keyframe asked for of another layer");
                    assert_ne!(current, Some(target), "a keyframe asked for a layer it has");
                }
            }
        }
    }

    fn nack(&mut self, track: u8, peer: u8, lost: &[u16]) {
        let mut resent = Vec::new();
        // Each peer with its own round trip (some not measured yet), so its own interval.
        let interval =
            resend_interval((peer % 2 == 1).then(|| Duration::from_millis(20 * u64::from(peer))));
        let out = self.f.on_nack(
            TrackId(track.into()),
            PeerId(peer.into()),
            lost,
            self.now,
            interval,
            |fw| {
                resent.push((
                    u8::try_from(fw.to.0).expect("a peer of ours"),
                    fw.seq,
                    fw.codec,
                ));
            },
        );
        assert_eq!(out.resent, resent.len());
        assert!(
            out.resent + out.upstream.len() + out.refused <= lost.len(),
            "more repaired or refused than lost"
        );
        let now = self.now;
        let mut sub = self
            .tracks
            .get_mut(&track)
            .and_then(|t| t.subs.get_mut(&peer));
        for (to, seq, codec) in resent {
            assert_eq!(to, peer, "a retransmission went to someone who did not ask");
            assert!(lost.contains(&seq), "resent {seq}, which was not asked for");
            let s = sub
                .as_deref_mut()
                .expect("a retransmission for a non-subscriber");
            if let Some(at) = s.resent_at.insert(seq, now) {
                assert!(
                    now.duration_since(at) >= interval,
                    "{seq} resent twice within {interval:?}"
                );
            }
            assert!(
                s.accepts(codec),
                "resent {seq} in {codec:?}, which it refused"
            );
            // Only what the current run covers: from its start to the highest sent.
            let (start, highest) = (s.run_start.expect("a run"), s.highest.expect("a run"));
            assert!(
                seq == start || seq_after(seq, start),
                "resent {seq} from before the run at {start}"
            );
            assert!(
                seq == highest || seq_after(highest, seq),
                "resent {seq}, beyond {highest}"
            );
        }
    }
}

fn rtp_bytes(seq: u16, timestamp: u32, pt: u8, payload: &[u8]) -> Bytes {
    let packet = rtc::rtp::packet::Packet {
        header: rtc::rtp::header::Header {
            version: 2,
            payload_type: pt,
            sequence_number: seq,
            timestamp,
            ssrc: 0x1234_5678,
            ..Default::default()
        },
        payload: Bytes::copy_from_slice(payload),
    };
    packet
        .marshal()
        .expect("a packet with a small payload marshals")
        .freeze()
}

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `sfu/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
    // Read as libfuzzer-sys reads the input of a target that takes `Vec<Op>` (whose
    // size hint asks for no minimum length), so the committed inputs mean what they
    // meant to the fuzzer.
    let Ok(ops) = Vec::<Op>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    run(ops);
}

fn run(ops: Vec<Op>) {
    // Replaying a finding: `FUZZ_TRACE=1` prints the operations.
    if std::env::var_os("FUZZ_TRACE").is_some() {
        eprintln!("{ops:?}");
    }
    let mut w = World {
        f: Forwarder::default(),
        now: Instant::now(),
        tracks: HashMap::new(),
    };
    for op in ops.into_iter().take(400) {
        let now = w.now;
        match op {
            Op::AddTrack {
                track,
                publisher,
                video,
            } => {
                let (track, publisher) = (track % TRACKS, publisher % PEERS);
                let kind = if video {
                    MediaKind::Video
                } else {
                    MediaKind::Audio
                };
                w.f.add_track(TrackId(track.into()), PeerId(publisher.into()), kind);
                w.tracks.insert(
                    track,
                    Track {
                        publisher,
                        video,
                        codec: HashMap::new(),
                        subs: HashMap::new(),
                    },
                );
            }
            Op::RemoveTrack { track } => {
                let track = track % TRACKS;
                let mut was: Vec<u32> =
                    w.f.remove_track(TrackId(track.into()))
                        .iter()
                        .map(|p| p.0)
                        .collect();
                was.sort_unstable();
                let mut model: Vec<u32> = w
                    .tracks
                    .remove(&track)
                    .map(|t| t.subs.keys().map(|p| u32::from(*p)).collect())
                    .unwrap_or_default();
                model.sort_unstable();
                assert_eq!(was, model, "the subscribers a removed track had");
            }
            Op::RemovePeer { peer } => {
                let peer = peer % PEERS;
                let mut gone: Vec<u32> =
                    w.f.remove_peer(PeerId(peer.into()))
                        .iter()
                        .map(|t| t.0)
                        .collect();
                gone.sort_unstable();
                let mut model: Vec<u32> = w
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.publisher == peer)
                    .map(|(id, _)| u32::from(*id))
                    .collect();
                model.sort_unstable();
                assert_eq!(gone, model, "the tracks a departing peer published");
                w.tracks.retain(|_, t| t.publisher != peer);
                for t in w.tracks.values_mut() {
                    t.subs.remove(&peer);
                }
            }
            Op::Subscribe { track, peer } => {
                let (track, peer) = (track % TRACKS, peer % PEERS);
                let request =
                    w.f.subscribe(TrackId(track.into()), PeerId(peer.into()), peer, now);
                match w.tracks.get_mut(&track) {
                    Some(t) if t.publisher != peer && !t.subs.contains_key(&peer) => {
                        t.subs.insert(
                            peer,
                            Sub {
                                restart: true,
                                ..Sub::default()
                            },
                        );
                        if request.is_some() {
                            assert!(t.video);
                        }
                    }
                    _ => assert!(
                        request.is_none(),
                        "a keyframe asked for a refused subscription"
                    ),
                }
            }
            Op::Unsubscribe { track, peer } => {
                let (track, peer) = (track % TRACKS, peer % PEERS);
                w.f.unsubscribe(TrackId(track.into()), PeerId(peer.into()));
                if let Some(t) = w.tracks.get_mut(&track) {
                    t.subs.remove(&peer);
                }
            }
            Op::Pause { track, peer } => {
                let (track, peer) = (track % TRACKS, peer % PEERS);
                w.f.pause(TrackId(track.into()), PeerId(peer.into()));
                if let Some(s) = w.tracks.get_mut(&track).and_then(|t| t.subs.get_mut(&peer)) {
                    s.paused = true;
                }
            }
            Op::Resume { track, peer } => {
                let (track, peer) = (track % TRACKS, peer % PEERS);
                let _ = w.f.resume(TrackId(track.into()), PeerId(peer.into()), now);
                if let Some(s) = w.tracks.get_mut(&track).and_then(|t| t.subs.get_mut(&peer)) {
                    if s.paused {
                        s.paused = false;
                        s.restart = true;
                    }
                }
            }
            Op::Accept {
                track,
                peer,
                vp8,
                h264,
            } => {
                let (track, peer) = (track % TRACKS, peer % PEERS);
                let mut accepts = CodecSet::EMPTY;
                if vp8 {
                    accepts.insert(Codec::Vp8);
                }
                if h264 {
                    accepts.insert(Codec::H264);
                }
                let _ =
                    w.f.accept_codecs(TrackId(track.into()), PeerId(peer.into()), accepts, now);
                let target =
                    w.f.layers_of(TrackId(track.into()), PeerId(peer.into()))
                        .map(|(target, _)| target);
                if let Some(t) = w.tracks.get_mut(&track) {
                    // What counts is the codec of the layer it is meant to get.
                    let codec = target.and_then(|l| t.codec.get(&l).copied());
                    if let Some(s) = t.subs.get_mut(&peer) {
                        // Taking or refusing the current codec restarts the subscriber
                        // at its next keyframe.
                        let was = codec.map(|c| s.accepts(c));
                        s.accepts = Some(accepts);
                        if codec.is_some_and(|c| was != Some(s.accepts(c))) && !s.paused {
                            s.restart = true;
                        }
                    }
                }
            }
            Op::Rtp {
                track,
                seq,
                timestamp,
                pt,
                payload,
            } => {
                let raw = rtp_bytes(seq, timestamp, pick_pt(pt), &payload);
                w.rtp(track % TRACKS, raw);
            }
            Op::Burst {
                track,
                first,
                count,
                pt,
                keyframe_at,
            } => {
                let pt = pick_pt(pt);
                let Some(codec) = codec_of(pt) else { continue };
                for i in 0..count % 32 {
                    let payload = if i == keyframe_at % 32 {
                        keyframe_payload(codec)
                    } else {
                        delta_payload(codec)
                    };
                    let seq = first.wrapping_add(u16::from(i));
                    let raw = rtp_bytes(seq, u32::from(seq) * 3000, pt, &payload);
                    w.rtp(track % TRACKS, raw);
                }
            }
            Op::RawRtp { track, datagram } => w.rtp(track % TRACKS, Bytes::from(datagram)),
            Op::RawRtcp {
                track,
                peer,
                datagram,
            } => {
                let (track, peer) = (track % TRACKS, peer % PEERS);
                let mut raw = Bytes::from(datagram);
                let Ok(packets) = rtc::rtcp::packet::unmarshal(&mut raw) else {
                    continue;
                };
                for p in packets {
                    let any = p.as_any();
                    if let Some(nack) = any.downcast_ref::<TransportLayerNack>() {
                        let lost: Vec<u16> = nack
                            .nacks
                            .iter()
                            .flat_map(|pair| pair.packet_list())
                            .take(1024)
                            .collect();
                        w.nack(track, peer, &lost);
                    } else if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        if let Some(r) =
                            w.f.on_keyframe_request(TrackId(track.into()), PeerId(peer.into()), now)
                        {
                            assert_eq!(r.track, TrackId(track.into()));
                            assert!(w.tracks.get(&track).is_some_and(|t| t.video));
                        }
                    }
                }
            }
            Op::Nack { track, peer, lost } => {
                let lost: Vec<u16> = lost.into_iter().take(64).collect();
                w.nack(track % TRACKS, peer % PEERS, &lost);
            }
            Op::Pli { track } => {
                let track = track % TRACKS;
                // A subscriber asks (the first one the model knows of, or anyone).
                let peer = w
                    .tracks
                    .get(&track)
                    .and_then(|t| t.subs.keys().min().copied())
                    .unwrap_or(0);
                let ask = |w: &mut World| {
                    w.f.on_keyframe_request(TrackId(track.into()), PeerId(peer.into()), now)
                };
                let first = ask(&mut w);
                // However many ask, at most one request per interval.
                let second = ask(&mut w);
                assert!(second.is_none(), "two keyframe requests at once");
                if first.is_some() {
                    assert!(w.tracks.get(&track).is_some_and(|t| t.video));
                }
            }
            Op::Tick { ms } => w.now += Duration::from_millis(ms.into()),
            Op::Layer { track, peer, layer } => {
                w.layer(track % TRACKS, peer % PEERS, layer % (MAX_LAYERS as u8 + 1));
            }
        }
    }
}
