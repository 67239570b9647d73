//! The `codec_keyframe` fuzz target. Its body, and the properties it checks, are in
//! `bodies/codec_keyframe.rs`, shared with the stable replay of the committed inputs in
//! `sfu/tests/fuzz_corpus.rs` (part of `cargo test`).
#![no_main]

#[path = "../bodies/codec_keyframe.rs"]
mod body;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
