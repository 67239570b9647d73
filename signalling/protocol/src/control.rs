//! The control channel between signalling and an SFU node.
//!
//! Signalling decides who is in which consultation; the SFU node carries the media and
//! obeys. Each signalling instance keeps one control link per node it uses: requests go
//! one way, each answered by a [`NodeMsg::Reply`] with the same `id`; events about the
//! participants joined over that link come back on it. In a single node the link is a
//! pair of in-process channels carrying these same values; a separate `sfu` process
//! serves them as JSON text frames of a websocket at [`CONTROL_PATH`], authenticated with
//! `Authorization: Bearer <control secret>`.
//!
//! Separate nodes announce themselves in the store (Redis) as a [`NodeRecord`], refreshed
//! every [`HEARTBEAT_MS`]; a record whose `expires_at` has passed is a dead node.

use serde::{Deserialize, Serialize};

use crate::{
    ConsultationId, ErrorCode, IceCandidate, LinkFigures, MediaEndReason, MediaLeg, MediaState,
    NodeId, ParticipantId, Timestamp, VisitId,
};

/// The websocket path of a node's control channel.
pub const CONTROL_PATH: &str = "/control";
/// How often a node refreshes its record.
pub const HEARTBEAT_MS: u64 = 1_000;
/// How long a record stays valid without a refresh.
pub const NODE_TTL_MS: u64 = 5_000;
/// The largest control message, in bytes (an SDP plus framing).
pub const MAX_CONTROL_MESSAGE_BYTES: usize = 128 * 1024;

/// Signalling → node: one request, answered by a [`NodeMsg::Reply`] with the same `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    pub id: u64,
    pub op: ControlOp,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlOp {
    /// Adds a participant to a consultation (creating it on this node): their publisher
    /// and subscriber connections are made. `visit` is set for patients, so that leaving
    /// the consultation removes them.
    Join {
        consultation: ConsultationId,
        participant: ParticipantId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        visit: Option<VisitId>,
    },
    /// The browser's offer for its publisher connection; the reply carries the answer.
    Publish {
        participant: ParticipantId,
        sdp: String,
    },
    /// The browser's answer to the node's last subscriber offer.
    SubscriberAnswer {
        participant: ParticipantId,
        sdp: String,
    },
    /// A trickled candidate of the browser's side.
    Candidate {
        participant: ParticipantId,
        leg: MediaLeg,
        candidate: IceCandidate,
    },
    /// Removes one participant (their browser left the media or disconnected).
    Leave { participant: ParticipantId },
    /// Removes a patient's participants from a consultation they are no longer in.
    RemoveVisit {
        consultation: ConsultationId,
        visit: VisitId,
    },
    /// Removes everyone from a consultation that ended.
    EndConsultation { consultation: ConsultationId },
    /// A participant's browser lost its path to the node: its subscriber connection is
    /// offered again with new ICE credentials.
    RestartIce { participant: ParticipantId },
    /// What a participant's browser sends now, for the others in its consultation.
    MediaState {
        participant: ParticipantId,
        state: MediaState,
    },
    /// A browser's pre-call check: a publisher connection of its own, answered like a
    /// `publish`, that the node removes after [`PROBE_LIFETIME_MS`].
    Probe {
        participant: ParticipantId,
        sdp: String,
    },
    /// Takes the node out of service: it takes no new consultation at once, lets the
    /// ones it carries go on for up to `deadline_ms`, then moves whoever is left to
    /// another node (each told [`MediaEndReason::NodeMoved`]). Draining a draining node
    /// sets the deadline again.
    Drain { deadline_ms: u64 },
    /// Puts a draining node back into service (before it moved its calls, they stay).
    Resume,
    /// Whether the node sends a participant the others' video (`on`) or only their sound.
    ReceiveVideo {
        participant: ParticipantId,
        on: bool,
    },
}

impl ControlOp {
    /// A change of a participant's state (what it sends, whether it takes video): these
    /// must be applied in the order they were sent, each replacing the last.
    pub fn is_state(&self) -> bool {
        matches!(
            self,
            ControlOp::MediaState { .. } | ControlOp::ReceiveVideo { .. }
        )
    }
}

/// How long a pre-call check's connection lives on a node.
pub const PROBE_LIFETIME_MS: u64 = 30_000;

/// Node → signalling.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeMsg {
    /// The outcome of the request with this `id`.
    Reply { id: u64, outcome: ControlOutcome },
    /// An offer for a participant's subscriber connection, for their browser.
    SubscriberOffer {
        participant: ParticipantId,
        sdp: String,
    },
    /// A candidate of the node's side of a participant's connection.
    Candidate {
        participant: ParticipantId,
        leg: MediaLeg,
        candidate: IceCandidate,
    },
    /// A participant's publisher connection connected or failed.
    Connection {
        participant: ParticipantId,
        connected: bool,
    },
    /// What another participant (`stream`: the id of the media stream their tracks arrive
    /// in at this participant) sends now.
    PeerState {
        participant: ParticipantId,
        stream: String,
        state: MediaState,
    },
    /// The participant's browser should offer its publisher connection again (the codecs
    /// its consultation can receive changed).
    PublishRenegotiate { participant: ParticipantId },
    /// The participant's browser should send, of its simulcast video in media section
    /// `mid`, the layers named in `paused` (rids) only as thumbnails: none of its
    /// subscribers needs them.
    PublishLayers {
        participant: ParticipantId,
        mid: String,
        paused: Vec<String>,
    },
    /// A participant was removed by the node (consultation ended, patient moved, failure).
    Left {
        participant: ParticipantId,
        reason: MediaEndReason,
    },
    /// What the node measures of a participant's downlink, every few seconds.
    Link {
        participant: ParticipantId,
        figures: LinkFigures,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlOutcome {
    Done,
    /// The answer to a `publish`.
    Answer {
        sdp: String,
    },
    Failed {
        code: ErrorCode,
        message: String,
    },
}

/// A separate SFU node as it announces itself in the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRecord {
    pub id: NodeId,
    /// Where signalling opens the control websocket, e.g. `ws://10.0.0.5:7100/control`.
    pub control_url: String,
    /// Participants connected now: the load placement balances.
    pub participants: u32,
    pub consultations: u32,
    /// Set when the node is draining: it keeps its consultations but takes no new ones.
    #[serde(default)]
    pub draining: bool,
    /// Set once a draining node's deadline passed: it is moving its calls to other nodes,
    /// and nobody may join it, not even a consultation it carried.
    #[serde(default)]
    pub moving: bool,
    pub heartbeat_at: Timestamp,
    pub expires_at: Timestamp,
}

/// The Redis hash of node records (field: node id, value: [`NodeRecord`] as JSON).
pub const NODES_KEY: &str = "consult:sfu:nodes";
/// The Redis key of the control secret, when it is not configured: created by whichever
/// process needs it first, read by the others.
pub const CONTROL_SECRET_KEY: &str = "consult:sfu:control_secret";
