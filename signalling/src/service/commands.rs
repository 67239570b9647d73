//! Commands: what staff and patients ask to change in the rooms, each checked against
//! the policy ([`crate::auth::policy`]) on the state it would change, then applied by the
//! room state machine in one transaction.

use protocol::{
    ClinicId, Command, ConsultationId, MAX_TEXT_CHARS, Role, StaffId, TransferTarget,
    VisitEndReason, VisitId,
};

use super::{Service, required_text};
use crate::auth::{Action, AuthError, Principal, Target, authorize, may_ever};
use crate::error::AppError;
use crate::room::{ClinicRoom, VisitState};

/// What a command about `visit` touches, for the policy: a waiting patient, or a patient
/// in a call `me` leads or a colleague leads.
fn visit_target(room: &ClinicRoom, visit: VisitId, me: &StaffId) -> Result<Target, AppError> {
    room.visit(visit)
        .ok_or(crate::room::RoomError::VisitNotFound)?;
    Ok(call_target(room, visit, me).unwrap_or(Target::Waiting))
}

/// For a visit in a call: whether `me` leads that call. `None` for a waiting (or unknown)
/// visit, which the room operation then refuses with its own answer.
fn call_target(room: &ClinicRoom, visit: VisitId, me: &StaffId) -> Option<Target> {
    let VisitState::InConsultation(cid) = room.visit(visit)?.state else {
        return None;
    };
    let own = room.consultation(cid).is_some_and(|c| &c.clinician == me);
    Some(if own {
        Target::OwnCall
    } else {
        Target::ColleaguesCall
    })
}

/// Whether `me` leads consultation `cid`, for the policy.
fn consultation_target(
    room: &ClinicRoom,
    cid: ConsultationId,
    me: &StaffId,
) -> Result<Target, AppError> {
    let host = room
        .consultation(cid)
        .ok_or(crate::room::RoomError::ConsultationNotFound)?;
    Ok(if host.clinician == *me {
        Target::OwnCall
    } else {
        Target::ColleaguesCall
    })
}

impl Service {
    /// Carries out one command for `who`, or says why not; nothing changes on error.
    pub async fn execute(&self, who: &Principal, command: Command) -> Result<(), AppError> {
        let kind = command.kind();
        let result = self.run_command(who, command).await;
        self.metrics
            .command(kind, result.as_ref().err().map(AppError::code));
        result
    }

