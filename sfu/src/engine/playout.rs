//! A subscriber's video waits long enough for what its publishers' uplinks lose to be
//! repaired (the subscriber leg's interceptor writing the playout-delay header extension).
//!
//! A browser sizes its video jitter buffer by its own round trip: the time a lost packet
//! takes to come again. Through the SFU a packet its publisher's uplink lost comes again
//! only after the *publisher's* round trip, which the subscriber's browser does not know:
//! on a clean, short path of its own it waited about 20 ms, and every packet repaired
//! upstream came too late for its frame (Chromium, the patient's uplink losing 5 % with a
//! 150 ms round trip: the clinician's view froze 15 times a minute, 0–2 in a direct call,
//! where the receiver's own round trip is that path). The SFU negotiates
//! `http://www.webrtc.org/experiments/rtp-hdrext/playout-delay` on its video and, while a
//! publisher in the room has lost packets on its uplink within [`LOSSY_FOR`], writes into
//! every video packet to its subscribers a minimum playout delay of [`ROUND_TRIPS`] of
//! that publisher's round trips plus [`MARGIN`]; the browser plays its video (and, to keep
//! them in sync, its audio) that much later. A subscriber whose own downlink loses
//! ([`LOSSY_PPM`]) gets as much of its own round trip: a browser's buffer of about one
//! round trip let the SFU's retransmission of a packet lost at the end of a frame come
//! after the next frame was due, and with temporal layers the browser then drops the frame
//! (5 % loss, 150 ms: 50 to 118 frames a minute dropped, 7 with the delay). The highest of
//! these is [`PlayoutDelay`], set by the endpoint every tick. Once a delay was written,
//! the extension stays on the stream (a minimum of 0 once the loss is over: a browser
//! keeps the last value it was given).
//!
//! Two round trips, not one: a repair whose NACK or retransmission is lost too (as often
//! as any packet, 5 % at 5 % loss) is asked again a round trip later. With one round trip
//! and the margin (about 200 ms at 150 ms), the SFU's log put each of the patient's
//! freezes (2 to 5 a minute at 5 % loss, 150 ms) on such a repair, 300 to 500 ms after its
//! packet was first sent; with two (400 to 450 ms written), 1 a minute (0 to 1), the
//! direct call 1 (1 to 1) in the same hour. A conversation over that path is about 200 ms
//! later for it, and only while it loses.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::interceptor::{Packet, StreamInfo, TaggedPacket};

use super::tap::{Hook, Tap};

/// The extension's URI, as Chrome and Firefox offer it.
pub const URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";

/// Where it sits: above the transport-wide numbering (2_000) and the sender reports, below
/// the layer that hands RTCP to the application (14_000).
pub(super) const SLOT: usize = 12_600;

/// The minimum playout delay for a subscriber's video, in milliseconds (0: none), shared
/// between the endpoint and the subscriber leg.
pub(crate) type PlayoutDelay = Arc<AtomicU32>;

/// How many of a lossy link's round trips its video waits: a repair asked once, and once
/// more when its NACK or its retransmission was lost.
pub const ROUND_TRIPS: u32 = 2;

/// Added to the round trips: the time to see the gap and ask, and jitter.
pub const MARGIN: Duration = Duration::from_millis(50);

/// A link counts as lossy for this long after it last lost packets.
pub const LOSSY_FOR: Duration = Duration::from_secs(10);

/// A subscriber's downlink losing this share of packets (millionths, over its estimator's
/// window) counts as lossy.
pub const LOSSY_PPM: u64 = 10_000;

/// The highest minimum the SFU asks for, however long a publisher's round trip.
pub const MAX_DELAY: Duration = Duration::from_millis(600);

/// The maximum playout delay written alongside: the extension's largest (40.95 s), so
/// that it limits nothing (a small maximum turns on Chrome's low-latency rendering).
const MAX_FIELD: u32 = 0xfff;

/// The delay written moves in steps of this: a round trip measured afresh every tick moves
/// by a few milliseconds each time, and the browser need not be told each (it moved its
/// playout with every one: 500 changes a minute).
pub const STEP_MS: u32 = 50;

