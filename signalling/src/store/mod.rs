//! Where state lives: the directory (clinics, staff), the live rooms, the audit log, and
//! the feed of events that every signalling instance delivers to its own connections.
//!
//! One trait, two implementations that pass one conformance suite (`tests/store.rs`):
//! - [`local::LocalStore`], the single-node default: rooms in memory; clinics, staff and the
//!   audit log in a SQLite file so they survive restarts and the admin commands can write
//!   them while the server runs.
//! - [`redis::RedisStore`]: everything in Redis, events over Redis pub/sub, so several
//!   signalling instances share one state and any of them can restart.
//!
//! Rooms are written by optimistic concurrency: [`Store::commit`] writes new rooms only if
//! their versions are still the ones that were read, atomically with their events, their
//! audit entries and the visit index; otherwise it answers [`StoreError::Conflict`] and the
//! caller re-reads and re-decides. Of two conflicting actions exactly one wins.

use std::sync::Arc;

use async_trait::async_trait;
use protocol::{
    AuditEntry, CallFigures, CallQualityView, CallRole, ClinicId, ConsultationId, InviteId,
    ParticipantId, Role, SessionId, SessionQuality, StaffId, Timestamp, VisitId,
};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::room::{ClinicRoom, Event, Visit};

pub mod local;
pub mod redis;

/// A clinic in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Clinic {
    pub id: ClinicId,
    pub name: String,
    /// Whether anyone with the clinic's link may enter, or only holders of an invite.
    pub open_link: bool,
}

/// A member of staff in the directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffRecord {
    pub username: StaffId,
    pub display_name: String,
    pub role: Role,
    pub clinics: Vec<ClinicId>,
    /// An argon2 PHC string; never the password. Empty for someone who signs in only
    /// through the identity provider.
    pub password_hash: String,
    /// Set for someone whose record the identity provider keeps (OpenID Connect): their
    /// `sub` there. Their role and clinics follow their groups at the provider, and no
    /// password signs them in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp_subject: Option<String>,
}

/// A staff sign-in, kept so it can be ended: every request checks that its token's session
/// is still here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    pub id: SessionId,
    pub staff: StaffId,
    pub started_at: Timestamp,
    /// The absolute end: refreshing never takes a token past it.
    pub ends_at: Timestamp,
    /// For a sign-in through the identity provider: what lets a refresh ask it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idp: Option<IdpGrant>,
}

/// A sign-in's standing at the identity provider, kept with the session (never sent to
/// a browser).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdpGrant {
    /// The person's `sub` at the provider.
    pub subject: String,
    /// The provider's refresh token (`None` if it gave none: the sign-in then lasts one
    /// staff token).
    pub refresh_token: Option<crate::auth::oidc::Secret>,
    /// When the provider last confirmed the person's groups.
    pub checked_at: Timestamp,
}

/// A personal invite, as issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteRecord {
    pub id: InviteId,
    pub clinic: ClinicId,
    pub appointment: Option<String>,
    /// The audit label of who issued it.
    pub issued_by: String,
    pub issued_at: Timestamp,
    pub expires_at: Timestamp,
}

/// An invite and what became of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteState {
    pub record: InviteRecord,
    /// The visit it admitted, once someone joined with it.
    pub visit: Option<VisitId>,
    pub revoked: bool,
}

/// Binds an invite to the visit it admits, as part of a [`Commit`]: only if it is still
/// bound to `expected` (nobody, or the same patient's ended visit) and not revoked;
/// otherwise the commit writes nothing and fails with [`StoreError::InviteTaken`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InviteClaim {
    pub invite: InviteId,
    pub expected: Option<VisitId>,
    pub visit: VisitId,
}

/// How long an expired invite is kept, so that its link is answered "expired" rather
/// than "not valid"; pruned after.
pub const EXPIRED_INVITE_KEPT_MS: u64 = 24 * 3600 * 1000;

/// A value with the version it was read at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned<T> {
    /// 0 means "did not exist".
    pub version: u64,
    pub value: T,
}

/// An event as delivered: the room and version it came from let a connection that has
/// just been sent a snapshot skip the events that the snapshot already contains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub clinic: ClinicId,
    pub version: u64,
    pub event: Event,
}

/// What the event feed carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed {
    /// Shared: the broadcast channel clones it for every receiver.
    Event(std::sync::Arc<Published>),
    /// Events may have been missed (the store's event connection was lost and is back):
    /// every connection must resynchronise from a fresh snapshot.
    Resync,
}

