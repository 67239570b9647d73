//! Which simulcast layer each subscriber gets of each video ([`LayerChoice`]): down when
//! its share or its queue says so, up after a probe passes, or at once to a top layer that
//! fits what its link was seen to carry.

use super::*;

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
