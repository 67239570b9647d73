//! Golden JSON fixtures: one file per message shape under `fixtures/`, shared with the web
//! client's tests. Each value below must serialise to exactly its fixture, and the fixture
//! must deserialise back to the same value. `UPDATE_FIXTURES=1 cargo test -p protocol`
//! rewrites them after a deliberate change of format (review the diff).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use protocol::*;
use serde::{Serialize, de::DeserializeOwned};
use uuid::Uuid;

fn dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

fn check<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    name: &'static str,
    value: &T,
) -> &'static str {
    let path = dir().join(format!("{name}.json"));
    let mut written = serde_json::to_string_pretty(value).expect("serialises");
    written.push('\n');
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        std::fs::write(&path, &written).expect("fixture written");
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_FIXTURES=1 creates it)", path.display()));
    let golden_json: serde_json::Value = serde_json::from_str(&golden).expect("fixture is JSON");
    let written_json: serde_json::Value = serde_json::from_str(&written).expect("JSON");
    assert_eq!(
        written_json, golden_json,
        "{name}: serialised form differs from fixture"
    );
    let back: T = serde_json::from_str(&golden).expect("fixture deserialises");
    assert_eq!(&back, value, "{name}: fixture does not round-trip");
    name
}

fn visit() -> VisitId {
    VisitId(Uuid::from_u128(0x1111_1111_1111_4111_8111_1111_1111_1111))
}
fn consultation() -> ConsultationId {
    ConsultationId(Uuid::from_u128(0x2222_2222_2222_4222_8222_2222_2222_2222))
}
fn clinic() -> ClinicId {
    ClinicId::parse("dermatology").unwrap()
}
fn clinician() -> StaffId {
    StaffId::parse("dr.jones").unwrap()
}

