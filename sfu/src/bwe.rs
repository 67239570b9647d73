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
//! Sans-IO: estimates, rates and the time in; the REMB to send out. No allocation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rtc::interceptor::{BandwidthEstimator, EstimatorStats, Gcc, PacketReport};

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
    /// one); `sending`: what the publisher sends now, in bits per second. The REMB to send
    /// to the publisher now, if any.
    pub fn update(&mut self, now: Instant, share: Option<u64>, sending: u64) -> Option<u64> {
        self.update_with(now, share, sending, false)
    }

    /// The same, `measured`: the share is what a full link was seen to carry (a
    /// [`LayerChoice`]'s ceiling), not an estimate that may dip: it limits at once.
    pub fn update_with(
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

/// A higher simulcast layer is taken only when the subscriber's share is this much above
/// what the layer sends (its rate varies from second to second).
pub const LAYER_UP_MARGIN: f64 = 1.15;

/// A limited simulcast publisher's top layer is sized (by REMB, after what its lower
/// layers send) to its best subscriber's budget ([`LayerChoice::budget`]): this fraction
/// of its share, so that the layer fits the share with the margin a move up needs
/// ([`LAYER_UP_MARGIN`]) and room for its rate's swings, or what its link is known to
/// carry, if less (that was measured).
pub const TOP_FIT: f64 = 0.8;

/// The least a browser sends its full simulcast layer at, in bits per second with the
/// packets' headers: libwebrtc's least for 640x360 is 150 kbit/s, interpolated about 200
/// for 640x480 (the pages' camera); Chromium's full layer measured 215–250 on its own.
/// A lone subscriber whose budget for a video is at least this gets its full layer at that
/// budget, the lower layers paused ([`lower_layers_wanted`]).
pub const TOP_FLOOR: u64 = 200_000;

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

/// Lower layers paused while their video's full layer does not come for this long are
/// asked for again: its publisher's own uplink cannot carry the full layer (at 20 % loss
/// on it Chromium's estimate held it to about 100 kbit/s), and its one subscriber would
/// be left with the thumbnail. A browser starts a full layer it may send within a second
/// or two of being told ([`TOP_START`]).
pub const TOP_WAIT: Duration = Duration::from_secs(4);

/// After lower layers were asked for again because the full layer did not come
/// ([`TOP_WAIT`]), they are not paused again for this long, twice as long after each such
/// try in a row, up to [`PAUSE_RETRY_MAX`] (each try costs its subscriber [`TOP_WAIT`] on
/// the thumbnail).
pub const PAUSE_RETRY: Duration = Duration::from_secs(30);
pub const PAUSE_RETRY_MAX: Duration = Duration::from_secs(120);

/// Whether a simulcast publisher's lower layers are paused (sent as thumbnails), one per
/// published video: paused once nobody has needed them ([`lower_layers_wanted`]) for
/// [`LOWER_PAUSE_AFTER`], asked for again at once when they are wanted, or when the full
/// layer has not come for [`TOP_WAIT`] while they were paused (then not paused again for
/// [`PAUSE_RETRY`] or more). A browser starts with every layer on.
#[derive(Debug, Default, Clone)]
pub struct LowerLayers {
    paused: bool,
    unwanted_since: Option<Instant>,
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
    /// arrives. What to tell the publisher now (`Some(true)`: pause them, `Some(false)`:
    /// send them again), if anything; [`Self::told`] once it is told.
    pub fn update(&mut self, now: Instant, wanted: bool, top_arriving: bool) -> Option<bool> {
        if self.paused {
            if top_arriving {
                self.top_missing_since = None;
                self.retry = None;
            } else {
                self.top_missing_since.get_or_insert(now);
            }
            (wanted || self.top_missing(now)).then_some(false)
        } else if wanted || self.held_until.is_some_and(|u| now < u) {
            self.unwanted_since = None;
            None
        } else {
            let since = *self.unwanted_since.get_or_insert(now);
            (now.saturating_duration_since(since) >= LOWER_PAUSE_AFTER).then_some(true)
        }
    }

    /// The publisher was told to pause them (`pause`) or send them again.
    pub fn told(&mut self, now: Instant, pause: bool) {
        if !pause && self.top_missing(now) {
            let hold = self.retry.unwrap_or(PAUSE_RETRY);
            self.held_until = Some(now + hold);
            self.retry = Some((hold * 2).min(PAUSE_RETRY_MAX));
        }
        self.paused = pause;
        self.unwanted_since = None;
        self.top_missing_since = None;
    }

    fn top_missing(&self, now: Instant) -> bool {
        self.top_missing_since
            .is_some_and(|since| now.saturating_duration_since(since) >= TOP_WAIT)
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

/// A top layer sized to a subscriber's ceiling is sized to this fraction of it: the
/// ceiling is what its link delivered while full, and a link kept full queues and drops
/// (sized to the whole of it, Chromium's full layer and its sound filled a 350 kbit/s
/// link to 350 and froze three times a minute; a direct call keeps to about 330).
pub const CEILING_FIT: f64 = 0.9;

/// A ceiling ([`LayerChoice`]) is raised by this factor each time a probe passes.
pub const CEILING_STEP: f64 = 1.5;

/// A layer taken up is on trial this long: see [`LayerChoice`].
pub const LAYER_TRIAL: Duration = Duration::from_secs(3);

/// Loss on the subscriber's downlink this much above what it was before a move up (in
/// millionths, over the estimator's windows) ends the trial: the link cannot take the
/// layer. Above what a window of random loss varies by (about 2.5 points at 5 %).
pub const TRIAL_LOSS_PPM: u64 = 80_000;

/// How long a probe runs before a move up: several feedback messages (a browser sends
/// one every 50 to 100 ms) after the queue of a link that cannot take the rate has grown
/// past [`PROBE_QUEUE_MAX`].
pub const PROBE_LENGTH: Duration = Duration::from_millis(800);

/// A probe's rate climbs from nothing to its full rate over this first part of it: a link
/// that cannot take the full rate shows it by a queue that grows slowly, and is let off
/// before it holds more than about 100 ms (its feedback comes 50 to 100 ms late).
pub const PROBE_RAMP: Duration = Duration::from_millis(500);

/// A probe fails, and is stopped at once ([`LayerChoice::watch`], as often as probe
/// packets go), the moment the subscriber's downlink queues its packets more than this
/// (above the least one-way delay of the last seconds) or loses [`TRIAL_LOSS_PPM`] more
/// than before it; it passes if neither happened by its end. The figure the SFU reads is
/// late by the queue itself and the browser's wait before its feedback (50–100 ms), while
/// the probe's ramp grows the queue about as fast as time passes: stopped at 80 ms (until
/// session 18; 50 ms was then the mark to pass at the end), the queue of a 350 kbit/s cap
/// had reached its 200 ms bound and dropped 1–4 packets a minute (each a short freeze:
/// their repairs came through the full queue after their frames were due).
pub const PROBE_QUEUE_MAX: Duration = Duration::from_millis(50);

/// A queue this long on a subscriber's downlink, for [`LAYER_QUEUE_FOR`] without a break,
/// takes one video it receives down a layer ([`QueueWatch`]), whatever its estimate says:
/// what it is sent does not fit its link. The estimate follows only seconds later (the
/// `rtc` crate's, grown while the subscriber took less than its link, fell to the link's
/// rate 6 s after a 350 kbit/s cap, the picture frozen meanwhile). A keyframe queues for
/// less time than this takes.
pub const LAYER_QUEUE_HIGH: Duration = Duration::from_millis(100);
pub const LAYER_QUEUE_FOR: Duration = Duration::from_millis(1_000);

/// Whether a subscriber's downlink keeps queueing: past [`LAYER_QUEUE_HIGH`] for
/// [`LAYER_QUEUE_FOR`] without a break. One per downlink, not per video: each time it
/// says so, one video sheds a layer ([`DownlinkState::shed`]), and the next step needs
/// another [`LAYER_QUEUE_FOR`] of queueing.
#[derive(Debug, Default, Clone)]
pub struct QueueWatch {
    since: Option<Instant>,
}

impl QueueWatch {
    /// The queue as its feedback last said (`None`: no figure); whether to shed now.
    pub fn lasting(&mut self, now: Instant, queue: Option<Duration>) -> bool {
        match queue {
            Some(q) if q > LAYER_QUEUE_HIGH => {
                let since = *self.since.get_or_insert(now);
                if now.saturating_duration_since(since) >= LAYER_QUEUE_FOR {
                    self.since = None;
                    return true;
                }
                false
            }
            _ => {
                self.since = None;
                false
            }
        }
    }
}

/// What a subscriber's downlink shows, as its estimator last had it; told to each
/// [`LayerChoice`] before it chooses.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DownlinkState {
    /// The fraction lost, in millionths (`None`: no figure yet).
    pub loss_ppm: Option<u64>,
    /// How long its packets wait in the path's queues now: the one-way delay over the
    /// least of the last seconds (`None`: no figure yet).
    pub queue: Option<Duration>,
    /// Whether the SFU can probe it (its connection has a probe track with a codec).
    pub probes: bool,
    /// Its link keeps queueing ([`QueueWatch`]) and this video is the one to go down a
    /// layer now.
    pub shed: bool,
    /// This video's share of what the link delivered over the last second
    /// ([`Downlink::delivered_bps`], less the audio, split as the estimate is): when the
    /// link is full, what it carries of this video (`None`: no figure).
    pub carried: Option<u64>,
}

/// Which simulcast layer one subscriber receives of one video track, from its share of
/// its downlink and what each layer sends. Down at once when the layer it has does not fit
/// its share (to the highest that does, or the lowest); up one layer at a time, once the
/// layer above fits with [`LAYER_UP_MARGIN`] and not within a [`Hold`] of the last fall:
/// the estimate climbs until the link queues (while the subscriber receives less than its
/// link carries, nothing holds it back), and each layer taken too early freezes the
/// picture until the subscriber is back down.
///
/// So a move up is first **probed** when the subscriber's connection can be
/// ([`DownlinkState::probes`]): for [`PROBE_LENGTH`] the SFU sends it, besides its
/// media, what the layer above would add ([`Self::probing`]), on a track of its own
/// that it never shows; the move is made only if its queue stayed under
/// [`PROBE_QUEUE_MAX`] and its loss did not rise. A probe that fails counts as a rise
/// that failed (the next hold is longer) but costs the picture nothing, or a few packets
/// retransmitted. Then the move is on trial for [`LAYER_TRIAL`]: if the downlink's loss
/// rises by [`TRIAL_LOSS_PPM`] meanwhile, back down at once, without waiting for the
/// estimate to fall below the layer (which took 3 to 4 s of overflow under a 350 kbit/s
/// cap, the picture frozen throughout).
///
/// A fall, or a probe that fails, shows what the subscriber's link carries of this video:
/// its **ceiling**, the rate of the layer it has (raised while that layer sends more).
/// The publisher is then told to size its top layer to fit it ([`Self::budget`], by
/// REMB), and a top layer that fits the ceiling is taken at once, without a hold or a
/// probe: the subscriber gets the full picture at the rate its link carries, as a direct
/// call keeps its one stream's resolution and lowers its rate. The ceiling rises only by
/// probes ([`CEILING_STEP`] each, after the hold, while its top layer uses it), since the
/// estimate says little while the link carries less than it could; one well above what
/// the top layer sends (its publisher sends all it has) is dropped.
#[derive(Debug, Default, Clone)]
pub struct LayerChoice {
    chosen: Option<u8>,
    hold: Hold,
    /// What the subscriber's link is known to carry of this video, in bits per second
    /// (`None`: nothing is known to bind it; its share rules).
    ceiling: Option<u64>,
    /// When the ceiling was last set or raised.
    ceiling_at: Option<Instant>,
    /// The highest layer it has seen arriving (its publisher's top layer).
    top: u8,
    /// The downlink as last told ([`Self::downlink`]).
    downlink: DownlinkState,
    probe: Option<Probe>,
    trial: Option<Trial>,
}

/// A move up, or a higher ceiling, being probed.
#[derive(Debug, Clone, Copy)]
struct Probe {
    from_time: Instant,
    until: Instant,
    from: u8,
    /// The layer to move to if it passes (`from` itself: the ceiling is raised).
    to: u8,
    /// What the subscriber receives of this video during the probe (its layer and the
    /// probe): its ceiling if it passes.
    target: u64,
    /// What it adds, in bits per second.
    extra: u64,
    /// What layer `from` sent when it began.
    from_rate: u64,
    loss_before: u64,
}

/// A move up being tried.
#[derive(Debug, Clone, Copy)]
struct Trial {
    until: Instant,
    /// The layer it came from.
    from: u8,
    /// The downlink's loss before the move.
    loss_before: u64,
}

impl LayerChoice {
    /// What the subscriber's downlink shows now; told before each [`Self::choose`].
    pub fn downlink(&mut self, state: DownlinkState) {
        self.downlink = state;
    }

    /// The layer it has (`None` before its first choice).
    pub fn chosen(&self) -> Option<u8> {
        self.chosen
    }

    /// While a move up is probed: what it adds to what the subscriber receives, in bits
    /// per second.
    pub fn probing(&self) -> Option<u64> {
        self.probe.map(|p| p.extra)
    }

    /// While a move up is probed: what the SFU should send the subscriber now besides its
    /// media, in bits per second (climbing over [`PROBE_RAMP`]).
    pub fn probe_rate(&self, now: Instant) -> Option<u64> {
        self.probe.map(|p| {
            let into = now.saturating_duration_since(p.from_time);
            let part = (into.as_secs_f64() / PROBE_RAMP.as_secs_f64()).min(1.0);
            (p.extra as f64 * part) as u64
        })
    }

    /// Between choices, as often as probe packets go: a probe whose link shows it is full
    /// (its queue past [`PROBE_QUEUE_MAX`], or more loss) fails now, and the layer
    /// stays. Whether it still runs.
    pub fn watch(&mut self, now: Instant, state: DownlinkState) -> bool {
        let Some(probe) = self.probe else {
            return false;
        };
        self.downlink = state;
        if self.probe_full(&probe) {
            self.probe = None;
            self.probe_failed(now, &probe);
            return false;
        }
        true
    }

    /// The probe's link is full: queued past [`PROBE_QUEUE_MAX`], or losing more.
    fn probe_full(&self, probe: &Probe) -> bool {
        self.downlink.queue.unwrap_or_default() > PROBE_QUEUE_MAX
            || self.loss_rose(probe.loss_before)
    }

    /// The loss now is [`TRIAL_LOSS_PPM`] above `before`.
    fn loss_rose(&self, before: u64) -> bool {
        self.downlink
            .loss_ppm
            .is_some_and(|l| l > before.saturating_add(TRIAL_LOSS_PPM))
    }

    /// What the publisher may size its top layer to for this subscriber: [`TOP_FIT`] of
    /// its `share`, or [`CEILING_FIT`] of its ceiling if less.
    pub fn budget(&self, share: u64) -> u64 {
        let fit = (share as f64 * TOP_FIT) as u64;
        self.ceiling_budget().map_or(fit, |c| c.min(fit))
    }

    /// Whether [`Self::budget`] is its ceiling's (measured), not its share's (estimated).
    pub fn budget_measured(&self, share: u64) -> bool {
        self.ceiling_budget()
            .is_some_and(|c| c < (share as f64 * TOP_FIT) as u64)
    }

    fn ceiling_budget(&self) -> Option<u64> {
        self.ceiling.map(|c| (c as f64 * CEILING_FIT) as u64)
    }

    /// What its link is known to carry of this video (`None`: nothing binds it).
    pub fn ceiling(&self) -> Option<u64> {
        self.ceiling
    }

    fn set_ceiling(&mut self, now: Instant, bps: Option<u64>) {
        if let Some(bps) = bps {
            self.ceiling = Some(bps);
            self.ceiling_at = Some(now);
        }
    }

    /// A fall to `layer`, which sends `rate`, because its link is full: held, and its
    /// link known to carry what it delivered (it was full) or at least that layer.
    fn fall_to(&mut self, now: Instant, layer: u8, rate: Option<u64>) -> u8 {
        self.hold.fell(now);
        let carried = match (rate, self.downlink.carried) {
            (Some(r), Some(c)) => Some(r.max(c)),
            (r, c) => r.or(c),
        };
        self.set_ceiling(now, carried);
        layer
    }

    /// A probe failed: held longer, and if nothing bound it yet, its link is known to
    /// carry the layer it has.
    fn probe_failed(&mut self, now: Instant, probe: &Probe) {
        self.hold.fell(now);
        if self.ceiling.is_none() {
            self.set_ceiling(now, Some(probe.from_rate));
        }
    }

    /// `rates[l]`: what layer `l` sends, in bits per second, or `None` if it is not
    /// arriving; `share`: the subscriber's share for this track (`None` before its first
    /// estimate). The layer it should receive now (`None`: no layer is arriving).
    pub fn choose(
        &mut self,
        now: Instant,
        rates: &[Option<u64>],
        share: Option<u64>,
    ) -> Option<u8> {
        let active = || {
            rates
                .iter()
                .enumerate()
                .filter_map(|(l, r)| r.map(|r| (l as u8, r)))
        };
        let rate_of = |l: u8| rates.get(usize::from(l)).copied().flatten();
        let (lowest, _) = active().next()?;
        let (highest, _) = active().next_back()?;
        self.top = self.top.max(highest);
        let current = self.chosen.filter(|&l| rate_of(l).is_some());
        let Some(share) = share else {
            // No estimate yet: the best there is, as a direct call starts.
            self.probe = None;
            let layer = current.unwrap_or(highest);
            self.chosen = Some(layer);
            return Some(layer);
        };
        let fits = active()
            .rfind(|&(_, rate)| rate <= share)
            .map_or(lowest, |(l, _)| l);
        // Below the top layer, what it receives its link carries (its publisher does not
        // size that layer for it).
        if let (Some(c), Some(k)) = (current, self.ceiling) {
            if c < self.top && rate_of(c).is_some_and(|r| r > k) {
                self.ceiling = rate_of(c);
            }
        }
        if let Some(probe) = self.probe.take() {
            let failed = self.probe_full(&probe);
            let wanted = if probe.to > probe.from {
                rate_of(probe.to).is_some() && fits > probe.from
            } else {
                self.ceiling.is_some_and(|k| share > k)
            };
            if current != Some(probe.from) || !wanted {
                // Moved meanwhile, or no longer wanted: nothing learnt.
            } else if failed {
                self.probe_failed(now, &probe);
                return Some(probe.from);
            } else if now < probe.until {
                self.probe = Some(probe);
                return Some(probe.from);
            } else {
                if self.ceiling.is_some() {
                    self.set_ceiling(now, Some(probe.target));
                }
                if probe.to > probe.from {
                    self.trial = Some(Trial {
                        until: now + LAYER_TRIAL,
                        from: probe.from,
                        loss_before: probe.loss_before,
                    });
                    self.chosen = Some(probe.to);
                }
                return Some(probe.to);
            }
        }
        if let Some(trial) = self.trial {
            if now >= trial.until
                || current.is_none_or(|c| c <= trial.from)
                || rate_of(trial.from).is_none()
            {
                self.trial = None;
            } else if self.loss_rose(trial.loss_before) {
                self.trial = None;
                let layer = trial.from.min(fits.max(lowest));
                self.chosen = Some(self.fall_to(now, layer, rate_of(layer)));
                return Some(layer);
            }
        }
        // Its link keeps queueing, and this video is the one to give way: down a layer,
        // or with none below (its publisher paused them), its ceiling down to what the
        // link delivers (its publisher is told to send less).
        if let (true, Some(c)) = (self.downlink.shed, current) {
            self.trial = None;
            let layer = match active().rfind(|&(l, _)| l < c) {
                Some((below, _)) => below.min(fits.max(lowest)),
                None => c,
            };
            let rate = if layer < c { rate_of(layer) } else { None };
            self.chosen = Some(self.fall_to(now, layer, rate));
            return Some(layer);
        }
        let layer = match current {
            // The layer it had stopped (its publisher's browser stopped sending it, having
            // been told to send less, or short of uplink): held as any fall. Its link
            // showed nothing: the ceiling stays as it was.
            None if self.chosen.is_some_and(|c| c > fits) => {
                self.hold.fell(now);
                fits
            }
            // The first choice.
            None => fits,
            Some(c) if fits < c => self.fall_to(now, fits, rate_of(fits)),
            Some(c) => self.rise(now, c, rates, share, fits),
        };
        self.chosen = Some(layer);
        Some(layer)
    }

    /// On layer `c`, with nothing against it: up a layer, or a probe of one or of a higher
    /// ceiling, when there is room; the layer it has, whatever happens.
    fn rise(&mut self, now: Instant, c: u8, rates: &[Option<u64>], share: u64, fits: u8) -> u8 {
        let from = rates.get(usize::from(c)).copied().flatten().unwrap_or(0);
        let up = rates
            .iter()
            .enumerate()
            .skip(usize::from(c) + 1)
            .find_map(|(l, r)| r.map(|r| (l as u8, r)));
        let loss_before = self.downlink.loss_ppm.unwrap_or(0);
        let trial = Trial {
            until: now + LAYER_TRIAL,
            from: c,
            loss_before,
        };
        // The layer above fits what its link is known to carry (its publisher sized it
        // so): taken at once.
        if let (Some((l, rate)), Some(k)) = (up, self.ceiling) {
            if rate <= k && l <= fits {
                self.hold.rose(now);
                self.trial = Some(trial);
                return l;
            }
        }
        if self.hold.held(now) {
            return c;
        }
        if !self.downlink.probes {
            // Not probed, a ceiling could never rise: its share rules again.
            self.ceiling = None;
        }
        let settled = self
            .ceiling_at
            .is_none_or(|at| now.saturating_duration_since(at) >= LAYER_TRIAL);
        let (to, target) = match (up, self.ceiling) {
            (Some((l, rate)), None)
                if l <= fits && rate as f64 * LAYER_UP_MARGIN <= share as f64 =>
            {
                (l, (rate as f64 * LAYER_UP_MARGIN) as u64)
            }
            // The top layer sends well under its ceiling (its publisher sends all it
            // has): nothing binds it any more.
            (None, Some(k)) if settled && (from as f64) < k as f64 * TOP_FIT / CEILING_STEP => {
                self.ceiling = None;
                return c;
            }
            // The layer above, if it sends less than a raise would add: a probe of it.
            (Some((l, rate)), Some(k))
                if l <= fits && rate as f64 * LAYER_UP_MARGIN <= k as f64 * CEILING_STEP =>
            {
                (l, (rate as f64 * LAYER_UP_MARGIN) as u64)
            }
            (_, Some(k)) if settled && share > k => {
                (c, ((k as f64 * CEILING_STEP) as u64).min(share))
            }
            _ => return c,
        };
        self.hold.rose(now);
        if !self.downlink.probes {
            // A move up on trial.
            self.trial = Some(trial);
            return to;
        }
        self.probe = Some(Probe {
            from_time: now,
            until: now + PROBE_LENGTH,
            from: c,
            to,
            target,
            extra: target.saturating_sub(from).max(PROBE_MIN),
            from_rate: from,
            loss_before,
        });
        c
    }
}

/// The least a probe adds (bits per second): two layers that send nearly the same.
pub const PROBE_MIN: u64 = 50_000;

/// What a subscriber leg's estimator last said, where the endpoint reads it: written at
/// each feedback, read every tick.
#[derive(Debug)]
pub struct Downlink {
    /// The estimate, in bits per second (0 until the first feedback).
    pub bitrate: AtomicU64,
    /// The round trip the last feedback implied, in microseconds (0: none yet).
    pub rtt_us: AtomicU64,
    /// The fraction of packets lost over the estimator's window, in millionths
    /// ([`NO_LOSS_FIGURE`] until it has one).
    pub loss_ppm: AtomicU64,
    /// How long the packets of the last feedback waited in the path's queues at most, in
    /// microseconds ([`NO_QUEUE_FIGURE`] until a feedback said): see [`QueueDelay`].
    pub queue_us: AtomicU64,
    /// The packets the browser's congestion feedback reported on, and of those the ones it
    /// did not receive, since the estimator last took them (the engine's `FeedbackLoss`).
    pub feedback_total: AtomicU64,
    pub feedback_lost: AtomicU64,
    /// What arrived at the browser over the last [`DELIVERY_WINDOW`], in bits per second
    /// by its own clock (0: no figure yet): when its link is full, what the link carries
    /// (libwebrtc's acknowledged bitrate).
    pub delivered_bps: AtomicU64,
}

/// [`Downlink::loss_ppm`] before the estimator has a figure.
pub const NO_LOSS_FIGURE: u64 = u64::MAX;

/// [`Downlink::queue_us`] before the estimator has a figure.
pub const NO_QUEUE_FIGURE: u64 = u64::MAX;

/// The least one-way delay is the least of this long (kept in two halves).
pub const QUEUE_BASE_WINDOW: Duration = Duration::from_secs(10);

/// How long a subscriber's packets wait in the queues of its path: each packet's one-way
/// delay (the browser's arrival time, on its own clock, less the SFU's departure time)
/// over the least of the last [`QUEUE_BASE_WINDOW`], which is the path with its queues
/// empty (the two clocks' offset cancels out). A link's queue fills when more is sent than
/// it carries, long before it drops: what a probe watches ([`LayerChoice`]).
#[derive(Debug, Default)]
pub struct QueueDelay {
    epoch: Option<Instant>,
    /// The least one-way delay (microseconds, offset by the clocks) of the current half
    /// window, since `half_from`, and of the one before.
    current: Option<i64>,
    previous: Option<i64>,
    half_from: Option<Instant>,
}

impl QueueDelay {
    /// One feedback message's reports: the longest wait among the packets it says
    /// arrived (`None`: none did).
    pub fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) -> Option<Duration> {
        let half_from = *self.half_from.get_or_insert(now);
        if now.saturating_duration_since(half_from) >= QUEUE_BASE_WINDOW / 2 {
            self.previous = self.current.take();
            self.half_from = Some(now);
        }
        let epoch = *self
            .epoch
            .get_or_insert_with(|| reports.iter().map(|r| r.departure).min().unwrap_or(now));
        let mut worst: Option<i64> = None;
        for r in reports {
            let Some(arrival) = r.arrival.filter(|_| r.arrived) else {
                continue;
            };
            let sent = r.departure.saturating_duration_since(epoch);
            let owd = i64::try_from(arrival.as_micros()).unwrap_or(i64::MAX)
                - i64::try_from(sent.as_micros()).unwrap_or(i64::MAX);
            self.current = Some(self.current.map_or(owd, |m| m.min(owd)));
            worst = Some(worst.map_or(owd, |w| w.max(owd)));
        }
        let base = match (self.current, self.previous) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let waited = worst? - base;
        Some(Duration::from_micros(u64::try_from(waited).unwrap_or(0)))
    }
}

impl Default for Downlink {
    fn default() -> Self {
        Self {
            bitrate: AtomicU64::new(0),
            rtt_us: AtomicU64::new(0),
            loss_ppm: AtomicU64::new(NO_LOSS_FIGURE),
            queue_us: AtomicU64::new(NO_QUEUE_FIGURE),
            feedback_total: AtomicU64::new(0),
            feedback_lost: AtomicU64::new(0),
            delivered_bps: AtomicU64::new(0),
        }
    }
}

/// What a downlink delivered is counted over this long ([`Delivered`]); a figure needs at
/// least half of it.
pub const DELIVERY_WINDOW: Duration = Duration::from_millis(1_000);

/// The rate at which packets arrived at a browser, by the arrival times its congestion
/// feedback reports (its own clock): per feedback message, the bytes it says arrived and
/// the last arrival, over [`DELIVERY_WINDOW`].
#[derive(Debug, Default)]
pub struct Delivered {
    batches: std::collections::VecDeque<(Duration, u64)>,
}

impl Delivered {
    /// One feedback message's reports; the rate over the window, in bits per second
    /// (`None`: less than half a window yet).
    pub fn on_reports(&mut self, reports: &[PacketReport]) -> Option<u64> {
        let mut bytes = 0;
        let mut last = None;
        for r in reports.iter().filter(|r| r.arrived) {
            bytes += r.size as u64;
            last = last.max(r.arrival);
        }
        if let Some(last) = last {
            if self.batches.back().is_some_and(|(at, _)| last < *at) {
                // The browser's clock went back (a new connection): start again.
                self.batches.clear();
            }
            self.batches.push_back((last, bytes));
        }
        let newest = self.batches.back()?.0;
        while self
            .batches
            .front()
            .is_some_and(|(at, _)| newest.saturating_sub(*at) > DELIVERY_WINDOW)
        {
            self.batches.pop_front();
        }
        let (first, _) = *self.batches.front()?;
        let span = newest.saturating_sub(first);
        if span < DELIVERY_WINDOW / 2 {
            return None;
        }
        // The first batch's bytes arrived before the span began.
        let bits: u64 = self.batches.iter().skip(1).map(|(_, b)| b * 8).sum();
        Some((bits as f64 / span.as_secs_f64()) as u64)
    }
}

/// Loss is judged over windows of at least this long and [`LOSS_WINDOW_PACKETS`] packets.
pub const LOSS_WINDOW: Duration = Duration::from_millis(500);
pub const LOSS_WINDOW_PACKETS: u32 = 50;
/// Below this fraction lost in a window a loss limit rises, above [`LOSS_HIGH`] it falls
/// (by half the fraction lost), between the two it holds (unless below the rate at which
/// the loss is inherent, [`inherent_up_to`]): a few per cent is what a wireless link
/// loses without being full (GCC's loss-based controller). libwebrtc's rises below 2 %,
/// but judges windows of 20 packets, a third of which have no loss at 5 % random loss; of
/// windows of 50, under a tenth: below 5 % it is here (at 5 % random loss about half the
/// windows let it rise, one in 25 makes it fall).
pub const LOSS_LOW: f64 = 0.05;
pub const LOSS_HIGH: f64 = 0.10;
/// How much a loss limit rises per window below [`LOSS_LOW`].
pub const LOSS_RECOVERY: f64 = 1.08;

/// Loss that sending less does not cure: at a rate `r`, up to [`INHERENT_LOSS_OFFSET`]
/// plus this over `r` of what is sent may be lost at random (a wireless link's own loss)
/// without the rate being the cause, so a loss limit falls no lower than the rate at which
/// the average loss is that ([`inherent_up_to`]). libwebrtc's loss-based estimator (v2)
/// bounds its "inherent loss" and its estimate by the same formula and figures
/// (`InherentLossUpperBoundBwBalance`, `InstantUpperBoundBwBalance`: 75 kbit/s, offset
/// 0.05): at 20 % loss 500 kbit/s, at 30 % 300, at 50 % 167. Without it the classic rule
/// cut by every window over 10 % whatever the rate, so a link losing 20 % at random took
/// the estimate to its floor (30 kbit/s) within 20 s, and the patient's view of the
/// clinician to 9 frames a second, where a direct call's Chrome kept 200–470 kbit/s.
pub const INHERENT_LOSS_BALANCE: f64 = 75_000.0;
pub const INHERENT_LOSS_OFFSET: f64 = 0.05;
/// How much of the average loss is the past's at each window (libwebrtc's temporal weight
/// factor): about the last 5 s count.
pub const LOSS_AVERAGE_KEEP: f64 = 0.9;

/// A window in which packets waited this long in the path's queues lost them to a full
/// link, not at random (a queue that fills drops; a link that loses at random does not
/// queue), so its loss is cut for whatever the rate ([`LossLimit`]): the queue beyond
/// which a probe fails ([`PROBE_QUEUE_MAX`]).
pub const QUEUE_CONGESTED: Duration = PROBE_QUEUE_MAX;

/// The highest rate at which `average` loss is what the link loses at random
/// ([`INHERENT_LOSS_BALANCE`]); none at or below [`INHERENT_LOSS_OFFSET`].
pub fn inherent_up_to(average: f64) -> Option<f64> {
    (average > INHERENT_LOSS_OFFSET)
        .then(|| INHERENT_LOSS_BALANCE / (average - INHERENT_LOSS_OFFSET))
}

/// The loss-based half of a downlink estimate: a limit below the delay-based estimate,
/// set only by windows that lost more than [`LOSS_HIGH`] while the rate was above the one
/// at which the average loss is inherent ([`inherent_up_to`]), and gone once it has risen
/// back above the delay-based estimate.
///
/// Not the `rtc` crate's own loss controller: that one judges each feedback message on
/// its own (ten to twenty packets, so one lost packet reads as 5 to 10 %) and moves at
/// most every 200 ms, down when a message and its smoothed average both exceed 10 % and
/// up only when both are under 2 %. On a link that loses 5 % at random the downs come
/// by chance and the ups almost never: measured in the simulated network, 5 % loss with
/// 150 ms round trips took a 600 kbit/s estimate to 48 kbit/s in 15 s, and in Chromium
/// the patient's video to 12 freezes a minute (`quality.test.mjs`, `loss5-rtt150`).
#[derive(Debug, Default)]
pub struct LossLimit {
    limit: Option<f64>,
    lost: u32,
    total: u32,
    since: Option<Instant>,
    fraction: Option<f64>,
    average: Option<f64>,
    /// The longest the window's packets waited in the path's queues.
    queued: Duration,
}

impl LossLimit {
    /// One feedback message's packets, `lost` of `total`, the longest any of them waited
    /// in the path's queues ([`QueueDelay`]), with the delay-based estimate now.
    pub fn on_feedback(
        &mut self,
        now: Instant,
        lost: u32,
        total: u32,
        queued: Option<Duration>,
        delay_based: f64,
    ) {
        let since = *self.since.get_or_insert(now);
        // Saturating: a browser's feedback says how many packets it covers.
        self.lost = self.lost.saturating_add(lost);
        self.total = self.total.saturating_add(total);
        self.queued = self.queued.max(queued.unwrap_or_default());
        if now.saturating_duration_since(since) < LOSS_WINDOW || self.total < LOSS_WINDOW_PACKETS {
            return;
        }
        let fraction = f64::from(self.lost) / f64::from(self.total);
        let average = self.average.map_or(fraction, |a| {
            a * LOSS_AVERAGE_KEEP + fraction * (1.0 - LOSS_AVERAGE_KEEP)
        });
        // Loss while the path queues is a full link's: no part of it is taken as the
        // link's own.
        let inherent = inherent_up_to(average).filter(|_| self.queued < QUEUE_CONGESTED);
        let current = self.limit.map_or(delay_based, |l| l.min(delay_based));
        if fraction < LOSS_LOW {
            self.limit = self
                .limit
                .map(|l| l * LOSS_RECOVERY)
                .filter(|l| *l < delay_based);
        } else if let Some(up_to) = inherent.filter(|up_to| current < *up_to) {
            // At this rate the link loses this much anyway: sending less would not lose
            // less, so the loss says nothing of the rate; a limit that fell below (while
            // the link lost more) rises back towards it.
            self.limit = self
                .limit
                .map(|l| (l * LOSS_RECOVERY).min(up_to))
                .filter(|l| *l < delay_based);
        } else if fraction > LOSS_HIGH {
            let cut = current * (1.0 - 0.5 * fraction);
            self.limit = Some(inherent.map_or(cut, |up_to| cut.max(up_to)));
        }
        self.fraction = Some(fraction);
        self.average = Some(average);
        (self.lost, self.total, self.since) = (0, 0, Some(now));
        self.queued = Duration::ZERO;
    }

    /// The estimate: the delay-based one, or the loss limit if it is lower.
    pub fn estimate(&self, delay_based: f64) -> f64 {
        self.limit.map_or(delay_based, |l| l.min(delay_based))
    }

    /// The fraction lost over the last whole window.
    pub fn fraction(&self) -> Option<f64> {
        self.fraction
    }
}

/// A subscriber leg's downlink estimator: the delay-based half of the `rtc` crate's Google
/// Congestion Control and a [`LossLimit`], the estimate, loss and round trip kept in a
/// [`Downlink`] per connection.
pub struct DownlinkEstimator {
    gcc: Gcc,
    loss: LossLimit,
    queue: QueueDelay,
    delivered: Delivered,
    cell: Arc<Downlink>,
}

impl std::fmt::Debug for DownlinkEstimator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DownlinkEstimator")
            .field("estimate", &self.target_bitrate())
            .finish()
    }
}

