//! Offers and answers: the publisher's offer answered with the codecs its room can
//! receive, publishers asked to offer again when that changes, each subscriber
//! connection reconciled with the room's tracks, and media state passed on.

use super::*;

/// The video codecs a subscriber's track offers, `current` (what its publisher sends now)
/// first: every policy codec the subscriber can take, so that a publisher that switches
/// codec (see [`crate::codec`]) reaches it without a new negotiation. Empty when it can
/// take none.
fn subscriber_video_codecs(current: Codec, can_take: CodecSet) -> Vec<Codec> {
    std::iter::once(current)
        .chain(Codec::VIDEO.into_iter().filter(|c| *c != current))
        .filter(|c| can_take.contains(*c))
        .collect()
}

/// Lets the track of `sender` be sent in `codecs` (in that order).
pub(super) fn offer_codecs(
    pc: &mut RTCPeerConnection,
    sender: RTCRtpSenderId,
    codecs: &[Codec],
) -> Result<(), rtc::shared::error::Error> {
    let codecs = codecs
        .iter()
        .map(|c| codec_parameters(*c, c.payload_types().0, c.fmtp()))
        .collect();
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    for id in transceivers {
        if let Some(mut t) = pc.rtp_transceiver(id) {
            if t.sender() == Some(sender) {
                return t.set_codec_preferences(codecs);
            }
        }
    }
    Ok(())
}

/// A track the SFU sends on a subscriber connection, in stream `stream` with id `id`,
/// offered `codecs` in that order (the first is the track's own; not empty): its sender.
/// The core reuses the transceiver (m-line) of a track removed earlier, so a long
/// consultation with many joins and leaves does not grow its SDP forever.
fn add_sent_track(
    pc: &mut RTCPeerConnection,
    (stream, id): (String, String),
    kind: RtpCodecKind,
    ssrc: u32,
    codecs: &[Codec],
) -> Result<RTCRtpSenderId, rtc::shared::error::Error> {
    let first = codecs[0];
    let (payload_type, _) = first.payload_types();
    let codec = RTCRtpCodec {
        rtcp_feedback: vec![],
        ..codec_parameters(first, payload_type, first.fmtp()).rtp_codec
    };
    let sender = pc.add_track(media_track(stream, id, kind, ssrc, codec))?;
    offer_codecs(pc, sender, codecs)?;
    Ok(sender)
}

/// The media id (`mid`) of the transceiver that holds `sender`, once negotiated.
pub(super) fn sender_mid(pc: &mut RTCPeerConnection, sender: RTCRtpSenderId) -> Option<String> {
    transceiver_mid(pc, Some(sender), None)
}

/// The media id (`mid`) of the transceiver that holds `receiver`, once negotiated.
pub(super) fn receiver_mid(
    pc: &mut RTCPeerConnection,
    receiver: RTCRtpReceiverId,
) -> Option<String> {
    transceiver_mid(pc, None, Some(receiver))
}

fn transceiver_mid(
    pc: &mut RTCPeerConnection,
    sender: Option<RTCRtpSenderId>,
    receiver: Option<RTCRtpReceiverId>,
) -> Option<String> {
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    transceivers.into_iter().find_map(|id| {
        let t = pc.rtp_transceiver(id)?;
        let holds = (sender.is_some() && t.sender() == sender)
            || (receiver.is_some() && t.receiver() == receiver);
        if holds { t.mid().clone() } else { None }
    })
}

/// Sets the codecs (in order) the transceiver of media section `mid` answers with.
pub(super) fn prefer_codecs(
    pc: &mut RTCPeerConnection,
    mid: &str,
    codecs: Vec<RTCRtpCodecParameters>,
) -> Result<(), rtc::shared::error::Error> {
    let transceivers: Vec<_> = pc.get_transceivers().collect();
    for id in transceivers {
        if let Some(mut t) = pc.rtp_transceiver(id) {
            if t.mid().as_deref() == Some(mid) {
                return t.set_codec_preferences(codecs);
            }
        }
    }
    Ok(())
}

impl Endpoint {
    pub(super) fn mark_dirty(&mut self, key: u128) {
        if let Some(m) = self.members.get_mut(&key) {
            m.dirty = true;
            self.dirty.push(key);
        }
    }

