//! The SFU: relays every consultation's media. Each participant publishes audio and video
//! and receives everyone else's; nothing is decoded, mixed or recorded.
//!
//! - [`forward`]: the forwarding core, sans-IO: per-packet decisions, NACKs answered from
//!   a per-track [`packet_cache`], keyframe requests. Tested with simulated time.
//! - [`engine`]: the one module that imports `webrtc`: peer connections, the tasks around
//!   them, negotiation; it carries out the core's decisions. Its submodule
//!   [`engine::synthetic`] is a synthetic participant for tests and load tests, built on
//!   the same peer-connection recipe.

pub mod engine;
pub mod forward;
pub mod packet_cache;
