//! What each subscriber's downlink ([`crate::bwe`]) decides, checked every tick: each
//! subscriber's share of its estimate; the simulcast layer it gets of each video; what
//! each publisher's browser sends (bytes on its publisher leg), and a REMB to a publisher
//! whose subscribers cannot take what it sends.

use rtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;

use super::forwarding::RIDS;
use super::negotiation::receiver_mid;
use super::*;
use crate::bwe::{self, DownlinkState, UplinkLimit};
use crate::engine::playout;

/// How often what a publisher sends is measured.
const RATE_WINDOW: Duration = Duration::from_millis(1_000);

/// What a participant's browser sends and the limit its subscribers set it.
#[derive(Debug, Default)]
pub(super) struct Uplink {
    /// The publisher leg's received bytes at the start of the current window.
    sample: Option<(Instant, u64)>,
    /// Bits per second over the last whole window.
    sending: u64,
    limit: UplinkLimit,
    /// The packets the SFU's NACKs found missing on it, as last read.
    missing: u64,
    /// Until when it counts as losing packets (its subscribers wait for the repairs).
    lossy_until: Option<Instant>,
}

impl Uplink {
    /// Whether it has lost packets within [`playout::LOSSY_FOR`].
    fn lossy(&self, now: Instant) -> bool {
        self.lossy_until.is_some_and(|until| now < until)
    }
}

impl Endpoint {
    /// Every tick: what each layer of each published track sends, the layer each
    /// subscriber gets of each simulcast video ([`bwe::LayerChoice`]), and the most each
    /// publisher may send (REMB), or the lifting of that limit.
    pub(super) fn limit_uplinks(&mut self, now: Instant) {
        let Self {
            rooms,
            members,
            conns,
            touched,
            counters,
            events_out,
            ..
        } = self;
        let mut probing = false;
        for room in rooms.values_mut() {
            for (id, t) in room.tracks.iter_mut() {
                for rate in &mut t.rates {
                    rate.update(now);
                }
                let top = t.top_layer();
                if t.simulcast() && room.forwarder.layer_active(*id, top as Layer, now) {
                    t.lower_bps = t.rates.iter().take(top).map(|r| r.bps).sum();
                }
            }
            // Each subscriber's share for each video it receives (none in sound only: its
            // downlink limits nobody).
            for &key in &room.members {
                let Some(o) = members.get_mut(&key) else {
                    continue;
                };
                let cell = conns.get(&o.subscriber).and_then(|c| c.estimate.as_ref());
                let estimate = cell.map_or(0, |e| e.bitrate.load(Ordering::Relaxed));
                let delivered = cell.map_or(0, |e| e.delivered_bps.load(Ordering::Relaxed));
                let videos = o
                    .subscribed
                    .values()
                    .filter(|s| s.kind == MediaKind::Video)
                    .count();
                // Sound in RED takes more of the downlink than plain Opus.
                let audio = o
                    .subscribed
                    .iter()
                    .filter(|(_, s)| s.kind == MediaKind::Audio)
                    .map(|(t, s)| {
                        let takes_red = s.payload_types.iter().any(|(c, _)| *c == Codec::Red);
                        bwe::audio_allowance(takes_red && sends_red(room, *t))
                    })
                    .sum();
                o.video_share = (estimate > 0 && !o.video_off)
                    .then(|| bwe::share(estimate, videos, audio))
                    .flatten();
                o.video_carried = (delivered > 0)
                    .then(|| bwe::share(delivered, videos, audio))
                    .flatten();
            }
            tell_downstream_loss(room, members, conns);
            time_repairs(room, members, conns, now);
            probing |= choose_layers(room, members, conns, touched, counters, now);
            pause_lower_layers(room, members, conns, events_out, now);
            for &key in &room.members {
                limit_uplink(room, key, members, conns, touched, now);
            }
        }
        if probing && self.next_probe.is_none() {
            self.next_probe = Some(now);
        }
    }
}

impl LayerRate {
    /// Turns the bytes counted into bits per second, once per [`RATE_WINDOW`].
    fn update(&mut self, now: Instant) {
        match self.sample {
            Some((at, bytes)) if now.saturating_duration_since(at) >= RATE_WINDOW => {
                let secs = now.saturating_duration_since(at).as_secs_f64();
                self.bps = ((self.bytes.saturating_sub(bytes) * 8) as f64 / secs) as u64;
                self.sample = Some((now, self.bytes));
            }
            Some(_) => {}
            None => self.sample = Some((now, self.bytes)),
        }
    }
}

