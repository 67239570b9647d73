//! Codec knowledge, in one module: which codecs the SFU negotiates (the policy), how each
//! is recognised in SDP, where a keyframe starts in each video codec's RTP payload, and
//! which video codec a publisher should send so that everyone in its consultation can
//! decode it.
//!
//! **The policy.** Audio: Opus, and RED (RFC 2198) carrying Opus where a browser takes
//! it ([`Codec::Red`]). Video: VP8 and H264 (constrained baseline,
//! packetization-mode 1). Every mainstream browser decodes at least one of the two and
//! nearly all decode both: Safari prefers H264 (its hardware codec), Chrome and Edge offer
//! both, Firefox decodes VP8 always and H264 only once its OpenH264 plug-in is installed
//! (Debian's `firefox-esr` on a closed network has none). VP9 and AV1 are not negotiated:
//! forwarding them correctly needs their payload descriptors parsed for keyframes and
//! layers (SVC), and no browser needs them to take part in a call.
//!
//! **One codec everyone can decode.** A browser's publisher offer lists the video codecs
//! it supports, in its order of preference; that list is what it can send and receive.
//! The SFU answers a publisher with the codecs of its offer that every other participant
//! of the consultation can receive, in the publisher's order ([`publish_codecs`]), so a
//! Safari publisher sends H264 to Chrome and Safari viewers and VP8 once a Firefox
//! without H264 joins. When the set everyone can receive changes, the SFU asks the
//! publishers whose first codec would change for a new offer, and the switch reaches
//! subscribers without renegotiating them: each subscriber's track offers every policy
//! codec its browser accepts, so only the payload type changes (and the new codec starts
//! at a keyframe).

use bytes::Bytes;
use rtc::rtp::codec::vp8::Vp8Packet;
use rtc::rtp::packetizer::Depacketizer;

/// A codec the SFU negotiates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Codec {
    Opus,
    /// Redundant audio (RFC 2198) around Opus: each packet carries the one or two before
    /// it again (libwebrtc's `AudioEncoderCopyRed`), so a packet lost on the way is
    /// rebuilt from the next one. Chrome and Safari offer it after Opus and send it only
    /// when the answer lists it first, which the SFU's answers do; a subscriber that did
    /// not accept it gets each packet's primary Opus block ([`red_primary`]).
    Red,
    Vp8,
    H264,
}

/// The H264 format the SFU negotiates: constrained baseline, packetization-mode 1 (FU-A
/// fragments and STAP-A aggregates), as every browser offers it.
pub const H264_FMTP: &str =
    "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";
/// Opus with in-band FEC (a lost packet is rebuilt from the next one's low-rate copy), as
/// browsers offer it, and DTX (in silence a packet every 400 ms instead of 50 a second,
/// leaving the bandwidth to video on a weak link). In the SFU's answers, this is what
/// publishers are asked to send; in its offers, what subscribers are told they get.
pub const OPUS_FMTP: &str = "minptime=10;useinbandfec=1;usedtx=1";
/// RED's format line: Opus (at the SFU's payload type for it) as both the primary and the
/// redundant encoding, as browsers offer it.
pub const RED_FMTP: &str = "111/111";

impl Codec {
    /// The video codecs of the policy, in the order the SFU prefers when nothing else
    /// decides (VP8: every browser decodes it).
    pub const VIDEO: [Codec; 2] = [Codec::Vp8, Codec::H264];
    /// Every codec of the policy, audio first (the order the SFU registers them in).
    pub const ALL: [Codec; 4] = [Codec::Opus, Codec::Red, Codec::Vp8, Codec::H264];

    pub fn is_video(self) -> bool {
        matches!(self, Codec::Vp8 | Codec::H264)
    }

