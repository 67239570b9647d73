//! Every REST body the server parses, and the headers it reads: the first byte picks
//! which, the rest is the body.
//!
//! Whatever the bytes: no panic; what parses round-trips; names and details typed by
//! patients and staff are cleaned as `text::clean` promises (see `common/text.rs`); the
//! client address read from `X-Forwarded-For` is the peer itself unless the peer is a
//! trusted proxy, and otherwise one of the addresses the header names that is not a
//! trusted proxy (or the peer).

use std::net::{IpAddr, SocketAddr};

use axum::http::{HeaderMap, HeaderValue};
use protocol::{
    Command, CreateClinic, CreateStaff, EnterRequest, IssueInvite, MediaCheckOffer, SignInRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;
use signalling::server::limits::client_ip;

// `common/text.rs`, a module of the crate that includes this body (the fuzz target, or
// the corpus replay, which includes it once for all the bodies that use it).
use crate::text;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(
    body: &[u8],
) -> Option<T> {
    let v = serde_json::from_slice::<T>(body).ok()?;
    let again = serde_json::to_vec(&v).expect("a parsed body serialises");
    let back: T = serde_json::from_slice(&again).expect("and parses back");
    assert_eq!(back, v);
    Some(v)
}

/// `X-Forwarded-For` lines (one header per line) from a peer that is, or is not, the
/// trusted proxy.
fn forwarded(body: &[u8]) {
    let trusted: Vec<ipnet::IpNet> = vec![
        "10.0.0.0/8".parse().expect("valid"),
        "fd00::/8".parse().expect("valid"),
    ];
    let mut headers = HeaderMap::new();
    let mut named: Vec<IpAddr> = Vec::new();
    for line in body.split(|b| *b == b'\n').take(8) {
        let Ok(v) = HeaderValue::from_bytes(line) else {
            continue;
        };
        if let Ok(s) = v.to_str() {
            named.extend(s.split(',').filter_map(|x| x.trim().parse::<IpAddr>().ok()));
        }
        headers.append("x-forwarded-for", v);
    }
    for peer in ["10.1.2.3:5000", "192.0.2.1:5000", "[fd00::1]:443"] {
        let peer: SocketAddr = peer.parse().expect("valid");
        let ip = client_ip(peer, &headers, &trusted);
        let is_trusted = |a: &IpAddr| trusted.iter().any(|n| n.contains(a));
        if !is_trusted(&peer.ip()) {
            assert_eq!(ip, peer.ip(), "an untrusted peer's header was believed");
        } else if ip != peer.ip() {
            assert!(named.contains(&ip), "{ip} is named nowhere");
            assert!(!is_trusted(&ip), "a trusted proxy taken for the client");
        }
    }
}

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `signalling/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    match kind % 8 {
        0 => {
            round_trip::<SignInRequest>(body);
        }
        1 => {
            if let Some(e) = round_trip::<EnterRequest>(body) {
                text::check(&e.name, false);
                if let Some(d) = &e.details {
                    text::check(d, true);
                }
            }
        }
        2 => {
            if let Some(Command::SendMessage { text: t, .. }) = round_trip::<Command>(body) {
                text::check(&t, true);
            }
        }
        3 => {
            if let Some(c) = round_trip::<CreateClinic>(body) {
                text::check(&c.name, false);
            }
        }
        4 => {
            if let Some(s) = round_trip::<CreateStaff>(body) {
                text::check(&s.display_name, false);
            }
        }
        5 => {
            round_trip::<IssueInvite>(body);
        }
        6 => {
            round_trip::<MediaCheckOffer>(body);
        }
        _ => forwarded(body),
    }
}
