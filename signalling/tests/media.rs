//! Media through signalling: synthetic `webrtc` participants join consultations over the
//! websocket exactly as a browser does, with the SFU in process (single node) and as a
//! separate node reached over its control websocket and registered in a real Redis.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::media::{LOOPBACK, MediaWs, join, join_media, receives_from};
use common::redis::RedisServer;
use common::server::{TestServer, Ws, directory, limits};
use protocol::control::NodeRecord;
use protocol::{
    ClientMsg, ClinicId, Command, ConsultationId, ErrorCode, MediaEndReason, MediaPath, MediaState,
    NodeId, PatientState, ServerMsg, StaffId, VisitId,
};
use sfu::control::Node;
use sfu::engine::{Engine, EngineConfig};
use signalling::media::{LOCAL_NODE, Media};
use signalling::store::Store;
use signalling::store::local::LocalStore;
use signalling::store::redis::RedisStore;

fn derm() -> ClinicId {
    ClinicId::parse("derm").unwrap()
}

fn in_process() -> (Arc<Node>, Arc<Media>) {
    let node = Node::new(Engine::new(EngineConfig::new(LOOPBACK)).unwrap());
    let media = Media::in_process(
        NodeId::parse(LOCAL_NODE).unwrap(),
        node.clone(),
        Default::default(),
    );
    (node, Arc::new(media))
}

async fn local_server() -> (TestServer, Arc<Node>) {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let (node, media) = in_process();
    let s = TestServer::start_with_media(store, limits(), Some(media)).await;
    directory(&s.service).await;
    (s, node)
}

/// A waiting patient, admitted by reception to dr.jones: the patient's websocket (which
/// was told it is admitted, with no further step) and the consultation.
async fn admitted_patient(s: &TestServer, name: &str) -> (Ws, VisitId, ConsultationId) {
    let (ws, visit, consultation, _) = admitted_patient_with_token(s, name).await;
    (ws, visit, consultation)
}

/// [`admitted_patient`], with the patient's visit token.
async fn admitted_patient_with_token(
    s: &TestServer,
    name: &str,
) -> (Ws, VisitId, ConsultationId, String) {
    let entered = s.enter("derm", name).await;
    let mut patient = s.ws(&entered.visit_token).await;
    patient
        .until("waiting", |m| {
            matches!(
                m,
                ServerMsg::PatientStatus {
                    status: PatientState::Waiting { .. }
                }
            )
        })
        .await;
    let alice = s.sign_in("alice").await;
    let (status, _) = s
        .command(
            &alice.token,
            &Command::Admit {
                clinic: derm(),
                visit: entered.visit,
                clinician: StaffId::parse("dr.jones").unwrap(),
                consultation: None,
            },
        )
        .await;
    assert_eq!(status, 204);
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
    (patient, entered.visit, consultation, entered.visit_token)
}

fn ended(m: &ServerMsg, why: MediaEndReason) -> bool {
    matches!(m, ServerMsg::MediaEnded { reason } if *reason == why)
}

async fn until_empty(node: &Node) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.load().participants > 0 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", node.load());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Admission to the end of the call, through the in-process SFU.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admitted_patient_and_the_clinician_see_and_hear_each_other() {
    let (s, node) = local_server().await;
    let (patient, _, consultation) = admitted_patient(&s, "Pat Media").await;
    let jones = s.sign_in("dr.jones").await;
    let clinician = s.ws(&jones.token).await;

    let (mut patient, p) = join(patient, consultation).await;
    let (mut clinician, c) = join(clinician, consultation).await;
    receives_from(&p, 1).await;
    receives_from(&c, 1).await;
    // Each page is told its media reaches the SFU, and that the SFU applied its answer to
    // the subscriber offer (a browser applies it only then, so that it checks the path
    // only once the SFU can answer).
    for ws in [&mut patient, &mut clinician] {
        let (mut connected, mut applied) = (false, false);
        while !(connected && applied) {
            let m = ws
                .until(5, |m| {
                    matches!(
                        m,
                        ServerMsg::MediaConnection { connected: true }
                            | ServerMsg::SubscriberAnswerApplied
                    )
                })
                .await;
            connected |= matches!(m, ServerMsg::MediaConnection { .. });
            applied |= matches!(m, ServerMsg::SubscriberAnswerApplied);
        }
    }
    assert_eq!(node.load().participants, 2);
    assert_eq!(node.load().consultations, 1);

    // The clinician ends the call: both media sessions end, and the node frees them.
    let (status, _) = s
        .command(
            &jones.token,
            &Command::EndConsultation {
                clinic: derm(),
                consultation,
            },
        )
        .await;
    assert_eq!(status, 204);
    for ws in [&mut patient, &mut clinician] {
        ws.until(5, |m| ended(m, MediaEndReason::ConsultationEnded))
            .await;
    }
    until_empty(&node).await;
    p.close().await;
    c.close().await;
}

