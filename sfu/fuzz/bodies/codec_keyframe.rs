//! Keyframe detection (`Codec::is_keyframe`), the codec choices around it
//! (`Codec::from_sdp`, `publish_codecs`), and the primary block of a RED payload
//! (`red_primary`).
//!
//! Whatever the payload: no panic, audio is never a keyframe, and a RED payload's primary,
//! if it has one, is a strict tail of it. A RED payload built from its blocks gives back
//! exactly its primary. Payloads built from
//! their fields (a VP8 payload descriptor and frame tag; an H264 single NAL unit, STAP-A
//! aggregate or FU-A fragment), whose truth is known by construction, are detected
//! exactly: VP8 when it starts partition 0 of a frame whose P bit is 0; H264 when it
//! carries an SPS or the start of an IDR slice. For any bytes, what must not matter does
//! not: the F and NRI bits of an H264 NAL header, anything after the second byte of a
//! single NAL unit or FU-A fragment, anything after the first byte of a VP8 frame; and
//! bytes appended to a STAP-A keyframe keep it one.

use arbitrary::Arbitrary;
use bytes::Bytes;
use sfu::codec::{Codec, CodecSet, publish_codecs, red_primary};

const IDR: u8 = 5;
const SPS: u8 = 7;
const STAP_A: u8 = 24;
const FU_A: u8 = 28;

/// A VP8 RTP payload by its fields (RFC 7741 section 4.2).
#[derive(Debug, Arbitrary)]
struct Vp8 {
    non_reference: bool,
    start: bool,
    partition: u8,
    /// The extension byte, if present: picture id (7 or 15 bits), TL0PICIDX, TID/KEYIDX.
    picture_id: Option<Option<u16>>,
    tl0: Option<u8>,
    tid_keyidx: Option<(bool, bool, u8)>,
    /// The first three bytes of the VP8 frame (its frame tag); bit 0 is P (0: keyframe).
    tag: [u8; 3],
    rest: Vec<u8>,
}

impl Vp8 {
    fn bytes(&self) -> Vec<u8> {
        let extended = self.picture_id.is_some() || self.tl0.is_some() || self.tid_keyidx.is_some();
        let mut p = vec![
            u8::from(extended) << 7
                | u8::from(self.non_reference) << 5
                | u8::from(self.start) << 4
                | (self.partition & 0x07),
        ];
        if extended {
            // The TID/KEYIDX byte is there when T or K is set; with neither asked for, T.
            let (t, k) = match self.tid_keyidx {
                Some((false, false, _)) => (true, false),
                Some((t, k, _)) => (t, k),
                None => (false, false),
            };
            p.push(
                u8::from(self.picture_id.is_some()) << 7
                    | u8::from(self.tl0.is_some()) << 6
                    | u8::from(t) << 5
                    | u8::from(k) << 4,
            );
            match self.picture_id {
                Some(Some(long)) => {
                    let long = long & 0x7fff;
                    p.push(0x80 | (long >> 8) as u8);
                    p.push(long as u8);
                }
                Some(None) => p.push(0x2a),
                None => {}
            }
            if let Some(tl0) = self.tl0 {
                p.push(tl0);
            }
            if let Some((_, _, b)) = self.tid_keyidx {
                p.push(b);
            }
        }
        p.extend_from_slice(&self.tag);
        p.extend_from_slice(&self.rest);
        p
    }

    fn is_keyframe(&self) -> bool {
        self.start && self.partition & 0x07 == 0 && self.tag[0] & 0x01 == 0
    }
}

/// One H264 NAL unit: its type (1..=23, a real NAL unit), NRI and body.
#[derive(Debug, Arbitrary)]
struct Nal {
    nal_type: u8,
    nri: u8,
    body: Vec<u8>,
}

impl Nal {
    fn nal_type(&self) -> u8 {
        self.nal_type % 23 + 1
    }

    fn header(&self) -> u8 {
        (self.nri & 0x03) << 5 | self.nal_type()
    }

    fn is_key(&self) -> bool {
        matches!(self.nal_type(), IDR | SPS)
    }
}

