//! TURN with coturn: the credentials signalling mints are the ones coturn accepts, only
//! until they expire, and coturn (run from `infra/coturn/turnserver.conf`) relays to the
//! SFU's media address and to nothing else. Also: the ICE servers a browser is handed,
//! through the real server, carry a credential of that person's own that no log shows.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use common::coturn::{Coturn, LOOPBACK, TurnClient, now_secs};
use protocol::{ClientMsg, ClinicId, Command, PatientState, ServerMsg, StaffId};
use signalling::turn::{IceServers, Turn, TurnConfig, mint};

/// The stand-in for the SFU: a UDP socket on the one address coturn may relay to.
fn sfu_socket() -> UdpSocket {
    let s = UdpSocket::bind((LOOPBACK, 0)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A credential for a patient's visit, as signalling mints it, valid for `secs` from now
/// (negative: already expired).
fn credential(coturn: &Coturn, secs: i64) -> (String, String) {
    let expiry = now_secs().saturating_add_signed(secs);
    mint(
        coturn.secret.as_bytes(),
        "visit-11111111-1111-4111-8111-111111111111",
        expiry,
    )
}

#[test]
fn coturn_relays_to_the_sfu_media_address_and_nowhere_else() {
    let sfu = sfu_socket();
    let coturn = Coturn::start(LOOPBACK);
    let (user, pass) = credential(&coturn, 600);
    let mut client = TurnClient::new(coturn.addr, &user, &pass);
    let relayed = client
        .allocate()
        .unwrap_or_else(|e| panic!("a fresh credential allocates: {e}\n{}", coturn.log()));

    // To the SFU: permitted, and media goes both ways through the relay.
    let sfu_addr = sfu.local_addr().unwrap();
    client.permit(sfu_addr).unwrap();
    client.send_to(sfu_addr, b"to the sfu").unwrap();
    let mut buf = [0u8; 64];
    let (n, from) = sfu.recv_from(&mut buf).unwrap();
    assert_eq!((&buf[..n], from), (&b"to the sfu"[..], relayed));
    sfu.send_to(b"from the sfu", relayed).unwrap();
    assert_eq!(
        client.receive().unwrap(),
        (sfu_addr, b"from the sfu".to_vec())
    );

    // Anywhere else: refused with 403 (Forbidden), whatever the address is. A would-be
    // peer on another loopback address, on the hospital's private network, on the
    // internet, and multicast.
    for other in [
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)),
        IpAddr::V4(Ipv4Addr::new(10, 20, 30, 40)),
        IpAddr::V4(Ipv4Addr::new(192, 168, 1, 1)),
        IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7)),
        IpAddr::V4(Ipv4Addr::new(224, 0, 0, 1)),
    ] {
        let peer = SocketAddr::new(other, sfu_addr.port());
        let refused = client.permit(peer).expect_err(&format!(
            "coturn must refuse to relay to {peer}\n{}",
            coturn.log()
        ));
        assert!(refused.contains("403"), "{peer}: {refused}");
    }
    // ... and nothing was relayed there: the one socket we can watch on a refused address.
    let other = UdpSocket::bind((Ipv4Addr::new(127, 0, 0, 2), 0)).unwrap();
    let other_addr = other.local_addr().unwrap();
    assert!(client.permit(other_addr).unwrap_err().contains("403"));
    assert!(client.send_to(other_addr, b"sneaky").is_err());
    other
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(other.recv_from(&mut buf).is_err(), "nothing arrives");

    // The SFU still works after the refusals.
    client.send_to(sfu_addr, b"again").unwrap();
    let (n, _) = sfu.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"again");
}

