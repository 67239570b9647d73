use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::*;
use crate::codec::{Codec, CodecSet, Vp8Ids};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const PUB: PeerId = PeerId(1);
const VIDEO: TrackId = TrackId(10);
const AUDIO: TrackId = TrackId(11);

/// A raw RTP packet: 12-byte header with this seq and timestamp, then a payload byte.
fn packet(seq: u16, ts: u32) -> Bytes {
    let mut p = vec![0x80, 96];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&ts.to_be_bytes());
    p.extend_from_slice(&0x1234_5678u32.to_be_bytes());
    p.push(seq as u8);
    Bytes::from(p)
}

/// A VP8 packet's meta (the codec matters only to video).
fn meta(seq: u16, keyframe: bool) -> RtpMeta {
    meta_in(Codec::Vp8, seq, keyframe)
}

fn meta_in(codec: Codec, seq: u16, keyframe: bool) -> RtpMeta {
    RtpMeta {
        seq,
        timestamp: u32::from(seq) * 3000,
        keyframe,
        codec,
        layer: 0,
        vp8: Vp8Ids::default(),
        padding: false,
    }
}

/// Simulated time: a base instant plus milliseconds.
struct Clock(Instant);
impl Clock {
    fn at(&self, ms: u64) -> Instant {
        self.0 + Duration::from_millis(ms)
    }
}

/// In these tests a route is the subscriber's SSRC.
type TestForwarder = Forwarder<Bytes, u32>;

fn forwarder() -> TestForwarder {
    let mut f = TestForwarder::default();
    f.add_track(VIDEO, PUB, MediaKind::Video);
    f.add_track(AUDIO, PUB, MediaKind::Audio);
    f
}

/// Feeds one packet; returns (peer, out seq) of every forward.
fn feed(
    f: &mut TestForwarder,
    track: TrackId,
    seq: u16,
    keyframe: bool,
    now: Instant,
) -> (Vec<(PeerId, u16)>, Option<KeyframeRequest>) {
    let mut out = Vec::new();
    let req = f.on_rtp(
        track,
        meta(seq, keyframe),
        packet(seq, u32::from(seq) * 3000),
        now,
        |fw| {
            out.push((fw.to, fw.seq));
        },
    );
    (out, req)
}

#[test]
fn audio_flows_at_once_and_video_waits_for_a_keyframe_it_asks_for() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    assert_eq!(
        f.subscribe(AUDIO, sub, 0xA, clock.at(0)),
        None,
        "no keyframes for audio"
    );
    assert_eq!(
        f.subscribe(VIDEO, sub, 0xB, clock.at(0)),
        Some(KeyframeRequest {
            publisher: PUB,
            track: VIDEO,
            layer: 0,
        })
    );
    assert_eq!(
        feed(&mut f, AUDIO, 100, false, clock.at(1)).0,
        vec![(sub, 100)]
    );
    assert!(
        feed(&mut f, VIDEO, 500, false, clock.at(1)).0.is_empty(),
        "delta frame before keyframe is held back"
    );
    let (out, _) = feed(&mut f, VIDEO, 501, true, clock.at(2));
    assert_eq!(out, vec![(sub, 501)]);
    assert_eq!(
        feed(&mut f, VIDEO, 502, false, clock.at(3)).0,
        vec![(sub, 502)]
    );
    assert_eq!(f.forwarded(VIDEO, sub), 2);
}

#[test]
fn the_publisher_never_receives_its_own_tracks() {
    let mut f = forwarder();
    assert_eq!(f.subscribe(VIDEO, PUB, 1, Instant::now()), None);
    assert!(feed(&mut f, VIDEO, 1, true, Instant::now()).0.is_empty());
}

#[test]
fn forwards_carry_the_subscribers_ssrc_and_the_cached_packet() {
    let mut f = forwarder();
    let now = Instant::now();
    f.subscribe(AUDIO, PeerId(2), 0xDEAD, now);
    f.subscribe(AUDIO, PeerId(3), 0xBEEF, now);
    let mut seen = Vec::new();
    f.on_rtp(
        AUDIO,
        meta_in(Codec::Opus, 7, false),
        packet(7, 21_000),
        now,
        |fw| {
            seen.push((fw.to, *fw.route, fw.seq, fw.timestamp, fw.packet.clone()));
        },
    );
    assert_eq!(
        seen,
        vec![
            (PeerId(2), 0xDEAD, 7, 21_000, packet(7, 21_000)),
            (PeerId(3), 0xBEEF, 7, 21_000, packet(7, 21_000)),
        ]
    );
}

#[test]
fn keyframe_requests_are_throttled_per_track() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    assert!(f.subscribe(VIDEO, PeerId(2), 2, clock.at(0)).is_some());
    assert!(
        f.subscribe(VIDEO, PeerId(3), 3, clock.at(100)).is_none(),
        "second joiner within 500 ms"
    );
    assert!(
        f.on_keyframe_request(VIDEO, PeerId(2), clock.at(200))
            .is_none()
    );
    assert!(
        f.on_keyframe_request(VIDEO, PeerId(2), clock.at(499))
            .is_none()
    );
    assert!(
        f.on_keyframe_request(VIDEO, PeerId(2), clock.at(500))
            .is_some()
    );
    assert!(
        f.on_keyframe_request(AUDIO, PeerId(2), clock.at(5000))
            .is_none(),
        "audio has no keyframes"
    );
}

