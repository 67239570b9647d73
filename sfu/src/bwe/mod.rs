//! What each publisher may send, from what its subscribers can receive.
//!
//! Each subscriber connection estimates its browser's downlink (send-side, from the
//! browser's transport-wide congestion control feedback: the delay-based half of the
//! `rtc` crate's Google Congestion Control and our own loss half, [`LossLimit`]; see the
//! engine's `connection_recipe`). A subscriber's estimate is
//! shared equally between the video publishers it receives, after an allowance for each
//! audio track. When the lowest share of a publisher's subscribers is below what that
//! publisher sends, the SFU tells the publisher's browser the most it may send (REMB), and
//! its encoder adapts, as in a direct call where the far end's feedback reaches it: the
//! weakest link sets the rate (until simulcast lets each subscriber get its own layer).
//!
//! Sans-IO: estimates, rates and the time in; the REMB to send out. No allocation but a
//! downlink's last second of feedback batches ([`Delivered`]).
//!
//! The parts: `downlink.rs` estimates each subscriber's downlink from its feedback;
//! `layers.rs` chooses the simulcast layer each subscriber gets of each video (and probes
//! before a move up); `uplink.rs` says what each publisher is told to send (REMB, and
//! which of its layers go to thumbnails); `tests.rs` tests them together. Here: the
//! shares and the hold they use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};

mod downlink;
mod layers;
mod uplink;

pub use downlink::*;
pub use layers::*;
pub use uplink::*;

/// Where a downlink estimate starts, in bits per second: above what a browser's camera
/// sends, so that it falls only on evidence (delay growing, packets lost) and never limits
/// a publisher merely because it started low.
pub const ESTIMATE_INITIAL: f64 = 2_500_000.0;
/// Its floor and ceiling.
pub const ESTIMATE_MIN: f64 = 30_000.0;
pub const ESTIMATE_MAX: f64 = 20_000_000.0;

/// What an audio track is allowed for in a subscriber's estimate (Opus at its usual
/// rate, with headers and some margin), in bits per second.
pub const AUDIO_ALLOWANCE: u64 = 48_000;
/// The same for an audio track received in RED (each packet carries the one or two before
/// it again): Chromium's RED payload measured 41–49 kbit/s where its plain Opus was
/// 21–25, each with about 25 kbit/s of headers at 50 packets a second.
pub const RED_ALLOWANCE: u64 = 72_000;

/// What one audio track is allowed for: [`RED_ALLOWANCE`] if it arrives in RED.
pub fn audio_allowance(red: bool) -> u64 {
    if red { RED_ALLOWANCE } else { AUDIO_ALLOWANCE }
}

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

/// After a limit falls it is held this long before it may rise with the estimate again (a
/// probe of the link); a fall within this long of a rise (the probe failed) makes the next
/// hold half as long again, up to [`PROBE_WAIT_MAX`]; a later fall starts again from
/// here. The `rtc` crate's estimator grows its estimate until the link queues or loses,
/// well past what the link carries (a 350 kbit/s link's rose to 590 kbit/s before it fell
/// to 210), and a publisher told each step overshoots and freezes its viewers each time;
/// held, the publisher spends most of the call just under the link's rate. LiveKit's
/// stream allocator does the same with its probes (5 s, 1.5 times, at most 30 s).
pub const PROBE_WAIT: Duration = Duration::from_secs(5);
pub const PROBE_WAIT_MAX: Duration = Duration::from_secs(30);
pub const PROBE_BACKOFF: f64 = 1.5;

/// A share above this means no subscriber constrains the publisher: the limit is lifted.
pub const RELEASE_ABOVE: u64 = 4_000_000;

/// The REMB that lifts a limit: more than any camera or screen sends.
pub const NO_LIMIT: u64 = 100_000_000;

/// The share of a subscriber's downlink estimate (`estimate`, bits per second) that each
/// of the `videos` video publishers it receives may use, after `audio` (the allowances
/// of the audio tracks it receives, [`audio_allowance`]). `None` when it receives no
/// video.
pub fn share(estimate: u64, videos: usize, audio: u64) -> Option<u64> {
    if videos == 0 {
        return None;
    }
    Some(estimate.saturating_sub(audio) / videos as u64)
}

/// When a rate (a publisher's limit, a subscriber's layer) may rise again after it fell:
/// held [`PROBE_WAIT`] after each fall, half as long again (up to [`PROBE_WAIT_MAX`])
/// after a fall that came within [`PROBE_WAIT`] of a rise (the link could not take it).
#[derive(Debug, Default, Clone)]
pub struct Hold {
    /// No rise before this.
    until: Option<Instant>,
    /// The current hold ([`PROBE_WAIT`] until a rise fails).
    wait: Option<Duration>,
    /// When it last rose after a hold.
    rose_at: Option<Instant>,
}

impl Hold {
    /// Whether it may not rise now.
    pub fn held(&self, now: Instant) -> bool {
        self.until.is_some_and(|until| now < until)
    }

    /// It rose (the first rise after a fall counts).
    pub fn rose(&mut self, now: Instant) {
        if self.rose_at.is_none() {
            self.rose_at = Some(now);
        }
    }

    /// It fell: held from now. A fall within the hold (the same fall going on, in
    /// steps) keeps the hold's length; one soon after a rise lengthens it; one after a rise
    /// that held starts again from [`PROBE_WAIT`].
    pub fn fell(&mut self, now: Instant) {
        let failed = self
            .rose_at
            .is_some_and(|rose| now.saturating_duration_since(rose) < PROBE_WAIT);
        let wait = match self.wait {
            Some(wait) if failed => wait.mul_f64(PROBE_BACKOFF).min(PROBE_WAIT_MAX),
            None if failed => PROBE_WAIT.mul_f64(PROBE_BACKOFF),
            Some(wait) if self.held(now) => wait,
            _ => PROBE_WAIT,
        };
        self.wait = Some(wait);
        self.until = Some(now + wait);
        self.rose_at = None;
    }

    /// Nothing constrains it any more.
    pub fn clear(&mut self) {
        *self = Hold::default();
    }
}

#[cfg(test)]
mod tests;
