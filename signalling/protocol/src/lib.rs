//! Every message that crosses a process boundary: the browser websocket, the REST API and
//! the SFU control channel ([`control`]). Serde types only; no behaviour beyond validation
//! of ids.
//!
//! Each type has a golden JSON fixture under `fixtures/` that the tests round-trip and that
//! the web client's tests read, so a change of wire format shows up as a fixture diff.

pub mod control;
mod ids;

pub use ids::{
    ClinicId, ConsultationId, IdError, InviteId, MAX_SLUG_LEN, NodeId, ParticipantId, SessionId,
    StaffId, Timestamp, VisitId,
};
use serde::{Deserialize, Serialize};

/// The largest websocket message a client may send, in bytes (an SDP offer with audio,
/// video and a screen share is 8 to 14 KB from Chromium).
pub const MAX_CLIENT_MESSAGE_BYTES: usize = 64 * 1024;
/// The longest SDP a browser may send, in bytes.
pub const MAX_SDP_BYTES: usize = 48 * 1024;
/// The longest ICE candidate line a browser may send, in bytes.
pub const MAX_CANDIDATE_BYTES: usize = 512;
/// The longest display name a patient may give, in characters.
pub const MAX_NAME_CHARS: usize = 100;
/// The longest free-text field (patient details, staff messages), in characters.
pub const MAX_TEXT_CHARS: usize = 1000;

// ---------------------------------------------------------------------------------------
// Websocket: browser -> server
// ---------------------------------------------------------------------------------------

/// A message from a browser over the websocket. The first must be `hello`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMsg {
    /// Authenticates the connection with a staff token or a visit credential.
    Hello { token: String },
    /// An action; answered by `ack` or `error` carrying the same `req`.
    Command { req: u32, command: Command },

    // Media: one media session per connection, relayed to the consultation's SFU node.
    /// Joins the media of a consultation the caller is in (a patient: their own visit's;
    /// staff: a consultation they lead). Answered by `media_joined`, then the browser
    /// sends `publish_offer`; the SFU's offers for what the browser receives follow as
    /// `subscriber_offer`.
    JoinMedia { consultation: ConsultationId },
    /// The browser's offer for its publisher connection (what it sends: camera,
    /// microphone, screen); answered by `publish_answer`.
    PublishOffer { sdp: String },
    /// The browser's answer to the last `subscriber_offer`.
    SubscriberAnswer { sdp: String },
    /// One ICE candidate of the browser's side of a connection (trickle ICE).
    IceCandidate {
        leg: MediaLeg,
        candidate: IceCandidate,
    },
    /// Leaves the media session; the visit itself goes on.
    LeaveMedia,
    /// What this browser sends now (microphone on, a picture, a shared screen), for the
    /// others in the consultation to see; sent after each `media_joined` and on every change.
    MediaState(MediaState),
    /// How this browser's media reaches the SFU now (its selected ICE candidate pair), for
    /// staff to see; sent once connected and whenever it changes.
    MediaPath { path: MediaPath },
    /// The browser's connection to the SFU failed or its network changed: answered by
    /// `ice_servers` (fresh TURN credentials), then the SFU offers its subscriber
    /// connection again with new ICE credentials (a `subscriber_offer`). The browser
    /// restarts its publisher connection itself, with a `publish_offer` made with
    /// `iceRestart` once it has the new servers. The media session and the consultation
    /// go on.
    RestartIce,
    /// After the websocket dropped and was opened again (a new network, a lost link): takes
    /// back the media session the last connection left, if it is less than a few seconds
    /// old. Answered by `media_resumed` (then restart ICE), or an error (then join again).
    ResumeMedia { consultation: ConsultationId },
    /// Whether the SFU sends this browser the others' video (`on`, the default) or only
    /// their sound: a person whose link cannot carry video turns it off (with their own
    /// camera), and the call goes on in sound only for them.
    ReceiveVideo { on: bool },
    /// How this browser's media session has gone so far, for the clinic's support desk:
    /// sent every few seconds while it lasts (each report replaces the last of the session).
    CallQuality(CallFigures),
}

/// How one person's media session went, as their browser measured it: no media, no names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallFigures {
    /// How long the session has lasted, in seconds.
    pub seconds: u32,
    /// How its media reached the SFU last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<MediaPath>,
    /// The round trip to the SFU, in milliseconds, last measured.
    pub rtt_ms: u32,
    /// Packets lost on the way to the browser, per thousand received.
    pub loss_permille: u16,
    /// What it received and sent, in kbit/s on average.
    pub recv_kbps: u32,
    pub send_kbps: u32,
    /// Video freezes it saw, and how long they lasted in all (milliseconds).
    pub freezes: u32,
    pub freeze_ms: u32,
    /// Sound it had to conceal (lost or late), per thousand samples.
    pub concealed_permille: u16,
    /// How long it was in sound only (milliseconds).
    pub audio_only_ms: u32,
}

