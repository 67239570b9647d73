//! Media: a publisher's packets through the forwarding core to every subscriber's
//! connection, subscribers' NACKs and keyframe requests back, tracks published and gone.

use super::*;

/// Writes one forwarded packet, with that subscriber's header, into its connection. The
/// payload is shared with the cache; nothing waits.
pub(super) fn send_forward(
    conns: &mut HashMap<ConnId, Conn>,
    touched: &mut Vec<ConnId>,
    counters: &LoopCounters,
    fw: Forward<'_, Cached, Route>,
    now: Instant,
) {
    let Some(c) = conns.get_mut(&fw.route.conn) else {
        return;
    };
    // The core forwards only codecs the subscriber accepted, whose payload types it has;
    // RED to one that did not accept it goes as its primary Opus block.
    let payload_type_of = |codec| {
        fw.route
            .payload_types
            .iter()
            .find(|(c, _)| *c == codec)
            .map(|(_, pt)| *pt)
    };
    let (payload_type, payload) = match (payload_type_of(fw.codec), fw.codec) {
        (Some(pt), _) => (pt, fw.packet.0.payload.clone()),
        (None, Codec::Red) => match (
            payload_type_of(Codec::Opus),
            codec::red_primary(&fw.packet.0.payload),
        ) {
            (Some(pt), Some(primary)) => (pt, primary),
            _ => return,
        },
        (None, _) => return,
    };
    let out = rtp::Packet {
        header: rtp::Header {
            version: 2,
            marker: fw.packet.0.header.marker,
            payload_type,
            sequence_number: fw.seq,
            timestamp: fw.timestamp,
            ssrc: fw.route.ssrc,
            ..Default::default()
        },
        payload,
    };
    let Some(mut sender) = c.pc.rtp_sender(fw.route.sender) else {
        return;
    };
    // A subscriber moved between simulcast layers gets VP8 picture numbering that goes on
    // from what it had (a copy of the payload; the cached one is everyone's).
    let out = match fw.vp8 {
        Some(ids) => match codec::rewrite_vp8_ids(&out.payload, ids) {
            Some(payload) => rtp::Packet { payload, ..out },
            None => return,
        },
        None => out,
    };
    let bytes = out.payload.len() as u64;
    if sender.write_rtp(now, out).is_ok() {
        counters.forwarded_packets.inc();
        counters.forwarded_bytes.inc_by(bytes);
        if !c.queued {
            c.queued = true;
            touched.push(fw.route.conn);
        }
    }
}

/// Sends a PLI to the publisher of the requested track.
pub(super) fn request_keyframe(
    conns: &mut HashMap<ConnId, Conn>,
    touched: &mut Vec<ConnId>,
    counters: &LoopCounters,
    room: &Room,
    req: KeyframeRequest,
    now: Instant,
) {
    let Some(t) = room.tracks.get(&req.track) else {
        return;
    };
    let Some(c) = conns.get_mut(&t.conn) else {
        return;
    };
    let media_ssrc = t.ssrcs[usize::from(req.layer)];
    tracing::debug!(track = req.track.0, layer = req.layer, "keyframe requested");
    if let Some(mut receiver) = c.pc.rtp_receiver(t.receiver) {
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc,
        };
        if receiver.write_rtcp(now, vec![Box::new(pli)]).is_ok() {
            counters.keyframe_requests.inc();
        }
    }
    touch(conns, touched, t.conn);
}

/// The simulcast layer a browser's rid names: `q`, `h` and `f` (a quarter, half and the
/// full resolution; the web client sends `h` and `f`), as most SFUs and their clients name
/// them.
pub(super) fn layer_of_rid(rid: &str) -> Option<Layer> {
    RIDS.iter().position(|r| *r == rid).map(|l| l as Layer)
}

/// The rid of each layer, by layer.
pub(super) const RIDS: [&str; MAX_LAYERS] = ["q", "h", "f"];

impl Endpoint {
    /// One packet of a published track, to every subscriber the core routes it to.
    pub(super) fn forward(
        &mut self,
        room: u128,
        track: TrackId,
        packet: rtp::Packet,
        now: Instant,
    ) {
        let Self {
            rooms,
            conns,
            touched,
            counters,
            ..
        } = self;
        counters.received_packets.inc();
        counters.received_bytes.inc_by(packet.payload.len() as u64);
        let Some(r) = rooms.get_mut(&room) else {
            return;
        };
        let Some(t) = r.tracks.get_mut(&track) else {
            return;
        };
        // A payload type its offer did not give (the core lets none through): nothing to
        // forward it as.
        let Some(codec) = t.codec_of(packet.header.payload_type) else {
            return;
        };
        let ssrc = packet.header.ssrc;
        let layer = match t.layer_of(ssrc) {
            Some(layer) => layer,
            None => {
                // A new SSRC (its first packet, or the browser renumbered its streams in a
                // new offer): the layer its rid names, or layer 0 without simulcast. A
                // rid the SFU does not take is not forwarded.
                let rid = conns
                    .get_mut(&t.conn)
                    .and_then(|c| c.pc.rtp_receiver(t.receiver))
                    .and_then(|r| r.track().rid(ssrc).map(|rid| rid.to_string()));
                let Some(layer) = rid.as_deref().map_or(Some(0), layer_of_rid) else {
                    return;
                };
                tracing::debug!(track = track.0, ssrc, ?rid, layer, "a new stream");
                t.ssrcs[usize::from(layer)] = ssrc;
                layer
            }
        };
        t.rates[usize::from(layer)].bytes += packet.payload.len() as u64;
        let meta = RtpMeta::of(
            packet.header.sequence_number,
            packet.header.timestamp,
            &packet.payload,
            codec,
            layer,
        );
        if meta.keyframe {
            tracing::debug!(track = track.0, ?codec, layer, seq = meta.seq, "keyframe");
        }
        let request = r
            .forwarder
            .on_rtp(track, meta, Cached(Arc::new(packet)), now, |fw| {
                send_forward(conns, touched, counters, fw, now);
            });
        if let Some(req) = request {
            request_keyframe(conns, touched, counters, r, req, now);
        }
    }

