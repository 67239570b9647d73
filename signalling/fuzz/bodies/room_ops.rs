//! Random sequences of operations against two clinics' waiting rooms (the sans-IO state
//! machine, `signalling::room`), as the service applies them, checking after every step
//! the invariants the rest of the system relies on (ARCHITECTURE.md, "Invariants"):
//!
//! - a refused operation changes nothing;
//! - a visit in a call is in exactly that call, of its own clinic; a call holds only
//!   visits that are in it, and ends when it is empty;
//! - a visit lives in one clinic at a time, and keeps its arrival time (its place in the
//!   queue) until it ends, transfers included; the queue is in arrival order;
//! - an event for one patient is that patient's own status or a message to them, naming
//!   only their own call (and whether that call is sound only, as it is); staff events go to this clinic's staff and name this clinic and
//!   its own visits and calls; audit entries name this clinic;
//! - a visit keeps at most `KEPT_MESSAGES` messages; the snapshot lists every visit and
//!   call; the stored form round-trips.

use std::collections::HashMap;

use arbitrary::{Arbitrary, Unstructured};
use protocol::{
    ClinicId, ConsultationId, NodeId, PatientState, ServerMsg, StaffId, Timestamp, VisitEndReason,
    VisitId,
};
use signalling::room::{Audience, ClinicRoom, Ctx, KEPT_MESSAGES, NewVisit, Outcome, VisitState};

#[derive(Debug, Arbitrary)]
enum Op {
    Arrive {
        name_len: u8,
    },
    /// An arrival as the store appends it (decided without the room, then appended).
    AppendArrival {
        name_len: u8,
    },
    Message {
        visit: u8,
    },
    Admit {
        visit: u8,
        clinician: u8,
        into: Option<u8>,
    },
    AdmitNext {
        clinician: u8,
    },
    ReturnToWaiting {
        visit: u8,
    },
    Assign {
        visit: u8,
        clinician: u8,
    },
    Transfer {
        visit: u8,
    },
    EndVisit {
        visit: u8,
        removed: bool,
    },
    EndConsultation {
        consultation: u8,
    },
    SetAudioOnly {
        consultation: u8,
        on: bool,
    },
    PlaceMedia {
        consultation: u8,
        node: u8,
        recorded_live: bool,
    },
    Tick {
        ms: u16,
    },
}

#[derive(Debug, Arbitrary)]
struct Step {
    room: bool,
    op: Op,
}

struct World {
    rooms: [ClinicRoom; 2],
    /// Every visit id ever made (some ended), so operations also meet ids no room holds.
    visits: Vec<VisitId>,
    consultations: Vec<ConsultationId>,
    /// Each live visit's arrival time, as first given.
    arrived: HashMap<VisitId, Timestamp>,
    next_id: u128,
    now: u64,
}

impl World {
    /// Ids are counted, not random, so that a crash replays.
    fn visit_id(&mut self) -> VisitId {
        self.next_id += 1;
        VisitId(uuid::Uuid::from_u128(self.next_id))
    }

    fn consultation_id(&mut self) -> ConsultationId {
        self.next_id += 1;
        ConsultationId(uuid::Uuid::from_u128(self.next_id))
    }
}

fn clinician(n: u8) -> StaffId {
    StaffId::parse(format!("dr.{}", n % 3)).expect("a valid id")
}

fn pick<T: Copy>(items: &[T], n: u8) -> Option<T> {
    (!items.is_empty()).then(|| items[usize::from(n) % items.len()])
}

/// The room's own state, whatever happened.
fn check_room(room: &ClinicRoom) {
    for c in room.consultations() {
        assert!(!c.visits.is_empty(), "an empty call lives on");
        for v in &c.visits {
            let visit = room
                .visit(*v)
                .expect("a call holds a visit that is not here");
            assert_eq!(visit.state, VisitState::InConsultation(c.id));
        }
        let mut unique = c.visits.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), c.visits.len(), "a visit twice in one call");
    }
    for id in room.visit_ids() {
        let v = room.visit(id).expect("listed");
        assert_eq!(v.id, id);
        assert!(v.messages.len() <= KEPT_MESSAGES);
        if let VisitState::InConsultation(cid) = v.state {
            let c = room
                .consultation(cid)
                .expect("a visit in a call that does not exist");
            assert!(c.visits.contains(&id));
        }
    }
    let queue = room.queue();
    assert!(queue.iter().all(|v| v.state == VisitState::Waiting));
    assert!(
        queue
            .windows(2)
            .all(|w| (w[0].arrived_at, w[0].seq) < (w[1].arrived_at, w[1].seq)),
        "the queue is out of arrival order"
    );
    let ServerMsg::ClinicSnapshot {
        clinic,
        visits,
        consultations,
    } = room.snapshot(&Default::default())
    else {
        panic!("a snapshot that is not one");
    };
    assert_eq!(clinic.id, room.clinic);
    assert_eq!(visits.len(), room.visit_ids().count());
    assert_eq!(consultations.len(), room.consultations().count());
    let json = serde_json::to_string(room).expect("a room serialises");
    let back: ClinicRoom = serde_json::from_str(&json).expect("and parses back");
    assert_eq!(&back, room);
}