impl DownlinkEstimator {
    /// The delay-based half of the crate's estimate (its own loss half is not used:
    /// [`LossLimit`]).
    fn delay_based(&self) -> f64 {
        self.gcc
            .stats()
            .delay_based_bitrate
            .unwrap_or_else(|| self.gcc.target_bitrate())
    }

    /// An estimator whose figures are kept in `cell`.
    pub fn new(cell: Arc<Downlink>) -> Self {
        Self {
            gcc: Gcc::new(ESTIMATE_INITIAL, ESTIMATE_MIN, ESTIMATE_MAX),
            loss: LossLimit::default(),
            queue: QueueDelay::default(),
            delivered: Delivered::default(),
            cell,
        }
    }
}

impl BandwidthEstimator for DownlinkEstimator {
    fn on_reports(&mut self, now: Instant, reports: &[PacketReport]) {
        if reports.is_empty() {
            return;
        }
        self.gcc.on_reports(now, reports);
        let waited = self.queue.on_reports(now, reports);
        let total = self.cell.feedback_total.swap(0, Ordering::Relaxed);
        let lost = self.cell.feedback_lost.swap(0, Ordering::Relaxed);
        let count = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
        self.loss
            .on_feedback(now, count(lost), count(total), waited, self.delay_based());
        self.cell
            .bitrate
            .store(self.target_bitrate() as u64, Ordering::Relaxed);
        // The round trip: from the departure of the latest packet this feedback says
        // arrived, to the feedback (so it includes the browser's wait before sending
        // feedback, tens of milliseconds). The estimator itself gives none.
        let latest = reports
            .iter()
            .filter(|r| r.arrived)
            .map(|r| r.departure)
            .max();
        if let Some(departure) = latest {
            let rtt = now.saturating_duration_since(departure);
            let us = u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX);
            self.cell.rtt_us.store(us.max(1), Ordering::Relaxed);
        }
        if let Some(loss) = self.loss.fraction() {
            let ppm = (loss.clamp(0.0, 1.0) * 1e6) as u64;
            self.cell.loss_ppm.store(ppm, Ordering::Relaxed);
        }
        if let Some(waited) = waited {
            let us = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX - 1);
            self.cell.queue_us.store(us, Ordering::Relaxed);
        }
        if let Some(bps) = self.delivered.on_reports(reports) {
            self.cell.delivered_bps.store(bps, Ordering::Relaxed);
        }
    }

    fn target_bitrate(&self) -> f64 {
        self.loss
            .estimate(self.delay_based())
            .clamp(ESTIMATE_MIN, ESTIMATE_MAX)
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.gcc.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.gcc.poll_timeout()
    }

    fn stats(&self) -> EstimatorStats {
        self.gcc.stats()
    }
}

