//! The SFU: relays every consultation's media. Each participant publishes audio and video
//! and receives everyone else's; nothing is decoded, mixed or recorded.
//!
//! - [`forward`]: the forwarding core, sans-IO: per-packet decisions, NACKs answered from
//!   a per-track [`packet_cache`], keyframe requests. Tested with simulated time.
//! - The engine (the one module that imports `webrtc`) and the control channel to
//!   signalling come next (issue 3).

pub mod engine;
pub mod forward;
pub mod packet_cache;