/// What one person sends (microphone muted, camera off, a screen) reaches the others,
/// named by the media stream their tracks arrive in; someone who joins later learns it at
/// once; it never comes back to the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_side_is_told_when_the_other_mutes_or_turns_the_camera_off() {
    let (s, _node) = local_server().await;
    let (patient, _, consultation) = admitted_patient(&s, "Pat Muted").await;
    let (mut patient, p) = join(patient, consultation).await;
    let muted = MediaState {
        audio: false,
        video: true,
        screen: false,
    };
    patient.send(ClientMsg::MediaState(muted));

    // The clinician joins after the patient muted: told as they join, with the stream
    // id the patient's tracks arrive in.
    let jones = s.sign_in("dr.jones").await;
    let clinician = s.ws(&jones.token).await;
    let (mut clinician, c) = join(clinician, consultation).await;
    receives_from(&c, 1).await;
    let told = clinician
        .until(5, |m| {
            matches!(m, ServerMsg::PeerMediaState { audio: false, .. })
        })
        .await;
    let ServerMsg::PeerMediaState { stream, video, .. } = told else {
        unreachable!()
    };
    assert!(video);
    let streams: Vec<String> = c.stats.received().into_keys().map(|(s, _)| s).collect();
    assert!(
        streams.contains(&stream),
        "{stream} is not one of the streams received: {streams:?}"
    );

    // The clinician turns the camera off and shares a screen instead: the patient hears.
    let sharing = MediaState {
        audio: true,
        video: true,
        screen: true,
    };
    clinician.send(ClientMsg::MediaState(sharing));
    patient
        .until(5, |m| {
            matches!(
                m,
                ServerMsg::PeerMediaState {
                    audio: true,
                    video: true,
                    screen: true,
                    ..
                }
            )
        })
        .await;
    // Nobody is told about themselves.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !std::iter::from_fn(|| clinician.inbox.try_recv().ok())
            .any(|m| matches!(m, ServerMsg::PeerMediaState { screen: true, .. })),
        "the clinician was told their own state"
    );
    p.close().await;
    c.close().await;
}