/// One room to write in a [`Commit`].
#[derive(Debug, Clone)]
pub struct RoomWrite {
    /// The version that was read (0 when the room did not exist yet).
    pub expected: u64,
    pub room: ClinicRoom,
    /// Published with version `expected + 1` once the commit succeeds.
    pub events: Vec<Event>,
}

/// Everything one action changes, written all or nothing.
#[derive(Debug, Clone, Default)]
pub struct Commit {
    pub rooms: Vec<RoomWrite>,
    /// Where each touched visit now is (`None`: the visit ended). Applied in order.
    pub index: Vec<(VisitId, Option<ClinicId>)>,
    pub audit: Vec<AuditEntry>,
    /// The invite this commit's new visit entered with.
    pub claim: Option<InviteClaim>,
}

/// A new visit appended to a room that exists: written with its index entry, audit
/// entries and events (published with the room's new version), without rewriting the room
/// and without a version check, so arrivals never conflict with each other or with any
/// other change. The store gives the visit its place (`seq`) among same-millisecond
/// arrivals, in append order.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub clinic: ClinicId,
    pub visit: Visit,
    pub events: Vec<Event>,
    pub audit: Vec<AuditEntry>,
    /// The invite this new visit entered with, bound as in [`Commit::claim`].
    pub claim: Option<InviteClaim>,
}

/// What [`Store::append_arrival`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Appended {
    Appended,
    /// The clinic's room has never been written: nothing was written; the caller creates
    /// it with a [`Commit`] instead.
    NoRoom,
}

/// One open connection's presence: a patient's page is online while at least one of
/// these is held for its visit and not expired. `holder` names the instance and the
/// connection, so two tabs of one patient, or one on each instance, hold two leases.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lease {
    pub clinic: ClinicId,
    pub visit: VisitId,
    pub holder: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A room changed since it was read; re-read and decide again.
    #[error("the room changed concurrently")]
    Conflict,
    /// The commit's invite was claimed or revoked since it was read.
    #[error("the invite was taken concurrently")]
    InviteTaken,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
}

/// How many events a subscriber may fall behind before it must resynchronise.
pub const EVENT_BUFFER: usize = 65_536;