#[cfg(test)]
mod tests {
    use rtc::rtcp::transport_feedbacks::cc_feedback_report::Ecn;

    use super::*;

    fn at(start: Instant, ms: u64) -> Instant {
        start + Duration::from_millis(ms)
    }

    /// A report of packet `id` (1,200 bytes) sent at `sent` ms, arrived `delay` ms later or
    /// lost.
    fn report(start: Instant, id: u64, sent: u64, delay: Option<u64>) -> PacketReport {
        PacketReport {
            ssrc: 1,
            id,
            rtp_sequence_number: id as u16,
            is_twcc: true,
            twcc_sequence_number: id as u16,
            size: 1_200,
            arrived: delay.is_some(),
            departure: at(start, sent),
            arrival: delay.map(|d| Duration::from_millis(sent + d)),
            ecn: Ecn::default(),
        }
    }

    /// The cell says what the estimator says: nothing before feedback, the starting
    /// estimate on a clean path, much less once most packets are lost.
    #[test]
    fn the_estimate_is_kept_in_the_cell_and_falls_with_loss() {
        let t = Instant::now();
        let cell = Arc::new(Downlink::default());
        let mut e = DownlinkEstimator::new(cell.clone());
        e.on_reports(t, &[]);
        assert_eq!(cell.bitrate.load(Ordering::Relaxed), 0, "no feedback yet");
        assert_eq!(cell.loss_ppm.load(Ordering::Relaxed), NO_LOSS_FIGURE);
        let mut batch = Vec::new();
        for (id, ms) in (0..6_000u64).step_by(10).enumerate() {
            let id = id as u64;
            // Clean for 2 s, then 60 % of packets lost.
            let lost = ms >= 2_000 && id % 5 < 3;
            batch.push(report(t, id, ms, (!lost).then_some(20)));
            if ms % 100 == 90 {
                // What the feedback said, as the engine's FeedbackLoss counts it.
                let lost = batch.iter().filter(|r| !r.arrived).count() as u64;
                cell.feedback_total
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
                cell.feedback_lost.fetch_add(lost, Ordering::Relaxed);
                e.on_reports(at(t, ms + 30), &batch);
                batch.clear();
            }
            if ms == 1_990 {
                let clean = cell.bitrate.load(Ordering::Relaxed);
                assert!(clean as f64 >= ESTIMATE_INITIAL, "clean: {clean}");
                let loss = cell.loss_ppm.load(Ordering::Relaxed);
                assert!(loss < 10_000, "clean: {loss} ppm lost");
                // Feedback comes 30 ms after the batch's last packet departs.
                let rtt = cell.rtt_us.load(Ordering::Relaxed);
                assert_eq!(rtt, 30_000, "the round trip the feedback implies");
            }
        }
        let lossy = cell.bitrate.load(Ordering::Relaxed);
        assert_eq!(lossy, e.target_bitrate() as u64);
        assert!(lossy < 1_000_000, "60 % loss for 4 s: {lossy}");
        let loss = cell.loss_ppm.load(Ordering::Relaxed);
        assert!(loss > 300_000, "60 % loss for 4 s reads as {loss} ppm");
    }