fn all_fixtures() -> Vec<&'static str> {
    let staff_session = StaffSession {
        username: StaffId::parse("alice").unwrap(),
        display_name: "Alice Reception".into(),
        role: Role::Reception,
        clinics: vec![clinic()],
    };
    let visit_view = VisitView {
        id: visit(),
        name: "Pat Example".into(),
        details: Some("Follow-up of a rash".into()),
        appointment: Some("APT-0042".into()),
        arrived_at: Timestamp(1_700_000_000_000),
        status: VisitStatus::Waiting,
        online: true,
        for_clinician: None,
        media_path: None,
    };
    let consultation_view = ConsultationView {
        id: consultation(),
        clinician: clinician(),
        started_at: Timestamp(1_700_000_060_000),
        visits: vec![visit()],
        clinician_path: Some(MediaPath::Udp),
        audio_only: false,
    };
    let mut names = Vec::new();
    let c = |command| ClientMsg::Command { req: 7, command };
    names.push(check(
        "client_hello",
        &ClientMsg::Hello {
            token: "eyJ...".into(),
        },
    ));
    names.push(check(
        "client_send_message",
        &c(Command::SendMessage {
            clinic: clinic(),
            visit: visit(),
            text: "The clinician is running 10 minutes late.".into(),
        }),
    ));
    names.push(check(
        "client_admit",
        &c(Command::Admit {
            clinic: clinic(),
            visit: visit(),
            clinician: clinician(),
            consultation: None,
        }),
    ));
    names.push(check(
        "client_admit_into",
        &c(Command::Admit {
            clinic: clinic(),
            visit: visit(),
            clinician: clinician(),
            consultation: Some(consultation()),
        }),
    ));
    names.push(check(
        "client_admit_next",
        &c(Command::AdmitNext { clinic: clinic() }),
    ));
    names.push(check(
        "client_return_to_waiting",
        &c(Command::ReturnToWaiting {
            clinic: clinic(),
            visit: visit(),
        }),
    ));
    names.push(check(
        "client_transfer_clinic",
        &c(Command::Transfer {
            clinic: clinic(),
            visit: visit(),
            to: TransferTarget::Clinic {
                clinic: ClinicId::parse("plastics").unwrap(),
            },
        }),
    ));
    names.push(check(
        "client_transfer_clinician",
        &c(Command::Transfer {
            clinic: clinic(),
            visit: visit(),
            to: TransferTarget::Clinician {
                clinician: StaffId::parse("dr.smith").unwrap(),
            },
        }),
    ));
    names.push(check(
        "client_remove",
        &c(Command::Remove {
            clinic: clinic(),
            visit: visit(),
        }),
    ));
    names.push(check(
        "client_end_consultation",
        &c(Command::EndConsultation {
            clinic: clinic(),
            consultation: consultation(),
        }),
    ));
    names.push(check(
        "client_set_audio_only",
        &c(Command::SetAudioOnly {
            clinic: clinic(),
            consultation: consultation(),
            on: true,
        }),
    ));
    names.push(check("client_leave", &c(Command::Leave)));

    names.push(check(
        "server_welcome_staff",
        &ServerMsg::Welcome {
            session: Session::Staff(staff_session.clone()),
        },
    ));
    names.push(check(
        "server_welcome_patient",
        &ServerMsg::Welcome {
            session: Session::Patient {
                visit: visit(),
                clinic: clinic(),
                clinic_name: "Dermatology".into(),
            },
        },
    ));
    names.push(check("server_ack", &ServerMsg::Ack { req: 7 }));
    names.push(check(
        "server_error",
        &ServerMsg::Error {
            req: Some(7),
            code: ErrorCode::AlreadyAdmitted,
            message: "This patient has already been admitted.".into(),
        },
    ));
    names.push(check(
        "server_clinic_snapshot",
        &ServerMsg::ClinicSnapshot {
            clinic: ClinicView {
                id: clinic(),
                name: "Dermatology".into(),
            },
            visits: vec![visit_view.clone()],
            consultations: vec![consultation_view.clone()],
        },
    ));
    names.push(check(
        "server_visit_updated",
        &ServerMsg::VisitUpdated {
            clinic: clinic(),
            visit: VisitView {
                status: VisitStatus::InConsultation {
                    consultation: consultation(),
                },
                for_clinician: Some(clinician()),
                media_path: Some(MediaPath::TurnTls),
                ..visit_view
            },
        },
    ));
    names.push(check(
        "server_visit_presence",
        &ServerMsg::VisitPresence {
            clinic: clinic(),
            online: vec![visit()],
            offline: vec![VisitId(Uuid::from_u128(
                0x3333_3333_3333_4333_8333_3333_3333_3333,
            ))],
        },
    ));
    names.push(check(
        "server_visit_closed",
        &ServerMsg::VisitClosed {
            clinic: clinic(),
            visit: visit(),
            reason: VisitEndReason::Removed,
        },
    ));
    names.push(check(
        "server_consultation_updated",
        &ServerMsg::ConsultationUpdated {
            clinic: clinic(),
            consultation: consultation_view,
        },
    ));
    names.push(check(
        "server_consultation_ended",
        &ServerMsg::ConsultationEnded {
            clinic: clinic(),
            consultation: consultation(),
        },
    ));
    names.push(check(
        "server_patient_waiting",
        &ServerMsg::PatientStatus {
            status: PatientState::Waiting {
                clinic_name: "Dermatology".into(),
                waiting_since: Timestamp(1_700_000_000_000),
            },
        },
    ));
    names.push(check(
        "server_patient_admitted",
        &ServerMsg::PatientStatus {
            status: PatientState::Admitted {
                consultation: consultation(),
                audio_only: false,
            },
        },
    ));
    names.push(check(
        "server_patient_admitted_audio_only",
        &ServerMsg::PatientStatus {
            status: PatientState::Admitted {
                consultation: consultation(),
                audio_only: true,
            },
        },
    ));
    names.push(check(
        "server_patient_ended",
        &ServerMsg::PatientStatus {
            status: PatientState::Ended {
                reason: VisitEndReason::ConsultationEnded,
            },
        },
    ));
    names.push(check(
        "server_staff_message",
        &ServerMsg::StaffMessage {
            text: "We will be with you shortly.".into(),
            sent_at: Timestamp(1_700_000_030_000),
        },
    ));

    names.push(check(
        "rest_error",
        &ErrorBody {
            code: ErrorCode::TokenExpired,
            message: "Your sign-in has expired.".into(),
        },
    ));
    names.push(check(
        "rest_sign_in_request",
        &SignInRequest {
            username: "alice".into(),
            password: "correct horse".into(),
        },
    ));
    names.push(check(
        "rest_sign_in_options",
        &SignInOptions {
            oidc: Some("NHS Care Identity".into()),
        },
    ));
    names.push(check(
        "rest_sign_in_response",
        &SignInResponse {
            token: "eyJ...".into(),
            expires_at: Timestamp(1_700_003_600_000),
            session: staff_session,
        },
    ));
    names.push(check(
        "rest_clinic_entry",
        &ClinicEntryInfo {
            id: clinic(),
            name: "Dermatology".into(),
            open_link: true,
        },
    ));
    names.push(check(
        "rest_enter_open_link",
        &EnterRequest {
            entry: Entry::OpenLink { clinic: clinic() },
            name: "Pat Example".into(),
            details: None,
        },
    ));
    names.push(check(
        "rest_enter_invite",
        &EnterRequest {
            entry: Entry::Invite {
                token: "eyJ...".into(),
                previous: None,
            },
            name: "Pat Example".into(),
            details: Some("NHS 999 999 9999".into()),
        },
    ));
    names.push(check(
        "rest_enter_response",
        &EnterResponse {
            visit: visit(),
            visit_token: "eyJ...".into(),
            expires_at: Timestamp(1_700_043_200_000),
        },
    ));
    names.push(check(
        "rest_create_clinic",
        &CreateClinic {
            id: clinic(),
            name: "Dermatology".into(),
            open_link: true,
        },
    ));
    names.push(check(
        "rest_create_staff",
        &CreateStaff {
            username: clinician(),
            display_name: "Dr Jones".into(),
            role: Role::Clinician,
            clinics: vec![clinic()],
            password: "a long passphrase".into(),
        },
    ));
    names.push(check(
        "rest_issue_invite",
        &IssueInvite {
            clinic: clinic(),
            appointment: Some("APT-0042".into()),
            appointment_at: Some(Timestamp(1_700_050_000_000)),
            valid_for_secs: None,
        },
    ));
    names.push(check(
        "rest_invite_response",
        &InviteResponse {
            id: InviteId(Uuid::from_u128(0x4444_4444_4444_4444_8444_4444_4444_4444)),
            token: "eyJ...".into(),
            url: "https://video.example-hospital.org/i#eyJ...".into(),
            expires_at: Timestamp(1_700_136_400_000),
        },
    ));
    names.push(check(
        "rest_invite_view",
        &InviteView {
            id: InviteId(Uuid::from_u128(0x4444_4444_4444_4444_8444_4444_4444_4444)),
            clinic: clinic(),
            appointment: Some("APT-0042".into()),
            issued_by: "staff:dr.jones".into(),
            issued_at: Timestamp(1_700_000_000_000),
            expires_at: Timestamp(1_700_136_400_000),
            used: true,
            revoked: false,
        },
    ));
    let figures = CallFigures {
        seconds: 600,
        path: Some(MediaPath::TurnTls),
        rtt_ms: 84,
        loss_permille: 12,
        recv_kbps: 640,
        send_kbps: 510,
        freezes: 2,
        freeze_ms: 1_400,
        concealed_permille: 8,
        audio_only_ms: 0,
    };
    names.push(check(
        "client_call_quality",
        &ClientMsg::CallQuality(figures),
    ));
    names.push(check(
        "rest_call_quality",
        &CallQualityView {
            consultation: consultation(),
            started_at: Timestamp(1_700_000_060_000),
            updated_at: Timestamp(1_700_000_660_000),
            sessions: vec![
                SessionQuality {
                    role: CallRole::Patient,
                    started_at: Timestamp(1_700_000_060_000),
                    updated_at: Timestamp(1_700_000_660_000),
                    figures,
                },
                SessionQuality {
                    role: CallRole::Clinician,
                    started_at: Timestamp(1_700_000_061_000),
                    updated_at: Timestamp(1_700_000_655_000),
                    figures: CallFigures {
                        path: Some(MediaPath::Udp),
                        audio_only_ms: 120_000,
                        ..figures
                    },
                },
            ],
        },
    ));
    names.push(check(
        "rest_session_view",
        &SessionView {
            id: SessionId(Uuid::from_u128(0x5555_5555_5555_4555_8555_5555_5555_5555)),
            username: StaffId::parse("alice").unwrap(),
            signed_in_at: Timestamp(1_700_000_000_000),
            ends_at: Timestamp(1_700_043_200_000),
        },
    ));
    names.push(check(
        "rest_audit_entry",
        &AuditEntry {
            at: Timestamp(1_700_000_060_000),
            actor: "staff:alice".into(),
            action: "admit".into(),
            clinic: Some(clinic()),
            visit: Some(visit()),
            consultation: Some(consultation()),
            detail: Some("clinician dr.jones".into()),
        },
    ));
    names.push(check(
        "rest_media_check_info",
        &MediaCheckInfo {
            ice_servers: vec![IceServer {
                urls: vec!["stun:stun.example-hospital.org:3478".into()],
                username: None,
                credential: None,
            }],
        },
    ));
    names.push(check(
        "rest_media_check_offer",
        &MediaCheckOffer { sdp: SDP.into() },
    ));
    names.push(check(
        "rest_media_check_answer",
        &MediaCheckAnswer { sdp: SDP.into() },
    ));
    names.push(check(
        "rest_clinician",
        &ClinicianView {
            username: clinician(),
            display_name: "Dr Jones".into(),
        },
    ));
    names.extend(media_fixtures());
    names.extend(control_fixtures());
    names
}

