//! The shell around the room state machine: checks who is asking, loads rooms from the
//! store, applies one operation, and commits the result; on a conflict it re-reads and
//! decides again, so of two conflicting actions exactly one succeeds and the other gets
//! the answer the new state gives ("already admitted"). Used by the REST API, the
//! websocket and the command line alike.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use protocol::NodeId;
use protocol::control::ControlOp;
use protocol::{
    AuditEntry, ClinicEntryInfo, ClinicId, ConsultationId, CreateClinic, CreateStaff, EnterRequest,
    EnterResponse, Entry, InviteId, InviteResponse, InviteView, IssueInvite, MAX_NAME_CHARS,
    MAX_TEXT_CHARS, MediaPath, Role, ServerMsg, Session, Timestamp, VisitId,
};

use crate::auth::{
    self, Action, AuthError, Keys, Principal, StaffClaims, Target, authorize, may_ever,
};
use crate::error::AppError;
use crate::media::{Link, Media};
use crate::metrics::{Metrics, StoreOp};

mod nodes;
use crate::room::{ClinicRoom, Consultation, Ctx, NewVisit, Outcome, VisitState};
use crate::store::{
    Appended, Arrival, Clinic, Commit, InviteClaim, InviteRecord, RoomWrite, StaffRecord, Store,
    StoreError,
};
pub use nodes::MAX_DRAIN;

mod commands;
mod identity;
mod quality;

use identity::Guard;
pub use identity::{FREE_FAILURES, MAX_BACKOFF_SECS, OidcRefusal, WAITING_PER_CHECK, backoff_secs};

/// How often a conflicting change is retried before the caller is told to try again.
const MAX_ATTEMPTS: usize = 32;

/// How long an invite lasts after its appointment (or, without one, after it is issued),
/// unless it is given less.
pub const INVITE_GRACE_SECS: u64 = 24 * 3600;
/// The longest an invite may last after it is issued, when it names no appointment time.
pub const MAX_INVITE_SECS: u64 = 7 * 24 * 3600;
/// How far ahead an appointment may be.
pub const MAX_APPOINTMENT_AHEAD_SECS: u64 = 90 * 24 * 3600;

/// When an invite issued at `now` expires: a day after the appointment (or after `now`),
/// or `valid_for_secs` after `now` if that is sooner.
pub fn invite_expiry(
    now: Timestamp,
    appointment_at: Option<Timestamp>,
    valid_for_secs: Option<u64>,
) -> Result<Timestamp, AppError> {
    let ms = |secs: u64| secs.saturating_mul(1000);
    let latest = match appointment_at {
        Some(at) => {
            if at.0 > now.0.saturating_add(ms(MAX_APPOINTMENT_AHEAD_SECS)) {
                return Err(AppError::Invalid(
                    "the appointment must be within the next 90 days".into(),
                ));
            }
            at.saturating_add_ms(ms(INVITE_GRACE_SECS))
        }
        None => now.saturating_add_ms(ms(INVITE_GRACE_SECS)),
    };
    if latest <= now {
        return Err(AppError::Invalid(
            "that appointment was more than a day ago".into(),
        ));
    }
    match valid_for_secs {
        None => Ok(latest),
        Some(0) => Err(AppError::Invalid(
            "an invite must be valid for at least 1 second".into(),
        )),
        Some(s) if appointment_at.is_none() && s > MAX_INVITE_SECS => Err(AppError::Invalid(
            "an invite without an appointment time lasts at most 7 days".into(),
        )),
        Some(s) => Ok(latest.min(now.saturating_add_ms(ms(s)))),
    }
}

/// Lifetimes of the tokens the service issues.
#[derive(Debug, Clone, Copy)]
pub struct TokenLifetimes {
    /// One staff token; refreshed before it runs out.
    pub staff: Duration,
    /// A staff sign-in: refreshing never takes a token past it.
    pub session: Duration,
    pub visit: Duration,
}

