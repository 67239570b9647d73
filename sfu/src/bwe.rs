//! What each publisher may send, from what its subscribers can receive.
//!
//! Each subscriber connection estimates its browser's downlink (send-side, from the
//! browser's transport-wide congestion control feedback, by the `rtc` crate's Google
//! Congestion Control; see the engine's `connection_recipe`). A subscriber's estimate is
//! shared equally between the video publishers it receives, after an allowance for each
//! audio track. When the lowest share of a publisher's subscribers is below what that
//! publisher sends, the SFU tells the publisher's browser the most it may send (REMB), and
//! its encoder adapts, as in a direct call where the far end's feedback reaches it: the
//! weakest link sets the rate (until simulcast lets each subscriber get its own layer).
//!
//! Sans-IO: estimates, rates and the time in; the REMB to send out. No allocation.

use std::time::{Duration, Instant};

/// What an audio track is allowed for in a subscriber's estimate (Opus at its usual
/// rate, with headers and some margin), in bits per second.
pub const AUDIO_ALLOWANCE: u64 = 48_000;

/// A publisher is limited once the lowest share of its subscribers is below this fraction
/// of what it sends, for [`LIMIT_AFTER`].
pub const LIMIT_BELOW: f64 = 0.85;

/// How long a share must stay low before the publisher is limited: one estimate that dips
/// does not change what a publisher sends.
pub const LIMIT_AFTER: Duration = Duration::from_millis(1_000);

/// A limited publisher is told again at least this often (browsers keep the last REMB, but
/// an estimate that grows must reach them), and at once when its share falls by more
/// than [`RESEND_DROP`].
pub const REFRESH: Duration = Duration::from_millis(1_000);

/// A drop of the share by this fraction since the last REMB is sent at once.
pub const RESEND_DROP: f64 = 0.03;

/// A share above this means no subscriber constrains the publisher: the limit is lifted.
pub const RELEASE_ABOVE: u64 = 4_000_000;

/// The REMB that lifts a limit: more than any camera or screen sends.
pub const NO_LIMIT: u64 = 100_000_000;

/// The share of a subscriber's downlink estimate (`estimate`, bits per second) that each
/// of the `videos` video publishers it receives may use, after `audios` audio tracks'
/// allowance. `None` when it receives no video.
pub fn share(estimate: u64, videos: usize, audios: usize) -> Option<u64> {
    if videos == 0 {
        return None;
    }
    let audio = AUDIO_ALLOWANCE.saturating_mul(audios as u64);
    Some(estimate.saturating_sub(audio) / videos as u64)
}

/// Whether (and how much) one publisher is limited.
#[derive(Debug, Default, Clone)]
pub struct UplinkLimit {
    /// Since when the lowest share has been below [`LIMIT_BELOW`] of what it sends (not
    /// limited yet).
    low_since: Option<Instant>,
    /// The last REMB sent while limited, and when.
    sent: Option<(Instant, u64)>,
}

impl UplinkLimit {
    /// Whether the publisher is being told a limit.
    pub fn limited(&self) -> bool {
        self.sent.is_some_and(|(_, bps)| bps < NO_LIMIT)
    }

    /// `share`: the lowest share of its subscribers' estimates (None: no subscriber has
    /// one); `sending`: what the publisher sends now, in bits per second. The REMB to send
    /// to the publisher now, if any.
    pub fn update(&mut self, now: Instant, share: Option<u64>, sending: u64) -> Option<u64> {
        let Some(share) = share else {
            // Nobody to limit it for: lift a limit once.
            self.low_since = None;
            return self.release(now);
        };
        if !self.limited() {
            let low = (share as f64) < sending as f64 * LIMIT_BELOW;
            if !low {
                self.low_since = None;
                return None;
            }
            let since = *self.low_since.get_or_insert(now);
            if now.saturating_duration_since(since) < LIMIT_AFTER {
                return None;
            }
            self.low_since = None;
            self.sent = Some((now, share));
            return Some(share);
        }
        if share > RELEASE_ABOVE {
            return self.release(now);
        }
        let (at, last) = self.sent.unwrap_or((now, share));
        let dropped = (share as f64) < last as f64 * (1.0 - RESEND_DROP);
        // The estimator ramps up by itself (and backs off when the link queues or loses):
        // the limit follows it. (Holding the limit's rise to 8 % a second on top left
        // the simulated 300 kbit/s link's publisher at 48-76 kbit/s for 8 s after the
        // first overflow.)
        if dropped || now.saturating_duration_since(at) >= REFRESH {
            self.sent = Some((now, share));
            return Some(share);
        }
        None
    }