/// An H264 RTP payload in packetization-mode 1 (RFC 6184 section 5).
#[derive(Debug, Arbitrary)]
enum H264 {
    Single(Nal),
    StapA(Vec<Nal>),
    FuA { start: bool, end: bool, nal: Nal },
}

impl H264 {
    fn bytes(&self) -> Vec<u8> {
        match self {
            H264::Single(n) => {
                let mut p = vec![n.header()];
                p.extend_from_slice(&n.body);
                p
            }
            H264::StapA(nals) => {
                let mut p = vec![STAP_A | 0x60];
                for n in nals {
                    let body = &n.body[..n.body.len().min(1000)];
                    let size = u16::try_from(body.len() + 1).expect("at most 1001");
                    p.extend_from_slice(&size.to_be_bytes());
                    p.push(n.header());
                    p.extend_from_slice(body);
                }
                p
            }
            H264::FuA { start, end, nal } => {
                let mut p = vec![
                    (nal.nri & 0x03) << 5 | FU_A,
                    u8::from(*start) << 7 | u8::from(*end) << 6 | nal.nal_type(),
                ];
                p.extend_from_slice(&nal.body);
                p
            }
        }
    }

    fn is_keyframe(&self) -> bool {
        match self {
            H264::Single(n) => n.is_key(),
            H264::StapA(nals) => nals.iter().any(Nal::is_key),
            H264::FuA { start, nal, .. } => *start && nal.is_key(),
        }
    }
}

/// A RED payload by its blocks (RFC 2198 section 3): redundant ones (payload type,
/// timestamp offset, data of at most 1023 bytes), then the primary.
#[derive(Debug, Arbitrary)]
struct Red {
    redundant: Vec<(u8, u16, Vec<u8>)>,
    primary_type: u8,
    primary: Vec<u8>,
}

impl Red {
    fn bytes(&self) -> Vec<u8> {
        let blocks: Vec<_> = self
            .redundant
            .iter()
            .take(4)
            .map(|(pt, offset, data)| (pt & 0x7f, offset & 0x3fff, &data[..data.len().min(1023)]))
            .collect();
        let mut p = Vec::new();
        for (pt, offset, data) in &blocks {
            let word = u32::from(*offset) << 10 | data.len() as u32;
            p.push(0x80 | pt);
            p.extend_from_slice(&word.to_be_bytes()[1..]);
        }
        p.push(self.primary_type & 0x7f);
        for (_, _, data) in &blocks {
            p.extend_from_slice(data);
        }
        p.extend_from_slice(&self.primary);
        p
    }
}

/// A codec's name and format line as an SDP offer gives them, and what a publisher
/// offered against what the others can receive.
#[derive(Debug, Arbitrary)]
struct Choice {
    name: String,
    fmtp: String,
    offered: Vec<bool>,
    receivable: (bool, bool),
}

fn key(codec: Codec, payload: &[u8]) -> bool {
    codec.is_keyframe(&Bytes::copy_from_slice(payload))
}