#[test]
fn coturn_refuses_a_credential_past_its_lifetime() {
    let coturn = Coturn::start(LOOPBACK);

    let (user, pass) = credential(&coturn, -5);
    let refused = TurnClient::new(coturn.addr, &user, &pass)
        .allocate()
        .expect_err("an expired credential must not allocate");
    assert!(refused.contains("401"), "{refused}");

    // The same person's credential, differing only in its expiry, is taken.
    let (user, pass) = credential(&coturn, 60);
    TurnClient::new(coturn.addr, &user, &pass)
        .allocate()
        .unwrap_or_else(|e| panic!("a fresh credential allocates: {e}\n{}", coturn.log()));

    // One made with another secret is not.
    let (user, pass) = mint(
        b"not the secret coturn shares with us",
        "visit-x",
        now_secs() + 60,
    );
    let refused = TurnClient::new(coturn.addr, &user, &pass)
        .allocate()
        .expect_err("a credential minted with another secret must not allocate");
    assert!(refused.contains("401"), "{refused}");

    // coturn checks the expiry when a relay is opened: one opened in time stays open
    // (refreshed, new permissions) after its credential expired, but no new relay opens
    // with it. So `credential_minutes` bounds how long into a call a page can still open
    // relays (after a network change or an ICE restart) with the credential it was given.
    let (user, pass) = credential(&coturn, 2);
    let mut open = TurnClient::new(coturn.addr, &user, &pass);
    open.allocate().unwrap();
    std::thread::sleep(Duration::from_millis(3100));
    open.refresh()
        .unwrap_or_else(|e| panic!("an open relay is refreshed: {e}"));
    let sfu = sfu_socket();
    open.permit(sfu.local_addr().unwrap()).unwrap();
    open.send_to(sfu.local_addr().unwrap(), b"still open")
        .unwrap();
    let mut buf = [0u8; 32];
    let (n, _) = sfu.recv_from(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"still open");
    let refused = TurnClient::new(coturn.addr, &user, &pass)
        .allocate()
        .expect_err("no new relay with an expired credential");
    assert!(refused.contains("401"), "{refused}");
}