    /// The MIME type in SDP and in the `rtc` crate's codec parameters.
    pub fn mime(self) -> &'static str {
        match self {
            Codec::Opus => "audio/opus",
            Codec::Red => "audio/red",
            Codec::Vp8 => "video/VP8",
            Codec::H264 => "video/H264",
        }
    }

    pub fn clock_rate(self) -> u32 {
        match self {
            Codec::Opus | Codec::Red => 48_000,
            Codec::Vp8 | Codec::H264 => 90_000,
        }
    }

    pub fn channels(self) -> u16 {
        match self {
            Codec::Opus | Codec::Red => 2,
            Codec::Vp8 | Codec::H264 => 0,
        }
    }

    /// The format parameters the SFU registers.
    pub fn fmtp(self) -> &'static str {
        match self {
            Codec::Opus => OPUS_FMTP,
            Codec::Red => RED_FMTP,
            Codec::Vp8 => "",
            Codec::H264 => H264_FMTP,
        }
    }

    /// The payload type in the SFU's own offers (its subscriber connections), and that of
    /// the retransmission (RTX) format paired with it.
    pub fn payload_types(self) -> (u8, Option<u8>) {
        match self {
            Codec::Opus => (111, None),
            Codec::Red => (63, None),
            Codec::Vp8 => (96, Some(97)),
            Codec::H264 => (102, Some(103)),
        }
    }

    /// The codec of an SDP format (`a=rtpmap` encoding name and `a=fmtp` line), if it is
    /// one the SFU negotiates. H264 must be packetization-mode 1 and constrained baseline;
    /// RED must carry one encoding throughout (`111/111`: redundant audio, not the RED
    /// that wraps video FEC, which names no encodings).
    pub fn from_sdp(name: &str, fmtp: &str) -> Option<Codec> {
        if name.eq_ignore_ascii_case("opus") {
            Some(Codec::Opus)
        } else if name.eq_ignore_ascii_case("red") {
            let mut encodings = fmtp.trim().split('/');
            let first = encodings.next().filter(|pt| pt.parse::<u8>().is_ok())?;
            encodings.all(|pt| pt == first).then_some(Codec::Red)
        } else if name.eq_ignore_ascii_case("VP8") {
            Some(Codec::Vp8)
        } else if name.eq_ignore_ascii_case("H264") {
            let param = |key: &str| {
                fmtp.split(';').find_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    k.trim().eq_ignore_ascii_case(key).then(|| v.trim())
                })
            };
            let packetization = param("packetization-mode") == Some("1");
            let constrained = param("profile-level-id").is_some_and(constrained_baseline);
            (packetization && constrained).then_some(Codec::H264)
        } else {
            None
        }
    }

    /// The codec of a MIME type as the `rtc` crate reports a negotiated codec (its format
    /// was matched against the registered ones already).
    pub fn from_mime(mime: &str) -> Option<Codec> {
        Codec::ALL
            .into_iter()
            .find(|c| c.mime().eq_ignore_ascii_case(mime))
    }

    /// Whether an RTP payload of this codec starts a keyframe: decoding can begin with it.
    /// Audio is never a keyframe (every packet decodes on its own).
    pub fn is_keyframe(self, payload: &Bytes) -> bool {
        match self {
            Codec::Opus | Codec::Red => false,
            Codec::Vp8 => vp8_keyframe(payload),
            Codec::H264 => h264_keyframe(payload),
        }
    }

    fn bit(self) -> u8 {
        match self {
            Codec::Opus => 1,
            Codec::Vp8 => 2,
            Codec::H264 => 4,
            Codec::Red => 8,
        }
    }
}

/// Whether an H264 `profile-level-id` (six hex digits) is constrained baseline: profile
/// 66 with constraint_set1, or profiles 77 and 88 with constraint_set0 and set1 (RFC 6184
/// section 8.1, as browsers read it).
fn constrained_baseline(plid: &str) -> bool {
    let Ok(v) = u32::from_str_radix(plid, 16) else {
        return false;
    };
    if plid.len() != 6 {
        return false;
    }
    let (profile, iop) = ((v >> 16) as u8, (v >> 8) as u8);
    match profile {
        0x42 => iop & 0x40 != 0,
        0x4d | 0x58 => iop & 0xc0 == 0xc0,
        _ => false,
    }
}

/// A set of codecs (a few bits; `Copy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct CodecSet(u8);