#[test]
fn a_waiting_subscriber_asks_again_while_delta_frames_flow() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    f.subscribe(VIDEO, PeerId(2), 2, clock.at(0));
    // The publisher ignored the first request: packets keep coming without a keyframe.
    let mut requests = 0;
    for (i, ms) in (0..100u16).zip((0..).step_by(20)) {
        if feed(&mut f, VIDEO, i, false, clock.at(ms)).1.is_some() {
            requests += 1;
        }
    }
    // 2 s of packets: one request every 500 ms after the one made on subscribing (at 0),
    // not one per packet.
    assert_eq!(requests, 3);
}

#[test]
fn nacks_are_answered_from_the_cache_and_missing_packets_go_upstream() {
    let now = Instant::now();
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, now);
    feed(&mut f, VIDEO, 1000, true, now);
    for seq in 1001..1010 {
        if seq != 1005 {
            feed(&mut f, VIDEO, seq, false, now); // 1005 never reached the SFU
        }
    }
    let mut resent = Vec::new();
    let outcome = f.on_nack(
        VIDEO,
        sub,
        &[1003, 1005, 999, 1020],
        now,
        RESEND_INTERVAL,
        |fw| resent.push((fw.seq, fw.packet.clone(), fw.timestamp)),
    );
    assert_eq!(resent, vec![(1003, packet(1003, 3_009_000), 3_009_000)]);
    assert_eq!(
        outcome,
        NackOutcome {
            resent: 1,
            upstream: vec![1005],
            refused: 0,
            layer: 0,
        },
        "999 predates the subscription, 1020 was never sent"
    );
    // Asked again within RESEND_MAX_AGE: not upstream again; after it, again.
    let again = |f: &mut TestForwarder, peer, at| {
        f.on_nack(VIDEO, peer, &[1005], at, RESEND_INTERVAL, |_| {})
    };
    assert!(
        again(&mut f, sub, now + RESEND_INTERVAL)
            .upstream
            .is_empty()
    );
    let later = now + RESEND_MAX_AGE;
    assert_eq!(again(&mut f, sub, later).upstream, vec![1005]);
    assert_eq!(
        f.on_nack(VIDEO, PeerId(9), &[1003], now, RESEND_INTERVAL, |_| {}),
        NackOutcome::default(),
        "not a subscriber"
    );
}

/// A browser NACKs a missing packet again every round trip until it comes: the SFU
/// resends it at most once per RESEND_INTERVAL, and not at all once it is older than
/// RESEND_MAX_AGE (too late to be played).
#[test]
fn a_packet_is_resent_once_per_interval_and_not_when_too_old() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, clock.at(0));
    for seq in 0..10 {
        feed(&mut f, VIDEO, seq, seq == 0, clock.at(u64::from(seq)));
    }
    let nack = |f: &mut TestForwarder, at: u64| {
        f.on_nack(VIDEO, sub, &[5], clock.at(at), RESEND_INTERVAL, |_| {})
    };
    assert_eq!((nack(&mut f, 20).resent, nack(&mut f, 20).refused), (1, 1));
    assert_eq!(
        nack(&mut f, 60).refused,
        1,
        "40 ms after the resend: asked too soon"
    );
    assert_eq!(nack(&mut f, 125).resent, 1, "105 ms after: resent again");
    assert_eq!(nack(&mut f, 226).resent, 1);
    // Packet 5 came at 5 ms: a NACK 1 s later is refused, however long since the last.
    assert_eq!(
        f.on_nack(VIDEO, sub, &[5], clock.at(1_006), RESEND_INTERVAL, |_| {}),
        NackOutcome {
            resent: 0,
            upstream: vec![],
            refused: 1,
            layer: 0,
        }
    );
    // Each subscriber has its own: another one gets its first resend of 5 now.
    let other = PeerId(3);
    f.subscribe(VIDEO, other, 3, clock.at(0));
    feed(&mut f, VIDEO, 10, true, clock.at(300));
    feed(&mut f, VIDEO, 11, false, clock.at(301));
    assert_eq!(
        f.on_nack(VIDEO, other, &[10], clock.at(310), RESEND_INTERVAL, |_| {})
            .resent,
        1
    );
    assert_eq!(
        f.on_nack(VIDEO, sub, &[10], clock.at(310), RESEND_INTERVAL, |_| {})
            .resent,
        1
    );
}

/// The interval between two resends of a packet follows the subscriber's round trip: on a
/// 20 ms path a NACK repeated 16 ms after the first resend is answered (its retransmission
/// was lost), one repeated 10 ms after is not; unknown, 100 ms; bounded both ways.
#[test]
fn the_interval_between_resends_follows_the_round_trip() {
    assert_eq!(resend_interval(None), RESEND_INTERVAL);
    assert_eq!(resend_interval(Some(ms(20))), ms(15));
    assert_eq!(resend_interval(Some(ms(200))), ms(150));
    assert_eq!(resend_interval(Some(ms(1))), RESEND_INTERVAL_MIN);
    assert_eq!(resend_interval(Some(ms(2_000))), RESEND_INTERVAL_MAX);

    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, clock.at(0));
    for seq in 0..10 {
        feed(&mut f, VIDEO, seq, seq == 0, clock.at(u64::from(seq)));
    }
    let interval = resend_interval(Some(ms(20)));
    let nack = |f: &mut TestForwarder, at: u64| {
        let o = f.on_nack(VIDEO, sub, &[5], clock.at(at), interval, |_| {});
        (o.resent, o.refused)
    };
    assert_eq!(nack(&mut f, 20), (1, 0));
    assert_eq!(nack(&mut f, 30), (0, 1), "10 ms after the resend: too soon");
    assert_eq!(nack(&mut f, 36), (1, 0), "16 ms after: resent again");
}

