//! Whether a connection is alive, judged by what the SFU hears from the browser.
//!
//! The `rtc` core's ICE agent counts only STUN checks as signs of life (its non-STUN
//! traffic bypasses the agent), and as an ICE-lite agent the SFU sends no checks of its
//! own: a browser whose agent checks rarely (libnice checks every 25 s) would see its
//! legs flip to disconnected 5 s after each check, and new tracks would not be routed to
//! it in between. So the core's ICE timeouts are switched off on the SFU's connections and
//! this takes their place: any input the core authenticated (a STUN check with the right
//! credentials, DTLS records, SRTP or SRTCP that decrypt) counts.
//!
//! Sans-IO: time is passed in; the media loop feeds it and checks it on its tick.

use std::time::{Duration, Instant};

/// Silence after which a connection counts as disconnected (the browsers' and the
/// crate's default).
pub const SILENT_AFTER: Duration = Duration::from_secs(5);
/// Silence after which a connection has failed (disconnected plus the crate's 25 s), and
/// how long one may take to connect at all.
pub const FAILED_AFTER: Duration = Duration::from_secs(30);

/// What changed at a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing heard for [`SILENT_AFTER`].
    Silent,
    /// Heard again after being silent.
    Heard,
    /// Nothing heard for [`FAILED_AFTER`], or never connected in that time. Reported once.
    Failed,
}

#[derive(Debug, Clone, Default)]
pub struct Liveness {
    /// Since when it should be connecting: it has media to carry and both descriptions.
    expected: Option<Instant>,
    /// The last authenticated input, once connected.
    heard: Option<Instant>,
    silent: bool,
    failed: bool,
}

impl Liveness {
    /// From `now` it has media to carry and should connect (a subscriber connection with
    /// no track yet has nothing to connect over). Only the first call counts.
    pub fn expect(&mut self, now: Instant) {
        self.expected.get_or_insert(now);
    }

    /// The connection reached the connected state.
    pub fn connected(&mut self, now: Instant) {
        self.heard = Some(now);
    }

    /// The core accepted an input of the connection (authenticated). Before it connected,
    /// inputs say nothing yet: only connecting counts.
    pub fn heard(&mut self, now: Instant) -> Option<Change> {
        if self.heard.is_none() || self.failed {
            return None;
        }
        self.heard = Some(now);
        if self.silent {
            self.silent = false;
            return Some(Change::Heard);
        }
        None
    }

    /// What changed by `now`.
    pub fn check(&mut self, now: Instant) -> Option<Change> {
        if self.failed {
            return None;
        }
        let since = self.heard.or(self.expected)?;
        let quiet = now.saturating_duration_since(since);
        if quiet > FAILED_AFTER {
            self.failed = true;
            return Some(Change::Failed);
        }
        if self.heard.is_some() && quiet > SILENT_AFTER && !self.silent {
            self.silent = true;
            return Some(Change::Silent);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    /// An agent that checks every 25 s while media flows every 20 ms stays alive.
    #[test]
    fn media_between_rare_checks_keeps_a_connection_alive() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.expect(t0);
        l.connected(at(t0, 100));
        let mut changes = Vec::new();
        for ms in (120..60_000).step_by(20) {
            // The check at 25 s and 50 s, SRTP in between: all of it counts.
            assert_eq!(l.heard(at(t0, ms)), None);
            if ms % 250 == 0 {
                changes.extend(l.check(at(t0, ms)));
            }
        }
        assert!(changes.is_empty(), "{changes:?}");
    }

    #[test]
    fn silence_is_reported_then_failure_once() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        l.connected(t0);
        assert_eq!(l.check(at(t0, 5_000)), None, "not more than 5 s yet");
        assert_eq!(l.check(at(t0, 5_001)), Some(Change::Silent));
        assert_eq!(l.check(at(t0, 6_000)), None, "said once");
        assert_eq!(l.heard(at(t0, 7_000)), Some(Change::Heard));
        assert_eq!(l.check(at(t0, 12_001)), Some(Change::Silent));
        assert_eq!(l.check(at(t0, 37_001)), Some(Change::Failed));
        assert_eq!(l.check(at(t0, 90_000)), None, "failed is said once");
        assert_eq!(l.heard(at(t0, 90_001)), None, "and is final");
    }

    #[test]
    fn a_connection_that_never_connects_fails_after_the_limit() {
        let t0 = Instant::now();
        let mut l = Liveness::default();
        assert_eq!(
            l.check(at(t0, 60_000)),
            None,
            "nothing to connect over yet (a subscriber alone in a call)"
        );
        l.expect(at(t0, 60_000));
        l.expect(at(t0, 70_000)); // only the first counts
        // Inputs before connecting say nothing (not yet authenticated as a path).
        assert_eq!(l.heard(at(t0, 61_000)), None);
        assert_eq!(l.check(at(t0, 70_000)), None, "connecting is not silence");
        assert_eq!(l.check(at(t0, 90_001)), Some(Change::Failed));
    }
}
