//! SDP text a browser (or the SFU's own engine) produced, rewritten for 1:1 NAT: whatever
//! the text, no panic, the same number of lines, and nothing but candidate addresses and
//! connection lines changes.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sdp) = std::str::from_utf8(data) else {
        return;
    };
    let private: IpAddr = "10.0.0.5".parse().expect("valid");
    let public: IpAddr = "203.0.113.9".parse().expect("valid");
    let out = sfu::sdp::announce(sdp, private, public);
    assert_eq!(out.split_inclusive('\n').count(), sdp.split_inclusive('\n').count());
    for (a, b) in sdp.split_inclusive('\n').zip(out.split_inclusive('\n')) {
        if a != b {
            assert!(a.starts_with("a=candidate:") || a.starts_with("c=IN IP"), "{a:?} -> {b:?}");
        }
    }
    // Announcing to the same address changes nothing.
    assert_eq!(sfu::sdp::announce(sdp, private, private), sdp);
    if let Some(line) = sdp.lines().next() {
        let _ = sfu::sdp::announce_candidate(line, "10.0.0.5", "203.0.113.9");
    }
});
