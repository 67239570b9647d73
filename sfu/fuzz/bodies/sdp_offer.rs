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
//! it); an accepted offer's answer parses, its sections are the offer's, of their kind,
//! and give the payload types the SFU reads in the offer the codecs it reads (see
//! [`answer_keeps_to_offer`]); after `leave` the node holds no participant and no
//! connection.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

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

/// The answer's codecs in each section are of the section's kind, and a payload type the
/// SFU reads as a codec in the offer is answered as that codec. (When a renewed offer
/// garbles a section's `rtpmap`, the `rtc` core may answer with the codec and payload type
/// negotiated before, even one the renewed `m=` line no longer lists: found by this target
/// twice. The SFU forwards only payload types it reads in the offer, so nothing it does
/// depends on that; a browser would refuse such an answer.)
fn answer_keeps_to_offer(offer: &str, answer: &str) {
    let offered: HashMap<String, Vec<(u8, Codec)>> = media_codecs(offer)
        .expect("an applied offer parses")
        .into_iter()
        .map(|s| (s.mid, s.codecs))
        .collect();
    let answered = media_codecs(answer).expect("the SFU's answer parses");
    for s in answered {
        let Some(read) = offered.get(&s.mid) else {
            panic!("the answer has a section {:?} the offer had not", s.mid);
        };
        for (pt, c) in &s.codecs {
            assert_eq!(c.is_video(), s.video, "{c:?} in section {:?}", s.mid);
            if let Some((_, read)) = read.iter().find(|(p, _)| p == pt) {
                assert_eq!(read, c, "{pt} offered as {read:?}, answered as {c:?}");
            }
        }
    }
}

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `sfu/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
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
}