    fn release(&mut self, now: Instant) -> Option<u64> {
        if self.limited() {
            self.sent = Some((now, NO_LIMIT));
            Some(NO_LIMIT)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    #[test]
    fn a_share_is_the_estimate_less_audio_split_between_the_videos() {
        assert_eq!(share(1_000_000, 1, 1), Some(952_000));
        assert_eq!(share(1_000_000, 2, 2), Some(452_000));
        assert_eq!(
            share(40_000, 1, 1),
            Some(0),
            "less than the audio: nothing for video"
        );
        assert_eq!(share(1_000_000, 0, 3), None, "no video: nothing to share");
    }

    #[test]
    fn a_publisher_is_limited_after_its_subscribers_share_stays_low_for_a_second() {
        let t = Instant::now();
        let mut u = UplinkLimit::default();
        // A subscriber that can take what it sends: nothing said.
        assert_eq!(u.update(at(t, 0), Some(2_000_000), 1_000_000), None);
        // Its estimate falls below: not at once (one low estimate), but after a second.
        assert_eq!(u.update(at(t, 100), Some(300_000), 1_000_000), None);
        assert_eq!(u.update(at(t, 600), Some(310_000), 1_000_000), None);
        assert_eq!(
            u.update(at(t, 1_100), Some(320_000), 1_000_000),
            Some(320_000)
        );
        assert!(u.limited());
        // Told again every second while it lasts, and at once when the share falls.
        assert_eq!(u.update(at(t, 1_500), Some(330_000), 330_000), None);
        assert_eq!(
            u.update(at(t, 2_100), Some(340_000), 330_000),
            Some(340_000)
        );
        assert_eq!(
            u.update(at(t, 2_200), Some(250_000), 330_000),
            Some(250_000)
        );
        // The subscriber's link recovers: the limit follows, then is lifted.
        assert_eq!(
            u.update(at(t, 3_200), Some(1_000_000), 250_000),
            Some(1_000_000)
        );
        assert_eq!(
            u.update(at(t, 4_200), Some(5_000_000), 1_000_000),
            Some(NO_LIMIT)
        );
        assert!(!u.limited());
        assert_eq!(u.update(at(t, 6_200), Some(5_000_000), 1_000_000), None);
    }

    #[test]
    fn a_low_share_that_recovers_within_the_second_changes_nothing() {
        let t = Instant::now();
        let mut u = UplinkLimit::default();
        assert_eq!(u.update(at(t, 0), Some(300_000), 1_000_000), None);
        assert_eq!(u.update(at(t, 500), Some(900_000), 1_000_000), None);
        assert_eq!(u.update(at(t, 1_200), Some(300_000), 1_000_000), None);
        assert!(!u.limited());
    }

    #[test]
    fn a_limit_is_lifted_when_no_subscriber_has_an_estimate() {
        let t = Instant::now();
        let mut u = UplinkLimit::default();
        assert_eq!(
            u.update(at(t, 0), None, 1_000_000),
            None,
            "never limited: nothing"
        );
        u.update(at(t, 0), Some(100_000), 1_000_000);
        assert_eq!(
            u.update(at(t, 1_000), Some(100_000), 1_000_000),
            Some(100_000)
        );
        assert_eq!(u.update(at(t, 1_200), None, 100_000), Some(NO_LIMIT));
        assert_eq!(u.update(at(t, 1_400), None, 100_000), None, "lifted once");
    }
}
