//! The store conformance suite, run against both stores: the single-node `LocalStore` and
//! `RedisStore` on a real redis-server.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use protocol::{
    AuditEntry, CallFigures, CallRole, ClinicId, ConsultationId, ParticipantId, Role, ServerMsg,
    StaffId, Timestamp, VisitId,
};
use signalling::room::{Audience, ClinicRoom, Ctx, Event, NewVisit};
use signalling::store::local::LocalStore;
use signalling::store::redis::RedisStore;
use signalling::store::{
    Appended, Arrival, Clinic, Commit, Feed, InviteClaim, InviteRecord, Lease, QualityReport,
    RoomWrite, SessionRecord, StaffRecord, Store, StoreError,
};

use common::redis::RedisServer;

fn clinic_id(s: &str) -> ClinicId {
    ClinicId::parse(s).unwrap()
}

fn clinic(s: &str) -> Clinic {
    Clinic {
        id: clinic_id(s),
        name: format!("Clinic {s}"),
        open_link: true,
    }
}

fn entry(action: &str, n: u64) -> AuditEntry {
    AuditEntry {
        at: Timestamp(n),
        actor: "staff:alice".into(),
        action: action.into(),
        clinic: None,
        visit: None,
        consultation: None,
        detail: Some(format!("#{n}")),
    }
}

/// A room with one more visit, and the commit that writes it over `expected`.
fn arrival(room: &ClinicRoom, expected: u64, t: u64) -> (VisitId, Commit) {
    let mut room = room.clone();
    let id = VisitId::random();
    let out = room.arrive(
        NewVisit {
            id,
            name: format!("Patient {t}"),
            details: None,
            appointment: None,
        },
        &Ctx {
            actor: "system".into(),
            now: Timestamp(t),
        },
    );
    let clinic = room.clinic.clone();
    (
        id,
        Commit {
            rooms: vec![RoomWrite {
                expected,
                room,
                events: out.events,
            }],
            index: vec![(id, Some(clinic))],
            audit: out.audit,
            claim: None,
        },
    )
}

/// An arrival as the service appends it: decided without the room.
fn appended(clinic: &ClinicId, t: u64) -> (VisitId, Arrival) {
    let id = VisitId::random();
    let (visit, out) = ClinicRoom::arrival(
        clinic,
        "Derm",
        NewVisit {
            id,
            name: format!("Patient {t}"),
            details: None,
            appointment: None,
        },
        &Ctx {
            actor: format!("patient:{id}"),
            now: Timestamp(t),
        },
    );
    (
        id,
        Arrival {
            clinic: clinic.clone(),
            visit,
            events: out.events,
            audit: out.audit,
            claim: None,
        },
    )
}

