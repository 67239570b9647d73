//! NACKs for what a publisher's browser sent and the SFU did not receive, timed by the
//! round trip (the publisher leg's interceptor in the NACK generator's slot).
//!
//! The `rtc` crate's NACK generator asks for every missing packet on a fixed timer (100 ms),
//! whatever the path: on a 150 ms path it asked again before the first retransmission could
//! have come, and the browser resent again (Chromium, 5 % loss each way: the patient's
//! browser resent 9.8 % of its video packets, 2.3 % in a direct call); on a short path a
//! packet waited up to 100 ms for its first NACK, and a lost retransmission 100 ms more.
//! This one asks as libwebrtc's `NackRequester` does: at once when a gap shows, then again
//! each round trip until the packet comes, at most [`MAX_ASKS`] times and not once the
//! packet is older than [`MAX_AGE`] (its subscribers' jitter buffers have moved on). The
//! round trip is the one the SFU measures on the same browser's subscriber leg (the same
//! path), set by the endpoint every tick ([`Repair`]); [`UNKNOWN_ROUND_TRIP`] until then.
//! It counts the packets found missing there too, which tell the endpoint that the uplink
//! loses (its subscribers then wait for repairs: `super::playout`).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{AttributedPacket, Packet, StreamInfo, TaggedPacket};
use rtc::rtcp::transport_feedbacks::transport_layer_nack::{
    TransportLayerNack, nack_pairs_from_sequence_numbers,
};
use rtc::shared::TransportContext;

use super::tap::{Hook, Tap};

/// What the endpoint and a publisher leg's NACK requester share.
#[derive(Debug, Default)]
pub(crate) struct Repair {
    /// The browser's round trip to the SFU, in microseconds (0: not measured yet); set by
    /// the endpoint.
    pub round_trip_us: AtomicU64,
    /// Packets found missing on the uplink so far; counted by the requester.
    pub missing: AtomicU64,
}

/// How long a NACK waits for its packet before asking again while the round trip is not
/// known (the crate's interval, and libwebrtc's default round trip).
pub const UNKNOWN_ROUND_TRIP: Duration = Duration::from_millis(100);

/// The shortest wait before asking again (a measured round trip of a few milliseconds is
/// below the browser's own scheduling of retransmissions).
pub const MIN_RETRY: Duration = Duration::from_millis(10);

/// How often a missing packet is asked for before it is given up (as libwebrtc).
pub const MAX_ASKS: u8 = 10;

/// A packet missing for this long is not asked for any more: the forwarding core resends
/// nothing older ([`crate::forward::RESEND_MAX_AGE`]).
pub const MAX_AGE: Duration = crate::forward::RESEND_MAX_AGE;

/// A jump ahead of more than this many packets is a new start of the stream, not loss:
/// nothing in it is asked for.
pub const MAX_GAP: u64 = 500;

/// At most this many missing packets are kept per stream (the oldest go first).
pub const MAX_MISSING: usize = 1_000;

/// How often the timer looks for NACKs to repeat while packets are missing.
const TICK: Duration = Duration::from_millis(10);

/// The interceptor, timed by `round_trip`.
pub(super) fn interceptor(repair: Arc<Repair>) -> Tap<NackRequester> {
    Tap::new(NackRequester {
        repair,
        streams: HashMap::new(),
        next: None,
    })
}

pub(super) struct NackRequester {
    repair: Arc<Repair>,
    /// The received streams that negotiated NACK, by SSRC.
    streams: HashMap<u32, Stream>,
    /// When the timer fires next: while any packet is missing.
    next: Option<Instant>,
}

impl std::fmt::Debug for NackRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NackRequester")
            .field("streams", &self.streams.len())
            .finish()
    }
}

#[derive(Debug, Default)]
struct Stream {
    /// The highest sequence number received, extended past its wraps.
    newest: Option<u64>,
    /// What is missing below it, by extended sequence number.
    missing: BTreeMap<u64, Ask>,
}

#[derive(Debug, Clone, Copy)]
struct Ask {
    /// When the gap showed.
    since: Instant,
    /// When it was last asked for.
    asked: Instant,
    /// How often it was asked for.
    times: u8,
}

/// `seq` extended to the wrap of `newest` it is nearest to.
fn extend(newest: u64, seq: u16) -> u64 {
    let diff = i64::from(seq.wrapping_sub(newest as u16) as i16);
    newest.saturating_add_signed(diff)
}

/// Where a stream's extended numbers start: far enough from 0 that a late packet before
/// the first one does not go below it.
const FIRST: u64 = 1 << 32;