impl CodecSet {
    pub const EMPTY: CodecSet = CodecSet(0);

    /// Every video codec of the policy: what a participant is assumed to receive until its
    /// offer says otherwise.
    pub fn all_video() -> Self {
        Codec::VIDEO.into_iter().collect()
    }

    pub fn contains(self, c: Codec) -> bool {
        self.0 & c.bit() != 0
    }

    pub fn insert(&mut self, c: Codec) {
        self.0 |= c.bit();
    }

    #[must_use]
    pub fn intersect(self, other: CodecSet) -> CodecSet {
        CodecSet(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl FromIterator<Codec> for CodecSet {
    fn from_iter<I: IntoIterator<Item = Codec>>(iter: I) -> Self {
        let mut s = CodecSet::EMPTY;
        for c in iter {
            s.insert(c);
        }
        s
    }
}

/// The video codecs to answer a publisher's offer with, in order (it sends the first):
/// those of `offered` (the publisher's order) that `receivable` (what every other
/// participant can receive) holds. If none is, everything offered: the publisher still
/// publishes, and only those who can decode it see it.
pub fn publish_codecs(offered: &[Codec], receivable: CodecSet) -> Vec<Codec> {
    let common: Vec<Codec> = offered
        .iter()
        .copied()
        .filter(|c| receivable.contains(*c))
        .collect();
    if common.is_empty() {
        offered.to_vec()
    } else {
        common
    }
}

/// Whether a VP8 RTP payload starts a keyframe: the start of partition 0 whose frame
/// header's P bit is 0 (RFC 7741 section 4.3).
fn vp8_keyframe(payload: &Bytes) -> bool {
    let mut vp8 = Vp8Packet::default();
    match vp8.depacketize(payload) {
        Ok(frame) => vp8.s == 1 && vp8.pid == 0 && frame.first().is_some_and(|b| b & 0x01 == 0),
        Err(_) => false,
    }
}

/// The picture numbering of a VP8 payload descriptor (RFC 7741 section 4.2) that a
/// subscriber's decoder follows from frame to frame: the picture ID (7 or 15 bits) and the
/// index of the base temporal layer's frames (TL0PICIDX). Each simulcast layer numbers its
/// own frames, so a subscriber moved from one layer to another gets them renumbered to go
/// on from where it was ([`rewrite_vp8_ids`]); its decoder would otherwise see frames
/// jump backwards or far ahead.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Vp8Ids {
    pub picture_id: Option<PictureId>,
    pub tl0: Option<u8>,
}

/// A VP8 picture ID and its width on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PictureId {
    pub value: u16,
    /// 15 bits (Chrome, Firefox and Safari all send these), else 7.
    pub wide: bool,
}

impl PictureId {
    /// The largest value plus one.
    pub fn modulus(self) -> u16 {
        if self.wide { 0x8000 } else { 0x80 }
    }

    /// This ID moved by `delta`, within its width.
    pub fn plus(self, delta: u16) -> PictureId {
        PictureId {
            value: self.value.wrapping_add(delta) & (self.modulus() - 1),
            wide: self.wide,
        }
    }
}

/// Where a VP8 payload's picture ID is (its offset, and whether it is 15 bits wide) and
/// where its TL0PICIDX is, each if present.
struct Vp8IdOffsets {
    picture_id: Option<(usize, bool)>,
    tl0: Option<usize>,
}

/// Where the picture ID and TL0PICIDX are in a VP8 payload; `None` if cut short.
fn vp8_id_offsets(payload: &[u8]) -> Option<Vp8IdOffsets> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        // No extension byte: no IDs.
        return Some(Vp8IdOffsets {
            picture_id: None,
            tl0: None,
        });
    }
    let ext = *payload.get(1)?;
    let mut at = 2;
    let mut picture_id = None;
    if ext & 0x80 != 0 {
        let wide = payload.get(at)? & 0x80 != 0;
        payload.get(at + usize::from(wide))?;
        picture_id = Some((at, wide));
        at += 1 + usize::from(wide);
    }
    let tl0 = if ext & 0x40 != 0 {
        payload.get(at)?;
        Some(at)
    } else {
        None
    };
    Some(Vp8IdOffsets { picture_id, tl0 })
}