fn candidate() -> IceCandidate {
    IceCandidate {
        candidate: "candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host".into(),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("abcd".into()),
    }
}

const SDP: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

fn participant() -> ParticipantId {
    ParticipantId(Uuid::from_u128(0x3333_3333_3333_4333_8333_3333_3333_3333))
}

fn media_fixtures() -> Vec<&'static str> {
    vec![
        check(
            "client_join_media",
            &ClientMsg::JoinMedia {
                consultation: consultation(),
            },
        ),
        check(
            "client_publish_offer",
            &ClientMsg::PublishOffer { sdp: SDP.into() },
        ),
        check(
            "client_subscriber_answer",
            &ClientMsg::SubscriberAnswer { sdp: SDP.into() },
        ),
        check(
            "client_ice_candidate",
            &ClientMsg::IceCandidate {
                leg: MediaLeg::Publisher,
                candidate: candidate(),
            },
        ),
        check("client_leave_media", &ClientMsg::LeaveMedia),
        check("client_restart_ice", &ClientMsg::RestartIce),
        check(
            "client_receive_video",
            &ClientMsg::ReceiveVideo { on: false },
        ),
        check(
            "server_media_link",
            &ServerMsg::MediaLink(LinkFigures {
                down_kbps: 420,
                rtt_ms: 38,
                loss_pct: 2,
            }),
        ),
        check(
            "client_resume_media",
            &ClientMsg::ResumeMedia {
                consultation: consultation(),
            },
        ),
        check(
            "server_media_resumed",
            &ServerMsg::MediaResumed {
                consultation: consultation(),
            },
        ),
        check(
            "client_media_state",
            &ClientMsg::MediaState(MediaState {
                audio: false,
                video: true,
                screen: false,
            }),
        ),
        check(
            "client_media_path",
            &ClientMsg::MediaPath {
                path: MediaPath::TurnTcp,
            },
        ),
        check(
            "server_peer_media_state",
            &ServerMsg::PeerMediaState {
                stream: "p3".into(),
                audio: true,
                video: false,
                screen: false,
            },
        ),
        check("server_publish_renegotiate", &ServerMsg::PublishRenegotiate),
        check(
            "server_publish_layers",
            &ServerMsg::PublishLayers {
                mid: "1".into(),
                paused: vec!["h".into()],
            },
        ),
        check(
            "server_media_joined",
            &ServerMsg::MediaJoined {
                consultation: consultation(),
                ice_servers: vec![IceServer {
                    urls: vec![
                        "turn:turn.example-hospital.org:3478?transport=udp".into(),
                        "turn:turn.example-hospital.org:3478?transport=tcp".into(),
                        "turns:turn.example-hospital.org:443?transport=tcp".into(),
                    ],
                    username: Some("1700014400:visit-11111111-1111-4111-8111-111111111111".into()),
                    credential: Some("0wQbbx1Ah2J0Pb3l0rTg5c5fqXY=".into()),
                }],
            },
        ),
        check(
            "server_ice_servers",
            &ServerMsg::IceServers {
                ice_servers: vec![IceServer {
                    urls: vec!["turns:turn.example-hospital.org:443?transport=tcp".into()],
                    username: Some("1700028800:staff-5f0e".into()),
                    credential: Some("p1X4m3R6oK0bTq2dWc9sZy8uVn4=".into()),
                }],
            },
        ),
        check(
            "server_publish_answer",
            &ServerMsg::PublishAnswer { sdp: SDP.into() },
        ),
        check(
            "server_subscriber_offer",
            &ServerMsg::SubscriberOffer { sdp: SDP.into() },
        ),
        check(
            "server_subscriber_answer_applied",
            &ServerMsg::SubscriberAnswerApplied,
        ),
        check(
            "server_ice_candidate",
            &ServerMsg::IceCandidate {
                leg: MediaLeg::Subscriber,
                candidate: candidate(),
            },
        ),
        check(
            "server_media_connection",
            &ServerMsg::MediaConnection { connected: true },
        ),
        check(
            "server_media_ended",
            &ServerMsg::MediaEnded {
                reason: MediaEndReason::ConsultationEnded,
            },
        ),
    ]
}

