//! SDP text as the SFU reads and rewrites it (`sfu::sdp`): a browser's offer or answer
//! (which codecs each media section holds), and the SFU's own answers rewritten for 1:1
//! NAT.
//!
//! Whatever the text: no panic. `media_codecs` lists only payload types of the section's
//! `m=` line, none for a rejected section, each at most once. `announce` keeps the number
//! of lines, changes only candidate and connection lines, changes nothing when the
//! addresses are the same, and never changes which codecs the text holds.

use std::collections::HashSet;
use std::net::IpAddr;

use sfu::sdp::{announce, announce_candidate, media_codecs};

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `sfu/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let codecs = media_codecs(sdp);
    if let Ok(sections) = &codecs {
        let parsed = rtc::sdp::SessionDescription::unmarshal(&mut std::io::Cursor::new(sdp))
            .expect("media_codecs parsed it");
        assert_eq!(sections.len(), parsed.media_descriptions.len());
        for (s, m) in sections.iter().zip(&parsed.media_descriptions) {
            let listed: HashSet<u8> = m
                .media_name
                .formats
                .iter()
                .filter_map(|f| f.parse().ok())
                .collect();
            let mut seen = HashSet::new();
            for (pt, codec) in &s.codecs {
                assert!(listed.contains(pt), "{pt} is not on the m= line");
                assert!(seen.insert(*pt), "{pt} listed twice");
                assert_eq!(
                    codec.is_video(),
                    s.video,
                    "{codec:?} in a {} section",
                    m.media_name.media
                );
            }
            if m.media_name.port.value == 0 {
                assert!(s.codecs.is_empty(), "a rejected section lists codecs");
            }
        }
    }

    let private: IpAddr = "10.0.0.5".parse().expect("valid");
    let public: IpAddr = "203.0.113.9".parse().expect("valid");
    for (from, to) in [
        (private, public),
        (private, "2001:db8::9".parse().expect("valid")),
    ] {
        let out = announce(sdp, from, to);
        assert_eq!(
            out.split_inclusive('\n').count(),
            sdp.split_inclusive('\n').count()
        );
        for (a, b) in sdp.split_inclusive('\n').zip(out.split_inclusive('\n')) {
            if a != b {
                assert!(
                    a.starts_with("a=candidate:") || a.starts_with("c=IN IP"),
                    "{a:?} -> {b:?}"
                );
                assert_eq!(
                    a.ends_with("\r\n"),
                    b.ends_with("\r\n"),
                    "a line ending changed: {a:?} -> {b:?}"
                );
            }
        }
        // Which codecs the text holds is not the rewrite's business.
        if let Ok(sections) = &codecs {
            let again = media_codecs(&out).expect("an announced SDP still parses");
            let pts = |s: &[sfu::sdp::SectionCodecs]| -> Vec<Vec<(u8, sfu::codec::Codec)>> {
                s.iter().map(|x| x.codecs.clone()).collect()
            };
            assert_eq!(pts(&again), pts(sections));
        }
    }
    // Announcing to the same address changes nothing.
    assert_eq!(announce(sdp, private, private), sdp);
    // One trickled candidate, as the engine announces its own: only its fifth field
    // (once its line ending is set aside) may change.
    if let Some(line) = sdp.lines().next() {
        let out = announce_candidate(line, "10.0.0.5", "203.0.113.9");
        let body = line.trim_end_matches(['\r', '\n']);
        assert_eq!(out.split(' ').count(), line.split(' ').count());
        if body.split(' ').nth(4) != Some("10.0.0.5") {
            assert_eq!(out, line);
        }
    }
}