/// Each publisher's receiver reports carry the worst loss on the downlinks of those who
/// receive it (everyone else in the room), so that its Opus encoder adds in-band FEC for
/// them ([`crate::engine::reports`]).
fn tell_downstream_loss(
    room: &Room,
    members: &HashMap<u128, Member>,
    conns: &HashMap<ConnId, Conn>,
) {
    let loss = |key: &u128| conns.get(&members.get(key)?.subscriber)?.loss_ppm();
    for key in &room.members {
        let worst = room
            .members
            .iter()
            .filter(|k| *k != key)
            .filter_map(loss)
            .max();
        let Some(cell) = members
            .get(key)
            .and_then(|m| conns.get(&m.publisher))
            .and_then(|c| c.downstream_loss.as_ref())
        else {
            continue;
        };
        // In 256ths, as RTCP's fraction lost.
        let fraction = worst.map_or(0, |ppm| (ppm * 256 / 1_000_000).min(255) as u8);
        cell.store(fraction, Ordering::Relaxed);
    }
}

/// The repair of what each member's links lose: its publisher leg times its NACKs by the
/// round trip measured on its subscriber leg (the same browser, the same path to the
/// SFU); while its uplink loses, the others' videos are played late enough for those
/// repairs to arrive in time, and while its downlink loses, its own videos are, for the
/// SFU's retransmissions (`engine::playout`).
fn time_repairs(
    room: &Room,
    members: &mut HashMap<u128, Member>,
    conns: &HashMap<ConnId, Conn>,
    now: Instant,
) {
    for key in &room.members {
        let Some(m) = members.get_mut(key) else {
            continue;
        };
        let loss = conns.get(&m.subscriber).and_then(Conn::loss_ppm);
        if loss.is_some_and(|ppm| ppm >= playout::LOSSY_PPM) {
            m.downlink_lossy_until = Some(now + playout::LOSSY_FOR);
        }
        let Some(repair) = conns.get(&m.publisher).and_then(|c| c.repair.as_ref()) else {
            continue;
        };
        let rtt = conns.get(&m.subscriber).map_or(0, Conn::rtt_us);
        repair.round_trip_us.store(rtt, Ordering::Relaxed);
        let missing = repair.missing.load(Ordering::Relaxed);
        if missing > m.uplink.missing {
            m.uplink.lossy_until = Some(now + playout::LOSSY_FOR);
        }
        m.uplink.missing = missing;
    }
    let rtt = |m: &Member| Duration::from_micros(conns.get(&m.subscriber).map_or(0, Conn::rtt_us));
    for key in &room.members {
        let Some(m) = members.get(key) else {
            continue;
        };
        let uplinks = room
            .members
            .iter()
            .filter(|k| *k != key)
            .filter_map(|k| members.get(k))
            .filter(|p| p.uplink.lossy(now))
            .map(rtt);
        let own = m
            .downlink_lossy_until
            .is_some_and(|until| now < until)
            .then(|| rtt(m));
        let delay = playout::delay_for(uplinks.chain(own));
        let Some(m) = members.get_mut(key) else {
            continue;
        };
        let ms = m.playout.next(delay, now);
        if let Some(cell) = conns.get(&m.subscriber).and_then(|c| c.playout.as_ref()) {
            if cell.swap(ms, Ordering::Relaxed) != ms {
                tracing::debug!(participant = key, ms, "playout delay");
            }
        }
    }
}

