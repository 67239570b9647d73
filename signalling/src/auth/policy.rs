//! The authorisation policy: which role may do which action in which clinic.
//!
//! Staff act only in the clinics they are assigned to; admins act in every clinic.
//! Patients never reach this table: a visit credential allows leaving one's own visit and
//! nothing else (decided in [`crate::service`]).

use protocol::{ClinicId, Role};

use super::{AuthError, StaffClaims};

/// Everything a member of staff can ask for, at the granularity the policy decides on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// See a clinic's waiting room and consultations.
    ViewRoom,
    SendMessage,
    /// Admit a patient to oneself.
    AdmitToSelf,
    /// Admit a patient to another clinician.
    AdmitToOther,
    AdmitNext,
    ReturnToWaiting,
    Transfer,
    Remove,
    /// End a consultation one hosts.
    EndOwnConsultation,
    /// End a consultation another clinician hosts.
    EndOtherConsultation,
    IssueInvite,
    /// Create clinics and staff, read the audit log.
    Administer,
}

impl Action {
    pub const ALL: [Action; 12] = [
        Action::ViewRoom,
        Action::SendMessage,
        Action::AdmitToSelf,
        Action::AdmitToOther,
        Action::AdmitNext,
        Action::ReturnToWaiting,
        Action::Transfer,
        Action::Remove,
        Action::EndOwnConsultation,
        Action::EndOtherConsultation,
        Action::IssueInvite,
        Action::Administer,
    ];
}

/// What a role may do in a clinic it is assigned to.
fn role_allows(role: Role, action: Action) -> bool {
    use Action::*;
    match role {
        Role::Admin => true,
        Role::Reception => matches!(
            action,
            ViewRoom | SendMessage | AdmitToOther | ReturnToWaiting | Transfer | Remove
        ),
        Role::Clinician => matches!(
            action,
            ViewRoom
                | SendMessage
                | AdmitToSelf
                | AdmitNext
                | ReturnToWaiting
                | Transfer
                | EndOwnConsultation
                | IssueInvite
        ),
    }
}

/// Allows `action` in `clinic` (`None` for organisation-wide actions) or says why not.
pub fn authorize(
    staff: &StaffClaims,
    action: Action,
    clinic: Option<&ClinicId>,
) -> Result<(), AuthError> {
    let assigned = match clinic {
        _ if staff.role == Role::Admin => true,
        Some(c) => staff.clinics.contains(c),
        None => false,
    };
    if assigned && role_allows(staff.role, action) {
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
        keys.check_staff(&keys.staff_token(&session, exp)).unwrap()
    }

    /// The whole table, cell by cell: role × action × (own clinic, other clinic, no clinic).
    /// `Y` allowed, `.` refused; columns in [`Action::ALL`] order:
    /// view, message, admit-self, admit-other, next, return, transfer, remove,
    /// end-own, end-other, invite, administer.
    #[test]
    fn the_policy_table() {
        let table: [(Role, &str, &str, &str); 3] = [
            //              own clinic       other clinic     no clinic
            (Role::Admin, "YYYYYYYYYYYY", "YYYYYYYYYYYY", "YYYYYYYYYYYY"),
            (
                Role::Reception,
                "YY.Y.YYY....",
                "............",
                "............",
            ),
            (
                Role::Clinician,
                "YYY.YYY.Y.Y.",
                "............",
                "............",
            ),
        ];
        let own = ClinicId::parse("derm").unwrap();
        let other = ClinicId::parse("cardio").unwrap();
        for (role, own_row, other_row, none_row) in table {
            let staff = claims(role, &["derm"]);
            for (clinic, row) in [
                (Some(&own), own_row),
                (Some(&other), other_row),
                (None, none_row),
            ] {
                for (action, cell) in Action::ALL.iter().zip(row.chars()) {
                    let allowed = authorize(&staff, *action, clinic).is_ok();
                    assert_eq!(allowed, cell == 'Y', "{role:?} {action:?} in {clinic:?}");
                }
            }
        }
    }

    #[test]
    fn staff_with_no_clinics_can_do_nothing_in_any() {
        for role in [Role::Reception, Role::Clinician] {
            let staff = claims(role, &[]);
            for action in Action::ALL {
                assert!(
                    authorize(&staff, action, Some(&ClinicId::parse("derm").unwrap())).is_err()
                );
            }
        }
    }
}
