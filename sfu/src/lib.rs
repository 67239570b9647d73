//! The SFU: relays every consultation's media. Each participant publishes audio and video
//! and receives everyone else's; nothing is decoded, mixed or recorded.
//!
//! - [`codec`]: the codec policy (Opus; VP8 and H264), keyframe detection per codec, and
//!   the choice of the video codec a publisher sends so everyone can decode it.
//! - [`forward`]: the forwarding core, sans-IO: per-packet decisions, NACKs answered from
//!   a per-track [`packet_cache`], keyframe requests. Tested with simulated time.
//! - [`engine`]: the one module that speaks WebRTC: media loops (one per core) that drive
//!   the `rtc` crate's sans-IO peer connections over one shared port each, negotiation;
//!   it carries out the core's decisions. The synthetic participant of tests and load
//!   tests is a crate of its own (`sfu/synthetic/`, on the `webrtc` crate) built from
//!   [`engine::client_recipe`], so the SFU's binary never links it.
//! - [`control`]: the node's side of the control channel from signalling
//!   (`protocol::control`), over in-process channels or, in a separate process, the
//!   websocket of [`server`]; [`registry`] announces a separate node in Redis.
//! - [`metrics`]: the node's Prometheus metrics, counted per media loop without locks.
//! - [`sdp`]: candidate address rewriting for servers behind 1:1 NAT, and reading the
//!   codecs a browser's offer or answer holds.

pub mod bwe;
pub mod codec;
pub mod control;
pub mod engine;
pub mod forward;
pub mod metrics;
pub mod packet_cache;
pub mod registry;
pub mod sdp;
pub mod server;
