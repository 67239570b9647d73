use protocol::{
    ConsultationId, PatientState, ServerMsg, StaffId, Timestamp, VisitEndReason, VisitId,
};

use super::*;

fn clinic(s: &str) -> ClinicId {
    ClinicId::parse(s).unwrap()
}
fn staff(s: &str) -> StaffId {
    StaffId::parse(s).unwrap()
}
fn at(ms: u64) -> Ctx {
    Ctx {
        actor: "staff:alice".into(),
        now: Timestamp(ms),
    }
}
fn room() -> ClinicRoom {
    ClinicRoom::new(clinic("derm"), "Dermatology".into())
}
fn arrive(r: &mut ClinicRoom, name: &str, ms: u64) -> VisitId {
    let id = VisitId::random();
    r.arrive(
        NewVisit {
            id,
            name: name.into(),
            details: None,
            appointment: None,
        },
        &at(ms),
    );
    id
}

/// Every event addressed to a patient, with the visit it is for.
fn patient_events(out: &Outcome) -> Vec<(VisitId, &ServerMsg)> {
    out.events
        .iter()
        .filter_map(|e| match e.to {
            Audience::Visit(v) => Some((v, &e.msg)),
            Audience::ClinicStaff(_) => None,
        })
        .collect()
}

#[test]
fn arrival_notifies_staff_and_the_patient_only() {
    let mut r = room();
    let id = VisitId::random();
    let out = r.arrive(
        NewVisit {
            id,
            name: "Pat".into(),
            details: Some("rash".into()),
            appointment: None,
        },
        &at(1000),
    );
    assert!(
        matches!(&out.events[0], Event { to: Audience::ClinicStaff(c), msg: ServerMsg::VisitUpdated { visit, .. } } if *c == clinic("derm") && visit.name == "Pat")
    );
    assert_eq!(
        patient_events(&out),
        vec![(
            id,
            &ServerMsg::PatientStatus {
                status: PatientState::Waiting {
                    clinic_name: "Dermatology".into(),
                    waiting_since: Timestamp(1000)
                }
            }
        )]
    );
    assert_eq!(out.audit.len(), 1);
    assert_eq!(out.audit[0].action, "arrive");
}

#[test]
fn queue_is_in_arrival_order_and_admit_next_takes_the_first() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let b = arrive(&mut r, "B", 20);
    let c = arrive(&mut r, "C", 30);
    assert_eq!(
        r.queue().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![a, b, c]
    );
    assert_eq!(r.next_for(&staff("dr.jones")), Ok(a));
    r.admit(
        a,
        staff("dr.jones"),
        None,
        ConsultationId::random(),
        &at(40),
    )
    .unwrap();
    assert_eq!(r.next_for(&staff("dr.jones")), Ok(b));
}

#[test]
fn admitting_twice_is_refused_and_changes_nothing() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let cid = ConsultationId::random();
    let out = r.admit(a, staff("dr.jones"), None, cid, &at(20)).unwrap();
    assert!(patient_events(&out).contains(&(
        a,
        &ServerMsg::PatientStatus {
            status: PatientState::Admitted {
                consultation: cid,
                audio_only: false
            }
        }
    )));
    let before = r.clone();
    assert_eq!(
        r.admit(
            a,
            staff("dr.smith"),
            None,
            ConsultationId::random(),
            &at(30)
        ),
        Err(RoomError::AlreadyAdmitted)
    );
    assert_eq!(r, before);
}

#[test]
fn return_to_waiting_keeps_the_place_and_ends_an_empty_consultation() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let b = arrive(&mut r, "B", 20);
    let cid = ConsultationId::random();
    r.admit(a, staff("dr.jones"), None, cid, &at(30)).unwrap();
    assert_eq!(r.queue()[0].id, b);
    let out = r.return_to_waiting(a, &at(40)).unwrap();
    assert_eq!(
        r.queue().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![a, b]
    );
    assert!(r.consultation(cid).is_none());
    assert!(out.events.iter().any(|e| matches!(e.msg, ServerMsg::ConsultationEnded { consultation, .. } if consultation == cid)));
    assert_eq!(
        r.return_to_waiting(a, &at(50)),
        Err(RoomError::NotInConsultation)
    );
}

