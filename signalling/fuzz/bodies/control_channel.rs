//! The SFU control channel, both ways: what a node parses from signalling
//! (`ControlRequest`) and what signalling parses from a node (`NodeMsg`). Parsing never
//! panics, and what parses round-trips.

use protocol::control::{ControlRequest, NodeMsg, NodeRecord};

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `signalling/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
    let Some((kind, body)) = data.split_first() else {
        return;
    };
    match kind % 3 {
        0 => {
            if let Ok(v) = serde_json::from_slice::<ControlRequest>(body) {
                let back: ControlRequest =
                    serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
                assert_eq!(back, v);
            }
        }
        1 => {
            if let Ok(v) = serde_json::from_slice::<NodeMsg>(body) {
                let back: NodeMsg =
                    serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
                assert_eq!(back, v);
            }
        }
        _ => {
            if let Ok(v) = serde_json::from_slice::<NodeRecord>(body) {
                let back: NodeRecord =
                    serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
                assert_eq!(back, v);
            }
        }
    }
}
