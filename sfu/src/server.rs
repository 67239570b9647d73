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
