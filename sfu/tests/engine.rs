//! Three `webrtc`-crate peers in one consultation through the engine, on 127.0.0.1: each
//! publishes synthetic VP8 and Opus and must receive the other two's RTP; a publisher
//! must get a keyframe request (PLI) when a subscriber joins; one leaving stops its media.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sfu::engine::synthetic::{Participant, Publish};
use sfu::engine::{Engine, EngineConfig};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const MEDIA: Publish = Publish {
    video_kbps: 300,
    audio: true,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_each_receive_the_other_two_and_joins_ask_for_keyframes() {
    let engine = Engine::new(EngineConfig::new(LOOPBACK));
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
    while engine.nacks().resent.load(Ordering::Relaxed) < 5 {
        assert!(
            Instant::now() < deadline,
            "NACKed packets were not resent: {:?}",
            engine.nacks()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        engine.nacks().upstream.load(Ordering::Relaxed),
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