impl Stream {
    /// A packet came: what it leaves missing, and the new gaps to ask for at once.
    fn received(&mut self, seq: u16, now: Instant, ask: &mut Vec<u16>) {
        let Some(newest) = self.newest else {
            self.newest = Some(FIRST + u64::from(seq));
            return;
        };
        let ext = extend(newest, seq);
        if ext <= newest {
            self.missing.remove(&ext); // late, or a retransmission
            return;
        }
        self.newest = Some(ext);
        if ext - newest > MAX_GAP {
            self.missing.clear();
            return;
        }
        for gap in newest + 1..ext {
            self.missing.insert(
                gap,
                Ask {
                    since: now,
                    asked: now,
                    times: 1,
                },
            );
            ask.push(gap as u16);
        }
        while self.missing.len() > MAX_MISSING {
            self.missing.pop_first();
        }
    }

    /// What is due to be asked for again after `retry` (and what is given up).
    fn due(&mut self, now: Instant, retry: Duration, ask: &mut Vec<u16>) {
        self.missing.retain(|&seq, a| {
            if a.times >= MAX_ASKS || now.saturating_duration_since(a.since) > MAX_AGE {
                return false;
            }
            if now.saturating_duration_since(a.asked) >= retry {
                a.asked = now;
                a.times += 1;
                ask.push(seq as u16);
            }
            true
        });
    }
}

/// One NACK for `lost` of `ssrc`, to send.
fn nack(ssrc: u32, lost: &[u16], now: Instant) -> TaggedPacket {
    TaggedPacket {
        now,
        transport: TransportContext::default(),
        message: AttributedPacket::new(Packet::Rtcp(vec![Box::new(TransportLayerNack {
            sender_ssrc: 0,
            media_ssrc: ssrc,
            nacks: nack_pairs_from_sequence_numbers(lost),
        })])),
    }
}

impl NackRequester {
    fn retry(&self) -> Duration {
        match self.repair.round_trip_us.load(Ordering::Relaxed) {
            0 => UNKNOWN_ROUND_TRIP,
            us => Duration::from_micros(us).max(MIN_RETRY),
        }
    }

    fn rearm(&mut self, now: Instant) {
        let missing = self.streams.values().any(|s| !s.missing.is_empty());
        self.next = match self.next {
            _ if !missing => None,
            Some(at) if at > now => Some(at),
            _ => Some(now + TICK),
        };
    }
}

impl Hook for NackRequester {
    fn read(&mut self, msg: &mut TaggedPacket, send: &mut VecDeque<TaggedPacket>) -> bool {
        if let Packet::Rtp(p) = &msg.message.packet
            && let Some(stream) = self.streams.get_mut(&p.header.ssrc)
        {
            let mut ask = Vec::new();
            stream.received(p.header.sequence_number, msg.now, &mut ask);
            if !ask.is_empty() {
                self.repair
                    .missing
                    .fetch_add(ask.len() as u64, Ordering::Relaxed);
                send.push_back(nack(p.header.ssrc, &ask, msg.now));
            }
            if !stream.missing.is_empty() || self.next.is_some() {
                self.rearm(msg.now);
            }
        }
        true
    }

    fn timeout(&mut self, now: Instant, send: &mut VecDeque<TaggedPacket>) {
        let retry = self.retry();
        let mut ask = Vec::new();
        for (&ssrc, stream) in &mut self.streams {
            stream.due(now, retry, &mut ask);
            if !ask.is_empty() {
                send.push_back(nack(ssrc, &ask, now));
                ask.clear();
            }
        }
        self.next = None;
        self.rearm(now);
    }

    fn next_timeout(&self) -> Option<Instant> {
        self.next
    }

    fn bind_remote_stream(&mut self, info: &StreamInfo) {
        let nack = info
            .rtcp_feedback
            .iter()
            .any(|fb| fb.typ == "nack" && fb.parameter.is_empty());
        if nack {
            self.streams.entry(info.ssrc).or_default();
        }
    }

    fn unbind_remote_stream(&mut self, info: &StreamInfo) {
        self.streams.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::rtp;

    const SSRC: u32 = 0x1234;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn requester(rtt_ms: u64) -> (Tap<NackRequester>, Arc<Repair>) {
        let repair = Arc::new(Repair::default());
        repair
            .round_trip_us
            .store(rtt_ms * 1_000, Ordering::Relaxed);
        let mut tap = interceptor(repair.clone());
        let info = StreamInfo {
            ssrc: SSRC,
            rtcp_feedback: vec![rtc::interceptor::RTCPFeedback {
                typ: "nack".into(),
                parameter: String::new(),
            }],
            ..Default::default()
        };
        rtc::interceptor::Interceptor::bind_remote_stream(&mut tap, &info);
        (tap, repair)
    }

    /// The sequence numbers of the NACKs it sends.
    fn asked(tap: &mut Tap<NackRequester>) -> Vec<u16> {
        use rtc::sansio::Protocol;
        let mut out = Vec::new();
        while let Some(p) = tap.poll_write() {
            let Packet::Rtcp(rtcp) = p.message.packet else {
                panic!("not RTCP");
            };
            for r in rtcp {
                let n = r
                    .as_any()
                    .downcast_ref::<TransportLayerNack>()
                    .expect("a NACK");
                assert_eq!(n.media_ssrc, SSRC);
                out.extend(n.nacks.iter().flat_map(|pair| pair.packet_list()));
            }
        }
        out
    }

    fn receive(tap: &mut Tap<NackRequester>, seq: u16, now: Instant) {
        use rtc::sansio::Protocol;
        let packet = rtp::Packet {
            header: rtp::Header {
                ssrc: SSRC,
                sequence_number: seq,
                ..Default::default()
            },
            payload: bytes::Bytes::from_static(b"x"),
        };
        tap.handle_read(TaggedPacket {
            now,
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtp(packet)),
        })
        .unwrap();
        while tap.poll_read().is_some() {}
    }

