//! The waiting room and its consultations, as a sans-IO state machine.
//!
//! A [`ClinicRoom`] is the whole live state of one clinic: the visits in its waiting room
//! and the consultations they were admitted to. Every operation takes the time as an input,
//! mutates the room, and returns an [`Outcome`]: the events to deliver (to the clinic's
//! staff, or to one patient) and the audit entries to record. Nothing here does I/O, reads
//! the clock, or spawns; the [`crate::service`] shell loads a room from the store, applies
//! one operation and commits the result atomically.
//!
//! Privacy is decided here, by audience: a patient's events ([`Audience::Visit`]) only ever
//! carry that patient's own status and the messages meant for them.

use std::collections::BTreeMap;

use protocol::{
    AuditEntry, ClinicId, ClinicView, ConsultationId, ConsultationView, MediaPath, NodeId,
    PatientState, ServerMsg, StaffId, Timestamp, VisitEndReason, VisitId, VisitStatus, VisitView,
};
use serde::{Deserialize, Serialize};

#[cfg(test)]
mod tests;

/// How many staff messages a visit keeps, so a reloaded page shows them again.
pub const KEPT_MESSAGES: usize = 20;

/// The live state of one clinic. Persisted by the store (see ARCHITECTURE.md: the stored
/// form is internal, versioned by the store, and never sent to a browser).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClinicRoom {
    pub clinic: ClinicId,
    pub name: String,
    visits: BTreeMap<VisitId, Visit>,
    consultations: BTreeMap<ConsultationId, Consultation>,
    /// Orders arrivals within the same millisecond.
    next_seq: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Visit {
    pub id: VisitId,
    pub name: String,
    pub details: Option<String>,
    pub appointment: Option<String>,
    /// When the patient first arrived (in any clinic): their place in the queue.
    pub arrived_at: Timestamp,
    /// Breaks ties between visits that arrived in the same millisecond.
    pub seq: u64,
    pub state: VisitState,
    pub for_clinician: Option<StaffId>,
    /// The last [`KEPT_MESSAGES`] messages from staff, oldest first.
    pub messages: Vec<(Timestamp, String)>,
    /// How the patient's media reaches the SFU, as their browser last said while in a
    /// consultation; cleared when they leave it. Kept while their page is away (a page
    /// that comes back on a new connection resumes the same media session); staff pages
    /// show it only while the patient is connected.
    #[serde(default)]
    pub media_path: Option<MediaPath>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VisitState {
    Waiting,
    InConsultation(ConsultationId),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consultation {
    pub id: ConsultationId,
    pub clinician: StaffId,
    pub started_at: Timestamp,
    pub visits: Vec<VisitId>,
    /// The SFU node carrying its media, once someone joined the media.
    #[serde(default)]
    pub media_node: Option<NodeId>,
    /// How the clinician's media reaches the SFU, as their browser last said.
    #[serde(default)]
    pub clinician_path: Option<MediaPath>,
    /// Staff switched the call to sound only.
    #[serde(default)]
    pub audio_only: bool,
}

/// What a new visit is made of; the caller has validated the fields.
#[derive(Debug, Clone)]
pub struct NewVisit {
    pub id: VisitId,
    pub name: String,
    pub details: Option<String>,
    pub appointment: Option<String>,
}

/// Who a change goes to.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Audience {
    /// Every member of staff assigned to the clinic.
    ClinicStaff(ClinicId),
    /// The patient of one visit, and nobody else.
    Visit(VisitId),
}

/// One message for one audience.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub to: Audience,
    pub msg: ServerMsg,
}

/// Who does something and when: stamped on audit entries.
#[derive(Debug, Clone)]
pub struct Ctx {
    /// `staff:<username>`, `patient:<visit>` or `system`.
    pub actor: String,
    pub now: Timestamp,
}

/// The result of one operation: events to deliver and entries for the audit log.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub events: Vec<Event>,
    pub audit: Vec<AuditEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    #[error("no such visit in this clinic")]
    VisitNotFound,
    #[error("no such consultation in this clinic")]
    ConsultationNotFound,
    #[error("this patient has already been admitted")]
    AlreadyAdmitted,
    #[error("this patient is not in the waiting room")]
    NotWaiting,
    #[error("this patient is not in a consultation")]
    NotInConsultation,
    #[error("nobody is waiting")]
    QueueEmpty,
    #[error("that consultation belongs to another clinician")]
    OtherClinician,
    #[error("the visit is already in that clinic")]
    SameClinic,
}

