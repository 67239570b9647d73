//! Each subscriber's downlink, from its browser's congestion feedback: the estimate
//! ([`DownlinkEstimator`], the `rtc` crate's delay-based GCC and our [`LossLimit`]), the
//! queue its packets wait in ([`QueueDelay`]) and what arrived ([`Delivered`]), kept where
//! the endpoint reads them ([`Downlink`]).

use super::*;

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