/// A patient sent back to the waiting room leaves the media; the clinician stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn returning_a_patient_to_waiting_removes_only_their_media() {
    let (s, node) = local_server().await;
    let (first, first_visit, consultation) = admitted_patient(&s, "Pat One").await;
    // A second person (say, a relative) joins the same consultation.
    let entered = s.enter("derm", "Relative Two").await;
    let second = s.ws(&entered.visit_token).await;
    let alice = s.sign_in("alice").await;
    let admit = Command::Admit {
        clinic: derm(),
        visit: entered.visit,
        clinician: StaffId::parse("dr.jones").unwrap(),
        consultation: Some(consultation),
    };
    assert_eq!(s.command(&alice.token, &admit).await.0, 204);
    let jones = s.sign_in("dr.jones").await;
    let clinician = s.ws(&jones.token).await;

    let (mut first, a) = join(first, consultation).await;
    let (mut second, b) = join(second, consultation).await;
    let (mut clinician, c) = join(clinician, consultation).await;
    for p in [&a, &b, &c] {
        receives_from(p, 2).await;
    }

    let back = Command::ReturnToWaiting {
        clinic: derm(),
        visit: first_visit,
    };
    assert_eq!(s.command(&alice.token, &back).await.0, 204);
    first
        .until(5, |m| ended(m, MediaEndReason::RemovedFromConsultation))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while node.load().participants != 2 {
        assert!(tokio::time::Instant::now() < deadline, "{:?}", node.load());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The other two carry on: nothing ended for them, and media still flows.
    let before = b.stats.packets.load(std::sync::atomic::Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(b.stats.packets.load(std::sync::atomic::Ordering::Relaxed) > before);
    for ws in [&mut second, &mut clinician] {
        assert!(
            !std::iter::from_fn(|| ws.inbox.try_recv().ok())
                .any(|m| matches!(m, ServerMsg::MediaEnded { .. })),
            "media ended for someone still in the consultation"
        );
    }
    for p in [a, b, c] {
        p.close().await;
    }
}

async fn media_error(ws: &mut MediaWs, msg: ClientMsg) -> ErrorCode {
    ws.send(msg);
    match ws
        .until(5, |m| {
            matches!(m, ServerMsg::Error { .. } | ServerMsg::MediaJoined { .. })
        })
        .await
    {
        ServerMsg::Error { code, .. } => code,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Whoever is not in the consultation cannot join its media; bad descriptions are refused
/// with a reason and break nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_is_refused_to_outsiders_and_bad_input_changes_nothing() {
    let (s, node) = local_server().await;
    let (patient, _, consultation) = admitted_patient(&s, "Pat Allowed").await;
    let join_it = ClientMsg::JoinMedia { consultation };

    // A patient still waiting, reception, another clinician, an unknown consultation.
    let other = s.enter("derm", "Pat Other").await;
    let ws = |token: String| {
        let s = &s;
        async move { MediaWs::open(s.ws(&token).await) }
    };
    let mut waiting = ws(other.visit_token.clone()).await;
    assert_eq!(
        media_error(&mut waiting, join_it.clone()).await,
        ErrorCode::Forbidden
    );
    let mut reception = ws(s.sign_in("alice").await.token).await;
    assert_eq!(
        media_error(&mut reception, join_it.clone()).await,
        ErrorCode::Forbidden
    );
    let mut smith = ws(s.sign_in("dr.smith").await.token).await;
    assert_eq!(
        media_error(&mut smith, join_it.clone()).await,
        ErrorCode::Forbidden
    );
    let mut jones = ws(s.sign_in("dr.jones").await.token).await;
    let unknown = ClientMsg::JoinMedia {
        consultation: ConsultationId::random(),
    };
    assert_eq!(media_error(&mut jones, unknown).await, ErrorCode::NotFound);
    // Media messages before joining.
    let offer = ClientMsg::PublishOffer {
        sdp: "v=0\r\n".into(),
    };
    assert_eq!(
        media_error(&mut jones, offer).await,
        ErrorCode::InvalidInput
    );
    let state = ClientMsg::MediaState(MediaState {
        audio: false,
        video: false,
        screen: false,
    });
    assert_eq!(
        media_error(&mut jones, state).await,
        ErrorCode::InvalidInput
    );
    assert_eq!(node.load().participants, 0, "nobody joined");

    // Joined: garbage and oversized descriptions are refused; a good one still works.
    let mut patient = MediaWs::open(patient);
    patient.send(join_it.clone());
    patient
        .until(5, |m| matches!(m, ServerMsg::MediaJoined { .. }))
        .await;
    for garbage in [
        "this is not SDP".to_owned(),
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n".to_owned(),
        "x".repeat(protocol::MAX_SDP_BYTES + 1),
    ] {
        let code = media_error(&mut patient, ClientMsg::PublishOffer { sdp: garbage }).await;
        assert_eq!(code, ErrorCode::InvalidInput);
    }
    let bad_candidate = ClientMsg::IceCandidate {
        leg: protocol::MediaLeg::Publisher,
        candidate: protocol::IceCandidate {
            candidate: "c".repeat(protocol::MAX_CANDIDATE_BYTES + 1),
            sdp_mid: None,
            sdp_m_line_index: None,
            username_fragment: None,
        },
    };
    assert_eq!(
        media_error(&mut patient, bad_candidate).await,
        ErrorCode::InvalidInput
    );
    assert_eq!(node.load().participants, 1);
    // Leaving ends the session; the node frees the participant.
    patient.send(ClientMsg::LeaveMedia);
    patient.until(5, |m| ended(m, MediaEndReason::Left)).await;
    until_empty(&node).await;
}

/// A separate SFU node: it registers in Redis, two signalling instances place one
/// consultation on it (the placement recorded in the store wins), and each instance
/// reaches it over its control websocket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_registered_in_redis_carries_a_consultation_joined_on_two_instances() {
    let redis = RedisServer::start();
    let store = || async {
        let s: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
        s
    };
    let mut conn = redis::aio::ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
        .await
        .unwrap();
    let secret = sfu::registry::control_secret(&mut conn, "").await.unwrap();

    let media_a = Arc::new(Media::registered(
        store().await,
        secret.clone(),
        Default::default(),
    ));
    let a = TestServer::start_with_media(store().await, limits(), Some(media_a)).await;
    directory(&a.service).await;
    let media_b = Arc::new(Media::registered(
        store().await,
        secret.clone(),
        Default::default(),
    ));
    let b = TestServer::start_with_media(store().await, limits(), Some(media_b)).await;
    let (patient, _, consultation) = admitted_patient(&a, "Pat Distributed").await;
    let jones = b.sign_in("dr.jones").await;

    // No node yet: joining media says so.
    let mut early = MediaWs::open(b.ws(&jones.token).await);
    assert_eq!(
        media_error(&mut early, ClientMsg::JoinMedia { consultation }).await,
        ErrorCode::Unavailable
    );

    // Two nodes register; the busier one must not be chosen (it would not answer).
    let (node, _stop) = start_node(&mut conn, &secret, "sfu-a").await;
    let id = NodeId::parse("sfu-a").unwrap();
    let record = sfu::registry::record(
        &id,
        "ws://127.0.0.1:9/control",
        node.load(),
        sfu::control::Service::Serving,
    );
    let busy = NodeRecord {
        id: NodeId::parse("sfu-busy").unwrap(),
        control_url: "ws://127.0.0.1:9/control".into(),
        participants: 500,
        ..record.clone()
    };
    sfu::registry::announce(&mut conn, &busy).await.unwrap();

    // The patient joins through instance A, the clinician through instance B.
    let (_patient, p) = join(patient, consultation).await;
    let (_clinician, c) = join(b.ws(&jones.token).await, consultation).await;
    receives_from(&p, 1).await;
    receives_from(&c, 1).await;
    assert_eq!(node.load().participants, 2, "both on the least loaded node");

    // The placement is in the store, for every instance to find.
    let room = a
        .service
        .store()
        .room(&derm())
        .await
        .unwrap()
        .unwrap()
        .value;
    let placed = room.consultation(consultation).unwrap().media_node.clone();
    assert_eq!(placed, Some(id));
    p.close().await;
    c.close().await;
}

/// A clinician and five patients (family, an interpreter...) in one consultation: each of
/// the six receives the other five's audio and video.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn six_people_in_one_consultation_each_receive_the_other_five() {
    let (s, node) = local_server().await;
    let (first, _, consultation) = admitted_patient(&s, "Pat First").await;
    let alice = s.sign_in("alice").await;
    let mut sockets = vec![first];
    for i in 2..=5 {
        let entered = s.enter("derm", &format!("Person {i}")).await;
        sockets.push(s.ws(&entered.visit_token).await);
        let admit = Command::Admit {
            clinic: derm(),
            visit: entered.visit,
            clinician: StaffId::parse("dr.jones").unwrap(),
            consultation: Some(consultation),
        };
        assert_eq!(s.command(&alice.token, &admit).await.0, 204);
    }
    sockets.push(s.ws(&s.sign_in("dr.jones").await.token).await);
    let mut people = Vec::new();
    for ws in sockets {
        let mut media = MediaWs::open(ws);
        let p = join_media(&mut media, consultation, 100).await;
        people.push((media, p));
    }
    for (_, p) in &people {
        receives_from(p, 5).await;
    }
    assert_eq!(node.load().participants, 6);
    for (_, p) in people {
        p.close().await;
    }
}

