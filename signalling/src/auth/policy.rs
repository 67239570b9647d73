//! The authorisation policy, as data: which role may do which action to what, in the
//! clinics it is assigned to.
//!
//! Staff act only in the clinics they are assigned to (admins: in every clinic), and only
//! as [`POLICY`] allows for what the action touches: the clinic itself, a waiting patient,
//! a patient in (or a call) the caller leads, or a patient in (or a call) a colleague
//! leads. An action that touches two clinics (a transfer) is checked in both: out of the
//! one, into the other.
//!
//! **A call belongs to the clinician who leads it.** Taking anyone out of it (sending them
//! back to waiting, transferring, removing) or ending it is one kind of act on that call:
//! its own clinician, the clinic's reception and admins may do it; another clinician may
//! not. (Taking the last patient out of a call ends it, so whoever may do the one may do
//! the other.)
//!
//! Patients never reach this table: a visit credential allows leaving one's own visit and
//! nothing else (decided in [`crate::service`]). `docs/AUTHORISATION.md` is generated
//! from this table (`UPDATE_DOCS=1 cargo test -p signalling --test authorisation`), and
//! that test walks every cell through the real server.

use protocol::{ClinicId, Role};

use super::{AuthError, StaffClaims};

/// Everything a member of staff can ask for, at the granularity the policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See a clinic's waiting room, consultations and clinicians.
    ViewRoom,
    SendMessage,
    /// Admit a patient to oneself (a new call, or one's own call).
    AdmitToSelf,
    /// Admit a patient to another clinician (a new call, or that clinician's call).
    AdmitToOther,
    /// Admit the longest-waiting patient to oneself.
    AdmitNext,
    ReturnToWaiting,
    /// Mark a patient for a colleague in the same clinic (back to waiting, for them).
    TransferToClinician,
    /// Move a patient out of this clinic into another clinic's waiting room.
    TransferOut,
    /// Receive a patient moved from another clinic into this clinic's waiting room.
    TransferIn,
    /// End a patient's visit (a no-show).
    Remove,
    EndConsultation,
    /// Switch a call to sound only, or back to video (for a patient whose link cannot
    /// carry video).
    SetAudioOnly,
    /// Issue invite links, and see the clinic's invites.
    IssueInvite,
    RevokeInvite,
    /// Create clinics and staff, read the audit log, end other people's sign-ins.
    Administer,
}

impl Action {
    pub const ALL: [Action; 15] = [
        Action::ViewRoom,
        Action::SendMessage,
        Action::AdmitToSelf,
        Action::AdmitToOther,
        Action::AdmitNext,
        Action::ReturnToWaiting,
        Action::TransferToClinician,
        Action::TransferOut,
        Action::TransferIn,
        Action::Remove,
        Action::EndConsultation,
        Action::SetAudioOnly,
        Action::IssueInvite,
        Action::RevokeInvite,
        Action::Administer,
    ];

    /// What the action can touch: every pair (action, target) that can occur.
    pub fn targets(self) -> &'static [Target] {
        use Target::*;
        match self {
            Action::SendMessage
            | Action::TransferToClinician
            | Action::TransferOut
            | Action::Remove => &[Waiting, OwnCall, ColleaguesCall],
            Action::AdmitToSelf | Action::AdmitToOther => &[Waiting],
            Action::ReturnToWaiting | Action::EndConsultation | Action::SetAudioOnly => {
                &[OwnCall, ColleaguesCall]
            }
            Action::ViewRoom
            | Action::AdmitNext
            | Action::TransferIn
            | Action::IssueInvite
            | Action::RevokeInvite
            | Action::Administer => &[Clinic],
        }
    }
}

/// What an action touches, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// The clinic itself (its room, its invites), or the organisation for
    /// [`Action::Administer`].
    Clinic,
    /// A patient in the waiting room.
    Waiting,
    /// A patient in a call the caller leads, or that call.
    OwnCall,
    /// A patient in a call a colleague leads, or that call.
    ColleaguesCall,
}

/// One row of the table: whether each role may do `action` to `target` in a clinic it
/// is assigned to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub target: Target,
    pub admin: bool,
    pub reception: bool,
    pub clinician: bool,
}

const fn rule(
    action: Action,
    target: Target,
    admin: bool,
    reception: bool,
    clinician: bool,
) -> Rule {
    Rule {
        action,
        target,
        admin,
        reception,
        clinician,
    }
}

const Y: bool = true;
const N: bool = false;

/// The whole policy. A pair (action, target) that is not listed is refused to everyone.
/// Only clinicians lead calls, so only they have an "own call".
#[rustfmt::skip]
pub const POLICY: &[Rule] = {
    use Action::*;
    use Target::*;
    &[
        //    action               target          admin reception clinician
        rule(ViewRoom,             Clinic,         Y,    Y,        Y),
        rule(SendMessage,          Waiting,        Y,    Y,        Y),
        rule(SendMessage,          OwnCall,        N,    N,        Y),
        rule(SendMessage,          ColleaguesCall, Y,    Y,        N),
        rule(AdmitToSelf,          Waiting,        N,    N,        Y),
        rule(AdmitToOther,         Waiting,        Y,    Y,        N),
        rule(AdmitNext,            Clinic,         N,    N,        Y),
        rule(ReturnToWaiting,      OwnCall,        N,    N,        Y),
        rule(ReturnToWaiting,      ColleaguesCall, Y,    Y,        N),
        rule(TransferToClinician,  Waiting,        Y,    Y,        Y),
        rule(TransferToClinician,  OwnCall,        N,    N,        Y),
        rule(TransferToClinician,  ColleaguesCall, Y,    Y,        N),
        rule(TransferOut,          Waiting,        Y,    Y,        Y),
        rule(TransferOut,          OwnCall,        N,    N,        Y),
        rule(TransferOut,          ColleaguesCall, Y,    Y,        N),
        rule(TransferIn,           Clinic,         Y,    Y,        Y),
        rule(Remove,               Waiting,        Y,    Y,        N),
        rule(Remove,               ColleaguesCall, Y,    Y,        N),
        rule(EndConsultation,      OwnCall,        N,    N,        Y),
        rule(EndConsultation,      ColleaguesCall, Y,    Y,        N),
        rule(SetAudioOnly,         OwnCall,        N,    N,        Y),
        rule(SetAudioOnly,         ColleaguesCall, Y,    Y,        N),
        rule(IssueInvite,          Clinic,         Y,    N,        Y),
        rule(RevokeInvite,         Clinic,         Y,    N,        Y),
        rule(Administer,           Clinic,         Y,    N,        N),
    ]
};

