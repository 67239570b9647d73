//! The server at its boundaries: a real server on port 0, driven over HTTP and websocket,
//! on the single-node store and on a real Redis.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::redis::RedisServer;
use common::server::{TestServer, Ws, directory, limits};
use protocol::{
    AuditEntry, ClientMsg, ClinicId, Command, ConsultationId, EnterRequest, Entry, ErrorCode,
    InviteResponse, IssueInvite, PatientState, ServerMsg, Session, StaffId, TransferTarget,
    VisitEndReason, VisitId, VisitStatus,
};
use signalling::store::Store;
use signalling::store::local::LocalStore;
use signalling::store::redis::RedisStore;

fn derm() -> ClinicId {
    ClinicId::parse("derm").unwrap()
}
fn jones() -> StaffId {
    StaffId::parse("dr.jones").unwrap()
}

async fn local_server() -> TestServer {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let s = TestServer::start(store, limits()).await;
    directory(&s.service).await;
    s
}

async fn redis_store(redis: &RedisServer) -> Arc<dyn Store> {
    Arc::new(RedisStore::connect(&redis.url()).await.unwrap())
}

fn is_visit_update(m: &ServerMsg, visit: VisitId) -> bool {
    matches!(m, ServerMsg::VisitUpdated { visit: v, .. } if v.id == visit)
}

