//! Signalling's side of the SFU: which nodes exist, the control link to each, and the
//! routing of each node's messages to the websocket connections whose media it carries.
//!
//! A single node runs the SFU in process ([`Media::in_process`]): the link is a pair of
//! channels to `sfu::control::Node::serve`. With Redis, SFU nodes are separate processes
//! that announce themselves in the store ([`Media::registered`]); this instance opens a
//! control websocket to a node the first time it needs it and keeps it. Either way the
//! same `protocol::control` values travel, so both modes run the same code above the link.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::control::{
    ControlOp, ControlOutcome, ControlRequest, MAX_CONTROL_MESSAGE_BYTES, NodeMsg, NodeRecord,
};
use protocol::{MediaEndReason, NodeId, ParticipantId, ServerMsg};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
use tokio_util::sync::CancellationToken;

use crate::error::AppError;
use crate::store::Store;
use crate::turn::IceServers;

/// How long a control request may take (a publish waits for candidate gathering).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How long opening a control link may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Messages queued towards one connection before its media messages are dropped.
pub const MEDIA_QUEUE: usize = 64;
/// The name of the in-process node.
pub const LOCAL_NODE: &str = "local";

/// Where media messages for one websocket connection go.
pub type MediaSender = mpsc::Sender<ServerMsg>;

/// The SFU nodes this instance can place consultations on.
#[derive(Debug)]
pub struct Media {
    nodes: Nodes,
    ice_servers: IceServers,
}

#[derive(Debug)]
enum Nodes {
    InProcess {
        id: NodeId,
        link: Arc<Link>,
        node: Arc<sfu::control::Node>,
    },
    Registered {
        store: Arc<dyn Store>,
        secret: String,
        links: Mutex<HashMap<NodeId, Arc<Link>>>,
    },
}

impl Media {
    /// The SFU runs in this process.
    pub fn in_process(id: NodeId, node: Arc<sfu::control::Node>, ice_servers: IceServers) -> Self {
        let (requests, requests_rx) = mpsc::channel(sfu::control::LINK_QUEUE);
        let (out, out_rx) = mpsc::channel(sfu::control::LINK_QUEUE);
        tokio::spawn(node.clone().serve(requests_rx, out));
        Self {
            nodes: Nodes::InProcess {
                id,
                link: Link::start(requests, out_rx),
                node,
            },
            ice_servers,
        }
    }

    /// SFU nodes are separate processes registered in `store`.
    pub fn registered(store: Arc<dyn Store>, secret: String, ice_servers: IceServers) -> Self {
        Self {
            nodes: Nodes::Registered {
                store,
                secret,
                links: Mutex::new(HashMap::new()),
            },
            ice_servers,
        }
    }

    /// The STUN and TURN servers browsers are given, with TURN credentials minted for
    /// whoever asks.
    pub fn ice_servers(&self) -> &IceServers {
        &self.ice_servers
    }

    /// Where consultations may go now.
    pub async fn placement(&self) -> Result<Placement, AppError> {
        match &self.nodes {
            Nodes::InProcess { id, .. } => Ok(Placement {
                open: vec![id.clone()],
                carrying: vec![id.clone()],
            }),
            Nodes::Registered { store, links, .. } => {
                let now = crate::service::now();
                let records = store.media_nodes().await?;
                let lost: HashMap<NodeId, protocol::Timestamp> = links
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .iter()
                    .filter_map(|(id, l)| l.lost_at.get().map(|at| (id.clone(), *at)))
                    .collect();
                Ok(placement(records, now, &lost))
            }
        }
    }

    /// Every node's record, for administrators (none in a single node).
    pub async fn records(&self) -> Result<Vec<NodeRecord>, AppError> {
        match &self.nodes {
            Nodes::InProcess { .. } => Ok(Vec::new()),
            Nodes::Registered { store, .. } => {
                let mut records = store.media_nodes().await?;
                records.sort_by(|a, b| a.id.cmp(&b.id));
                Ok(records)
            }
        }
    }

    /// The SFU running in this process, if it does.
    pub fn local_node(&self) -> Option<&Arc<sfu::control::Node>> {
        match &self.nodes {
            Nodes::InProcess { node, .. } => Some(node),
            Nodes::Registered { .. } => None,
        }
    }

    /// Whether the nodes are separate processes (which can be drained).
    pub fn separate(&self) -> bool {
        matches!(self.nodes, Nodes::Registered { .. })
    }

