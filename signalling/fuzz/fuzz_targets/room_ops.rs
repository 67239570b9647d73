//! The `room_ops` fuzz target. Its body, and the properties it checks, are in
//! `bodies/room_ops.rs`, shared with the stable replay of the committed inputs in
//! `signalling/tests/fuzz_corpus.rs` (part of `cargo test`).
#![no_main]

#[path = "../bodies/room_ops.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