/// Starts a node serving its control websocket until `stop`, and registers it.
async fn start_node(
    conn: &mut redis::aio::ConnectionManager,
    secret: &str,
    id: &str,
) -> (Arc<Node>, tokio_util::sync::CancellationToken) {
    let node = Node::new(Engine::new(EngineConfig::new(LOOPBACK)).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let app = sfu::server::router(
        node.clone(),
        secret,
        stop.clone(),
        sfu::metrics::Access::default(),
    );
    let stopped = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stopped.cancelled().await })
            .await
    });
    let id = NodeId::parse(id).unwrap();
    let url = format!("ws://{addr}/control");
    let record = sfu::registry::record(&id, &url, node.load(), sfu::control::Service::Serving);
    sfu::registry::announce(conn, &record).await.unwrap();
    // Its heartbeat, as the `sfu` command runs it: a drain shows in the record at once.
    tokio::spawn(sfu::registry::heartbeat(
        conn.clone(),
        node.clone(),
        id,
        url,
        stop.clone(),
    ));
    (node, stop)
}

/// A call on SFU nodes registered in Redis: `nodes` started (by name, so the call lands
/// on the first), one instance, a patient and the clinician joined and receiving.
struct NodeCall {
    /// Bind it (`_redis`, not `..`): dropped, the server stops.
    _redis: RedisServer,
    conn: redis::aio::ConnectionManager,
    secret: String,
    nodes: Vec<(Arc<Node>, tokio_util::sync::CancellationToken)>,
    s: TestServer,
    consultation: ConsultationId,
    patient: (MediaWs, sfu_synthetic::Participant),
    clinician: (MediaWs, sfu_synthetic::Participant),
}

