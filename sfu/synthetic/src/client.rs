//! The client side, on the `webrtc` crate's async wrapper: the synthetic participants of
//! tests and load tests make their connections here, with the same codecs and
//! interceptors as the SFU expects of a browser ([`sfu::engine::client_recipe`]).

use std::net::IpAddr;
use std::sync::Arc;

use rtc::peer_connection::configuration::setting_engine::SettingEngineBuilder;
use rtc::rtp_transceiver::rtp_sender::{RTCRtpCodec, RtpCodecKind};
use webrtc::media_stream::track_local::static_rtp::TrackLocalStaticRTP;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder,
};

use sfu::engine::{ClientRecipe, EngineError, client_recipe};

fn webrtc_err(e: impl std::fmt::Display) -> EngineError {
    EngineError::WebRtc(e.to_string())
}

/// How a synthetic client's ICE agent behaves.
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientIce {
    /// How often it sends a STUN check on the selected pair once connected (the crate's
    /// default, 2 s, if unset; libnice checks every 25 s).
    pub keepalive: Option<std::time::Duration>,
}

/// A client peer connection (full ICE, both directions' interceptors) bound to `bind_ip`
/// only, with no mDNS.
pub async fn peer_connection(
    bind_ip: IpAddr,
    handler: Arc<dyn PeerConnectionEventHandler>,
) -> Result<Arc<dyn PeerConnection>, EngineError> {
    peer_connection_with(bind_ip, handler, ClientIce::default()).await
}

/// [`peer_connection`] with an ICE agent that behaves as `ice` says.
pub async fn peer_connection_with(
    bind_ip: IpAddr,
    handler: Arc<dyn PeerConnectionEventHandler>,
    ice: ClientIce,
) -> Result<Arc<dyn PeerConnection>, EngineError> {
    let settings = match ice.keepalive {
        // Its own view of the SFU must not time out between the rare checks either.
        Some(every) => SettingEngineBuilder::new().with_ice_timeouts(
            Some(every * 3),
            Some(every * 3),
            Some(every),
        ),
        None => SettingEngineBuilder::new(),
    };
    let ClientRecipe {
        media,
        registry,
        settings,
    } = client_recipe(settings)?;
    let pc = PeerConnectionBuilder::new()
        .with_configuration(RTCConfigurationBuilder::new().build())
        .with_media_engine(media)
        .with_setting_engine(settings)
        .with_interceptor_registry(registry)
        .with_handler(handler)
        .with_udp_addrs(vec![format!("{bind_ip}:0")])
        .build()
        .await
        .map_err(webrtc_err)?;
    Ok(Arc::new(pc))
}

/// A local track sending one SSRC of one codec, in media stream `stream`.
pub(crate) fn local_track(
    stream: String,
    id: String,
    kind: RtpCodecKind,
    ssrc: u32,
    codec: RTCRtpCodec,
) -> Arc<TrackLocalStaticRTP> {
    Arc::new(TrackLocalStaticRTP::new(sfu::engine::media_track(
        stream, id, kind, ssrc, codec,
    )))
}
