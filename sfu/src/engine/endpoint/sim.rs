//! A simulated network for tests of the endpoint (and of what is built on it: bandwidth
//! estimation is to be tested on these links). Sans-IO like the endpoint: datagrams go
//! in with the time they are sent and come out when they are due; the test advances the
//! time.
//!
//! Each direction between two hosts (by IP address) is one [`Link`]: random loss (from a
//! seeded generator, so a run is repeatable), a one-way delay, and a rate cap. The cap is
//! a bottleneck queue drained at the link's rate, like a router's (or `tbf`'s) tail-drop
//! queue: a datagram waits for those ahead of it, and is dropped when it would wait
//! longer than the queue holds.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// How one direction between two hosts behaves.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkConfig {
    /// The share of datagrams lost at random, 0.0 to 1.0.
    pub loss: f64,
    /// One-way delay.
    pub delay: Duration,
    /// The link's rate in bits per second; `None`: as fast as sent.
    pub rate_bps: Option<u64>,
    /// With a rate cap: the longest a datagram waits in the queue before being dropped.
    pub queue: Duration,
}

impl LinkConfig {
    /// No loss, no cap, `delay` one way.
    pub fn clean(delay: Duration) -> Self {
        Self {
            loss: 0.0,
            delay,
            rate_bps: None,
            queue: Duration::from_millis(100),
        }
    }

    pub fn with_loss(self, loss: f64) -> Self {
        Self { loss, ..self }
    }

    /// A cap of `bps` with a queue holding `queue` of it.
    pub fn with_rate(self, bps: u64, queue: Duration) -> Self {
        Self {
            rate_bps: Some(bps),
            queue,
            ..self
        }
    }
}

/// What a link did so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub sent: u64,
    /// Lost at random.
    pub lost: u64,
    /// Dropped because the queue of a capped link was full.
    pub overflowed: u64,
    pub delivered: u64,
    pub delivered_bytes: u64,
}

/// One datagram as the network carries it.
#[derive(Debug)]
pub struct Datagram {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub bytes: BytesMut,
}

#[derive(Debug)]
struct Link {
    config: LinkConfig,
    /// When the queue of a capped link is empty again.
    busy_until: Option<Instant>,
    stats: LinkStats,
}

/// A datagram on its way, due at `at` (`order` keeps sends at one instant in order).
#[derive(Debug)]
struct InFlight {
    at: Instant,
    order: u64,
    datagram: Datagram,
}

impl PartialEq for InFlight {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for InFlight {}
impl PartialOrd for InFlight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for InFlight {
    // Reversed: the heap pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.order).cmp(&(self.at, self.order))
    }
}

/// Hosts and the links between them.
#[derive(Debug)]
pub struct Network {
    rng: StdRng,
    /// What a direction with no link of its own does.
    default: LinkConfig,
    links: HashMap<(IpAddr, IpAddr), Link>,
    in_flight: BinaryHeap<InFlight>,
    order: u64,
}

impl Network {
    /// Every direction as `default` until set otherwise; losses drawn from `seed`.
    pub fn new(seed: u64, default: LinkConfig) -> Self {
        Self {
            rng: StdRng::seed_from_u64(seed),
            default,
            links: HashMap::new(),
            in_flight: BinaryHeap::new(),
            order: 0,
        }
    }

    /// Sets the direction `from` → `to` (changed mid-run, it applies to what is sent next).
    pub fn set_link(&mut self, from: IpAddr, to: IpAddr, config: LinkConfig) {
        self.link(from, to).config = config;
    }

    pub fn stats(&self, from: IpAddr, to: IpAddr) -> LinkStats {
        self.links
            .get(&(from, to))
            .map(|l| l.stats)
            .unwrap_or_default()
    }

    fn link(&mut self, from: IpAddr, to: IpAddr) -> &mut Link {
        let default = self.default;
        self.links.entry((from, to)).or_insert_with(|| Link {
            config: default,
            busy_until: None,
            stats: LinkStats::default(),
        })
    }

    /// Sends a datagram at `now`.
    pub fn send(&mut self, now: Instant, from: SocketAddr, to: SocketAddr, bytes: BytesMut) {
        let draw: f64 = self.rng.random();
        let link = self.link(from.ip(), to.ip());
        link.stats.sent += 1;
        let config = link.config;
        if draw < config.loss {
            link.stats.lost += 1;
            return;
        }
        let mut leaves = now;
        if let Some(bps) = config.rate_bps.filter(|b| *b > 0) {
            let start = link.busy_until.map_or(now, |b| b.max(now));
            if start.saturating_duration_since(now) > config.queue {
                link.stats.overflowed += 1;
                return;
            }
            let bits = bytes.len() as u64 * 8;
            leaves = start + Duration::from_nanos(bits * 1_000_000_000 / bps);
            link.busy_until = Some(leaves);
        }
        link.stats.delivered += 1;
        link.stats.delivered_bytes += bytes.len() as u64;
        self.order += 1;
        self.in_flight.push(InFlight {
            at: leaves + config.delay,
            order: self.order,
            datagram: Datagram { from, to, bytes },
        });
    }

    /// The next datagram due by `now`.
    pub fn poll_due(&mut self, now: Instant) -> Option<Datagram> {
        if self.in_flight.peek().is_some_and(|d| d.at <= now) {
            return self.in_flight.pop().map(|d| d.datagram);
        }
        None
    }

    /// When the next datagram is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.in_flight.peek().map(|d| d.at)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_capped_link_delays_then_drops_what_exceeds_its_rate() {
        let t0 = Instant::now();
        let (a, b) = (addr("127.0.1.1:1"), addr("127.0.2.1:1"));
        let mut net = Network::new(
            1,
            LinkConfig::clean(Duration::from_millis(10))
                .with_rate(800_000, Duration::from_millis(50)),
        );
        // 100 datagrams of 1,000 bytes at once: 10 ms each at 800 kbit/s; the queue holds
        // 50 ms, so 6 get through (the first leaves at once).
        for _ in 0..100 {
            net.send(t0, a, b, BytesMut::from(&[0u8; 1000][..]));
        }
        let s = net.stats(a.ip(), b.ip());
        assert_eq!((s.sent, s.delivered, s.overflowed), (100, 6, 94));
        assert!(net.poll_due(t0 + Duration::from_millis(19)).is_none());
        assert!(net.poll_due(t0 + Duration::from_millis(20)).is_some());
        let mut n = 1;
        while net.poll_due(t0 + Duration::from_millis(80)).is_some() {
            n += 1;
        }
        assert_eq!(n, 6);
    }

    #[test]
    fn loss_is_near_its_rate_and_repeats_with_the_seed() {
        let t0 = Instant::now();
        let (a, b) = (addr("127.0.1.1:1"), addr("127.0.2.1:1"));
        let run = |seed| {
            let mut net = Network::new(seed, LinkConfig::clean(Duration::ZERO).with_loss(0.05));
            for _ in 0..10_000 {
                net.send(t0, a, b, BytesMut::from(&b"x"[..]));
            }
            net.stats(a.ip(), b.ip()).lost
        };
        let lost = run(7);
        assert!((400..600).contains(&lost), "{lost}");
        assert_eq!(run(7), lost);
    }
}
