//! A browser's websocket message, as the server parses it: whatever the bytes, parsing
//! never panics, and what parses serialises and parses back to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::ClientMsg;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(msg) = serde_json::from_str::<ClientMsg>(text) {
        let again = serde_json::to_string(&msg).expect("a parsed message serialises");
        let back: ClientMsg = serde_json::from_str(&again).expect("and parses back");
        assert_eq!(back, msg);
    }
});
