//! The impaired link of `impair` (issue 15), without I/O: one [`Direction`] per way takes
//! packets with the time they arrived and says when each may leave. Random loss (seeded),
//! a rate cap (a token bucket with a queue bounded in milliseconds, tail drop), then a
//! one-way delay with jitter. Packets leave in the order they came unless `reorder` is set.
//! Time is passed in, so the tests drive it on a fake clock.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// What one direction of the link does to the packets it carries.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairment {
    /// Random loss, 0–100 %.
    pub loss_pct: f64,
    /// One-way delay added to every packet.
    pub delay: Duration,
    /// Each packet's delay varies uniformly by up to ± this (never below zero).
    pub jitter: Duration,
    /// The rate cap in kbit/s (IP bytes); `None`: no cap.
    pub rate_kbps: Option<u32>,
    /// How long a packet may wait for the cap before it is dropped (the queue's bound).
    pub queue: Duration,
    /// Whether jitter may reorder packets (off: each leaves no earlier than the one before).
    pub reorder: bool,
}

impl Impairment {
    /// A perfect link.
    pub const NONE: Impairment = Impairment {
        loss_pct: 0.0,
        delay: Duration::ZERO,
        jitter: Duration::ZERO,
        rate_kbps: None,
        queue: Duration::from_millis(200),
        reorder: false,
    };

    /// This impairment with `spec` applied: space-separated `key=value` pairs, each
    /// changing one setting (`loss` %, `delay`, `jitter` and `queue` in ms, `rate` in
    /// kbit/s or `off`, `reorder` 0 or 1). Nothing changes unless every pair is valid.
    pub fn with(&self, spec: &str) -> Result<Impairment, String> {
        let mut next = *self;
        let mut any = false;
        for pair in spec.split_whitespace() {
            any = true;
            let (key, value) = pair
                .split_once('=')
                .ok_or_else(|| format!("`{pair}` is not key=value"))?;
            let number = |max: f64| -> Result<f64, String> {
                let v: f64 = value
                    .parse()
                    .map_err(|_| format!("{key}: `{value}` is not a number"))?;
                if !v.is_finite() || !(0.0..=max).contains(&v) {
                    return Err(format!("{key}: {value} is outside 0–{max}"));
                }
                Ok(v)
            };
            let millis = |max: f64| number(max).map(|v| Duration::from_secs_f64(v / 1000.0));
            match key {
                "loss" => next.loss_pct = number(100.0)?,
                "delay" => next.delay = millis(10_000.0)?,
                "jitter" => next.jitter = millis(10_000.0)?,
                "queue" => next.queue = millis(10_000.0)?,
                "rate" if value == "off" => next.rate_kbps = None,
                "rate" => {
                    let v = number(10_000_000.0)?;
                    if v < 8.0 {
                        return Err("rate: the cap is 8 kbit/s at least (or `off`)".into());
                    }
                    next.rate_kbps = Some(v.round() as u32);
                }
                "reorder" => {
                    next.reorder = match value {
                        "0" => false,
                        "1" => true,
                        _ => return Err(format!("reorder: `{value}` is not 0 or 1")),
                    }
                }
                _ => {
                    return Err(format!(
                        "unknown setting `{key}` (loss, delay, jitter, rate, queue, reorder)"
                    ));
                }
            }
        }
        if !any {
            return Err("no settings given".into());
        }
        Ok(next)
    }
}

impl fmt::Display for Impairment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "loss={} delay={} jitter={} rate={} queue={} reorder={}",
            self.loss_pct,
            self.delay.as_secs_f64() * 1000.0,
            self.jitter.as_secs_f64() * 1000.0,
            self.rate_kbps
                .map_or_else(|| "off".to_string(), |r| r.to_string()),
            self.queue.as_secs_f64() * 1000.0,
            u8::from(self.reorder),
        )
    }
}