/// What one operation's outcome says, and to whom.
fn check_outcome(room: &ClinicRoom, out: &Outcome) {
    for e in &out.events {
        match (&e.to, &e.msg) {
            (Audience::Visit(v), ServerMsg::PatientStatus { status }) => match status {
                // A patient's status names only their own call.
                PatientState::Admitted {
                    consultation,
                    audio_only,
                } => {
                    let visit = room.visit(*v).expect("admitted to a call, yet gone");
                    assert_eq!(visit.state, VisitState::InConsultation(*consultation));
                    let call = room.consultation(*consultation).expect("in a live call");
                    assert_eq!(
                        *audio_only, call.audio_only,
                        "told another sound-only state"
                    );
                }
                PatientState::Waiting { .. } => {
                    let visit = room.visit(*v).expect("told to wait, yet gone");
                    assert_eq!(visit.state, VisitState::Waiting);
                }
                PatientState::Ended { .. } => {
                    assert!(room.visit(*v).is_none(), "told its visit ended, yet here");
                }
            },
            (Audience::Visit(v), ServerMsg::StaffMessage { .. }) => {
                assert!(
                    room.visit(*v).is_some(),
                    "a message to a visit that is not here"
                );
            }
            (Audience::Visit(v), other) => panic!("a patient ({v}) was sent {other:?}"),
            (Audience::ClinicStaff(c), msg) => {
                assert_eq!(c, &room.clinic, "staff of another clinic were told");
                match msg {
                    ServerMsg::VisitUpdated { clinic, visit } => {
                        assert_eq!(clinic, &room.clinic);
                        assert!(
                            room.visit(visit.id).is_some(),
                            "an update about a visit not here"
                        );
                    }
                    ServerMsg::VisitClosed { clinic, visit, .. } => {
                        assert_eq!(clinic, &room.clinic);
                        assert!(room.visit(*visit).is_none(), "closed, yet here");
                    }
                    ServerMsg::ConsultationUpdated {
                        clinic,
                        consultation,
                    } => {
                        assert_eq!(clinic, &room.clinic);
                        assert!(room.consultation(consultation.id).is_some());
                    }
                    ServerMsg::ConsultationEnded {
                        clinic,
                        consultation,
                    } => {
                        assert_eq!(clinic, &room.clinic);
                        assert!(
                            room.consultation(*consultation).is_none(),
                            "ended, yet here"
                        );
                    }
                    other => panic!("staff were sent {other:?} by the room"),
                }
            }
        }
    }
    for a in &out.audit {
        assert_eq!(
            a.clinic.as_ref(),
            Some(&room.clinic),
            "an audit entry of another clinic"
        );
    }
}

/// The target's body, for one input: run by the fuzz target and, for each committed
/// input, by `signalling/tests/fuzz_corpus.rs` (stable, in `cargo test`).
pub fn check(data: &[u8]) {
    // Read as libfuzzer-sys reads the input of a target that takes `Vec<Step>` (whose
    // size hint asks for no minimum length), so the committed inputs mean what they
    // meant to the fuzzer.
    let Ok(steps) = Vec::<Step>::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    run(steps);
}

