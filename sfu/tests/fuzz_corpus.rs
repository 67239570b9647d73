//! The SFU's fuzz targets (`sfu/fuzz`) on their committed inputs, on stable: each target's
//! body (`sfu/fuzz/bodies/`, the same code the cargo-fuzz target runs) on every file of its
//! corpus (`sfu/fuzz/corpus/<target>/`) and on the inputs kept from its findings
//! (`sfu/fuzz/found/<target>-*`). A failure names the input. The test command replays,
//! it does not fuzz: fuzzing proper, which searches for new inputs, is `scripts/fuzz`
//! (nightly), run by `load-tests/measure-all` and by hand.

#[path = "../fuzz/replay.rs"]
mod replay;

#[path = "../fuzz/bodies/codec_keyframe.rs"]
mod codec_keyframe;
#[path = "../fuzz/bodies/forward_rtp_rtcp.rs"]
mod forward_rtp_rtcp;
#[path = "../fuzz/bodies/sdp.rs"]
mod sdp;
#[path = "../fuzz/bodies/sdp_offer.rs"]
mod sdp_offer;

#[test]
fn codec_keyframe() {
    replay::replay("codec_keyframe", codec_keyframe::check);
}

#[test]
fn forward_rtp_rtcp() {
    replay::replay("forward_rtp_rtcp", forward_rtp_rtcp::check);
}

#[test]
fn sdp() {
    replay::replay("sdp", sdp::check);
}

#[test]
fn sdp_offer() {
    replay::replay("sdp_offer", sdp_offer::check);
}

#[test]
fn every_target_and_kept_finding_is_replayed() {
    replay::replays_every_target(&["codec_keyframe", "forward_rtp_rtcp", "sdp", "sdp_offer"]);
}