/// The whole journey of one patient, with reception and a clinician watching.
async fn journey(s: &TestServer) {
    let alice = s.sign_in("alice").await;
    let jones_token = s.sign_in("dr.jones").await;
    let mut reception = s.ws(&alice.token).await;
    let mut clinician = s.ws(&jones_token.token).await;
    for ws in [&mut reception, &mut clinician] {
        let snap = ws.recv().await;
        assert!(
            matches!(&snap, ServerMsg::ClinicSnapshot { clinic, .. } if clinic.id == derm()),
            "{snap:?}"
        );
    }

    // A patient arrives; reception sees them with their name.
    let entered = s.enter("derm", "Pat Journey").await;
    let mut patient = s.ws(&entered.visit_token).await;
    assert!(
        matches!(&patient.welcome, ServerMsg::Welcome { session: Session::Patient { visit, .. } } if *visit == entered.visit)
    );
    let status = patient.recv().await;
    assert!(
        matches!(
            status,
            ServerMsg::PatientStatus {
                status: PatientState::Waiting { .. }
            }
        ),
        "{status:?}"
    );
    let seen = reception
        .until("arrival", |m| is_visit_update(m, entered.visit))
        .await;
    let ServerMsg::VisitUpdated { visit, .. } = seen else {
        unreachable!()
    };
    assert_eq!(visit.name, "Pat Journey");
    assert_eq!(visit.status, VisitStatus::Waiting);
    // Their page is connected: reception sees them online (presence, outside the room).
    reception
        .until("online", |m| {
            matches!(m, ServerMsg::VisitPresence { online, .. } if online.contains(&entered.visit))
        })
        .await;

    // Reception messages them; the patient sees it.
    reception
        .ok(Command::SendMessage {
            clinic: derm(),
            visit: entered.visit,
            text: "The clinic is running 10 minutes late.".into(),
        })
        .await;
    let msg = patient
        .until("staff message", |m| {
            matches!(m, ServerMsg::StaffMessage { .. })
        })
        .await;
    assert!(
        matches!(&msg, ServerMsg::StaffMessage { text, .. } if text == "The clinic is running 10 minutes late.")
    );

    // Reception admits them to dr.jones: patient and clinician are both told.
    reception
        .ok(Command::Admit {
            clinic: derm(),
            visit: entered.visit,
            clinician: jones(),
            consultation: None,
        })
        .await;
    let admitted = patient
        .until("admitted", |m| {
            matches!(
                m,
                ServerMsg::PatientStatus {
                    status: PatientState::Admitted { .. }
                }
            )
        })
        .await;
    let ServerMsg::PatientStatus {
        status: PatientState::Admitted { consultation, .. },
    } = admitted
    else {
        unreachable!()
    };
    let c = clinician
        .until("consultation", |m| {
            matches!(m, ServerMsg::ConsultationUpdated { .. })
        })
        .await;
    assert!(
        matches!(&c, ServerMsg::ConsultationUpdated { consultation: cv, .. } if cv.id == consultation && cv.clinician == jones() && cv.visits == vec![entered.visit])
    );

    // The patient's link is weak: the clinician switches the call to sound only. The
    // patient's page is told (it turns its camera off and takes no video), and so are
    // staff; then back to video.
    for on in [true, false] {
        clinician
            .ok(Command::SetAudioOnly {
                clinic: derm(),
                consultation,
                on,
            })
            .await;
        let told = patient
            .until("sound only", |m| {
                matches!(m, ServerMsg::PatientStatus { status: PatientState::Admitted { audio_only, .. } } if *audio_only == on)
            })
            .await;
        assert_eq!(
            told,
            ServerMsg::PatientStatus {
                status: PatientState::Admitted {
                    consultation,
                    audio_only: on
                }
            }
        );
        reception
            .until("the call's sound-only state", |m| {
                matches!(m, ServerMsg::ConsultationUpdated { consultation: cv, .. } if cv.id == consultation && cv.audio_only == on)
            })
            .await;
    }

    // The clinician ends the consultation: the patient's visit ends; reception sees it go.
    clinician
        .ok(Command::EndConsultation {
            clinic: derm(),
            consultation,
        })
        .await;
    let ended = patient
        .until("ended", |m| {
            matches!(
                m,
                ServerMsg::PatientStatus {
                    status: PatientState::Ended { .. }
                }
            )
        })
        .await;
    assert_eq!(
        ended,
        ServerMsg::PatientStatus {
            status: PatientState::Ended {
                reason: VisitEndReason::ConsultationEnded
            }
        }
    );
    reception
        .until("closed", |m| matches!(m, ServerMsg::VisitClosed { visit, reason: VisitEndReason::ConsultationEnded, .. } if *visit == entered.visit))
        .await;
    reception
        .until("consultation ended", |m| {
            matches!(m, ServerMsg::ConsultationEnded { .. })
        })
        .await;

    // The ended visit's credential no longer opens anything.
    let mut again = Ws::open(s.addr).await;
    let hello = ClientMsg::Hello {
        token: entered.visit_token.clone(),
    };
    futures::SinkExt::send(
        &mut again,
        tokio_tungstenite::tungstenite::Message::text(serde_json::to_string(&hello).unwrap()),
    )
    .await
    .unwrap();
    let reply = futures::StreamExt::next(&mut again).await.unwrap().unwrap();
    let reply: ServerMsg = serde_json::from_str(reply.to_text().unwrap()).unwrap();
    assert!(
        matches!(
            reply,
            ServerMsg::Error {
                code: ErrorCode::VisitEnded,
                ..
            }
        ),
        "{reply:?}"
    );

    // Every step is in the audit log, with who did it, and no token anywhere in it.
    let admin = s.sign_in("admin").await;
    let audit: Vec<AuditEntry> = s
        .get_json("/api/admin/audit?limit=1000", &admin.token)
        .await;
    let mine: Vec<(&str, &str)> = audit
        .iter()
        .filter(|e| e.visit == Some(entered.visit))
        .map(|e| (e.action.as_str(), e.actor.as_str()))
        .collect();
    let patient_actor = format!("patient:{}", entered.visit);
    assert_eq!(
        mine,
        vec![
            ("arrive", patient_actor.as_str()),
            ("message", "staff:alice"),
            ("admit", "staff:alice"),
        ]
    );
    assert!(audit.iter().any(|e| e.action == "end_consultation"
        && e.actor == "staff:dr.jones"
        && e.consultation == Some(consultation)));
    let audit_json = serde_json::to_string(&audit).unwrap();
    for secret in [&entered.visit_token, &alice.token, &jones_token.token] {
        assert!(!audit_json.contains(secret.as_str()));
    }
    assert!(
        !audit_json.contains("eyJ"),
        "no token of any kind in the audit log"
    );
}