/// The picture numbering of a VP8 payload; `None` if its descriptor is cut short.
pub fn vp8_ids(payload: &[u8]) -> Option<Vp8Ids> {
    let Vp8IdOffsets { picture_id, tl0 } = vp8_id_offsets(payload)?;
    Some(Vp8Ids {
        picture_id: picture_id.map(|(at, wide)| PictureId {
            value: if wide {
                u16::from_be_bytes([payload[at] & 0x7f, payload[at + 1]])
            } else {
                u16::from(payload[at] & 0x7f)
            },
            wide,
        }),
        tl0: tl0.map(|at| payload[at]),
    })
}

/// `payload` with its picture ID and TL0PICIDX set to `ids` (each only where the
/// descriptor has one, at its own width); `None` if the descriptor is cut short. The
/// payload is copied: the original is shared by every subscriber.
pub fn rewrite_vp8_ids(payload: &[u8], ids: Vp8Ids) -> Option<Bytes> {
    let Vp8IdOffsets { picture_id, tl0 } = vp8_id_offsets(payload)?;
    let mut out = payload.to_vec();
    if let (Some((at, wide)), Some(id)) = (picture_id, ids.picture_id) {
        if wide {
            let [hi, lo] = (id.value & 0x7fff).to_be_bytes();
            out[at] = 0x80 | hi;
            out[at + 1] = lo;
        } else {
            out[at] = (id.value & 0x7f) as u8;
        }
    }
    if let (Some(at), Some(v)) = (tl0, ids.tl0) {
        out[at] = v;
    }
    Some(Bytes::from(out))
}

/// The primary encoding of a RED payload (RFC 2198 section 3): its last block, after the
/// headers of the redundant blocks (4 bytes each: F bit, payload type, timestamp offset,
/// length) and its own (1 byte: F bit clear, payload type). A slice of the same buffer,
/// nothing copied; `None` if the headers run past the payload or name more bytes than it
/// has. The RTP header's timestamp is the primary's own.
pub fn red_primary(payload: &Bytes) -> Option<Bytes> {
    let mut at = 0;
    let mut redundant = 0usize;
    loop {
        let header = *payload.get(at)?;
        if header & 0x80 == 0 {
            at += 1;
            break;
        }
        let block = payload.get(at + 2..at + 4)?;
        redundant += usize::from(u16::from_be_bytes([block[0], block[1]]) & 0x03ff);
        at += 4;
    }
    let start = at + redundant;
    (start <= payload.len()).then(|| payload.slice(start..))
}

/// NAL unit types (RFC 6184 section 5.4, H.264 table 7-1).
const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// Whether an H264 RTP payload (packetization-mode 1) starts a keyframe: it carries a
/// sequence parameter set or the start of an IDR slice, as a single NAL unit, inside a
/// STAP-A aggregate, or as the first FU-A fragment. Browsers send SPS and PPS (in a
/// STAP-A, or as single NAL units) just before each IDR, so forwarding starts with the
/// parameter sets the decoder needs.
fn h264_keyframe(payload: &[u8]) -> bool {
    let key = |nal_type: u8| nal_type == NAL_IDR || nal_type == NAL_SPS;
    let Some(&header) = payload.first() else {
        return false;
    };
    match header & 0x1f {
        NAL_STAP_A => {
            // [STAP-A header] then ([16-bit size] [NAL unit])...
            let mut rest = &payload[1..];
            while let [hi, lo, tail @ ..] = rest {
                let size = usize::from(u16::from_be_bytes([*hi, *lo]));
                let Some(nal) = tail.get(..size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| key(h & 0x1f)) {
                    return true;
                }
                rest = &tail[size..];
            }
            false
        }
        // [FU indicator] [FU header: S E R type] ...
        NAL_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && key(fu & 0x1f)),
        t => key(t),
    }
}

#[cfg(test)]
mod tests;
