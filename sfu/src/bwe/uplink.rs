//! What each publisher is told to send: the most it may send (REMB, [`UplinkLimit`]; for
//! a simulcast video, [`simulcast_need`]) and which of its simulcast layers go to
//! thumbnails while nobody needs them ([`LowerLayers`]).

use super::*;

/// Whether (and how much) one publisher is limited.
#[derive(Debug, Default, Clone)]
pub struct UplinkLimit {
    /// Since when the lowest share has been below [`LIMIT_BELOW`] of what it sends (not
    /// limited yet).
    low_since: Option<Instant>,
    /// The last REMB sent while limited, and when.
    sent: Option<(Instant, u64)>,
    hold: Hold,
}

impl UplinkLimit {
    /// Whether the publisher is being told a limit.
    pub fn limited(&self) -> bool {
        self.sent.is_some_and(|(_, bps)| bps < NO_LIMIT)
    }

    /// `share`: the lowest share of its subscribers' estimates (None: no subscriber has
    /// one); `sending`: what the publisher sends now, in bits per second; `measured`: the
    /// share is what a full link was seen to carry (a [`LayerChoice`]'s ceiling), not an
    /// estimate that may dip: it limits at once. The REMB to send to the publisher now, if
    /// any.
    pub fn update(
        &mut self,
        now: Instant,
        share: Option<u64>,
        sending: u64,
        measured: bool,
    ) -> Option<u64> {
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
            if now.saturating_duration_since(since) < LIMIT_AFTER && !measured {
                return None;
            }
            self.low_since = None;
            return Some(self.fall(now, share));
        }
        if share > RELEASE_ABOVE {
            return self.release(now);
        }
        let (at, last) = self.sent.unwrap_or((now, share));
        if (share as f64) < last as f64 * (1.0 - RESEND_DROP) {
            return Some(self.fall(now, share));
        }
        let limit = if self.hold.held(now) {
            share.min(last)
        } else {
            share
        };
        if limit > last {
            self.hold.rose(now);
        }
        if now.saturating_duration_since(at) >= REFRESH {
            self.sent = Some((now, limit));
            return Some(limit);
        }
        None
    }

    /// The limit falls to `share`, and is held there.
    fn fall(&mut self, now: Instant, share: u64) -> u64 {
        self.hold.fell(now);
        self.sent = Some((now, share));
        share
    }

    fn release(&mut self, now: Instant) -> Option<u64> {
        if self.limited() {
            self.hold.clear();
            self.sent = Some((now, NO_LIMIT));
            Some(NO_LIMIT)
        } else {
            None
        }
    }
}

/// What a simulcast publisher's paused lower layers send, in bits per second with the
/// packets' headers: the page keeps them going as a thumbnail (a quarter of the picture's
/// size, at most 60 kbit/s: `media.js`), so that a subscriber whose link fills can be
/// switched down at once, and a browser's lower layers are never off (libwebrtc starts
/// its full layer only once the lower ones have their rate).
pub const THUMBNAIL_BPS: u64 = 70_000;

/// What a browser needs to start a full simulcast layer that is off: [`TOP_FLOOR`] and
/// libwebrtc's 20 % of hysteresis (`video_hysteresis_factor`, 1.2) for a layer turned
/// back on. Told less, Chromium leaves it off (measured: the REMB 314 kbit/s with the
/// thumbnail and the sound, the full layer off for 11 s).
pub const TOP_START: u64 = TOP_FLOOR * 6 / 5;

/// What a simulcast video needs of its publisher's uplink (the REMB's part for it): what
/// its lower layers send (`lower_bps`; a paused one's thumbnail at least) and the best
/// subscriber's `budget` for its top layer, or [`TOP_START`] if that layer is off while
/// the lower ones are paused (its one subscriber waits on the thumbnail meanwhile).
pub fn simulcast_need(lower_bps: u64, lower_paused: bool, top_arriving: bool, budget: u64) -> u64 {
    if !lower_paused {
        return lower_bps + budget;
    }
    let top = if top_arriving {
        budget
    } else {
        budget.max(TOP_START)
    };
    lower_bps.max(THUMBNAIL_BPS) + top
}

/// Lower layers nobody has needed for this long are paused; wanted again, they are asked
/// for at once.
pub const LOWER_PAUSE_AFTER: Duration = Duration::from_secs(3);

/// Lower layers paused while their video's full layer has not come for this long are
/// asked for again: a browser starts a full layer it may send within a second or two of
/// being told ([`TOP_START`]); one that has not, its publisher's own uplink cannot carry
/// (at 20 % loss on it Chromium's estimate held it to about 100 kbit/s), and its one
/// subscriber is left with the thumbnail meanwhile.
pub const TOP_WAIT: Duration = Duration::from_secs(4);

/// After lower layers were asked for again because the full layer did not come
/// ([`TOP_WAIT`]) or stopped, they are not paused again for this long, twice as long
/// after each such try in a row, up to [`PAUSE_RETRY_MAX`]; a full layer that then
/// arrives for [`PAUSE_RETRY_MAX`] while they are paused starts the count again.
pub const PAUSE_RETRY: Duration = Duration::from_secs(30);
pub const PAUSE_RETRY_MAX: Duration = Duration::from_secs(120);