    /// Feeds `secs` seconds of feedback, ten packets every 50 ms, each lost with
    /// probability `loss` (a fixed pseudo-random sequence); returns the lowest and the last
    /// estimate, with the delay-based one at 1 Mbit/s.
    fn feed(
        l: &mut LossLimit,
        t: &mut Instant,
        secs: u64,
        loss: f64,
        queued: Option<Duration>,
        seed: &mut u64,
    ) -> (f64, f64) {
        let mut lowest = f64::MAX;
        for _ in 0..secs * 20 {
            let lost = (0..10)
                .filter(|_| {
                    *seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    (((*seed >> 33) % 1_000) as f64) < loss * 1_000.0
                })
                .count() as u32;
            *t += Duration::from_millis(50);
            l.on_feedback(*t, lost, 10, queued, 1_000_000.0);
            lowest = lowest.min(l.estimate(1_000_000.0));
        }
        (lowest, l.estimate(1_000_000.0))
    }

    /// 5 % of packets lost at random does not move the estimate (much); 20 % or 30 %
    /// bring it down within seconds, but only to the rate at which that loss is the link's
    /// own (500 and 300 kbit/s, as libwebrtc's), not on towards the floor; a limit that
    /// fell further (while 50 % was lost) rises back to it; and a clean link lets it back
    /// up to the delay-based one.
    #[test]
    fn a_loss_limit_ignores_a_few_per_cent_and_falls_with_heavy_loss_to_where_it_is_inherent() {
        let (mut l, mut t, mut seed) = (LossLimit::default(), Instant::now(), 7);
        let (lowest, _) = feed(&mut l, &mut t, 60, 0.05, None, &mut seed);
        assert!(lowest >= 850_000.0, "5 % for 60 s: down to {lowest}");
        let fraction = l.fraction().unwrap();
        assert!((0.02..0.08).contains(&fraction), "reads {fraction}");
        let (_, twenty) = feed(&mut l, &mut t, 10, 0.2, None, &mut seed);
        assert!(
            (400_000.0..650_000.0).contains(&twenty),
            "20 % for 10 s: {twenty}"
        );
        let (lowest, twenty) = feed(&mut l, &mut t, 60, 0.2, None, &mut seed);
        assert!(lowest >= 350_000.0, "20 % for 70 s: down to {lowest}");
        assert!(
            (400_000.0..650_000.0).contains(&twenty),
            "20 % for 70 s: {twenty}"
        );
        let (_, thirty) = feed(&mut l, &mut t, 10, 0.3, None, &mut seed);
        assert!(
            (230_000.0..380_000.0).contains(&thirty),
            "30 % for 10 s: {thirty}"
        );
        let (_, half) = feed(&mut l, &mut t, 10, 0.5, None, &mut seed);
        assert!(half < 220_000.0, "50 % for 10 s: {half}");
        let (_, back) = feed(&mut l, &mut t, 15, 0.3, None, &mut seed);
        assert!(
            (230_000.0..380_000.0).contains(&back),
            "30 % again for 15 s: {back}"
        );
        let (_, clean) = feed(&mut l, &mut t, 20, 0.0, None, &mut seed);
        assert_eq!(clean, 1_000_000.0, "clean for 20 s: {clean}");
    }

