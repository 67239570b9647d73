//! Every REST body the server parses: the first byte picks the type, the rest is the body.
//! Parsing never panics, and what parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::{
    Command, CreateClinic, CreateStaff, EnterRequest, IssueInvite, MediaCheckOffer, SignInRequest,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(body: &[u8]) {
    if let Ok(v) = serde_json::from_slice::<T>(body) {
        let again = serde_json::to_vec(&v).expect("a parsed body serialises");
        let back: T = serde_json::from_slice(&again).expect("and parses back");
        assert_eq!(back, v);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    match kind % 7 {
        0 => round_trip::<SignInRequest>(body),
        1 => round_trip::<EnterRequest>(body),
        2 => round_trip::<Command>(body),
        3 => round_trip::<CreateClinic>(body),
        4 => round_trip::<CreateStaff>(body),
        5 => round_trip::<IssueInvite>(body),
        _ => round_trip::<MediaCheckOffer>(body),
    }
});
