//! Keyframe detection on real RTP, recorded from Debian's Chromium (VP8 and H264) and
//! Firefox ESR (VP8) by `load-tests/record-rtp` into `fixtures/rtp/`. Each recording holds
//! every video packet the browser sent in about four seconds (a first keyframe and two
//! asked for), and what the browser itself said it encoded. The ground truth is the
//! browser's own count of keyframes (`keyFramesEncoded`); Firefox does not report it, so
//! for VP8 the bitstream's own mark of a keyframe is used as well: its frame header is
//! followed by the start code 9d 01 2a (RFC 6386 section 9.1), which the SFU's detection
//! (the P bit) does not read. The SFU must find exactly those keyframes, each at the
//! first packet of its frame, and a subscriber that joins mid-stream must start there.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use base64::Engine as _;
use bytes::Bytes;
use sfu::codec::Codec;
use sfu::forward::{Forwarder, MediaKind, PeerId, RtpMeta, TrackId};

struct Recording {
    name: String,
    codec: Codec,
    /// The browser's count of keyframes, where it reports one.
    keyframes_encoded: Option<usize>,
    packets_sent: usize,
    /// Keyframe requests the browser received (the recorder sent two).
    pli_count: usize,
    /// (seq, timestamp, payload), in the order received.
    packets: Vec<(u16, u32, Bytes)>,
}