/// Through the real server: the pre-call check and every media join hand out the
/// configured servers plus the TURN server with a credential minted there and then, each
/// person's own, which coturn accepts; the check's are rate-limited per address; none of
/// it reaches a log or the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_person_is_handed_a_turn_credential_of_their_own() {
    use common::server::{TestServer, directory, limits};
    use signalling::store::Store;
    use signalling::store::local::LocalStore;

    let logs = capture_logs();
    let coturn = Coturn::start(LOOPBACK);
    let urls = vec![format!("turn:{}?transport=udp", coturn.addr)];
    let turn = Turn::from_config(&TurnConfig {
        secret: coturn.secret.clone(),
        urls: urls.clone(),
        credential_minutes: 30,
    })
    .unwrap();
    let stun = protocol::IceServer {
        urls: vec!["stun:stun.example.org:3478".into()],
        username: None,
        credential: None,
    };
    let ice = IceServers::new(vec![stun.clone()], turn);
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    let node = sfu::control::Node::new(
        sfu::engine::Engine::new(sfu::engine::EngineConfig::new(LOOPBACK)).unwrap(),
    );
    let media = Arc::new(signalling::media::Media::in_process(
        protocol::NodeId::parse(signalling::media::LOCAL_NODE).unwrap(),
        node,
        ice,
    ));
    // Three checks a minute per address: a check's credentials are rate-limited with it.
    let limits = signalling::server::Limits {
        media_checks_per_minute: 3,
        ..limits()
    };
    let s = TestServer::start_with_media(store, limits, Some(media)).await;
    directory(&s.service).await;

    // The pre-call check: a 5-minute credential.
    let info: protocol::MediaCheckInfo = s
        .http
        .get(s.url("/api/media-check"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let [first, check] = &info.ice_servers[..] else {
        panic!("{:?}", info.ice_servers)
    };
    assert_eq!(first, &stun);
    assert_eq!(check.urls, urls);
    let user = check.username.clone().unwrap();
    let (expiry, who) = user.split_once(':').unwrap();
    assert_eq!(who, "check");
    let lifetime = expiry.parse::<u64>().unwrap() - now_secs();
    assert!((295..=300).contains(&lifetime), "{lifetime}");

    for expected in [200, 200, 429] {
        let r = s.http.get(s.url("/api/media-check")).send().await.unwrap();
        assert_eq!(r.status(), expected);
    }

    // A patient's and the clinician's joins: each their own credential, for the
    // configured lifetime, and coturn takes them.
    let entered = s.enter("derm", "Pat Turn").await;
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
                clinic: ClinicId::parse("derm").unwrap(),
                visit: entered.visit,
                clinician: StaffId::parse("dr.jones").unwrap(),
                consultation: None,
            },
        )
        .await;
    assert_eq!(status, 204);
    let consultation = match patient
        .until("admitted", |m| {
            matches!(
                m,
                ServerMsg::PatientStatus {
                    status: PatientState::Admitted { .. }
                }
            )
        })
        .await
    {
        ServerMsg::PatientStatus {
            status: PatientState::Admitted { consultation, .. },
        } => consultation,
        other => panic!("{other:?}"),
    };
    let jones = s.sign_in("dr.jones").await;
    let mut clinician = s.ws(&jones.token).await;
    let mut handed = Vec::new();
    for ws in [&mut patient, &mut clinician] {
        ws.send(&ClientMsg::JoinMedia { consultation }).await;
        let joined = ws
            .until("media_joined", |m| {
                matches!(m, ServerMsg::MediaJoined { .. })
            })
            .await;
        let ServerMsg::MediaJoined { ice_servers, .. } = joined else {
            unreachable!()
        };
        assert_eq!(ice_servers[0], stun);
        handed.push(ice_servers[1].clone());
    }
    let users: Vec<String> = handed.iter().map(|s| s.username.clone().unwrap()).collect();
    assert!(
        users[0].ends_with(&format!(":visit-{}", entered.visit)),
        "{users:?}"
    );
    assert!(users[1].ends_with(":staff-dr.jones"), "{users:?}");
    for (server, user) in handed.iter().zip(&users) {
        let expiry: u64 = user.split_once(':').unwrap().0.parse().unwrap();
        let lifetime = expiry - now_secs();
        assert!((30 * 60 - 5..=30 * 60).contains(&lifetime), "{lifetime}");
        TurnClient::new(coturn.addr, user, server.credential.as_deref().unwrap())
            .allocate()
            .unwrap_or_else(|e| panic!("coturn takes {user}: {e}\n{}", coturn.log()));
    }

    // An ICE restart is answered with a credential minted for it (the call's first may
    // have expired by then): the person's own, for the configured lifetime from now.
    patient.send(&ClientMsg::RestartIce).await;
    let ServerMsg::IceServers { ice_servers } = patient
        .until("ice_servers", |m| matches!(m, ServerMsg::IceServers { .. }))
        .await
    else {
        unreachable!()
    };
    assert_eq!(ice_servers[0], stun);
    let restart = ice_servers[1].clone();
    let user = restart.username.clone().unwrap();
    let (expiry, who) = user.split_once(':').unwrap();
    assert_eq!(who, format!("visit-{}", entered.visit));
    let lifetime = expiry.parse::<u64>().unwrap() - now_secs();
    assert!((30 * 60 - 5..=30 * 60).contains(&lifetime), "{lifetime}");
    TurnClient::new(coturn.addr, &user, restart.credential.as_deref().unwrap())
        .allocate()
        .unwrap_or_else(|e| panic!("coturn takes {user}: {e}\n{}", coturn.log()));
    handed.push(restart);

    // Never in the audit log, nor in any log line down to debug.
    let audit = s.service.store().audit_tail(1000).await.unwrap();
    let audit = serde_json::to_string(&audit).unwrap();
    let logged = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    assert!(
        logged.contains("media joined"),
        "the log was captured: {logged}"
    );
    for text in [&audit, &logged] {
        for server in handed.iter().chain([check]) {
            let password = server.credential.as_deref().unwrap();
            assert!(!text.contains(password), "a TURN password was logged");
        }
        assert!(!text.contains(&coturn.secret), "the TURN secret was logged");
    }
}

/// Every log line of this test binary, down to debug, from here on.
fn capture_logs() -> Arc<std::sync::Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<std::sync::Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs = Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_ansi(false)
            .with_writer(move || LogSink(sink.clone()))
            .init();
        logs
    })
    .clone()
}

struct LogSink(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for LogSink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