    /// Reconciles a participant's subscriber connection with the room's tracks and
    /// offers, unless an offer is already out (its answer brings the next round).
    pub(super) fn negotiate(&mut self, key: u128, now: Instant) {
        let Self {
            members,
            conns,
            rooms,
            touched,
            announced,
            by_ufrag,
            events_out,
            ..
        } = self;
        let Some(m) = members.get_mut(&key) else {
            return;
        };
        // An offer is out: its answer brings the next round.
        if m.negotiation != Negotiation::Idle {
            return;
        }
        m.dirty = false;
        let (Some(r), Some(c)) = (rooms.get_mut(&m.room), conns.get_mut(&m.subscriber)) else {
            return;
        };
        let mut changed = false;
        let gone: Vec<TrackId> = m
            .subscribed
            .keys()
            .filter(|t| !r.tracks.contains_key(t))
            .copied()
            .collect();
        for t in gone {
            if let Some(s) = m.subscribed.remove(&t) {
                r.forwarder.unsubscribe(t, m.id);
                let _ = c.pc.remove_track(s.sender);
                changed = true;
            }
        }
        // What its browser can decode: what it offered to publish, and what its answers on
        // this connection accepted (the connection keeps to the first answer's codecs).
        let can_take = m
            .codecs
            .receives
            .intersect(m.codecs.accepts_video.unwrap_or_else(CodecSet::all_video));
        let mut probe_codecs: Option<Vec<Codec>> = None;
        for (t, p) in &r.tracks {
            if p.publisher == m.id || m.subscribed.contains_key(t) {
                continue;
            }
            let codecs = match p.kind {
                // Opus, and RED around it, whichever the publisher sends (a subscriber
                // that does not take RED gets its primary Opus); once its connection has
                // answered audio, only what that answer took.
                MediaKind::Audio => [Codec::Opus, Codec::Red]
                    .into_iter()
                    .filter(|c| m.codecs.accepts_audio.is_none_or(|a| a.contains(*c)))
                    .collect(),
                MediaKind::Video => {
                    let current = r.forwarder.codec(*t).unwrap_or(p.codec);
                    subscriber_video_codecs(current, can_take)
                }
            };
            if codecs.is_empty() {
                tracing::debug!(
                    participant = key,
                    track = t.0,
                    "decodes no codec of this track: not offered"
                );
                continue;
            };
            let ssrc = NEXT_SSRC.fetch_add(1, Ordering::Relaxed);
            let rtp_kind = match p.kind {
                MediaKind::Audio => RtpCodecKind::Audio,
                MediaKind::Video => RtpCodecKind::Video,
            };
            let names = (stream_id(p.publisher), format!("t{}", t.0));
            match add_sent_track(&mut c.pc, names, rtp_kind, ssrc, &codecs) {
                Ok(sender) => {
                    // The probe track (`probe`) comes with the connection's first video,
                    // offered the same codecs.
                    if m.probe.is_none() && p.kind == MediaKind::Video && probe_codecs.is_none() {
                        probe_codecs = Some(codecs.clone());
                    }
                    m.subscribed.insert(
                        *t,
                        Subscribed {
                            sender,
                            ssrc,
                            kind: p.kind,
                            payload_types: Vec::new(),
                            routed: false,
                            layers: LayerChoice::default(),
                        },
                    );
                    changed = true;
                }
                Err(e) => tracing::warn!(error = %e, "could not add a track for a subscriber"),
            }
        }
        if let Some(codecs) = probe_codecs {
            let names = (
                probe::PROBE_STREAM.to_owned(),
                probe::PROBE_STREAM.to_owned(),
            );
            match add_sent_track(
                &mut c.pc,
                names,
                RtpCodecKind::Video,
                probe::PROBE_SSRC,
                &codecs,
            ) {
                Ok(sender) => {
                    m.probe = Some(probe::ProbeTrack::new(sender));
                    changed = true;
                }
                Err(e) => tracing::warn!(error = %e, "could not add the probe track"),
            }
        }
        // An ICE restart the browser asked for: this offer carries new credentials.
        if std::mem::take(&mut m.ice_restart) {
            c.pc.restart_ice();
            changed = true;
        }
        // Tracks added by a negotiation that failed are still unrouted: offer them again.
        if !changed && m.subscribed.values().all(|s| s.routed) {
            return;
        }
        let offered =
            c.pc.create_offer(None)
                .and_then(|offer| c.pc.set_local_description(now, offer))
                .map_err(webrtc_err)
                .and_then(|()| {
                    c.pc.local_description()
                        .map(|d| d.sdp)
                        .ok_or_else(|| EngineError::WebRtc("no local description".into()))
                });
        match offered {
            Ok(sdp) => {
                if follow_local_ufrag(by_ufrag, m.subscriber, c, &sdp) {
                    // New credentials: the browser checks them as soon as it has answered,
                    // before its answer is here; those checks wait for it.
                    c.described = false;
                }
                let sdp = crate::sdp::with_receiver_rtt(&sdp);
                let sdp = match announced {
                    Some((private, public)) => crate::sdp::announce(&sdp, *private, *public),
                    None => sdp,
                };
                tracing::debug!(
                    participant = key,
                    tracks = m.subscribed.len(),
                    "subscriber offer"
                );
                events_out.push_back(EngineEvent::SubscriberOffer {
                    participant: key,
                    sdp,
                });
                m.negotiation = Negotiation::Offered(now);
            }
            Err(e) => {
                tracing::info!(participant = key, error = %e, "subscriber offer failed; retrying");
                m.negotiation = Negotiation::Retry(now + RETRY_AFTER);
            }
        }
        touch(conns, touched, m.subscriber);
    }

