//! A browser's publisher offer and trickled candidates, through the SFU engine's real
//! path (`Engine::join`, `add_candidate`, `publish`, `leave`): codec reading, the `rtc`
//! core's SDP parsing and answer, the codec choice, candidate parsing. The engine runs one
//! media loop on a loopback socket that no datagram reaches; everything else is what a
//! node does with a browser's SDP.
//!
//! Input: UTF-8 text, `OFFER` [`\n--\n` CANDIDATES [`\n--\n` RENEWED OFFER]]. Each line
//! of CANDIDATES is one trickled candidate for the publisher connection; a line starting
//! with `!` is sent before the offer (the engine keeps it until the offer is applied).
//!
//! Whatever the text: no panic (a panic in a media loop would stop every consultation on
//! it); an accepted offer's answer parses and uses, in each media section, only payload
//! types the browser offered there, as the codecs it offered (see
//! [`answer_keeps_to_offer`]); after `leave` the node holds no participant and no
//! connection.
#![no_main]

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

use libfuzzer_sys::fuzz_target;
use protocol::{IceCandidate, MediaLeg};
use sfu::codec::Codec;
use sfu::engine::{Engine, EngineConfig, live_objects};
use sfu::sdp::media_codecs;

struct Node {
    rt: tokio::runtime::Runtime,
    engine: Arc<Engine>,
}

static NODE: LazyLock<Node> = LazyLock::new(|| {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let config = EngineConfig::new("127.0.0.1".parse().expect("an address"));
    let engine = rt
        .block_on(async { Engine::with_loops(config, 1) })
        .expect("an engine on loopback");
    Node { rt, engine }
});

fn candidate(line: &str) -> IceCandidate {
    IceCandidate {
        candidate: line.to_owned(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }
}

/// The answer's codecs in each section use payload types the offer listed on that
/// section's `m=` line, and are of the section's kind; a payload type the SFU reads as a
/// codec in the offer is answered as that codec. (The `rtc` core may answer a payload
/// type whose `rtpmap` the offer garbled with the codec negotiated for it before, which
/// the SFU then does not read as a codec of the offer: packets in it are not forwarded.)
fn answer_keeps_to_offer(offer: &str, answer: &str) {
    let parsed = rtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(offer))
        .expect("an applied offer parses");
    let listed: HashMap<String, Vec<u8>> = parsed
        .media_descriptions
        .iter()
        .map(|m| {
            let mid = m.attribute("mid").flatten().unwrap_or_default().to_owned();
            let pts = m.media_name.formats.iter().filter_map(|f| f.parse().ok());
            (mid, pts.collect())
        })
        .collect();
    let offered: HashMap<String, Vec<(u8, Codec)>> = media_codecs(offer)
        .expect("an applied offer parses")
        .into_iter()
        .map(|s| (s.mid, s.codecs))
        .collect();
    let answered = media_codecs(answer).expect("the SFU's answer parses");
    for s in answered {
        let Some(pts) = listed.get(&s.mid) else {
            panic!("the answer has a section {:?} the offer had not", s.mid);
        };
        for (pt, c) in &s.codecs {
            assert!(
                pts.contains(pt),
                "answered {c:?} at {pt} in {:?}, not listed there",
                s.mid
            );
            assert_eq!(c.is_video(), s.video, "{c:?} in section {:?}", s.mid);
            let read = offered.get(&s.mid).into_iter().flatten();
            if let Some((_, read)) = read.clone().find(|(p, _)| p == pt) {
                assert_eq!(read, c, "{pt} offered as {read:?}, answered as {c:?}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut parts = text.splitn(3, "\n--\n");
    let offer = parts.next().unwrap_or_default().to_owned();
    let candidates: Vec<&str> = parts
        .next()
        .map(|c| c.lines().take(16).collect())
        .unwrap_or_default();
    let renewed = parts.next().map(str::to_owned);
    let node = &*NODE;
    node.rt.block_on(async {
        let (tx, _events) = tokio::sync::mpsc::unbounded_channel();
        node.engine
            .join(1, 1, tx)
            .await
            .expect("a participant joins");
        for line in candidates.iter().filter_map(|l| l.strip_prefix('!')) {
            let _ = node
                .engine
                .add_candidate(1, MediaLeg::Publisher, candidate(line))
                .await;
        }
        if let Ok(answer) = node.engine.publish(1, offer.clone()).await {
            answer_keeps_to_offer(&offer, &answer);
        }
        for line in candidates.iter().filter(|l| !l.starts_with('!')) {
            let _ = node
                .engine
                .add_candidate(1, MediaLeg::Publisher, candidate(line))
                .await;
        }
        if let Some(again) = renewed {
            if let Ok(answer) = node.engine.publish(1, again.clone()).await {
                answer_keeps_to_offer(&again, &answer);
            }
        }
        node.engine.leave(1).await.expect("the participant leaves");
    });
    assert_eq!(node.engine.participant_count(), 0);
    assert_eq!(
        live_objects(),
        (0, 0),
        "a participant's connections outlived it"
    );
});