async fn arrivals_append_without_conflicting(store: Arc<dyn Store>) {
    let derm = clinic_id("derm");
    let (_, first) = appended(&derm, 1);
    // No room yet: nothing is written; the caller creates the room with a commit.
    assert_eq!(
        store.append_arrival(first.clone()).await.unwrap(),
        Appended::NoRoom
    );
    assert_eq!(store.locate(first.visit.id).await.unwrap(), None);
    assert!(store.audit_tail(10).await.unwrap().is_empty());
    let (v0, commit) = arrival(&ClinicRoom::new(derm.clone(), "Derm".into()), 0, 1);
    store.commit(commit).await.unwrap();
    let before = store.room(&derm).await.unwrap().unwrap();

    // A staff action decided on the room as it is now...
    let (_, stale) = arrival(&before.value, before.version, 2);
    let mut events = store.subscribe();
    // ...then 40 arrivals at once, all in the same millisecond: every one is appended.
    let mut tasks = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..40 {
        let (id, a) = appended(&derm, 5);
        ids.push(id);
        let store = store.clone();
        tasks.push(tokio::spawn(async move { store.append_arrival(a).await }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), Appended::Appended);
    }
    let read = store.room(&derm).await.unwrap().unwrap();
    assert_eq!(read.version, before.version + 40);
    let queue: Vec<VisitId> = read.value.queue().iter().map(|v| v.id).collect();
    assert_eq!(queue.len(), 41);
    assert_eq!(queue[0], v0);
    for id in &ids {
        assert_eq!(store.locate(*id).await.unwrap(), Some(derm.clone()));
    }
    // Same-millisecond arrivals are ordered, each once, and the order is stable.
    let seqs: Vec<u64> = queue
        .iter()
        .map(|id| read.value.visit(*id).unwrap().seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert_eq!(store.room(&derm).await.unwrap().unwrap(), read);
    // Each arrival's events carry the version it made, one version per arrival.
    let mut versions = Vec::new();
    while versions.len() < 40 {
        let feed = tokio::time::timeout(Duration::from_secs(2), events.recv())
            .await
            .expect("event in time")
            .unwrap();
        let Feed::Event(p) = feed else {
            panic!("unexpected resync");
        };
        if let Audience::ClinicStaff(_) = p.event.to {
            versions.push(p.version);
        }
    }
    versions.sort_unstable();
    assert_eq!(
        versions,
        (before.version + 1..=before.version + 40).collect::<Vec<_>>()
    );
    // The staff action decided before the arrivals conflicts (it never saw them)...
    assert!(matches!(
        store.commit(stale).await,
        Err(StoreError::Conflict)
    ));
    // ...and decided again on the fresh room it keeps them all, as does the next read.
    let (v2, commit) = arrival(&read.value, read.version, 6);
    store.commit(commit).await.unwrap();
    let after = store.room(&derm).await.unwrap().unwrap();
    assert_eq!(after.version, read.version + 1);
    let mut expected = queue.clone();
    expected.push(v2);
    assert_eq!(
        after.value.queue().iter().map(|v| v.id).collect::<Vec<_>>(),
        expected
    );
    // One more arrival after that commit lands after everyone.
    let (v3, a) = appended(&derm, 7);
    store.append_arrival(a).await.unwrap();
    let last = store.room(&derm).await.unwrap().unwrap();
    assert_eq!(last.value.queue().last().unwrap().id, v3);
    assert_eq!(last.value.queue().len(), 43);
    assert_eq!(
        store
            .audit_tail(100)
            .await
            .unwrap()
            .iter()
            .filter(|e| e.action == "arrive")
            .count(),
        43
    );
}

fn lease(clinic: &str, visit: VisitId, holder: &str) -> Lease {
    Lease {
        clinic: clinic_id(clinic),
        visit,
        holder: holder.into(),
    }
}

async fn presence_is_leases_that_expire(store: &dyn Store) {
    // Real time: Redis compares with what it is given, the local store with the clock.
    let now = signalling::service::now().0;
    let (a, b, c) = (VisitId::random(), VisitId::random(), VisitId::random());
    let derm = clinic_id("derm");
    assert!(
        store
            .online(&derm, Timestamp(now))
            .await
            .unwrap()
            .is_empty()
    );
    // a has two tabs (on two instances), b one, c one in another clinic.
    let a1 = lease("derm", a, "i1:1");
    let a2 = lease("derm", a, "i2:7");
    let b1 = lease("derm", b, "i1:2");
    let c1 = lease("cardio", c, "i1:3");
    store
        .hold_presence(
            &[a1.clone(), a2.clone(), b1.clone(), c1.clone()],
            Timestamp(now + 60_000),
        )
        .await
        .unwrap();
    assert_eq!(
        store.online(&derm, Timestamp(now)).await.unwrap(),
        [a, b].into_iter().collect()
    );
    assert_eq!(
        store
            .online(&clinic_id("cardio"), Timestamp(now))
            .await
            .unwrap(),
        [c].into_iter().collect()
    );
    // One tab of a closes: a stays online; b's closes: b goes.
    store
        .release_presence(&[a1.clone(), b1.clone()])
        .await
        .unwrap();
    assert_eq!(
        store.online(&derm, Timestamp(now)).await.unwrap(),
        [a].into_iter().collect()
    );
    // A lease not renewed is gone once its time passes (its instance died)...
    assert!(
        store
            .online(&derm, Timestamp(now + 60_001))
            .await
            .unwrap()
            .is_empty()
    );
    // ...and renewing moves its end.
    store
        .hold_presence(std::slice::from_ref(&a2), Timestamp(now + 120_000))
        .await
        .unwrap();
    assert_eq!(
        store.online(&derm, Timestamp(now + 60_001)).await.unwrap(),
        [a].into_iter().collect()
    );
    // Releasing what is not held, or nothing, is harmless.
    store.release_presence(&[a1, b1]).await.unwrap();
    store.release_presence(&[]).await.unwrap();
    store.hold_presence(&[], Timestamp(now)).await.unwrap();
    assert_eq!(
        store.online(&derm, Timestamp(now)).await.unwrap(),
        [a].into_iter().collect()
    );
}

async fn directory_round_trips(store: &dyn Store) {
    assert_eq!(store.clinic(&clinic_id("derm")).await.unwrap(), None);
    store.put_clinic(&clinic("derm")).await.unwrap();
    store.put_clinic(&clinic("alpha")).await.unwrap();
    let mut derm = clinic("derm");
    derm.open_link = false;
    store.put_clinic(&derm).await.unwrap();
    assert_eq!(
        store.clinic(&clinic_id("derm")).await.unwrap(),
        Some(derm.clone())
    );
    assert_eq!(store.clinics().await.unwrap(), vec![clinic("alpha"), derm]);

    let alice = StaffRecord {
        username: StaffId::parse("alice").unwrap(),
        display_name: "Alice".into(),
        role: Role::Reception,
        clinics: vec![clinic_id("derm")],
        password_hash: "$argon2id$...".into(),
        idp_subject: None,
    };
    store.put_staff(&alice).await.unwrap();
    let mut bob = alice.clone();
    bob.username = StaffId::parse("bob").unwrap();
    bob.role = Role::Clinician;
    store.put_staff(&bob).await.unwrap();
    bob.display_name = "Dr Bob".into();
    store.put_staff(&bob).await.unwrap();
    assert_eq!(store.staff(&bob.username).await.unwrap(), Some(bob.clone()));
    assert_eq!(
        store
            .staff(&StaffId::parse("carol").unwrap())
            .await
            .unwrap(),
        None
    );
    assert_eq!(store.staff_list().await.unwrap(), vec![alice, bob]);
}

async fn rooms_are_versioned_and_indexed(store: &dyn Store) {
    let derm = clinic_id("derm");
    assert!(store.room(&derm).await.unwrap().is_none());
    let (v1, commit) = arrival(&ClinicRoom::new(derm.clone(), "Derm".into()), 0, 1);
    let written = commit.rooms[0].room.clone();
    store.commit(commit).await.unwrap();
    let read = store.room(&derm).await.unwrap().unwrap();
    assert_eq!(read.version, 1);
    assert_eq!(*read.value, written);
    assert_eq!(store.locate(v1).await.unwrap(), Some(derm.clone()));
    assert_eq!(store.locate(VisitId::random()).await.unwrap(), None);

    let (v2, commit) = arrival(&read.value, 1, 2);
    store.commit(commit).await.unwrap();
    let read = store.room(&derm).await.unwrap().unwrap();
    assert_eq!(read.version, 2);
    assert_eq!(
        read.value.queue().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![v1, v2]
    );

    // An index change to None forgets the visit.
    store
        .commit(Commit {
            rooms: vec![],
            index: vec![(v1, None)],
            audit: vec![],
            claim: None,
        })
        .await
        .unwrap();
    assert_eq!(store.locate(v1).await.unwrap(), None);
}

async fn a_stale_commit_changes_nothing(store: &dyn Store) {
    let derm = clinic_id("derm");
    let mut events = store.subscribe();
    let empty = ClinicRoom::new(derm.clone(), "Derm".into());
    let (_, first) = arrival(&empty, 0, 1);
    store.commit(first).await.unwrap();
    let after_first = store.room(&derm).await.unwrap().unwrap();
    let audit_before = store.audit_tail(100).await.unwrap();
    // Decided on the empty room, which is no longer current.
    let (stale_visit, stale) = arrival(&empty, 0, 2);
    assert!(matches!(
        store.commit(stale).await,
        Err(StoreError::Conflict)
    ));
    assert_eq!(store.room(&derm).await.unwrap().unwrap(), after_first);
    assert_eq!(store.locate(stale_visit).await.unwrap(), None);
    assert_eq!(store.audit_tail(100).await.unwrap(), audit_before);
    // Only the first commit's events were published.
    let mut seen = Vec::new();
    while let Ok(Ok(Feed::Event(p))) =
        tokio::time::timeout(Duration::from_millis(200), events.recv()).await
    {
        seen.push(p);
    }
    assert!(!seen.is_empty());
    assert!(
        seen.iter().all(|p| p.version == 1 && p.clinic == derm),
        "{seen:?}"
    );
}

async fn a_multi_room_commit_is_all_or_nothing(store: &dyn Store) {
    let a = ClinicRoom::new(clinic_id("a"), "A".into());
    let b = ClinicRoom::new(clinic_id("b"), "B".into());
    let (_, ca) = arrival(&a, 0, 1);
    store.commit(ca).await.unwrap();
    let a_now = store.room(&clinic_id("a")).await.unwrap().unwrap();
    // b is fresh (expected 0, fine) but a is stale (expected 0, is 1): nothing is written.
    let (_, mut both) = arrival(&b, 0, 2);
    let (_, stale_a) = arrival(&a, 0, 3);
    both.rooms.extend(stale_a.rooms);
    assert!(matches!(
        store.commit(both).await,
        Err(StoreError::Conflict)
    ));
    assert!(store.room(&clinic_id("b")).await.unwrap().is_none());
    assert_eq!(store.room(&clinic_id("a")).await.unwrap().unwrap(), a_now);
}

async fn of_concurrent_commits_exactly_one_wins(store: Arc<dyn Store>) {
    let derm = clinic_id("race");
    let empty = ClinicRoom::new(derm.clone(), "Race".into());
    let mut tasks = Vec::new();
    for t in 0..16 {
        let store = store.clone();
        let (_, commit) = arrival(&empty, 0, t);
        tasks.push(tokio::spawn(async move { store.commit(commit).await }));
    }
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(()) => won += 1,
            Err(StoreError::Conflict) => {}
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(won, 1);
    let room = store.room(&derm).await.unwrap().unwrap();
    assert_eq!(room.version, 1);
    assert_eq!(room.value.queue().len(), 1);
}

async fn events_carry_room_and_version_in_commit_order(store: &dyn Store) {
    let derm = clinic_id("derm");
    let mut rx = store.subscribe();
    let mut room = ClinicRoom::new(derm.clone(), "Derm".into());
    for version in 0..5 {
        let (_, commit) = arrival(&room, version, version);
        room = commit.rooms[0].room.clone();
        store.commit(commit).await.unwrap();
    }
    let mut versions = Vec::new();
    for _ in 0..10 {
        let feed = tokio::time::timeout(Duration::from_secs(2), rx.recv())
            .await
            .expect("event in time")
            .unwrap();
        let Feed::Event(p) = feed else {
            panic!("unexpected resync");
        };
        assert_eq!(p.clinic, derm);
        if let Event {
            to: Audience::ClinicStaff(_),
            msg: ServerMsg::VisitUpdated { .. },
        } = p.event
        {
            versions.push(p.version);
        }
    }
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
}

async fn audit_keeps_order_and_tail(store: &dyn Store) {
    assert!(store.audit_tail(10).await.unwrap().is_empty());
    store
        .append_audit(&[entry("a", 1), entry("b", 2)])
        .await
        .unwrap();
    store.append_audit(&[entry("c", 3)]).await.unwrap();
    assert_eq!(
        store.audit_tail(10).await.unwrap(),
        vec![entry("a", 1), entry("b", 2), entry("c", 3)]
    );
    assert_eq!(
        store.audit_tail(2).await.unwrap(),
        vec![entry("b", 2), entry("c", 3)]
    );
    store.ping().await.unwrap();
}

async fn the_token_secret_is_set_once(store: &dyn Store) {
    let first = store.token_secret(&[1u8; 32]).await.unwrap();
    assert_eq!(first, vec![1u8; 32]);
    assert_eq!(store.token_secret(&[2u8; 32]).await.unwrap(), first);
}

fn invite(clinic: &str, issued_at: u64, expires_at: u64) -> InviteRecord {
    InviteRecord {
        id: protocol::InviteId::random(),
        clinic: clinic_id(clinic),
        appointment: Some("APT-1".into()),
        issued_by: "staff:dr.jones".into(),
        issued_at: Timestamp(issued_at),
        expires_at: Timestamp(expires_at),
    }
}

async fn invites_admit_one_visit_and_can_be_revoked(store: &dyn Store) {
    // Real time: Redis expires invite keys by the clock.
    let now = signalling::service::now().0;
    let inv = invite("derm", now, now + 3_600_000);
    store.put_invite(&inv).await.unwrap();
    let expired = invite("derm", now - 10_000, now - 1);
    store.put_invite(&expired).await.unwrap();
    let state = store.invite(inv.id).await.unwrap().unwrap();
    assert_eq!(
        (state.record.clone(), state.visit, state.revoked),
        (inv.clone(), None, false)
    );
    let listed = store
        .invites(&clinic_id("derm"), Timestamp(now))
        .await
        .unwrap();
    assert_eq!(
        listed.iter().map(|s| s.record.id).collect::<Vec<_>>(),
        vec![inv.id]
    );
    assert!(
        store
            .invites(&clinic_id("cardio"), Timestamp(now))
            .await
            .unwrap()
            .is_empty()
    );

    // Two commits claim it: the first binds it, the second writes nothing.
    let room = ClinicRoom::new(clinic_id("derm"), "Derm".into());
    let (v1, mut first) = arrival(&room, 0, 1);
    first.claim = Some(InviteClaim {
        invite: inv.id,
        expected: None,
        visit: v1,
    });
    store.commit(first).await.unwrap();
    let current = store.room(&clinic_id("derm")).await.unwrap().unwrap();
    let (v2, mut second) = arrival(&current.value, current.version, 2);
    second.claim = Some(InviteClaim {
        invite: inv.id,
        expected: None,
        visit: v2,
    });
    assert!(matches!(
        store.commit(second.clone()).await,
        Err(StoreError::InviteTaken)
    ));
    assert_eq!(
        store
            .room(&clinic_id("derm"))
            .await
            .unwrap()
            .unwrap()
            .version,
        current.version
    );
    assert_eq!(store.locate(v2).await.unwrap(), None);
    assert_eq!(store.invite(inv.id).await.unwrap().unwrap().visit, Some(v1));
    // Re-bound from the visit it holds (the same patient back after their visit ended).
    second.claim = Some(InviteClaim {
        invite: inv.id,
        expected: Some(v1),
        visit: v2,
    });
    store.commit(second).await.unwrap();
    assert_eq!(store.invite(inv.id).await.unwrap().unwrap().visit, Some(v2));

    // Revoked: no claim succeeds any more.
    assert!(store.revoke_invite(inv.id).await.unwrap());
    assert!(
        !store
            .revoke_invite(protocol::InviteId::random())
            .await
            .unwrap()
    );
    assert!(store.invite(inv.id).await.unwrap().unwrap().revoked);
    let current = store.room(&clinic_id("derm")).await.unwrap().unwrap();
    let (v3, mut third) = arrival(&current.value, current.version, 3);
    third.claim = Some(InviteClaim {
        invite: inv.id,
        expected: Some(v2),
        visit: v3,
    });
    assert!(matches!(
        store.commit(third).await,
        Err(StoreError::InviteTaken)
    ));
    // An invite nobody issued cannot be claimed either.
    let (v4, mut fourth) = arrival(&current.value, current.version, 4);
    fourth.claim = Some(InviteClaim {
        invite: protocol::InviteId::random(),
        expected: None,
        visit: v4,
    });
    assert!(matches!(
        store.commit(fourth).await,
        Err(StoreError::InviteTaken)
    ));
}

fn session(staff: &str, started: u64, ends: u64) -> SessionRecord {
    SessionRecord {
        id: protocol::SessionId::random(),
        staff: StaffId::parse(staff).unwrap(),
        started_at: Timestamp(started),
        ends_at: Timestamp(ends),
        idp: None,
    }
}

async fn sessions_end_one_by_one_or_all_of_a_person(store: &dyn Store) {
    let now = signalling::service::now().0;
    let a1 = session("alice", now, now + 3_600_000);
    let a2 = session("alice", now, now + 3_600_000);
    let b = session("bob", now, now + 3_600_000);
    for s in [&a1, &a2, &b] {
        store.put_session(s).await.unwrap();
    }
    assert_eq!(store.session(a1.id).await.unwrap(), Some(a1.clone()));
    assert_eq!(store.sessions(Timestamp(now)).await.unwrap().len(), 3);
    // Writing a session again replaces it (an identity provider's refresh token rotated).
    let mut a1_idp = a1.clone();
    a1_idp.idp = Some(signalling::store::IdpGrant {
        subject: "sub-1".into(),
        refresh_token: Some(signalling::auth::oidc::Secret::new("rt-2".into())),
        checked_at: Timestamp(now),
    });
    store.put_session(&a1_idp).await.unwrap();
    assert_eq!(store.session(a1.id).await.unwrap(), Some(a1_idp));
    assert_eq!(store.sessions(Timestamp(now)).await.unwrap().len(), 3);
    assert!(store.end_session(b.id).await.unwrap());
    assert!(!store.end_session(b.id).await.unwrap());
    assert_eq!(store.session(b.id).await.unwrap(), None);
    assert_eq!(
        store
            .end_sessions_of(&StaffId::parse("alice").unwrap())
            .await
            .unwrap(),
        2
    );
    assert_eq!(store.session(a1.id).await.unwrap(), None);
    assert_eq!(store.session(a2.id).await.unwrap(), None);
    assert!(store.sessions(Timestamp(now)).await.unwrap().is_empty());
}

fn quality(clinic: &str, call: u128, session: u128, role: CallRole, at: u64) -> QualityReport {
    QualityReport {
        clinic: clinic_id(clinic),
        consultation: ConsultationId(uuid::Uuid::from_u128(call)),
        session: ParticipantId(uuid::Uuid::from_u128(session)),
        role,
        started_at: Timestamp(at),
        updated_at: Timestamp(at),
        figures: CallFigures {
            seconds: 10,
            path: None,
            rtt_ms: 40,
            loss_permille: 3,
            recv_kbps: 700,
            send_kbps: 600,
            freezes: 0,
            freeze_ms: 0,
            concealed_permille: 1,
            audio_only_ms: 0,
        },
    }
}

async fn call_quality_is_kept_per_session_and_read_per_clinic(store: &dyn Store) {
    let now = signalling::service::now().0;
    let derm = clinic_id("derm");
    // Two calls in derm (the second with two sessions of the patient: a rejoin), one in
    // another clinic.
    let first = quality("derm", 1, 11, CallRole::Patient, now - 60_000);
    let mut later = quality("derm", 2, 21, CallRole::Clinician, now - 30_000);
    let patient = quality("derm", 2, 22, CallRole::Patient, now - 29_000);
    let rejoined = quality("derm", 2, 23, CallRole::Patient, now - 10_000);
    let elsewhere = quality("other", 3, 31, CallRole::Patient, now - 5_000);
    for r in [&first, &later, &patient, &rejoined, &elsewhere] {
        store.put_call_quality(r).await.unwrap();
    }
    // A later report of a session replaces its last.
    later.updated_at = Timestamp(now - 1_000);
    later.figures.seconds = 29;
    later.figures.freezes = 2;
    store.put_call_quality(&later).await.unwrap();

    let calls = store
        .call_quality(&derm, Timestamp(now - 3_600_000), 10)
        .await
        .unwrap();
    assert_eq!(calls.len(), 2, "{calls:?}");
    // Newest first, each with its sessions in the order they started.
    assert_eq!(calls[0].consultation, later.consultation);
    assert_eq!(calls[0].updated_at, Timestamp(now - 1_000));
    assert_eq!(calls[0].started_at, Timestamp(now - 30_000));
    let roles: Vec<CallRole> = calls[0].sessions.iter().map(|s| s.role).collect();
    assert_eq!(
        roles,
        [CallRole::Clinician, CallRole::Patient, CallRole::Patient]
    );
    assert_eq!(calls[0].sessions[0].figures.freezes, 2);
    assert_eq!(calls[0].sessions[0].figures.seconds, 29);
    assert_eq!(calls[1].consultation, first.consultation);
    // The limit, and calls last reported before `since`, leave the older out.
    let newest = store
        .call_quality(&derm, Timestamp(now - 3_600_000), 1)
        .await
        .unwrap();
    assert_eq!(newest.len(), 1);
    assert_eq!(newest[0].sessions.len(), 3);
    let recent = store
        .call_quality(&derm, Timestamp(now - 20_000), 10)
        .await
        .unwrap();
    assert_eq!(recent.len(), 1);
    // A call reported long ago is forgotten at the next report.
    let old = quality("derm", 4, 41, CallRole::Patient, now - 31 * 24 * 3_600_000);
    store.put_call_quality(&old).await.unwrap();
    store
        .put_call_quality(&quality("derm", 5, 51, CallRole::Patient, now))
        .await
        .unwrap();
    let all = store.call_quality(&derm, Timestamp(0), 10).await.unwrap();
    assert_eq!(all.len(), 3, "{all:?}");
    assert!(all.iter().all(|c| c.consultation != old.consultation));
}

macro_rules! conformance {
    ($modname:ident, $make:expr) => {
        mod $modname {
            use super::*;

            #[tokio::test]
            async fn directory_round_trips() {
                let (store, _guard) = $make;
                super::directory_round_trips(&*store).await;
            }
            #[tokio::test]
            async fn rooms_are_versioned_and_indexed() {
                let (store, _guard) = $make;
                super::rooms_are_versioned_and_indexed(&*store).await;
            }
            #[tokio::test]
            async fn a_stale_commit_changes_nothing() {
                let (store, _guard) = $make;
                super::a_stale_commit_changes_nothing(&*store).await;
            }
            #[tokio::test]
            async fn a_multi_room_commit_is_all_or_nothing() {
                let (store, _guard) = $make;
                super::a_multi_room_commit_is_all_or_nothing(&*store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn of_concurrent_commits_exactly_one_wins() {
                let (store, _guard) = $make;
                super::of_concurrent_commits_exactly_one_wins(store).await;
            }
            #[tokio::test]
            async fn events_carry_room_and_version_in_commit_order() {
                let (store, _guard) = $make;
                super::events_carry_room_and_version_in_commit_order(&*store).await;
            }
            #[tokio::test]
            async fn the_token_secret_is_set_once() {
                let (store, _guard) = $make;
                super::the_token_secret_is_set_once(&*store).await;
            }
            #[tokio::test]
            async fn invites_admit_one_visit_and_can_be_revoked() {
                let (store, _guard) = $make;
                super::invites_admit_one_visit_and_can_be_revoked(&*store).await;
            }
            #[tokio::test]
            async fn sessions_end_one_by_one_or_all_of_a_person() {
                let (store, _guard) = $make;
                super::sessions_end_one_by_one_or_all_of_a_person(&*store).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn arrivals_append_without_conflicting() {
                let (store, _guard) = $make;
                super::arrivals_append_without_conflicting(store).await;
            }
            #[tokio::test]
            async fn presence_is_leases_that_expire() {
                let (store, _guard) = $make;
                super::presence_is_leases_that_expire(&*store).await;
            }
            #[tokio::test]
            async fn call_quality_is_kept_per_session_and_read_per_clinic() {
                let (store, _guard) = $make;
                super::call_quality_is_kept_per_session_and_read_per_clinic(&*store).await;
            }
            #[tokio::test]
            async fn audit_keeps_order_and_tail() {
                let (store, _guard) = $make;
                super::audit_keeps_order_and_tail(&*store).await;
            }
        }
    };
}

conformance!(local, {
    let store: Arc<dyn Store> = Arc::new(LocalStore::open(None).unwrap());
    (store, ())
});

conformance!(redis, {
    let server = RedisServer::start();
    let store: Arc<dyn Store> = Arc::new(RedisStore::connect(&server.url()).await.unwrap());
    (store, server)
});

#[tokio::test]
async fn redis_feed_asks_for_a_resync_after_a_lost_connection() {
    let mut server = RedisServer::start();
    let store = RedisStore::connect(&server.url()).await.unwrap();
    let mut feed = store.subscribe();
    server.restart();
    let got = tokio::time::timeout(Duration::from_secs(20), feed.recv())
        .await
        .expect("a resync in time")
        .unwrap();
    assert_eq!(got, Feed::Resync);
    // And events flow again afterwards.
    // The first command on the command connection may meet the broken pipe and answer
    // "unavailable"; the connection manager reconnects for the next.
    let (_, commit) = arrival(&ClinicRoom::new(clinic_id("derm"), "Derm".into()), 0, 1);
    let mut attempts = 0;
    while let Err(e) = store.commit(commit.clone()).await {
        attempts += 1;
        assert!(
            matches!(e, StoreError::Unavailable(_)) && attempts < 5,
            "{e}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = tokio::time::timeout(Duration::from_secs(5), feed.recv())
        .await
        .expect("an event in time")
        .unwrap();
    assert!(matches!(got, Feed::Event(_)), "{got:?}");
}

/// Each Redis store keeps a copy of the rooms it read and then reads only new arrivals:
/// what another instance commits or appends in between must show all the same.
#[tokio::test]
async fn redis_room_copies_stay_current_across_instances() {
    let server = RedisServer::start();
    let a = RedisStore::connect(&server.url()).await.unwrap();
    let b = RedisStore::connect(&server.url()).await.unwrap();
    let derm = clinic_id("derm");
    let (_, create) = arrival(&ClinicRoom::new(derm.clone(), "Derm".into()), 0, 1);
    a.commit(create).await.unwrap();
    for t in 2..5 {
        let (_, x) = appended(&derm, t);
        b.append_arrival(x).await.unwrap();
        // A reads after each: its copy grows by the arrival.
        assert_eq!(a.room(&derm).await.unwrap(), b.room(&derm).await.unwrap());
    }
    // B commits (absorbing the arrivals), then one more arrives: A's copy is stale.
    let current = b.room(&derm).await.unwrap().unwrap();
    let (_, commit) = arrival(&current.value, current.version, 6);
    b.commit(commit).await.unwrap();
    let (_, x) = appended(&derm, 7);
    b.append_arrival(x).await.unwrap();
    let seen_by_a = a.room(&derm).await.unwrap().unwrap();
    assert_eq!(Some(&seen_by_a), b.room(&derm).await.unwrap().as_ref());
    assert_eq!(seen_by_a.version, current.version + 2);
    assert_eq!(seen_by_a.value.queue().len(), 6);
    // Redis lost everything and the room was made again: A's copy is not used for it.
    let mut server = server;
    server.restart();
    let other = ClinicRoom::new(derm.clone(), "Dermatology, renamed".into());
    let (_, again) = arrival(&other, 0, 8);
    let mut attempts = 0;
    while let Err(e) = b.commit(again.clone()).await {
        attempts += 1;
        assert!(attempts < 10, "{e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut read = a.room(&derm).await;
    while read.is_err() && attempts < 20 {
        attempts += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
        read = a.room(&derm).await;
    }
    let read = read.unwrap().unwrap();
    assert_eq!(read.value.name, "Dermatology, renamed");
    assert_eq!(read.value.queue().len(), 1);
}