async fn node_call(nodes: &[&str], patient_name: &str) -> NodeCall {
    let redis = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&redis.url()).await.unwrap());
    let mut conn = redis::aio::ConnectionManager::new(redis::Client::open(redis.url()).unwrap())
        .await
        .unwrap();
    let secret = sfu::registry::control_secret(&mut conn, "").await.unwrap();
    let mut started = Vec::new();
    for name in nodes {
        started.push(start_node(&mut conn, &secret, name).await);
    }
    let media = Arc::new(Media::registered(
        store.clone(),
        secret.clone(),
        Default::default(),
    ));
    let s = TestServer::start_with_media(store, limits(), Some(media)).await;
    directory(&s.service).await;
    let (patient, _, consultation) = admitted_patient(&s, patient_name).await;
    let jones = s.sign_in("dr.jones").await;
    let patient = join(patient, consultation).await;
    let clinician = join(s.ws(&jones.token).await, consultation).await;
    receives_from(&patient.1, 1).await;
    receives_from(&clinician.1, 1).await;
    assert_eq!(started[0].0.load().participants, 2, "placed on the first");
    NodeCall {
        _redis: redis,
        conn,
        secret,
        nodes: started,
        s,
        consultation,
        patient,
        clinician,
    }
}

/// An administrator drains the node carrying a call: no new consultation goes there, the
/// call goes on until the deadline, then both are told `node_moved` and joining again
/// puts them on the other node. Only an administrator may; bad requests change nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_administrator_drains_a_node_and_its_calls_move_at_the_deadline() {
    let NodeCall {
        _redis,
        nodes,
        s,
        consultation,
        patient: (mut patient, p),
        clinician: (mut clinician, c),
        ..
    } = node_call(&["sfu-a", "sfu-b"], "Pat Drained").await;
    let (first, second) = (&nodes[0].0, &nodes[1].0);
    let jones = s.sign_in("dr.jones").await;

    let admin = s.sign_in("admin").await;
    let drain = serde_json::json!({ "deadline_seconds": 1 });
    // Not an administrator; no such node; too long a deadline; a malformed body.
    assert_eq!(
        s.post(
            "/api/admin/media-nodes/sfu-a/drain",
            Some(&jones.token),
            &drain
        )
        .await,
        (403, Some(ErrorCode::Forbidden))
    );
    assert_eq!(
        s.post(
            "/api/admin/media-nodes/sfu-zz/drain",
            Some(&admin.token),
            &drain
        )
        .await,
        (404, Some(ErrorCode::NotFound))
    );
    let forever = serde_json::json!({ "deadline_seconds": 100 * 24 * 3600 });
    assert_eq!(
        s.post(
            "/api/admin/media-nodes/sfu-a/drain",
            Some(&admin.token),
            &forever
        )
        .await
        .0,
        400
    );
    assert_eq!(
        s.post_raw(
            "/api/admin/media-nodes/sfu-a/drain",
            Some(&admin.token),
            "{\"deadline_seconds\": -1}".into()
        )
        .await
        .0,
        400
    );
    assert_eq!(
        first.service(),
        sfu::control::Service::Serving,
        "nothing changed"
    );

    assert_eq!(
        s.post(
            "/api/admin/media-nodes/sfu-a/drain",
            Some(&admin.token),
            &drain
        )
        .await,
        (204, None)
    );
    let nodes: Vec<NodeRecord> = s.get_json("/api/admin/media-nodes", &admin.token).await;
    let a = nodes.iter().find(|n| n.id.as_str() == "sfu-a").unwrap();
    assert!(a.draining && !a.moving, "draining, not moving yet: {a:?}");
    // Before the deadline the call is still where it was.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(first.load().participants, 2);
    for ws in [&mut patient, &mut clinician] {
        ws.until(5, |m| ended(m, MediaEndReason::NodeMoved)).await;
    }
    p.close().await;
    c.close().await;
    let p = join_media(&mut patient, consultation, 300).await;
    let c = join_media(&mut clinician, consultation, 300).await;
    receives_from(&p, 1).await;
    receives_from(&c, 1).await;
    assert_eq!(second.load().participants, 2, "both on the other node");
    assert_eq!(first.load().participants, 0);

    // Back into service.
    assert_eq!(
        s.post(
            "/api/admin/media-nodes/sfu-a/resume",
            Some(&admin.token),
            &serde_json::json!({})
        )
        .await,
        (204, None)
    );
    assert_eq!(first.service(), sfu::control::Service::Serving);
    let audit = s.service.store().audit_tail(10).await.unwrap();
    assert!(audit.iter().any(|e| e.action == "node_drain"), "{audit:?}");
    assert!(audit.iter().any(|e| e.action == "node_resume"), "{audit:?}");
    p.close().await;
    c.close().await;
}