fn control_fixtures() -> Vec<&'static str> {
    use protocol::control::*;
    let req = |id, op| ControlRequest { id, op };
    vec![
        check(
            "control_join",
            &req(
                1,
                ControlOp::Join {
                    consultation: consultation(),
                    participant: participant(),
                    visit: Some(visit()),
                },
            ),
        ),
        check(
            "control_publish",
            &req(
                2,
                ControlOp::Publish {
                    participant: participant(),
                    sdp: SDP.into(),
                },
            ),
        ),
        check(
            "control_subscriber_answer",
            &req(
                3,
                ControlOp::SubscriberAnswer {
                    participant: participant(),
                    sdp: SDP.into(),
                },
            ),
        ),
        check(
            "control_candidate",
            &req(
                4,
                ControlOp::Candidate {
                    participant: participant(),
                    leg: MediaLeg::Publisher,
                    candidate: candidate(),
                },
            ),
        ),
        check(
            "control_leave",
            &req(
                5,
                ControlOp::Leave {
                    participant: participant(),
                },
            ),
        ),
        check(
            "control_remove_visit",
            &req(
                6,
                ControlOp::RemoveVisit {
                    consultation: consultation(),
                    visit: visit(),
                },
            ),
        ),
        check(
            "control_end_consultation",
            &req(
                7,
                ControlOp::EndConsultation {
                    consultation: consultation(),
                },
            ),
        ),
        check(
            "control_probe",
            &req(
                8,
                ControlOp::Probe {
                    participant: participant(),
                    sdp: SDP.into(),
                },
            ),
        ),
        check(
            "control_restart_ice",
            &req(
                10,
                ControlOp::RestartIce {
                    participant: participant(),
                },
            ),
        ),
        check(
            "control_drain",
            &req(
                11,
                ControlOp::Drain {
                    deadline_ms: 120_000,
                },
            ),
        ),
        check("control_resume", &req(12, ControlOp::Resume)),
        check(
            "control_receive_video",
            &req(
                13,
                ControlOp::ReceiveVideo {
                    participant: participant(),
                    on: false,
                },
            ),
        ),
        check(
            "node_link",
            &NodeMsg::Link {
                participant: participant(),
                figures: LinkFigures {
                    down_kbps: 180,
                    rtt_ms: 120,
                    loss_pct: 5,
                },
            },
        ),
        check(
            "control_media_state",
            &req(
                9,
                ControlOp::MediaState {
                    participant: participant(),
                    state: MediaState {
                        audio: true,
                        video: true,
                        screen: true,
                    },
                },
            ),
        ),
        check(
            "node_peer_state",
            &NodeMsg::PeerState {
                participant: participant(),
                stream: "p3".into(),
                state: MediaState {
                    audio: false,
                    video: false,
                    screen: false,
                },
            },
        ),
        check(
            "node_publish_renegotiate",
            &NodeMsg::PublishRenegotiate {
                participant: participant(),
            },
        ),
        check(
            "node_publish_layers",
            &NodeMsg::PublishLayers {
                participant: participant(),
                mid: "1".into(),
                paused: vec!["h".into()],
            },
        ),
        check(
            "node_reply_answer",
            &NodeMsg::Reply {
                id: 2,
                outcome: ControlOutcome::Answer { sdp: SDP.into() },
            },
        ),
        check(
            "node_reply_failed",
            &NodeMsg::Reply {
                id: 3,
                outcome: ControlOutcome::Failed {
                    code: ErrorCode::InvalidInput,
                    message: "the SDP was refused".into(),
                },
            },
        ),
        check(
            "node_subscriber_offer",
            &NodeMsg::SubscriberOffer {
                participant: participant(),
                sdp: SDP.into(),
            },
        ),
        check(
            "node_left",
            &NodeMsg::Left {
                participant: participant(),
                reason: MediaEndReason::RemovedFromConsultation,
            },
        ),
        check(
            "node_record",
            &NodeRecord {
                id: NodeId::parse("sfu-1").unwrap(),
                control_url: "ws://10.0.0.5:7100/control".into(),
                participants: 12,
                consultations: 5,
                draining: true,
                moving: false,
                heartbeat_at: Timestamp(1_700_000_000_000),
                expires_at: Timestamp(1_700_000_005_000),
            },
        ),
    ]
}