/// The layer each subscriber gets of each simulcast video it receives; whether any
/// subscriber's downlink is being probed.
fn choose_layers(
    room: &mut Room,
    members: &mut HashMap<u128, Member>,
    conns: &mut HashMap<ConnId, Conn>,
    touched: &mut Vec<ConnId>,
    counters: &LoopCounters,
    now: Instant,
) -> bool {
    let mut requests = Vec::new();
    let mut probing = false;
    for &key in &room.members {
        let Some(o) = members.get_mut(&key) else {
            continue;
        };
        let share = o.video_share;
        let probes = o.probe.as_ref().is_some_and(|p| p.payload_type.is_some())
            && o.subscriber_state == RTCPeerConnectionState::Connected;
        let downlink = conns
            .get(&o.subscriber)
            .map(|c| c.downlink(probes))
            .unwrap_or_default();
        // A downlink that keeps queueing: the video whose layer sends the most, of those
        // with a lower layer to go to (else of all: its ceiling falls), gives way (one a
        // step).
        let shed = o
            .queue_watch
            .lasting(now, downlink.queue)
            .then(|| {
                o.subscribed
                    .iter()
                    .filter_map(|(track, s)| {
                        let t = room.tracks.get(track).filter(|t| t.simulcast())?;
                        let rates = layer_rates(&room.forwarder, *track, t, now);
                        let c = usize::from(s.layers.chosen()?);
                        let bps = rates.get(c).copied().flatten()?;
                        let lower = rates.iter().take(c).any(Option::is_some);
                        Some((*track, (lower, bps)))
                    })
                    .max_by_key(|(_, rank)| *rank)
                    .map(|(track, _)| track)
            })
            .flatten();
        for (track, s) in &mut o.subscribed {
            let Some(t) = room.tracks.get(track).filter(|t| t.simulcast()) else {
                continue;
            };
            let rates = layer_rates(&room.forwarder, *track, t, now);
            s.layers.downlink(DownlinkState {
                shed: shed == Some(*track),
                carried: o.video_carried,
                ..downlink
            });
            let before = s.layers.probing();
            let layer = s.layers.choose(now, &rates, share);
            match (before, s.layers.probing()) {
                (None, Some(bps)) => {
                    tracing::debug!(participant = key, track = track.0, bps, "probe");
                }
                (Some(_), None) => tracing::debug!(
                    participant = key,
                    track = track.0,
                    ?layer,
                    ceiling = ?s.layers.ceiling(),
                    queue = ?downlink.queue,
                    loss = ?downlink.loss_ppm,
                    "probe over"
                ),
                _ => {}
            }
            probing |= s.layers.probing().is_some();
            let Some(layer) = layer else {
                continue;
            };
            if let Some(req) = room.forwarder.set_target_layer(*track, o.id, layer, now) {
                tracing::debug!(
                    participant = key,
                    track = track.0,
                    layer,
                    ?share,
                    ceiling = ?s.layers.ceiling(),
                    queue = ?downlink.queue,
                    loss = ?downlink.loss_ppm,
                    "layer chosen"
                );
                requests.push(req);
            }
        }
    }
    for req in requests {
        request_keyframe(conns, touched, counters, room, req, now);
    }
    probing
}

/// Tells each publisher of a simulcast video whether to send its lower layers in full or
/// as thumbnails ([`bwe::LowerLayers`]).
fn pause_lower_layers(
    room: &mut Room,
    members: &HashMap<u128, Member>,
    conns: &mut HashMap<ConnId, Conn>,
    events_out: &mut VecDeque<EngineEvent>,
    now: Instant,
) {
    let mut budgets = Vec::new();
    for (id, t) in room.tracks.iter_mut().filter(|(_, t)| t.simulcast()) {
        budgets.clear();
        let mut publisher = None;
        for key in &room.members {
            let Some(m) = members.get(key) else {
                continue;
            };
            if m.id == t.publisher {
                publisher = Some(*key);
            } else if let Some(s) = m.subscribed.get(id) {
                budgets.push(m.video_share.map(|share| s.layers.budget(share)));
            }
        }
        let top = t.top_layer();
        let top_arriving = room.forwarder.layer_active(*id, top as Layer, now);
        let wanted = bwe::lower_layers_wanted(&budgets);
        let uplink = publisher
            .and_then(|key| members.get(&key))
            .map(|m| &m.uplink);
        let pausable = bwe::may_pause(
            top_arriving,
            uplink.is_some_and(|u| u.limit.limited()),
            uplink.is_some_and(|u| u.lossy(now)),
        );
        let Some(pause) = t.lower.update(now, wanted, top_arriving, pausable) else {
            continue;
        };
        let (Some(participant), Some(mid)) = (
            publisher,
            conns
                .get_mut(&t.conn)
                .and_then(|c| receiver_mid(&mut c.pc, t.receiver)),
        ) else {
            continue;
        };
        let paused = if pause {
            RIDS.iter().take(top).map(|r| (*r).to_owned()).collect()
        } else {
            Vec::new()
        };
        tracing::debug!(participant, track = id.0, ?paused, "publisher layers");
        t.lower.told(now, pause);
        events_out.push_back(EngineEvent::PublishLayers {
            participant,
            mid,
            paused,
        });
    }
}

/// What each layer of `track` sends, in bits per second (`None`: not arriving).
fn layer_rates(
    forwarder: &Forwarder<Cached, Route>,
    track: TrackId,
    t: &Published,
    now: Instant,
) -> [Option<u64>; MAX_LAYERS] {
    let mut rates = [None; MAX_LAYERS];
    for (l, rate) in rates.iter_mut().enumerate() {
        if forwarder.layer_active(track, l as Layer, now) {
            *rate = Some(t.rates[l].bps);
        }
    }
    rates
}