impl CallFigures {
    /// Whether the figures can be true: shares are at most a thousand per thousand.
    pub fn valid(&self) -> bool {
        self.loss_permille <= 1000 && self.concealed_permille <= 1000
    }
}

/// Who a line of a call's quality summary is, without a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallRole {
    Patient,
    Clinician,
}

/// How a browser's media travels to the SFU: straight over UDP or TCP (ICE-TCP), or through
/// the TURN relay, reached over UDP, TCP or TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaPath {
    Udp,
    Tcp,
    TurnUdp,
    TurnTcp,
    TurnTls,
}

/// What a participant sends: `audio` the microphone is on (not muted); `video` a picture
/// goes out (camera or screen); `screen` that picture is a shared screen. Someone who never
/// said counts as audio and video on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaState {
    pub audio: bool,
    pub video: bool,
    #[serde(default)]
    pub screen: bool,
}

impl Default for MediaState {
    /// Audio and video on, no screen: what a participant is assumed to send until it says.
    fn default() -> Self {
        Self {
            audio: true,
            video: true,
            screen: false,
        }
    }
}

/// Which of a participant's two peer connections: the one the browser publishes on, or
/// the one the SFU sends everyone else's tracks on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaLeg {
    Publisher,
    Subscriber,
}

/// An ICE candidate as the browser's `RTCIceCandidate.toJSON()` gives it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    /// The `candidate:...` line; empty marks the end of candidates.
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A STUN or TURN server for the browser's `RTCPeerConnection` (`iceServers`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Why a media session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaEndReason {
    /// The browser asked (`leave_media`) or its connection closed.
    Left,
    /// The participant left the consultation (sent back to waiting, transferred, removed).
    RemovedFromConsultation,
    /// The consultation ended.
    ConsultationEnded,
    /// The SFU node stopped answering; joining again places the consultation anew.
    NodeLost,
    /// The SFU node is being taken out of service and moved this call off: joining again
    /// places the consultation on another node.
    NodeMoved,
    /// The media connection failed (ICE or DTLS); joining again may work.
    ConnectionFailed,
}

/// Every state-changing action, over the websocket or `POST /api/commands`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// Staff: a message shown to one waiting patient.
    SendMessage {
        clinic: ClinicId,
        visit: VisitId,
        text: String,
    },
    /// Staff: admit a waiting patient to a clinician's consultation: a new one, or an
    /// existing one of that clinician (to bring in a second person).
    Admit {
        clinic: ClinicId,
        visit: VisitId,
        clinician: StaffId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        consultation: Option<ConsultationId>,
    },
    /// Clinician: admit the longest-waiting patient who is for them or for anyone.
    AdmitNext { clinic: ClinicId },
    /// Staff: put a patient in a consultation back in the waiting room, keeping their place.
    ReturnToWaiting { clinic: ClinicId, visit: VisitId },
    /// Staff: move a visit to another clinic's waiting room or to a colleague's queue.
    Transfer {
        clinic: ClinicId,
        visit: VisitId,
        to: TransferTarget,
    },
    /// Staff: remove a visit, e.g. a no-show.
    Remove { clinic: ClinicId, visit: VisitId },
    /// Staff: end a consultation; every visit in it ends.
    EndConsultation {
        clinic: ClinicId,
        consultation: ConsultationId,
    },
    /// Staff: switch a call to sound only (`on`) or back to video: every page in it turns
    /// its camera off and receives no video until switched back.
    SetAudioOnly {
        clinic: ClinicId,
        consultation: ConsultationId,
        on: bool,
    },
    /// Patient: leave the waiting room or the call; the visit ends.
    Leave,
}

impl Command {
    /// Every command's `type`.
    pub const KINDS: [&'static str; 9] = [
        "send_message",
        "admit",
        "admit_next",
        "return_to_waiting",
        "transfer",
        "remove",
        "end_consultation",
        "set_audio_only",
        "leave",
    ];