    /// Loss while the path queues (a full link's drops, not a wireless link's own) is cut
    /// by GCC's rule whatever the rate: 30 % with packets waiting 150 ms goes on down past
    /// the 300 kbit/s at which 30 % lost at random stops it; the same loss without the
    /// queue lets it back up to there, and a clean link all the way.
    #[test]
    fn loss_while_the_path_queues_is_cut_past_where_random_loss_would_stop() {
        let (mut l, mut t, mut seed) = (LossLimit::default(), Instant::now(), 11);
        let queued = Some(Duration::from_millis(150));
        let (_, full) = feed(&mut l, &mut t, 10, 0.3, queued, &mut seed);
        assert!(full < 100_000.0, "30 % for 10 s, queueing: {full}");
        let short = Some(Duration::from_millis(10));
        let (_, random) = feed(&mut l, &mut t, 20, 0.3, short, &mut seed);
        assert!(
            (230_000.0..380_000.0).contains(&random),
            "30 % for 20 s more, not queueing: back to {random}"
        );
        let (_, clean) = feed(&mut l, &mut t, 20, 0.0, None, &mut seed);
        assert_eq!(clean, 1_000_000.0, "clean for 20 s: {clean}");
    }

    #[test]
    fn the_rate_at_which_loss_is_inherent_is_libwebrtcs() {
        assert_eq!(inherent_up_to(0.05), None, "5 % or less: any rate");
        let at = |loss: f64| inherent_up_to(loss).map(|r| r.round());
        assert_eq!(at(0.2), Some(500_000.0));
        assert_eq!(at(0.3), Some(300_000.0));
        assert_eq!(at(0.55), Some(150_000.0));
    }

    #[test]
    fn a_share_is_the_estimate_less_audio_split_between_the_videos() {
        let opus = audio_allowance(false);
        let red = audio_allowance(true);
        assert_eq!(share(1_000_000, 1, opus), Some(952_000));
        assert_eq!(share(1_000_000, 2, 2 * opus), Some(452_000));
        assert_eq!(
            share(1_000_000, 2, opus + red),
            Some(440_000),
            "sound in RED takes more"
        );
        assert_eq!(
            share(40_000, 1, opus),
            Some(0),
            "less than the audio: nothing for video"
        );
        assert_eq!(
            share(1_000_000, 0, 3 * opus),
            None,
            "no video: nothing to share"
        );
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
        // (Held at the first limit: a higher estimate does not raise it yet.)
        assert_eq!(
            u.update(at(t, 2_100), Some(340_000), 330_000),
            Some(320_000)
        );
        assert_eq!(
            u.update(at(t, 2_200), Some(250_000), 330_000),
            Some(250_000)
        );
        // The estimate rises again: held at the fallen limit for 5 s after the fall (at
        // 2,200), then it follows.
        assert_eq!(
            u.update(at(t, 3_200), Some(1_000_000), 250_000),
            Some(250_000)
        );
        assert_eq!(
            u.update(at(t, 6_300), Some(1_000_000), 250_000),
            Some(250_000)
        );
        assert_eq!(
            u.update(at(t, 7_300), Some(1_000_000), 250_000),
            Some(1_000_000)
        );
        // And is lifted once no subscriber constrains it.
        assert_eq!(
            u.update(at(t, 8_300), Some(5_000_000), 1_000_000),
            Some(NO_LIMIT)
        );
        assert!(!u.limited());
        assert_eq!(u.update(at(t, 9_300), Some(5_000_000), 1_000_000), None);
    }