#[test]
fn every_message_matches_its_golden_fixture() {
    all_fixtures();
}

#[test]
fn no_fixture_is_stale() {
    let expected: BTreeSet<String> = all_fixtures()
        .into_iter()
        .map(|n| format!("{n}.json"))
        .collect();
    let present: BTreeSet<String> = std::fs::read_dir(dir())
        .expect("fixtures dir")
        .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
        .collect();
    assert_eq!(
        present, expected,
        "fixtures on disk and in this test differ"
    );
}

#[test]
fn malformed_and_unknown_messages_are_refused() {
    for bad in [
        "",
        "{",
        "null",
        r#"{"type":"hello"}"#,
        r#"{"type":"hello","token":"x","extra":1}"#,
        r#"{"type":"launch_missiles"}"#,
        r#"{"type":"command","req":1,"command":{"type":"admit","clinic":"Bad Clinic","visit":"x"}}"#,
        r#"{"type":"command","req":-1,"command":{"type":"leave"}}"#,
        r#"{"type":"media_state","audio":"yes","video":true}"#,
        r#"{"type":"media_state","audio":true}"#,
        r#"{"type":"media_state","audio":true,"video":true,"screen":false,"name":"x"}"#,
    ] {
        assert!(
            serde_json::from_str::<ClientMsg>(bad).is_err(),
            "{bad:?} accepted"
        );
    }
}

/// A command's `kind()` (the name metrics count it by) is its `type` on the wire.
#[test]
fn a_commands_kind_is_its_wire_type() {
    let mut seen = 0;
    for entry in std::fs::read_dir(dir()).expect("fixtures") {
        let text = std::fs::read_to_string(entry.expect("entry").path()).expect("read");
        let Ok(protocol::ClientMsg::Command { command, .. }) = serde_json::from_str(&text) else {
            continue;
        };
        let wire: serde_json::Value = serde_json::to_value(&command).expect("serialises");
        assert_eq!(wire["type"], command.kind(), "{command:?}");
        assert!(Command::KINDS.contains(&command.kind()), "{command:?}");
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} command fixtures");
}
