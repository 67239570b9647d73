//! RTP and RTCP from the network, parsed as the engine parses them, driving the forwarding
//! core with random subscriptions, pauses and departures. Whatever arrives: no panic;
//! packets go only to current subscribers other than the publisher; a NACK never resends
//! more packets than it named, and only to the subscriber who asked.
#![no_main]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use rtc::shared::marshal::Unmarshal;
use sfu::forward::{Forwarder, MediaKind, PeerId, RtpMeta, TrackId};

#[derive(Debug, Arbitrary)]
enum Op {
    AddTrack { track: u8, publisher: u8, video: bool },
    RemoveTrack { track: u8 },
    RemovePeer { peer: u8 },
    Subscribe { track: u8, peer: u8 },
    Unsubscribe { track: u8, peer: u8 },
    Pause { track: u8, peer: u8 },
    Resume { track: u8, peer: u8 },
    /// An RTP datagram for a track.
    Rtp { track: u8, keyframe: bool, datagram: Vec<u8> },
    /// An RTCP datagram from a subscriber about a track.
    Rtcp { track: u8, peer: u8, datagram: Vec<u8> },
    Tick { ms: u16 },
}

fuzz_target!(|ops: Vec<Op>| {
    let mut f: Forwarder<Bytes, u8> = Forwarder::default();
    let mut now = Instant::now();
    // Who subscribes to what, as the test believes it: (track, peer).
    let mut subscribed: HashMap<(u8, u8), ()> = HashMap::new();
    let mut publishers: HashMap<u8, u8> = HashMap::new();
    for op in ops.into_iter().take(300) {
        match op {
            Op::AddTrack { track, publisher, video } => {
                let kind = if video { MediaKind::Video } else { MediaKind::Audio };
                f.add_track(TrackId(track.into()), PeerId(publisher.into()), kind);
                subscribed.retain(|(t, _), _| *t != track);
                publishers.insert(track, publisher);
            }
            Op::RemoveTrack { track } => {
                f.remove_track(TrackId(track.into()));
                subscribed.retain(|(t, _), _| *t != track);
                publishers.remove(&track);
            }
            Op::RemovePeer { peer } => {
                let gone = f.remove_peer(PeerId(peer.into()));
                for t in gone {
                    let t = u8::try_from(t.0).expect("small");
                    publishers.remove(&t);
                    subscribed.retain(|(tr, _), _| *tr != t);
                }
                subscribed.retain(|(_, p), _| *p != peer);
            }
            Op::Subscribe { track, peer } => {
                f.subscribe(TrackId(track.into()), PeerId(peer.into()), peer, now);
                if publishers.get(&track).is_some_and(|p| *p != peer) {
                    subscribed.insert((track, peer), ());
                }
            }
            Op::Unsubscribe { track, peer } => {
                f.unsubscribe(TrackId(track.into()), PeerId(peer.into()));
                subscribed.remove(&(track, peer));
            }
            Op::Pause { track, peer } => f.pause(TrackId(track.into()), PeerId(peer.into())),
            Op::Resume { track, peer } => {
                let _ = f.resume(TrackId(track.into()), PeerId(peer.into()), now);
            }
            Op::Rtp { track, keyframe, datagram } => {
                let raw = Bytes::from(datagram);
                let Ok(packet) = rtc::rtp::packet::Packet::unmarshal(&mut raw.clone()) else {
                    continue;
                };
                let meta = RtpMeta {
                    seq: packet.header.sequence_number,
                    timestamp: packet.header.timestamp,
                    keyframe,
                };
                let publisher = publishers.get(&track).copied();
                f.on_rtp(TrackId(track.into()), meta, raw, now, |fw| {
                    let to = u8::try_from(fw.to.0).expect("small");
                    assert_ne!(Some(to), publisher, "a packet went back to its publisher");
                    assert!(subscribed.contains_key(&(track, to)), "to a non-subscriber");
                    assert_eq!(*fw.route, to);
                });
            }
            Op::Rtcp { track, peer, datagram } => {
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
                        let mut resent = 0;
                        let out = f.on_nack(TrackId(track.into()), PeerId(peer.into()), &lost, |fw| {
                            resent += 1;
                            assert_eq!(u8::try_from(fw.to.0).ok(), Some(peer));
                        });
                        assert_eq!(out.resent, resent);
                        assert!(out.resent + out.upstream.len() <= lost.len());
                    } else if any.downcast_ref::<PictureLossIndication>().is_some() {
                        let _ = f.on_keyframe_request(TrackId(track.into()), now);
                    }
                }
            }
            Op::Tick { ms } => now += Duration::from_millis(ms.into()),
        }
    }
});
