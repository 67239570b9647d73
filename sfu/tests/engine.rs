//! Three `webrtc`-crate peers in one consultation through the engine, on 127.0.0.1: each
//! publishes synthetic VP8 and Opus and must receive the other two's RTP; a publisher
//! must get a keyframe request (PLI) when a subscriber joins.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::media_stream::MediaStreamTrack;
use rtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use rtc::rtp;
use rtc::rtp_transceiver::rtp_sender::{
    RTCRtpCodec, RTCRtpCodingParameters, RTCRtpEncodingParameters, RtpCodecKind,
};
use rtc::rtp_transceiver::{RTCRtpTransceiverDirection, RTCRtpTransceiverInit};
use sfu::engine::{Engine, EngineConfig, EngineEvent, peer_connection};
use tokio::sync::{Notify, mpsc};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::media_stream::track_local::{TrackLocal, TrackLocalEvent};
use webrtc::media_stream::track_remote::{TrackRemote, TrackRemoteEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Packets received per (publisher stream id, kind).
type Received = Arc<Mutex<HashMap<(String, RtpCodecKind), u64>>>;

struct ClientHandler {
    gathered: Arc<Notify>,
    received: Option<Received>,
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for ClientHandler {
    async fn on_ice_gathering_state_change(&self, s: RTCIceGatheringState) {
        if s == RTCIceGatheringState::Complete {
            self.gathered.notify_waiters();
        }
    }
    async fn on_track(&self, track: Arc<dyn TrackRemote>) {
        let Some(received) = self.received.clone() else {
            return;
        };
        tokio::spawn(async move {
            let stream = track.stream_id().await.to_string();
            let kind = track.kind().await;
            while let Some(ev) = track.poll().await {
                if let TrackRemoteEvent::OnRtpPacket(_) = ev {
                    *received
                        .lock()
                        .unwrap()
                        .entry((stream.clone(), kind))
                        .or_default() += 1;
                }
            }
        });
    }
}

fn codec(mime: &str, rate: u32, channels: u16, fmtp: &str) -> RTCRtpCodec {
    RTCRtpCodec {
        mime_type: mime.into(),
        clock_rate: rate,
        channels,
        sdp_fmtp_line: fmtp.into(),
        rtcp_feedback: vec![],
    }
}

fn local(kind: RtpCodecKind, ssrc: u32, codec: RTCRtpCodec) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(MediaStreamTrack::new(
        format!("client-{ssrc}"),
        format!("{kind}-{ssrc}"),
        format!("{kind}-{ssrc}"),
        kind,
        vec![RTCRtpEncodingParameters {
            rtp_coding_parameters: RTCRtpCodingParameters {
                ssrc: Some(ssrc),
                ..Default::default()
            },
            codec,
            ..Default::default()
        }],
    )))
}

async fn local_sdp(pc: &Arc<dyn PeerConnection>, gathered: &Notify) -> String {
    let wait = gathered.notified();
    let _ = tokio::time::timeout(Duration::from_secs(2), wait).await;
    pc.local_description().await.unwrap().sdp
}

struct Client {
    key: u128,
    plis: Arc<AtomicU32>,
    received: Received,
    pcs: Vec<Arc<dyn PeerConnection>>,
}

static SSRC: AtomicU32 = AtomicU32::new(0x1000);