#[tokio::test]
async fn journey_single_node() {
    let s = local_server().await;
    journey(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn journey_on_redis() {
    let redis = RedisServer::start();
    let s = TestServer::start(redis_store(&redis).await, limits()).await;
    directory(&s.service).await;
    journey(&s).await;
    s.stop().await;
}

#[tokio::test]
async fn a_patient_never_receives_another_patients_name_or_id() {
    let s = local_server().await;
    let alice = s.sign_in("alice").await;
    let jones_token = s.sign_in("dr.jones").await;
    let mut reception = s.ws(&alice.token).await;
    let first = s.enter("derm", "Alice Firstpatient").await;
    let mut watcher = s.ws(&first.visit_token).await;

    // Everything that can happen to a second patient, while the first one watches.
    let second = s.enter("derm", "Bob Secondpatient").await;
    let mut other = s.ws(&second.visit_token).await;
    let cmds = [
        Command::SendMessage {
            clinic: derm(),
            visit: second.visit,
            text: "only for Bob".into(),
        },
        Command::Admit {
            clinic: derm(),
            visit: second.visit,
            clinician: jones(),
            consultation: None,
        },
        Command::ReturnToWaiting {
            clinic: derm(),
            visit: second.visit,
        },
        Command::Transfer {
            clinic: derm(),
            visit: second.visit,
            to: TransferTarget::Clinician {
                clinician: StaffId::parse("dr.smith").unwrap(),
            },
        },
    ];
    for c in cmds {
        reception.ok(c).await;
    }
    let mut jones_ws = s.ws(&jones_token.token).await;
    // Bring the second patient into a call and end it, and a third arrives and is removed.
    jones_ws
        .ok(Command::Admit {
            clinic: derm(),
            visit: second.visit,
            clinician: jones(),
            consultation: None,
        })
        .await;
    let third = s.enter("derm", "Carol Thirdpatient").await;
    reception
        .ok(Command::Remove {
            clinic: derm(),
            visit: third.visit,
        })
        .await;
    drop(
        other
            .until("admitted", |m| {
                matches!(
                    m,
                    ServerMsg::PatientStatus {
                        status: PatientState::Admitted { .. }
                    }
                )
            })
            .await,
    );
    other
        .send(&ClientMsg::Command {
            req: 1,
            command: Command::Leave,
        })
        .await;
    other
        .until("ack", |m| matches!(m, ServerMsg::Ack { .. }))
        .await;
    // A message to the first patient last: once it arrives, every earlier event has too.
    reception
        .ok(Command::SendMessage {
            clinic: derm(),
            visit: first.visit,
            text: "marker".into(),
        })
        .await;
    watcher
        .until(
            "marker",
            |m| matches!(m, ServerMsg::StaffMessage { text, .. } if text == "marker"),
        )
        .await;

    assert!(
        watcher.raw.len() >= 3,
        "the watcher did receive its own messages: {:?}",
        watcher.raw
    );
    for text in &watcher.raw {
        for (visit, name) in [
            (second.visit, "Bob Secondpatient"),
            (third.visit, "Carol Thirdpatient"),
        ] {
            assert!(
                !text.contains(&visit.to_string()),
                "patient 1 received {text}"
            );
            assert!(!text.contains(name), "patient 1 received {text}");
        }
        assert!(!text.contains("only for Bob"));
    }
    s.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_and_changes_nothing() {
    let s = local_server().await;
    let alice = s.sign_in("alice").await;
    let bob = s.sign_in("bob").await; // reception of cardio, not derm
    let patient = s.enter("derm", "Pat Bad").await;
    let other = s.enter("derm", "Pat Other").await;
    let mut p = s.ws(&patient.visit_token).await;
    let before = s.snapshot(&alice.token, "derm").await;
    // Malformed, unknown and oversized messages; a patient trying staff actions.
    for (raw, code) in [
        ("{not json", ErrorCode::BadRequest),
        (r#"{"type":"launch_missiles"}"#, ErrorCode::UnknownMessage),
        (
            r#"{"type":"command","req":1,"command":{"type":"admit","clinic":"derm"}}"#,
            ErrorCode::BadRequest,
        ),
        // Call-quality figures that cannot be true, and a report with no call to be of;
        // a sound-only request with no media session.
        (
            r#"{"type":"call_quality","seconds":10,"rtt_ms":1,"loss_permille":2000,"recv_kbps":1,"send_kbps":1,"freezes":0,"freeze_ms":0,"concealed_permille":0,"audio_only_ms":0}"#,
            ErrorCode::InvalidInput,
        ),
        (
            r#"{"type":"call_quality","seconds":10,"rtt_ms":1,"loss_permille":20,"recv_kbps":1,"send_kbps":1,"freezes":0,"freeze_ms":0,"concealed_permille":0,"audio_only_ms":0}"#,
            ErrorCode::InvalidInput,
        ),
        (
            r#"{"type":"receive_video","on":false}"#,
            ErrorCode::InvalidInput,
        ),
        (
            r#"{"type":"call_quality","seconds":-1}"#,
            ErrorCode::BadRequest,
        ),
    ] {
        p.send_raw(raw).await;
        let e = p
            .until("error", |m| matches!(m, ServerMsg::Error { .. }))
            .await;
        assert!(
            matches!(&e, ServerMsg::Error { code: c, .. } if *c == code),
            "{raw}: {e:?}"
        );
    }
    for cmd in [
        Command::Admit {
            clinic: derm(),
            visit: patient.visit,
            clinician: jones(),
            consultation: None,
        },
        Command::Remove {
            clinic: derm(),
            visit: other.visit,
        },
        Command::SendMessage {
            clinic: derm(),
            visit: other.visit,
            text: "hi".into(),
        },
    ] {
        p.refused(cmd, ErrorCode::Forbidden).await;
    }
    // Staff of another clinic, and actions on someone else's visit.
    let mut b = s.ws(&bob.token).await;
    b.refused(
        Command::Remove {
            clinic: derm(),
            visit: patient.visit,
        },
        ErrorCode::Forbidden,
    )
    .await;
    b.refused(
        Command::Remove {
            clinic: ClinicId::parse("cardio").unwrap(),
            visit: patient.visit,
        },
        ErrorCode::NotFound,
    )
    .await;
    b.refused(
        Command::Admit {
            clinic: ClinicId::parse("cardio").unwrap(),
            visit: patient.visit,
            clinician: jones(),
            consultation: None,
        },
        ErrorCode::InvalidInput,
    )
    .await;
    let mut a = s.ws(&alice.token).await;
    a.refused(
        Command::EndConsultation {
            clinic: ClinicId::parse("cardio").unwrap(),
            consultation: ConsultationId::random(),
        },
        ErrorCode::Forbidden,
    )
    .await;
    a.refused(
        Command::SendMessage {
            clinic: derm(),
            visit: patient.visit,
            text: "x".repeat(1001),
        },
        ErrorCode::InvalidInput,
    )
    .await;
    // An oversized frame closes that connection with 1009 and a clear error.
    let mut big = s.ws(&alice.token).await;
    big.send_raw(&format!(
        r#"{{"type":"hello","token":"{}"}}"#,
        "x".repeat(protocol::MAX_CLIENT_MESSAGE_BYTES + 1)
    ))
    .await;
    // It is refused from its header, so its body may still be in flight when the server
    // closes, and TCP then resets the connection: the client sees the error and close code
    // 1009, or only the reset. Never anything else.
    let close = loop {
        match big.next().await {
            Ok(ServerMsg::ClinicSnapshot { .. }) => continue,
            Ok(ServerMsg::Error {
                code: ErrorCode::MessageTooLarge,
                ..
            }) => continue,
            Ok(other) => panic!("an oversized message was answered with {other:?}"),
            Err(code) => break code,
        }
    };
    assert!(matches!(close, Some(1009) | None), "closed with {close:?}");

    // Bad, forged and expired tokens: an error, then the connection closes.
    let expired =
        signalling::auth::Keys::new(&s.service.store().token_secret(&[0; 32]).await.unwrap())
            .unwrap()
            .visit_token(patient.visit, protocol::Timestamp(1_000));
    for (token, code) in [
        ("garbage", ErrorCode::Unauthenticated),
        (expired.as_str(), ErrorCode::TokenExpired),
    ] {
        let mut ws = Ws::open(s.addr).await;
        futures::SinkExt::send(
            &mut ws,
            tokio_tungstenite::tungstenite::Message::text(
                serde_json::to_string(&ClientMsg::Hello {
                    token: token.into(),
                })
                .unwrap(),
            ),
        )
        .await
        .unwrap();
        let first = futures::StreamExt::next(&mut ws).await.unwrap().unwrap();
        let msg: ServerMsg = serde_json::from_str(first.to_text().unwrap()).unwrap();
        assert!(
            matches!(msg, ServerMsg::Error { code: c, .. } if c == code),
            "{token}: {msg:?}"
        );
    }
    // REST: the same rules, in the API's error format.
    let remove_other = Command::Remove {
        clinic: derm(),
        visit: other.visit,
    };
    assert_eq!(
        s.command(&patient.visit_token, &remove_other).await,
        (403, Some(ErrorCode::Forbidden))
    );
    assert_eq!(
        s.command("nope", &Command::Leave).await,
        (401, Some(ErrorCode::Unauthenticated))
    );
    assert_eq!(
        s.post_raw("/api/commands", Some(&alice.token), "{oops".into())
            .await,
        (400, Some(ErrorCode::BadRequest))
    );
    assert_eq!(
        s.post_raw("/api/commands", Some(&alice.token), "x".repeat(100_000))
            .await,
        (413, Some(ErrorCode::MessageTooLarge))
    );
    let wrong = serde_json::json!({"username": "alice", "password": "wrong password"});
    assert_eq!(
        s.post("/api/staff/sign-in", None, &wrong).await,
        (401, Some(ErrorCode::WrongCredentials))
    );
    let entry = |entry, name: &str| EnterRequest {
        entry,
        name: name.into(),
        details: None,
    };
    let closed = entry(
        Entry::OpenLink {
            clinic: ClinicId::parse("cardio").unwrap(),
        },
        "Pat",
    );
    assert_eq!(
        s.post("/api/visits", None, &closed).await,
        (403, Some(ErrorCode::ClinicClosed))
    );
    let bad_invite = entry(
        Entry::Invite {
            token: patient.visit_token.clone(),
            previous: None,
        },
        "Pat",
    );
    assert_eq!(
        s.post("/api/visits", None, &bad_invite).await,
        (401, Some(ErrorCode::InviteInvalid))
    );
    let nameless = entry(Entry::OpenLink { clinic: derm() }, "   ");
    assert_eq!(
        s.post("/api/visits", None, &nameless).await,
        (400, Some(ErrorCode::InvalidInput))
    );
    let clinic = serde_json::json!({"id": "x", "name": "X", "open_link": true});
    assert_eq!(
        s.post("/api/admin/clinics", Some(&alice.token), &clinic)
            .await,
        (403, Some(ErrorCode::Forbidden)),
        "reception cannot create clinics"
    );

    // None of it changed the waiting room.
    assert_eq!(s.snapshot(&alice.token, "derm").await, before);
    s.stop().await;
}

#[tokio::test]
async fn invites_let_one_patient_in_until_they_expire() {
    let s = local_server().await;
    let admin = s.sign_in("admin").await;
    let issue = IssueInvite {
        clinic: ClinicId::parse("cardio").unwrap(),
        appointment: Some("APT-7".into()),
        appointment_at: None,
        valid_for_secs: Some(3600),
    };
    let r = s
        .http
        .post(s.url("/api/admin/invites"))
        .bearer_auth(&admin.token)
        .json(&issue)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let invite: InviteResponse = r.json().await.unwrap();
    assert!(invite.url.ends_with(&format!("/i#{}", invite.token)));
    let enter = EnterRequest {
        entry: Entry::Invite {
            token: invite.token,
            previous: None,
        },
        name: "Pat Invited".into(),
        details: None,
    };
    let r = s
        .http
        .post(s.url("/api/visits"))
        .json(&enter)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let bob = s.sign_in("bob").await;
    let ServerMsg::ClinicSnapshot { visits, .. } = s.snapshot(&bob.token, "cardio").await else {
        panic!()
    };
    assert_eq!(visits.len(), 1);
    assert_eq!(visits[0].appointment.as_deref(), Some("APT-7"));
    // An expired invite is refused with its own code.
    let keys =
        signalling::auth::Keys::new(&s.service.store().token_secret(&[0; 32]).await.unwrap())
            .unwrap();
    let old = keys.invite_token(
        protocol::InviteId::random(),
        ClinicId::parse("cardio").unwrap(),
        None,
        protocol::Timestamp(1_000),
    );
    let r = s
        .http
        .post(s.url("/api/visits"))
        .json(&EnterRequest {
            entry: Entry::Invite {
                token: old,
                previous: None,
            },
            name: "Late".into(),
            details: None,
        })
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.json::<protocol::ErrorBody>().await.unwrap().code
        ),
        (410, ErrorCode::InviteExpired)
    );
    s.stop().await;
}

/// Two receptionists admit the same patient at the same moment: exactly one succeeds.
async fn one_admit_wins(s: &TestServer) {
    let alice = s.sign_in("alice").await;
    let jones_token = s.sign_in("dr.jones").await;
    for round in 0..10 {
        let p = s.enter("derm", &format!("Pat Race {round}")).await;
        let admit = Command::Admit {
            clinic: derm(),
            visit: p.visit,
            clinician: jones(),
            consultation: None,
        };
        let next = Command::AdmitNext { clinic: derm() };
        let (a, b) = tokio::join!(
            s.command(&alice.token, &admit),
            s.command(&jones_token.token, &admit)
        );
        let mut results = [a, b];
        results.sort_by_key(|r| r.0);
        assert_eq!(
            results,
            [(204, None), (409, Some(ErrorCode::AlreadyAdmitted))],
            "round {round}"
        );
        // And the queue is empty again: "call next" finds nobody.
        assert_eq!(
            s.command(&jones_token.token, &next).await,
            (409, Some(ErrorCode::QueueEmpty))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_simultaneous_admits_one_wins_single_node() {
    let s = local_server().await;
    one_admit_wins(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_simultaneous_admits_one_wins_on_redis() {
    let redis = RedisServer::start();
    let s = TestServer::start(redis_store(&redis).await, limits()).await;
    directory(&s.service).await;
    one_admit_wins(&s).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_redis() {
    let redis = RedisServer::start();
    let a = TestServer::start(redis_store(&redis).await, limits()).await;
    let b = TestServer::start(redis_store(&redis).await, limits()).await;
    directory(&a.service).await;
    let alice = b.sign_in("alice").await;
    let mut reception_on_b = b.ws(&alice.token).await;
    reception_on_b.recv().await; // snapshot

    // A patient arriving at A appears to reception on B within 100 ms, measured from the
    // moment the patient's entry request is sent.
    let mut latencies = Vec::new();
    let mut visits = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let entered = a.enter("derm", &format!("Pat Two {i}")).await;
        reception_on_b
            .until("arrival", |m| is_visit_update(m, entered.visit))
            .await;
        latencies.push(t.elapsed());
        visits.push(entered);
    }
    latencies.sort();
    let worst = *latencies.last().unwrap();
    assert!(
        worst < Duration::from_millis(100),
        "arrival took {worst:?} to reach the other instance"
    );
    println!(
        "arrival at A seen on B: median {:?}, worst {worst:?} (20 arrivals)",
        latencies[10]
    );

    // And the other way: reception on B messages a patient connected to A.
    let mut patient_on_a = a.ws(&visits[0].visit_token).await;
    reception_on_b
        .ok(Command::SendMessage {
            clinic: derm(),
            visit: visits[0].visit,
            text: "from B".into(),
        })
        .await;
    patient_on_a
        .until(
            "message",
            |m| matches!(m, ServerMsg::StaffMessage { text, .. } if text == "from B"),
        )
        .await;
    a.stop().await;
    b.stop().await;
}

/// What a `visit_presence` says of `visit`: online, offline, or nothing.
fn presence_in(m: &ServerMsg, visit: VisitId) -> Option<bool> {
    match m {
        ServerMsg::VisitPresence {
            online, offline, ..
        } => {
            if online.contains(&visit) {
                Some(true)
            } else if offline.contains(&visit) {
                Some(false)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// The next `visit_presence` about `visit`: whether it says online.
async fn presence_of(ws: &mut Ws, visit: VisitId) -> bool {
    let m = ws
        .until("presence", |m| presence_in(m, visit).is_some())
        .await;
    presence_in(&m, visit).unwrap_or_else(|| unreachable!())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_leases_across_instances_and_writes_no_room_state() {
    let redis = RedisServer::start();
    let store = redis_store(&redis).await;
    let a = TestServer::start(store.clone(), limits()).await;
    let b = TestServer::start(redis_store(&redis).await, limits()).await;
    directory(&a.service).await;
    let alice = b.sign_in("alice").await;
    let mut reception_on_b = b.ws(&alice.token).await;
    reception_on_b.recv().await; // snapshot
    let entered = a.enter("derm", "Pat Present").await;
    reception_on_b
        .until("arrival", |m| is_visit_update(m, entered.visit))
        .await;
    let version = store.room(&derm()).await.unwrap().unwrap().version;

    // A tab on A: reception on B sees the patient online; the room was not written.
    let mut tab_a = a.ws(&entered.visit_token).await;
    tab_a.recv().await; // status
    assert!(presence_of(&mut reception_on_b, entered.visit).await);
    // A second tab, on B, then the first closes: still online (B's lease holds).
    let mut tab_b = b.ws(&entered.visit_token).await;
    tab_b.recv().await;
    drop(tab_a);
    tokio::time::sleep(signalling::server::presence::POLL_EVERY * 3).await;
    // A staff page opened now is told the patient is online in its snapshot.
    let mut late = a.ws(&alice.token).await;
    let ServerMsg::ClinicSnapshot { visits, .. } = late.recv().await else {
        panic!("a snapshot")
    };
    assert!(visits.iter().any(|v| v.id == entered.visit && v.online));
    // Every tab closed: offline, to both staff pages.
    drop(tab_b);
    assert!(!presence_of(&mut reception_on_b, entered.visit).await);
    assert!(!presence_of(&mut late, entered.visit).await);
    // None of this wrote the room, and reception on B was told exactly online, offline.
    assert_eq!(store.room(&derm()).await.unwrap().unwrap().version, version);
    let told: Vec<bool> = reception_on_b
        .raw
        .iter()
        .filter_map(|t| presence_in(&serde_json::from_str(t).ok()?, entered.visit))
        .collect();
    assert_eq!(told, vec![true, false]);
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_patients_survive_a_restart() {
    let redis = RedisServer::start();
    let first = TestServer::start(redis_store(&redis).await, limits()).await;
    directory(&first.service).await;
    let mut entered = Vec::new();
    for name in ["Pat One", "Pat Two", "Pat Three"] {
        entered.push(first.enter("derm", name).await);
    }
    let mut patient = first.ws(&entered[1].visit_token).await;
    let ServerMsg::PatientStatus { status: before } = patient.recv().await else {
        panic!()
    };
    let alice = first.sign_in("alice").await;
    let ServerMsg::ClinicSnapshot {
        visits: queue_before,
        ..
    } = first.snapshot(&alice.token, "derm").await
    else {
        panic!()
    };

    // Stop the server: the patient's connection is closed with "service restart".
    first.stop().await;
    assert_eq!(patient.closed().await, Some(1012));

    // A new server on the same Redis: the same credential resumes the same visit.
    let second = TestServer::start(redis_store(&redis).await, limits()).await;
    let mut patient = second.ws(&entered[1].visit_token).await;
    assert!(
        matches!(&patient.welcome, ServerMsg::Welcome { session: Session::Patient { visit, .. } } if *visit == entered[1].visit)
    );
    let ServerMsg::PatientStatus { status: after } = patient.recv().await else {
        panic!()
    };
    assert_eq!(after, before, "same status, same waiting-since");
    // Reception (their old token still valid: same secret from Redis) sees the same queue.
    let ServerMsg::ClinicSnapshot {
        visits: queue_after,
        ..
    } = second.snapshot(&alice.token, "derm").await
    else {
        panic!()
    };
    let ids =
        |q: &[protocol::VisitView]| q.iter().map(|v| (v.id, v.arrived_at)).collect::<Vec<_>>();
    assert_eq!(ids(&queue_after), ids(&queue_before));
    assert_eq!(
        ids(&queue_after).iter().map(|v| v.0).collect::<Vec<_>>(),
        entered.iter().map(|e| e.visit).collect::<Vec<_>>()
    );
    // The queue still works: dr.jones calls the next one, who is the first to arrive.
    let jones_token = second.sign_in("dr.jones").await;
    assert_eq!(
        second
            .command(&jones_token.token, &Command::AdmitNext { clinic: derm() })
            .await,
        (204, None)
    );
    let ServerMsg::ClinicSnapshot { visits, .. } = second.snapshot(&alice.token, "derm").await
    else {
        panic!()
    };
    assert!(matches!(
        visits
            .iter()
            .find(|v| v.id == entered[0].visit)
            .unwrap()
            .status,
        VisitStatus::InConsultation { .. }
    ));
    second.stop().await;
}

#[tokio::test]
async fn connection_and_rate_limits_hold() {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let mut l = limits();
    l.max_connections = 2;
    l.messages_per_second = 1;
    l.message_burst = 3;
    let s = TestServer::start(store, l).await;
    directory(&s.service).await;
    let alice = s.sign_in("alice").await;
    let mut one = s.ws(&alice.token).await;
    let _two = s.ws(&alice.token).await;
    let third = tokio_tungstenite::connect_async(format!("ws://{}/ws", s.addr)).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 429),
        other => panic!("third connection accepted: {other:?}"),
    }
    let p = s.enter("derm", "Pat Limit").await;
    let mut limited = 0;
    for i in 0..10 {
        let r = one
            .command(Command::SendMessage {
                clinic: derm(),
                visit: p.visit,
                text: format!("m{i}"),
            })
            .await;
        if let ServerMsg::Error {
            code: ErrorCode::RateLimited,
            ..
        } = r
        {
            limited += 1;
        }
        // A rate-limited command gets no answer with its req; stop waiting for it.
    }
    assert!(
        limited >= 6,
        "only {limited} of 10 rapid messages were limited"
    );
    s.stop().await;
}

#[tokio::test]
async fn health_and_readiness() {
    let s = local_server().await;
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        200
    );
    assert_eq!(
        s.http.get(s.url("/readyz")).send().await.unwrap().status(),
        200
    );
    let r = s.http.get(s.url("/no/such/thing")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(
        r.json::<protocol::ErrorBody>().await.unwrap().code,
        ErrorCode::NotFound
    );
    s.stop().await;
}
