//! The gaps an attack-style review found (issue 13), each reproduced against a real server
//! on port 0: every test here failed before its fix.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::server::{TestServer, directory, limits};
use protocol::{ClinicId, Command, ErrorCode, ServerMsg, StaffId, TransferTarget, VisitStatus};
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