/// A node that stops: the browsers it carried are told at once, and joining again moves
/// the consultation to another node although the dead one's record has not expired yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_a_node_stops_its_consultations_move_to_another() {
    let NodeCall {
        _redis,
        mut conn,
        secret,
        nodes,
        s,
        consultation,
        patient: (mut patient, p),
        clinician: (mut clinician, c),
    } = node_call(&["sfu-a"], "Pat Moved").await;
    let stop_first = &nodes[0].1;

    let (second, _stop_second) = start_node(&mut conn, &secret, "sfu-b").await;
    stop_first.cancel();
    for ws in [&mut patient, &mut clinician] {
        ws.until(5, |m| ended(m, MediaEndReason::NodeLost)).await;
    }
    p.close().await;
    c.close().await;

    let p = join_media(&mut patient, consultation, 300).await;
    let c = join_media(&mut clinician, consultation, 300).await;
    receives_from(&p, 1).await;
    receives_from(&c, 1).await;
    assert_eq!(second.load().participants, 2);
    let room = s
        .service
        .store()
        .room(&derm())
        .await
        .unwrap()
        .unwrap()
        .value;
    assert_eq!(
        room.consultation(consultation).unwrap().media_node,
        Some(NodeId::parse("sfu-b").unwrap())
    );
    p.close().await;
    c.close().await;
}

/// The pre-call check's endpoint as a synthetic participant's signal path.
struct CheckSignal {
    http: reqwest::Client,
    url: String,
}

#[async_trait::async_trait]
impl sfu_synthetic::Signal for CheckSignal {
    async fn publish(&self, offer: String) -> Result<String, sfu::engine::EngineError> {
        let r = self
            .http
            .post(&self.url)
            .json(&protocol::MediaCheckOffer { sdp: offer })
            .send()
            .await
            .map_err(|e| sfu::engine::EngineError::WebRtc(e.to_string()))?;
        assert_eq!(r.status(), 200);
        let answer: protocol::MediaCheckAnswer = r.json().await.unwrap();
        Ok(answer.sdp)
    }
    async fn subscriber_answer(&self, _: String) -> Result<(), sfu::engine::EngineError> {
        unreachable!("a check receives nothing")
    }
}

/// Before entering a waiting room, anyone can check that media reaches a node: a
/// connection of its own, in a room of its own; garbage is refused and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pre_call_check_connects_to_a_node_and_refuses_garbage() {
    let (s, node) = local_server().await;
    let info: protocol::MediaCheckInfo = s
        .http
        .get(s.url("/api/media-check"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(info.ice_servers.is_empty());
    let (status, code) = s
        .post(
            "/api/media-check",
            None,
            &protocol::MediaCheckOffer {
                sdp: "not an offer".into(),
            },
        )
        .await;
    assert_eq!((status, code), (400, Some(ErrorCode::InvalidInput)));
    let (_keep, offers) = tokio::sync::mpsc::unbounded_channel();
    let signal = Arc::new(CheckSignal {
        http: s.http.clone(),
        url: s.url("/api/media-check"),
    });
    let check = sfu_synthetic::Participant::connect(
        signal,
        offers,
        LOOPBACK,
        0,
        Some(sfu_synthetic::Publish {
            video_kbps: 100,
            audio: true,
        }),
    )
    .await
    .unwrap();
    let load = node.load();
    assert_eq!((load.participants, load.consultations), (1, 1));
    // A check is nobody's consultation: a real call next to it sees only its own people.
    let (patient, _, consultation) = admitted_patient(&s, "Pat After Check").await;
    let jones = s.sign_in("dr.jones").await;
    let (_p_ws, p) = join(patient, consultation).await;
    let (_c_ws, c) = join(s.ws(&jones.token).await, consultation).await;
    receives_from(&p, 1).await;
    receives_from(&c, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(p.stats.sources_with_both(1), 1, "{:?}", p.stats.received());
    check.close().await;
    p.close().await;
    c.close().await;
}

/// Whom reception can admit to, and the admin lists, for those allowed only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clinicians_and_admin_lists_are_for_those_allowed() {
    let (s, _node) = local_server().await;
    let alice = s.sign_in("alice").await;
    let bob = s.sign_in("bob").await;
    let admin = s.sign_in("admin").await;
    let get =
        |path: &str, token: &str| s.http.get(s.url(path)).bearer_auth(token.to_owned()).send();
    let r = get("/api/clinics/derm/clinicians", &alice.token)
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let mut names: Vec<String> = r
        .json::<Vec<protocol::ClinicianView>>()
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.username.to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["dr.jones", "dr.smith"]);
    // Reception of another clinic may not see them.
    let r = get("/api/clinics/derm/clinicians", &bob.token)
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    for path in ["/api/admin/clinics", "/api/admin/staff"] {
        assert_eq!(get(path, &alice.token).await.unwrap().status(), 403);
        assert_eq!(get(path, &admin.token).await.unwrap().status(), 200);
    }
    let staff: Vec<protocol::StaffSession> = get("/api/admin/staff", &admin.token)
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(staff.len(), 5);
    assert!(
        !serde_json::to_string(&staff).unwrap().contains("argon2"),
        "no password hashes"
    );
}

