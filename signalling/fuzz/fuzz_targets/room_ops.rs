//! Random sequences of operations against two clinics' waiting rooms (the sans-IO state
//! machine), checking after every step the invariants the rest of the system relies on:
//! a visit in a call is in exactly that call; a call holds only its own visits and ends
//! when empty; an event for one patient is about that patient alone; the stored form
//! round-trips. A refused operation changes nothing.
#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use protocol::{
    ClinicId, ConsultationId, NodeId, PatientState, ServerMsg, StaffId, Timestamp,
    VisitEndReason, VisitId,
};
use signalling::room::{Audience, ClinicRoom, Ctx, NewVisit, Outcome, VisitState};

#[derive(Debug, Arbitrary)]
enum Op {
    Arrive { name_len: u8 },
    Presence { visit: u8, connected: bool },
    Message { visit: u8 },
    Admit { visit: u8, clinician: u8, into: Option<u8> },
    AdmitNext { clinician: u8 },
    ReturnToWaiting { visit: u8 },
    Assign { visit: u8, clinician: u8 },
    Transfer { visit: u8 },
    EndVisit { visit: u8, removed: bool },
    EndConsultation { consultation: u8 },
    PlaceMedia { consultation: u8, node: u8 },
    Tick { ms: u16 },
}

#[derive(Debug, Arbitrary)]
struct Step {
    room: bool,
    op: Op,
}

struct World {
    rooms: [ClinicRoom; 2],
    /// Every visit id ever seen (some ended), so operations also meet unknown ids.
    visits: Vec<VisitId>,
    consultations: Vec<ConsultationId>,
    now: u64,
}

fn clinician(n: u8) -> StaffId {
    StaffId::parse(format!("dr.{}", n % 3)).expect("a valid id")
}

fn pick<T: Copy>(items: &[T], n: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(n) % items.len()])
}

fn check(room: &ClinicRoom, out: &Outcome) {
    for c in room.consultations() {
        assert!(!c.visits.is_empty(), "an empty call lives on");
        for v in &c.visits {
            let visit = room.visit(*v).expect("a call holds a visit that is not here");
            assert_eq!(visit.state, VisitState::InConsultation(c.id));
        }
    }
    for id in room.visit_ids() {
        let v = room.visit(id).expect("listed");
        if let VisitState::InConsultation(cid) = v.state {
            let c = room.consultation(cid).expect("a visit in a call that does not exist");
            assert!(c.visits.contains(&id));
            assert_eq!(
                room.consultations().filter(|c| c.visits.contains(&id)).count(),
                1
            );
        }
    }
    let queue = room.queue();
    assert!(queue.windows(2).all(|w| (w[0].arrived_at, w[0].seq) <= (w[1].arrived_at, w[1].seq)));
    for e in &out.events {
        match (&e.to, &e.msg) {
            (Audience::Visit(_), ServerMsg::PatientStatus { .. } | ServerMsg::StaffMessage { .. }) => {}
            (Audience::Visit(v), other) => panic!("a patient ({v}) was sent {other:?}"),
            (Audience::ClinicStaff(c), _) => assert_eq!(c, &room.clinic),
        }
        if let (Audience::Visit(v), ServerMsg::PatientStatus { status }) = (&e.to, &e.msg) {
            // A patient's status names only their own call.
            if let PatientState::Admitted { consultation } = status {
                if let Some(visit) = room.visit(*v) {
                    assert_eq!(visit.state, VisitState::InConsultation(*consultation));
                }
            }
        }
    }
    let json = serde_json::to_string(room).expect("a room serialises");
    let back: ClinicRoom = serde_json::from_str(&json).expect("and parses back");
    assert_eq!(&back, room);
}

