//! A separate node's HTTP side: the control websocket at `protocol::control::CONTROL_PATH`
//! (JSON text frames; `Authorization: Bearer <control secret>`), `/healthz`, and
//! `/metrics` (Prometheus; see [`crate::metrics::Access`] for who may read it). Serve it
//! with `into_make_service_with_connect_info::<SocketAddr>()`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use protocol::control::{CONTROL_PATH, ControlRequest, MAX_CONTROL_MESSAGE_BYTES};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::{LINK_QUEUE, Node, Service};
use crate::metrics::{Access, CONTENT_TYPE, NodeMetrics, render, same_secret};
use prometheus_client::registry::Registry;

const PING_EVERY: Duration = Duration::from_secs(10);

/// How many connections the kernel may hold for a listener before it is accepted (Linux
/// caps it at `net.core.somaxconn`, 4096 by default). The standard library's 128 overflows
/// when a clinic's patients all open the link at nine: each connection past it has its
/// SYN dropped and waits a second to try again (measured: a flood of 200 sign-ins made
/// 28 of them, and a `/healthz` check, wait 1 s).
pub const LISTEN_BACKLOG: i32 = 1024;

/// A TCP listener on `addr` with a [`LISTEN_BACKLOG`] long queue, non-blocking (ready
/// for `tokio::net::TcpListener::from_std`). Signalling's HTTP listener, a separate
/// node's control listener and the media loops' ICE-TCP listeners are made here.
pub fn listen(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    secret: Arc<str>,
    stop: CancellationToken,
    metrics: Arc<Registry>,
    access: Access,
}

/// The node's routes. Cancelling `stop` ends every control link (signalling learns at
/// once that this node is gone and tells the browsers it carried to join again), which
/// lets a graceful shutdown finish.
pub fn router(node: Arc<Node>, secret: &str, stop: CancellationToken, access: Access) -> Router {
    let mut registry = Registry::default();
    node.engine().metrics().register(&mut registry);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/metrics", get(metrics))
        .route(CONTROL_PATH, get(control))
        .with_state(AppState {
            node,
            secret: secret.into(),
            stop,
            metrics: Arc::new(registry),
            access,
        })
}

/// Sets the node's gauges from what it carries now.
pub fn update_gauges(node: &Node, metrics: &NodeMetrics) {
    let load = node.load();
    metrics.participants.set(i64::from(load.participants));
    metrics.consultations.set(i64::from(load.consultations));
    metrics
        .draining
        .set(i64::from(node.service() != Service::Serving));
}

async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !state.access.allows(peer, &headers) {
        return (StatusCode::FORBIDDEN, "metrics are not open to you").into_response();
    }
    update_gauges(&state.node, state.node.engine().metrics());
    (
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        render(&state.metrics),
    )
        .into_response()
}

async fn control(
    State(state): State<AppState>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    if !same_secret(given.as_bytes(), state.secret.as_bytes()) {
        return (StatusCode::UNAUTHORIZED, "wrong or missing control secret").into_response();
    }
    ws.max_message_size(MAX_CONTROL_MESSAGE_BYTES)
        .on_upgrade(move |socket| bridge(state.node, socket, state.stop))
}

/// Carries one control link between its websocket and [`Node::serve`].
async fn bridge(node: Arc<Node>, socket: WebSocket, stop: CancellationToken) {
    let (requests, requests_rx) = mpsc::channel(LINK_QUEUE);
    let (out, mut out_rx) = mpsc::channel(LINK_QUEUE);
    let served = tokio::spawn(node.serve(requests_rx, out));
    let (mut sink, mut stream) = socket.split();
    let mut ping = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            () = stop.cancelled() => {
                // What the node already said (calls told to move) goes out first.
                while let Ok(msg) = out_rx.try_recv() {
                    let text = serde_json::to_string(&msg).unwrap_or_default();
                    if sink.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                let _ = sink.send(Message::Close(None)).await;
                break;
            }
            incoming = stream.next() => {
                let text = match incoming {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => break,
                };
                match serde_json::from_str::<ControlRequest>(&text) {
                    Ok(r) => {
                        if requests.send(r).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        // Signalling only sends what the protocol crate defines: a peer
                        // that does not is not ours to serve.
                        tracing::warn!(error = %e, "malformed control request; closing the link");
                        break;
                    }
                }
            }
            msg = out_rx.recv() => {
                let Some(msg) = msg else { break };
                let text = serde_json::to_string(&msg).unwrap_or_default();
                if sink.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
        }
    }
    drop(requests);
    let _ = served.await;
}

#[cfg(test)]
mod tests {
    use std::net::TcpStream;
    use std::time::Duration;

    /// 300 browsers connecting at once, before the server accepts any of them, all get
    /// through at once: none has its SYN dropped and waits a second to try again.
    #[test]
    fn a_rush_of_connections_waits_in_the_listen_queue_not_in_retries() {
        let listener = super::listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let connected: Vec<_> = (0..300)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_millis(500)))
            .collect();
        let failed = connected.iter().filter(|c| c.is_err()).count();
        assert_eq!(failed, 0, "{failed} of 300 connections waited for a retry");
        drop(listener);
    }
}