/// A subscriber whose link drops most packets (full) NACKs nearly everything: the SFU
/// resends at most half of what it forwards to it, after a first burst, instead of
/// adding every NACK to what overflows the link.
#[test]
fn retransmissions_are_at_most_half_of_what_is_forwarded_after_a_burst() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, clock.at(0));
    let mut resent = 0usize;
    let mut refused = 0usize;
    // 2 s of 200 packets a second; every 10 ms the subscriber NACKs the last 20.
    for i in 0..400u16 {
        let now = clock.at(u64::from(i) * 5);
        feed(&mut f, VIDEO, i, i == 0, now);
        if i % 2 == 1 && i >= 20 {
            let lost: Vec<u16> = (i - 19..=i).collect();
            let o = f.on_nack(VIDEO, sub, &lost, now, RESEND_INTERVAL, |_| {});
            resent += o.resent;
            refused += o.refused;
        }
    }
    assert!(
        resent <= 400 / 2 + usize::from(RESEND_BURST),
        "{resent} resent for 400 forwarded"
    );
    assert!(
        resent >= 400 / 2 - 10,
        "the budget is used: {resent} resent"
    );
    assert!(refused > resent, "{refused} refused, {resent} resent");
}

/// A subscriber back after an outage: its video waits for a keyframe (asked for once,
/// however many videos), its numbering continues after what was sent, its audio and the
/// other subscribers are untouched.
#[test]
fn a_peer_back_after_an_outage_restarts_its_video_at_a_keyframe() {
    let now = Instant::now();
    let mut f = forwarder();
    let (sub, other) = (PeerId(2), PeerId(3));
    for p in [sub, other] {
        f.subscribe(VIDEO, p, p.0, now);
        f.subscribe(AUDIO, p, 10 + p.0, now);
    }
    feed(&mut f, VIDEO, 100, true, now);
    feed(&mut f, VIDEO, 101, false, now);
    let later = now + Duration::from_secs(2);
    let mut asked = Vec::new();
    f.restart_peer(sub, later, |r| asked.push(r));
    assert_eq!(
        asked,
        [KeyframeRequest {
            publisher: PUB,
            track: VIDEO,
            layer: 0,
        }]
    );
    // A delta frame goes to the other subscriber only; the keyframe to both, continuing
    // the restarted one's numbering (101 was its last).
    assert_eq!(feed(&mut f, VIDEO, 102, false, later).0, [(other, 102)]);
    assert_eq!(
        feed(&mut f, VIDEO, 103, true, later).0,
        [(sub, 102), (other, 103)]
    );
    assert_eq!(
        feed(&mut f, AUDIO, 7, false, later).0.len(),
        2,
        "audio untouched"
    );
    // Not forwarding yet (it never got a keyframe): nothing to restart, nothing asked.
    let late = PeerId(4);
    f.subscribe(VIDEO, late, 4, later);
    let mut none = Vec::new();
    f.restart_peer(late, later + Duration::from_secs(1), |r| none.push(r));
    assert!(none.is_empty());
}

/// A publisher back after an outage with no gap in its numbering (its browser held what
/// it could not send): its subscribers still restart at a keyframe, asked for once.
#[test]
fn a_track_back_after_an_outage_restarts_its_subscribers_at_a_keyframe() {
    let now = Instant::now();
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, now);
    f.subscribe(AUDIO, sub, 12, now);
    feed(&mut f, VIDEO, 10, true, now);
    let later = now + Duration::from_secs(2);
    let mut asked = Vec::new();
    f.restart_track(VIDEO, later, |r| asked.push(r));
    assert_eq!(
        asked,
        [KeyframeRequest {
            publisher: PUB,
            track: VIDEO,
            layer: 0,
        }]
    );
    f.restart_track(AUDIO, later, |r| panic!("audio needs no keyframe: {r:?}"));
    assert!(feed(&mut f, VIDEO, 11, false, later).0.is_empty());
    assert_eq!(feed(&mut f, VIDEO, 12, true, later).0, [(sub, 11)]);
}

#[test]
fn a_paused_video_resumes_at_a_keyframe_without_a_gap_in_numbering() {
    let now = Instant::now();
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, now);
    feed(&mut f, VIDEO, 10, true, now);
    feed(&mut f, VIDEO, 11, false, now);
    f.pause(VIDEO, sub);
    for seq in 12..40 {
        assert!(feed(&mut f, VIDEO, seq, seq == 20, now).0.is_empty());
    }
    assert!(
        f.resume(VIDEO, sub, now + Duration::from_secs(1)).is_some(),
        "asks for a keyframe"
    );
    assert!(feed(&mut f, VIDEO, 40, false, now).0.is_empty());
    assert_eq!(
        feed(&mut f, VIDEO, 41, true, now).0,
        vec![(sub, 12)],
        "continues at 12 after 11"
    );
    assert_eq!(feed(&mut f, VIDEO, 42, false, now).0, vec![(sub, 13)]);
    // A NACK of 12 is packet 41; of 11 (before the pause) is stale.
    let mut resent = Vec::new();
    let o = f.on_nack(VIDEO, sub, &[12, 11], now, RESEND_INTERVAL, |fw| {
        resent.push((fw.seq, fw.packet[12]))
    });
    assert_eq!((o.resent, resent), (1, vec![(12, 41)]));
    // A late packet from before the restart is not sent.
    assert!(feed(&mut f, VIDEO, 39, false, now).0.is_empty());
}

