//! Three `webrtc`-crate peers in one consultation through the engine, on 127.0.0.1: each
//! publishes synthetic VP8 and Opus and must receive the other two's RTP; a publisher
//! must get a keyframe request (PLI) when a subscriber joins; one leaving stops its media.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sfu::engine::{Engine, EngineConfig};
use sfu::metrics::Which;
use sfu_synthetic::{Participant, Publish};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MEDIA: Publish = Publish {
    video_kbps: 300,
    audio: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_each_receive_the_other_two_and_joins_ask_for_keyframes() {
    let engine = Engine::new(EngineConfig::new(LOOPBACK)).unwrap();
    let room = 42;
    let first = Participant::join(&engine, LOOPBACK, room, 1, Some(MEDIA))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plis_alone = first.stats.plis.load(Ordering::Relaxed);

    let second = Participant::join(&engine, LOOPBACK, room, 2, Some(MEDIA))
        .await
        .unwrap();
    let third = Participant::join(&engine, LOOPBACK, room, 3, Some(MEDIA))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<usize> = [&first, &second, &third]
            .iter()
            .map(|p| p.stats.sources_with_both(20))
            .collect();
        if counts.iter().all(|n| *n == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s, sources received by each: {counts:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        first.stats.plis.load(Ordering::Relaxed) > plis_alone,
        "the first publisher got no keyframe request when others subscribed ({plis_alone} before)"
    );
    assert_eq!(engine.participant_count(), 3);

    // A subscriber's NACK is answered from the SFU's cache, not passed to the publisher.
    let asked = second.nack_recent_video(5).await;
    assert_eq!(asked, 5);
    let deadline = Instant::now() + Duration::from_secs(5);
    while engine.metrics().total(Which::NacksResent) < 5 {
        assert!(
            Instant::now() < deadline,
            "NACKed packets were not resent: {} of 5",
            engine.metrics().total(Which::NacksResent)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        engine.metrics().total(Which::NacksUpstream),
        0,
        "everything asked for was in the cache"
    );

    // One leaves: the others stop receiving it and keep receiving each other.
    third.leave(&engine).await;
    assert_eq!(engine.participant_count(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await; // packets in flight arrive
    let before: Vec<_> = [&first, &second]
        .iter()
        .map(|p| p.stats.received())
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (p, before) in [&first, &second].iter().zip(before) {
        let now = p.stats.received();
        let mut growing: Vec<&String> = now
            .iter()
            .filter(|(k, n)| **n > before.get(*k).copied().unwrap_or(0))
            .map(|(k, _)| &k.0)
            .collect();
        growing.sort();
        growing.dedup();
        assert_eq!(
            growing.len(),
            1,
            "after the third left, one publisher's media keeps arriving: {before:?} -> {now:?}"
        );
    }
    first.leave(&engine).await;
    second.leave(&engine).await;
    assert_eq!(engine.participant_count(), 0);
}

/// The engine's API as a synthetic participant's signal path, keeping every SDP the SFU
/// sent, so that tests can read its candidates.
struct Recorded {
    engine: std::sync::Arc<Engine>,
    key: u128,
    sdps: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

#[async_trait::async_trait]
impl sfu_synthetic::Signal for Recorded {
    async fn publish(&self, offer: String) -> Result<String, sfu::engine::EngineError> {
        let answer = self.engine.publish(self.key, offer).await?;
        self.sdps.lock().unwrap().push(answer.clone());
        Ok(answer)
    }
    async fn subscriber_answer(&self, answer: String) -> Result<(), sfu::engine::EngineError> {
        self.engine.subscriber_answer(self.key, answer).await
    }
}

/// Joins through [`Recorded`]; returns the participant and the SDPs the SFU sent it.
async fn join_recorded(
    engine: &std::sync::Arc<Engine>,
    room: u128,
    key: u128,
) -> Result<(Participant, std::sync::Arc<std::sync::Mutex<Vec<String>>>), sfu::engine::EngineError>
{
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    engine.join(room, key, events_tx).await?;
    let sdps = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (offers_tx, offers) = tokio::sync::mpsc::unbounded_channel();
    let seen = sdps.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let sfu::engine::EngineEvent::SubscriberOffer { sdp, .. } = ev {
                seen.lock().unwrap().push(sdp.clone());
                let _ = offers_tx.send(sdp);
            }
        }
    });
    let signal = std::sync::Arc::new(Recorded {
        engine: engine.clone(),
        key,
        sdps: sdps.clone(),
    });
    let p = Participant::connect(signal, offers, LOOPBACK, key, Some(MEDIA)).await?;
    Ok((p, sdps))
}

/// (transport, address, port, rest) of every candidate line in `sdp`.
fn candidates(sdp: &str) -> Vec<(String, String, u16, String)> {
    sdp.lines()
        .filter_map(|l| l.strip_prefix("a=candidate:"))
        .map(|c| {
            let f: Vec<&str> = c.split(' ').collect();
            (
                f[2].to_lowercase(),
                f[4].to_owned(),
                f[5].parse().unwrap(),
                f[6..].join(" "),
            )
        })
        .collect()
}

/// A free block of `n` consecutive ports on 127.0.0.1 (UDP and TCP), to confine media to.
fn free_range(n: u16) -> (u16, u16) {
    for first in (40_000u16..60_000).step_by(97) {
        let all_free = (first..first + n).all(|p| {
            std::net::UdpSocket::bind((LOOPBACK, p)).is_ok()
                && std::net::TcpListener::bind((LOOPBACK, p)).is_ok()
        });
        if all_free {
            return (first, first + n - 1);
        }
    }
    panic!("no free port range");
}

/// Two participants exchange media through an engine confined to `ports`; returns the
/// candidates the SFU sent them.
async fn media_through(engine: &Arc<Engine>, room: u128) -> Vec<(String, String, u16, String)> {
    let (a, sdps_a) = join_recorded(engine, room, 1).await.unwrap();
    let (b, sdps_b) = join_recorded(engine, room, 2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while a.stats.sources_with_both(10) < 1 || b.stats.sources_with_both(10) < 1 {
        assert!(Instant::now() < deadline, "no media with a port range");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    a.leave(engine).await;
    b.leave(engine).await;
    [sdps_a, sdps_b]
        .iter()
        .flat_map(|s| s.lock().unwrap().clone())
        .flat_map(|s| candidates(&s))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_stays_in_its_port_range_with_ice_tcp_offered() {
    let (first, last) = free_range(8);
    let engine = Engine::with_loops(
        EngineConfig {
            ports: Some((first, last)),
            ice_tcp: true,
            ..EngineConfig::new(LOOPBACK)
        },
        2,
    )
    .unwrap();
    let all = media_through(&engine, 7).await;
    assert!(!all.is_empty());
    for (transport, addr, port, _) in &all {
        assert_eq!(addr, "127.0.0.1");
        assert!(
            (first..=last).contains(port) || (transport == "tcp" && *port == 9),
            "{transport} candidate on port {port}, outside {first}-{last}"
        );
    }
    assert!(
        all.iter().any(|(t, _, port, rest)| t == "tcp"
            && rest.contains("tcptype passive")
            && (first..=last).contains(port)),
        "no passive ICE-TCP candidate in {all:?}"
    );
    // One room lives on one loop, whose connections all share its one port.
    let udp: std::collections::HashSet<u16> = all
        .iter()
        .filter(|(t, ..)| t == "udp")
        .map(|(_, _, port, _)| *port)
        .collect();
    assert_eq!(udp.len(), 1, "{all:?}");

    // A range of one port is enough for a whole node (one loop); a range with no free
    // port is refused, with a reason, when the engine starts.
    let (first, _) = free_range(1);
    let single = EngineConfig {
        ports: Some((first, first)),
        ..EngineConfig::new(LOOPBACK)
    };
    let one = Engine::with_loops(single.clone(), 4).unwrap();
    assert_eq!(one.media_addrs().len(), 1);
    assert!(
        media_through(&one, 8)
            .await
            .iter()
            .all(|(_, _, port, _)| *port == first)
    );
    let refused = Engine::new(single).unwrap_err();
    assert!(
        matches!(refused, sfu::engine::EngineError::NoFreePort),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidates_carry_the_announced_address() {
    let public: IpAddr = "127.0.0.2".parse().unwrap();
    let engine = Engine::new(EngineConfig {
        announced_ip: Some(public),
        ..EngineConfig::new(LOOPBACK)
    })
    .unwrap();
    // Nothing listens on 127.0.0.2 (no NAT here, and nothing leaves loopback): only what
    // the SFU says is checked.
    let (p, sdps) = join_recorded(&engine, 9, 1).await.unwrap();
    let answer = sdps.lock().unwrap()[0].clone();
    let found = candidates(&answer);
    assert!(!found.is_empty());
    assert!(
        found.iter().all(|(_, addr, _, _)| addr == "127.0.0.2"),
        "{found:?}"
    );
    p.leave(&engine).await;
}

/// A participant whose ICE agent checks only every 25 s (as libnice does) while media
/// flows stays connected on the SFU's side: a track published between two of its checks
/// reaches it at once, and nothing fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_that_checks_rarely_stays_connected_while_media_flows() {
    let engine = Engine::new(EngineConfig::new(LOOPBACK)).unwrap();
    let room = 77;
    let rare = sfu_synthetic::ClientIce {
        keepalive: Some(Duration::from_secs(25)),
    };
    let clinician = Participant::join(&engine, LOOPBACK, room, 1, Some(MEDIA))
        .await
        .unwrap();
    // The rare checker: watch the engine's events for it while passing its offers on.
    let (events_tx, mut events) = tokio::sync::mpsc::unbounded_channel();
    let (forward_tx, forward) = tokio::sync::mpsc::unbounded_channel();
    engine.join(room, 2, events_tx).await.unwrap();
    let failed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let saw_failure = failed.clone();
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            match ev {
                sfu::engine::EngineEvent::SubscriberOffer { sdp, .. } => {
                    let _ = forward_tx.send(sdp);
                }
                sfu::engine::EngineEvent::Connection {
                    connected: false, ..
                } => saw_failure.store(true, Ordering::Relaxed),
                _ => {}
            }
        }
    });
    let signal = Arc::new(Recorded {
        engine: engine.clone(),
        key: 2,
        sdps: Default::default(),
    });
    let patient = Participant::connect_with(signal, forward, LOOPBACK, 2, Some(MEDIA), rare)
        .await
        .unwrap();
    let until_both = |who: &'static str, p: &Participant, sources: usize, secs: u64| {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let stats = p.stats.clone();
        async move {
            while stats.sources_with_both(20) < sources {
                assert!(
                    Instant::now() < deadline,
                    "{who} received only {:?}",
                    stats.received()
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    until_both("the rare checker", &patient, 1, 10).await;
    // More than the 5 s after which a STUN-only liveness gives up on it, well before its
    // next check: someone new publishes, and it must receive them at once.
    tokio::time::sleep(Duration::from_secs(8)).await;
    let interpreter = Participant::join(&engine, LOOPBACK, room, 3, Some(MEDIA))
        .await
        .unwrap();
    until_both("the rare checker", &patient, 2, 5).await;
    until_both("the newcomer", &interpreter, 2, 5).await;
    assert!(
        !failed.load(Ordering::Relaxed),
        "its connection was given up"
    );
    for p in [clinician, patient, interpreter] {
        p.leave(&engine).await;
    }
}

/// Issue 14: a browser whose path was lost asks for an ICE restart. The SFU offers its
/// subscriber connection again with new ICE credentials; the browser's side restarts on
/// its answer, the SFU's ICE session starts again (the old one is gone), and media keeps
/// arriving over the restarted connection. A participant the SFU does not know is refused.
#[tokio::test]
async fn an_ice_restart_gives_the_subscriber_connection_new_credentials_and_media_goes_on() {
    let engine = Engine::new(EngineConfig::new(LOOPBACK)).unwrap();
    let room = 79;
    let clinician = Participant::join(&engine, LOOPBACK, room, 1, Some(MEDIA))
        .await
        .unwrap();
    let (patient, sdps) = join_recorded(&engine, room, 2).await.unwrap();
    let total = |p: &Participant| p.stats.received().values().sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(10);
    while patient.stats.sources_with_both(20) < 1 {
        assert!(Instant::now() < deadline, "no media before the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The SFU's subscriber offers (its publish answers are recorded too: setup passive).
    let offer_ufrags = || -> Vec<String> {
        sdps.lock()
            .unwrap()
            .iter()
            .filter(|s| s.contains("a=setup:actpass"))
            .filter_map(|s| sfu::sdp::ice_ufrag(s).map(str::to_owned))
            .collect()
    };
    let before = offer_ufrags();
    let first = before.last().cloned().expect("a subscriber offer");
    assert!(
        before.iter().all(|u| *u == first),
        "one ufrag before any restart"
    );

    engine.restart_ice(2).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    let restarted = loop {
        if let Some(u) = offer_ufrags().last().filter(|u| **u != first) {
            break u.clone();
        }
        assert!(Instant::now() < deadline, "no offer with new credentials");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_ne!(restarted, first);
    // Media over the restarted session: keeps arriving well after the restart.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after_restart = total(&patient);
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        total(&patient) > after_restart + 50,
        "media stopped after the ICE restart: {} then {}",
        after_restart,
        total(&patient)
    );

    assert!(matches!(
        engine.restart_ice(99).await,
        Err(sfu::engine::EngineError::UnknownParticipant)
    ));
    for p in [clinician, patient] {
        p.leave(&engine).await;
    }
}
