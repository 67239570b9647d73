//! The node's Prometheus metrics: what it carries (participants, consultations), what its
//! media loops forward and how busy they are, how subscribers' links fare (loss and round
//! trip, sampled every 5 s from their browsers' congestion control feedback), and what it does about loss (NACKs,
//! keyframe requests).
//!
//! Each media loop holds its own [`LoopCounters`] (handles into the families below,
//! labelled by loop), so a forwarded packet costs one uncontended atomic add and no
//! lookup. Nothing here names a person, a visit or a consultation.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

/// The label of a per-loop series: the loop's index.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoopLabel {
    pub media_loop: u32,
}

type PerLoop = Family<LoopLabel, Counter>;

/// Every metric of one node (or of the in-process SFU of a single-node `consult`).
#[derive(Debug, Clone)]
pub struct NodeMetrics {
    pub participants: Gauge,
    pub consultations: Gauge,
    pub draining: Gauge,
    forwarded_packets: PerLoop,
    forwarded_bytes: PerLoop,
    received_packets: PerLoop,
    received_bytes: PerLoop,
    nacks_resent: PerLoop,
    nacks_upstream: PerLoop,
    nacks_refused: PerLoop,
    keyframe_requests: PerLoop,
    probe_packets: PerLoop,
    busy: Family<LoopLabel, Counter<f64, AtomicU64>>,
    loss: Histogram,
    rtt: Histogram,
}

/// One media loop's handles: counted without a lock or a lookup.
#[derive(Debug, Clone)]
pub struct LoopCounters {
    pub forwarded_packets: Counter,
    pub forwarded_bytes: Counter,
    pub received_packets: Counter,
    pub received_bytes: Counter,
    pub nacks_resent: Counter,
    pub nacks_upstream: Counter,
    pub nacks_refused: Counter,
    pub keyframe_requests: Counter,
    pub probe_packets: Counter,
    /// Seconds the loop spent working (not waiting for its sockets or timer).
    pub busy: Counter<f64, AtomicU64>,
    /// Fraction lost towards each subscriber, from its browser's feedback.
    pub loss: Histogram,
    /// Round trip to each subscriber's browser, in seconds.
    pub rtt: Histogram,
}

impl Default for NodeMetrics {
    fn default() -> Self {
        Self {
            participants: Gauge::default(),
            consultations: Gauge::default(),
            draining: Gauge::default(),
            forwarded_packets: PerLoop::default(),
            forwarded_bytes: PerLoop::default(),
            received_packets: PerLoop::default(),
            received_bytes: PerLoop::default(),
            nacks_resent: PerLoop::default(),
            nacks_upstream: PerLoop::default(),
            nacks_refused: PerLoop::default(),
            keyframe_requests: PerLoop::default(),
            probe_packets: PerLoop::default(),
            busy: Family::default(),
            loss: Histogram::new([0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5]),
            rtt: Histogram::new([0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0]),
        }
    }
}

impl NodeMetrics {
    /// The handles of media loop `index`.
    pub fn media_loop(&self, index: usize) -> LoopCounters {
        let l = LoopLabel {
            media_loop: u32::try_from(index).unwrap_or(u32::MAX),
        };
        LoopCounters {
            forwarded_packets: self.forwarded_packets.get_or_create(&l).clone(),
            forwarded_bytes: self.forwarded_bytes.get_or_create(&l).clone(),
            received_packets: self.received_packets.get_or_create(&l).clone(),
            received_bytes: self.received_bytes.get_or_create(&l).clone(),
            nacks_resent: self.nacks_resent.get_or_create(&l).clone(),
            nacks_upstream: self.nacks_upstream.get_or_create(&l).clone(),
            nacks_refused: self.nacks_refused.get_or_create(&l).clone(),
            keyframe_requests: self.keyframe_requests.get_or_create(&l).clone(),
            probe_packets: self.probe_packets.get_or_create(&l).clone(),
            busy: self.busy.get_or_create(&l).clone(),
            loss: self.loss.clone(),
            rtt: self.rtt.clone(),
        }
    }

    /// Sums a per-loop counter over the loops (for tests and benchmarks).
    pub fn total(&self, which: Which) -> u64 {
        let family = match which {
            Which::ForwardedPackets => &self.forwarded_packets,
            Which::ReceivedPackets => &self.received_packets,
            Which::NacksResent => &self.nacks_resent,
            Which::NacksUpstream => &self.nacks_upstream,
            Which::NacksRefused => &self.nacks_refused,
            Which::KeyframeRequests => &self.keyframe_requests,
            Which::ProbePackets => &self.probe_packets,
        };
        (0..64u32)
            .map_while(|i| {
                let l = LoopLabel { media_loop: i };
                family.get(&l).map(|c| c.get())
            })
            .sum()
    }