    /// Routes a participant's newly negotiated tracks once its subscriber connection is
    /// up and no offer is out, asking their publishers for a keyframe.
    pub(super) fn route_new_tracks(&mut self, key: u128, now: Instant) {
        let Self {
            members,
            conns,
            rooms,
            touched,
            counters,
            ..
        } = self;
        let Some(m) = members.get_mut(&key) else {
            return;
        };
        if m.subscriber_state != RTCPeerConnectionState::Connected
            || m.negotiation != Negotiation::Idle
        {
            return;
        }
        let (Some(r), Some(c)) = (rooms.get_mut(&m.room), conns.get_mut(&m.subscriber)) else {
            return;
        };
        let _ = c;
        let mut requests = Vec::new();
        for (t, s) in m.subscribed.iter_mut().filter(|(_, s)| !s.routed) {
            // The answer refused every codec of it (a browser that cannot decode any):
            // nothing can be sent, so it stays unrouted.
            if s.payload_types.is_empty() {
                continue;
            }
            let route = Route {
                conn: m.subscriber,
                sender: s.sender,
                ssrc: s.ssrc,
                payload_types: s.payload_types.clone(),
            };
            s.routed = true;
            tracing::debug!(participant = key, track = t.0, "routed");
            let accepts: CodecSet = s.payload_types.iter().map(|(c, _)| *c).collect();
            let subscribed = r.forwarder.subscribe(*t, m.id, route, now);
            let accepted = match s.kind {
                MediaKind::Video => r.forwarder.accept_codecs(*t, m.id, accepts, now),
                MediaKind::Audio => None,
            };
            if m.video_off && s.kind == MediaKind::Video {
                // Sound only for this participant: the video waits for it to ask again.
                r.forwarder.pause(*t, m.id);
                continue;
            }
            requests.extend(subscribed.or(accepted));
        }
        for req in requests {
            request_keyframe(conns, touched, counters, r, req, now);
        }
    }