    /// The control link to `node`, opened now if this instance has none.
    pub async fn link(&self, node: &NodeId) -> Result<Arc<Link>, AppError> {
        match &self.nodes {
            Nodes::InProcess { id, link, .. } if id == node => Ok(link.clone()),
            Nodes::InProcess { .. } => Err(AppError::Unavailable(format!(
                "no media node {node} in this single-node server"
            ))),
            Nodes::Registered {
                store,
                secret,
                links,
            } => {
                let existing = links
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(node)
                    .filter(|l| !l.closed.is_cancelled())
                    .cloned();
                if let Some(l) = existing {
                    return Ok(l);
                }
                let record = store
                    .media_nodes()
                    .await?
                    .into_iter()
                    .find(|r| &r.id == node)
                    .ok_or_else(|| AppError::Unavailable(format!("media node {node} is gone")))?;
                let link = connect_node(&record.control_url, secret).await?;
                let mut links = links.lock().unwrap_or_else(|e| e.into_inner());
                // Another request may have connected meanwhile: keep one link per node.
                let kept = links
                    .entry(node.clone())
                    .and_modify(|l| {
                        if l.closed.is_cancelled() {
                            *l = link.clone();
                        }
                    })
                    .or_insert_with(|| link.clone())
                    .clone();
                if !Arc::ptr_eq(&kept, &link) {
                    link.closed.cancel();
                }
                Ok(kept)
            }
        }
    }

    /// A browser's pre-call check: its offer for a short-lived connection to the least
    /// loaded node; returns the node's answer.
    pub async fn probe(&self, sdp: String) -> Result<String, AppError> {
        let node = self
            .placement()
            .await?
            .open
            .into_iter()
            .next()
            .ok_or_else(|| AppError::Unavailable("no media server is available".into()))?;
        let link = self.link(&node).await?;
        let op = ControlOp::Probe {
            participant: ParticipantId::random(),
            sdp,
        };
        match link.request(op).await? {
            ControlOutcome::Answer { sdp } => Ok(sdp),
            other => Err(AppError::Unavailable(format!(
                "unexpected answer to a check: {other:?}"
            ))),
        }
    }

    /// Sends a request that needs no answer beyond success (removals when a visit leaves
    /// a consultation); failures are logged, since the state change already happened.
    pub async fn notify(&self, node: &NodeId, op: ControlOp) {
        let result = match self.link(node).await {
            Ok(link) => link.request(op).await.map(|_| ()),
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            tracing::info!(%node, error = %e, "media node not told of a change");
        }
    }
}

/// Where consultations may go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The nodes that take a new consultation: live, not draining, least loaded first.
    pub open: Vec<NodeId>,
    /// The nodes a consultation already placed on one stays on: live, and not moving
    /// their calls away (a draining node keeps the ones it carries until its deadline).
    pub carrying: Vec<NodeId>,
}

impl Placement {
    /// `node` does not answer: out of both.
    pub fn without(&mut self, node: &NodeId) {
        self.open.retain(|n| n != node);
        self.carrying.retain(|n| n != node);
    }
}

/// The placement `records` allow: fewest participants first (ties by name, so every
/// instance agrees). A node whose control link this instance lost (`lost`: when) is out
/// until it has beaten again since: its record outlives it by up to its lifetime, and the
/// calls it carried are placed again at once, not on it.
fn placement(
    mut records: Vec<NodeRecord>,
    now: protocol::Timestamp,
    lost: &HashMap<NodeId, protocol::Timestamp>,
) -> Placement {
    records.retain(|r| {
        r.expires_at > now && !r.moving && lost.get(&r.id).is_none_or(|at| r.heartbeat_at > *at)
    });
    records.sort_by(|a, b| (a.participants, &a.id).cmp(&(b.participants, &b.id)));
    Placement {
        open: records
            .iter()
            .filter(|r| !r.draining)
            .map(|r| r.id.clone())
            .collect(),
        carrying: records.into_iter().map(|r| r.id).collect(),
    }
}

/// One control link: requests out, replies matched by id, node messages routed to the
/// connections of the participants they concern.
#[derive(Debug)]
pub struct Link {
    requests: mpsc::Sender<ControlRequest>,
    pending: Mutex<HashMap<u64, oneshot::Sender<ControlOutcome>>>,
    routes: Mutex<HashMap<ParticipantId, MediaSender>>,
    next_id: AtomicU64,
    /// Cancelled when the link is gone (the node stopped, or its websocket dropped).
    closed: CancellationToken,
    /// When the node went away (its link dropped; not set for a link closed as a spare).
    lost_at: std::sync::OnceLock<protocol::Timestamp>,
}

impl Link {
    fn start(
        requests: mpsc::Sender<ControlRequest>,
        incoming: mpsc::Receiver<NodeMsg>,
    ) -> Arc<Self> {
        let link = Arc::new(Self {
            requests,
            pending: Mutex::new(HashMap::new()),
            routes: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            closed: CancellationToken::new(),
            lost_at: std::sync::OnceLock::new(),
        });
        tokio::spawn(link.clone().dispatch(incoming));
        link
    }