/// What one direction has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Packets and bytes that came in.
    pub packets: u64,
    pub bytes: u64,
    /// Packets and bytes handed out to leave.
    pub sent_packets: u64,
    pub sent_bytes: u64,
    /// Packets dropped by random loss.
    pub lost: u64,
    /// Packets dropped because the cap's queue was full.
    pub queue_dropped: u64,
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "packets={} bytes={} sent_packets={} sent_bytes={} lost={} queue_dropped={}",
            self.packets,
            self.bytes,
            self.sent_packets,
            self.sent_bytes,
            self.lost,
            self.queue_dropped
        )
    }
}

/// Why a packet was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    Loss,
    Queue,
}

/// A packet waiting to leave: ordered by release time, then by arrival.
#[derive(Debug)]
struct Held<P> {
    release: Instant,
    seq: u64,
    bytes: usize,
    packet: P,
}

impl<P> PartialEq for Held<P> {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl<P> Eq for Held<P> {}
impl<P> PartialOrd for Held<P> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<P> Ord for Held<P> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.release, self.seq).cmp(&(other.release, other.seq))
    }
}

/// The token bucket's depth: a couple of full-size packets, as `tc tbf … burst 4kb`.
const BURST_BYTES: f64 = 4096.0;

/// One way of the link. `P` is the packet (a buffer in `impair`, anything in tests).
#[derive(Debug)]
pub struct Direction<P> {
    settings: Impairment,
    rng: StdRng,
    /// The token bucket: bytes of credit at `tokens_at`.
    tokens: f64,
    tokens_at: Option<Instant>,
    /// When the last packet passed the cap.
    last_departure: Option<Instant>,
    /// The latest release time handed out (no reordering unless asked).
    last_release: Option<Instant>,
    held: BinaryHeap<Reverse<Held<P>>>,
    seq: u64,
    counters: Counters,
}

impl<P> Direction<P> {
    pub fn new(seed: u64) -> Self {
        Direction {
            settings: Impairment::NONE,
            rng: StdRng::seed_from_u64(seed),
            tokens: BURST_BYTES,
            tokens_at: None,
            last_departure: None,
            last_release: None,
            held: BinaryHeap::new(),
            seq: 0,
            counters: Counters::default(),
        }
    }

    pub fn settings(&self) -> Impairment {
        self.settings
    }

    /// New settings, from the next packet on (packets already held keep their times).
    pub fn set(&mut self, settings: Impairment) {
        self.settings = settings;
    }

    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// Packets held now.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// A packet of `bytes` arrives at `now`: held until its release, or dropped (and
    /// handed back).
    pub fn offer(&mut self, now: Instant, packet: P, bytes: usize) -> Result<(), (Dropped, P)> {
        self.counters.packets += 1;
        self.counters.bytes += bytes as u64;
        let s = self.settings;
        if s.loss_pct > 0.0 && self.rng.random::<f64>() * 100.0 < s.loss_pct {
            self.counters.lost += 1;
            return Err((Dropped::Loss, packet));
        }
        // The cap: the packet leaves the bucket once it has the tokens, after every packet
        // before it; it is dropped if that is more than the queue's bound away.
        let mut departure = now.max(self.last_departure.unwrap_or(now));
        if let Some(kbps) = s.rate_kbps {
            let bytes_per_s = f64::from(kbps) * 1000.0 / 8.0;
            let since = self
                .tokens_at
                .map_or(Duration::ZERO, |t| departure.saturating_duration_since(t));
            let tokens = (self.tokens + since.as_secs_f64() * bytes_per_s).min(BURST_BYTES);
            let (leave, left) = if tokens >= bytes as f64 {
                (departure, tokens - bytes as f64)
            } else {
                let wait = (bytes as f64 - tokens) / bytes_per_s;
                (departure + Duration::from_secs_f64(wait), 0.0)
            };
            if leave.saturating_duration_since(now) > s.queue {
                self.counters.queue_dropped += 1;
                return Err((Dropped::Queue, packet));
            }
            self.tokens = left;
            self.tokens_at = Some(leave);
            departure = leave;
        } else {
            self.tokens = BURST_BYTES;
            self.tokens_at = Some(departure);
        }
        self.last_departure = Some(departure);
        let mut delay = s.delay.as_secs_f64();
        if !s.jitter.is_zero() {
            let j = s.jitter.as_secs_f64();
            delay = (delay + self.rng.random_range(-j..=j)).max(0.0);
        }
        let mut release = departure + Duration::from_secs_f64(delay);
        if !s.reorder {
            release = release.max(self.last_release.unwrap_or(release));
        }
        self.last_release = Some(self.last_release.map_or(release, |r| r.max(release)));
        self.seq += 1;
        self.held.push(Reverse(Held {
            release,
            seq: self.seq,
            bytes,
            packet,
        }));
        Ok(())
    }