/// Issue 14: a page whose websocket was lost (a new network) takes its media session back
/// on a new connection within the grace, so it restarts ICE instead of joining again; the
/// node keeps the participant meanwhile. Nobody else can take it: not the clinician, not
/// another patient; and a connection already in a session cannot take a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_media_session_is_taken_back_by_its_owner_only() {
    let (s, node) = local_server().await;
    let (mut patient, _, consultation, token) = admitted_patient_with_token(&s, "Pat Moving").await;
    patient.send(&ClientMsg::JoinMedia { consultation }).await;
    patient
        .until("media joined", |m| {
            matches!(m, ServerMsg::MediaJoined { .. })
        })
        .await;
    assert_eq!(node.load().participants, 1);

    // The connection is lost: no close frame, the TCP connection just goes.
    drop(patient);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        node.load().participants,
        1,
        "the node keeps the participant"
    );

    // The clinician and another patient cannot take it.
    let jones = s.sign_in("dr.jones").await;
    let other = s.enter("derm", "Pat Other").await;
    for token in [jones.token.as_str(), other.visit_token.as_str()] {
        let mut ws = s.ws(token).await;
        ws.send(&ClientMsg::ResumeMedia { consultation }).await;
        let refused = ws
            .until("refused", |m| matches!(m, ServerMsg::Error { .. }))
            .await;
        assert!(
            matches!(
                refused,
                ServerMsg::Error {
                    code: ErrorCode::NotFound,
                    ..
                }
            ),
            "{refused:?}"
        );
    }

    // Its owner, on a new connection, takes it back; once.
    let mut again = s.ws(&token).await;
    again.send(&ClientMsg::ResumeMedia { consultation }).await;
    let resumed = again
        .until("resumed", |m| {
            matches!(m, ServerMsg::MediaResumed { .. } | ServerMsg::Error { .. })
        })
        .await;
    assert_eq!(resumed, ServerMsg::MediaResumed { consultation });
    again.send(&ClientMsg::ResumeMedia { consultation }).await;
    let twice = again
        .until("refused", |m| matches!(m, ServerMsg::Error { .. }))
        .await;
    assert!(matches!(
        twice,
        ServerMsg::Error {
            code: ErrorCode::Conflict,
            ..
        }
    ));
    assert_eq!(node.load().participants, 1);

    // Leaving ends it for good.
    again.send(&ClientMsg::LeaveMedia).await;
    until_empty(&node).await;
}

/// A page on a new network asks for its session at the moment the server sees the old
/// connection go (the old one noticed the loss while the new one asked for the session):
/// the session is found however the two interleave, network after network. (CI once saw
/// `not_found` here, and the page joined again, leaving its old self in the call.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_is_resumed_while_its_old_connection_is_seen_to_go() {
    let (s, node) = local_server().await;
    let (mut old, _, consultation, token) = admitted_patient_with_token(&s, "Pat Roaming").await;
    old.send(&ClientMsg::JoinMedia { consultation }).await;
    old.until("media joined", |m| {
        matches!(m, ServerMsg::MediaJoined { .. })
    })
    .await;
    for round in 0..40 {
        let mut new = s.ws(&token).await;
        // The old connection goes (no close frame) as the new one asks.
        let lost = tokio::spawn(async move { drop(old) });
        new.send(&ClientMsg::ResumeMedia { consultation }).await;
        let answer = new
            .until("resumed", |m| {
                matches!(m, ServerMsg::MediaResumed { .. } | ServerMsg::Error { .. })
            })
            .await;
        assert_eq!(
            answer,
            ServerMsg::MediaResumed { consultation },
            "round {round}"
        );
        lost.await.unwrap();
        assert_eq!(node.load().participants, 1, "round {round}");
        old = new;
    }
    old.send(&ClientMsg::LeaveMedia).await;
    until_empty(&node).await;
}

