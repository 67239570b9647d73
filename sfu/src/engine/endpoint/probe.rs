//! Probing a subscriber's downlink before a move to a higher simulcast layer
//! ([`crate::bwe::LayerChoice`]): for a moment the SFU sends it, besides its media, what
//! the layer above would add, and watches its congestion feedback.
//!
//! The packets go on a video track of their own in the subscriber connection (stream
//! [`PROBE_STREAM`], SSRC [`PROBE_SSRC`]), which the pages never show: mediasoup's
//! "probator". Copies of media packets would not do: the browser's SRTP drops a packet it
//! already has as a replay before its congestion feedback counts it, and the `rtc` crate
//! (0.21) can send neither RTX nor padding-only packets of any size. Each probe packet is
//! [`PROBE_BYTES`] of zeros: for VP8 a payload that never starts a frame, for H264 a NAL
//! unit of type 0, which decoders skip; nothing is ever decoded from it.

use bytes::Bytes;

use super::*;

/// The stream id (and track id) of the probe track: pages ignore its track.
pub const PROBE_STREAM: &str = "probe";

/// The probe track's SSRC in every subscriber connection ("prob"; the media tracks'
/// are numbered from 0x5F00_0000 up): pages leave it out of their statistics.
pub const PROBE_SSRC: u32 = 0x7072_6F62;

/// The payload of a probe packet, in bytes: about a full video packet.
pub const PROBE_BYTES: usize = 1_000;

static PROBE_PAYLOAD: [u8; PROBE_BYTES] = [0; PROBE_BYTES];

/// How often probe packets are sent while a probe runs: a 400 kbit/s probe is one packet
/// every 20 ms, as evenly spread as the media is.
pub const PROBE_PACE: Duration = Duration::from_millis(10);

/// A subscriber connection's probe track.
#[derive(Debug)]
pub(super) struct ProbeTrack {
    pub(super) sender: RTCRtpSenderId,
    /// The payload type its answer accepted (`None`: not answered yet, or refused).
    pub(super) payload_type: Option<u8>,
    seq: u16,
    /// Bits it may send now, and when that was counted.
    credit: f64,
    counted: Option<Instant>,
}

impl ProbeTrack {
    pub(super) fn new(sender: RTCRtpSenderId) -> Self {
        Self {
            sender,
            payload_type: None,
            seq: 0,
            credit: 0.0,
            counted: None,
        }
    }
}

impl Endpoint {
    /// Sends each probing subscriber its probe packets due by `now`, at the rate its
    /// layer choices ask ([`crate::bwe::LayerChoice::probe_rate`]); the next call is due
    /// [`PROBE_PACE`] later while any probe runs.
    pub(super) fn send_probes(&mut self, now: Instant) {
        let Self {
            members,
            conns,
            touched,
            counters,
            ..
        } = self;
        let mut any = false;
        for (key, m) in members.iter_mut() {
            let Some(probe) = m.probe.as_mut() else {
                continue;
            };
            // Each probe watched first: one whose link is full stops now.
            let downlink = conns
                .get(&m.subscriber)
                .map(|c| c.downlink(true))
                .unwrap_or_default();
            let mut bps = 0;
            for (track, s) in &mut m.subscribed {
                if s.layers.probing().is_some() && !s.layers.watch(now, downlink) {
                    tracing::debug!(
                        participant = key,
                        track = track.0,
                        queue = ?downlink.queue,
                        loss = ?downlink.loss_ppm,
                        "probe stopped: the link is full"
                    );
                }
                bps += s.layers.probe_rate(now).unwrap_or(0);
            }
            let probing = m.subscribed.values().any(|s| s.layers.probing().is_some());
            let (Some(payload_type), true) = (probe.payload_type, probing) else {
                probe.credit = 0.0;
                probe.counted = None;
                continue;
            };
            any = true;
            // At most two paces' worth at once: a late timer sends no burst.
            let since = probe
                .counted
                .map_or(PROBE_PACE, |at| now.saturating_duration_since(at))
                .min(PROBE_PACE * 2);
            probe.counted = Some(now);
            probe.credit += bps as f64 * since.as_secs_f64();
            let Some(c) = conns.get_mut(&m.subscriber) else {
                continue;
            };
            let Some(mut sender) = c.pc.rtp_sender(probe.sender) else {
                continue;
            };
            let bits = (PROBE_BYTES * 8) as f64;
            let mut sent = false;
            while probe.credit >= bits {
                probe.credit -= bits;
                probe.seq = probe.seq.wrapping_add(1);
                let packet = rtp::Packet {
                    header: rtp::Header {
                        version: 2,
                        payload_type,
                        sequence_number: probe.seq,
                        timestamp: u32::from(probe.seq).wrapping_mul(90),
                        ssrc: PROBE_SSRC,
                        ..Default::default()
                    },
                    payload: Bytes::from_static(&PROBE_PAYLOAD),
                };
                if sender.write_rtp(now, packet).is_err() {
                    break;
                }
                counters.probe_packets.inc();
                sent = true;
            }
            if sent {
                touch(conns, touched, m.subscriber);
            }
        }
        self.next_probe = any.then(|| now + PROBE_PACE);
    }
}