#[test]
fn numbering_survives_the_wrap_at_65535() {
    let now = Instant::now();
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, now);
    let seqs: Vec<u16> = (65_530..=65_535).chain(0..5).collect();
    let mut out = Vec::new();
    for (i, s) in seqs.iter().enumerate() {
        out.extend(
            feed(&mut f, VIDEO, *s, i == 0, now)
                .0
                .into_iter()
                .map(|(_, s)| s),
        );
    }
    assert_eq!(out, seqs);
    let o = f.on_nack(VIDEO, sub, &[65_535, 2], now, RESEND_INTERVAL, |_| {});
    assert_eq!(o.resent, 2);
}

#[test]
fn removing_a_peer_removes_its_tracks_and_subscriptions() {
    let now = Instant::now();
    let mut f = forwarder();
    f.add_track(TrackId(20), PeerId(2), MediaKind::Audio);
    f.subscribe(TrackId(20), PUB, 5, now);
    f.subscribe(AUDIO, PeerId(2), 6, now);
    let mut gone = f.remove_peer(PeerId(2));
    gone.sort();
    assert_eq!(gone, vec![TrackId(20)]);
    assert!(f.track(TrackId(20)).is_none());
    assert!(
        feed(&mut f, AUDIO, 1, false, now).0.is_empty(),
        "no longer subscribed"
    );
    assert_eq!(f.remove_track(VIDEO), Vec::<PeerId>::new());
}

/// A publisher sends 3000 video packets at 100/s through lossy links to 4 subscribers.
/// Every 20 ms each subscriber NACKs what it is missing; the SFU resends from its cache or
/// NACKs the publisher, who resends. In the end every subscriber has every packet from its
/// first keyframe on, and most repairs came from the SFU's cache, not the publisher.
#[test]
fn over_lossy_links_every_subscriber_ends_up_with_every_packet() {
    let clock = Clock(Instant::now());
    let mut rng = StdRng::seed_from_u64(7);
    let mut f = forwarder();
    let subs = [PeerId(2), PeerId(3), PeerId(4), PeerId(5)];
    for (i, s) in subs.iter().enumerate() {
        f.subscribe(VIDEO, *s, 100 + i as u32, clock.at(0));
    }
    const UPLINK_LOSS: f64 = 0.02;
    const DOWNLINK_LOSS: f64 = 0.05;
    let mut received: BTreeMap<PeerId, BTreeSet<u16>> =
        subs.iter().map(|s| (*s, BTreeSet::new())).collect();
    let mut upstream_nacks = 0usize;
    let mut cache_repairs = 0usize;
    let total: u16 = 3000;
    let first: u16 = 65_000; // crosses the wrap
    let mut pending_upstream: Vec<u16> = Vec::new();
    for i in 0..total + 50 {
        let now = clock.at(u64::from(i) * 10);
        // The publisher resends what the SFU NACKed upstream (it has everything).
        for seq in std::mem::take(&mut pending_upstream) {
            f.on_rtp(VIDEO, meta(seq, false), packet(seq, 0), now, |fw| {
                if !rng.random_bool(DOWNLINK_LOSS) {
                    received.get_mut(&fw.to).unwrap().insert(fw.seq);
                }
            });
        }
        if i < total {
            let seq = first.wrapping_add(i);
            if i == 0 || !rng.random_bool(UPLINK_LOSS) {
                f.on_rtp(VIDEO, meta(seq, i == 0), packet(seq, 0), now, |fw| {
                    if !rng.random_bool(DOWNLINK_LOSS) {
                        received.get_mut(&fw.to).unwrap().insert(fw.seq);
                    }
                });
            }
        }
        if i % 2 == 1 {
            // Packets sent in the last 30 ms may still be in flight; after the end, all count.
            let newest = first.wrapping_add(if i < total {
                i.saturating_sub(3)
            } else {
                total - 1
            });
            for s in subs {
                let have = &received[&s];
                let lost: Vec<u16> = (0..=newest.wrapping_sub(first))
                    .map(|k| first.wrapping_add(k))
                    .filter(|seq| !have.contains(seq))
                    .collect();
                let outcome = f.on_nack(VIDEO, s, &lost, now, RESEND_INTERVAL, |fw| {
                    if !rng.random_bool(DOWNLINK_LOSS) {
                        received.get_mut(&fw.to).unwrap().insert(fw.seq);
                    }
                });
                cache_repairs += outcome.resent;
                upstream_nacks += outcome.upstream.len();
                for seq in outcome.upstream {
                    if !pending_upstream.contains(&seq) {
                        pending_upstream.push(seq);
                    }
                }
            }
        }
    }
    for s in subs {
        let have = &received[&s];
        assert_eq!(
            have.len(),
            usize::from(total),
            "{s:?} is missing {} packets",
            usize::from(total) - have.len()
        );
    }
    assert!(
        cache_repairs > upstream_nacks * 2,
        "cache repairs {cache_repairs}, upstream NACKs {upstream_nacks}"
    );
}

/// Feeds one video packet in `codec`; returns (peer, out seq, codec) of every forward.
fn feed_codec(
    f: &mut TestForwarder,
    codec: Codec,
    seq: u16,
    keyframe: bool,
    now: Instant,
) -> (Vec<(PeerId, u16, Codec)>, Option<KeyframeRequest>) {
    let mut out = Vec::new();
    let req = f.on_rtp(
        VIDEO,
        meta_in(codec, seq, keyframe),
        packet(seq, u32::from(seq) * 3000),
        now,
        |fw| out.push((fw.to, fw.seq, fw.codec)),
    );
    (out, req)
}

