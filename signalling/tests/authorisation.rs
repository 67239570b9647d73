//! The authorisation matrix, walked cell by cell through the real server: every role ×
//! action × what it touches (a waiting patient, the caller's own call, a colleague's call,
//! the clinic) × clinic (one the caller is assigned to, one they are not). Each cell sets
//! up its own situation, sends the request over HTTP, and checks that the server did what
//! `auth::POLICY` says: allowed (and the room changed) or refused with 403 (and nothing
//! changed). The table of what the server did is `docs/AUTHORISATION.md`;
//! `UPDATE_DOCS=1` rewrites it after a deliberate change of the policy.

#![allow(clippy::unwrap_used)]

mod common;

use std::fmt::Write as _;
use std::sync::Arc;

use common::server::{PASSWORD, TestServer, limits};
use protocol::{
    ClinicId, Command, ConsultationId, CreateClinic, CreateStaff, ErrorCode, IssueInvite, Role,
    ServerMsg, StaffId, TransferTarget, VisitId, VisitStatus,
};
use signalling::auth::{Action, Target, role_allows};
use signalling::room::Ctx;
use signalling::store::local::LocalStore;
use signalling::store::{Commit, RoomWrite, Store};

const OWN: &str = "derm";
const OWN_2: &str = "derm2";
const OTHER: &str = "cardio";

fn clinic(id: &str) -> ClinicId {
    ClinicId::parse(id).unwrap()
}
fn staff(id: &str) -> StaffId {
    StaffId::parse(id).unwrap()
}

/// Who acts, by role: each is assigned to `derm` and `derm2` (admins to nothing: they act
/// everywhere), never to `cardio`.
const ACTORS: [(Role, &str); 3] = [
    (Role::Admin, "admin"),
    (Role::Reception, "alice"),
    (Role::Clinician, "dr.jones"),
];

/// The colleague who leads "a colleague's call" in a clinic.
fn colleague(c: &str) -> &'static str {
    if c == OTHER { "dr.heart" } else { "dr.smith" }
}