/// The properties of detection on any bytes.
fn raw(p: &[u8]) {
    assert!(!key(Codec::Opus, p), "audio is never a keyframe");
    assert!(!key(Codec::Red, p), "audio is never a keyframe");
    if let Some(primary) = red_primary(&Bytes::copy_from_slice(p)) {
        assert!(primary.len() < p.len(), "a primary without its header");
        assert!(
            p.ends_with(&primary),
            "a primary that is not the payload's tail"
        );
    }

    // H264: the F and NRI bits of the NAL header never matter.
    let h264 = key(Codec::H264, p);
    if let Some(&first) = p.first() {
        for bits in [0x20, 0x40, 0x80, 0xe0] {
            let mut q = p.to_vec();
            q[0] = first ^ bits;
            assert_eq!(
                key(Codec::H264, &q),
                h264,
                "F/NRI bits {bits:#x} changed the answer"
            );
        }
        match first & 0x1f {
            // STAP-A: what follows a keyframe's NAL units cannot undo it.
            STAP_A => {
                if h264 {
                    let mut q = p.to_vec();
                    q.extend_from_slice(&[0, 1, 1, 0xff, 0xff]);
                    assert!(key(Codec::H264, &q), "bytes appended to a STAP-A keyframe");
                }
            }
            // A single NAL unit or an FU-A fragment: only the first two bytes count.
            _ => {
                let head = &p[..p.len().min(2)];
                assert_eq!(
                    key(Codec::H264, head),
                    h264,
                    "bytes after the second mattered"
                );
                let mut q = head.to_vec();
                q.extend_from_slice(&[IDR, SPS, 0x80 | IDR]);
                assert_eq!(
                    key(Codec::H264, &q),
                    h264,
                    "bytes after the second mattered"
                );
            }
        }
    } else {
        assert!(!h264, "an empty payload is no keyframe");
    }

    // VP8: a keyframe starts partition 0 (S=1, PID=0); after the descriptor, only the
    // frame tag's P bit counts.
    let vp8 = key(Codec::Vp8, p);
    if vp8 {
        assert!(
            p[0] & 0x10 != 0 && p[0] & 0x07 == 0,
            "a VP8 keyframe not at a partition 0 start"
        );
        let mut q = p.to_vec();
        q.extend_from_slice(&[0xff; 4]);
        assert!(key(Codec::Vp8, &q), "bytes appended to a VP8 keyframe");
    }
}

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `sfu/tests/fuzz_corpus.rs` (stable, in `cargo test`).
/// The first byte picks what the rest is: 0, any payload (the corpus holds payloads
/// recorded from browsers); 1, a VP8 payload by its fields; 2, an H264 one; 3, a codec
/// choice; 4, a RED payload by its blocks.
pub fn check(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else {
        return;
    };
    let mut u = arbitrary::Unstructured::new(rest);
    match mode % 5 {
        0 => raw(rest),
        1 => {
            let Ok(v) = Vp8::arbitrary(&mut u) else {
                return;
            };
            let p = v.bytes();
            assert_eq!(
                key(Codec::Vp8, &p),
                v.is_keyframe(),
                "VP8 {v:?} as {p:02x?}"
            );
            raw(&p);
        }
        2 => {
            let Ok(h) = H264::arbitrary(&mut u) else {
                return;
            };
            let p = h.bytes();
            assert_eq!(
                key(Codec::H264, &p),
                h.is_keyframe(),
                "H264 {h:?} as {p:02x?}"
            );
            raw(&p);
        }
        4 => {
            let Ok(red) = Red::arbitrary(&mut u) else {
                return;
            };
            let p = red.bytes();
            assert_eq!(
                red_primary(&Bytes::copy_from_slice(&p)).as_deref(),
                Some(&red.primary[..]),
                "RED {red:?} as {p:02x?}"
            );
            raw(&p);
        }
        _ => {
            let Ok(Choice {
                name,
                fmtp,
                offered,
                receivable,
            }) = Choice::arbitrary(&mut u)
            else {
                return;
            };
            choice(&name, &fmtp, &offered, receivable);
        }
    }
}

fn choice(name: &str, fmtp: &str, offered: &[bool], receivable: (bool, bool)) {
    if let Some(c) = Codec::from_sdp(name, fmtp) {
        // Recognised names are case-insensitive; H264 needs the right format line.
        assert_eq!(Codec::from_sdp(&name.to_ascii_uppercase(), fmtp), Some(c));
        assert_eq!(Codec::from_sdp(&name.to_ascii_lowercase(), fmtp), Some(c));
        assert_eq!(Codec::from_mime(c.mime()), Some(c));
        if c == Codec::H264 {
            assert!(fmtp.contains("packetization-mode"));
            assert!(fmtp.contains("profile-level-id"));
        }
    }
    let offered: Vec<Codec> = offered
        .iter()
        .take(8)
        .map(|h264| if *h264 { Codec::H264 } else { Codec::Vp8 })
        .collect();
    let mut can = CodecSet::EMPTY;
    if receivable.0 {
        can.insert(Codec::Vp8);
    }
    if receivable.1 {
        can.insert(Codec::H264);
    }
    let chosen = publish_codecs(&offered, can);
    // What everyone can receive, in the publisher's order; failing that, all it offered
    // (it still publishes).
    let common: Vec<Codec> = offered
        .iter()
        .copied()
        .filter(|c| can.contains(*c))
        .collect();
    if common.is_empty() {
        assert_eq!(chosen, offered);
    } else {
        assert_eq!(chosen, common);
    }
}