#[test]
fn a_codec_switch_restarts_every_subscriber_at_the_new_codecs_keyframe_without_a_gap() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 1, clock.at(0));
    feed_codec(&mut f, Codec::H264, 10, true, clock.at(0));
    assert_eq!(
        feed_codec(&mut f, Codec::H264, 11, false, clock.at(1)).0,
        [(sub, 11, Codec::H264)]
    );
    // The publisher renegotiated: VP8 from seq 12 on, its keyframe at 14.
    let (out, req) = feed_codec(&mut f, Codec::Vp8, 12, false, clock.at(600));
    assert!(out.is_empty(), "a VP8 delta frame cannot be decoded yet");
    assert_eq!(
        req,
        Some(KeyframeRequest {
            publisher: PUB,
            track: VIDEO,
            layer: 0,
        })
    );
    assert!(
        feed_codec(&mut f, Codec::Vp8, 13, false, clock.at(601))
            .0
            .is_empty()
    );
    assert_eq!(
        feed_codec(&mut f, Codec::Vp8, 14, true, clock.at(602)).0,
        [(sub, 12, Codec::Vp8)],
        "the new run continues the subscriber's numbering"
    );
    assert_eq!(
        feed_codec(&mut f, Codec::Vp8, 15, false, clock.at(603)).0,
        [(sub, 13, Codec::Vp8)]
    );
}

#[test]
fn a_subscriber_gets_only_the_codecs_it_accepts_and_asks_no_keyframes_for_the_others() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let (both, vp8_only) = (PeerId(2), PeerId(3));
    let vp8: CodecSet = [Codec::Vp8].into_iter().collect();
    f.subscribe(VIDEO, both, 1, clock.at(0));
    f.subscribe(VIDEO, vp8_only, 2, clock.at(0));
    assert_eq!(f.accept_codecs(VIDEO, vp8_only, vp8, clock.at(0)), None);
    // H264 flows to the one that accepts it only; once it is forwarding nobody waits.
    assert_eq!(
        feed_codec(&mut f, Codec::H264, 1, true, clock.at(0)).0,
        [(both, 1, Codec::H264)]
    );
    let (out, req) = feed_codec(&mut f, Codec::H264, 2, false, clock.at(1000));
    assert_eq!(out, [(both, 2, Codec::H264)]);
    assert_eq!(
        req, None,
        "no keyframe for a subscriber that cannot decode H264"
    );
    // The publisher switches to VP8: both get it from its keyframe on.
    let (out, _) = feed_codec(&mut f, Codec::Vp8, 3, true, clock.at(2000));
    assert_eq!(out, [(both, 3, Codec::Vp8), (vp8_only, 3, Codec::Vp8)]);
    // NACKs are answered in the codec the packet was sent in.
    let mut resent = Vec::new();
    let outcome = f.on_nack(
        VIDEO,
        vp8_only,
        &[3],
        clock.at(2000),
        RESEND_INTERVAL,
        |fw| resent.push((fw.seq, fw.codec)),
    );
    assert_eq!(outcome.resent, 1);
    assert_eq!(resent, [(3, Codec::Vp8)]);
}

#[test]
fn accepting_the_current_codec_later_starts_at_a_keyframe_asked_for_then() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    let vp8: CodecSet = [Codec::Vp8].into_iter().collect();
    f.subscribe(VIDEO, sub, 1, clock.at(0));
    f.accept_codecs(VIDEO, sub, vp8, clock.at(0));
    assert!(
        feed_codec(&mut f, Codec::H264, 1, true, clock.at(0))
            .0
            .is_empty()
    );
    assert_eq!(
        f.accept_codecs(VIDEO, sub, CodecSet::all_video(), clock.at(1000)),
        Some(KeyframeRequest {
            publisher: PUB,
            track: VIDEO,
            layer: 0,
        })
    );
    assert!(
        feed_codec(&mut f, Codec::H264, 2, false, clock.at(1001))
            .0
            .is_empty()
    );
    assert_eq!(
        feed_codec(&mut f, Codec::H264, 3, true, clock.at(1002)).0,
        [(sub, 3, Codec::H264)]
    );
    // And taking it away stops it at once.
    f.accept_codecs(VIDEO, sub, vp8, clock.at(1003));
    assert!(
        feed_codec(&mut f, Codec::H264, 4, false, clock.at(1004))
            .0
            .is_empty()
    );
}

/// Found by the `forward_rtp_rtcp` fuzz target: a new audio subscriber was put straight
/// into forwarding with its run starting at sequence number 0, so a publisher whose
/// numbers were in the upper half (browsers start at a random one) sent it nothing until
/// they wrapped, and a NACK could be answered from before its first packet.
#[test]
fn audio_reaches_a_new_subscriber_whatever_the_sequence_numbers() {
    for first in [0u16, 1, 32_767, 32_768, 40_000, 65_535] {
        let mut f: Forwarder<Bytes, u32> = Forwarder::default();
        let now = Instant::now();
        f.add_track(TrackId(1), PeerId(1), MediaKind::Audio);
        f.subscribe(TrackId(1), PeerId(2), 2, now);
        let mut sent = Vec::new();
        for i in 0..3u16 {
            let seq = first.wrapping_add(i);
            let meta = RtpMeta {
                seq,
                timestamp: u32::from(i) * 960,
                keyframe: false,
                codec: Codec::Opus,
                layer: 0,
                vp8: Vp8Ids::default(),
                padding: false,
            };
            f.on_rtp(TrackId(1), meta, Bytes::from_static(b"opus"), now, |fw| {
                sent.push(fw.seq)
            });
        }
        assert_eq!(sent.len(), 3, "first seq {first}: {sent:?}");
        // A NACK for a number before its first packet is not answered.
        let before = sent[0].wrapping_sub(5);
        let out = f.on_nack(
            TrackId(1),
            PeerId(2),
            &[before],
            now,
            RESEND_INTERVAL,
            |_| panic!("resent {before}"),
        );
        assert_eq!(out.resent, 0);
    }
}