    /// Sends `op` and waits for its outcome; a refusal by the node is an error with the
    /// node's code.
    pub async fn request(self: &Arc<Self>, op: ControlOp) -> Result<ControlOutcome, AppError> {
        self.submit(op).await?.outcome().await
    }

    /// Puts `op` on the link now (requests reach the node in the order they are
    /// submitted), and gives what to await for its outcome.
    pub async fn submit(self: &Arc<Self>, op: ControlOp) -> Result<Pending, AppError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        if self.requests.send(ControlRequest { id, op }).await.is_err() {
            self.forget(id);
            return Err(link_gone());
        }
        Ok(Pending {
            link: self.clone(),
            id,
            rx,
        })
    }

    fn forget(&self, id: u64) {
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// Node messages about `participant` go to `to` from now on.
    pub fn route(&self, participant: ParticipantId, to: MediaSender) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(participant, to);
    }

    pub fn unroute(&self, participant: ParticipantId) {
        self.routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&participant);
    }

    fn to_connection(&self, participant: ParticipantId, msg: ServerMsg) {
        let ended = matches!(msg, ServerMsg::MediaEnded { .. });
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = routes.get(&participant) {
            // A connection that far behind has its websocket cut off anyway.
            let _ = tx.try_send(msg);
        }
        if ended {
            routes.remove(&participant);
        }
    }

    async fn dispatch(self: Arc<Self>, mut incoming: mpsc::Receiver<NodeMsg>) {
        while let Some(msg) = incoming.recv().await {
            match msg {
                NodeMsg::Reply { id, outcome } => {
                    let waiting = self
                        .pending
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(tx) = waiting {
                        let _ = tx.send(outcome);
                    }
                }
                NodeMsg::SubscriberOffer { participant, sdp } => {
                    self.to_connection(participant, ServerMsg::SubscriberOffer { sdp });
                }
                NodeMsg::Candidate {
                    participant,
                    leg,
                    candidate,
                } => {
                    self.to_connection(participant, ServerMsg::IceCandidate { leg, candidate });
                }
                NodeMsg::Connection {
                    participant,
                    connected,
                } => {
                    self.to_connection(participant, ServerMsg::MediaConnection { connected });
                }
                NodeMsg::Left {
                    participant,
                    reason,
                } => {
                    self.to_connection(participant, ServerMsg::MediaEnded { reason });
                }
                NodeMsg::PeerState {
                    participant,
                    stream,
                    state,
                } => {
                    self.to_connection(
                        participant,
                        ServerMsg::PeerMediaState {
                            stream,
                            audio: state.audio,
                            video: state.video,
                            screen: state.screen,
                        },
                    );
                }
                NodeMsg::PublishRenegotiate { participant } => {
                    self.to_connection(participant, ServerMsg::PublishRenegotiate);
                }
                NodeMsg::PublishLayers {
                    participant,
                    mid,
                    paused,
                } => {
                    self.to_connection(participant, ServerMsg::PublishLayers { mid, paused });
                }
                NodeMsg::Link {
                    participant,
                    figures,
                } => {
                    self.to_connection(participant, ServerMsg::MediaLink(figures));
                }
            }
        }
        // The node is gone: everyone it carried for this instance must join again.
        if !self.closed.is_cancelled() {
            let _ = self.lost_at.set(crate::service::now());
        }
        self.closed.cancel();
        let routes: Vec<MediaSender> = self
            .routes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, tx)| tx)
            .collect();
        for tx in routes {
            let _ = tx.try_send(ServerMsg::MediaEnded {
                reason: MediaEndReason::NodeLost,
            });
        }
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