    /// Runs its timer up to `until`, as the connection does.
    fn run(tap: &mut Tap<NackRequester>, until: Instant) {
        use rtc::sansio::Protocol;
        while let Some(at) = tap.poll_timeout().filter(|at| *at <= until) {
            tap.handle_timeout(at).unwrap();
        }
    }

    #[test]
    fn a_gap_is_asked_for_at_once_and_again_each_round_trip() {
        let t0 = Instant::now();
        let (mut tap, repair) = requester(150);
        receive(&mut tap, 10, t0);
        receive(&mut tap, 13, t0 + ms(1));
        assert_eq!(asked(&mut tap), [11, 12], "at once");
        assert_eq!(
            repair.missing.load(Ordering::Relaxed),
            2,
            "counted once each"
        );
        run(&mut tap, t0 + ms(140));
        assert!(asked(&mut tap).is_empty(), "not before the round trip");
        receive(&mut tap, 11, t0 + ms(145)); // its retransmission came
        run(&mut tap, t0 + ms(170));
        assert_eq!(
            asked(&mut tap),
            [12],
            "again after 150 ms, only what is missing"
        );
        receive(&mut tap, 12, t0 + ms(200));
        run(&mut tap, t0 + ms(2_000));
        assert!(asked(&mut tap).is_empty());
        assert_eq!(
            rtc::sansio::Protocol::poll_timeout(&mut tap),
            None,
            "no timer with nothing missing"
        );
    }

    #[test]
    fn short_paths_are_asked_again_soon_and_unknown_ones_after_100_ms() {
        let t0 = Instant::now();
        let (mut tap, rtt) = requester(2);
        receive(&mut tap, 1, t0);
        receive(&mut tap, 3, t0);
        assert_eq!(asked(&mut tap), [2]);
        run(&mut tap, t0 + ms(25));
        // Every MIN_RETRY (10 ms) on a 2 ms path: at 10 and 20 ms.
        assert_eq!(asked(&mut tap), [2, 2]);
        rtt.round_trip_us.store(0, Ordering::Relaxed);
        run(&mut tap, t0 + ms(115));
        assert!(
            asked(&mut tap).is_empty(),
            "unknown: 100 ms after the last ask"
        );
        run(&mut tap, t0 + ms(125));
        assert_eq!(asked(&mut tap), [2]);
    }

    #[test]
    fn a_packet_is_given_up_after_ten_asks_or_a_second() {
        let t0 = Instant::now();
        let (mut tap, rtt) = requester(20);
        receive(&mut tap, 100, t0);
        receive(&mut tap, 102, t0);
        run(&mut tap, t0 + ms(1_000));
        assert_eq!(asked(&mut tap).len(), usize::from(MAX_ASKS));
        // A long path: asked until it is a second old, not after.
        rtt.round_trip_us.store(300_000, Ordering::Relaxed);
        receive(&mut tap, 104, t0 + ms(1_000));
        run(&mut tap, t0 + ms(3_000));
        assert_eq!(
            asked(&mut tap),
            [103, 103, 103, 103],
            "at 0, 300, 600 and 900 ms"
        );
    }

    #[test]
    fn wraps_late_packets_and_jumps() {
        let t0 = Instant::now();
        let (mut tap, _) = requester(50);
        receive(&mut tap, 65_534, t0);
        receive(&mut tap, 1, t0);
        assert_eq!(asked(&mut tap), [65_535, 0], "across the wrap");
        receive(&mut tap, 0, t0);
        receive(&mut tap, 65_535, t0);
        run(&mut tap, t0 + ms(500));
        assert!(asked(&mut tap).is_empty(), "both came late");
        // A jump of thousands is a new start, not loss.
        receive(&mut tap, 5_000, t0 + ms(600));
        run(&mut tap, t0 + ms(700));
        assert!(asked(&mut tap).is_empty());
        // Garbage order: older than anything still missing changes nothing.
        receive(&mut tap, 40_000, t0 + ms(700));
        assert!(asked(&mut tap).is_empty(), "{:?}", asked(&mut tap));
    }
}
