//! The `ws_client_msg` fuzz target. Its body, and the properties it checks, are in
//! `bodies/ws_client_msg.rs`, shared with the stable replay of the committed inputs in
//! `signalling/tests/fuzz_corpus.rs` (part of `cargo test`).
#![no_main]

#[path = "../bodies/ws_client_msg.rs"]
mod body;
#[path = "../common/text.rs"]
mod text;

libfuzzer_sys::fuzz_target!(|data: &[u8]| body::check(data));