    /// The command's `type`, as on the wire.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::SendMessage { .. } => "send_message",
            Command::Admit { .. } => "admit",
            Command::AdmitNext { .. } => "admit_next",
            Command::ReturnToWaiting { .. } => "return_to_waiting",
            Command::Transfer { .. } => "transfer",
            Command::Remove { .. } => "remove",
            Command::EndConsultation { .. } => "end_consultation",
            Command::SetAudioOnly { .. } => "set_audio_only",
            Command::Leave => "leave",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum TransferTarget {
    /// Another clinic's waiting room; the patient keeps their arrival time.
    Clinic { clinic: ClinicId },
    /// A colleague in the same clinic: back to waiting, marked for that clinician.
    Clinician { clinician: StaffId },
}

// ---------------------------------------------------------------------------------------
// Websocket: server -> browser
// ---------------------------------------------------------------------------------------

/// A message from the server over the websocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ServerMsg {
    /// The answer to `hello`: who the connection is.
    Welcome { session: Session },
    /// A command with this `req` was carried out.
    Ack { req: u32 },
    /// A message was refused; nothing changed. `req` is set when it answers a command.
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        req: Option<u32>,
        code: ErrorCode,
        message: String,
    },

    // Staff only: one clinic's room, whole and then as changes.
    /// The whole room of a clinic, sent on connect; later changes follow as updates.
    ClinicSnapshot {
        clinic: ClinicView,
        visits: Vec<VisitView>,
        consultations: Vec<ConsultationView>,
    },
    /// A visit arrived or changed (idempotent: carries the whole visit).
    VisitUpdated { clinic: ClinicId, visit: VisitView },
    /// Patients' pages came online (one or more open) or went offline (none open, or
    /// their server stopped renewing their presence), all at once: a whole instance's
    /// patients may change together. Changes only `online`; the `online` of a later
    /// `visit_updated` is as current.
    VisitPresence {
        clinic: ClinicId,
        online: Vec<VisitId>,
        offline: Vec<VisitId>,
    },
    /// A visit left this clinic's room.
    VisitClosed {
        clinic: ClinicId,
        visit: VisitId,
        reason: VisitEndReason,
    },
    /// A consultation started or changed (idempotent).
    ConsultationUpdated {
        clinic: ClinicId,
        consultation: ConsultationView,
    },
    ConsultationEnded {
        clinic: ClinicId,
        consultation: ConsultationId,
    },

    // Patient only: their own visit and nothing else.
    /// The patient's own status; sent on connect and on every change.
    PatientStatus { status: PatientState },
    /// A message from staff to this patient.
    StaffMessage { text: String, sent_at: Timestamp },

    // Media: answers and offers of this connection's media session.
    /// The media session exists: create the peer connections with these ICE servers and
    /// send `publish_offer`.
    MediaJoined {
        consultation: ConsultationId,
        ice_servers: Vec<IceServer>,
    },
    /// `resume_media` took back the session: the peer connections go on (restart ICE).
    MediaResumed { consultation: ConsultationId },
    /// The answer to `restart_ice`: the ICE servers to gather with from now on, with a
    /// TURN credential minted now (the one given at `media_joined` may have expired).
    IceServers { ice_servers: Vec<IceServer> },
    /// The SFU's answer to `publish_offer`.
    PublishAnswer { sdp: String },
    /// The SFU offers what the browser receives (everyone else's tracks); answer with
    /// `subscriber_answer`. Sent again whenever someone joins or leaves.
    SubscriberOffer { sdp: String },
    /// The SFU has applied the last `subscriber_answer`: it can answer the browser's ICE
    /// checks now. The page sends its answer before applying it locally and applies it at
    /// this, so that its browser checks the path only once the SFU can answer: a check
    /// answered late costs the connection up to 2.5 s (Chrome takes the late answers'
    /// delay for round trips, and then nominates the path only at its slow ping interval).
    SubscriberAnswerApplied,
    /// One ICE candidate of the SFU's side of a connection.
    IceCandidate {
        leg: MediaLeg,
        candidate: IceCandidate,
    },
    /// Whether the browser's media reaches the SFU (its publisher connection's state).
    MediaConnection { connected: bool },
    /// The media session is over; `reason` says whether to join again.
    MediaEnded { reason: MediaEndReason },
    /// What another participant of the consultation sends now; their tracks arrive in the
    /// `MediaStream` whose id is `stream`. Sent when it changes, and for everyone already
    /// there when this browser joins (before or after their tracks).
    PeerMediaState {
        stream: String,
        audio: bool,
        video: bool,
        screen: bool,
    },
    /// The SFU asks for a new `publish_offer` on the publisher connection: the video codecs
    /// everyone in the consultation can receive changed, and its answer will pick another.
    PublishRenegotiate,
    /// The SFU asks the browser to send, of its simulcast video in media section `mid`,
    /// the layers named in `paused` (rids) only as thumbnails, the others as set up:
    /// nobody it sends to needs them now (in a call of two, the one who receives it takes
    /// its full layer, at the rate their link carries). An empty `paused`: every layer
    /// as set up again.
    PublishLayers { mid: String, paused: Vec<String> },
    /// What the SFU measures of this browser's downlink, every few seconds while media
    /// flows to it: its estimate of the bandwidth (from the browser's congestion
    /// feedback), the round trip and the share of packets lost.
    MediaLink(LinkFigures),
}

