//! Abuse limits that key on who is asking: the client's address (taken from
//! `X-Forwarded-For` only when the connection comes from a configured trusted proxy), one
//! rate limiter per kind of request so that a password guesser cannot lock patients out of
//! entering, and the pruning that keeps the limiters' tables from growing without bound.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;

use axum::http::HeaderMap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

/// The address a request comes from: the peer, or, when the peer is a trusted proxy, the
/// right-most address of `X-Forwarded-For` that is not itself a trusted proxy (what a
/// client writes further left is not to be believed).
pub fn client_ip(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    let peer = peer.ip();
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect::<Vec<_>>();
    hops.reverse();
    for hop in hops {
        match hop.parse::<IpAddr>() {
            Ok(ip) if is_trusted(&ip) => continue,
            Ok(ip) => return ip,
            // A malformed entry: nothing to its left can be believed either.
            Err(_) => return peer,
        }
    }
    peer
}

type Keyed<C> =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// One limiter per kind of request, per client address.
#[derive(Debug)]
pub struct AddressLimiters<C: Clock + Clone = DefaultClock> {
    pub sign_in: Keyed<C>,
    pub entry: Keyed<C>,
    pub media_check: Keyed<C>,
}

/// Requests per minute of each kind, per address.
#[derive(Debug, Clone, Copy)]
pub struct PerMinute {
    pub sign_in: u32,
    pub entry: u32,
    pub media_check: u32,
}

fn per_minute(n: u32) -> Quota {
    Quota::per_minute(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN))
}

impl AddressLimiters<DefaultClock> {
    pub fn new(limits: PerMinute) -> Self {
        Self::with_clock(limits, &DefaultClock::default())
    }
}

impl<C: Clock + Clone> AddressLimiters<C> {
    pub fn with_clock(limits: PerMinute, clock: &C) -> Self {
        let keyed = |n| {
            RateLimiter::new(
                per_minute(n),
                DefaultKeyedStateStore::default(),
                C::clone(clock),
            )
        };
        Self {
            sign_in: keyed(limits.sign_in),
            entry: keyed(limits.entry),
            media_check: keyed(limits.media_check),
        }
    }

    /// Forgets every address whose limit has fully recovered (it would be allowed as if
    /// new), so the tables hold only recent clients.
    pub fn prune(&self) {
        for l in [&self.sign_in, &self.entry, &self.media_check] {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// How many addresses the tables hold.
    pub fn len(&self) -> usize {
        self.sign_in.len() + self.entry.len() + self.media_check.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;
    use governor::clock::FakeRelativeClock;
    use std::time::Duration;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn forwarded_addresses_count_only_behind_a_trusted_proxy() {
        let proxy: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/24".parse().unwrap()];
        let h = headers(&["198.51.100.7"]);
        // A direct client cannot choose its address.
        let direct: SocketAddr = "203.0.113.5:4000".parse().unwrap();
        assert_eq!(client_ip(direct, &h, &trusted), direct.ip());
        // Nothing trusted: the header is ignored even from the proxy.
        assert_eq!(client_ip(proxy, &h, &[]), proxy.ip());
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        // What the client wrote to the left of the proxies' own entries is not believed.
        let spoofed = headers(&["1.2.3.4, 198.51.100.7", "10.0.0.3"]);
        assert_eq!(
            client_ip(proxy, &spoofed, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &headers(&["junk"]), &trusted), proxy.ip());
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy.ip());
    }

    #[test]
    fn each_kind_of_request_has_its_own_limit() {
        let l = AddressLimiters::new(PerMinute {
            sign_in: 2,
            entry: 2,
            media_check: 2,
        });
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert!(l.sign_in.check_key(&ip).is_ok());
        assert!(l.sign_in.check_key(&ip).is_ok());
        assert!(l.sign_in.check_key(&ip).is_err());
        // A password guesser has not used up anyone's entries or media checks.
        assert!(l.entry.check_key(&ip).is_ok());
        assert!(l.media_check.check_key(&ip).is_ok());
    }

    #[test]
    fn tables_forget_addresses_whose_limit_has_recovered() {
        let clock = FakeRelativeClock::default();
        let l = AddressLimiters::with_clock(
            PerMinute {
                sign_in: 10,
                entry: 10,
                media_check: 10,
            },
            &clock,
        );
        for i in 0..1000u32 {
            let ip = IpAddr::from(i.to_be_bytes());
            let _ = l.entry.check_key(&ip);
        }
        assert_eq!(l.len(), 1000);
        l.prune();
        assert_eq!(l.len(), 1000, "recent addresses are kept");
        clock.advance(Duration::from_secs(61));
        let recent: IpAddr = "192.0.2.9".parse().unwrap();
        let _ = l.sign_in.check_key(&recent);
        l.prune();
        assert_eq!(
            l.len(),
            1,
            "only the address seen in the last minute is left"
        );
    }
}