    /// A rise that fails within 5 s holds the next fall half as long again (7.5 s, then
    /// 11.25 s ...); a fall long after a rise holds 5 s again.
    #[test]
    fn a_failed_probe_lengthens_the_next_hold() {
        let t = Instant::now();
        let mut u = UplinkLimit::default();
        u.update(at(t, 0), Some(300_000), 1_000_000);
        assert_eq!(
            u.update(at(t, 1_000), Some(300_000), 1_000_000),
            Some(300_000)
        );
        // Held until 6,000; it rises at 6,000 and falls at 8,000: the probe failed.
        assert_eq!(
            u.update(at(t, 6_000), Some(400_000), 300_000),
            Some(400_000)
        );
        assert_eq!(
            u.update(at(t, 8_000), Some(280_000), 400_000),
            Some(280_000)
        );
        // Held 7.5 s: still 280,000 at 15,000, free at 16,000.
        assert_eq!(
            u.update(at(t, 15_000), Some(500_000), 280_000),
            Some(280_000)
        );
        assert_eq!(
            u.update(at(t, 16_000), Some(500_000), 280_000),
            Some(500_000)
        );
        // A fall 10 s after that rise: back to 5 s.
        assert_eq!(
            u.update(at(t, 26_000), Some(300_000), 500_000),
            Some(300_000)
        );
        assert_eq!(
            u.update(at(t, 30_500), Some(600_000), 300_000),
            Some(300_000)
        );
        assert_eq!(
            u.update(at(t, 31_500), Some(600_000), 300_000),
            Some(600_000)
        );
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

    #[test]
    fn a_subscriber_goes_down_a_layer_at_once_and_up_only_with_room_after_a_hold() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let rates = [Some(150_000), Some(600_000), None];
        // No estimate yet: the best layer there is.
        assert_eq!(c.choose(at(t, 0), &rates, None), Some(1));
        // Room for it: it stays.
        assert_eq!(c.choose(at(t, 100), &rates, Some(2_000_000)), Some(1));
        // The share falls below the top layer: down at once.
        assert_eq!(c.choose(at(t, 200), &rates, Some(400_000)), Some(0));
        // Back up with room, but not within the hold.
        assert_eq!(c.choose(at(t, 2_000), &rates, Some(2_000_000)), Some(0));
        // After the hold, and only with the margin.
        assert_eq!(
            c.choose(at(t, 5_300), &rates, Some(650_000)),
            Some(0),
            "no margin"
        );
        assert_eq!(c.choose(at(t, 5_400), &rates, Some(700_000)), Some(1));
        // Down again within 5 s of going up (the link could not take it): the next hold
        // is longer.
        assert_eq!(c.choose(at(t, 7_000), &rates, Some(300_000)), Some(0));
        assert_eq!(
            c.choose(at(t, 12_100), &rates, Some(2_000_000)),
            Some(0),
            "held 7.5 s"
        );
        assert_eq!(c.choose(at(t, 14_600), &rates, Some(2_000_000)), Some(1));
        // Even the lowest does not fit: the lowest, not nothing.
        assert_eq!(c.choose(at(t, 15_000), &rates, Some(50_000)), Some(0));
    }