#[test]
fn a_second_person_joins_the_clinicians_own_consultation_only() {
    let mut r = room();
    let patient = arrive(&mut r, "Patient", 10);
    let interpreter = arrive(&mut r, "Interpreter", 20);
    let cid = ConsultationId::random();
    r.admit(patient, staff("dr.jones"), None, cid, &at(30))
        .unwrap();
    assert_eq!(
        r.admit(
            interpreter,
            staff("dr.smith"),
            Some(cid),
            ConsultationId::random(),
            &at(40)
        ),
        Err(RoomError::OtherClinician)
    );
    r.admit(
        interpreter,
        staff("dr.jones"),
        Some(cid),
        ConsultationId::random(),
        &at(40),
    )
    .unwrap();
    assert_eq!(
        r.consultation(cid).unwrap().visits,
        vec![patient, interpreter]
    );
    // The patient leaving does not end the call for the interpreter.
    r.end_visit(patient, VisitEndReason::Left, &at(50)).unwrap();
    assert_eq!(r.consultation(cid).unwrap().visits, vec![interpreter]);
}

#[test]
fn ending_a_consultation_ends_every_visit_in_it() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let b = arrive(&mut r, "B", 20);
    let waiting = arrive(&mut r, "W", 25);
    let cid = ConsultationId::random();
    r.admit(a, staff("dr.jones"), None, cid, &at(30)).unwrap();
    r.admit(
        b,
        staff("dr.jones"),
        Some(cid),
        ConsultationId::random(),
        &at(31),
    )
    .unwrap();
    let out = r.end_consultation(cid, &at(40)).unwrap();
    let ended = PatientState::Ended {
        reason: VisitEndReason::ConsultationEnded,
    };
    let to_patients = patient_events(&out);
    assert_eq!(to_patients.len(), 2);
    for (v, msg) in to_patients {
        assert!(v == a || v == b);
        assert_eq!(
            msg,
            &ServerMsg::PatientStatus {
                status: ended.clone()
            }
        );
    }
    assert!(r.visit(a).is_none() && r.visit(b).is_none());
    assert_eq!(r.queue().len(), 1);
    assert_eq!(r.queue()[0].id, waiting);
    assert_eq!(
        r.end_consultation(cid, &at(50)),
        Err(RoomError::ConsultationNotFound)
    );
}

#[test]
fn messages_reach_only_their_patient_and_are_kept_for_a_reload() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let b = arrive(&mut r, "B", 20);
    for i in 0..(KEPT_MESSAGES + 5) {
        let out = r.message(a, format!("m{i}"), &at(100 + i as u64)).unwrap();
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.events[0].to, Audience::Visit(a));
        assert!(
            out.audit[0].detail.is_none(),
            "message text must not enter the audit log"
        );
    }
    let view = r.patient_view(a).unwrap();
    assert_eq!(view.len(), 1 + KEPT_MESSAGES);
    assert_eq!(
        view[1],
        ServerMsg::StaffMessage {
            text: "m5".into(),
            sent_at: Timestamp(105)
        }
    );
    assert_eq!(r.patient_view(b).unwrap().len(), 1);
}

#[test]
fn transfer_to_a_colleague_marks_the_visit_for_them() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let b = arrive(&mut r, "B", 20);
    r.admit(
        a,
        staff("dr.jones"),
        None,
        ConsultationId::random(),
        &at(30),
    )
    .unwrap();
    r.assign(a, staff("dr.smith"), &at(40)).unwrap();
    assert_eq!(r.visit(a).unwrap().state, VisitState::Waiting);
    // dr.jones skips a patient meant for dr.smith; dr.smith gets them first.
    assert_eq!(r.next_for(&staff("dr.jones")), Ok(b));
    assert_eq!(r.next_for(&staff("dr.smith")), Ok(a));
}

#[test]
fn transfer_to_another_clinic_keeps_the_arrival_time() {
    let mut derm = room();
    let mut plastics = ClinicRoom::new(clinic("plastics"), "Plastics".into());
    let early = arrive(&mut derm, "Early", 10);
    let later = arrive(&mut plastics, "Later", 20);
    assert_eq!(
        derm.take_out(early, &clinic("derm"), &at(30)).unwrap_err(),
        RoomError::SameClinic
    );
    let (v, out) = derm.take_out(early, &clinic("plastics"), &at(30)).unwrap();
    assert!(out.events.iter().any(|e| matches!(
        &e.msg,
        ServerMsg::VisitClosed {
            reason: VisitEndReason::Transferred,
            ..
        }
    )));
    let out = plastics.take_in(v);
    assert!(patient_events(&out).contains(&(
        early,
        &ServerMsg::PatientStatus {
            status: PatientState::Waiting {
                clinic_name: "Plastics".into(),
                waiting_since: Timestamp(10)
            }
        }
    )));
    assert_eq!(
        plastics.queue().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![early, later]
    );
    assert!(derm.visit(early).is_none());
}