/// A lower need must hold this long before the delay written comes down to it: the round
/// trip of a lossy link is noisy (at 20 % loss and 1 ms the need moved between 50 and
/// 200 ms, and a delay that came down at once changed 150 times a minute).
pub const LOWER_AFTER: Duration = Duration::from_secs(5);

/// The delay written to one subscriber's video: moved in steps of [`STEP_MS`], up at once,
/// down only after [`LOWER_AFTER`].
#[derive(Debug, Default)]
pub struct Settle {
    ms: u32,
    /// Since when the need has been a whole step under `ms`.
    lower_since: Option<Instant>,
}

impl Settle {
    /// The delay (ms) to write for a need of `needed` at `now`: up to the next [`STEP_MS`]
    /// as soon as it is over what is written; down to it once it has been a whole step
    /// under for [`LOWER_AFTER`]; 0 at once when nothing is lossy (the loss has been over
    /// for [`LOSSY_FOR`] already).
    pub fn next(&mut self, needed: Duration, now: Instant) -> u32 {
        let needed = u32::try_from(needed.as_millis()).unwrap_or(u32::MAX);
        let stepped = needed.div_ceil(STEP_MS).saturating_mul(STEP_MS);
        if needed == 0 || stepped > self.ms {
            self.ms = stepped;
            self.lower_since = None;
        } else if self.ms.saturating_sub(needed) >= STEP_MS {
            let since = *self.lower_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= LOWER_AFTER {
                self.ms = stepped;
                self.lower_since = None;
            }
        } else {
            self.lower_since = None;
        }
        self.ms
    }
}

/// The minimum playout delay a subscriber's video needs for the repairs of its lossy
/// links (its publishers' uplinks, its own downlink): [`ROUND_TRIPS`] of the longest lossy
/// round trip plus [`MARGIN`], at most [`MAX_DELAY`]; 0 if none is lossy.
pub fn delay_for(lossy_round_trips: impl IntoIterator<Item = Duration>) -> Duration {
    lossy_round_trips
        .into_iter()
        .max()
        .map_or(Duration::ZERO, |rtt| {
            (rtt * ROUND_TRIPS + MARGIN).min(MAX_DELAY)
        })
}

/// The interceptor, writing what `delay` holds.
pub(super) fn interceptor(delay: PlayoutDelay) -> Tap<PlayoutWriter> {
    Tap::new(PlayoutWriter {
        delay,
        ids: HashMap::new(),
        written: None,
    })
}

pub(super) struct PlayoutWriter {
    delay: PlayoutDelay,
    /// The extension's id on each video stream sent that negotiated it, by SSRC.
    ids: HashMap<u32, u8>,
    /// The last delay written (ms) and its encoded extension (shared by every packet that
    /// carries it: no allocation per packet); `None` until a delay was first asked for.
    written: Option<(u32, Bytes)>,
}

impl std::fmt::Debug for PlayoutWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlayoutWriter")
            .field("streams", &self.ids.len())
            .field("delay_ms", &self.written.as_ref().map(|w| w.0))
            .finish()
    }
}

/// The extension's three bytes for a minimum of `ms`: minimum and maximum, 12 bits each,
/// in 10 ms units (rounded up).
fn encode(ms: u32) -> Bytes {
    let min = ms.div_ceil(10).min(MAX_FIELD);
    let v = (min << 12) | MAX_FIELD;
    Bytes::copy_from_slice(&v.to_be_bytes()[1..])
}

impl Hook for PlayoutWriter {
    fn write(&mut self, msg: &mut TaggedPacket) -> bool {
        let Packet::Rtp(p) = &mut msg.message.packet else {
            return true;
        };
        let Some(&id) = self.ids.get(&p.header.ssrc) else {
            return true;
        };
        let ms = self.delay.load(Ordering::Relaxed);
        let bytes = match &self.written {
            Some((last, bytes)) if *last == ms => bytes.clone(),
            None if ms == 0 => return true,
            _ => {
                let bytes = encode(ms);
                self.written = Some((ms, bytes.clone()));
                bytes
            }
        };
        if let Err(e) = p.header.set_extension(id, bytes) {
            tracing::debug!(error = %e, "playout delay not written");
        }
        true
    }

    fn bind_local_stream(&mut self, info: &StreamInfo) {
        if let Some(ext) = info.rtp_header_extensions.iter().find(|e| e.uri == URI) {
            if let Ok(id) = u8::try_from(ext.id) {
                self.ids.insert(info.ssrc, id);
            }
        }
    }

