//! The `control_channel` fuzz target. Its body, and the properties it checks, are in
//! `bodies/control_channel.rs`, shared with the stable replay of the committed inputs in
//! `signalling/tests/fuzz_corpus.rs` (part of `cargo test`).
#![no_main]

#[path = "../bodies/control_channel.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