#[derive(Debug, Clone)]
pub struct Service {
    store: Arc<dyn Store>,
    guard: Arc<Guard>,
    keys: Keys,
    lifetimes: TokenLifetimes,
    /// The address patients and staff use, for links (`https://video.example.org`).
    public_url: String,
    /// The SFU nodes; `None` where no media is served (the command line).
    media: Option<Arc<Media>>,
    /// The hospital's identity provider, when staff may sign in there.
    oidc: Option<Arc<crate::auth::oidc::Oidc>>,
    metrics: Arc<Metrics>,
}

/// Where a connection's media session goes: the node's link and who the participant is.
#[derive(Debug)]
pub struct MediaPlace {
    pub node: NodeId,
    pub link: Arc<Link>,
    /// The clinic whose room holds the consultation.
    pub clinic: ClinicId,
    /// Set for a patient: leaving the consultation removes their media.
    pub visit: Option<VisitId>,
}

/// The patients a commit admits to a consultation, with how long each waited (from their
/// arrival; read from the commit's audit entries).
fn admissions(commit: &Commit, now: Timestamp) -> Vec<(ClinicId, u64)> {
    commit
        .audit
        .iter()
        .filter(|e| e.action == "admit")
        .filter_map(|e| {
            let (clinic, visit) = (e.clinic.as_ref()?, e.visit?);
            let room = commit.rooms.iter().find(|w| &w.room.clinic == clinic)?;
            let arrived = room.room.visit(visit)?.arrived_at;
            Some((clinic.clone(), now.0.saturating_sub(arrived.0)))
        })
        .collect()
}

/// What the media nodes must be told after a change: for each consultation that had a
/// node, the visits that left it, or its end.
fn media_changes(hosted: &[Consultation], after: &[ClinicRoom]) -> Vec<(NodeId, ControlOp)> {
    let mut changes = Vec::new();
    for c in hosted {
        let Some(node) = &c.media_node else { continue };
        let now = after.iter().find_map(|r| r.consultation(c.id));
        match now {
            None => changes.push((
                node.clone(),
                ControlOp::EndConsultation { consultation: c.id },
            )),
            Some(n) => {
                for v in c.visits.iter().filter(|v| !n.visits.contains(v)) {
                    changes.push((
                        node.clone(),
                        ControlOp::RemoveVisit {
                            consultation: c.id,
                            visit: *v,
                        },
                    ));
                }
            }
        }
    }
    changes
}

/// The wall clock, in the protocol's unit.
pub fn now() -> Timestamp {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    Timestamp(ms)
}