/// Found by the `forward_rtp_rtcp` fuzz target: a publisher that used a sequence number
/// again in another codec left that packet in the cache, and a NACK for the number was
/// answered with it, in a codec the subscriber had refused.
#[test]
fn a_nack_is_never_answered_in_a_codec_the_subscriber_refused() {
    let mut f: Forwarder<Bytes, u32> = Forwarder::default();
    let now = Instant::now();
    f.add_track(TrackId(1), PeerId(1), MediaKind::Video);
    f.subscribe(TrackId(1), PeerId(2), 2, now);
    f.accept_codecs(
        TrackId(1),
        PeerId(2),
        [Codec::Vp8].into_iter().collect(),
        now,
    );
    let meta = |seq, keyframe, codec| RtpMeta {
        seq,
        timestamp: 0,
        layer: 0,
        vp8: Vp8Ids::default(),
        keyframe,
        codec,
        padding: false,
    };
    let mut sent = Vec::new();
    for (seq, key, codec) in [
        (10, true, Codec::Vp8),
        (11, false, Codec::Vp8),
        (11, true, Codec::H264),
    ] {
        f.on_rtp(
            TrackId(1),
            meta(seq, key, codec),
            Bytes::from_static(b"x"),
            now,
            |fw| sent.push((fw.seq, fw.codec)),
        );
    }
    assert_eq!(sent.len(), 2, "{sent:?}");
    let mut resent = Vec::new();
    f.on_nack(
        TrackId(1),
        PeerId(2),
        &[sent[1].0],
        now,
        RESEND_INTERVAL,
        |fw| resent.push(fw.codec),
    );
    assert!(resent.iter().all(|c| *c == Codec::Vp8), "{resent:?}");
}

/// A publisher's path cut for a while: its packets come back with some missing. Video
/// subscribers wait for a keyframe, asked for at once and again while they wait, and go
/// on with no hole in their numbering; audio goes on at once.
#[test]
fn video_back_after_a_gap_with_losses_restarts_at_a_keyframe_asked_for_at_once() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, clock.at(0));
    f.subscribe(AUDIO, sub, 3, clock.at(0));
    feed(&mut f, VIDEO, 100, true, clock.at(0));
    feed(&mut f, VIDEO, 101, false, clock.at(30));
    feed(&mut f, AUDIO, 7, false, clock.at(30));
    // 3 s later: 102..=199 never arrived.
    let (out, req) = feed(&mut f, VIDEO, 200, false, clock.at(3_030));
    assert!(out.is_empty(), "an undecodable delta frame is held back");
    assert_eq!(
        req.map(|r| r.track),
        Some(VIDEO),
        "a keyframe is asked for at once"
    );
    let (out, req) = feed(&mut f, VIDEO, 201, false, clock.at(3_100));
    assert!(out.is_empty() && req.is_none(), "one request per interval");
    let (_, req) = feed(&mut f, VIDEO, 202, false, clock.at(3_540));
    assert!(req.is_some(), "asked again while waiting");
    assert_eq!(
        feed(&mut f, AUDIO, 150, false, clock.at(3_030)).0,
        vec![(sub, 150)],
        "audio goes on"
    );
    assert_eq!(
        feed(&mut f, VIDEO, 203, true, clock.at(3_600)).0,
        vec![(sub, 102)],
        "the keyframe follows 101 with no hole"
    );
    assert_eq!(
        feed(&mut f, VIDEO, 204, false, clock.at(3_630)).0,
        vec![(sub, 103)]
    );
}

/// A gap with nothing lost (the publisher sent nothing: a paused encoder, a still screen)
/// and a gap that comes back with a keyframe both go on at once, with no request.
#[test]
fn a_gap_without_losses_or_ending_at_a_keyframe_goes_on_at_once() {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, clock.at(0));
    feed(&mut f, VIDEO, 100, true, clock.at(0));
    assert_eq!(
        feed(&mut f, VIDEO, 101, false, clock.at(2_000)),
        (vec![(sub, 101)], None),
        "nothing lost in 2 s of silence"
    );
    assert_eq!(
        feed(&mut f, VIDEO, 150, true, clock.at(4_000)),
        (vec![(sub, 102)], None),
        "back with a keyframe after losses"
    );
    // A late packet after a gap restarts nothing.
    assert_eq!(
        feed(&mut f, VIDEO, 120, false, clock.at(6_000)),
        (vec![], None)
    );
    assert_eq!(
        feed(&mut f, VIDEO, 151, false, clock.at(6_010)),
        (vec![(sub, 103)], None)
    );
}

/// A forwarder whose video's two layers have each sent a keyframe, at time 0 of `Clock`.
fn both_layers_arriving() -> (Clock, TestForwarder) {
    let clock = Clock(Instant::now());
    let mut f = forwarder();
    feed_layer(&mut f, 0, 0, 0, true, clock.at(0));
    feed_layer(&mut f, 1, 0, 0, true, clock.at(0));
    (clock, f)
}

