//! A separate node's HTTP side: the control websocket at `protocol::control::CONTROL_PATH`
//! (JSON text frames; `Authorization: Bearer <control secret>`) and `/healthz`.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{SinkExt, StreamExt};
use protocol::control::{CONTROL_PATH, ControlRequest, MAX_CONTROL_MESSAGE_BYTES};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::control::{LINK_QUEUE, Node};

const PING_EVERY: Duration = Duration::from_secs(10);

#[derive(Clone)]
struct AppState {
    node: Arc<Node>,
    secret: Arc<str>,
    stop: CancellationToken,
}

/// The node's routes. Cancelling `stop` ends every control link (signalling learns at
/// once that this node is gone and tells the browsers it carried to join again), which
/// lets a graceful shutdown finish.
pub fn router(node: Arc<Node>, secret: &str, stop: CancellationToken) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(CONTROL_PATH, get(control))
        .with_state(AppState {
            node,
            secret: secret.into(),
            stop,
        })
}

/// Compares in time independent of where the inputs differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    given.len() == expected.len()
        && given
            .iter()
            .zip(expected)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
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
    use super::same_secret;

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abd", b"abc"));
        assert!(!same_secret(b"ab", b"abc"));
        assert!(!same_secret(b"", b"abc"));
    }
}
