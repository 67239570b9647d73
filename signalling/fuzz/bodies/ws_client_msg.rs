//! A browser's websocket message, as the server handles it: parsed, its token checked
//! (`hello`), its text cleaned (a staff message).
//!
//! Whatever the bytes: no panic; what parses serialises and parses back to the same
//! value; no token made up by a client passes as a staff, visit or invite credential;
//! text kept after cleaning is what `text::clean` promises (see `common/text.rs`).

use std::sync::LazyLock;

use protocol::{ClientMsg, Command};
use signalling::auth::Keys;

// `common/text.rs`, a module of the crate that includes this body (the fuzz target, or
// the corpus replay, which includes it once for all the bodies that use it).
use crate::text;

static KEYS: LazyLock<Keys> =
    LazyLock::new(|| Keys::new(b"a fuzzing secret, at least 32 bytes long").expect("long enough"));

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `signalling/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(msg) = serde_json::from_str::<ClientMsg>(text) else {
        return;
    };
    let again = serde_json::to_string(&msg).expect("a parsed message serialises");
    let back: ClientMsg = serde_json::from_str(&again).expect("and parses back");
    assert_eq!(back, msg);
    match msg {
        ClientMsg::Hello { token } => {
            assert!(
                KEYS.check_staff(&token).is_err(),
                "a made-up staff token passed"
            );
            assert!(
                KEYS.check_visit(&token).is_err(),
                "a made-up visit credential passed"
            );
            assert!(
                KEYS.check_invite(&token).is_err(),
                "a made-up invite passed"
            );
        }
        ClientMsg::Command {
            command: Command::SendMessage { text: t, .. },
            ..
        } => text::check(&t, true),
        _ => {}
    }
}