/// The SFU's figures for one browser's downlink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkFigures {
    /// The estimated bandwidth toward the browser, in kbit/s.
    pub down_kbps: u32,
    /// The round trip, in milliseconds (0: not measured yet).
    pub rtt_ms: u32,
    /// Packets lost on the way to the browser, in percent (rounded).
    pub loss_pct: u8,
}

/// Who a websocket or token belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Session {
    Staff(StaffSession),
    Patient {
        visit: VisitId,
        clinic: ClinicId,
        clinic_name: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaffSession {
    pub username: StaffId,
    pub display_name: String,
    pub role: Role,
    pub clinics: Vec<ClinicId>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
    Reception,
    Clinician,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicView {
    pub id: ClinicId,
    pub name: String,
}

/// A visit as staff of its clinic see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VisitView {
    pub id: VisitId,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<String>,
    /// When the patient first arrived; their place in the queue follows from it.
    pub arrived_at: Timestamp,
    pub status: VisitStatus,
    /// Whether the patient's browser is connected now.
    pub online: bool,
    /// Set when the visit was transferred to one clinician.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub for_clinician: Option<StaffId>,
    /// How the patient's media reaches the SFU in their consultation, as their browser
    /// last said; absent until it says, and when not in a call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_path: Option<MediaPath>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum VisitStatus {
    Waiting,
    InConsultation { consultation: ConsultationId },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsultationView {
    pub id: ConsultationId,
    pub clinician: StaffId,
    pub started_at: Timestamp,
    pub visits: Vec<VisitId>,
    /// How the clinician's media reaches the SFU, as their browser last said.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinician_path: Option<MediaPath>,
    /// Staff switched the call to sound only.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub audio_only: bool,
}

/// What a patient is told about their own visit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum PatientState {
    /// In the waiting room; the clinic knows they are here.
    Waiting {
        clinic_name: String,
        waiting_since: Timestamp,
    },
    /// Admitted: the clinician is joining; media connects next. `audio_only`: staff
    /// switched the call to sound only.
    Admitted {
        consultation: ConsultationId,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        audio_only: bool,
    },
    /// The visit is over.
    Ended { reason: VisitEndReason },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VisitEndReason {
    /// The patient left.
    Left,
    /// Staff removed the visit.
    Removed,
    /// The consultation ended.
    ConsultationEnded,
    /// Moved to another clinic's waiting room (staff of the old clinic see this).
    Transferred,
}

/// A stable, machine-readable reason a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, or not the expected shape.
    BadRequest,
    /// A well-formed message of a type this server does not know.
    UnknownMessage,
    /// A field failed validation (too long, empty, ...).
    InvalidInput,
    MessageTooLarge,
    RateLimited,
    TooManyConnections,
    /// No token, or a token that is malformed or wrongly signed.
    Unauthenticated,
    TokenExpired,
    /// The caller may not do this.
    Forbidden,
    WrongCredentials,
    NotFound,
    AlreadyExists,
    /// The visit is already in a consultation.
    AlreadyAdmitted,
    /// The visit is not in the waiting room.
    NotWaiting,
    /// The visit is not in a consultation.
    NotInConsultation,
    /// Nobody is waiting.
    QueueEmpty,
    /// The visit has ended.
    VisitEnded,
    /// The clinic does not accept patients by its open link.
    ClinicClosed,
    InviteInvalid,
    InviteExpired,
    /// Too many concurrent changes; try again.
    Conflict,
    /// The server cannot serve now (store unreachable, shutting down).
    Unavailable,
    Internal,
    /// Someone has already joined with this personal invite.
    InviteUsed,
    /// The clinic withdrew this personal invite.
    InviteRevoked,
    /// This sign-in was ended (signed out, password or assignment changed, or ended by an
    /// administrator): sign in again.
    SessionEnded,
}

// ---------------------------------------------------------------------------------------
// REST
// ---------------------------------------------------------------------------------------

/// The body of every non-2xx REST answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// `POST /api/staff/sign-in`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInRequest {
    pub username: String,
    pub password: String,
}