/// A page back on a new connection that joins the media again (rather than resuming)
/// replaces the self it left: the node has one participant for it at once, not a second
/// one, silent, for the rest of the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joining_again_replaces_the_session_a_lost_connection_left() {
    let (s, node) = local_server().await;
    let (mut patient, _, consultation, token) = admitted_patient_with_token(&s, "Pat Again").await;
    patient.send(&ClientMsg::JoinMedia { consultation }).await;
    patient
        .until("media joined", |m| {
            matches!(m, ServerMsg::MediaJoined { .. })
        })
        .await;
    drop(patient);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node.load().participants, 1, "kept for the grace");

    let mut again = s.ws(&token).await;
    again.send(&ClientMsg::JoinMedia { consultation }).await;
    again
        .until("media joined", |m| {
            matches!(m, ServerMsg::MediaJoined { .. })
        })
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while node.load().participants != 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the old self is still in the call: {:?}",
            node.load()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    again.send(&ClientMsg::LeaveMedia).await;
    until_empty(&node).await;
}

/// Each browser says how its media flows (`media_path`), and the clinic's staff see it:
/// the patient's on their visit, the clinician's on the consultation. Before joining the
/// media a report is refused; garbage is refused and changes nothing; the path goes with
/// the call when the patient is sent back to waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_see_how_each_persons_media_flows() {
    let (s, _node) = local_server().await;
    let (mut patient, visit, consultation) = admitted_patient(&s, "Pat Path").await;
    let alice = s.sign_in("alice").await;
    let mut reception = s.ws(&alice.token).await;
    reception
        .until("snapshot", |m| {
            matches!(m, ServerMsg::ClinicSnapshot { .. })
        })
        .await;
    let path_of = |m: &ServerMsg, want: Option<MediaPath>| matches!(m, ServerMsg::VisitUpdated { visit: v, .. } if v.id == visit && v.media_path == want);

    patient
        .send(&ClientMsg::MediaPath {
            path: MediaPath::TurnTls,
        })
        .await;
    patient
        .until("refused before joining", |m| {
            matches!(
                m,
                ServerMsg::Error {
                    code: ErrorCode::InvalidInput,
                    ..
                }
            )
        })
        .await;

    patient.send(&ClientMsg::JoinMedia { consultation }).await;
    patient
        .until("joined", |m| matches!(m, ServerMsg::MediaJoined { .. }))
        .await;
    patient
        .send(&ClientMsg::MediaPath {
            path: MediaPath::TurnTls,
        })
        .await;
    reception
        .until("the patient's path", |m| {
            path_of(m, Some(MediaPath::TurnTls))
        })
        .await;

    let jones = s.sign_in("dr.jones").await;
    let mut clinician = s.ws(&jones.token).await;
    clinician.send(&ClientMsg::JoinMedia { consultation }).await;
    clinician
        .until("joined", |m| matches!(m, ServerMsg::MediaJoined { .. }))
        .await;
    clinician
        .send(&ClientMsg::MediaPath {
            path: MediaPath::Udp,
        })
        .await;
    reception
        .until("the clinician's path", |m| {
            matches!(m, ServerMsg::ConsultationUpdated { consultation: c, .. }
                if c.id == consultation && c.clinician_path == Some(MediaPath::Udp))
        })
        .await;

    // Garbage is refused; the snapshot still says what the browser last said.
    patient
        .send_raw(r#"{"type":"media_path","path":"carrier_pigeon"}"#)
        .await;
    let refused = patient
        .until("garbage refused", |m| matches!(m, ServerMsg::Error { .. }))
        .await;
    assert!(matches!(refused, ServerMsg::Error { req: None, .. }));
    let ServerMsg::ClinicSnapshot { visits, .. } = s.snapshot(&alice.token, "derm").await else {
        unreachable!()
    };
    assert_eq!(visits[0].media_path, Some(MediaPath::TurnTls));

    // Back to waiting: the path is gone with the call.
    reception
        .ok(Command::ReturnToWaiting {
            clinic: derm(),
            visit,
        })
        .await;
    reception
        .until("the path cleared", |m| path_of(m, None))
        .await;
}
