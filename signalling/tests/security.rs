//! The gaps an attack-style review found (issue 13), each reproduced against a real server
//! on port 0: every test here failed before its fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::server::{TestServer, directory, limits};
use protocol::{
    ClinicId, Command, CreateStaff, EnterRequest, EnterResponse, Entry, ErrorBody, ErrorCode,
    InviteResponse, InviteView, IssueInvite, Role, ServerMsg, SignInRequest, SignInResponse,
    StaffId, Timestamp, TransferTarget, VisitStatus,
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
    let listed: Vec<InviteView> = s.get_json("/api/clinics/derm/invites", &jones).await;
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

/// A server with `limits`, believing `X-Forwarded-For` from loopback when `behind_proxy`.
async fn server_with(
    limits: signalling::server::Limits,
    behind_proxy: bool,
    checks: usize,
) -> TestServer {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let service = common::server::service(store)
        .await
        .with_password_checks(checks, Duration::from_millis(300))
        .with_anonymous_audit_per_minute(5);
    let proxies = if behind_proxy {
        vec!["127.0.0.1/32".parse().unwrap()]
    } else {
        Vec::new()
    };
    let s = TestServer::start_custom(service, limits, proxies).await;
    directory(&s.service).await;
    s
}

async fn sign_in_as(
    s: &TestServer,
    user: &str,
    password: &str,
    from: Option<&str>,
) -> (u16, Option<ErrorCode>) {
    let mut req = s
        .http
        .post(s.url("/api/staff/sign-in"))
        .json(&SignInRequest {
            username: user.into(),
            password: password.into(),
        });
    if let Some(ip) = from {
        req = req.header("x-forwarded-for", ip);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    if status == 200 {
        (status, None)
    } else {
        (status, Some(r.json::<ErrorBody>().await.unwrap().code))
    }
}

/// The sign-in flood's design: however many arrive, only `password_checks` are checked at
/// once and `WAITING_PER_CHECK` more per check may wait; the rest are answered 429 at
/// once, without a lookup or a hash (they would only have waited and been refused).
#[tokio::test]
async fn a_flood_of_sign_ins_beyond_the_queue_is_refused_at_once() {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    // A wait long enough that nobody admitted to the queue is turned away.
    let service = common::server::service(store)
        .await
        .with_password_checks(1, Duration::from_secs(60));
    let s = TestServer::start_custom(service, limits(), Vec::new()).await;
    let queue = 1 + signalling::service::WAITING_PER_CHECK;
    let n = queue + 20;
    let started = std::time::Instant::now();
    let attempts = (0..n).map(|i| {
        let s = &s;
        async move {
            let r = sign_in_as(s, &format!("nobody{i}"), "a wrong password", None).await;
            (r, started.elapsed())
        }
    });
    let results = futures::future::join_all(attempts).await;
    let busy: Vec<Duration> = results
        .iter()
        .filter(|(r, _)| *r == (429, Some(ErrorCode::RateLimited)))
        .map(|(_, t)| *t)
        .collect();
    let checked: Vec<Duration> = results
        .iter()
        .filter(|(r, _)| *r == (401, Some(ErrorCode::WrongCredentials)))
        .map(|(_, t)| *t)
        .collect();
    assert_eq!(busy.len() + checked.len(), n, "{results:?}");
    // Those that came in while the queue was full (all but a few, however fast the
    // checks ran) were refused before the slowest check was done.
    assert!(checked.len() >= queue, "{results:?}");
    assert!(busy.len() >= 10, "too few refused at once: {results:?}");
    let last_check = checked.iter().max().unwrap();
    let slowest_refusal = busy.iter().max().unwrap();
    assert!(
        slowest_refusal < last_check,
        "a refusal ({slowest_refusal:?}) waited for the checks (last {last_check:?})"
    );
    s.stop().await;
}

#[tokio::test]
async fn password_checks_are_bounded_and_the_excess_is_refused_quickly() {
    let s = server_with(limits(), false, 1).await;
    let started = std::time::Instant::now();
    let attempts = (0..24).map(|i| {
        let s = &s;
        async move { sign_in_as(s, &format!("nobody{i}"), "a wrong password", None).await }
    });
    let results = futures::future::join_all(attempts).await;
    let busy = results
        .iter()
        .filter(|r| **r == (429, Some(ErrorCode::RateLimited)))
        .count();
    let wrong = results
        .iter()
        .filter(|r| **r == (401, Some(ErrorCode::WrongCredentials)))
        .count();
    assert_eq!(busy + wrong, 24, "{results:?}");
    assert!(busy > 0, "no sign-in was turned away: {results:?}");
    assert!(started.elapsed() < Duration::from_secs(20));
    s.stop().await;
}

#[tokio::test]
async fn wrong_passwords_for_one_account_back_off_whatever_the_address() {
    let s = server_with(limits(), true, 2).await;
    for i in 0..5 {
        let from = format!("198.51.100.{i}");
        assert_eq!(
            sign_in_as(&s, "alice", "a wrong password", Some(&from)).await,
            (401, Some(ErrorCode::WrongCredentials))
        );
    }
    // The sixth, from yet another address, waits: even the right password.
    assert_eq!(
        sign_in_as(&s, "alice", common::server::PASSWORD, Some("203.0.113.50")).await,
        (429, Some(ErrorCode::RateLimited))
    );
    // Other accounts are not affected.
    assert_eq!(
        sign_in_as(&s, "bob", common::server::PASSWORD, Some("203.0.113.50"))
            .await
            .0,
        200
    );
    // After the wait, the right password works and clears the run.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        sign_in_as(&s, "alice", common::server::PASSWORD, None)
            .await
            .0,
        200
    );
    s.stop().await;
}

#[tokio::test]
async fn forwarded_addresses_are_believed_only_from_a_trusted_proxy_and_limits_are_separate() {
    let tight = signalling::server::Limits {
        sign_ins_per_minute: 3,
        entries_per_minute: 3,
        ..limits()
    };
    // Behind the proxy, every client has its own bucket: a guesser exhausts only theirs.
    let s = server_with(tight, true, 2).await;
    for _ in 0..3 {
        assert_eq!(
            sign_in_as(&s, "nobody", "wrong password!", Some("198.51.100.9"))
                .await
                .0,
            401
        );
    }
    assert_eq!(
        sign_in_as(&s, "nobody", "wrong password!", Some("198.51.100.9")).await,
        (429, Some(ErrorCode::RateLimited))
    );
    assert_eq!(
        sign_in_as(&s, "alice", common::server::PASSWORD, Some("198.51.100.10"))
            .await
            .0,
        200
    );
    // And the guesser's own address can still enter a waiting room: a separate limit.
    let r = s
        .http
        .post(s.url("/api/visits"))
        .header("x-forwarded-for", "198.51.100.9")
        .json(&EnterRequest {
            entry: Entry::OpenLink {
                clinic: clinic("derm"),
            },
            name: "Pat Patient".into(),
            details: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.stop().await;

    // Not behind a trusted proxy: the header is the client's say-so and is ignored.
    let s = server_with(tight, false, 2).await;
    for i in 0..3 {
        let from = format!("198.51.100.{i}");
        assert_eq!(
            sign_in_as(&s, "nobody", "wrong password!", Some(&from))
                .await
                .0,
            401
        );
    }
    assert_eq!(
        sign_in_as(&s, "nobody", "wrong password!", Some("198.51.100.77")).await,
        (429, Some(ErrorCode::RateLimited))
    );
    s.stop().await;
}

#[tokio::test]
async fn anonymous_failed_sign_ins_are_sanitised_and_rate_limited_in_the_audit_log() {
    let s = server_with(limits(), false, 2).await;
    let admin = s.sign_in("admin").await.token;
    for i in 0..20 {
        let typed = format!("my secret password {i}\u{202E}");
        assert_eq!(sign_in_as(&s, &typed, "whatever it is", None).await.0, 401);
    }
    let audit: Vec<protocol::AuditEntry> = s.get_json("/api/admin/audit?limit=1000", &admin).await;
    let failures: Vec<_> = audit
        .iter()
        .filter(|e| e.action == "sign_in_failed")
        .collect();
    assert!(failures.len() <= 5, "{} entries", failures.len());
    for e in &failures {
        let detail = e.detail.as_deref().unwrap_or("");
        assert!(!detail.contains("secret"), "{detail}");
        assert!(!detail.contains('\u{202E}'));
    }
    s.stop().await;
}

#[tokio::test]
async fn websockets_from_other_sites_and_floods_of_malformed_frames_are_refused() {
    let tight = signalling::server::Limits {
        malformed_per_minute: 5,
        ..limits()
    };
    let s = server_with(tight, false, 2).await;
    // Another site's page: refused at the upgrade.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", s.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "https://evil.example".parse().unwrap());
    let refused = tokio_tungstenite::connect_async(req).await;
    assert!(refused.is_err(), "a cross-site websocket was accepted");
    // The platform's own page (and clients that are not browsers) are let in.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("ws://{}/ws", s.addr),
    )
    .unwrap();
    req.headers_mut()
        .insert("origin", "http://test.invalid".parse().unwrap());
    assert!(tokio_tungstenite::connect_async(req).await.is_ok());
    // A connection that keeps sending garbage is closed.
    let alice = s.sign_in("alice").await.token;
    let mut ws = s.ws(&alice).await;
    for _ in 0..10 {
        ws.send_raw("{not json").await;
    }
    assert_eq!(
        closes_after(&mut ws, ErrorCode::RateLimited).await,
        (Some(1008), true)
    );
    s.stop().await;
}

#[tokio::test]
async fn api_answers_are_never_cached_or_sniffed_and_https_deployments_send_hsts() {
    let s = local_server().await;
    let r = s.http.get(s.url("/api/clinics/derm")).send().await.unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    assert!(r.headers().get("strict-transport-security").is_none());
    let r = s
        .http
        .get(s.url("/api/no/such/thing"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["cache-control"], "no-store");
    s.stop().await;

    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let secret = store.token_secret(&[9; 32]).await.unwrap();
    let keys = signalling::auth::Keys::new(&secret).unwrap();
    let service = signalling::service::Service::new(
        store,
        keys,
        common::server::lifetimes(),
        "https://video.example.org".into(),
    );
    let s = TestServer::start_custom(service, limits(), Vec::new()).await;
    let r = s.http.get(s.url("/healthz")).send().await.unwrap();
    assert_eq!(r.headers()["strict-transport-security"], "max-age=31536000");
    s.stop().await;
}

#[tokio::test]
async fn names_are_normalised_and_invisible_or_direction_changing_characters_refused() {
    let s = local_server().await;
    let alice = s.sign_in("alice").await.token;
    for bad in [
        "Pat\u{202E}kcab",
        "ad\u{200B}min",
        "\u{2066}Pat\u{2069}",
        "Pa\u{AD}t",
    ] {
        let r = s
            .http
            .post(s.url("/api/visits"))
            .json(&EnterRequest {
                entry: Entry::OpenLink {
                    clinic: clinic("derm"),
                },
                name: bad.into(),
                details: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 400, "{bad:?}");
    }
    // A message from staff is held to the same rule.
    let e = s.enter("derm", "Rene\u{301}e 👋🏽").await;
    let (status, code) = s
        .command(
            &alice,
            &Command::SendMessage {
                clinic: clinic("derm"),
                visit: e.visit,
                text: "Please wait\u{202E}".into(),
            },
        )
        .await;
    assert_eq!((status, code), (400, Some(ErrorCode::InvalidInput)));
    // The accepted name is stored in NFC; real scripts and emoji are kept.
    let v = visits(&s, &alice, "derm").await;
    assert_eq!(v[0].name, "Ren\u{e9}e 👋🏽");
    s.stop().await;
}