    fn unbind_local_stream(&mut self, info: &StreamInfo) {
        self.ids.remove(&info.ssrc);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtc::interceptor::{AttributedPacket, RTPHeaderExtension};
    use rtc::rtp;
    use rtc::sansio::Protocol;
    use rtc::shared::TransportContext;
    use std::time::Instant;

    const VIDEO: u32 = 7;
    const OTHER: u32 = 8;
    const ID: u8 = 9;

    fn writer() -> (Tap<PlayoutWriter>, PlayoutDelay) {
        let delay = PlayoutDelay::default();
        let mut tap = interceptor(delay.clone());
        let info = StreamInfo {
            ssrc: VIDEO,
            rtp_header_extensions: vec![RTPHeaderExtension {
                uri: URI.into(),
                id: ID.into(),
            }],
            ..Default::default()
        };
        rtc::interceptor::Interceptor::bind_local_stream(&mut tap, &info);
        (tap, delay)
    }

    /// The extension a packet of `ssrc` goes out with, if any.
    fn send(tap: &mut Tap<PlayoutWriter>, ssrc: u32) -> Option<Bytes> {
        let packet = rtp::Packet {
            header: rtp::Header {
                ssrc,
                ..Default::default()
            },
            payload: Bytes::from_static(b"video"),
        };
        tap.handle_write(TaggedPacket {
            now: Instant::now(),
            transport: TransportContext::default(),
            message: AttributedPacket::new(Packet::Rtp(packet)),
        })
        .unwrap();
        let out = tap.poll_write().expect("passed on");
        let Packet::Rtp(p) = out.message.packet else {
            panic!("not RTP");
        };
        p.header.get_extension(ID)
    }

    #[test]
    fn the_delay_is_written_while_asked_for_and_zero_after() {
        let (mut tap, delay) = writer();
        assert_eq!(
            send(&mut tap, VIDEO),
            None,
            "nothing asked for: nothing written"
        );
        delay.store(205, Ordering::Relaxed);
        // 21 (205 ms rounded up to 10 ms units) and 0xfff.
        assert_eq!(
            send(&mut tap, VIDEO).as_deref(),
            Some(&[0x01, 0x5f, 0xff][..])
        );
        assert_eq!(
            send(&mut tap, OTHER),
            None,
            "a stream without the extension"
        );
        delay.store(0, Ordering::Relaxed);
        assert_eq!(
            send(&mut tap, VIDEO).as_deref(),
            Some(&[0x00, 0x0f, 0xff][..]),
            "the browser keeps the last value: 0 is written"
        );
    }

    #[test]
    fn the_delay_is_two_of_the_longest_lossy_round_trips_with_a_margin_and_bounded() {
        let ms = Duration::from_millis;
        assert_eq!(delay_for([]), Duration::ZERO);
        assert_eq!(delay_for([ms(150), ms(20)]), ms(350));
        assert_eq!(delay_for([ms(20)]), ms(90));
        assert_eq!(delay_for([ms(2_000)]), MAX_DELAY);
    }

    #[test]
    fn the_delay_written_moves_in_steps_up_at_once_and_down_only_after_a_while() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_millis(s);
        let mut d = Settle::default();
        assert_eq!(d.next(ms(353), at(0)), 400, "up to the next step at once");
        assert_eq!(d.next(ms(392), at(100)), 400);
        assert_eq!(d.next(ms(353), at(200)), 400, "a little under: held");
        assert_eq!(d.next(ms(412), at(300)), 450, "over: up at once");
        assert_eq!(d.next(ms(160), at(400)), 450, "a whole step under: not yet");
        assert_eq!(
            d.next(ms(420), at(2_000)),
            450,
            "back up: the wait starts over"
        );
        assert_eq!(d.next(ms(160), at(3_000)), 450);
        assert_eq!(d.next(ms(180), at(7_999)), 450);
        assert_eq!(
            d.next(ms(180), at(8_000)),
            200,
            "under for LOWER_AFTER: down"
        );
        assert_eq!(d.next(ms(0), at(8_100)), 0, "nothing lossy: off at once");
        assert_eq!(d.next(ms(1), at(8_200)), 50);
    }
}