#[test]
fn an_arrival_decided_without_the_room_is_the_same_as_one_in_it() {
    // The store appends arrivals (`ClinicRoom::arrival` + `append`) instead of rewriting
    // the room: the outcome and the queue must be those of `arrive`.
    let mut direct = room();
    let mut appended = room();
    let first = arrive(&mut direct, "A", 10);
    appended.append(direct.visit(first).unwrap().clone());
    let id = VisitId::random();
    let new = NewVisit {
        id,
        name: "B".into(),
        details: None,
        appointment: None,
    };
    let out_direct = direct.arrive(new.clone(), &at(10));
    let (visit, out) = ClinicRoom::arrival(&appended.clinic, &appended.name, new, &at(10));
    appended.append(visit.clone());
    assert_eq!(out, out_direct);
    assert_eq!(appended, direct);
    // Appending the same visit again changes nothing.
    appended.append(visit);
    assert_eq!(appended, direct);
    assert_eq!(
        direct.queue().iter().map(|v| v.id).collect::<Vec<_>>(),
        vec![first, id]
    );
}

#[test]
fn the_snapshot_shows_online_whom_presence_says() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let b = arrive(&mut r, "B", 11);
    let ServerMsg::ClinicSnapshot { visits, .. } = r.snapshot(&[b].into_iter().collect()) else {
        panic!("a snapshot");
    };
    let online: Vec<(VisitId, bool)> = visits.iter().map(|v| (v.id, v.online)).collect();
    assert_eq!(online, vec![(a, false), (b, true)]);
}

#[test]
fn patient_events_never_mention_another_visit() {
    // Drive every operation over several patients; every event addressed to a patient
    // must be about that patient only: never another visit's id or name.
    let mut r = room();
    let names = [
        "Alice Patient",
        "Bob Patient",
        "Carol Patient",
        "Dan Patient",
    ];
    let ids: Vec<VisitId> = names
        .iter()
        .enumerate()
        .map(|(i, n)| arrive(&mut r, n, i as u64))
        .collect();
    let mut outs = Vec::new();
    let cid = ConsultationId::random();
    outs.push(r.message(ids[0], "hello".into(), &at(10)).unwrap());
    outs.push(
        r.admit(ids[0], staff("dr.jones"), None, cid, &at(11))
            .unwrap(),
    );
    outs.push(
        r.admit(
            ids[1],
            staff("dr.jones"),
            Some(cid),
            ConsultationId::random(),
            &at(12),
        )
        .unwrap(),
    );
    outs.push(r.return_to_waiting(ids[1], &at(13)).unwrap());
    outs.push(r.assign(ids[1], staff("dr.smith"), &at(14)).unwrap());
    outs.push(
        r.end_visit(ids[2], VisitEndReason::Removed, &at(15))
            .unwrap(),
    );
    outs.push(r.end_consultation(cid, &at(16)).unwrap());
    for out in &outs {
        for (to, msg) in patient_events(out) {
            let json = serde_json::to_string(msg).unwrap();
            for (other, name) in ids.iter().zip(names) {
                if *other != to {
                    assert!(!json.contains(&other.to_string()), "{json} leaks {other}");
                }
                assert!(!json.contains(name), "{json} carries a patient name");
            }
        }
    }
}

#[test]
fn arrivals_in_the_same_millisecond_keep_their_order() {
    let mut r = room();
    let ids: Vec<VisitId> = (0..20)
        .map(|i| arrive(&mut r, &format!("P{i}"), 5))
        .collect();
    assert_eq!(r.queue().iter().map(|v| v.id).collect::<Vec<_>>(), ids);
}