fn later(d: Duration) -> Timestamp {
    now().saturating_add_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Trims and checks a piece of free text typed by a person.
fn text_field(
    what: &str,
    s: &str,
    max_chars: usize,
    required: bool,
) -> Result<Option<String>, AppError> {
    // Long texts (details, messages) may run to several lines; names and references not.
    let newlines = max_chars >= MAX_TEXT_CHARS;
    let s =
        crate::text::clean(s, newlines).map_err(|e| AppError::Invalid(format!("{what} {e}")))?;
    if s.is_empty() {
        return if required {
            Err(AppError::Invalid(format!("{what} must not be empty")))
        } else {
            Ok(None)
        };
    }
    if s.chars().count() > max_chars {
        return Err(AppError::Invalid(format!(
            "{what} must be at most {max_chars} characters"
        )));
    }
    Ok(Some(s))
}

fn required_text(what: &str, s: &str, max_chars: usize) -> Result<String, AppError> {
    text_field(what, s, max_chars, true)?
        .ok_or_else(|| AppError::Invalid(format!("{what} must not be empty")))
}

/// A staff member's view of the rooms they may see: each with the version it was read at.
#[derive(Debug)]
pub struct RoomSnapshot {
    pub clinic: ClinicId,
    pub version: u64,
    pub msg: ServerMsg,
}

/// What a patient's connection starts with.
#[derive(Debug)]
pub struct PatientStart {
    pub clinic: ClinicId,
    pub version: u64,
    pub session: Session,
    pub msgs: Vec<ServerMsg>,
}

impl Service {
    pub fn new(
        store: Arc<dyn Store>,
        keys: Keys,
        lifetimes: TokenLifetimes,
        public_url: String,
    ) -> Self {
        Self {
            store,
            guard: Arc::new(Guard::new(2, Duration::from_secs(2), 30)),
            keys,
            lifetimes,
            public_url: public_url.trim_end_matches('/').to_owned(),
            media: None,
            oidc: None,
            metrics: Arc::new(Metrics::default()),
        }
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// At most `checks` password checks at once; a sign-in waits up to `wait` for a turn.
    pub fn with_password_checks(mut self, checks: usize, wait: Duration) -> Self {
        let audit = self.guard.audit_per_minute;
        self.guard = Arc::new(Guard::new(checks, wait, audit));
        self
    }

    /// At most `n` audit entries a minute for failed sign-ins with unknown user names.
    pub fn with_anonymous_audit_per_minute(mut self, n: u32) -> Self {
        let checks = self.guard.password_checks;
        self.guard = Arc::new(Guard::new(checks, self.guard.password_wait, n));
        self
    }

    /// Serves media through `media`'s nodes.
    pub fn with_media(mut self, media: Arc<Media>) -> Self {
        if let Some(node) = media.local_node() {
            self.metrics.add_node(node.clone());
        }
        self.media = Some(media);
        self
    }

    /// Lets staff sign in through `oidc`, the hospital's identity provider.
    pub fn with_oidc(mut self, oidc: Arc<crate::auth::oidc::Oidc>) -> Self {
        self.oidc = Some(oidc);
        self
    }

    pub fn oidc(&self) -> Option<&Arc<crate::auth::oidc::Oidc>> {
        self.oidc.as_ref()
    }

    pub fn media(&self) -> Option<&Arc<Media>> {
        self.media.as_ref()
    }

    /// Where `who` joins the media of `consultation`: a patient only their own visit's
    /// consultation, staff only a consultation they lead. The consultation's node is the
    /// one recorded in the store while it lives; otherwise the least loaded live node,
    /// recorded now (of two instances placing at once, one record wins and both use it).
    pub async fn place_media(
        &self,
        who: &Principal,
        consultation: ConsultationId,
    ) -> Result<MediaPlace, AppError> {
        let media = self
            .media
            .as_ref()
            .ok_or_else(|| AppError::Unavailable("this server carries no media".into()))?;
        let (clinic, visit, recorded) = match who {
            Principal::Patient(visit) => {
                let clinic = self
                    .store
                    .locate(*visit)
                    .await?
                    .ok_or(AppError::VisitEnded)?;
                let (room, _) = self.load(&clinic).await?;
                let v = room.visit(*visit).ok_or(AppError::VisitEnded)?;
                if v.state != VisitState::InConsultation(consultation) {
                    return Err(AuthError::Forbidden.into());
                }
                let recorded = room
                    .consultation(consultation)
                    .and_then(|c| c.media_node.clone());
                (clinic, Some(*visit), recorded)
            }
            Principal::Staff(claims) => {
                let mut found = None;
                for clinic in self.staff_clinics(claims).await? {
                    let (room, _) = self.load(&clinic).await?;
                    if let Some(c) = room.consultation(consultation) {
                        if c.clinician != claims.sub {
                            return Err(AuthError::Forbidden.into());
                        }
                        found = Some((clinic, None, c.media_node.clone()));
                        break;
                    }
                }
                found.ok_or(AppError::NotFound("no such consultation"))?
            }
        };
        let mut placement = media.placement().await?;
        let mut recorded = recorded;
        loop {
            let node = match recorded.take().filter(|n| placement.carrying.contains(n)) {
                Some(n) => n,
                None => {
                    let chosen = placement.open.first().cloned().ok_or_else(|| {
                        AppError::Unavailable("no media server is available".into())
                    })?;
                    let carrying = placement.carrying.clone();
                    self.transact_value("system", std::slice::from_ref(&clinic), |rooms, ctx| {
                        let (node, out) =
                            rooms[0].place_media(consultation, &chosen, &carrying, ctx)?;
                        Ok((vec![out], node))
                    })
                    .await?
                }
            };
            match media.link(&node).await {
                Ok(link) => {
                    return Ok(MediaPlace {
                        node,
                        link,
                        clinic,
                        visit,
                    });
                }
                // Registered but not answering (it stopped within its record's lifetime):
                // the consultation moves to the next live node.
                Err(e) => {
                    tracing::warn!(%node, error = %e, "media node unreachable; placing elsewhere");
                    placement.without(&node);
                    if placement.open.is_empty() {
                        return Err(e);
                    }
                }
            }
        }
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    // --- patients entering -----------------------------------------------------------------

    pub async fn clinic_entry(&self, id: &ClinicId) -> Result<ClinicEntryInfo, AppError> {
        let c = self
            .store
            .clinic(id)
            .await?
            .ok_or(AppError::NotFound("no such clinic"))?;
        Ok(ClinicEntryInfo {
            id: c.id,
            name: c.name,
            open_link: c.open_link,
        })
    }

    pub async fn enter(&self, req: EnterRequest) -> Result<EnterResponse, AppError> {
        let name = required_text("your name", &req.name, MAX_NAME_CHARS)?;
        let details = text_field(
            "details",
            req.details.as_deref().unwrap_or(""),
            MAX_TEXT_CHARS,
            false,
        )?;
        let (token, previous) = match req.entry {
            Entry::OpenLink { clinic } => {
                let c = self
                    .store
                    .clinic(&clinic)
                    .await?
                    .ok_or(AppError::NotFound("no such clinic"))?;
                if !c.open_link {
                    return Err(AppError::ClinicClosed);
                }
                let new = NewVisit {
                    id: VisitId::random(),
                    name,
                    details,
                    appointment: None,
                };
                return self.arrive(&c, new, None).await;
            }
            Entry::Invite { token, previous } => (token, previous),
        };
        let claims = self.keys.check_invite(&token).map_err(|e| match e {
            AuthError::Expired => AppError::InviteExpired,
            _ => AppError::InviteInvalid,
        })?;
        // The visit this browser entered with the same invite before, if it says so.
        let holder = previous
            .as_deref()
            .and_then(|p| self.keys.check_visit(p).ok());
        let mut clinic: Option<Clinic> = None;
        for _ in 0..MAX_ATTEMPTS {
            let invite = self
                .store
                .invite(claims.jti)
                .await?
                .ok_or(AppError::InviteInvalid)?;
            let c = match clinic.take() {
                Some(c) if c.id == invite.record.clinic => c,
                _ => self
                    .store
                    .clinic(&invite.record.clinic)
                    .await?
                    .ok_or(AppError::NotFound("no such clinic"))?,
            };
            if invite.revoked {
                return Err(AppError::InviteRevoked);
            }
            if invite.record.expires_at <= now() {
                return Err(AppError::InviteExpired);
            }
            let expected = match invite.visit {
                None => None,
                Some(bound) if holder == Some(bound) => {
                    if self.store.locate(bound).await?.is_some() {
                        // The same patient again, whose visit goes on: resume it.
                        return Ok(self.visit_credential(bound));
                    }
                    Some(bound)
                }
                Some(_) => return Err(AppError::InviteUsed),
            };
            let id = VisitId::random();
            let new = NewVisit {
                id,
                name: name.clone(),
                details: details.clone(),
                appointment: invite.record.appointment.clone(),
            };
            let claim = InviteClaim {
                invite: claims.jti,
                expected,
                visit: id,
            };
            match self.arrive(&c, new, Some(claim)).await {
                // Claimed or revoked meanwhile: look again.
                Err(AppError::Store(StoreError::InviteTaken)) => clinic = Some(c),
                other => return other,
            }
        }
        Err(AppError::Conflict)
    }

    /// A new visit in `clinic`'s waiting room, with the invite it claims: appended to the
    /// room (no version check, so a rush of arrivals never conflicts), or, for the first
    /// visit a clinic ever has, a commit that creates its room.
    async fn arrive(
        &self,
        clinic: &Clinic,
        new: NewVisit,
        claim: Option<InviteClaim>,
    ) -> Result<EnterResponse, AppError> {
        let id = new.id;
        let actor = format!("patient:{id}");
        let ctx = Ctx {
            actor: actor.clone(),
            now: now(),
        };
        let (visit, out) = ClinicRoom::arrival(&clinic.id, &clinic.name, new.clone(), &ctx);
        let appended = self
            .store
            .append_arrival(Arrival {
                clinic: clinic.id.clone(),
                visit,
                events: out.events,
                audit: out.audit,
                claim: claim.clone(),
            })
            .await?;
        if appended == Appended::NoRoom {
            self.transact_claim(
                &actor,
                std::slice::from_ref(&clinic.id),
                claim,
                |rooms, ctx| Ok((vec![rooms[0].arrive(new.clone(), ctx)], ())),
            )
            .await?;
        }
        Ok(self.visit_credential(id))
    }

    fn visit_credential(&self, visit: VisitId) -> EnterResponse {
        let expires_at = later(self.lifetimes.visit);
        EnterResponse {
            visit,
            visit_token: self.keys.visit_token(visit, expires_at),
            expires_at,
        }
    }

    // --- connections -----------------------------------------------------------------------

    /// The clinics a member of staff sees: theirs, or every clinic for an admin.
    pub async fn staff_clinics(&self, claims: &StaffClaims) -> Result<Vec<ClinicId>, AppError> {
        Ok(match claims.role {
            Role::Admin => self
                .store
                .clinics()
                .await?
                .into_iter()
                .map(|c| c.id)
                .collect(),
            _ => claims.clinics.clone(),
        })
    }

    /// Snapshots of `clinics`' rooms, each with the version it was read at.
    pub async fn staff_rooms(
        &self,
        claims: &StaffClaims,
        clinics: Vec<ClinicId>,
    ) -> Result<Vec<RoomSnapshot>, AppError> {
        let mut out = Vec::with_capacity(clinics.len());
        for clinic in clinics {
            authorize(claims, Action::ViewRoom, Some(&clinic), Target::Clinic)?;
            let (room, version) = match self.load(&clinic).await {
                Ok(r) => r,
                // An assignment to a clinic deleted since sign-in.
                Err(AppError::NotFound(_)) => continue,
                // Never a board with a clinic silently missing: the page is told the
                // store is away, and comes back.
                Err(e) => return Err(e),
            };
            out.push(RoomSnapshot {
                clinic,
                version,
                // Presence is filled in by the caller, from what its hub tells staff.
                msg: room.snapshot(&BTreeSet::new()),
            });
        }
        Ok(out)
    }

    pub async fn room_snapshot(
        &self,
        claims: &StaffClaims,
        clinic: &ClinicId,
    ) -> Result<ServerMsg, AppError> {
        authorize(claims, Action::ViewRoom, Some(clinic), Target::Clinic)?;
        let room = self.load(clinic).await?.0;
        let online = self.store.online(clinic, now()).await?;
        Ok(room.snapshot(&online))
    }

    /// The clinicians of a clinic, for staff of that clinic (whom to admit a patient to).
    pub async fn clinicians(
        &self,
        claims: &StaffClaims,
        clinic: &ClinicId,
    ) -> Result<Vec<protocol::ClinicianView>, AppError> {
        authorize(claims, Action::ViewRoom, Some(clinic), Target::Clinic)?;
        Ok(self
            .store
            .staff_list()
            .await?
            .into_iter()
            .filter(|s| s.role == Role::Clinician && s.clinics.contains(clinic))
            .map(|s| protocol::ClinicianView {
                username: s.username,
                display_name: s.display_name,
            })
            .collect())
    }

    /// What a patient's connection starts with: who they are and their own status.
    pub async fn patient_start(&self, visit: VisitId) -> Result<PatientStart, AppError> {
        let clinic = self
            .store
            .locate(visit)
            .await?
            .ok_or(AppError::VisitEnded)?;
        let (room, version) = self.load(&clinic).await?;
        let msgs = room.patient_view(visit).ok_or(AppError::VisitEnded)?;
        Ok(PatientStart {
            session: Session::Patient {
                visit,
                clinic: clinic.clone(),
                clinic_name: room.name.clone(),
            },
            clinic,
            version,
            msgs,
        })
    }

    /// Records how `who`'s media reaches the SFU in `consultation` of `clinic` (where
    /// their media session joined), for the clinic's staff to see: a patient's on their
    /// visit, the clinician's on the consultation. Nothing is audited: it is not a decision.
    pub async fn media_path(
        &self,
        who: &Principal,
        clinic: &ClinicId,
        consultation: ConsultationId,
        path: MediaPath,
    ) -> Result<(), AppError> {
        self.transact("system", std::slice::from_ref(clinic), |rooms, _| {
            let out = match who {
                Principal::Patient(visit) => {
                    rooms[0].visit_media_path(*visit, consultation, path)?
                }
                Principal::Staff(claims) => {
                    rooms[0].clinician_media_path(consultation, &claims.sub, path)?
                }
            };
            Ok(vec![out])
        })
        .await
    }

    /// Loads a room, or a new empty one for a clinic in the directory.
    async fn load(&self, clinic: &ClinicId) -> Result<(Arc<ClinicRoom>, u64), AppError> {
        let started = Instant::now();
        let room = self.store.room(clinic).await;
        self.metrics.store_op(StoreOp::Load, started);
        if let Some(v) = room? {
            return Ok((v.value, v.version));
        }
        let c = self
            .store
            .clinic(clinic)
            .await?
            .ok_or(AppError::NotFound("no such clinic"))?;
        Ok((Arc::new(ClinicRoom::new(c.id, c.name)), 0))
    }

    /// Reads `clinics`' rooms, applies `f`, and commits; retries on conflict. `f` returns
    /// one outcome per room, in the same order. Visits that appear in or disappear from a
    /// room update the visit index.
    async fn transact<F>(&self, actor: &str, clinics: &[ClinicId], f: F) -> Result<(), AppError>
    where
        F: Fn(&mut [ClinicRoom], &Ctx) -> Result<Vec<Outcome>, AppError>,
    {
        self.transact_value(actor, clinics, |rooms, ctx| Ok((f(rooms, ctx)?, ())))
            .await
    }

    /// [`Self::transact`] for an operation that also returns a value. After a commit, the
    /// media nodes are told of visits that left a consultation and of consultations that
    /// ended, so that their media stops.
    async fn transact_value<F, T>(
        &self,
        actor: &str,
        clinics: &[ClinicId],
        f: F,
    ) -> Result<T, AppError>
    where
        F: Fn(&mut [ClinicRoom], &Ctx) -> Result<(Vec<Outcome>, T), AppError>,
    {
        self.transact_claim(actor, clinics, None, f).await
    }

    /// [`Self::transact_value`] that also claims an invite for the new visit, atomically.
    async fn transact_claim<F, T>(
        &self,
        actor: &str,
        clinics: &[ClinicId],
        claim: Option<InviteClaim>,
        f: F,
    ) -> Result<T, AppError>
    where
        F: Fn(&mut [ClinicRoom], &Ctx) -> Result<(Vec<Outcome>, T), AppError>,
    {
        for _ in 0..MAX_ATTEMPTS {
            let mut rooms = Vec::with_capacity(clinics.len());
            let mut versions = Vec::with_capacity(clinics.len());
            for c in clinics {
                let (room, version) = self.load(c).await?;
                // This change's own copy.
                rooms.push(Arc::unwrap_or_clone(room));
                versions.push(version);
            }
            let before: Vec<BTreeSet<VisitId>> =
                rooms.iter().map(|r| r.visit_ids().collect()).collect();
            let hosted: Vec<Consultation> = rooms
                .iter()
                .flat_map(|r| r.consultations())
                .filter(|c| c.media_node.is_some())
                .cloned()
                .collect();
            let ctx = Ctx {
                actor: actor.to_owned(),
                now: now(),
            };
            let (outcomes, value) = f(&mut rooms, &ctx)?;
            let media_changes = media_changes(&hosted, &rooms);
            let mut commit = Commit {
                claim: claim.clone(),
                ..Commit::default()
            };
            let mut added = Vec::new();
            for (((room, version), before), out) in
                rooms.into_iter().zip(versions).zip(&before).zip(outcomes)
            {
                let after: BTreeSet<VisitId> = room.visit_ids().collect();
                commit
                    .index
                    .extend(before.difference(&after).map(|v| (*v, None)));
                added.extend(
                    after
                        .difference(before)
                        .map(|v| (*v, Some(room.clinic.clone()))),
                );
                commit.audit.extend(out.audit);
                commit.rooms.push(RoomWrite {
                    expected: version,
                    room,
                    events: out.events,
                });
            }
            commit.index.extend(added);
            let admitted = admissions(&commit, ctx.now);
            let started = Instant::now();
            let committed = self.store.commit(commit).await;
            self.metrics.store_op(StoreOp::Commit, started);
            match committed {
                Ok(()) => {
                    for (clinic, waited_ms) in admitted {
                        self.metrics.admitted(clinic.as_str(), waited_ms);
                    }
                    if let (Some(media), false) = (&self.media, media_changes.is_empty()) {
                        let media = media.clone();
                        tokio::spawn(async move {
                            for (node, op) in media_changes {
                                media.notify(&node, op).await;
                            }
                        });
                    }
                    return Ok(value);
                }
                Err(StoreError::Conflict) => {
                    self.metrics.conflict();
                    tokio::task::yield_now().await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(AppError::Conflict)
    }

    // --- administration ----------------------------------------------------------------------

    pub async fn create_clinic(&self, actor: &str, req: CreateClinic) -> Result<Clinic, AppError> {
        let name = required_text("the clinic name", &req.name, MAX_NAME_CHARS)?;
        let clinic = Clinic {
            id: req.id,
            name,
            open_link: req.open_link,
        };
        self.store.put_clinic(&clinic).await?;
        self.record(AuditEntry {
            clinic: Some(clinic.id.clone()),
            detail: Some(format!(
                "open link {}",
                if clinic.open_link { "on" } else { "off" }
            )),
            ..self.audit_entry(actor, "put_clinic")
        })
        .await;
        Ok(clinic)
    }

    pub async fn create_staff(
        &self,
        actor: &str,
        req: CreateStaff,
    ) -> Result<StaffRecord, AppError> {
        let display_name = required_text("the display name", &req.display_name, MAX_NAME_CHARS)?;
        for c in &req.clinics {
            if self.store.clinic(c).await?.is_none() {
                return Err(AppError::Invalid(format!("there is no clinic {c}")));
            }
        }
        let password = req.password;
        let password_hash = tokio::task::spawn_blocking(move || auth::hash_password(&password))
            .await
            .map_err(|e| {
                AppError::Store(StoreError::Unavailable(format!("hashing task: {e}")))
            })??;
        let record = StaffRecord {
            username: req.username,
            display_name,
            role: req.role,
            clinics: req.clinics,
            password_hash,
            idp_subject: None,
        };
        self.store.put_staff(&record).await?;
        // A replaced record is a new password, role or set of clinics: the old sign-ins
        // must not keep the old rights.
        self.end_sessions_of(actor, &record.username).await?;
        let clinics: Vec<&str> = record.clinics.iter().map(ClinicId::as_str).collect();
        self.record(AuditEntry {
            detail: Some(format!(
                "user {} role {:?} clinics [{}]",
                record.username,
                record.role,
                clinics.join(",")
            )),
            ..self.audit_entry(actor, "put_staff")
        })
        .await;
        Ok(record)
    }

    /// A personal invite link: one patient, one clinic. It expires a day after the
    /// appointment (or a day after it is issued), sooner if asked; never later than
    /// [`MAX_INVITE_SECS`] after the appointment or, without one, after it is issued.
    pub async fn issue_invite(
        &self,
        actor: &str,
        req: IssueInvite,
    ) -> Result<InviteResponse, AppError> {
        if self.store.clinic(&req.clinic).await?.is_none() {
            return Err(AppError::NotFound("no such clinic"));
        }
        let appointment = text_field(
            "the appointment reference",
            req.appointment.as_deref().unwrap_or(""),
            100,
            false,
        )?;
        let issued_at = now();
        let expires_at = invite_expiry(issued_at, req.appointment_at, req.valid_for_secs)?;
        let id = InviteId::random();
        self.store
            .put_invite(&InviteRecord {
                id,
                clinic: req.clinic.clone(),
                appointment: appointment.clone(),
                issued_by: actor.to_owned(),
                issued_at,
                expires_at,
            })
            .await?;
        let token = self
            .keys
            .invite_token(id, req.clinic.clone(), appointment.clone(), expires_at);
        self.record(AuditEntry {
            clinic: Some(req.clinic),
            detail: Some(match appointment {
                Some(a) => format!("invite {id} appointment {a}"),
                None => format!("invite {id}"),
            }),
            ..self.audit_entry(actor, "issue_invite")
        })
        .await;
        Ok(InviteResponse {
            id,
            url: format!("{}/i#{token}", self.public_url),
            token,
            expires_at,
        })
    }

    /// A clinic's invites that have not expired, for those who may issue them.
    pub async fn invites(
        &self,
        claims: &StaffClaims,
        clinic: &ClinicId,
    ) -> Result<Vec<InviteView>, AppError> {
        authorize(claims, Action::IssueInvite, Some(clinic), Target::Clinic)?;
        Ok(self
            .store
            .invites(clinic, now())
            .await?
            .into_iter()
            .map(|s| InviteView {
                id: s.record.id,
                clinic: s.record.clinic,
                appointment: s.record.appointment,
                issued_by: s.record.issued_by,
                issued_at: s.record.issued_at,
                expires_at: s.record.expires_at,
                used: s.visit.is_some(),
                revoked: s.revoked,
            })
            .collect())
    }

    /// Withdraws an invite: nobody can enter with it any more (a visit it admitted goes on).
    pub async fn revoke_invite(&self, claims: &StaffClaims, id: InviteId) -> Result<(), AppError> {
        let invite = self
            .store
            .invite(id)
            .await?
            .ok_or(AppError::NotFound("no such invite"))?;
        // Staff of another clinic learn nothing more than "no such invite".
        may_ever(claims, Action::RevokeInvite, &invite.record.clinic)
            .map_err(|_| AppError::NotFound("no such invite"))?;
        authorize(
            claims,
            Action::RevokeInvite,
            Some(&invite.record.clinic),
            Target::Clinic,
        )?;
        self.store.revoke_invite(id).await?;
        self.record(AuditEntry {
            clinic: Some(invite.record.clinic),
            detail: Some(format!("invite {id}")),
            ..self.audit_entry(&format!("staff:{}", claims.sub), "revoke_invite")
        })
        .await;
        Ok(())
    }

    /// The patient link of a clinic that takes patients by its open link.
    pub fn clinic_link(&self, clinic: &ClinicId) -> String {
        format!("{}/c/{clinic}", self.public_url)
    }

    pub fn public_url(&self) -> &str {
        &self.public_url
    }

    fn audit_entry(&self, actor: &str, action: &str) -> AuditEntry {
        AuditEntry {
            at: now(),
            actor: actor.to_owned(),
            action: action.to_owned(),
            clinic: None,
            visit: None,
            consultation: None,
            detail: None,
        }
    }

    /// Records an entry that comes with no room change; a failure is logged, not returned,
    /// because the change it records has already happened.
    async fn record(&self, entry: AuditEntry) {
        if let Err(e) = self.store.append_audit(std::slice::from_ref(&entry)).await {
            tracing::error!(error = %e, action = %entry.action, "could not write the audit log");
        }
    }
}
