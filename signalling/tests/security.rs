//! The gaps an attack-style review found (issue 13), each reproduced against a real server
//! on port 0: every test here failed before its fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::server::{TestServer, directory, limits};
use protocol::{
    ClinicId, Command, CreateStaff, EnterRequest, EnterResponse, Entry, ErrorBody, ErrorCode,
    InviteResponse, InviteView, IssueInvite, Role, ServerMsg, SignInResponse, StaffId, Timestamp,
    TransferTarget, VisitStatus,
};
use signalling::service::TokenLifetimes;
use signalling::store::Store;
use signalling::store::local::LocalStore;

fn clinic(id: &str) -> ClinicId {
    ClinicId::parse(id).unwrap()
}
fn staff(id: &str) -> StaffId {
    StaffId::parse(id).unwrap()
}

async fn local_server() -> TestServer {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let s = TestServer::start(store, limits()).await;
    directory(&s.service).await;
    s
}

/// The visits of a clinic's room, as its staff see them.
async fn visits(s: &TestServer, token: &str, clinic: &str) -> Vec<protocol::VisitView> {
    match s.snapshot(token, clinic).await {
        ServerMsg::ClinicSnapshot { visits, .. } => visits,
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn staff_cannot_transfer_a_patient_into_a_clinic_they_have_no_access_to() {
    let s = local_server().await;
    let admin = s.sign_in("admin").await.token;
    let entered = s.enter("derm", "Pat Moved").await;
    for user in ["alice", "dr.jones"] {
        let token = s.sign_in(user).await.token;
        let (status, code) = s
            .command(
                &token,
                &Command::Transfer {
                    clinic: clinic("derm"),
                    visit: entered.visit,
                    to: TransferTarget::Clinic {
                        clinic: clinic("cardio"),
                    },
                },
            )
            .await;
        assert_eq!((status, code), (403, Some(ErrorCode::Forbidden)), "{user}");
    }
    // Nothing moved: the patient is still in derm, and cardio's queue is empty.
    assert!(
        visits(&s, &admin, "derm")
            .await
            .iter()
            .any(|v| v.id == entered.visit)
    );
    assert!(visits(&s, &admin, "cardio").await.is_empty());
    s.stop().await;
}

#[tokio::test]
async fn a_clinician_cannot_take_the_patient_out_of_a_colleagues_call() {
    let s = local_server().await;
    let smith = s.sign_in("dr.smith").await.token;
    let jones = s.sign_in("dr.jones").await.token;
    let entered = s.enter("derm", "Pat Smiths").await;
    let (status, _) = s
        .command(
            &smith,
            &Command::Admit {
                clinic: clinic("derm"),
                visit: entered.visit,
                clinician: staff("dr.smith"),
                consultation: None,
            },
        )
        .await;
    assert_eq!(status, 204);
    let attempts = [
        Command::ReturnToWaiting {
            clinic: clinic("derm"),
            visit: entered.visit,
        },
        Command::Transfer {
            clinic: clinic("derm"),
            visit: entered.visit,
            to: TransferTarget::Clinician {
                clinician: staff("dr.jones"),
            },
        },
    ];
    for cmd in attempts {
        let (status, code) = s.command(&jones, &cmd).await;
        assert_eq!((status, code), (403, Some(ErrorCode::Forbidden)), "{cmd:?}");
    }
    // Dr Smith's call goes on.
    let v = visits(&s, &smith, "derm").await;
    assert!(
        matches!(v[0].status, VisitStatus::InConsultation { .. }),
        "{v:?}"
    );
    s.stop().await;
}

async fn issue(s: &TestServer, token: &str, req: &IssueInvite) -> InviteResponse {
    let r = s
        .http
        .post(s.url("/api/admin/invites"))
        .bearer_auth(token)
        .json(req)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn enter_with(
    s: &TestServer,
    token: &str,
    previous: Option<&str>,
    name: &str,
) -> Result<EnterResponse, (u16, ErrorCode)> {
    let r = s
        .http
        .post(s.url("/api/visits"))
        .json(&EnterRequest {
            entry: Entry::Invite {
                token: token.into(),
                previous: previous.map(Into::into),
            },
            name: name.into(),
            details: None,
        })
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        Ok(r.json().await.unwrap())
    } else {
        Err((status, r.json::<ErrorBody>().await.unwrap().code))
    }
}

#[tokio::test]
async fn an_appointment_invite_admits_one_patient_and_can_be_revoked() {
    let s = local_server().await;
    let jones = s.sign_in("dr.jones").await.token;
    let invite = issue(
        &s,
        &jones,
        &IssueInvite {
            clinic: clinic("derm"),
            appointment: Some("APT-1".into()),
            appointment_at: None,
            valid_for_secs: None,
        },
    )
    .await;
    // The link keeps its credential in the fragment, which no server or proxy logs.
    assert!(invite.url.contains("/i#"), "{}", invite.url);
    let first = enter_with(&s, &invite.token, None, "Pat First")
        .await
        .unwrap();
    // A second person with the same link is refused, in plain words.
    assert_eq!(
        enter_with(&s, &invite.token, None, "Someone Else")
            .await
            .unwrap_err(),
        (409, ErrorCode::InviteUsed)
    );
    // The same patient again (their browser holds the visit credential) resumes the visit.
    let again = enter_with(&s, &invite.token, Some(&first.visit_token), "Pat First")
        .await
        .unwrap();
    assert_eq!(again.visit, first.visit);
    assert_eq!(visits(&s, &jones, "derm").await.len(), 1);
    // If their visit ended by accident, they (and only they) can come back in.
    assert_eq!(s.command(&first.visit_token, &Command::Leave).await.0, 204);
    assert_eq!(
        enter_with(&s, &invite.token, None, "Someone Else")
            .await
            .unwrap_err(),
        (409, ErrorCode::InviteUsed)
    );
    let back = enter_with(&s, &invite.token, Some(&first.visit_token), "Pat First")
        .await
        .unwrap();
    assert_ne!(back.visit, first.visit);
    // Staff revoke it: nobody gets in with it any more, the patient included.
    let listed: Vec<InviteView> = s
        .http
        .get(s.url("/api/clinics/derm/invites"))
        .bearer_auth(&jones)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .any(|i| i.id == invite.id && i.used && !i.revoked)
    );
    let (status, _) = s
        .post(
            &format!("/api/invites/{}/revoke", invite.id),
            Some(&jones),
            &(),
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(s.command(&back.visit_token, &Command::Leave).await.0, 204);
    assert_eq!(
        enter_with(&s, &invite.token, Some(&back.visit_token), "Pat First")
            .await
            .unwrap_err(),
        (410, ErrorCode::InviteRevoked)
    );
    // Reception of another clinic cannot revoke (or even find) it.
    let bob = s.sign_in("bob").await.token;
    let (status, _) = s
        .post(
            &format!("/api/invites/{}/revoke", invite.id),
            Some(&bob),
            &(),
        )
        .await;
    assert_eq!(status, 404);
    s.stop().await;
}

#[tokio::test]
async fn of_two_people_entering_with_one_invite_at_once_one_gets_in() {
    let s = local_server().await;
    let jones = s.sign_in("dr.jones").await.token;
    for round in 0..5 {
        let invite = issue(
            &s,
            &jones,
            &IssueInvite {
                clinic: clinic("derm"),
                appointment: Some(format!("APT-R{round}")),
                appointment_at: None,
                valid_for_secs: None,
            },
        )
        .await;
        let (a, b) = tokio::join!(
            enter_with(&s, &invite.token, None, "Pat A"),
            enter_with(&s, &invite.token, None, "Pat B")
        );
        assert!(a.is_ok() != b.is_ok(), "{a:?} {b:?}");
        assert_eq!(a.err().or(b.err()), Some((409, ErrorCode::InviteUsed)));
    }
    assert_eq!(visits(&s, &jones, "derm").await.len(), 5);
    s.stop().await;
}

#[tokio::test]
async fn an_invite_expires_within_a_day_of_its_appointment() {
    let s = local_server().await;
    let jones = s.sign_in("dr.jones").await.token;
    let now = signalling::service::now();
    let day = 24 * 3600 * 1000;
    // By default: a day after it is issued.
    let plain = issue(
        &s,
        &jones,
        &IssueInvite {
            clinic: clinic("derm"),
            appointment: None,
            appointment_at: None,
            valid_for_secs: None,
        },
    )
    .await;
    assert!(
        plain.expires_at.0 <= now.0 + day + 5_000,
        "{:?}",
        plain.expires_at
    );
    // An appointment in three days: a day after it, not 90 days.
    let at = Timestamp(now.0 + 3 * day);
    let booked = issue(
        &s,
        &jones,
        &IssueInvite {
            clinic: clinic("derm"),
            appointment: Some("APT-2".into()),
            appointment_at: Some(at),
            valid_for_secs: None,
        },
    )
    .await;
    assert_eq!(booked.expires_at, Timestamp(at.0 + day));
    // Asking for longer is refused.
    let (status, code) = s
        .post(
            "/api/admin/invites",
            Some(&jones),
            &IssueInvite {
                clinic: clinic("derm"),
                appointment: None,
                appointment_at: None,
                valid_for_secs: Some(90 * 24 * 3600),
            },
        )
        .await;
    assert_eq!((status, code), (400, Some(ErrorCode::InvalidInput)));
    s.stop().await;
}

/// Waits (within the helper's 5 s) for a websocket to close; the code, and whether it was
/// told `code` first.
async fn closes_after(ws: &mut common::server::Ws, code: ErrorCode) -> (Option<u16>, bool) {
    let mut told = false;
    loop {
        match ws.next().await {
            Ok(ServerMsg::Error { code: c, .. }) if c == code => told = true,
            Ok(_) => continue,
            Err(close) => return (close, told),
        }
    }
}

#[tokio::test]
async fn an_ended_staff_sign_in_stops_working_everywhere_within_seconds() {
    let s = local_server().await;
    let admin = s.sign_in("admin").await.token;
    // Three ways a sign-in ends: its holder signs out, their password is reset (or role or
    // clinics change), an administrator ends it.
    for how in ["sign-out", "password reset", "admin"] {
        let alice = s.sign_in("alice").await.token;
        let mut ws = s.ws(&alice).await;
        let _snapshot = ws.recv().await;
        match how {
            "sign-out" => {
                let (status, _) = s.post("/api/staff/sign-out", Some(&alice), &()).await;
                assert_eq!(status, 204);
            }
            "password reset" => {
                s.service
                    .create_staff(
                        "test",
                        CreateStaff {
                            username: staff("alice"),
                            display_name: "alice name".into(),
                            role: Role::Reception,
                            clinics: vec![clinic("derm")],
                            password: common::server::PASSWORD.into(),
                        },
                    )
                    .await
                    .unwrap();
            }
            _ => {
                let (status, _) = s
                    .post("/api/admin/staff/alice/end-sessions", Some(&admin), &())
                    .await;
                assert_eq!(status, 204);
            }
        }
        // Every request with the old token is refused ...
        let r = s
            .http
            .get(s.url("/api/clinics/derm/room"))
            .bearer_auth(&alice)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{how}");
        assert_eq!(
            r.json::<ErrorBody>().await.unwrap().code,
            ErrorCode::SessionEnded
        );
        // ... it can no longer be refreshed ...
        let (status, code) = s.post("/api/staff/refresh", Some(&alice), &()).await;
        assert_eq!(
            (status, code),
            (401, Some(ErrorCode::SessionEnded)),
            "{how}"
        );
        // ... and the open websocket is told and closed.
        assert_eq!(
            closes_after(&mut ws, ErrorCode::SessionEnded).await,
            (Some(4001), true),
            "{how}"
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn refreshing_stops_at_the_sessions_absolute_limit() {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let lifetimes = TokenLifetimes {
        session: Duration::from_secs(3),
        ..common::server::lifetimes()
    };
    let s = TestServer::start_with_lifetimes(store, limits(), lifetimes).await;
    directory(&s.service).await;
    let alice = s.sign_in("alice").await;
    let ends = alice.expires_at.0;
    assert!(ends <= signalling::service::now().0 + 3_000);
    let r = s
        .http
        .post(s.url("/api/staff/refresh"))
        .bearer_auth(&alice.token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let fresh: SignInResponse = r.json().await.unwrap();
    assert!(
        fresh.expires_at.0 <= ends,
        "refresh went past the session's end"
    );
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    let (status, _) = s.post("/api/staff/refresh", Some(&fresh.token), &()).await;
    assert_eq!(status, 401);
    s.stop().await;
}

#[tokio::test]
async fn a_patients_socket_closes_when_their_credential_expires_or_their_visit_ends() {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let lifetimes = TokenLifetimes {
        visit: Duration::from_secs(2),
        ..common::server::lifetimes()
    };
    let s = TestServer::start_with_lifetimes(store, limits(), lifetimes).await;
    directory(&s.service).await;
    let entered = s.enter("derm", "Pat Expiring").await;
    let mut ws = s.ws(&entered.visit_token).await;
    assert_eq!(
        closes_after(&mut ws, ErrorCode::TokenExpired).await,
        (Some(4001), true)
    );
    s.stop().await;

    let s = local_server().await;
    let alice = s.sign_in("alice").await.token;
    let entered = s.enter("derm", "Pat Removed").await;
    let mut ws = s.ws(&entered.visit_token).await;
    let _status = ws.recv().await;
    let (status, _) = s
        .command(
            &alice,
            &Command::Remove {
                clinic: clinic("derm"),
                visit: entered.visit,
            },
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(ws.closed().await, Some(4002));
    s.stop().await;
}