#[test]
fn media_placement_keeps_a_live_node_and_moves_off_a_dead_one() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let cid = ConsultationId::random();
    r.admit(a, staff("dr.jones"), None, cid, &at(20)).unwrap();
    let n1 = NodeId::parse("sfu-1").unwrap();
    let n2 = NodeId::parse("sfu-2").unwrap();
    let live = [n1.clone(), n2.clone()];
    let (node, out) = r.place_media(cid, &n1, &live, &at(30)).unwrap();
    assert_eq!(node, n1);
    assert_eq!(out.audit.len(), 1);
    assert!(out.events.is_empty(), "placement is not news for anyone");
    // A second joiner that would have chosen another node gets the recorded one.
    let (node, out) = r.place_media(cid, &n2, &live, &at(40)).unwrap();
    assert_eq!(node, n1);
    assert_eq!(out, Outcome::default());
    // The recorded node died: the consultation moves.
    let (node, _) = r
        .place_media(cid, &n2, std::slice::from_ref(&n2), &at(50))
        .unwrap();
    assert_eq!(node, n2);
    assert_eq!(r.consultation(cid).unwrap().media_node, Some(n2.clone()));
    assert_eq!(
        r.place_media(ConsultationId::random(), &n2, &live, &at(60)),
        Err(RoomError::ConsultationNotFound)
    );
}

/// The staff events of an outcome.
fn staff_events(out: &Outcome) -> Vec<&ServerMsg> {
    out.events
        .iter()
        .filter(|e| matches!(e.to, Audience::ClinicStaff(_)))
        .map(|e| &e.msg)
        .collect()
}

#[test]
fn staff_see_how_each_persons_media_flows_while_they_are_in_the_call() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let waiting = arrive(&mut r, "W", 11);
    let cid = ConsultationId::random();
    r.admit(a, staff("dr.jones"), None, cid, &at(20)).unwrap();

    let out = r.visit_media_path(a, cid, MediaPath::TurnTls).unwrap();
    let [ServerMsg::VisitUpdated { visit, .. }] = staff_events(&out)[..] else {
        panic!("staff are told: {out:?}");
    };
    assert_eq!(visit.media_path, Some(MediaPath::TurnTls));
    assert!(patient_events(&out).is_empty(), "nothing for the patient");
    // Said again unchanged: nobody is told anything.
    let out = r.visit_media_path(a, cid, MediaPath::TurnTls).unwrap();
    assert!(out.events.is_empty());

    // Only a visit in that consultation has a path in it; a refusal changes nothing.
    let before = r.clone();
    assert_eq!(
        r.visit_media_path(waiting, cid, MediaPath::Udp),
        Err(RoomError::NotInConsultation)
    );
    assert_eq!(
        r.visit_media_path(a, ConsultationId::random(), MediaPath::Udp),
        Err(RoomError::NotInConsultation)
    );
    assert_eq!(r, before);

    // The clinician's own, on the consultation; nobody else's word counts for it.
    let out = r
        .clinician_media_path(cid, &staff("dr.jones"), MediaPath::Udp)
        .unwrap();
    let [ServerMsg::ConsultationUpdated { consultation, .. }] = staff_events(&out)[..] else {
        panic!("staff are told: {out:?}");
    };
    assert_eq!(consultation.clinician_path, Some(MediaPath::Udp));
    assert_eq!(
        r.clinician_media_path(cid, &staff("dr.smith"), MediaPath::TurnTcp),
        Err(RoomError::OtherClinician)
    );
    assert_eq!(
        r.consultation(cid).unwrap().clinician_path,
        Some(MediaPath::Udp)
    );

    // Back to waiting: the path is gone with the call.
    r.return_to_waiting(a, &at(30)).unwrap();
    assert_eq!(r.visit(a).unwrap().media_path, None);
}

#[test]
fn a_media_path_outlives_a_lost_connection_but_not_the_call() {
    let mut r = room();
    let a = arrive(&mut r, "A", 10);
    let cid = ConsultationId::random();
    r.admit(a, staff("dr.jones"), None, cid, &at(20)).unwrap();
    r.visit_media_path(a, cid, MediaPath::TurnUdp).unwrap();
    // The page's connection is lost (its media session waits to be resumed): presence is
    // not room state, so the path stays for when it comes back.
    let ServerMsg::ClinicSnapshot { visits, .. } = r.snapshot(&Default::default()) else {
        panic!("a snapshot");
    };
    assert!(!visits[0].online);
    assert_eq!(visits[0].media_path, Some(MediaPath::TurnUdp));
    // Transferred to a colleague: the call, and its path, are over.
    r.assign(a, staff("dr.smith"), &at(30)).unwrap();
    assert_eq!(r.visit(a).unwrap().media_path, None);
}