/// Joins the engine's room and starts publishing synthetic media: Opus every 20 ms, a VP8
/// packet every 33 ms, a keyframe when asked (PLI) and every 3 s.
async fn client(engine: &Arc<Engine>, room: u128, key: u128) -> Client {
    let (events_tx, mut events) = mpsc::unbounded_channel();
    engine.join(room, key, events_tx).await.unwrap();
    let received: Received = Arc::default();

    // The subscriber side answers every offer the engine makes.
    let sub_gathered = Arc::new(Notify::new());
    let subscriber = peer_connection(
        LOOPBACK,
        Arc::new(ClientHandler {
            gathered: sub_gathered.clone(),
            received: Some(received.clone()),
        }),
    )
    .await
    .unwrap();
    let (e, s) = (engine.clone(), subscriber.clone());
    tokio::spawn(async move {
        while let Some(ev) = events.recv().await {
            if let EngineEvent::SubscriberOffer { participant, sdp } = ev {
                s.set_remote_description(RTCSessionDescription::offer(sdp).unwrap())
                    .await
                    .unwrap();
                let answer = s.create_answer(None).await.unwrap();
                s.set_local_description(answer).await.unwrap();
                let sdp = local_sdp(&s, &sub_gathered).await;
                e.subscriber_answer(participant, sdp).await.unwrap();
            }
        }
    });

    // The publisher side offers audio and video.
    let pub_gathered = Arc::new(Notify::new());
    let publisher = peer_connection(
        LOOPBACK,
        Arc::new(ClientHandler {
            gathered: pub_gathered.clone(),
            received: None,
        }),
    )
    .await
    .unwrap();
    let (vssrc, assrc) = (
        SSRC.fetch_add(1, Ordering::Relaxed),
        SSRC.fetch_add(1, Ordering::Relaxed),
    );
    let video = local(
        RtpCodecKind::Video,
        vssrc,
        codec("video/VP8", 90_000, 0, ""),
    );
    let audio = local(
        RtpCodecKind::Audio,
        assrc,
        codec("audio/opus", 48_000, 2, "minptime=10;useinbandfec=1"),
    );
    let mut senders = Vec::new();
    for t in [video.clone(), audio.clone()] {
        let init = RTCRtpTransceiverInit {
            direction: RTCRtpTransceiverDirection::Sendonly,
            streams: vec![],
            send_encodings: vec![],
        };
        let tr = publisher
            .add_transceiver_from_track(t as Arc<dyn TrackLocal>, Some(init))
            .await
            .unwrap();
        senders.push(tr.sender().await.unwrap().unwrap());
    }
    let offer = publisher.create_offer(None).await.unwrap();
    publisher.set_local_description(offer).await.unwrap();
    let sdp = local_sdp(&publisher, &pub_gathered).await;
    let answer = engine.publish(key, sdp).await.unwrap();
    publisher
        .set_remote_description(RTCSessionDescription::answer(answer).unwrap())
        .await
        .unwrap();
    let pt = |i: usize, mime: &'static str| {
        let s = senders[i].clone();
        async move {
            s.get_parameters()
                .await
                .unwrap()
                .rtp_parameters
                .codecs
                .iter()
                .find(|c| c.rtp_codec.mime_type.eq_ignore_ascii_case(mime))
                .unwrap()
                .payload_type
        }
    };
    let (vpt, apt) = (pt(0, "video/VP8").await, pt(1, "audio/opus").await);

    let plis = Arc::new(AtomicU32::new(0));
    let want_keyframe = Arc::new(AtomicBool::new(true));
    let (p, w, v) = (plis.clone(), want_keyframe.clone(), video.clone());
    tokio::spawn(async move {
        while let Some(ev) = v.poll().await {
            if let TrackLocalEvent::OnRtcpPacket(pkts) = ev
                && pkts
                    .iter()
                    .any(|r| r.as_any().is::<PictureLossIndication>())
            {
                p.fetch_add(1, Ordering::Relaxed);
                w.store(true, Ordering::Relaxed);
            }
        }
    });
    tokio::spawn(async move {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        let (mut vseq, mut aseq, mut frames) = (0u16, 0u16, 0u32);
        let mut last_key = Instant::now();
        loop {
            tick.tick().await;
            let ms = start.elapsed().as_millis() as u32;
            let packet = |pt, seq, ts, ssrc, payload: Vec<u8>| rtp::Packet {
                header: rtp::Header {
                    version: 2,
                    marker: true,
                    payload_type: pt,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            if ms / 20 > u32::from(aseq) {
                aseq = aseq.wrapping_add(1);
                if audio
                    .write_rtp(packet(apt, aseq, ms * 48, assrc, vec![0xFC; 40]))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if ms / 33 > frames {
                frames += 1;
                let key = want_keyframe.swap(false, Ordering::Relaxed)
                    || last_key.elapsed() > Duration::from_secs(3);
                if key {
                    last_key = Instant::now();
                }
                // VP8 payload descriptor: S=1, PID=0; then the frame header's P bit.
                let mut payload = vec![0x10, if key { 0x00 } else { 0x01 }];
                payload.resize(600, 0x55);
                vseq = vseq.wrapping_add(1);
                if video
                    .write_rtp(packet(vpt, vseq, ms * 90, vssrc, payload))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    });
    Client {
        key,
        plis,
        received,
        pcs: vec![publisher, subscriber],
    }
}

impl Client {
    /// The number of other publishers this client receives both audio and video from,
    /// at least `min` packets each.
    fn sources_received(&self, min: u64) -> usize {
        let r = self.received.lock().unwrap();
        let streams: std::collections::BTreeSet<&String> = r.keys().map(|(s, _)| s).collect();
        streams
            .into_iter()
            .filter(|s| {
                [RtpCodecKind::Audio, RtpCodecKind::Video]
                    .iter()
                    .all(|k| r.get(&((*s).clone(), *k)).copied().unwrap_or(0) >= min)
            })
            .count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_peers_each_receive_the_other_two_and_joins_ask_for_keyframes() {
    let engine = Engine::new(EngineConfig { bind_ip: LOOPBACK });
    let room = 42;
    let first = client(&engine, room, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let plis_alone = first.plis.load(Ordering::Relaxed);

    let second = client(&engine, room, 2).await;
    let third = client(&engine, room, 3).await;
    let clients = [&first, &second, &third];
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let counts: Vec<usize> = clients.iter().map(|c| c.sources_received(20)).collect();
        if counts.iter().all(|n| *n == 2) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after 20 s, sources received by each: {counts:?}; {:?}",
            clients
                .iter()
                .map(|c| c.received.lock().unwrap().clone())
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        first.plis.load(Ordering::Relaxed) > plis_alone,
        "the first publisher got no keyframe request when others subscribed ({plis_alone} before)"
    );
    assert_eq!(engine.participant_count(), 3);

    // One leaves: the others stop receiving it and keep receiving each other.
    engine.leave(third.key).await.unwrap();
    for pc in &third.pcs {
        pc.close().await.unwrap();
    }
    assert_eq!(engine.participant_count(), 2);
    tokio::time::sleep(Duration::from_millis(300)).await; // packets in flight arrive
    let before: Vec<_> = [&first, &second]
        .iter()
        .map(|c| c.received.lock().unwrap().clone())
        .collect();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    for (c, before) in [&first, &second].iter().zip(before) {
        let now = c.received.lock().unwrap().clone();
        let mut growing: Vec<_> = now
            .iter()
            .filter(|(k, n)| **n > before.get(*k).copied().unwrap_or(0))
            .map(|(k, _)| k.0.clone())
            .collect();
        growing.sort();
        growing.dedup();
        assert_eq!(
            growing.len(),
            1,
            "after the third left, exactly one publisher's media keeps arriving: {before:?} -> {now:?}"
        );
    }
    for c in [first, second] {
        for pc in &c.pcs {
            pc.close().await.unwrap();
        }
        engine.leave(c.key).await.unwrap();
    }
    assert_eq!(engine.participant_count(), 0);
}