/// `GET /api/staff/sign-in-options`: how staff may sign in here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInOptions {
    /// "Sign in with {oidc}": the identity provider's name, when staff may sign in there.
    pub oidc: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignInResponse {
    pub token: String,
    pub expires_at: Timestamp,
    pub session: StaffSession,
}

/// `GET /api/clinics/{clinic}`: what a patient's page needs before entering.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicEntryInfo {
    pub id: ClinicId,
    pub name: String,
    /// Whether anyone with the clinic's link may enter (otherwise an invite is needed).
    pub open_link: bool,
}

/// `POST /api/visits`: a patient enters a waiting room by open link or invite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnterRequest {
    pub entry: Entry,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    OpenLink {
        clinic: ClinicId,
    },
    /// A personal invite admits one patient. `previous`: the visit credential this browser
    /// was given with the same invite, which lets the same patient back in (their visit
    /// if it is still on, a new one if it ended); anyone else is refused.
    Invite {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        previous: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnterResponse {
    pub visit: VisitId,
    /// Resumes this visit (websocket `hello`) and nothing else.
    pub visit_token: String,
    pub expires_at: Timestamp,
}

/// `GET /api/media-check`: what a browser needs for its pre-call check connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaCheckInfo {
    pub ice_servers: Vec<IceServer>,
}

/// `POST /api/media-check`: the offer of a short-lived test connection to a media server
/// (before entering a waiting room, so no credential); answered by [`MediaCheckAnswer`].
/// The browser sends its candidates in the offer (it waits for gathering).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaCheckOffer {
    pub sdp: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MediaCheckAnswer {
    pub sdp: String,
}

/// `GET /api/clinics/{clinic}/clinicians`: who a patient can be admitted to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClinicianView {
    pub username: StaffId,
    pub display_name: String,
}

/// `POST /api/admin/clinics`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClinic {
    pub id: ClinicId,
    pub name: String,
    pub open_link: bool,
}

/// `POST /api/admin/staff`: creates or replaces a member of staff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStaff {
    pub username: StaffId,
    pub display_name: String,
    pub role: Role,
    pub clinics: Vec<ClinicId>,
    pub password: String,
}

/// `POST /api/admin/invites`: a personal link that admits one patient. It expires a day
/// after `appointment_at` (or a day after it is issued), or sooner with `valid_for_secs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssueInvite {
    pub clinic: ClinicId,
    /// A reference shown to staff next to the patient's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<String>,
    /// When the appointment is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_for_secs: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteResponse {
    pub id: InviteId,
    pub token: String,
    /// The link to send: the token travels in its fragment (`/i#...`), which browsers
    /// never send to a server, so it reaches no server or proxy log.
    pub url: String,
    pub expires_at: Timestamp,
}

/// `GET /api/clinics/{clinic}/invites`: the clinic's invites that have not expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteView {
    pub id: InviteId,
    pub clinic: ClinicId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<String>,
    pub issued_by: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
    /// Someone has joined with it.
    pub used: bool,
    pub revoked: bool,
}

/// `GET /api/admin/sessions`: a live staff sign-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionView {
    pub id: SessionId,
    pub username: StaffId,
    pub signed_in_at: Timestamp,
    /// The latest a refresh can take it to; it must be signed in again after.
    pub ends_at: Timestamp,
}

/// `GET /api/clinics/{clinic}/call-quality`: how a call went, per media session of each
/// person in it (newest calls first; kept for [`CALL_QUALITY_KEPT_DAYS`] days).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CallQualityView {
    pub consultation: ConsultationId,
    /// When its first media session reported.
    pub started_at: Timestamp,
    /// When the last report came.
    pub updated_at: Timestamp,
    pub sessions: Vec<SessionQuality>,
}

/// One person's media session in a call's quality summary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuality {
    pub role: CallRole,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub figures: CallFigures,
}

/// How long call quality summaries are kept.
pub const CALL_QUALITY_KEPT_DAYS: u64 = 30;

/// One line of the audit log (`GET /api/admin/audit`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditEntry {
    pub at: Timestamp,
    /// `staff:<username>`, `patient:<visit>` or `system`.
    pub actor: String,
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clinic: Option<ClinicId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visit: Option<VisitId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consultation: Option<ConsultationId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}
