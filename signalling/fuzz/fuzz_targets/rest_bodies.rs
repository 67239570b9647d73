//! The `rest_bodies` fuzz target. Its body, and the properties it checks, are in
//! `bodies/rest_bodies.rs`, shared with the stable replay of the committed inputs in
//! `signalling/tests/fuzz_corpus.rs` (part of `cargo test`).
#![no_main]

#[path = "../bodies/rest_bodies.rs"]
mod body;
#[path = "../common/text.rs"]
mod text;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