/// Whether the audio of `track` arrives in RED (its last packet was).
fn sends_red(room: &Room, track: TrackId) -> bool {
    room.forwarder.codec(track) == Some(Codec::Red)
}

/// Tells publisher `key` the most it may send, or lifts that limit: the sum over its
/// videos of what each needs, and its sound. A video without simulcast needs the lowest
/// share among those who receive it (the weakest link sets the rate); one in simulcast,
/// what its lower layers send and a top layer sized to its best subscriber's budget
/// ([`bwe::LayerChoice::budget`]: a fit of its share, or what its link is known to
/// carry): the others get a lower layer, and the best one the full picture at the rate
/// its link carries.
fn limit_uplink(
    room: &Room,
    key: u128,
    members: &mut HashMap<u128, Member>,
    conns: &mut HashMap<ConnId, Conn>,
    touched: &mut Vec<ConnId>,
    now: Instant,
) {
    let Some(m) = members.get(&key) else {
        return;
    };
    let mut bound: Option<u64> = None;
    let mut measured = false;
    let mut unbound = 0;
    let mut layers = None;
    for (id, t) in room
        .tracks
        .iter()
        .filter(|(_, t)| t.publisher == m.id && t.kind == MediaKind::Video)
    {
        let rates = layer_rates(&room.forwarder, *id, t, now);
        if t.simulcast() {
            layers = Some(rates);
        }
        let mut need: Option<u64> = None;
        // Whether the need is a subscriber's ceiling (measured), not an estimate.
        let mut of_ceiling = false;
        for &other in room.members.iter().filter(|o| **o != key) {
            let Some(o) = members.get(&other) else {
                continue;
            };
            let (Some(share), Some(s)) = (o.video_share, o.subscribed.get(id)) else {
                continue;
            };
            if !t.simulcast() {
                need = Some(need.map_or(share, |n| n.min(share)));
                continue;
            }
            let budget = s.layers.budget(share);
            if need.is_none_or(|n| budget > n) {
                need = Some(budget);
                of_ceiling = s.layers.budget_measured(share);
            }
        }
        measured |= of_ceiling;
        let sends = rates.iter().flatten().sum::<u64>();
        let Some(need) = need else {
            // Nobody it must be limited for: what it sends is left to it.
            unbound += sends;
            continue;
        };
        let need = if t.simulcast() {
            let top = t.top_layer();
            let arriving = rates.get(top).copied().flatten().is_some();
            bwe::simulcast_need(t.lower_bps, t.lower.paused(), arriving, need)
        } else {
            need
        };
        bound = Some(bound.unwrap_or(0) + need);
    }
    let bound = bound.map(|b| b + unbound);
    let audio = room
        .tracks
        .iter()
        .filter(|(_, t)| t.publisher == m.id && t.kind == MediaKind::Audio)
        .map(|(id, _)| bwe::audio_allowance(sends_red(room, *id)))
        .sum::<u64>();
    let Some(m) = members.get_mut(&key) else {
        return;
    };
    let received = conns.get(&m.publisher).map_or(0, |c| c.received_bytes);
    let u = &mut m.uplink;
    match u.sample {
        Some((at, bytes)) if now.saturating_duration_since(at) >= RATE_WINDOW => {
            let secs = now.saturating_duration_since(at).as_secs_f64();
            u.sending = ((received.saturating_sub(bytes) * 8) as f64 / secs) as u64;
            u.sample = Some((now, received));
        }
        Some(_) => {}
        None => u.sample = Some((now, received)),
    }
    let Some(remb) = u
        .limit
        .update(now, bound.map(|l| l + audio), u.sending, measured)
    else {
        return;
    };
    tracing::debug!(
        participant = key,
        remb,
        sending = u.sending,
        ?layers,
        "publisher limit"
    );
    let ssrcs: Vec<u32> = room
        .tracks
        .values()
        .filter(|t| t.publisher == m.id)
        .flat_map(|t| t.ssrcs.iter().copied().filter(|s| *s != 0))
        .collect();
    let Some(t) = room.tracks.values().find(|t| t.publisher == m.id) else {
        return;
    };
    if let Some(mut receiver) = conns
        .get_mut(&t.conn)
        .and_then(|c| c.pc.rtp_receiver(t.receiver))
    {
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 0,
            bitrate: remb as f32,
            ssrcs,
        };
        let _ = receiver.write_rtcp(now, vec![Box::new(remb)]);
    }
    touch(conns, touched, t.conn);
}