fn run(steps: Vec<Step>) {
    let mut w = World {
        rooms: [
            ClinicRoom::new(ClinicId::parse("derm").expect("valid"), "Derm".into()),
            ClinicRoom::new(ClinicId::parse("cardio").expect("valid"), "Cardio".into()),
        ],
        visits: Vec::new(),
        consultations: Vec::new(),
        arrived: HashMap::new(),
        next_id: 0,
        now: 1_700_000_000_000,
    };
    for step in steps.into_iter().take(200) {
        let ctx = Ctx {
            actor: "staff:fuzz".into(),
            now: Timestamp(w.now),
        };
        let (i, j) = if step.room { (1, 0) } else { (0, 1) };
        let before = w.rooms[i].clone();
        let other_before = w.rooms[j].clone();
        let result = match step.op {
            Op::Arrive { name_len } => {
                let id = w.visit_id();
                w.visits.push(id);
                w.arrived.insert(id, ctx.now);
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
            Op::AppendArrival { name_len } => {
                let id = VisitId::random();
                w.visits.push(id);
                w.arrived.insert(id, ctx.now);
                let room = &mut w.rooms[i];
                let (visit, out) = ClinicRoom::arrival(
                    &room.clinic,
                    &room.name,
                    NewVisit {
                        id,
                        name: "P".repeat(usize::from(name_len) % 100 + 1),
                        details: None,
                        appointment: None,
                    },
                    &ctx,
                );
                room.append(visit);
                Ok(out)
            }
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
                let new = w.consultation_id();
                w.consultations.push(new);
                w.rooms[i].admit(v, clinician(c), into, new, &ctx)
            }
            Op::AdmitNext { clinician: c } => {
                let me = clinician(c);
                let new = w.consultation_id();
                w.consultations.push(new);
                match w.rooms[i].next_for(&me) {
                    Ok(v) => {
                        let visit = w.rooms[i].visit(v).expect("the next is here");
                        assert_eq!(visit.state, VisitState::Waiting);
                        assert!(visit.for_clinician.as_ref().is_none_or(|c| *c == me));
                        w.rooms[i].admit(v, me, None, new, &ctx)
                    }
                    Err(e) => Err(e),
                }
            }
            Op::ReturnToWaiting { visit } => match pick(&w.visits, visit) {
                Some(v) => w.rooms[i].return_to_waiting(v, &ctx),
                None => continue,
            },
            Op::Assign {
                visit,
                clinician: c,
            } => match pick(&w.visits, visit) {
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
                        assert!(moved.for_clinician.is_none());
                        let into = w.rooms[j].take_in(moved);
                        check_room(&w.rooms[j]);
                        check_outcome(&w.rooms[j], &into);
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
            Op::SetAudioOnly { consultation, on } => match pick(&w.consultations, consultation) {
                Some(c) => w.rooms[i].set_audio_only(c, on, &ctx),
                None => continue,
            },
            Op::PlaceMedia {
                consultation,
                node,
                recorded_live,
            } => match pick(&w.consultations, consultation) {
                Some(c) => {
                    let chosen = NodeId::parse(format!("sfu-{}", node % 3)).expect("valid");
                    let recorded = w.rooms[i]
                        .consultation(c)
                        .and_then(|c| c.media_node.clone());
                    let mut live = vec![chosen.clone()];
                    if recorded_live {
                        live.extend(recorded.clone());
                    }
                    w.rooms[i]
                        .place_media(c, &chosen, &live, &ctx)
                        .map(|(placed, out)| {
                            // The recorded node while it lives, else the chosen one.
                            match recorded.filter(|r| live.contains(r)) {
                                Some(r) => assert_eq!(placed, r),
                                None => assert_eq!(placed, chosen),
                            }
                            let now = w.rooms[i].consultation(c).expect("placed");
                            assert_eq!(now.media_node.as_ref(), Some(&placed));
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
            Ok(out) => {
                check_room(&w.rooms[i]);
                check_outcome(&w.rooms[i], &out);
            }
            Err(_) => {
                assert_eq!(w.rooms[i], before, "a refused operation changed the room");
                assert_eq!(
                    w.rooms[j], other_before,
                    "a refused operation changed the other room"
                );
            }
        }
        // A live visit is in one clinic, and keeps its arrival time.
        for v in w.rooms[0].visit_ids() {
            assert!(w.rooms[1].visit(v).is_none(), "{v} in two clinics");
        }
        let live: Vec<VisitId> = w.rooms.iter().flat_map(|r| r.visit_ids()).collect();
        w.arrived.retain(|v, _| live.contains(v));
        for r in &w.rooms {
            for id in r.visit_ids() {
                let v = r.visit(id).expect("listed");
                assert_eq!(
                    Some(&v.arrived_at),
                    w.arrived.get(&id),
                    "{id} lost its place"
                );
            }
        }
    }
}