/// Whether pausing a video's lower layers can give its one subscriber the full layer
/// steadily: that layer arrives, or the SFU's own limit on its publisher (REMB) is what
/// keeps it off (the pause makes room for it: [`simulcast_need`]); and the publisher's
/// uplink is not losing packets (`uplink_lossy`: as [`crate::engine::playout`] counts
/// it). A browser's estimate follows its uplink's loss, and a lone full layer it can no
/// longer carry it stops, its subscriber left with the thumbnail and two keyframe
/// switches (Chromium, 20 % loss on the patient's uplink: the clinician's view froze 10
/// times a minute with pauses there, 4–7 without); nor does a browser start a full layer
/// its own uplink keeps off.
pub fn may_pause(top_arriving: bool, held_off: bool, uplink_lossy: bool) -> bool {
    (top_arriving || held_off) && !uplink_lossy
}

/// Whether a simulcast publisher's lower layers are paused (sent as thumbnails), one per
/// published video. Paused once nobody has needed them ([`lower_layers_wanted`]) for
/// [`LOWER_PAUSE_AFTER`] while pausing them can work ([`may_pause`]). Asked for again at
/// once when they are wanted; when the full layer, having come, stops (its publisher's
/// uplink dropped it: its subscriber is on the thumbnail from that moment); and when it
/// has not come for [`TOP_WAIT`]. After either of the last two, not paused again for
/// [`PAUSE_RETRY`] or more. A browser starts with every layer on.
#[derive(Debug, Default, Clone)]
pub struct LowerLayers {
    paused: bool,
    unwanted_since: Option<Instant>,
    /// While paused: since when the full layer has arrived without a break.
    top_since: Option<Instant>,
    /// While paused: whether the full layer has arrived since the pause.
    top_came: bool,
    /// While paused: since when the full layer has not arrived.
    top_missing_since: Option<Instant>,
    held_until: Option<Instant>,
    /// The next hold after a try whose full layer did not come (`None`: [`PAUSE_RETRY`]).
    retry: Option<Duration>,
}

impl LowerLayers {
    /// Whether the publisher was last told to pause them.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// `wanted`: whether anyone needs them now; `top_arriving`: whether the full layer
    /// arrives; `pausable`: whether pausing them can work now ([`may_pause`]). What to
    /// tell the publisher now (`Some(true)`: pause them, `Some(false)`: send them again),
    /// if anything; [`Self::told`] once it is told.
    pub fn update(
        &mut self,
        now: Instant,
        wanted: bool,
        top_arriving: bool,
        pausable: bool,
    ) -> Option<bool> {
        if self.paused {
            if top_arriving {
                self.top_came = true;
                self.top_missing_since = None;
                let since = *self.top_since.get_or_insert(now);
                if now.saturating_duration_since(since) >= PAUSE_RETRY_MAX {
                    self.retry = None;
                }
            } else {
                self.top_since = None;
                self.top_missing_since.get_or_insert(now);
            }
            (wanted || self.top_failed(now)).then_some(false)
        } else if wanted || !pausable || self.held_until.is_some_and(|u| now < u) {
            self.unwanted_since = None;
            None
        } else {
            let since = *self.unwanted_since.get_or_insert(now);
            let pause = now.saturating_duration_since(since) >= LOWER_PAUSE_AFTER;
            if pause {
                // Counted from the pause: whether the full layer came, since when not.
                self.top_came = top_arriving;
                self.top_since = top_arriving.then_some(now);
                self.top_missing_since = (!top_arriving).then_some(now);
            }
            pause.then_some(true)
        }
    }

    /// The publisher was told to pause them (`pause`) or send them again.
    pub fn told(&mut self, now: Instant, pause: bool) {
        if !pause && self.top_failed(now) {
            let hold = self.retry.unwrap_or(PAUSE_RETRY);
            self.held_until = Some(now + hold);
            self.retry = Some((hold * 2).min(PAUSE_RETRY_MAX));
        }
        self.paused = pause;
        self.unwanted_since = None;
        if !pause {
            self.top_since = None;
            self.top_came = false;
            self.top_missing_since = None;
        }
    }

    /// While paused: the full layer stopped after it came, or has not come for
    /// [`TOP_WAIT`].
    fn top_failed(&self, now: Instant) -> bool {
        self.top_missing_since
            .is_some_and(|since| self.top_came || now.saturating_duration_since(since) >= TOP_WAIT)
    }
}

/// Whether a simulcast video's lower layers are needed: unless it has one subscriber
/// (`budgets`: each subscriber's [`LayerChoice::budget`], `None` for one with no estimate
/// yet or in sound only) whose budget is at least [`TOP_FLOOR`]. With one subscriber the
/// video runs as a direct call's one stream does, its full layer at the rate that
/// subscriber's link carries (a browser will not send its full layer beside the half one
/// in the 350 kbit/s a capped link leaves it: libwebrtc's simulcast allocator fills the
/// lower layer first); with more, each gets the layer its link takes.
pub fn lower_layers_wanted(budgets: &[Option<u64>]) -> bool {
    !matches!(budgets, [Some(b)] if *b >= TOP_FLOOR)
}
