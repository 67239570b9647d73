//! Signalling's fuzz targets (`signalling/fuzz`) on their committed inputs, on stable:
//! each target's body (`signalling/fuzz/bodies/`, the same code the cargo-fuzz target
//! runs) on every file of its corpus (`signalling/fuzz/corpus/<target>/`, and
//! `signalling/fuzz/found/<target>-*` if inputs from findings are kept there). A failure
//! names the input. The test command replays, it does not fuzz: fuzzing proper, which
//! searches for new inputs, is `scripts/fuzz` (nightly), run by `load-tests/measure-all`
//! and by hand.

// The bodies are the fuzz targets' own code (`control_channel` unwraps).
#![allow(clippy::unwrap_used)]

#[path = "../../sfu/fuzz/replay.rs"]
mod replay;

#[path = "../fuzz/bodies/control_channel.rs"]
mod control_channel;
#[path = "../fuzz/bodies/rest_bodies.rs"]
mod rest_bodies;
#[path = "../fuzz/bodies/room_ops.rs"]
mod room_ops;
#[path = "../fuzz/bodies/ws_client_msg.rs"]
mod ws_client_msg;
// What `signalling::text::clean` promises, checked by rest_bodies and ws_client_msg.
#[path = "../fuzz/common/text.rs"]
mod text;

#[test]
fn control_channel() {
    replay::replay("control_channel", control_channel::check);
}

#[test]
fn rest_bodies() {
    replay::replay("rest_bodies", rest_bodies::check);
}

#[test]
fn room_ops() {
    replay::replay("room_ops", room_ops::check);
}

#[test]
fn ws_client_msg() {
    replay::replay("ws_client_msg", ws_client_msg::check);
}

#[test]
fn every_target_is_replayed() {
    replay::replays_every_target(&[
        "control_channel",
        "rest_bodies",
        "room_ops",
        "ws_client_msg",
    ]);
}