impl ClinicRoom {
    pub fn new(clinic: ClinicId, name: String) -> Self {
        Self {
            clinic,
            name,
            visits: BTreeMap::new(),
            consultations: BTreeMap::new(),
            next_seq: 0,
        }
    }

    pub fn visit(&self, id: VisitId) -> Option<&Visit> {
        self.visits.get(&id)
    }

    pub fn consultation(&self, id: ConsultationId) -> Option<&Consultation> {
        self.consultations.get(&id)
    }

    pub fn visit_ids(&self) -> impl Iterator<Item = VisitId> + '_ {
        self.visits.keys().copied()
    }

    /// Each visit's state (waiting or in a consultation), in no order.
    pub fn visit_states(&self) -> impl Iterator<Item = VisitState> + '_ {
        self.visits.values().map(|v| v.state)
    }

    pub fn consultations(&self) -> impl Iterator<Item = &Consultation> + '_ {
        self.consultations.values()
    }

    /// Records which SFU node carries a consultation's media: the one already recorded
    /// while it is among the nodes that may carry it (`live`: running, not moving its
    /// calls away), otherwise `chosen`. Returns the node to use.
    pub fn place_media(
        &mut self,
        cid: ConsultationId,
        chosen: &NodeId,
        live: &[NodeId],
        ctx: &Ctx,
    ) -> Result<(NodeId, Outcome), RoomError> {
        let c = self
            .consultations
            .get_mut(&cid)
            .ok_or(RoomError::ConsultationNotFound)?;
        if let Some(current) = c.media_node.as_ref().filter(|n| live.contains(n)) {
            return Ok((current.clone(), Outcome::default()));
        }
        c.media_node = Some(chosen.clone());
        let mut out = Outcome::default();
        let detail = format!("node {chosen}");
        self.audit(&mut out, ctx, "media_placed", None, Some(cid), Some(detail));
        Ok((chosen.clone(), out))
    }

    /// The waiting visits in queue order: earliest arrival first.
    pub fn queue(&self) -> Vec<&Visit> {
        let mut waiting: Vec<&Visit> = self
            .visits
            .values()
            .filter(|v| v.state == VisitState::Waiting)
            .collect();
        waiting.sort_by_key(|v| (v.arrived_at, v.seq));
        waiting
    }

    /// What a member of staff sees on connecting: every visit (queue order) and
    /// consultation, each visit online if it is in `online` (presence lives outside the
    /// room, in the store's leases).
    pub fn snapshot(&self, online: &std::collections::BTreeSet<VisitId>) -> ServerMsg {
        let mut visits: Vec<&Visit> = self.visits.values().collect();
        visits.sort_by_key(|v| (v.arrived_at, v.seq));
        ServerMsg::ClinicSnapshot {
            clinic: ClinicView {
                id: self.clinic.clone(),
                name: self.name.clone(),
            },
            visits: visits
                .into_iter()
                .map(|v| {
                    let mut view = v.view();
                    view.online = online.contains(&v.id);
                    view
                })
                .collect(),
            consultations: self
                .consultations
                .values()
                .map(Consultation::view)
                .collect(),
        }
    }

    /// What a patient is sent on connecting: their status, then the messages kept for them.
    pub fn patient_view(&self, id: VisitId) -> Option<Vec<ServerMsg>> {
        let v = self.visits.get(&id)?;
        let mut msgs = Vec::with_capacity(1 + v.messages.len());
        msgs.push(self.patient_status(v));
        msgs.extend(v.messages.iter().map(|(at, text)| ServerMsg::StaffMessage {
            text: text.clone(),
            sent_at: *at,
        }));
        Some(msgs)
    }

    /// A patient arrives: a visit is created at the back of the queue.
    pub fn arrive(&mut self, new: NewVisit, ctx: &Ctx) -> Outcome {
        let (visit, out) = Self::arrival(&self.clinic, &self.name, new, ctx);
        self.append(visit);
        out
    }

    /// A new visit for clinic `clinic` (named `name`) and what its arrival tells staff, the
    /// patient and the audit log, decided without the room: an arrival depends on nothing
    /// else in it, so the store can append it ([`crate::store::Store::append_arrival`])
    /// instead of rewriting the room. [`ClinicRoom::append`] gives it its place.
    pub fn arrival(clinic: &ClinicId, name: &str, new: NewVisit, ctx: &Ctx) -> (Visit, Outcome) {
        let visit = Visit {
            id: new.id,
            name: new.name,
            details: new.details,
            appointment: new.appointment,
            arrived_at: ctx.now,
            seq: 0,
            state: VisitState::Waiting,
            for_clinician: None,
            messages: Vec::new(),
            media_path: None,
        };
        let mut out = Outcome::default();
        out.audit.push(AuditEntry {
            at: ctx.now,
            actor: ctx.actor.clone(),
            action: "arrive".to_owned(),
            clinic: Some(clinic.clone()),
            visit: Some(visit.id),
            consultation: None,
            detail: None,
        });
        out.events.push(Event {
            to: Audience::ClinicStaff(clinic.clone()),
            msg: ServerMsg::VisitUpdated {
                clinic: clinic.clone(),
                visit: visit.view(),
            },
        });
        out.events.push(Event {
            to: Audience::Visit(visit.id),
            msg: ServerMsg::PatientStatus {
                status: PatientState::Waiting {
                    clinic_name: name.to_owned(),
                    waiting_since: visit.arrived_at,
                },
            },
        });
        (visit, out)
    }

    /// Puts an arrived visit into the room, after every visit appended before it (its
    /// `seq` orders it among arrivals of the same millisecond). A visit already here is
    /// left as it is.
    pub fn append(&mut self, mut visit: Visit) {
        if self.visits.contains_key(&visit.id) {
            return;
        }
        visit.seq = self.take_seq();
        self.visits.insert(visit.id, visit);
    }

    /// A patient's browser says how its media reaches the SFU in consultation `cid`; staff
    /// are told when it changes.
    pub fn visit_media_path(
        &mut self,
        id: VisitId,
        cid: ConsultationId,
        path: MediaPath,
    ) -> Result<Outcome, RoomError> {
        let v = self.visits.get_mut(&id).ok_or(RoomError::VisitNotFound)?;
        if v.state != VisitState::InConsultation(cid) {
            return Err(RoomError::NotInConsultation);
        }
        let mut out = Outcome::default();
        if v.media_path != Some(path) {
            v.media_path = Some(path);
            let visit = v.view();
            self.push_staff(
                &mut out,
                ServerMsg::VisitUpdated {
                    clinic: self.clinic.clone(),
                    visit,
                },
            );
        }
        Ok(out)
    }

    /// The clinician of consultation `cid` says how their media reaches the SFU; staff
    /// are told when it changes.
    pub fn clinician_media_path(
        &mut self,
        cid: ConsultationId,
        clinician: &StaffId,
        path: MediaPath,
    ) -> Result<Outcome, RoomError> {
        let c = self
            .consultations
            .get_mut(&cid)
            .ok_or(RoomError::ConsultationNotFound)?;
        if c.clinician != *clinician {
            return Err(RoomError::OtherClinician);
        }
        let mut out = Outcome::default();
        if c.clinician_path != Some(path) {
            c.clinician_path = Some(path);
            self.notify_consultation(&mut out, cid);
        }
        Ok(out)
    }

    /// Staff send a message to one patient.
    pub fn message(&mut self, id: VisitId, text: String, ctx: &Ctx) -> Result<Outcome, RoomError> {
        let v = self.visits.get_mut(&id).ok_or(RoomError::VisitNotFound)?;
        if v.messages.len() == KEPT_MESSAGES {
            v.messages.remove(0);
        }
        v.messages.push((ctx.now, text.clone()));
        let mut out = Outcome::default();
        // The text itself is clinical communication: it goes to the patient, not the log.
        self.audit(&mut out, ctx, "message", Some(id), None, None);
        out.events.push(Event {
            to: Audience::Visit(id),
            msg: ServerMsg::StaffMessage {
                text,
                sent_at: ctx.now,
            },
        });
        Ok(out)
    }

    /// Admit a waiting patient to a clinician: into a new consultation, or into one of
    /// that clinician's existing consultations (bringing in a second person).
    pub fn admit(
        &mut self,
        id: VisitId,
        clinician: StaffId,
        into: Option<ConsultationId>,
        new_consultation: ConsultationId,
        ctx: &Ctx,
    ) -> Result<Outcome, RoomError> {
        let v = self.visits.get(&id).ok_or(RoomError::VisitNotFound)?;
        if let VisitState::InConsultation(_) = v.state {
            return Err(RoomError::AlreadyAdmitted);
        }
        let cid = match into {
            Some(cid) => {
                let c = self
                    .consultations
                    .get_mut(&cid)
                    .ok_or(RoomError::ConsultationNotFound)?;
                if c.clinician != clinician {
                    return Err(RoomError::OtherClinician);
                }
                c.visits.push(id);
                cid
            }
            None => {
                self.consultations.insert(
                    new_consultation,
                    Consultation {
                        id: new_consultation,
                        clinician: clinician.clone(),
                        started_at: ctx.now,
                        visits: vec![id],
                        media_node: None,
                        clinician_path: None,
                        audio_only: false,
                    },
                );
                new_consultation
            }
        };
        let v = self.visits.get_mut(&id).ok_or(RoomError::VisitNotFound)?;
        v.state = VisitState::InConsultation(cid);
        v.for_clinician = None;
        let mut out = Outcome::default();
        let detail = format!("clinician {clinician}");
        self.audit(&mut out, ctx, "admit", Some(id), Some(cid), Some(detail));
        self.notify_consultation(&mut out, cid);
        self.notify_visit(&mut out, id);
        Ok(out)
    }

    /// The longest-waiting patient who is for this clinician or for anyone.
    pub fn next_for(&self, clinician: &StaffId) -> Result<VisitId, RoomError> {
        self.queue()
            .into_iter()
            .find(|v| v.for_clinician.as_ref().is_none_or(|c| c == clinician))
            .map(|v| v.id)
            .ok_or(RoomError::QueueEmpty)
    }

    /// Put a patient in a consultation back in the waiting room; they keep their place.
    pub fn return_to_waiting(&mut self, id: VisitId, ctx: &Ctx) -> Result<Outcome, RoomError> {
        let v = self.visits.get_mut(&id).ok_or(RoomError::VisitNotFound)?;
        let VisitState::InConsultation(cid) = v.state else {
            return Err(RoomError::NotInConsultation);
        };
        v.state = VisitState::Waiting;
        v.media_path = None;
        let mut out = Outcome::default();
        self.audit(
            &mut out,
            ctx,
            "return_to_waiting",
            Some(id),
            Some(cid),
            None,
        );
        self.leave_consultation(&mut out, cid, id);
        self.notify_visit(&mut out, id);
        Ok(out)
    }

    /// Transfer to a colleague in this clinic: back to waiting, marked for them.
    pub fn assign(
        &mut self,
        id: VisitId,
        clinician: StaffId,
        ctx: &Ctx,
    ) -> Result<Outcome, RoomError> {
        let v = self.visits.get_mut(&id).ok_or(RoomError::VisitNotFound)?;
        let left = match v.state {
            VisitState::InConsultation(cid) => Some(cid),
            VisitState::Waiting => None,
        };
        v.state = VisitState::Waiting;
        v.media_path = None;
        let detail = format!("clinician {clinician}");
        v.for_clinician = Some(clinician);
        let mut out = Outcome::default();
        self.audit(&mut out, ctx, "transfer", Some(id), left, Some(detail));
        if let Some(cid) = left {
            self.leave_consultation(&mut out, cid, id);
        }
        self.notify_visit(&mut out, id);
        Ok(out)
    }

    /// Take a visit out of this clinic for a transfer to `to`; [`ClinicRoom::take_in`] puts it
    /// into the other room. Both rooms are committed together.
    pub fn take_out(
        &mut self,
        id: VisitId,
        to: &ClinicId,
        ctx: &Ctx,
    ) -> Result<(Visit, Outcome), RoomError> {
        if *to == self.clinic {
            return Err(RoomError::SameClinic);
        }
        let mut v = self.visits.remove(&id).ok_or(RoomError::VisitNotFound)?;
        let mut out = Outcome::default();
        let detail = format!("to clinic {to}");
        let left = match v.state {
            VisitState::InConsultation(cid) => Some(cid),
            VisitState::Waiting => None,
        };
        self.audit(&mut out, ctx, "transfer", Some(id), left, Some(detail));
        if let Some(cid) = left {
            self.leave_consultation(&mut out, cid, id);
        }
        v.state = VisitState::Waiting;
        v.for_clinician = None;
        v.media_path = None;
        self.push_staff(
            &mut out,
            ServerMsg::VisitClosed {
                clinic: self.clinic.clone(),
                visit: id,
                reason: VisitEndReason::Transferred,
            },
        );
        Ok((v, out))
    }

    /// Receive a visit transferred from another clinic; it keeps its arrival time.
    pub fn take_in(&mut self, mut v: Visit) -> Outcome {
        let id = v.id;
        v.seq = self.take_seq();
        self.visits.insert(id, v);
        let mut out = Outcome::default();
        self.notify_visit(&mut out, id);
        out
    }

    /// End a visit: the patient left, or staff removed them.
    pub fn end_visit(
        &mut self,
        id: VisitId,
        reason: VisitEndReason,
        ctx: &Ctx,
    ) -> Result<Outcome, RoomError> {
        let v = self.visits.remove(&id).ok_or(RoomError::VisitNotFound)?;
        let mut out = Outcome::default();
        let action = match reason {
            VisitEndReason::Left => "leave",
            VisitEndReason::Removed => "remove",
            VisitEndReason::ConsultationEnded => "end_consultation",
            VisitEndReason::Transferred => "transfer",
        };
        let cid = match v.state {
            VisitState::InConsultation(cid) => Some(cid),
            VisitState::Waiting => None,
        };
        self.audit(&mut out, ctx, action, Some(id), cid, None);
        if let Some(cid) = cid {
            self.leave_consultation(&mut out, cid, id);
        }
        self.closed(&mut out, id, reason);
        Ok(out)
    }

    /// Switches a call to sound only (`on`) or back to video: staff and every patient in
    /// it are told. Switching to what it already is changes nothing.
    pub fn set_audio_only(
        &mut self,
        cid: ConsultationId,
        on: bool,
        ctx: &Ctx,
    ) -> Result<Outcome, RoomError> {
        let c = self
            .consultations
            .get_mut(&cid)
            .ok_or(RoomError::ConsultationNotFound)?;
        let mut out = Outcome::default();
        if c.audio_only == on {
            return Ok(out);
        }
        c.audio_only = on;
        let visits = c.visits.clone();
        let action = if on {
            "audio_only_on"
        } else {
            "audio_only_off"
        };
        self.audit(&mut out, ctx, action, None, Some(cid), None);
        self.notify_consultation(&mut out, cid);
        for id in visits {
            if let Some(v) = self.visits.get(&id) {
                out.events.push(Event {
                    to: Audience::Visit(id),
                    msg: self.patient_status(v),
                });
            }
        }
        Ok(out)
    }

    /// End a consultation; every visit in it ends.
    pub fn end_consultation(
        &mut self,
        cid: ConsultationId,
        ctx: &Ctx,
    ) -> Result<Outcome, RoomError> {
        let c = self
            .consultations
            .remove(&cid)
            .ok_or(RoomError::ConsultationNotFound)?;
        let mut out = Outcome::default();
        self.audit(&mut out, ctx, "end_consultation", None, Some(cid), None);
        for id in c.visits {
            self.visits.remove(&id);
            self.closed(&mut out, id, VisitEndReason::ConsultationEnded);
        }
        self.push_staff(
            &mut out,
            ServerMsg::ConsultationEnded {
                clinic: self.clinic.clone(),
                consultation: cid,
            },
        );
        Ok(out)
    }

    // --- helpers -------------------------------------------------------------------------

    fn take_seq(&mut self) -> u64 {
        self.next_seq += 1;
        self.next_seq
    }

    /// Removes a visit from its consultation; a consultation with nobody left ends.
    fn leave_consultation(&mut self, out: &mut Outcome, cid: ConsultationId, id: VisitId) {
        let Some(c) = self.consultations.get_mut(&cid) else {
            return;
        };
        c.visits.retain(|v| *v != id);
        if c.visits.is_empty() {
            self.consultations.remove(&cid);
            self.push_staff(
                out,
                ServerMsg::ConsultationEnded {
                    clinic: self.clinic.clone(),
                    consultation: cid,
                },
            );
        } else {
            self.notify_consultation(out, cid);
        }
    }

    fn closed(&self, out: &mut Outcome, id: VisitId, reason: VisitEndReason) {
        self.push_staff(
            out,
            ServerMsg::VisitClosed {
                clinic: self.clinic.clone(),
                visit: id,
                reason,
            },
        );
        out.events.push(Event {
            to: Audience::Visit(id),
            msg: ServerMsg::PatientStatus {
                status: PatientState::Ended { reason },
            },
        });
    }

    /// Tells staff the visit's new state, and the patient their own status.
    fn notify_visit(&self, out: &mut Outcome, id: VisitId) {
        let Some(v) = self.visits.get(&id) else {
            return;
        };
        self.push_staff(
            out,
            ServerMsg::VisitUpdated {
                clinic: self.clinic.clone(),
                visit: v.view(),
            },
        );
        out.events.push(Event {
            to: Audience::Visit(id),
            msg: self.patient_status(v),
        });
    }

    fn notify_consultation(&self, out: &mut Outcome, cid: ConsultationId) {
        if let Some(c) = self.consultations.get(&cid) {
            self.push_staff(
                out,
                ServerMsg::ConsultationUpdated {
                    clinic: self.clinic.clone(),
                    consultation: c.view(),
                },
            );
        }
    }

    fn patient_status(&self, v: &Visit) -> ServerMsg {
        let status = match v.state {
            VisitState::Waiting => PatientState::Waiting {
                clinic_name: self.name.clone(),
                waiting_since: v.arrived_at,
            },
            VisitState::InConsultation(consultation) => PatientState::Admitted {
                consultation,
                audio_only: self
                    .consultations
                    .get(&consultation)
                    .is_some_and(|c| c.audio_only),
            },
        };
        ServerMsg::PatientStatus { status }
    }

    fn push_staff(&self, out: &mut Outcome, msg: ServerMsg) {
        out.events.push(Event {
            to: Audience::ClinicStaff(self.clinic.clone()),
            msg,
        });
    }

    fn audit(
        &self,
        out: &mut Outcome,
        ctx: &Ctx,
        action: &str,
        visit: Option<VisitId>,
        consultation: Option<ConsultationId>,
        detail: Option<String>,
    ) {
        out.audit.push(AuditEntry {
            at: ctx.now,
            actor: ctx.actor.clone(),
            action: action.to_owned(),
            clinic: Some(self.clinic.clone()),
            visit,
            consultation,
            detail,
        });
    }
}

impl Visit {
    pub fn view(&self) -> VisitView {
        VisitView {
            id: self.id,
            name: self.name.clone(),
            details: self.details.clone(),
            appointment: self.appointment.clone(),
            arrived_at: self.arrived_at,
            status: match self.state {
                VisitState::Waiting => VisitStatus::Waiting,
                VisitState::InConsultation(consultation) => {
                    VisitStatus::InConsultation { consultation }
                }
            },
            // Presence is not room state: the hub (and the snapshot) fill this in from the
            // store's leases.
            online: false,
            for_clinician: self.for_clinician.clone(),
            media_path: self.media_path,
        }
    }
}

impl Consultation {
    pub fn view(&self) -> ConsultationView {
        ConsultationView {
            id: self.id,
            clinician: self.clinician.clone(),
            started_at: self.started_at,
            visits: self.visits.clone(),
            clinician_path: self.clinician_path,
            audio_only: self.audio_only,
        }
    }
}