    /// Adds these metrics, named `sfu_…`, to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("sfu");
        r.register(
            "participants",
            "Participants connected to this node (each has a publisher and a subscriber connection)",
            self.participants.clone(),
        );
        r.register(
            "consultations",
            "Consultations with media on this node",
            self.consultations.clone(),
        );
        r.register(
            "draining",
            "1 while the node is draining (takes no new consultations)",
            self.draining.clone(),
        );
        r.register(
            "forwarded_packets",
            "RTP packets sent to subscribers (resent ones included)",
            self.forwarded_packets.clone(),
        );
        r.register_with_unit(
            "forwarded",
            "RTP payload bytes sent to subscribers",
            Unit::Bytes,
            self.forwarded_bytes.clone(),
        );
        r.register(
            "received_packets",
            "RTP packets received from publishers",
            self.received_packets.clone(),
        );
        r.register_with_unit(
            "received",
            "RTP payload bytes received from publishers",
            Unit::Bytes,
            self.received_bytes.clone(),
        );
        r.register(
            "nacks_resent",
            "Packets a subscriber NACKed, sent again from the node's cache",
            self.nacks_resent.clone(),
        );
        r.register(
            "nacks_upstream",
            "Packets the node never received, NACKed to their publisher",
            self.nacks_upstream.clone(),
        );
        r.register(
            "nacks_refused",
            "NACKed packets not resent (asked too soon or too late, or over the subscriber's budget)",
            self.nacks_refused.clone(),
        );
        r.register(
            "keyframe_requests",
            "Keyframe requests (PLI) sent to publishers",
            self.keyframe_requests.clone(),
        );
        r.register(
            "probe_packets",
            "Packets sent to subscribers on their probe track, to learn whether their downlink takes a higher simulcast layer",
            self.probe_packets.clone(),
        );
        r.register_with_unit(
            "media_loop_busy",
            "Time each media loop spent working rather than waiting",
            Unit::Seconds,
            self.busy.clone(),
        );
        r.register(
            "subscriber_loss_ratio",
            "Fraction of packets lost towards subscribers, from their browsers' congestion control feedback (sampled every 5 s per connection)",
            self.loss.clone(),
        );
        r.register_with_unit(
            "subscriber_rtt",
            "Round trip to subscribers: a packet's departure to the feedback that acknowledges it, so including the browser's feedback interval (sampled every 5 s per connection)",
            Unit::Seconds,
            self.rtt.clone(),
        );
    }
}

/// A per-loop counter, for [`NodeMetrics::total`].
#[derive(Debug, Clone, Copy)]
pub enum Which {
    ForwardedPackets,
    ReceivedPackets,
    NacksResent,
    NacksUpstream,
    NacksRefused,
    KeyframeRequests,
    ProbePackets,
}

/// Who may read `/metrics`: with a token, whoever sends it as `Authorization: Bearer`;
/// without one, only the same host, directly (a request relayed by a proxy on the same
/// host carries `X-Forwarded-For` and is refused, so a public front end never exposes
/// the metrics).
#[derive(Clone, Default)]
pub struct Access {
    token: Option<std::sync::Arc<str>>,
}

impl std::fmt::Debug for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .finish()
    }
}

impl Access {
    /// `token`: empty for the same host only.
    pub fn new(token: &str) -> Self {
        Self {
            token: (!token.is_empty()).then(|| token.into()),
        }
    }

    pub fn allows(&self, peer: std::net::SocketAddr, headers: &axum::http::HeaderMap) -> bool {
        use axum::http::header;
        match &self.token {
            Some(token) => headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|given| same_secret(given.as_bytes(), token.as_bytes())),
            None => {
                peer.ip().to_canonical().is_loopback()
                    && !headers.contains_key("x-forwarded-for")
                    && !headers.contains_key(header::FORWARDED)
            }
        }
    }
}

/// Compares in time independent of where the inputs differ.
pub fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The text exposition of `registry` (`text/plain; version=0.0.4` compatible).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, registry);
    out
}

/// The content type of [`render`]'s output.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }

    #[test]
    fn only_the_same_host_or_the_token_reads_metrics() {
        use axum::http::HeaderMap;
        let local: std::net::SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let far: std::net::SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let none = HeaderMap::new();
        let mut proxied = HeaderMap::new();
        proxied.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        let mut bearer = HeaderMap::new();
        bearer.insert("authorization", "Bearer s3cret".parse().unwrap());
        let open = Access::new("");
        assert!(open.allows(local, &none));
        assert!(!open.allows(far, &none));
        assert!(!open.allows(local, &proxied), "relayed by a local proxy");
        let locked = Access::new("s3cret");
        assert!(locked.allows(far, &bearer));
        assert!(
            !locked.allows(local, &none),
            "a token, once set, is asked of everyone"
        );
        let mut wrong = HeaderMap::new();
        wrong.insert("authorization", "Bearer s3creT".parse().unwrap());
        assert!(!locked.allows(far, &wrong));
    }

    #[test]
    fn loops_count_apart_and_sum_together() {
        let m = NodeMetrics::default();
        let a = m.media_loop(0);
        let b = m.media_loop(1);
        a.forwarded_packets.inc_by(3);
        b.forwarded_packets.inc_by(4);
        a.nacks_resent.inc();
        assert_eq!(m.total(Which::ForwardedPackets), 7);
        assert_eq!(m.total(Which::NacksResent), 1);
        let mut r = Registry::default();
        m.register(&mut r);
        let text = render(&r);
        assert!(
            text.contains("sfu_forwarded_packets_total{media_loop=\"0\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("sfu_forwarded_packets_total{media_loop=\"1\"} 4"),
            "{text}"
        );
    }
}