fuzz_target!(|steps: Vec<Step>| {
    let mut w = World {
        rooms: [
            ClinicRoom::new(ClinicId::parse("derm").expect("valid"), "Derm".into()),
            ClinicRoom::new(ClinicId::parse("cardio").expect("valid"), "Cardio".into()),
        ],
        visits: Vec::new(),
        consultations: Vec::new(),
        now: 1_700_000_000_000,
    };
    for step in steps.into_iter().take(200) {
        let ctx = Ctx {
            actor: "fuzz".into(),
            now: Timestamp(w.now),
        };
        let (i, j) = if step.room { (1, 0) } else { (0, 1) };
        let before = w.rooms[i].clone();
        let result: Result<Outcome, signalling::room::RoomError> = match step.op {
            Op::Arrive { name_len } => {
                let id = VisitId::random();
                w.visits.push(id);
                Ok(w.rooms[i].arrive(
                    NewVisit {
                        id,
                        name: "P".repeat(usize::from(name_len) % 100 + 1),
                        details: None,
                        appointment: None,
                    },
                    &ctx,
                ))
            }
            Op::Presence { visit, connected } => match pick(&w.visits, visit) {
                Some(v) => w.rooms[i].presence(v, connected),
                None => continue,
            },
            Op::Message { visit } => match pick(&w.visits, visit) {
                Some(v) => w.rooms[i].message(v, "hello".into(), &ctx),
                None => continue,
            },
            Op::Admit {
                visit,
                clinician: c,
                into,
            } => {
                let Some(v) = pick(&w.visits, visit) else {
                    continue;
                };
                let into = into.and_then(|n| pick(&w.consultations, n));
                let new = ConsultationId::random();
                w.consultations.push(new);
                w.rooms[i].admit(v, clinician(c), into, new, &ctx)
            }
            Op::AdmitNext { clinician: c } => {
                let me = clinician(c);
                let new = ConsultationId::random();
                w.consultations.push(new);
                match w.rooms[i].next_for(&me) {
                    Ok(v) => {
                        assert_eq!(w.rooms[i].visit(v).map(|v| v.state), Some(VisitState::Waiting));
                        w.rooms[i].admit(v, me, None, new, &ctx)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::ReturnToWaiting { visit } => match pick(&w.visits, visit) {
                Some(v) => w.rooms[i].return_to_waiting(v, &ctx),
                None => continue,
            },
            Op::Assign { visit, clinician: c } => match pick(&w.visits, visit) {
                Some(v) => w.rooms[i].assign(v, clinician(c), &ctx),
                None => continue,
            },
            Op::Transfer { visit } => {
                let Some(v) = pick(&w.visits, visit) else {
                    continue;
                };
                let to = w.rooms[j].clinic.clone();
                match w.rooms[i].take_out(v, &to, &ctx) {
                    Ok((moved, out)) => {
                        assert_eq!(moved.state, VisitState::Waiting);
                        let into = w.rooms[j].take_in(moved);
                        check(&w.rooms[j], &into);
                        Ok(out)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::EndVisit { visit, removed } => match pick(&w.visits, visit) {
                Some(v) => {
                    let reason = if removed {
                        VisitEndReason::Removed
                    } else {
                        VisitEndReason::Left
                    };
                    w.rooms[i].end_visit(v, reason, &ctx)
                }
                None => continue,
            },
            Op::EndConsultation { consultation } => match pick(&w.consultations, consultation) {
                Some(c) => w.rooms[i].end_consultation(c, &ctx),
                None => continue,
            },
            Op::PlaceMedia { consultation, node } => match pick(&w.consultations, consultation) {
                Some(c) => {
                    let chosen = NodeId::parse(format!("sfu-{}", node % 3)).expect("valid");
                    let live = vec![chosen.clone()];
                    w.rooms[i]
                        .place_media(c, &chosen, &live, &ctx)
                        .map(|(placed, out)| {
                            assert!(live.contains(&placed));
                            out
                        })
                }
                None => continue,
            },
            Op::Tick { ms } => {
                w.now += u64::from(ms);
                continue;
            }
        };
        match result {
            Ok(out) => check(&w.rooms[i], &out),
            Err(_) => assert_eq!(w.rooms[i], before, "a refused operation changed the room"),
        }
        // No visit is in both rooms.
        for v in w.rooms[0].visit_ids() {
            assert!(w.rooms[1].visit(v).is_none(), "{v} in two clinics");
        }
    }
});