    pub(super) fn subscriber_answer(
        &mut self,
        key: u128,
        answer: String,
        now: Instant,
    ) -> Result<(), EngineError> {
        let m = self
            .members
            .get_mut(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        if !matches!(m.negotiation, Negotiation::Offered(_)) {
            return Err(EngineError::NoOfferPending);
        }
        let id = m.subscriber;
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(EngineError::UnknownParticipant)?;
        let sections = crate::sdp::media_codecs(&answer);
        let applied = RTCSessionDescription::answer(answer)
            .and_then(|desc| c.pc.set_remote_description(now, desc))
            .map_err(|e| EngineError::BadSdp(e.to_string()))
            .and_then(|()| sections.map_err(EngineError::BadSdp));
        let sections = match applied {
            Ok(sections) => sections,
            Err(e) => {
                m.negotiation = Negotiation::Retry(now + RETRY_AFTER);
                return Err(e);
            }
        };
        if !sections.is_empty() {
            c.liveness.expect(now);
        }
        // What the browser accepted of each track: the codecs (and payload types) of its
        // media section; of each kind, the first answer's are what the connection keeps.
        for (video, accepts) in [
            (true, &mut m.codecs.accepts_video),
            (false, &mut m.codecs.accepts_audio),
        ] {
            if accepts.is_none() && sections.iter().any(|s| s.video == video) {
                *accepts = Some(
                    sections
                        .iter()
                        .filter(|s| s.video == video)
                        .flat_map(|s| s.codecs.iter().map(|(_, c)| *c))
                        .collect(),
                );
            }
        }
        for (t, s) in m.subscribed.iter_mut() {
            let Some(mid) = sender_mid(&mut c.pc, s.sender) else {
                tracing::debug!(participant = key, track = t.0, "no media section yet");
                continue;
            };
            if let Some(section) = sections.iter().find(|x| x.mid == mid) {
                s.payload_types = section.codecs.iter().map(|(pt, c)| (*c, *pt)).collect();
                tracing::debug!(participant = key, track = t.0, mid, accepted = ?s.payload_types, "answered");
            }
        }
        if let Some(probe) = m.probe.as_mut() {
            let section = sender_mid(&mut c.pc, probe.sender)
                .and_then(|mid| sections.iter().find(|x| x.mid == mid));
            if let Some(section) = section {
                probe.payload_type = section.codecs.first().map(|(pt, _)| *pt);
            }
        }
        add_early_candidates(key, c);
        tracing::debug!(participant = key, "subscriber answer applied");
        m.negotiation = Negotiation::Idle;
        let again = m.dirty;
        touch(&mut self.conns, &mut self.touched, id);
        self.route_new_tracks(key, now);
        if again {
            self.mark_dirty(key);
        }
        Ok(())
    }

    /// The browser's (first or renewed) offer for its publisher connection. Its video is
    /// answered with the codecs everyone else in the room can receive, in the browser's
    /// order ([`publish_codecs`]); what it offered is what it can receive, which may make
    /// other publishers switch ([`Self::reconcile_codecs`]).
    pub(super) fn publish(
        &mut self,
        key: u128,
        offer: String,
        now: Instant,
    ) -> Result<String, EngineError> {
        let sections = crate::sdp::media_codecs(&offer).map_err(EngineError::BadSdp)?;
        let room = self
            .members
            .get(&key)
            .ok_or(EngineError::UnknownParticipant)?
            .room;
        let receivable = self.receivable_by_others(room, key);
        let (id, c) = self.leg(key, MediaLeg::Publisher)?;
        let desc =
            RTCSessionDescription::offer(offer).map_err(|e| EngineError::BadSdp(e.to_string()))?;
        c.pc.set_remote_description(now, desc)
            .map_err(|e| EngineError::BadSdp(e.to_string()))?;
        add_early_candidates(key, c);
        c.liveness.expect(now);
        let mut offered: Option<Vec<Codec>> = None;
        let mut receives = CodecSet::EMPTY;
        let mut sends = None;
        // Audio in RED where the browser offers it (listed first, or it sends plain Opus).
        for section in sections.iter().filter(|s| !s.video) {
            let pt = |codec| {
                section
                    .codecs
                    .iter()
                    .find(|(_, c)| *c == codec)
                    .map(|(pt, _)| *pt)
            };
            if let (Some(red), Some(opus)) = (pt(Codec::Red), pt(Codec::Opus)) {
                let params = vec![
                    codec_parameters(Codec::Red, red, &format!("{opus}/{opus}")),
                    codec_parameters(Codec::Opus, opus, Codec::Opus.fmtp()),
                ];
                prefer_codecs(&mut c.pc, &section.mid, params).map_err(webrtc_err)?;
            }
        }
        for section in sections.iter().filter(|s| s.video) {
            let mut order = Vec::new();
            for (_, codec) in &section.codecs {
                receives.insert(*codec);
                if !order.contains(codec) {
                    order.push(*codec);
                }
            }
            let chosen = publish_codecs(&order, receivable);
            sends = sends.or(chosen.first().copied());
            let params = chosen
                .iter()
                .filter_map(|codec| {
                    let (pt, _) = section.codecs.iter().find(|(_, c)| c == codec)?;
                    Some(codec_parameters(*codec, *pt, codec.fmtp()))
                })
                .collect();
            if !order.is_empty() {
                prefer_codecs(&mut c.pc, &section.mid, params).map_err(webrtc_err)?;
            }
            offered.get_or_insert(order);
        }
        let answer = c.pc.create_answer(None).map_err(webrtc_err)?;
        c.pc.set_local_description(now, answer)
            .map_err(webrtc_err)?;
        let sdp =
            c.pc.local_description()
                .map(|d| d.sdp)
                .ok_or_else(|| EngineError::WebRtc("no local description".into()))?;
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(EngineError::UnknownParticipant)?;
        follow_local_ufrag(&mut self.by_ufrag, id, c, &sdp);
        touch(&mut self.conns, &mut self.touched, id);
        let payload_types: Vec<(u8, Codec)> = sections
            .iter()
            .flat_map(|s| s.codecs.iter().copied())
            .collect();
        if let Some(m) = self.members.get_mut(&key) {
            let codecs = &mut m.codecs;
            if let Some(offered) = offered {
                codecs.offered = offered;
                codecs.receives = receives;
            }
            codecs.sends = sends;
            codecs.asked = None;
            codecs.payload_types = payload_types.clone();
            if let Some(r) = self.rooms.get_mut(&room) {
                for t in r.tracks.values_mut().filter(|t| t.publisher == m.id) {
                    t.payload_types = payload_types.clone();
                }
            }
        }
        self.reconcile_codecs(room);
        Ok(match self.announced {
            Some((private, public)) => crate::sdp::announce(&sdp, private, public),
            None => sdp,
        })
    }

    /// The video codecs every participant of `room` but `key` can receive.
    pub(super) fn receivable_by_others(&self, room: u128, key: u128) -> CodecSet {
        let Some(r) = self.rooms.get(&room) else {
            return CodecSet::all_video();
        };
        r.members
            .iter()
            .filter(|k| **k != key)
            .filter_map(|k| self.members.get(k))
            .fold(CodecSet::all_video(), |set, m| {
                set.intersect(m.codecs.receives)
            })
    }

    /// Asks each publisher of `room` whose video codec is no longer the one it should send
    /// (someone joined who cannot decode it, or left and it can have its own choice back)
    /// for a new offer; its answer then names the right one.
    pub(super) fn reconcile_codecs(&mut self, room: u128) {
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        let mut ask = Vec::new();
        for key in &r.members {
            let Some(m) = self.members.get(key) else {
                continue;
            };
            if m.codecs.offered.is_empty() {
                continue;
            }
            let receivable = self.receivable_by_others(room, *key);
            let want = publish_codecs(&m.codecs.offered, receivable)
                .first()
                .copied();
            if want != m.codecs.sends && want != m.codecs.asked {
                ask.push((*key, want));
            }
        }
        for (key, want) in ask {
            if let Some(m) = self.members.get_mut(&key) {
                tracing::debug!(participant = key, ?want, sends = ?m.codecs.sends, "publisher codec to change");
                m.codecs.asked = want;
                self.events_out
                    .push_back(EngineEvent::PublishRenegotiate { participant: key });
            }
        }
    }

    /// A participant's browser lost its path to the SFU: its subscriber connection is
    /// offered again with new ICE credentials as soon as no offer is out.
    pub(super) fn restart_ice(&mut self, key: u128) -> Result<(), EngineError> {
        let m = self
            .members
            .get_mut(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        m.ice_restart = true;
        // An offer still out went where the browser lost it (its path, or its websocket,
        // was gone; messages on one websocket keep their order, so no answer is coming):
        // the restarting offer replaces it.
        if matches!(m.negotiation, Negotiation::Offered(_)) {
            m.negotiation = Negotiation::Idle;
        }
        self.mark_dirty(key);
        Ok(())
    }

    /// A participant's browser says what it sends: everyone else in its room is told.
    pub(super) fn media_state(&mut self, key: u128, state: MediaState) -> Result<(), EngineError> {
        let m = self
            .members
            .get_mut(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        m.state = state;
        let (room, stream) = (m.room, stream_id(m.id));
        let Some(r) = self.rooms.get(&room) else {
            return Ok(());
        };
        for o in r.members.iter().filter(|k| **k != key) {
            if self.members.contains_key(o) {
                self.events_out.push_back(EngineEvent::PeerState {
                    participant: *o,
                    stream: stream.clone(),
                    state,
                });
            }
        }
        Ok(())
    }
}