    /// The next packet whose time has come at `now`.
    pub fn poll(&mut self, now: Instant) -> Option<P> {
        if self.held.peek()?.0.release > now {
            return None;
        }
        let Reverse(h) = self.held.pop()?;
        self.counters.sent_packets += 1;
        self.counters.sent_bytes += h.bytes as u64;
        Some(h.packet)
    }

    /// When the next held packet is due.
    pub fn next_release(&self) -> Option<Instant> {
        self.held.peek().map(|h| h.0.release)
    }
}

/// A command of `impair`'s standard input.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Change `up`, `down` or both (`both`) with a spec for [`Impairment::with`].
    Set { up: bool, down: bool, spec: String },
    /// Both directions back to a perfect link.
    Clear,
    /// Print the counters.
    Counters,
    /// Print the settings.
    Show,
}

impl Command {
    /// One line of input; an error says what is wrong with it.
    pub fn parse(line: &str) -> Result<Command, String> {
        let line = line.trim();
        let (word, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
        let rest = rest.trim();
        let set = |up, down| {
            if rest.is_empty() {
                Err(format!(
                    "`{word}` needs settings, e.g. `{word} loss=5 delay=75`"
                ))
            } else {
                Ok(Command::Set {
                    up,
                    down,
                    spec: rest.to_string(),
                })
            }
        };
        let alone = |c: Command| {
            if rest.is_empty() {
                Ok(c)
            } else {
                Err(format!("`{word}` takes nothing after it"))
            }
        };
        match word {
            "up" => set(true, false),
            "down" => set(false, true),
            "both" => set(true, true),
            "clear" => alone(Command::Clear),
            "counters" => alone(Command::Counters),
            "show" => alone(Command::Show),
            "" => Err("empty command".into()),
            _ => Err(format!(
                "unknown command `{word}` (up, down, both, clear, counters, show)"
            )),
        }
    }
}

/// The two ways of a link, and the commands that change them.
#[derive(Debug)]
pub struct Link<P> {
    /// From the impaired side (the browser's) toward the servers.
    pub up: Direction<P>,
    /// From the servers toward the impaired side.
    pub down: Direction<P>,
}

impl<P> Link<P> {
    pub fn new(seed: u64) -> Self {
        Link {
            up: Direction::new(seed),
            down: Direction::new(seed.wrapping_add(0x9e37_79b9_7f4a_7c15)),
        }
    }

    /// Carries out one line of input; the answer to print (`ok`, the counters or the
    /// settings), or an error, in which case nothing changed.
    pub fn command(&mut self, line: &str) -> Result<String, String> {
        match Command::parse(line)? {
            Command::Set { up, down, spec } => {
                let next_up = if up {
                    Some(self.up.settings().with(&spec)?)
                } else {
                    None
                };
                let next_down = if down {
                    Some(self.down.settings().with(&spec)?)
                } else {
                    None
                };
                if let Some(s) = next_up {
                    self.up.set(s);
                }
                if let Some(s) = next_down {
                    self.down.set(s);
                }
                Ok("ok".into())
            }
            Command::Clear => {
                self.up.set(Impairment::NONE);
                self.down.set(Impairment::NONE);
                Ok("ok".into())
            }
            Command::Counters => Ok(self.counters_text()),
            Command::Show => Ok(format!(
                "settings up {}\nsettings down {}",
                self.up.settings(),
                self.down.settings()
            )),
        }
    }

