//! `sfu`: a separate SFU node. It registers itself in Redis (its control address, its load,
//! a heartbeat) and takes consultations from any signalling instance over the control
//! websocket. A single-node deployment does not need it: `consult serve` without Redis
//! runs the same engine in process.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use protocol::NodeId;
use protocol::control::CONTROL_PATH;
use sfu::control::Node;
use sfu::engine::{Engine, EngineConfig};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "sfu", about = "A separate SFU node for the consult platform")]
struct Args {
    /// The Redis that signalling uses (the node registers there): `redis://…`, or
    /// `redis-sentinel://host:port,host:port#primary` to follow the primary that Redis
    /// Sentinel names. Without it the node registers nowhere and needs --secret: for
    /// benchmarks that drive it directly.
    #[arg(long, env = "CONSULT_REDIS_URL")]
    redis_url: Option<String>,
    /// This node's name, unique among nodes.
    #[arg(long, env = "CONSULT_SFU_NODE_ID", default_value = "sfu-1")]
    node_id: NodeId,
    /// Where the control websocket listens (signalling connects here).
    #[arg(long, env = "CONSULT_SFU_LISTEN", default_value = "127.0.0.1:7100")]
    listen: SocketAddr,
    /// The control address signalling should use, if not `ws://<listen>/control` (e.g.
    /// behind a proxy).
    #[arg(long, env = "CONSULT_SFU_CONTROL_URL")]
    control_url: Option<String>,
    /// The address media sockets bind (a concrete address, not 0.0.0.0).
    #[arg(long, env = "CONSULT_SFU_MEDIA_IP", default_value = "127.0.0.1")]
    media_ip: IpAddr,
    /// The public address browsers reach `media_ip` at, behind 1:1 NAT.
    #[arg(long, env = "CONSULT_SFU_ANNOUNCED_IP")]
    announced_ip: Option<IpAddr>,
    /// The media port range, e.g. `40000-40007`: one UDP port (and TCP, with ICE-TCP) per
    /// media loop, one loop per core; every participant shares them.
    #[arg(long, env = "CONSULT_SFU_PORTS", value_parser = sfu::engine::parse_port_range)]
    ports: Option<(u16, u16)>,
    /// Also accept ICE over TCP on the same ports.
    #[arg(long, env = "CONSULT_SFU_ICE_TCP")]
    ice_tcp: bool,
    /// The control secret; empty: the one kept in Redis (shared with signalling).
    #[arg(
        long,
        env = "CONSULT_SFU_SECRET",
        default_value = "",
        hide_env_values = true
    )]
    secret: String,
    /// On SIGTERM the node drains: it takes no new consultation, lets the ones it carries
    /// go on for up to this many seconds, then moves whoever is left to another node
    /// (their browsers rejoin there by themselves) and stops. A second SIGTERM moves
    /// them at once.
    #[arg(long, env = "CONSULT_SFU_DRAIN_SECONDS", default_value_t = 120)]
    drain_seconds: u64,
    /// The bearer token Prometheus sends for `/metrics`; empty: only this host may read
    /// them, directly.
    #[arg(
        long,
        env = "CONSULT_METRICS_TOKEN",
        default_value = "",
        hide_env_values = true
    )]
    metrics_token: String,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "CONSULT_LOG",
        default_value = "info,webrtc=error,rtc=error,rtc_dtls=error,rtc_ice=error,rtc_srtp=error,rtc_sctp=error,rtc_interceptor=error,rtc_rtp=error,rtc_rtcp=error,rtc_sdp=error"
    )]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log))
        .with_writer(std::io::stderr)
        .init();
    if args.media_ip.is_unspecified() {
        anyhow::bail!(
            "--media-ip must be a concrete address, not {}",
            args.media_ip
        );
    }
    let mut conn = match &args.redis_url {
        Some(url) => {
            // One server, or the primary that Redis Sentinel names (and follows).
            let target = redis_link::Target::parse(url)
                .map_err(|e| anyhow::anyhow!("the Redis URL: {e}"))?;
            // A heartbeat that fails is retried a second later: no command waits long,
            // and a lost connection is tried again at least every half second.
            let config = redis::aio::ConnectionManagerConfig::new()
                .set_response_timeout(Some(std::time::Duration::from_secs(2)))
                .set_connection_timeout(Some(std::time::Duration::from_secs(2)))
                .set_max_delay(std::time::Duration::from_millis(500));
            Some(
                redis_link::Link::connect(&target, config)
                    .await
                    .context("connecting to Redis")?,
            )
        }
        None if args.secret.is_empty() => {
            anyhow::bail!("without --redis-url, give the control secret with --secret")
        }
        None => None,
    };
    let secret = match &mut conn {
        Some(conn) => sfu::registry::control_secret(conn, &args.secret)
            .await
            .context("reading the control secret")?,
        None => args.secret.clone(),
    };

    let engine = Engine::new(EngineConfig {
        bind_ip: args.media_ip,
        announced_ip: args.announced_ip,
        ports: args.ports,
        ice_tcp: args.ice_tcp,
    })
    .context("binding the media ports")?;
    let node = Node::new(engine);
    let listener = sfu::server::listen(args.listen)
        .and_then(tokio::net::TcpListener::from_std)
        .with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let control_url = args
        .control_url
        .clone()
        .unwrap_or_else(|| format!("ws://{addr}{CONTROL_PATH}"));

    // Registered before saying so: once the line below is printed, signalling can place
    // consultations here.
    let stop = CancellationToken::new();
    let mut heartbeat = None;
    if let Some(mut conn) = conn {
        let first = sfu::registry::record(&args.node_id, &control_url, node.load(), node.service());
        sfu::registry::announce(&mut conn, &first)
            .await
            .context("registering in Redis")?;
        heartbeat = Some(tokio::spawn(sfu::registry::heartbeat(
            conn,
            node.clone(),
            args.node_id.clone(),
            control_url.clone(),
            stop.clone(),
        )));
    }
    println!("sfu: listening on {addr}");
    tracing::info!(node = %args.node_id, %addr, media_ip = %args.media_ip, "serving");

    let links = CancellationToken::new();
    let access = sfu::metrics::Access::new(&args.metrics_token);
    let app = sfu::server::router(Arc::clone(&node), &secret, links.clone(), access);
    let stopping = stop.clone();
    let drain = std::time::Duration::from_secs(args.drain_seconds);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        shutdown_signal().await;
        tokio::select! {
            () = node.drain(drain) => {}
            () = shutdown_signal() => {
                tracing::info!("asked again: moving the calls now");
                node.drain(std::time::Duration::ZERO).await;
            }
        }
        tracing::info!("shutting down: ending control links");
        // Unregister first, so that nobody places a consultation here meanwhile.
        stopping.cancel();
        links.cancel();
    })
    .await?;
    if let Some(h) = heartbeat {
        let _ = h.await;
    }
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