/// Opens a control websocket to a separate node and bridges it to a [`Link`] (also used by
/// the load tests to drive a node directly).
pub async fn connect_node(url: &str, secret: &str) -> Result<Arc<Link>, AppError> {
    let unavailable = |what: String| AppError::Unavailable(what);
    let mut request = url
        .into_client_request()
        .map_err(|e| unavailable(format!("bad control URL {url}: {e}")))?;
    let bearer = format!("Bearer {secret}")
        .parse()
        .map_err(|_| unavailable("the control secret is not a valid header value".into()))?;
    request.headers_mut().insert("authorization", bearer);
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_CONTROL_MESSAGE_BYTES))
        .max_frame_size(Some(MAX_CONTROL_MESSAGE_BYTES));
    let (socket, _) = tokio::time::timeout(
        CONNECT_TIMEOUT,
        tokio_tungstenite::connect_async_with_config(request, Some(config), true),
    )
    .await
    .map_err(|_| unavailable(format!("no answer from the media node at {url}")))?
    .map_err(|e| unavailable(format!("cannot reach the media node at {url}: {e}")))?;
    let (requests, mut requests_rx) = mpsc::channel::<ControlRequest>(sfu::control::LINK_QUEUE);
    let (out, out_rx) = mpsc::channel(sfu::control::LINK_QUEUE);
    let link = Link::start(requests, out_rx);
    let closed = link.closed.clone();
    let (mut sink, mut stream) = socket.split();
    let url = url.to_owned();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = closed.cancelled() => break,
                request = requests_rx.recv() => {
                    let Some(request) = request else { break };
                    let text = serde_json::to_string(&request).unwrap_or_default();
                    if sink.send(tungstenite::Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                incoming = stream.next() => {
                    let text = match incoming {
                        Some(Ok(tungstenite::Message::Text(t))) => t,
                        Some(Ok(tungstenite::Message::Close(_)) | Err(_)) | None => break,
                        Some(Ok(_)) => continue,
                    };
                    match serde_json::from_str::<NodeMsg>(&text) {
                        Ok(m) => {
                            if out.send(m).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(%url, error = %e, "malformed message from a media node");
                            break;
                        }
                    }
                }
            }
        }
        let _ = sink.close().await;
        tracing::info!(%url, "control link to a media node closed");
        // Dropping `out` ends the link's dispatch, which tells its connections.
    });
    Ok(link)
}

#[cfg(test)]
mod tests {
    use protocol::Timestamp;

    use super::*;

    fn record(id: &str, participants: u32, expires_at: u64, draining: bool) -> NodeRecord {
        NodeRecord {
            id: NodeId::parse(id).unwrap(),
            control_url: format!("ws://127.0.0.1:1/{id}"),
            participants,
            consultations: 0,
            draining,
            moving: false,
            heartbeat_at: Timestamp(expires_at.saturating_sub(500)),
            expires_at: Timestamp(expires_at),
        }
    }

    fn names(nodes: &[NodeId]) -> Vec<&str> {
        nodes.iter().map(NodeId::as_str).collect()
    }

    #[test]
    fn placement_prefers_the_least_loaded_live_node() {
        let now = Timestamp(1_000);
        let moving = NodeRecord {
            moving: true,
            ..record("moving", 0, 2_000, true)
        };
        let p = placement(
            vec![
                record("b", 4, 2_000, false),
                record("a", 4, 2_000, false),
                record("c", 1, 2_000, false),
                record("dead", 0, 999, false),
                record("draining", 0, 2_000, true),
                moving,
            ],
            now,
            &HashMap::new(),
        );
        assert_eq!(names(&p.open), ["c", "a", "b"]);
        // A draining node keeps what it carries; a moving one keeps nothing.
        assert_eq!(names(&p.carrying), ["draining", "c", "a", "b"]);
    }

    #[test]
    fn a_node_whose_link_dropped_is_out_until_it_beats_again() {
        let now = Timestamp(1_000);
        // Both last beat at 1,500; "c" was lost at 1,600 (its record lives on to 2,000).
        let records = || vec![record("c", 0, 2_000, false), record("a", 3, 2_000, false)];
        let lost: HashMap<NodeId, Timestamp> =
            [(NodeId::parse("c").unwrap(), Timestamp(1_600))].into();
        let p = placement(records(), now, &lost);
        assert_eq!(names(&p.open), ["a"]);
        assert_eq!(names(&p.carrying), ["a"]);
        // Back (restarted): a beat after the loss.
        let back = vec![record("c", 0, 2_200, false), record("a", 3, 2_000, false)];
        assert_eq!(names(&placement(back, now, &lost).open), ["c", "a"]);
    }

    #[test]
    fn the_local_node_name_is_a_valid_id() {
        assert!(NodeId::parse(LOCAL_NODE).is_ok());
    }
}

fn link_gone() -> AppError {
    AppError::Unavailable("the media server is not reachable".into())
}

/// A request on its way to the node ([`Link::submit`]): its outcome, awaited.
#[derive(Debug)]
pub struct Pending {
    link: Arc<Link>,
    id: u64,
    rx: oneshot::Receiver<ControlOutcome>,
}

impl Pending {
    /// The node's outcome; a refusal is an error with the node's code.
    pub async fn outcome(self) -> Result<ControlOutcome, AppError> {
        let outcome = tokio::time::timeout(REQUEST_TIMEOUT, self.rx).await;
        self.link.forget(self.id);
        match outcome {
            Ok(Ok(ControlOutcome::Failed { code, message })) => Err(AppError::Media(code, message)),
            Ok(Ok(o)) => Ok(o),
            Ok(Err(_)) => Err(link_gone()),
            Err(_) => Err(AppError::Unavailable(
                "the media server did not answer in time".into(),
            )),
        }
    }
}