fn recordings() -> Vec<Recording> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rtp");
    let mut out = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD;
        out.push(Recording {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            codec: Codec::from_mime(v["codec"].as_str().unwrap()).unwrap(),
            keyframes_encoded: v["keyframes_encoded"].as_u64().map(|n| n as usize),
            packets_sent: v["packets_sent"].as_u64().unwrap() as usize,
            pli_count: v["pli_count"].as_u64().unwrap() as usize,
            packets: v["packets"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| {
                    (
                        p["seq"].as_u64().unwrap() as u16,
                        p["timestamp"].as_u64().unwrap() as u32,
                        Bytes::from(b64.decode(p["payload"].as_str().unwrap()).unwrap()),
                    )
                })
                .collect(),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Whether a VP8 payload begins a keyframe by the bitstream's start code: after the
/// payload descriptor (RFC 7741 section 4.2) of a packet that starts partition 0, the
/// frame tag's 3 bytes, then 9d 01 2a.
fn vp8_start_code(p: &[u8]) -> bool {
    let Some(&first) = p.first() else {
        return false;
    };
    let (extended, start, partition) = (first & 0x80 != 0, first & 0x10 != 0, first & 0x07);
    if !start || partition != 0 {
        return false;
    }
    let mut at = 1;
    if extended {
        let Some(&x) = p.get(1) else { return false };
        at = 2;
        if x & 0x80 != 0 {
            // Picture id: one byte, or two when its M bit is set.
            at += if p.get(at).is_some_and(|b| b & 0x80 != 0) {
                2
            } else {
                1
            };
        }
        if x & 0x40 != 0 {
            at += 1; // TL0PICIDX
        }
        if x & 0x30 != 0 {
            at += 1; // TID / KEYIDX
        }
    }
    p.get(at + 3..at + 6) == Some(&[0x9d, 0x01, 0x2a][..])
}

/// The number of keyframes the recording holds, by the browser's word or, for VP8, by the
/// start codes in the bitstream (which must agree with the browser where it reports).
fn truth(r: &Recording) -> usize {
    let by_start_code = (r.codec == Codec::Vp8).then(|| {
        r.packets
            .iter()
            .filter(|(_, _, p)| vp8_start_code(p))
            .count()
    });
    match (r.keyframes_encoded, by_start_code) {
        (Some(said), Some(found)) => {
            assert_eq!(
                said, found,
                "{}: start codes and the browser disagree",
                r.name
            );
            said
        }
        (Some(n), None) | (None, Some(n)) => n,
        (None, None) => panic!("{}: no ground truth", r.name),
    }
}

/// The recording's frames (by RTP timestamp, in order), each its packets' indexes.
fn frames(r: &Recording) -> Vec<Vec<usize>> {
    let mut by_ts: BTreeMap<(usize, u32), Vec<usize>> = BTreeMap::new();
    let mut first_seen: BTreeMap<u32, usize> = BTreeMap::new();
    for (i, (_, ts, _)) in r.packets.iter().enumerate() {
        let first = *first_seen.entry(*ts).or_insert(i);
        by_ts.entry((first, *ts)).or_default().push(i);
    }
    by_ts.into_values().collect()
}

#[test]
fn every_browser_and_codec_is_recorded() {
    let names: Vec<String> = recordings().into_iter().map(|r| r.name).collect();
    for wanted in ["chromium-H264", "chromium-VP8", "firefox-VP8"] {
        assert!(
            names.iter().any(|n| n == wanted),
            "{wanted} is missing from {names:?}"
        );
    }
}

#[test]
fn the_browsers_keyframes_are_found_each_at_the_first_packet_of_its_frame() {
    for r in recordings() {
        assert_eq!(
            r.packets.len(),
            r.packets_sent,
            "{}: the recording is incomplete",
            r.name
        );
        let frames = frames(&r);
        let key_frames: Vec<&Vec<usize>> = frames
            .iter()
            .filter(|f| f.iter().any(|i| r.codec.is_keyframe(&r.packets[*i].2)))
            .collect();
        let truth = truth(&r);
        assert_eq!(
            key_frames.len(),
            truth,
            "{}: the browser encoded {truth} keyframes",
            r.name
        );
        assert!(
            r.pli_count >= 1 && truth >= 2,
            "{}: a keyframe that was asked for ({} requests, {truth} keyframes)",
            r.name,
            r.pli_count
        );
        let first_with_media = frames
            .iter()
            .find(|f| !r.packets[f[0]].2.is_empty())
            .unwrap();
        assert_eq!(
            key_frames.first(),
            Some(&first_with_media),
            "{}: a stream starts with a keyframe",
            r.name
        );
        for f in key_frames {
            assert!(
                r.codec.is_keyframe(&r.packets[f[0]].2),
                "{}: the keyframe of timestamp {} is not found at its first packet",
                r.name,
                r.packets[f[0]].1
            );
        }
    }
}

#[test]
fn h264_keyframes_from_chromium_carry_sps_in_a_stap_a_and_a_fragmented_idr() {
    let r = recordings()
        .into_iter()
        .find(|r| r.name == "chromium-H264")
        .unwrap();
    let nal = |p: &Bytes| p.first().map(|b| b & 0x1f);
    let stap_a_with_sps = r
        .packets
        .iter()
        .any(|(_, _, p)| nal(p) == Some(24) && p.get(3).is_some_and(|h| h & 0x1f == 7));
    let fu_a_idr_start = r
        .packets
        .iter()
        .filter(|(_, _, p)| {
            nal(p) == Some(28) && p.get(1).is_some_and(|h| h & 0x80 != 0 && h & 0x1f == 5)
        })
        .count();
    let fu_a_idr_rest = r
        .packets
        .iter()
        .filter(|(_, _, p)| {
            nal(p) == Some(28) && p.get(1).is_some_and(|h| h & 0x80 == 0 && h & 0x1f == 5)
        })
        .count();
    assert!(stap_a_with_sps, "no STAP-A carrying an SPS");
    assert_eq!(
        Some(fu_a_idr_start),
        r.keyframes_encoded,
        "one fragmented IDR per keyframe"
    );
    assert!(fu_a_idr_rest > 0, "IDR continuation fragments");
    // Continuation fragments are never a keyframe start on their own.
    for (_, _, p) in r
        .packets
        .iter()
        .filter(|(_, _, p)| nal(p) == Some(28) && p.get(1).is_some_and(|h| h & 0x80 == 0))
    {
        assert!(!Codec::H264.is_keyframe(p));
    }
}

/// A subscriber that joins in the middle of a recorded stream is sent nothing until the
/// first packet of the next keyframe, then every packet, numbered without a gap.
#[test]
fn a_subscriber_joining_mid_stream_starts_at_the_next_real_keyframe() {
    for r in recordings() {
        let frames = frames(&r);
        let key_starts: Vec<usize> = frames
            .iter()
            .filter(|f| f.iter().any(|i| r.codec.is_keyframe(&r.packets[*i].2)))
            .map(|f| f[0])
            .collect();
        // Join just after the first keyframe's frame.
        let join_at = frames[1][0];
        let next_key = *key_starts.iter().find(|k| **k > join_at).unwrap();
        let mut f: Forwarder<Bytes, ()> = Forwarder::default();
        let (track, publisher, sub) = (TrackId(1), PeerId(1), PeerId(2));
        f.add_track(track, publisher, MediaKind::Video);
        let now = Instant::now();
        let mut sent = Vec::new();
        for (i, (seq, ts, payload)) in r.packets.iter().enumerate() {
            if i == join_at {
                f.subscribe(track, sub, (), now);
            }
            let meta = RtpMeta::of(*seq, *ts, payload, r.codec, 0);
            f.on_rtp(track, meta, payload.clone(), now, |fw| {
                sent.push((i, fw.seq))
            });
        }
        assert_eq!(sent.first().map(|s| s.0), Some(next_key), "{}", r.name);
        assert_eq!(sent.len(), r.packets.len() - next_key, "{}", r.name);
        assert!(
            sent.windows(2).all(|w| w[1].1 == w[0].1.wrapping_add(1)),
            "{}: numbering with a gap",
            r.name
        );
    }
}