    /// `counters up …` and `counters down …`, one line each.
    pub fn counters_text(&self) -> String {
        format!(
            "counters up {}\ncounters down {}",
            self.up.counters(),
            self.down.counters()
        )
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Everything due by `now`, with the time each packet left.
    fn drain(d: &mut Direction<u32>, now: Instant) -> Vec<u32> {
        std::iter::from_fn(|| d.poll(now)).collect()
    }

    #[test]
    fn a_clear_link_passes_every_packet_at_once() {
        let t0 = Instant::now();
        let mut d = Direction::new(1);
        for i in 0..100 {
            d.offer(t0, i, 1200).unwrap();
            assert_eq!(d.poll(t0), Some(i));
        }
        assert_eq!(d.counters().sent_packets, 100);
        assert_eq!(d.next_release(), None);
    }

    #[test]
    fn loss_is_near_the_setting_and_seeded() {
        let t0 = Instant::now();
        let run = |seed| {
            let mut d = Direction::new(seed);
            d.set(Impairment::NONE.with("loss=20").unwrap());
            let n = 20_000u32;
            for i in 0..n {
                let _ = d.offer(t0, i, 100);
            }
            d.counters().lost
        };
        let lost = run(7);
        // Binomial(20000, 0.2): sd = sqrt(20000 * 0.2 * 0.8) ≈ 57; 5 sd is ±283.
        assert!((4000 - 283..=4000 + 283).contains(&lost), "lost {lost}");
        assert_eq!(lost, run(7), "the same seed loses the same packets");
        let mut all = Direction::new(3);
        all.set(Impairment::NONE.with("loss=100").unwrap());
        assert!(all.offer(t0, 1, 10).is_err());
    }

    #[test]
    fn delay_holds_each_packet_and_keeps_order_under_jitter() {
        let t0 = Instant::now();
        let mut d = Direction::new(2);
        d.set(Impairment::NONE.with("delay=50 jitter=20").unwrap());
        // Dense traffic (a packet a millisecond): in order, none lost, none early.
        for i in 0..1000u32 {
            d.offer(t0 + MS * i, i, 200).unwrap();
        }
        assert!(drain(&mut d, t0 + MS * 29).is_empty());
        let mut out = Vec::new();
        let mut t = t0;
        while t <= t0 + MS * 1100 {
            out.extend(drain(&mut d, t));
            t += MS;
        }
        assert_eq!(out, (0..1000).collect::<Vec<_>>(), "in order, none lost");

        // Sparse traffic (a packet every 100 ms): each delay within 50 ± 20 ms, spread out.
        let t1 = t0 + Duration::from_secs(10);
        let mut delays = Vec::new();
        for i in 0..200u32 {
            let sent = t1 + MS * (100 * i);
            d.offer(sent, i, 200).unwrap();
            let due = d.next_release().unwrap();
            assert_eq!(d.poll(due), Some(i));
            delays.push((due - sent).as_secs_f64() * 1000.0);
        }
        assert!(
            delays.iter().all(|d| (30.0..=70.0).contains(d)),
            "{delays:?}"
        );
        let (lo, hi) = delays
            .iter()
            .fold((f64::MAX, 0.0f64), |(a, b), d| (a.min(*d), b.max(*d)));
        assert!(lo < 33.0 && hi > 67.0, "delays {lo}–{hi} ms");
    }

    #[test]
    fn reorder_lets_jitter_overtake() {
        let t0 = Instant::now();
        let mut d = Direction::new(4);
        d.set(
            Impairment::NONE
                .with("delay=50 jitter=20 reorder=1")
                .unwrap(),
        );
        for i in 0..200u32 {
            d.offer(t0 + MS * i, i, 200).unwrap();
        }
        let out = drain(&mut d, t0 + Duration::from_secs(1));
        assert_eq!(out.len(), 200);
        assert!(out.windows(2).any(|w| w[1] < w[0]), "some packets overtook");
    }

    #[test]
    fn the_cap_paces_and_tail_drops() {
        let t0 = Instant::now();
        let mut d = Direction::new(5);
        d.set(Impairment::NONE.with("rate=500 queue=100").unwrap());
        // 2 Mbit/s offered for 2 s (1000-byte packets every 4 ms) into a 500 kbit/s cap.
        let mut sent_bytes = 0u64;
        let mut last_out = t0;
        for i in 0..500u32 {
            let now = t0 + MS * (4 * i);
            let _ = d.offer(now, i, 1000);
            for _ in drain(&mut d, now) {
                sent_bytes += 1000;
                last_out = now;
            }
        }
        let c = d.counters();
        assert!(c.queue_dropped > 300, "{c}");
        // What left in the 2 s: 500 kbit/s = 62.5 kB/s, plus the burst.
        let kbps = sent_bytes as f64 * 8.0 / (last_out - t0).as_secs_f64() / 1000.0;
        assert!((475.0..=530.0).contains(&kbps), "{kbps} kbit/s");
        // Held packets wait 100 ms at most.
        let held = d.held();
        assert!(held <= 7, "{held} held");
    }

    #[test]
    fn changes_apply_to_the_next_packet() {
        let t0 = Instant::now();
        let mut d = Direction::new(6);
        d.set(Impairment::NONE.with("delay=100").unwrap());
        d.offer(t0, 1, 100).unwrap();
        d.set(Impairment::NONE);
        // Not reordered: the new packet waits behind the held one.
        d.offer(t0 + MS * 10, 2, 100).unwrap();
        assert!(drain(&mut d, t0 + MS * 99).is_empty());
        assert_eq!(drain(&mut d, t0 + MS * 100), vec![1, 2]);
        d.offer(t0 + MS * 200, 3, 100).unwrap();
        assert_eq!(drain(&mut d, t0 + MS * 200), vec![3]);
    }

    #[test]
    fn commands_change_settings_and_garbage_changes_nothing() {
        let mut link: Link<u32> = Link::new(1);
        assert_eq!(
            link.command("up loss=5 delay=75 jitter=10 rate=350")
                .unwrap(),
            "ok"
        );
        let up = link.up.settings();
        assert_eq!(up.loss_pct, 5.0);
        assert_eq!(up.delay, MS * 75);
        assert_eq!(up.rate_kbps, Some(350));
        assert_eq!(link.down.settings(), Impairment::NONE);
        for bad in [
            "",
            "sideways loss=5",
            "up",
            "up loss=101",
            "up loss=5 delay=-1",
            "up loss=5 bogus=1",
            "up loss",
            "down rate=fast",
            "both reorder=2",
            "clear now",
            "up loss=NaN",
            "up rate=2",
        ] {
            let err = link.command(bad).unwrap_err();
            assert!(!err.is_empty(), "{bad}");
            assert_eq!(link.up.settings(), up, "`{bad}` changed up");
            assert_eq!(
                link.down.settings(),
                Impairment::NONE,
                "`{bad}` changed down"
            );
        }
        link.command("up rate=off").unwrap();
        assert_eq!(link.up.settings().rate_kbps, None);
        assert_eq!(link.up.settings().loss_pct, 5.0, "other settings kept");
        link.command("both delay=10").unwrap();
        assert_eq!(link.down.settings().delay, MS * 10);
        link.command("clear").unwrap();
        assert_eq!(link.up.settings(), Impairment::NONE);
        assert!(
            link.command("counters")
                .unwrap()
                .starts_with("counters up packets=0")
        );
        assert!(
            link.command("show")
                .unwrap()
                .contains("settings down loss=0")
        );
    }
}