    /// A move up that the link cannot take shows as loss at once, long before the estimate
    /// falls below the layer: back down then; random loss that stays as it was does not.
    #[test]
    fn a_layer_taken_up_goes_back_down_when_the_loss_rises() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let rates = [Some(200_000), Some(500_000), None];
        c.downlink(lossy(40_000));
        assert_eq!(c.choose(at(t, 0), &rates, Some(300_000)), Some(0));
        // Up (the estimate climbed), with 4 % loss as before.
        assert_eq!(c.choose(at(t, 100), &rates, Some(700_000)), Some(1));
        c.downlink(lossy(60_000));
        assert_eq!(
            c.choose(at(t, 600), &rates, Some(700_000)),
            Some(1),
            "loss as random as before"
        );
        c.downlink(lossy(300_000));
        assert_eq!(
            c.choose(at(t, 1_100), &rates, Some(700_000)),
            Some(0),
            "the link overflows: down, though the estimate is still above the layer"
        );
        // Held, longer after a rise that failed.
        c.downlink(lossy(40_000));
        assert_eq!(c.choose(at(t, 7_000), &rates, Some(700_000)), Some(0));
        assert_eq!(c.choose(at(t, 8_700), &rates, Some(700_000)), Some(1));
        // Past the trial, loss is the estimate's business.
        c.downlink(lossy(300_000));
        assert_eq!(c.choose(at(t, 11_800), &rates, Some(700_000)), Some(1));
    }

    fn lossy(ppm: u64) -> DownlinkState {
        DownlinkState {
            loss_ppm: Some(ppm),
            ..DownlinkState::default()
        }
    }

    fn probed(queue_ms: u64, loss_ppm: u64) -> DownlinkState {
        DownlinkState {
            loss_ppm: Some(loss_ppm),
            queue: Some(Duration::from_millis(queue_ms)),
            probes: true,
            ..DownlinkState::default()
        }
    }

    /// A subscriber that can be probed moves up only after a probe of what the layer
    /// above adds: when the probe passes, up (on trial as before); when it fills the
    /// link's queue or its loss rises, the layer is kept, the next hold is longer, and
    /// the layer it has is what its link is known to carry (its ceiling), which later
    /// probes try to raise.
    #[test]
    fn a_move_up_is_probed_first_and_made_only_if_the_link_takes_the_probe() {
        let t = Instant::now();
        let rates = [Some(200_000), Some(500_000), None];
        let mut c = LayerChoice::default();
        c.downlink(probed(5, 10_000));
        assert_eq!(c.choose(at(t, 0), &rates, Some(300_000)), Some(0));
        assert_eq!(c.probing(), None);
        // The estimate climbs past the layer above: a probe of what it adds (575 - 200).
        assert_eq!(c.choose(at(t, 100), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), Some(375_000));
        assert_eq!(c.choose(at(t, 500), &rates, Some(1_000_000)), Some(0));
        // The link takes it: up at the probe's end, on trial, nothing binding it.
        c.downlink(probed(30, 10_000));
        assert_eq!(c.choose(at(t, 950), &rates, Some(1_000_000)), Some(1));
        assert_eq!(c.probing(), None);
        assert_eq!(c.ceiling(), None);
        c.downlink(probed(30, 300_000));
        assert_eq!(
            c.choose(at(t, 1_500), &rates, Some(1_000_000)),
            Some(0),
            "the trial still ends a move the link cannot keep"
        );
        assert_eq!(c.ceiling(), Some(200_000));

        let mut c = LayerChoice::default();
        c.downlink(probed(5, 10_000));
        assert_eq!(c.choose(at(t, 0), &rates, Some(300_000)), Some(0));
        assert_eq!(c.choose(at(t, 100), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.choose(at(t, 350), &rates, Some(1_000_000)), Some(0));
        // The link's queue grows past the abort mark: stopped, the layer kept.
        c.downlink(probed(180, 10_000));
        assert_eq!(c.choose(at(t, 600), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), None);
        assert_eq!(
            c.ceiling(),
            Some(200_000),
            "its link carries the layer it has"
        );
        // Held after a rise that failed: 7.5 s. Then a probe of a ceiling half as high
        // again (300 - 200).
        c.downlink(probed(5, 10_000));
        assert_eq!(c.choose(at(t, 8_000), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), None, "held");
        assert_eq!(c.choose(at(t, 8_200), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), Some(100_000));
        // A queue a little up late in the probe, past what passes: failed too (held
        // 11.25 s).
        c.downlink(probed(70, 10_000));
        assert_eq!(c.choose(at(t, 8_950), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), None);
        c.downlink(probed(5, 10_000));
        assert_eq!(c.choose(at(t, 20_000), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), None, "held 11.25 s");
        assert_eq!(c.choose(at(t, 20_350), &rates, Some(1_000_000)), Some(0));
        assert!(c.probing().is_some());
        // Loss that rises during the probe fails it at once.
        c.downlink(probed(5, 200_000));
        assert_eq!(c.choose(at(t, 20_500), &rates, Some(1_000_000)), Some(0));
        assert_eq!(c.probing(), None);
        assert_eq!(c.ceiling(), Some(200_000));
    }

    /// Between choices the probe is watched as often as its packets go: stopped the
    /// moment the queue shows the link full, its rate climbing meanwhile.
    #[test]
    fn a_probe_climbs_to_its_rate_and_stops_the_moment_the_link_is_full() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let rates = [Some(200_000), Some(600_000), None];
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 0), &rates, Some(310_000)), Some(0));
        assert_eq!(c.choose(at(t, 100), &rates, Some(2_000_000)), Some(0));
        // What the layer above adds: 690 - 200.
        assert_eq!(c.probing(), Some(490_000));
        assert_eq!(c.probe_rate(at(t, 100)), Some(0));
        assert_eq!(c.probe_rate(at(t, 350)), Some(245_000));
        assert_eq!(c.probe_rate(at(t, 700)), Some(490_000));
        assert!(c.watch(at(t, 400), probed(40, 0)));
        assert!(!c.watch(at(t, 410), probed(60, 0)), "full: stopped");
        assert_eq!(c.probing(), None);
        assert_eq!(c.probe_rate(at(t, 420)), None);
        assert!(!c.watch(at(t, 420), probed(5, 0)));
        // Held as after any rise that failed.
        assert_eq!(c.choose(at(t, 7_000), &rates, Some(2_000_000)), Some(0));
        assert_eq!(c.probing(), None);
    }

    /// A fall shows what the link carries: the layer it fell to (more, while that layer
    /// sends more), which bounds the budget its publisher sizes its top layer to. A top
    /// layer that fits it is taken at once, hold or not, without a probe; the ceiling
    /// rises only by probes, half as much again each, after the hold and while the top
    /// layer uses it; once the top layer sends well under it (all its publisher has), it
    /// goes.
    #[test]
    fn a_fall_shows_what_the_link_carries_and_a_top_layer_sized_to_it_is_taken_at_once() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        c.downlink(probed(5, 0));
        let full = [None, Some(220_000), Some(800_000)];
        assert_eq!(c.choose(at(t, 0), &full, Some(3_000_000)), Some(2));
        assert_eq!((c.ceiling(), c.budget(3_000_000)), (None, 2_400_000));
        // A capped link queues: the top layer gives way.
        c.downlink(DownlinkState {
            shed: true,
            ..probed(200, 0)
        });
        assert_eq!(c.choose(at(t, 1_000), &full, Some(3_000_000)), Some(1));
        assert_eq!(c.ceiling(), Some(220_000));
        // Its publisher, told to send less, stops the top layer: the half layer alone
        // sends more, and its link carries that.
        c.downlink(probed(5, 0));
        let alone = [None, Some(270_000), None];
        assert_eq!(c.choose(at(t, 2_000), &alone, Some(3_000_000)), Some(1));
        assert_eq!(c.ceiling(), Some(270_000));
        assert_eq!(
            c.budget(3_000_000),
            243_000,
            "the estimate says little: 90 % of it"
        );
        assert_eq!(c.budget(200_000), 160_000, "a fit of a share below it");
        // The top layer again, sized for it: taken at once, within the hold, unprobed.
        let sized = [None, Some(170_000), Some(230_000)];
        assert_eq!(c.choose(at(t, 3_000), &sized, Some(3_000_000)), Some(2));
        assert_eq!(c.probing(), None);
        assert_eq!(c.ceiling(), Some(270_000));
        // After the hold, a probe of a ceiling half as high again: 405 less the 230 the
        // top layer sends. The capped link cannot take it: the ceiling stays.
        assert_eq!(c.choose(at(t, 6_500), &sized, Some(3_000_000)), Some(2));
        assert_eq!(c.probing(), Some(175_000));
        c.downlink(probed(60, 0));
        assert_eq!(c.choose(at(t, 6_900), &sized, Some(3_000_000)), Some(2));
        assert_eq!((c.probing(), c.ceiling()), (None, Some(270_000)));
        // The cap is lifted: after the (longer) hold the probe passes, and the ceiling
        // rises.
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 14_300), &sized, Some(3_000_000)), Some(2));
        assert_eq!(c.probing(), None, "held 7.5 s");
        assert_eq!(c.choose(at(t, 14_500), &sized, Some(3_000_000)), Some(2));
        assert_eq!(c.probing(), Some(175_000));
        assert_eq!(c.choose(at(t, 15_400), &sized, Some(3_000_000)), Some(2));
        assert_eq!((c.probing(), c.ceiling()), (None, Some(405_000)));
        // Its publisher sends more: again, once its rate has had time to follow.
        let more = [None, Some(170_000), Some(320_000)];
        assert_eq!(c.choose(at(t, 17_000), &more, Some(3_000_000)), Some(2));
        assert_eq!(c.probing(), None);
        assert_eq!(c.choose(at(t, 18_500), &more, Some(3_000_000)), Some(2));
        assert_eq!(c.probing(), Some(287_500));
        assert_eq!(c.choose(at(t, 19_400), &more, Some(3_000_000)), Some(2));
        assert_eq!(c.ceiling(), Some(607_500));
        // All it has is 300 kbit/s: the ceiling no longer binds, and goes.
        let all = [None, Some(170_000), Some(300_000)];
        assert_eq!(c.choose(at(t, 21_000), &all, Some(3_000_000)), Some(2));
        assert_eq!(c.ceiling(), Some(607_500));
        assert_eq!(c.choose(at(t, 22_500), &all, Some(3_000_000)), Some(2));
        assert_eq!((c.ceiling(), c.probing()), (None, None));
        assert_eq!(c.budget(3_000_000), 2_400_000);
    }

    /// A top layer a little over the ceiling (its publisher's browser cannot send it for
    /// less) is probed as any move up, and if the link takes it, taken, its ceiling then
    /// what the probe showed it carries; one much over it waits for the ceiling to rise.
    #[test]
    fn a_top_layer_a_little_over_the_ceiling_is_probed_and_taken() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        c.downlink(probed(5, 0));
        let full = [None, Some(220_000), Some(800_000)];
        assert_eq!(c.choose(at(t, 0), &full, Some(3_000_000)), Some(2));
        c.downlink(DownlinkState {
            shed: true,
            carried: Some(240_000),
            ..probed(200, 0)
        });
        assert_eq!(c.choose(at(t, 1_000), &full, Some(3_000_000)), Some(1));
        assert_eq!(c.ceiling(), Some(240_000), "what the full link delivered");
        c.downlink(probed(5, 0));
        let over = [None, Some(200_000), Some(260_000)];
        assert_eq!(c.choose(at(t, 5_000), &over, Some(3_000_000)), Some(1));
        assert_eq!(c.probing(), None, "held");
        // 299 less the 200 of the half layer.
        assert_eq!(c.choose(at(t, 6_100), &over, Some(3_000_000)), Some(1));
        assert_eq!(c.probing(), Some(99_000));
        assert_eq!(c.choose(at(t, 7_000), &over, Some(3_000_000)), Some(2));
        assert_eq!((c.probing(), c.ceiling()), (None, Some(299_000)));
    }

    /// A downlink that queues for a second says so once a second, however long it goes on;
    /// a keyframe's short queue does not.
    #[test]
    fn a_downlink_that_keeps_queueing_says_so_once_a_second() {
        let t = Instant::now();
        let mut w = QueueWatch::default();
        let ms = |n| Some(Duration::from_millis(n));
        assert!(!w.lasting(at(t, 0), ms(5)));
        // A keyframe queues for half a second.
        assert!(!w.lasting(at(t, 250), ms(180)));
        assert!(!w.lasting(at(t, 500), ms(180)));
        assert!(!w.lasting(at(t, 750), ms(20)));
        // The link is capped: its queue stays full.
        let said: Vec<u64> = (4..=20)
            .map(|k| k * 250)
            .filter(|&n| w.lasting(at(t, n), ms(200)))
            .collect();
        assert_eq!(said, [2_000, 3_250, 4_500]);
        assert!(!w.lasting(at(t, 5_250), None), "no figure: no verdict");
    }

    /// Told to shed, a video goes down a layer before its estimate falls, and is held
    /// as after any fall; its lowest layer stays.
    #[test]
    fn a_video_told_to_shed_goes_down_a_layer_before_the_estimate_falls() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let rates = [None, Some(250_000), Some(700_000)];
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 0), &rates, Some(2_000_000)), Some(2));
        let shed = DownlinkState {
            shed: true,
            ..probed(200, 0)
        };
        c.downlink(shed);
        assert_eq!(c.choose(at(t, 2_000), &rates, Some(2_000_000)), Some(1));
        // The lowest stays, however often it is told.
        for ms in [2_250, 2_500, 3_000, 3_500, 4_000] {
            assert_eq!(
                c.choose(at(t, ms), &rates, Some(2_000_000)),
                Some(1),
                "{ms}"
            );
        }
        // Held as any fall, from the last time it was told (its link was still full): no
        // probe until the hold is over.
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 8_900), &rates, Some(2_000_000)), Some(1));
        assert_eq!(c.probing(), None);
        assert_eq!(c.choose(at(t, 9_100), &rates, Some(2_000_000)), Some(1));
        assert!(c.probing().is_some());
    }

    /// Lower layers are needed unless one subscriber alone receives the video and its
    /// budget is what a browser can send its full layer at.
    #[test]
    fn lower_layers_are_needed_unless_one_subscriber_can_take_the_full_layer() {
        assert!(!lower_layers_wanted(&[Some(2_000_000)]), "a call of two");
        assert!(
            !lower_layers_wanted(&[Some(TOP_FLOOR)]),
            "a capped link of two"
        );
        assert!(
            lower_layers_wanted(&[Some(TOP_FLOOR - 1)]),
            "too little for it"
        );
        assert!(
            lower_layers_wanted(&[None]),
            "no estimate yet, or sound only"
        );
        assert!(
            lower_layers_wanted(&[Some(2_000_000), Some(2_000_000)]),
            "three people"
        );
        assert!(lower_layers_wanted(&[]), "nobody receives it yet");
    }

    /// A simulcast video's part of its publisher's limit: its lower layers and the best
    /// budget; with them paused, the thumbnail at least, and a full layer that is off
    /// given what a browser needs to start it.
    #[test]
    fn a_paused_video_is_limited_to_its_thumbnail_and_a_full_layer_it_can_start() {
        assert_eq!(simulcast_need(250_000, false, true, 300_000), 550_000);
        assert_eq!(simulcast_need(250_000, false, false, 100_000), 350_000);
        // Paused: a thumbnail still ramping counts as its full rate.
        assert_eq!(
            simulcast_need(36_000, true, true, 206_000),
            THUMBNAIL_BPS + 206_000
        );
        // The full layer off: enough to start it, though the budget is less.
        assert_eq!(
            simulcast_need(36_000, true, false, 206_000),
            THUMBNAIL_BPS + TOP_START
        );
        assert_eq!(
            simulcast_need(60_000, true, false, 400_000),
            THUMBNAIL_BPS + 400_000
        );
    }

    /// Lower layers are paused after nobody has wanted them for a while, asked for again
    /// at once; and asked for again when the full layer does not come, then left on.
    #[test]
    fn lower_layers_pause_when_unwanted_and_come_back_when_wanted_or_the_top_is_missing() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let mut l = LowerLayers::default();
        let mut l = move |now, wanted, top| {
            let told = l.update(now, wanted, top);
            if let Some(pause) = told {
                l.told(now, pause);
            }
            (told, l.paused())
        };
        assert_eq!(
            l(at(0), true, true),
            (None, false),
            "a browser starts with them on"
        );
        assert_eq!(l(at(100), false, true), (None, false));
        assert_eq!(
            l(at(3_000), false, true),
            (None, false),
            "not unwanted long enough"
        );
        assert_eq!(l(at(3_100), false, true), (Some(true), true));
        assert_eq!(l(at(4_000), false, true), (None, true));
        // A second subscriber: at once.
        assert_eq!(l(at(4_100), true, true), (Some(false), false));
        assert_eq!(l(at(4_200), false, true), (None, false));
        assert_eq!(l(at(7_200), false, true), (Some(true), true));
        // The full layer stops (its publisher's uplink): waited for, then given up on.
        assert_eq!(l(at(8_000), false, false), (None, true));
        assert_eq!(l(at(11_900), false, false), (None, true));
        assert_eq!(l(at(12_000), false, false), (Some(false), false));
        // Not paused again for a while, though unwanted and the full layer back.
        assert_eq!(l(at(20_000), false, true), (None, false));
        assert_eq!(l(at(41_900), false, true), (None, false));
        assert_eq!(
            l(at(42_000), false, true),
            (None, false),
            "unwanted from now"
        );
        assert_eq!(l(at(45_000), false, true), (Some(true), true));
        // Another try whose full layer does not come: held twice as long.
        assert_eq!(l(at(45_100), false, false), (None, true));
        assert_eq!(l(at(49_100), false, false), (Some(false), false));
        assert_eq!(l(at(109_000), false, true), (None, false));
        assert_eq!(
            l(at(109_100), false, true),
            (None, false),
            "unwanted from now"
        );
        assert_eq!(l(at(112_100), false, true), (Some(true), true));
        // A full layer that comes back within the wait keeps them paused (and the next
        // hold is the first one's again).
        assert_eq!(l(at(113_000), false, false), (None, true));
        assert_eq!(l(at(115_000), false, true), (None, true));
        assert_eq!(l(at(118_000), false, false), (None, true));
        assert_eq!(l(at(121_900), false, false), (None, true));
        assert_eq!(l(at(122_000), false, false), (Some(false), false));
        assert_eq!(l(at(151_900), false, true), (None, false));
        assert_eq!(
            l(at(152_000), false, true),
            (None, false),
            "unwanted from now"
        );
        assert_eq!(l(at(155_000), false, true), (Some(true), true));
    }

    /// With no layer below (its publisher paused them), a video told to shed keeps its
    /// layer, and its ceiling falls to what the full link delivered: its publisher is
    /// told to send that.
    #[test]
    fn a_video_with_no_layer_below_told_to_shed_lowers_its_ceiling() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let alone = [None, None, Some(800_000)];
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 0), &alone, Some(2_000_000)), Some(2));
        assert_eq!(c.budget(2_000_000), 1_600_000);
        c.downlink(DownlinkState {
            shed: true,
            carried: Some(260_000),
            ..probed(200, 0)
        });
        assert_eq!(c.choose(at(t, 1_000), &alone, Some(2_000_000)), Some(2));
        assert_eq!((c.ceiling(), c.budget(2_000_000)), (Some(260_000), 234_000));
    }

    /// A probe the subscriber no longer needs (its share fell, its layer stopped) ends
    /// without a verdict.
    #[test]
    fn a_probe_no_longer_wanted_ends_without_moving() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let rates = [Some(200_000), Some(500_000), None];
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 0), &rates, Some(300_000)), Some(0));
        assert_eq!(c.choose(at(t, 100), &rates, Some(1_000_000)), Some(0));
        assert!(c.probing().is_some());
        assert_eq!(c.choose(at(t, 300), &rates, Some(300_000)), Some(0));
        assert_eq!(c.probing(), None);
        // The upper layer stops arriving during a probe.
        let mut c = LayerChoice::default();
        c.downlink(probed(5, 0));
        assert_eq!(c.choose(at(t, 0), &rates, Some(300_000)), Some(0));
        assert_eq!(c.choose(at(t, 100), &rates, Some(1_000_000)), Some(0));
        assert_eq!(
            c.choose(at(t, 900), &[Some(200_000), None, None], Some(1_000_000)),
            Some(0)
        );
        assert_eq!(c.probing(), None);
    }

    fn arrived(start: Instant, id: u64, sent_ms: u64, arrival_ms: u64) -> PacketReport {
        PacketReport {
            arrived: true,
            arrival: Some(Duration::from_millis(arrival_ms)),
            ..report(start, id, sent_ms, None)
        }
    }

    /// What a link delivers is the bytes that arrived over the last second by the
    /// browser's clock: a figure once half a second is seen, the old batches forgotten,
    /// lost packets not counted, a clock that goes back starting again.
    #[test]
    fn what_a_link_delivers_is_what_arrived_over_the_last_second() {
        let t = Instant::now();
        let mut d = Delivered::default();
        // 1,200-byte packets, one every 10 ms (960 kbit/s), feedback every 100 ms; a
        // queue of a 480 kbit/s link from 1 s on: each packet arrives 20 ms after the last.
        let mut sent = 0;
        let mut figures = Vec::new();
        for _ in 0..30 {
            let reports: Vec<_> = (0..10)
                .map(|_| {
                    sent += 1;
                    let arrival = if sent <= 100 {
                        sent * 10
                    } else {
                        1_000 + (sent - 100) * 20
                    };
                    arrived(t, sent, sent * 10, 5_000 + arrival)
                })
                .collect();
            figures.push(d.on_reports(&reports));
        }
        assert_eq!(figures[3], None, "less than half a second seen");
        let clean = figures[9].unwrap();
        assert!((940_000..=980_000).contains(&clean), "{clean}");
        let full = figures[29].unwrap();
        assert!((470_000..=490_000).contains(&full), "{full}");
        // Half lost: half the rate.
        let mut d = Delivered::default();
        let mut last = None;
        for i in 0..200u64 {
            let r = arrived(t, i, i * 10, 100 + i * 10);
            let r = PacketReport {
                arrived: i % 2 == 0,
                ..r
            };
            last = d.on_reports(&[r]).or(last);
        }
        let half = last.unwrap();
        assert!((470_000..=490_000).contains(&half), "{half}");
        // The clock goes back: no figure until half a second again.
        assert_eq!(d.on_reports(&[arrived(t, 300, 3_000, 50)]), None);
    }

    /// The wait in the queues is each packet's one-way delay over the least of the last
    /// seconds, whatever the offset between the two clocks; an old least is forgotten.
    #[test]
    fn the_queue_delay_is_the_one_way_delay_over_its_recent_least() {
        let t = Instant::now();
        let mut q = QueueDelay::default();
        // The browser's clock is 5 s ahead; 20 ms of path.
        let batch: Vec<_> = (0..5)
            .map(|i| arrived(t, i, i * 10, 5_020 + i * 10))
            .collect();
        assert_eq!(q.on_reports(at(t, 100), &batch), Some(Duration::ZERO));
        // A burst queues: 20, 40, 60 ms more.
        let batch: Vec<_> = (5..8)
            .map(|i| arrived(t, i, 200, 5_220 + (i - 4) * 20))
            .collect();
        assert_eq!(
            q.on_reports(at(t, 300), &batch),
            Some(Duration::from_millis(60))
        );
        // Nothing arrived: no figure.
        let lost = [report(t, 8, 300, None)];
        assert_eq!(q.on_reports(at(t, 400), &lost), None);
        // The path lengthens for good (a new route, 50 ms more): after a whole window
        // the new least is the base again.
        for k in 0..30 {
            let ms = 1_000 + k * 500;
            let batch = [arrived(t, 100 + k, ms, 5_070 + ms)];
            q.on_reports(at(t, ms + 80), &batch);
        }
        let batch = [arrived(t, 200, 16_000, 21_070)];
        assert_eq!(q.on_reports(at(t, 16_080), &batch), Some(Duration::ZERO));
    }

    #[test]
    fn a_layer_that_stops_is_left_at_once_and_up_is_one_layer_at_a_time() {
        let t = Instant::now();
        let mut c = LayerChoice::default();
        let three = [Some(100_000), Some(300_000), Some(900_000)];
        assert_eq!(c.choose(at(t, 0), &three, Some(5_000_000)), Some(2));
        // Its publisher stops the top layer (told to send less, or short of uplink): the
        // next best at once, and held there like any fall.
        let two = [Some(100_000), Some(300_000), None];
        assert_eq!(c.choose(at(t, 100), &two, Some(5_000_000)), Some(1));
        assert_eq!(
            c.choose(at(t, 200), &three, Some(5_000_000)),
            Some(1),
            "held"
        );
        assert_eq!(c.choose(at(t, 5_200), &three, Some(5_000_000)), Some(2));
        // From the bottom, after a fall soon after that rise (held 7.5 s): one layer per
        // step.
        assert_eq!(c.choose(at(t, 5_300), &three, Some(90_000)), Some(0));
        assert_eq!(c.choose(at(t, 12_700), &three, Some(5_000_000)), Some(0));
        assert_eq!(c.choose(at(t, 12_900), &three, Some(5_000_000)), Some(1));
        assert_eq!(c.choose(at(t, 13_000), &three, Some(5_000_000)), Some(2));
        // Nothing arriving: no choice.
        assert_eq!(
            c.choose(at(t, 14_000), &[None, None, None], Some(5_000_000)),
            None
        );
    }

    #[test]
    fn a_fall_in_steps_keeps_the_hold_it_began() {
        let t = Instant::now();
        let mut h = Hold::default();
        h.fell(at(t, 0));
        h.rose(at(t, 5_000));
        // The rise fails: 7.5 s; the same fall going on in steps keeps 7.5 s.
        h.fell(at(t, 6_000));
        h.fell(at(t, 6_250));
        h.fell(at(t, 6_500));
        assert!(h.held(at(t, 13_900)));
        assert!(!h.held(at(t, 14_000)));
        // The next rise fails too: longer again.
        h.rose(at(t, 14_000));
        h.fell(at(t, 15_000));
        assert!(h.held(at(t, 26_000)), "11.25 s");
        assert!(!h.held(at(t, 26_300)));
        // A rise that holds: the next fall starts from 5 s.
        h.rose(at(t, 26_300));
        h.fell(at(t, 40_000));
        assert!(!h.held(at(t, 45_000)));
    }
}