/// A VP8 packet of simulcast `layer`: the layer's own numbering (sequence, timestamp,
/// 15-bit picture ID and TL0PICIDX), as a browser sends each layer.
fn layer_packet(layer: Layer, frame: u16, seq: u16, keyframe: bool) -> (RtpMeta, Bytes) {
    let base = [(1_000u16, 50_000u32, 300u16), (30_000, 900_000, 20_000)][usize::from(layer)];
    let picture = (base.2 + frame) & 0x7fff;
    let ids = Vp8Ids {
        picture_id: Some(PictureId {
            value: picture,
            wide: true,
        }),
        tl0: Some(frame as u8),
    };
    let meta = RtpMeta {
        seq: base.0.wrapping_add(seq),
        timestamp: base.1.wrapping_add(u32::from(frame) * 3_000),
        keyframe,
        codec: Codec::Vp8,
        layer,
        vp8: ids,
        padding: false,
    };
    let [hi, lo] = picture.to_be_bytes();
    let s_bit = if keyframe { 0x10 } else { 0 };
    let payload = vec![0x80 | s_bit, 0xc0, 0x80 | hi, lo, frame as u8, 0x00];
    (meta, Bytes::from(payload))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Out {
    to: PeerId,
    seq: u16,
    timestamp: u32,
    picture: Option<u16>,
    tl0: Option<u8>,
}

fn feed_layer(
    f: &mut TestForwarder,
    layer: Layer,
    frame: u16,
    seq: u16,
    keyframe: bool,
    now: Instant,
) -> (Vec<Out>, Option<KeyframeRequest>) {
    let (meta, payload) = layer_packet(layer, frame, seq, keyframe);
    let mut out = Vec::new();
    let req = f.on_rtp(VIDEO, meta, payload, now, |fw| {
        let ids = fw.vp8.unwrap_or(meta.vp8);
        out.push(Out {
            to: fw.to,
            seq: fw.seq,
            timestamp: fw.timestamp,
            picture: ids.picture_id.map(|p| p.value),
            tl0: ids.tl0,
        });
    });
    (out, req)
}

#[test]
fn a_subscriber_moves_between_simulcast_layers_at_a_keyframe_as_one_stream() {
    let (clock, mut f) = both_layers_arriving();
    let (low, high) = (PeerId(2), PeerId(3));
    // Both layers arrive; both subscribers start on the best (1), at its keyframe.
    assert_eq!(
        f.subscribe(VIDEO, low, 2, clock.at(10)).map(|r| r.layer),
        Some(1)
    );
    f.subscribe(VIDEO, high, 3, clock.at(10));
    let mut seq = [1u16, 1];
    let mut frame = 1;
    let t = 600;
    // Layer 1's keyframe starts both; then delta frames.
    for (layer, keyframe) in [(1, true), (0, false), (1, false)] {
        let (out, _) = feed_layer(
            &mut f,
            layer,
            frame,
            seq[usize::from(layer)],
            keyframe,
            clock.at(t),
        );
        seq[usize::from(layer)] += 1;
        if layer == 1 {
            assert_eq!(out.len(), 2, "both get layer 1: {out:?}");
        } else {
            assert!(out.is_empty(), "nobody gets layer 0: {out:?}");
        }
    }
    assert_eq!(f.layers_of(VIDEO, low), Some((1, Some(1))));
    // The weak one is moved down: a keyframe of layer 0 is asked for at once.
    let asked = f.set_target_layer(VIDEO, low, 0, clock.at(700));
    assert_eq!(asked.map(|r| r.layer), Some(0));
    assert_eq!(
        f.layers_of(VIDEO, low),
        Some((0, Some(1))),
        "still on 1 until then"
    );
    // Until layer 0's keyframe it keeps layer 1 (and asks again for layer 0, throttled).
    frame += 1;
    let (out, _) = feed_layer(&mut f, 1, frame, seq[1], false, clock.at(733));
    seq[1] += 1;
    assert_eq!(out.len(), 2);
    let last_low = *out.iter().find(|o| o.to == low).unwrap();
    let (out, req) = feed_layer(&mut f, 0, frame, seq[0], false, clock.at(734));
    seq[0] += 1;
    assert!(out.is_empty() && req.is_none(), "throttled: {req:?}");
    // Layer 0's keyframe: it moves, its numbering going on from what it had.
    frame += 1;
    let (out, _) = feed_layer(&mut f, 0, frame, seq[0], true, clock.at(766));
    seq[0] += 1;
    assert_eq!(out.len(), 1);
    let first = out[0];
    assert_eq!(first.to, low);
    assert_eq!(first.seq, last_low.seq.wrapping_add(1), "no gap, no repeat");
    assert_eq!(
        first.timestamp.wrapping_sub(last_low.timestamp),
        33 * 90,
        "timestamps go on by the time between the two packets (33 ms at 90 kHz)"
    );
    assert_eq!(first.picture, last_low.picture.map(|p| (p + 1) & 0x7fff));
    assert_eq!(first.tl0, last_low.tl0.map(|t| t.wrapping_add(1)));
    assert_eq!(f.layers_of(VIDEO, low), Some((0, Some(0))));
    // From now on: layer 0 to it, layer 1 to the other, each continuous.
    frame += 1;
    let (out, _) = feed_layer(&mut f, 0, frame, seq[0], false, clock.at(800));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq, first.seq.wrapping_add(1));
    assert_eq!(out[0].timestamp, first.timestamp.wrapping_add(3_000));
    assert_eq!(out[0].picture, first.picture.map(|p| (p + 1) & 0x7fff));
    let (out, _) = feed_layer(&mut f, 1, frame, seq[1], false, clock.at(801));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, high);
    assert_eq!(out[0].picture, Some((20_000 + frame) & 0x7fff), "untouched");
    // Its NACK for the packet it got after the move is answered from layer 0's cache,
    // numbered as it was sent.
    let mut resent = Vec::new();
    let outcome = f.on_nack(
        VIDEO,
        low,
        &[first.seq],
        clock.at(820),
        RESEND_INTERVAL,
        |fw| {
            resent.push((
                fw.seq,
                fw.timestamp,
                fw.vp8.and_then(|v| v.picture_id).map(|p| p.value),
            ));
        },
    );
    assert_eq!(outcome.resent, 1);
    assert_eq!(resent, [(first.seq, first.timestamp, first.picture)]);
    // One from before the move is not: that run is over.
    let outcome = f.on_nack(
        VIDEO,
        low,
        &[last_low.seq],
        clock.at(821),
        RESEND_INTERVAL,
        |_| panic!("resent a packet of the layer it left"),
    );
    assert_eq!(outcome.resent, 0);
}