    async fn run_command(&self, who: &Principal, command: Command) -> Result<(), AppError> {
        let actor = who.audit_label();
        let staff = match who {
            Principal::Staff(s) => s,
            Principal::Patient(visit) => {
                let Command::Leave = command else {
                    return Err(AuthError::Forbidden.into());
                };
                let visit = *visit;
                let clinic = self
                    .store
                    .locate(visit)
                    .await?
                    .ok_or(AppError::VisitEnded)?;
                return self
                    .transact(&actor, &[clinic], |rooms, ctx| {
                        Ok(vec![rooms[0].end_visit(
                            visit,
                            VisitEndReason::Left,
                            ctx,
                        )?])
                    })
                    .await;
            }
        };
        let me = staff.sub.clone();
        match command {
            Command::Leave => Err(AppError::Invalid("only a patient can leave a visit".into())),
            Command::SendMessage {
                clinic,
                visit,
                text,
            } => {
                may_ever(staff, Action::SendMessage, &clinic)?;
                let text = required_text("the message", &text, MAX_TEXT_CHARS)?;
                self.transact(&actor, std::slice::from_ref(&clinic), |rooms, ctx| {
                    let target = visit_target(&rooms[0], visit, &me)?;
                    authorize(staff, Action::SendMessage, Some(&clinic), target)?;
                    Ok(vec![rooms[0].message(visit, text.clone(), ctx)?])
                })
                .await
            }
            Command::Admit {
                clinic,
                visit,
                clinician,
                consultation,
            } => {
                let action = if clinician == staff.sub {
                    Action::AdmitToSelf
                } else {
                    Action::AdmitToOther
                };
                authorize(staff, action, Some(&clinic), Target::Waiting)?;
                self.check_clinician(&clinician, &clinic).await?;
                let new = ConsultationId::random();
                self.transact(&actor, &[clinic], |rooms, ctx| {
                    Ok(vec![rooms[0].admit(
                        visit,
                        clinician.clone(),
                        consultation,
                        new,
                        ctx,
                    )?])
                })
                .await
            }
            Command::AdmitNext { clinic } => {
                authorize(staff, Action::AdmitNext, Some(&clinic), Target::Clinic)?;
                let new = ConsultationId::random();
                self.transact(&actor, &[clinic], |rooms, ctx| {
                    let visit = rooms[0].next_for(&me)?;
                    Ok(vec![rooms[0].admit(visit, me.clone(), None, new, ctx)?])
                })
                .await
            }
            Command::ReturnToWaiting { clinic, visit } => {
                may_ever(staff, Action::ReturnToWaiting, &clinic)?;
                self.transact(&actor, std::slice::from_ref(&clinic), |rooms, ctx| {
                    if let Some(target) = call_target(&rooms[0], visit, &me) {
                        authorize(staff, Action::ReturnToWaiting, Some(&clinic), target)?;
                    }
                    Ok(vec![rooms[0].return_to_waiting(visit, ctx)?])
                })
                .await
            }
            Command::Transfer { clinic, visit, to } => match to {
                TransferTarget::Clinician { clinician } => {
                    may_ever(staff, Action::TransferToClinician, &clinic)?;
                    self.check_clinician(&clinician, &clinic).await?;
                    self.transact(&actor, std::slice::from_ref(&clinic), |rooms, ctx| {
                        let target = visit_target(&rooms[0], visit, &me)?;
                        authorize(staff, Action::TransferToClinician, Some(&clinic), target)?;
                        Ok(vec![rooms[0].assign(visit, clinician.clone(), ctx)?])
                    })
                    .await
                }
                TransferTarget::Clinic { clinic: to } => {
                    may_ever(staff, Action::TransferOut, &clinic)?;
                    // The destination too: staff only place patients where they work.
                    authorize(staff, Action::TransferIn, Some(&to), Target::Clinic)?;
                    if to == clinic {
                        return Err(crate::room::RoomError::SameClinic.into());
                    }
                    let source = clinic.clone();
                    self.transact(&actor, &[clinic, to.clone()], |rooms, ctx| {
                        let target = visit_target(&rooms[0], visit, &me)?;
                        authorize(staff, Action::TransferOut, Some(&source), target)?;
                        let (v, out_of) = rooms[0].take_out(visit, &to, ctx)?;
                        let into = rooms[1].take_in(v);
                        Ok(vec![out_of, into])
                    })
                    .await
                }
            },
            Command::Remove { clinic, visit } => {
                may_ever(staff, Action::Remove, &clinic)?;
                self.transact(&actor, std::slice::from_ref(&clinic), |rooms, ctx| {
                    let target = visit_target(&rooms[0], visit, &me)?;
                    authorize(staff, Action::Remove, Some(&clinic), target)?;
                    Ok(vec![rooms[0].end_visit(
                        visit,
                        VisitEndReason::Removed,
                        ctx,
                    )?])
                })
                .await
            }
            Command::EndConsultation {
                clinic,
                consultation,
            } => {
                // Refuse those who may end no consultation before looking at which one.
                may_ever(staff, Action::EndConsultation, &clinic)?;
                self.transact(&actor, std::slice::from_ref(&clinic), |rooms, ctx| {
                    let target = consultation_target(&rooms[0], consultation, &me)?;
                    authorize(staff, Action::EndConsultation, Some(&clinic), target)?;
                    Ok(vec![rooms[0].end_consultation(consultation, ctx)?])
                })
                .await
            }
            Command::SetAudioOnly {
                clinic,
                consultation,
                on,
            } => {
                may_ever(staff, Action::SetAudioOnly, &clinic)?;
                self.transact(&actor, std::slice::from_ref(&clinic), |rooms, ctx| {
                    let target = consultation_target(&rooms[0], consultation, &me)?;
                    authorize(staff, Action::SetAudioOnly, Some(&clinic), target)?;
                    Ok(vec![rooms[0].set_audio_only(consultation, on, ctx)?])
                })
                .await
            }
        }
    }

    /// A patient may only be admitted or transferred to a clinician of the same clinic.
    async fn check_clinician(&self, who: &StaffId, clinic: &ClinicId) -> Result<(), AppError> {
        match self.store.staff(who).await? {
            Some(s) if s.role == Role::Clinician && s.clinics.contains(clinic) => Ok(()),
            _ => Err(AppError::Invalid(format!(
                "{who} is not a clinician of this clinic"
            ))),
        }
    }
}