#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug + 'static {
    // Directory.
    /// Creates or replaces a clinic.
    async fn put_clinic(&self, clinic: &Clinic) -> Result<(), StoreError>;
    async fn clinic(&self, id: &ClinicId) -> Result<Option<Clinic>, StoreError>;
    /// Every clinic, ordered by id.
    async fn clinics(&self) -> Result<Vec<Clinic>, StoreError>;
    /// Creates or replaces a member of staff.
    async fn put_staff(&self, staff: &StaffRecord) -> Result<(), StoreError>;
    async fn staff(&self, id: &StaffId) -> Result<Option<StaffRecord>, StoreError>;
    /// Every member of staff, ordered by user name.
    async fn staff_list(&self) -> Result<Vec<StaffRecord>, StoreError>;

    // Rooms.
    /// A room as last committed. Shared, not copied: reading one visit's status costs the
    /// same in a room of 5,000 as in a room of 5 (a reconnection storm reads it once per
    /// returning page); a change starts from [`Arc::unwrap_or_clone`].
    async fn room(
        &self,
        clinic: &ClinicId,
    ) -> Result<Option<Versioned<Arc<ClinicRoom>>>, StoreError>;
    /// Which clinic's room a live visit is in.
    async fn locate(&self, visit: VisitId) -> Result<Option<ClinicId>, StoreError>;
    /// Writes every room of the commit if none changed since read, with its index changes,
    /// audit entries and events, atomically; else [`StoreError::Conflict`] and nothing.
    async fn commit(&self, commit: Commit) -> Result<(), StoreError>;

    /// Appends a new visit to an existing room; see [`Arrival`]. Fails with
    /// [`StoreError::InviteTaken`] (writing nothing) as [`Store::commit`] does.
    async fn append_arrival(&self, arrival: Arrival) -> Result<Appended, StoreError>;

    // Presence.
    /// Holds (or renews) each lease until `until`; a lease not renewed by then expires,
    /// as those of a crashed instance do.
    async fn hold_presence(&self, leases: &[Lease], until: Timestamp) -> Result<(), StoreError>;
    /// Lets go of leases (their connections closed).
    async fn release_presence(&self, leases: &[Lease]) -> Result<(), StoreError>;
    /// The visits of `clinic` with a lease held beyond `now`.
    async fn online(
        &self,
        clinic: &ClinicId,
        now: Timestamp,
    ) -> Result<std::collections::BTreeSet<VisitId>, StoreError>;

    /// The events of every commit (from any instance, in Redis mode), in commit order per
    /// room. A receiver that lags, or is sent [`Feed::Resync`], must resynchronise its
    /// connections.
    fn subscribe(&self) -> broadcast::Receiver<Feed>;

    // Staff sessions.
    /// Records a new session (and forgets sessions that have ended).
    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError>;
    /// A session that has not been ended (it may have passed `ends_at`: check).
    async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError>;
    /// Ends one session; `false` if there was none.
    async fn end_session(&self, id: SessionId) -> Result<bool, StoreError>;
    /// Ends every session of a member of staff; how many there were.
    async fn end_sessions_of(&self, staff: &StaffId) -> Result<usize, StoreError>;
    /// Every session that lasts beyond `now`, oldest first.
    async fn sessions(&self, now: Timestamp) -> Result<Vec<SessionRecord>, StoreError>;

    // Invites.
    /// Records a new invite (and forgets invites long expired).
    async fn put_invite(&self, invite: &InviteRecord) -> Result<(), StoreError>;
    async fn invite(&self, id: InviteId) -> Result<Option<InviteState>, StoreError>;
    /// A clinic's invites that expire after `now`, oldest first.
    async fn invites(
        &self,
        clinic: &ClinicId,
        now: Timestamp,
    ) -> Result<Vec<InviteState>, StoreError>;
    /// Revokes an invite; `false` if there is no such invite.
    async fn revoke_invite(&self, id: InviteId) -> Result<bool, StoreError>;

    // Audit log.
    /// Records entries that come with no room change (sign-in, directory changes).
    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError>;
    /// The newest `limit` entries, oldest first.
    async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;

    /// The secret that signs tokens, shared by every instance on this store: the stored
    /// one, or `candidate` if none was stored yet (first start).
    async fn token_secret(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError>;

    /// Whether the store answers (for `/readyz`).
    async fn ping(&self) -> Result<(), StoreError>;

    // Call quality (the support desk's summary).
    /// Keeps a media session's latest report (replacing its last), and forgets calls whose
    /// last report is older than [`protocol::CALL_QUALITY_KEPT_DAYS`].
    async fn put_call_quality(&self, report: &QualityReport) -> Result<(), StoreError>;
    /// A clinic's calls with a report at or after `since`: every report of each, grouped
    /// by call ([`group_call_quality`]).
    async fn call_quality(
        &self,
        clinic: &ClinicId,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CallQualityView>, StoreError>;

    /// The separate SFU nodes that announced themselves here, live or expired (compare
    /// `expires_at` with the time). Only the Redis store has any: a single node runs its
    /// SFU in process.
    async fn media_nodes(&self) -> Result<Vec<protocol::control::NodeRecord>, StoreError>;
}

/// One media session's latest report of how its call goes, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QualityReport {
    pub clinic: ClinicId,
    pub consultation: ConsultationId,
    /// The media session (its participant on the SFU): each session is one line.
    pub session: ParticipantId,
    pub role: CallRole,
    pub started_at: Timestamp,
    pub updated_at: Timestamp,
    pub figures: CallFigures,
}

/// How long a call's quality is kept after its last report, in milliseconds.
pub const CALL_QUALITY_KEPT_MS: u64 = protocol::CALL_QUALITY_KEPT_DAYS * 24 * 3600 * 1000;

/// Reports grouped by call: the `limit` calls reported last, newest first, each with its
/// sessions in the order they started.
pub fn group_call_quality(reports: Vec<QualityReport>, limit: usize) -> Vec<CallQualityView> {
    let mut calls: std::collections::HashMap<ConsultationId, CallQualityView> =
        std::collections::HashMap::new();
    for r in reports {
        let call = calls.entry(r.consultation).or_insert(CallQualityView {
            consultation: r.consultation,
            started_at: r.started_at,
            updated_at: r.updated_at,
            sessions: Vec::new(),
        });
        call.started_at = call.started_at.min(r.started_at);
        call.updated_at = call.updated_at.max(r.updated_at);
        call.sessions.push(SessionQuality {
            role: r.role,
            started_at: r.started_at,
            updated_at: r.updated_at,
            figures: r.figures,
        });
    }
    let mut calls: Vec<CallQualityView> = calls.into_values().collect();
    for c in &mut calls {
        c.sessions.sort_by_key(|s| (s.started_at, s.updated_at));
    }
    calls.sort_by_key(|c| std::cmp::Reverse((c.updated_at, c.consultation.0)));
    calls.truncate(limit);
    calls
}