/// A browser that stopped encoding its upper layer may go on probing its uplink with
/// padding on it: padding keeps no layer active, and a subscriber meant to get that layer
/// asks for no keyframe because of it (each such request made Chrome send a keyframe on
/// the layer it still encodes, every 500 ms: measured in Chromium at 20 % loss, 480
/// padding packets on the stopped layer and 28 keyframe requests in 30 s).
#[test]
fn padding_on_a_stopped_layer_keeps_it_idle_and_asks_for_nothing() {
    let (clock, mut f) = both_layers_arriving();
    let sub = PeerId(2);
    f.subscribe(VIDEO, sub, 2, clock.at(0));
    // Layer 1 stops; from then on only padding comes on it, and media on layer 0.
    let mut requests = Vec::new();
    for i in 1..=60u16 {
        let now = clock.at(u64::from(i) * 33);
        let (mut meta, _) = layer_packet(1, i, i, false);
        meta.padding = true;
        meta.vp8 = Vp8Ids::default();
        requests.extend(f.on_rtp(VIDEO, meta, Bytes::new(), now, |_| {}));
        requests.extend(feed_layer(&mut f, 0, i, i, false, now).1);
    }
    let now = clock.at(61 * 33);
    assert!(f.layer_active(VIDEO, 0, now));
    assert!(!f.layer_active(VIDEO, 1, now), "padding only for 2 s");
    // Meant for layer 1 (it was arriving when it subscribed): its request for layer 1's
    // keyframe went out when it subscribed, and padding asked for nothing more.
    assert_eq!(
        f.set_target_layer(VIDEO, sub, 1, now),
        None,
        "already its target"
    );
    assert!(
        requests.iter().all(|r| r.layer != 1),
        "padding asked for keyframes: {requests:?}"
    );
}

#[test]
fn a_subscriber_starts_on_the_best_layer_arriving() {
    let (clock, mut f) = both_layers_arriving();
    // Layer 1 stops (its publisher's uplink cannot carry it); layer 0 goes on.
    for i in 1..=40u16 {
        feed_layer(&mut f, 0, i, i, false, clock.at(u64::from(i) * 33));
    }
    let now = clock.at(41 * 33);
    assert!(f.layer_active(VIDEO, 0, now));
    assert!(
        !f.layer_active(VIDEO, 1, now),
        "idle for over {LAYER_IDLE:?}"
    );
    assert_eq!(
        f.subscribe(VIDEO, PeerId(2), 2, now).map(|r| r.layer),
        Some(0)
    );
    // A target beyond the layers that came is the top one.
    assert_eq!(
        f.set_target_layer(VIDEO, PeerId(2), 2, now)
            .map(|r| r.layer),
        Some(1)
    );
    assert_eq!(f.layers_of(VIDEO, PeerId(2)), Some((1, None)));
}

/// Found by `ice-restart.test.mjs`: after an outage, a subscriber waiting for the full
/// layer's keyframe stayed black while its publisher's browser sent only the half layer
/// (it stops the full one when its estimate falls), until the engine saw the full layer
/// idle. A waiting subscriber starts at whichever keyframe of its layer or a lower one
/// comes first, then moves up at its own layer's keyframe.
#[test]
fn a_waiting_subscriber_starts_on_a_lower_layer_and_moves_up_at_its_own() {
    let (clock, mut f) = both_layers_arriving();
    let sub = PeerId(2);
    assert_eq!(
        f.subscribe(VIDEO, sub, 2, clock.at(1)).map(|r| r.layer),
        Some(1)
    );
    // Layer 0's keyframe comes first: it starts there, still meant for layer 1.
    let (out, _) = feed_layer(&mut f, 0, 1, 1, true, clock.at(33));
    assert_eq!(out.len(), 1);
    assert_eq!(f.layers_of(VIDEO, sub), Some((1, Some(0))));
    // Layer 1's delta frames are not sent (and ask for its keyframe); layer 0's are.
    let (out, req) = feed_layer(&mut f, 1, 1, 1, false, clock.at(600));
    assert!(out.is_empty());
    assert_eq!(req.map(|r| r.layer), Some(1));
    let (out, _) = feed_layer(&mut f, 0, 2, 2, false, clock.at(601));
    assert_eq!(out.len(), 1);
    let last = out[0];
    // Layer 1's keyframe: up, continuous.
    let (out, _) = feed_layer(&mut f, 1, 3, 2, true, clock.at(634));
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].seq, last.seq.wrapping_add(1));
    assert_eq!(f.layers_of(VIDEO, sub), Some((1, Some(1))));
    // A subscriber already forwarding does not go down at a lower layer's keyframe.
    let (out, _) = feed_layer(&mut f, 0, 4, 3, true, clock.at(667));
    assert!(out.is_empty(), "{out:?}");
}