    /// Whether participant `key` receives the others' video: off pauses every video track
    /// routed to it (and its downlink stops limiting their publishers); on resumes them,
    /// each from a keyframe asked for now.
    pub(super) fn receive_video(
        &mut self,
        key: u128,
        on: bool,
        now: Instant,
    ) -> Result<(), EngineError> {
        let Self {
            rooms,
            conns,
            touched,
            members,
            counters,
            ..
        } = self;
        let m = members
            .get_mut(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        if m.video_off != on {
            return Ok(());
        }
        m.video_off = !on;
        tracing::debug!(participant = key, on, "receives video");
        let Some(r) = rooms.get_mut(&m.room) else {
            return Ok(());
        };
        let videos = m
            .subscribed
            .iter()
            .filter(|(_, s)| s.kind == MediaKind::Video && s.routed);
        let mut requests = Vec::new();
        for (t, _) in videos {
            if on {
                requests.extend(r.forwarder.resume(*t, m.id, now));
            } else {
                r.forwarder.pause(*t, m.id);
            }
        }
        for req in requests {
            request_keyframe(conns, touched, counters, r, req, now);
        }
        Ok(())
    }

    /// A participant's connection is heard again after an outage: the videos it receives
    /// (subscriber leg) or sends (publisher leg) restart at keyframes, asked for now.
    pub(super) fn back_after_outage(&mut self, key: u128, leg: MediaLeg, now: Instant) {
        let Self {
            rooms,
            conns,
            touched,
            members,
            counters,
            ..
        } = self;
        let Some(m) = members.get(&key) else {
            return;
        };
        let Some(r) = rooms.get_mut(&m.room) else {
            return;
        };
        tracing::debug!(participant = key, ?leg, "back after an outage");
        let mut requests = Vec::new();
        match leg {
            MediaLeg::Subscriber => r
                .forwarder
                .restart_peer(m.id, now, |req| requests.push(req)),
            MediaLeg::Publisher => {
                let videos = r
                    .tracks
                    .iter()
                    .filter(|(_, t)| t.publisher == m.id && t.kind == MediaKind::Video);
                for (id, _) in videos {
                    r.forwarder
                        .restart_track(*id, now, |req| requests.push(req));
                }
            }
        }
        for req in requests {
            request_keyframe(conns, touched, counters, r, req, now);
        }
    }

    /// A subscriber's NACKs (resent from the cache, or passed upstream for what the SFU
    /// never got) and keyframe requests for one track.
    pub(super) fn subscriber_rtcp(
        &mut self,
        key: u128,
        track: TrackId,
        packets: &[Box<dyn rtc::rtcp::Packet>],
        now: Instant,
    ) {
        let Self {
            rooms,
            conns,
            touched,
            members,
            counters,
            ..
        } = self;
        let Some(m) = members.get(&key) else {
            return;
        };
        let Some(r) = rooms.get_mut(&m.room) else {
            return;
        };
        let lost: Vec<u16> = packets
            .iter()
            .filter_map(|p| p.as_any().downcast_ref::<TransportLayerNack>())
            .flat_map(|n| n.nacks.iter().flat_map(|pair| pair.packet_list()))
            .collect();
        if !lost.is_empty() {
            // Answered again as soon as the subscriber's browser can have found that a
            // retransmission was lost: after its round trip, as measured from its feedback.
            let rtt_us = conns.get(&m.subscriber).map_or(0, Conn::rtt_us);
            let interval = crate::forward::resend_interval(
                (rtt_us > 0).then(|| Duration::from_micros(rtt_us)),
            );
            let outcome = r
                .forwarder
                .on_nack(track, m.id, &lost, now, interval, |fw| {
                    send_forward(conns, touched, counters, fw, now);
                });
            counters.nacks_resent.inc_by(outcome.resent as u64);
            counters.nacks_refused.inc_by(outcome.refused as u64);
            if !outcome.upstream.is_empty() {
                counters
                    .nacks_upstream
                    .inc_by(outcome.upstream.len() as u64);
                if let Some(t) = r.tracks.get(&track) {
                    if let Some(mut receiver) = conns
                        .get_mut(&t.conn)
                        .and_then(|c| c.pc.rtp_receiver(t.receiver))
                    {
                        let nack = TransportLayerNack {
                            sender_ssrc: 0,
                            media_ssrc: t.ssrcs[usize::from(outcome.layer)],
                            nacks: nack_pairs_from_sequence_numbers(&outcome.upstream),
                        };
                        let _ = receiver.write_rtcp(now, vec![Box::new(nack)]);
                    }
                    touch(conns, touched, t.conn);
                }
            }
        }
        let wants_keyframe = packets.iter().any(|p| {
            p.as_any().is::<PictureLossIndication>() || p.as_any().is::<FullIntraRequest>()
        });
        if wants_keyframe {
            tracing::debug!(
                participant = key,
                track = track.0,
                "subscriber asks for a keyframe"
            );
            if let Some(req) = r.forwarder.on_keyframe_request(track, m.id, now) {
                request_keyframe(conns, touched, counters, r, req, now);
            }
        }
    }

    /// A track the publisher connection started receiving: the room's other participants
    /// subscribe to it.
    pub(super) fn publish_track(&mut self, id: ConnId, key: u128, init: RTCTrackEventInit) {
        let Some(m) = self.members.get(&key) else {
            return;
        };
        let (publisher, room) = (m.id, m.room);
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        // Each simulcast layer opens on its own, by its rid.
        let layer = match init.rid.as_deref() {
            None => 0,
            Some(rid) => match layer_of_rid(rid) {
                Some(layer) => layer,
                None => {
                    tracing::debug!(rid, "a simulcast layer of no rid the SFU takes");
                    return;
                }
            },
        };
        // Another layer of a track, or a renewed offer (a codec switch) opening the same
        // receiver's track again: it stays the one published track, so subscribers keep
        // their route and stream.
        let published = self.rooms.get_mut(&room).and_then(|r| {
            r.tracks
                .iter_mut()
                .find(|(_, t)| t.conn == id && t.receiver == init.receiver_id)
        });
        if let Some((&track, t)) = published {
            if init.rid.is_none() {
                c.tracks.retain(|_, t| *t != track);
            }
            if init.ssrc != 0 {
                t.ssrcs[usize::from(layer)] = init.ssrc;
            }
            c.tracks.insert(init.track_id, track);
            tracing::debug!(
                track = track.0,
                layer,
                ssrc = init.ssrc,
                "another layer, or a new offer"
            );
            return;
        }
        let Some(mut receiver) = c.pc.rtp_receiver(init.receiver_id) else {
            return;
        };
        let media_ssrc = match init.ssrc {
            0 => receiver.track().ssrcs().next().unwrap_or(0),
            s => s,
        };
        let rtp_kind = receiver.track().kind();
        let mime = match receiver.track().codec(media_ssrc) {
            Some(codec) => codec.mime_type.clone(),
            None => match receiver.get_parameters().rtp_parameters.codecs.first() {
                Some(c) => c.rtp_codec.mime_type.clone(),
                None => return,
            },
        };
        // The core only negotiates the policy's codecs.
        let Some(codec) = Codec::from_mime(&mime) else {
            return;
        };
        let kind = match rtp_kind {
            RtpCodecKind::Audio => MediaKind::Audio,
            _ => MediaKind::Video,
        };
        let payload_types = m.codecs.payload_types.clone();
        let track = TrackId(NEXT_TRACK.fetch_add(1, Ordering::Relaxed));
        c.tracks.insert(init.track_id, track);
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.forwarder.add_track(track, publisher, kind);
        r.tracks.insert(
            track,
            Published {
                publisher,
                kind,
                codec,
                payload_types,
                conn: id,
                receiver: init.receiver_id,
                ssrcs: {
                    let mut ssrcs = [0; MAX_LAYERS];
                    ssrcs[usize::from(layer)] = media_ssrc;
                    ssrcs
                },
                rates: Default::default(),
                lower_bps: 0,
                lower: Default::default(),
            },
        );
        tracing::debug!(track = track.0, ?kind, "publishing");
        let others: Vec<u128> = r.members.iter().copied().filter(|k| *k != key).collect();
        for o in others {
            self.mark_dirty(o);
        }
    }

    /// A track the publisher stopped sending (renegotiated away).
    pub(super) fn unpublish_track(&mut self, id: ConnId, key: u128, core_track: &str) {
        let Some(track) = self
            .conns
            .get_mut(&id)
            .and_then(|c| c.tracks.remove(core_track))
        else {
            return;
        };
        let Some(room) = self.members.get(&key).map(|m| m.room) else {
            return;
        };
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        r.forwarder.remove_track(track);
        r.tracks.remove(&track);
        let others: Vec<u128> = r.members.iter().copied().filter(|k| *k != key).collect();
        for o in others {
            self.mark_dirty(o);
        }
    }
}