async fn setup() -> (TestServer, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let s = TestServer::start(store.clone(), limits()).await;
    for id in [OWN, OWN_2, OTHER] {
        s.service
            .create_clinic(
                "test",
                CreateClinic {
                    id: clinic(id),
                    name: format!("Clinic {id}"),
                    open_link: true,
                },
            )
            .await
            .unwrap();
    }
    let people: [(&str, Role, &[&str]); 5] = [
        ("admin", Role::Admin, &[]),
        ("alice", Role::Reception, &[OWN, OWN_2]),
        ("dr.jones", Role::Clinician, &[OWN, OWN_2]),
        ("dr.smith", Role::Clinician, &[OWN, OWN_2]),
        ("dr.heart", Role::Clinician, &[OTHER]),
    ];
    for (user, role, clinics) in people {
        s.service
            .create_staff(
                "test",
                CreateStaff {
                    username: staff(user),
                    display_name: format!("{user} name"),
                    role,
                    clinics: clinics.iter().map(|c| clinic(c)).collect(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .unwrap();
    }
    (s, store)
}

/// A room as it stands, without who is online (presence is not a change anyone made).
async fn room_state(s: &TestServer, admin: &str, c: &str) -> String {
    let ServerMsg::ClinicSnapshot {
        mut visits,
        consultations,
        ..
    } = s.snapshot(admin, c).await
    else {
        panic!("no snapshot")
    };
    for v in &mut visits {
        v.online = false;
    }
    format!("{visits:?} {consultations:?}")
}

/// The consultation a visit is in.
async fn consultation_of(s: &TestServer, admin: &str, c: &str, visit: VisitId) -> ConsultationId {
    let ServerMsg::ClinicSnapshot { visits, .. } = s.snapshot(admin, c).await else {
        panic!("no snapshot")
    };
    match visits.iter().find(|v| v.id == visit).unwrap().status {
        VisitStatus::InConsultation { consultation } => consultation,
        VisitStatus::Waiting => panic!("not in a call"),
    }
}

/// Puts `visit` in a new call led by `clinician`, straight through the store: a clinician
/// can lead a call in a clinic they are no longer assigned to (they were moved since).
async fn admit_directly(store: &Arc<dyn Store>, c: &str, visit: VisitId, clinician: &str) {
    let current = store.room(&clinic(c)).await.unwrap().unwrap();
    let mut room = Arc::unwrap_or_clone(current.value);
    let ctx = Ctx {
        actor: "test".into(),
        now: signalling::service::now(),
    };
    let out = room
        .admit(
            visit,
            staff(clinician),
            None,
            ConsultationId::random(),
            &ctx,
        )
        .unwrap();
    let mut commit = Commit::default();
    commit.rooms.push(RoomWrite {
        expected: current.version,
        room,
        events: out.events,
    });
    store.commit(commit).await.unwrap();
}

/// What a cell is about: a waiting patient, or one in a call.
async fn scene(
    s: &TestServer,
    store: &Arc<dyn Store>,
    admin: &str,
    actor: &str,
    c: &str,
    target: Target,
) -> VisitId {
    let v = s.enter(c, "Pat Matrix").await.visit;
    let lead = match target {
        Target::Waiting | Target::Clinic => return v,
        Target::OwnCall => actor,
        Target::ColleaguesCall => colleague(c),
    };
    if target == Target::OwnCall && c == OTHER {
        admit_directly(store, c, v, lead).await;
    } else {
        let (status, _) = s
            .command(
                admin,
                &Command::Admit {
                    clinic: clinic(c),
                    visit: v,
                    clinician: staff(lead),
                    consultation: None,
                },
            )
            .await;
        assert_eq!(status, 204, "admitting to {lead} in {c}");
    }
    v
}

async fn get(s: &TestServer, token: &str, path: &str) -> u16 {
    s.http
        .get(s.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Carries out one cell; `Some(true)` allowed, `Some(false)` refused, `None` when the
/// situation cannot occur (only clinicians lead calls).
#[allow(clippy::too_many_arguments)]
async fn cell(
    s: &TestServer,
    store: &Arc<dyn Store>,
    admin: &str,
    (role, actor, token): (Role, &str, &str),
    action: Action,
    target: Target,
    c: &str,
) -> Option<bool> {
    if target == Target::OwnCall && role != Role::Clinician {
        return None;
    }
    let v = scene(s, store, admin, actor, c, target).await;
    // The clinics whose rooms the action could change.
    let (source, watched): (&str, Vec<&str>) = match action {
        Action::TransferIn => {
            let source = if c == OTHER { OWN } else { OWN_2 };
            // The scene's patient waits in the source clinic instead.
            let v2 = s.enter(source, "Pat Incoming").await.visit;
            let before = (
                room_state(s, admin, source).await,
                room_state(s, admin, c).await,
            );
            let (status, code) = s
                .command(
                    token,
                    &Command::Transfer {
                        clinic: clinic(source),
                        visit: v2,
                        to: TransferTarget::Clinic { clinic: clinic(c) },
                    },
                )
                .await;
            let after = (
                room_state(s, admin, source).await,
                room_state(s, admin, c).await,
            );
            return Some(judge(status, code, before != after, true));
        }
        Action::TransferOut => (c, vec![c, if c == OTHER { OWN } else { OWN_2 }]),
        _ => (c, vec![c]),
    };
    let mut before = Vec::new();
    for w in &watched {
        before.push(room_state(s, admin, w).await);
    }
    let cl = clinic(source);
    let request = match action {
        Action::ViewRoom => {
            let a = get(s, token, &format!("/api/clinics/{c}/room")).await;
            let b = get(s, token, &format!("/api/clinics/{c}/clinicians")).await;
            assert_eq!(a, b, "{actor}: room and clinicians disagree in {c}");
            let q = get(s, token, &format!("/api/clinics/{c}/call-quality")).await;
            assert_eq!(a, q, "{actor}: room and call quality disagree in {c}");
            return Some(judge(
                a,
                (a == 403).then_some(ErrorCode::Forbidden),
                false,
                false,
            ));
        }
        Action::IssueInvite => {
            let (status, code) = s
                .post(
                    "/api/admin/invites",
                    Some(token),
                    &IssueInvite {
                        clinic: cl,
                        appointment: None,
                        appointment_at: None,
                        valid_for_secs: None,
                    },
                )
                .await;
            let list = get(s, token, &format!("/api/clinics/{c}/invites")).await;
            assert_eq!(
                list, status,
                "{actor}: issuing and listing invites disagree in {c}"
            );
            return Some(judge(status, code, false, false));
        }
        Action::RevokeInvite => {
            let issued: protocol::InviteResponse = s
                .http
                .post(s.url("/api/admin/invites"))
                .bearer_auth(admin)
                .json(&IssueInvite {
                    clinic: cl,
                    appointment: None,
                    appointment_at: None,
                    valid_for_secs: None,
                })
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            let path = format!("/api/invites/{}/revoke", issued.id);
            let (status, code) = s.post(&path, Some(token), &()).await;
            // Staff of another clinic are told there is no such invite (404), as if it
            // did not exist: refused either way.
            let (status, code) = if status == 404 {
                (403, Some(ErrorCode::Forbidden))
            } else {
                (status, code)
            };
            return Some(judge(status, code, false, false));
        }
        Action::Administer => {
            let statuses = [
                get(s, token, "/api/admin/audit").await,
                get(s, token, "/api/admin/staff").await,
                get(s, token, "/api/admin/clinics").await,
                get(s, token, "/api/admin/sessions").await,
            ];
            assert!(statuses.iter().all(|x| *x == statuses[0]), "{statuses:?}");
            let code = (statuses[0] == 403).then_some(ErrorCode::Forbidden);
            return Some(judge(statuses[0], code, false, false));
        }
        Action::SendMessage => Command::SendMessage {
            clinic: cl,
            visit: v,
            text: "Please wait a moment.".into(),
        },
        Action::AdmitToSelf => Command::Admit {
            clinic: cl,
            visit: v,
            clinician: staff(actor),
            consultation: None,
        },
        Action::AdmitToOther => Command::Admit {
            clinic: cl,
            visit: v,
            clinician: staff(colleague(c)),
            consultation: None,
        },
        Action::AdmitNext => Command::AdmitNext { clinic: cl },
        Action::ReturnToWaiting => Command::ReturnToWaiting {
            clinic: cl,
            visit: v,
        },
        Action::TransferToClinician => {
            let to = if c == OTHER {
                "dr.heart"
            } else if actor == "dr.smith" {
                "dr.jones"
            } else {
                "dr.smith"
            };
            Command::Transfer {
                clinic: cl,
                visit: v,
                to: TransferTarget::Clinician {
                    clinician: staff(to),
                },
            }
        }
        Action::TransferOut => Command::Transfer {
            clinic: cl,
            visit: v,
            to: TransferTarget::Clinic {
                clinic: clinic(watched[1]),
            },
        },
        Action::Remove => Command::Remove {
            clinic: cl,
            visit: v,
        },
        Action::EndConsultation => Command::EndConsultation {
            clinic: cl,
            consultation: consultation_of(s, admin, c, v).await,
        },
        Action::SetAudioOnly => Command::SetAudioOnly {
            clinic: cl,
            consultation: consultation_of(s, admin, c, v).await,
            on: true,
        },
        Action::TransferIn => unreachable!("handled above"),
    };
    let (status, code) = s.command(token, &request).await;
    let mut after = Vec::new();
    for w in &watched {
        after.push(room_state(s, admin, w).await);
    }
    // A message is kept for the patient; staff's view of the room does not show it.
    let is_change = action != Action::SendMessage;
    Some(judge(status, code, before != after, is_change))
}

/// Allowed: a success that changed the room (for a change); refused: 403 and nothing
/// changed. Anything else fails the test.
fn judge(status: u16, code: Option<ErrorCode>, changed: bool, is_change: bool) -> bool {
    match status {
        200..=299 => {
            assert!(changed || !is_change, "allowed but nothing changed");
            true
        }
        403 => {
            assert_eq!(code, Some(ErrorCode::Forbidden));
            assert!(!changed, "refused but something changed");
            false
        }
        other => panic!("neither allowed nor refused: {other} {code:?}"),
    }
}

fn action_name(a: Action) -> &'static str {
    match a {
        Action::ViewRoom => "view the waiting room, clinicians and call quality",
        Action::SendMessage => "message a patient",
        Action::AdmitToSelf => "admit a patient to oneself",
        Action::AdmitToOther => "admit a patient to a clinician",
        Action::AdmitNext => "admit the next patient to oneself",
        Action::ReturnToWaiting => "send a patient back to waiting",
        Action::TransferToClinician => "transfer to a colleague in the clinic",
        Action::TransferOut => "transfer out to another clinic",
        Action::TransferIn => "transfer in from another clinic",
        Action::Remove => "remove a patient",
        Action::EndConsultation => "end a call",
        Action::SetAudioOnly => "switch a call to sound only",
        Action::IssueInvite => "issue an invite link, list the clinic's invites",
        Action::RevokeInvite => "revoke an invite link",
        Action::Administer => "administer (clinics, staff, audit log, sign-ins)",
    }
}

fn target_name(a: Action, t: Target) -> &'static str {
    match t {
        Target::Clinic if a == Action::Administer => "the organisation",
        Target::Clinic => "the clinic",
        Target::Waiting => "a waiting patient",
        Target::OwnCall => "own call",
        Target::ColleaguesCall => "a colleague's call",
    }
}

fn mark(x: Option<bool>) -> &'static str {
    match x {
        Some(true) => "yes",
        Some(false) => "no",
        None => "—",
    }
}

#[tokio::test]
async fn every_cell_of_the_matrix_holds_on_the_real_server() {
    let (s, store) = setup().await;
    let admin = s.sign_in("admin").await.token;
    let mut tokens = Vec::new();
    for (role, user) in ACTORS {
        tokens.push((role, user, s.sign_in(user).await.token));
    }
    let mut doc = String::from(
        "# Authorisation matrix\n\n\
         Generated by `signalling/tests/authorisation.rs` from what the server did when every \
         cell was tried (`UPDATE_DOCS=1 cargo test -p signalling --test authorisation` \
         rewrites it); the rules are `POLICY` in `signalling/src/auth/policy.rs`.\n\n\
         *Own clinic*: one the member of staff is assigned to; *other*: one they are not \
         (admins act in every clinic). *Own call*: a call the clinician leads; *a colleague's \
         call*: one another clinician leads (or a patient in it). A call belongs to the \
         clinician who leads it: its own clinician, the clinic's reception and admins may end \
         it or take anyone out of it; another clinician may not. \"—\": cannot occur (only \
         clinicians lead calls).\n\n\
         | action | on | admin, own clinic | admin, other | reception, own clinic | reception, other | clinician, own clinic | clinician, other |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for action in Action::ALL {
        for &target in action.targets() {
            let mut row = format!(
                "| {} | {} |",
                action_name(action),
                target_name(action, target)
            );
            for (role, actor, token) in &tokens {
                for c in [OWN, OTHER] {
                    println!("cell: {role:?} {action:?} on {target:?} in {c}");
                    let got =
                        cell(&s, &store, &admin, (*role, actor, token), action, target, c).await;
                    let assigned =
                        *role == Role::Admin || (c != OTHER && action != Action::Administer);
                    let expected = (target != Target::OwnCall || *role == Role::Clinician)
                        .then(|| assigned && role_allows(*role, action, target));
                    assert_eq!(
                        got, expected,
                        "{role:?} {actor}: {action:?} on {target:?} in {c}"
                    );
                    write!(row, " {} |", mark(got)).unwrap();
                }
            }
            doc.push_str(&row);
            doc.push('\n');
        }
    }
    doc.push_str(
        "\nA patient's visit credential allows one thing: leaving their own visit (`leave`). \
         Every other command is refused (403) and every staff endpoint answers 401 \
         (`a_patient_may_only_leave_their_own_visit` in the same test file).\n",
    );
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/AUTHORISATION.md");
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::write(path, &doc).unwrap();
    }
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    assert_eq!(
        committed, doc,
        "docs/AUTHORISATION.md is not what the server does; rerun with UPDATE_DOCS=1"
    );
    s.stop().await;
}

#[tokio::test]
async fn a_patient_may_only_leave_their_own_visit() {
    let (s, _store) = setup().await;
    let admin = s.sign_in("admin").await.token;
    let me = s.enter(OWN, "Pat Self").await;
    let other = s.enter(OWN, "Pat Other").await;
    let c = clinic(OWN);
    let commands = [
        Command::SendMessage {
            clinic: c.clone(),
            visit: other.visit,
            text: "hello".into(),
        },
        Command::Admit {
            clinic: c.clone(),
            visit: me.visit,
            clinician: staff("dr.jones"),
            consultation: None,
        },
        Command::AdmitNext { clinic: c.clone() },
        Command::ReturnToWaiting {
            clinic: c.clone(),
            visit: other.visit,
        },
        Command::Transfer {
            clinic: c.clone(),
            visit: other.visit,
            to: TransferTarget::Clinic {
                clinic: clinic(OTHER),
            },
        },
        Command::Remove {
            clinic: c.clone(),
            visit: other.visit,
        },
        Command::EndConsultation {
            clinic: c.clone(),
            consultation: ConsultationId::random(),
        },
        Command::SetAudioOnly {
            clinic: c.clone(),
            consultation: ConsultationId::random(),
            on: true,
        },
    ];
    let before = room_state(&s, &admin, OWN).await;
    for cmd in &commands {
        assert_eq!(
            s.command(&me.visit_token, cmd).await,
            (403, Some(ErrorCode::Forbidden)),
            "{cmd:?}"
        );
    }
    for path in [
        "/api/clinics/derm/room",
        "/api/clinics/derm/clinicians",
        "/api/clinics/derm/call-quality",
        "/api/admin/audit",
        "/api/admin/staff",
    ] {
        assert_eq!(get(&s, &me.visit_token, path).await, 401, "{path}");
    }
    assert_eq!(before, room_state(&s, &admin, OWN).await);
    assert_eq!(s.command(&me.visit_token, &Command::Leave).await.0, 204);
    let after = room_state(&s, &admin, OWN).await;
    assert!(!after.contains(&me.visit.to_string()));
    assert!(after.contains(&other.visit.to_string()));
    s.stop().await;
}