impl Rule {
    pub fn allows(&self, role: Role) -> bool {
        match role {
            Role::Admin => self.admin,
            Role::Reception => self.reception,
            Role::Clinician => self.clinician,
        }
    }
}

/// Whether `role` may do `action` to `target` in a clinic it is assigned to.
pub fn role_allows(role: Role, action: Action, target: Target) -> bool {
    POLICY
        .iter()
        .any(|r| r.action == action && r.target == target && r.allows(role))
}

/// Whether `staff` may act in `clinic` at all (`None`: organisation-wide, admins only).
fn assigned(staff: &StaffClaims, clinic: Option<&ClinicId>) -> bool {
    match clinic {
        _ if staff.role == Role::Admin => true,
        Some(c) => staff.clinics.contains(c),
        None => false,
    }
}

/// Allows `action` on `target` in `clinic` (`None` for organisation-wide actions), or
/// says why not.
pub fn authorize(
    staff: &StaffClaims,
    action: Action,
    clinic: Option<&ClinicId>,
    target: Target,
) -> Result<(), AuthError> {
    if assigned(staff, clinic) && role_allows(staff.role, action, target) {
        Ok(())
    } else {
        Err(AuthError::Forbidden)
    }
}

/// Refuses early, before anything is looked up, a caller who may do `action` to nothing
/// in `clinic`: so someone outside a clinic learns nothing about what it holds.
pub fn may_ever(staff: &StaffClaims, action: Action, clinic: &ClinicId) -> Result<(), AuthError> {
    let any = POLICY
        .iter()
        .any(|r| r.action == action && r.allows(staff.role));
    if assigned(staff, Some(clinic)) && any {
        Ok(())
    } else {
        Err(AuthError::Forbidden)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Keys;

    fn claims(role: Role, clinics: &[&str]) -> StaffClaims {
        // Built through a real token so the test sees what the server sees.
        let keys = Keys::new(&[3u8; 32]).unwrap();
        let clinics = clinics
            .iter()
            .map(|c| ClinicId::parse(*c).unwrap())
            .collect();
        let exp = protocol::Timestamp(4_000_000_000_000);
        let session = crate::auth::tests::session("someone", role, clinics);
        keys.check_staff(&keys.staff_token(&session, protocol::SessionId::random(), exp))
            .unwrap()
    }

    #[test]
    fn every_pair_appears_once() {
        for (i, a) in POLICY.iter().enumerate() {
            for b in &POLICY[i + 1..] {
                assert!(
                    (a.action, a.target) != (b.action, b.target),
                    "{:?} {:?} twice",
                    a.action,
                    a.target
                );
            }
        }
    }

    #[test]
    fn every_rule_is_about_something_its_action_can_touch() {
        for r in POLICY {
            assert!(
                r.action.targets().contains(&r.target),
                "{:?} {:?}",
                r.action,
                r.target
            );
        }
    }

    #[test]
    fn only_clinicians_have_calls_of_their_own() {
        for r in POLICY.iter().filter(|r| r.target == Target::OwnCall) {
            assert!(!r.admin && !r.reception, "{:?}", r.action);
        }
    }

    #[test]
    fn outside_their_clinics_staff_can_do_nothing() {
        let other = ClinicId::parse("cardio").unwrap();
        for role in [Role::Reception, Role::Clinician] {
            let staff = claims(role, &["derm"]);
            for r in POLICY {
                assert!(authorize(&staff, r.action, Some(&other), r.target).is_err());
                assert!(authorize(&staff, r.action, None, r.target).is_err());
                assert!(may_ever(&staff, r.action, &other).is_err());
            }
        }
        let admin = claims(Role::Admin, &[]);
        for r in POLICY {
            assert_eq!(
                authorize(&admin, r.action, Some(&other), r.target).is_ok(),
                r.admin
            );
        }
    }

    #[test]
    fn a_colleagues_call_is_touched_alike_whatever_the_action() {
        // One rule for ending, returning, transferring and removing from a colleague's
        // call: whoever may end it may take anyone out of it, and the other way round.
        let out_of_call = [
            Action::ReturnToWaiting,
            Action::TransferToClinician,
            Action::TransferOut,
            Action::Remove,
            Action::EndConsultation,
        ];
        for role in [Role::Admin, Role::Reception, Role::Clinician] {
            let answers: Vec<bool> = out_of_call
                .iter()
                .map(|a| role_allows(role, *a, Target::ColleaguesCall))
                .collect();
            assert!(
                answers.iter().all(|a| *a == answers[0]),
                "{role:?}: {answers:?}"
            );
        }
        assert!(!role_allows(
            Role::Clinician,
            Action::ReturnToWaiting,
            Target::ColleaguesCall
        ));
    }
}
