//! Connections and participants: opening and closing them, their timers, servicing
//! what the core did (datagrams out, events, reads), joining and leaving.

use super::*;

/// A datagram the core wrote, as the endpoint's output.
pub(super) fn transmit(msg: TaggedBytesMut) -> Transmit {
    Transmit {
        proto: msg.transport.transport_protocol,
        from: msg.transport.local_addr,
        to: msg.transport.peer_addr,
        bytes: msg.message,
    }
}

/// Marks a connection for servicing this turn.
pub(super) fn touch(conns: &mut HashMap<ConnId, Conn>, touched: &mut Vec<ConnId>, id: ConnId) {
    if let Some(c) = conns.get_mut(&id) {
        if !c.queued {
            c.queued = true;
            touched.push(id);
        }
    }
}

/// Adds the candidates that arrived before the connection's remote description, and
/// answers the STUN checks that did; later ones are handled as they come.
pub(super) fn add_early_candidates(key: u128, c: &mut Conn) {
    c.described = true;
    for candidate in std::mem::take(&mut c.early) {
        if let Err(e) = c.pc.add_remote_candidate(candidate) {
            tracing::debug!(participant = key, error = %e, "early candidate refused");
        }
    }
    for check in std::mem::take(&mut c.early_checks) {
        let at = check.now;
        match c.pc.handle_read(check) {
            Ok(()) => {
                c.liveness.heard(at);
                c.last_heard = Some(at);
            }
            Err(e) => tracing::debug!(participant = key, error = %e, "early check refused"),
        }
    }
}

impl Endpoint {
    /// Handles the timers that are due.
    pub(super) fn timeouts(&mut self, now: Instant) {
        while let Some(Reverse((at, id))) = self.timers.peek().copied() {
            if at > now {
                break;
            }
            self.timers.pop();
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.deadline != Some(at) {
                continue;
            }
            c.deadline = None;
            if let Err(e) = c.pc.handle_timeout(now) {
                tracing::debug!(error = %e, "connection timer");
            }
            touch(&mut self.conns, &mut self.touched, id);
        }
    }

    /// Sends a connection's datagrams, handles its events and what it read, and keeps
    /// its timer.
    pub(super) fn service(&mut self, id: ConnId, now: Instant) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        let mut events = std::mem::take(&mut self.events);
        let mut reads = std::mem::take(&mut self.reads);
        c.queued = false;
        while let Some(msg) = c.pc.poll_write() {
            self.transmits.push_back(transmit(msg));
        }
        while let Some(e) = c.pc.poll_event() {
            events.push(e);
        }
        while let Some(m) = c.pc.poll_read() {
            reads.push(m.message);
        }
        // A deadline already past that handling did not move would spin the loop: the
        // core is asked again a millisecond later at the earliest (as the `webrtc`
        // crate's driver does).
        let deadline = c.pc.poll_timeout().map(|at| at.max(now + MIN_TIMER_STEP));
        if deadline != c.deadline {
            c.deadline = deadline;
            if let Some(at) = deadline {
                self.timers.push(Reverse((at, id)));
            }
        }
        let (key, leg) = (c.participant, c.leg);
        for e in events.drain(..) {
            self.on_event(id, key, leg, e, now);
        }
        for m in reads.drain(..) {
            self.on_read(id, key, leg, m, now);
        }
        self.events = events;
        self.reads = reads;
    }

    pub(super) fn on_event(
        &mut self,
        id: ConnId,
        key: u128,
        leg: MediaLeg,
        event: RTCPeerConnectionEvent,
        now: Instant,
    ) {
        match event {
            RTCPeerConnectionEvent::OnConnectionStateChangeEvent(state) => {
                tracing::debug!(participant = key, ?leg, %state, "connection state");
                let mut back = false;
                if state == RTCPeerConnectionState::Connected {
                    if let Some(c) = self.conns.get_mut(&id) {
                        c.liveness.connected(now);
                        back = std::mem::take(&mut c.ice_restarted);
                    }
                }
                self.connection_state(key, leg, state, now);
                // A subscriber leg connected again after an ICE restart: its path was lost
                // or moved (its browser restarts only then).
                if back && leg == MediaLeg::Subscriber {
                    self.back_after_outage(key, leg, now);
                }
            }
            RTCPeerConnectionEvent::OnIceConnectionStateChangeEvent(state) => {
                let Some(c) = self.conns.get_mut(&id) else {
                    return;
                };
                match state {
                    RTCIceConnectionState::Connected | RTCIceConnectionState::Completed => {
                        c.ice_connected = true;
                        for msg in std::mem::take(&mut c.early_dtls) {
                            if let Err(e) = c.pc.handle_read(msg) {
                                tracing::debug!(participant = key, error = %e, "early DTLS refused");
                            }
                        }
                        touch(&mut self.conns, &mut self.touched, id);
                    }
                    RTCIceConnectionState::New | RTCIceConnectionState::Checking => {
                        c.ice_connected = false;
                    }
                    _ => {}
                }
            }
            RTCPeerConnectionEvent::OnTrack(RTCTrackEvent::OnOpen(init))
                if leg == MediaLeg::Publisher =>
            {
                self.publish_track(id, key, init);
            }
            RTCPeerConnectionEvent::OnTrack(
                RTCTrackEvent::OnClose(track) | RTCTrackEvent::OnClosing(track),
            ) if leg == MediaLeg::Publisher => self.unpublish_track(id, key, &track),
            _ => {}
        }
    }

    pub(super) fn connection_state(
        &mut self,
        key: u128,
        leg: MediaLeg,
        state: RTCPeerConnectionState,
        now: Instant,
    ) {
        match leg {
            MediaLeg::Publisher => {
                let connected = match state {
                    RTCPeerConnectionState::Connected => true,
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => false,
                    _ => return,
                };
                if self.members.contains_key(&key) {
                    self.events_out.push_back(EngineEvent::Connection {
                        participant: key,
                        connected,
                    });
                }
            }
            MediaLeg::Subscriber => {
                let Some(m) = self.members.get_mut(&key) else {
                    return;
                };
                m.subscriber_state = state;
                if state == RTCPeerConnectionState::Connected {
                    self.route_new_tracks(key, now);
                }
            }
        }
    }

    pub(super) fn on_read(
        &mut self,
        id: ConnId,
        key: u128,
        leg: MediaLeg,
        message: RTCMessage,
        now: Instant,
    ) {
        match (leg, message) {
            (MediaLeg::Publisher, RTCMessage::RtpPacket(track, packet)) => {
                let Some(track) = self.conns.get(&id).and_then(|c| c.tracks.get(&track)) else {
                    return;
                };
                let track = *track;
                let Some(room) = self.members.get(&key).map(|m| m.room) else {
                    return;
                };
                self.forward(room, track, packet, now);
            }
            (MediaLeg::Subscriber, RTCMessage::RtcpPacket(track, packets)) => {
                // The subscriber's local tracks are named `t<TrackId>`.
                let Some(track) = track
                    .strip_prefix('t')
                    .and_then(|n| n.parse().ok())
                    .map(TrackId)
                else {
                    return;
                };
                self.subscriber_rtcp(key, track, &packets, now);
            }
            _ => {}
        }
    }

    /// A new connection with its host candidates (UDP, and passive TCP with ICE-TCP).
    pub(super) fn open_conn(
        &mut self,
        role: Role,
        participant: u128,
        leg: MediaLeg,
        now: Instant,
    ) -> Result<ConnId, EngineError> {
        // The core makes the ICE credentials (new ones at each ICE restart); STUN is
        // routed by the one each local description carries (follow_local_ufrag).
        let (mut pc, cells) = sansio_connection(role, now)?;
        let mut hosts = vec![("udp", self.udp_addr, Default::default())];
        if let Some(tcp) = self.tcp_addr {
            hosts.push(("tcp", tcp, rtc::ice::tcp_type::TcpType::Passive));
        }
        for (network, addr, tcp_type) in hosts {
            let candidate = CandidateHostConfig {
                base_config: CandidateConfig {
                    network: network.to_owned(),
                    address: addr.ip().to_string(),
                    port: addr.port(),
                    component: 1,
                    ..Default::default()
                },
                tcp_type,
            }
            .new_candidate_host()
            .map_err(webrtc_err)?;
            let init = RTCIceCandidate::from(&candidate)
                .to_json()
                .map_err(webrtc_err)?;
            pc.add_local_candidate(init).map_err(webrtc_err)?;
        }
        // End of candidates: the SFU has no others.
        pc.add_local_candidate(RTCIceCandidateInit::default())
            .map_err(webrtc_err)?;
        let id = ConnId(self.next_conn);
        self.next_conn += 1;
        self.conns.insert(
            id,
            Conn {
                pc,
                participant,
                leg,
                ufrag: String::new(),
                addrs: Vec::new(),
                deadline: None,
                queued: false,
                described: false,
                early: Vec::new(),
                early_checks: Vec::new(),
                ice_connected: false,
                early_dtls: Vec::new(),
                tracks: HashMap::new(),
                liveness: Liveness::default(),
                estimate: cells.estimate,
                downstream_loss: cells.downstream_loss,
                repair: cells.repair,
                playout: cells.playout,
                next_link_sample: now,
                received_bytes: 0,
                last_heard: None,
                ice_restarted: false,
                _live: connection_guard(),
            },
        );
        touch(&mut self.conns, &mut self.touched, id);
        Ok(id)
    }

    /// Closes a connection (its last datagrams go out) and forgets its routes.
    pub(super) fn close_conn(&mut self, id: ConnId) {
        let Some(mut c) = self.conns.remove(&id) else {
            return;
        };
        let _ = c.pc.close();
        while let Some(msg) = c.pc.poll_write() {
            self.transmits.push_back(transmit(msg));
        }
        self.by_ufrag.remove(&c.ufrag);
        for a in c.addrs {
            if self.by_addr.get(&a) == Some(&id) {
                self.by_addr.remove(&a);
                if a.0 == TransportProtocol::TCP {
                    self.closed_paths.push_back(a.1);
                }
            }
        }
    }

    pub(super) fn join(&mut self, room: u128, key: u128, now: Instant) -> Result<(), EngineError> {
        if self.members.contains_key(&key) {
            return Err(EngineError::AlreadyJoined);
        }
        let publisher = self.open_conn(Role::ServerReceiving, key, MediaLeg::Publisher, now)?;
        let subscriber = match self.open_conn(Role::ServerSending, key, MediaLeg::Subscriber, now) {
            Ok(c) => c,
            Err(e) => {
                self.close_conn(publisher);
                return Err(e);
            }
        };
        let id = PeerId(self.next_peer);
        self.next_peer += 1;
        self.rooms.entry(room).or_default().members.push(key);
        self.members.insert(
            key,
            Member {
                id,
                room,
                publisher,
                subscriber,
                subscribed: HashMap::new(),
                negotiation: Negotiation::Idle,
                dirty: false,
                ice_restart: false,
                subscriber_state: RTCPeerConnectionState::New,
                state: MediaState::default(),
                codecs: Codecs::new(),
                uplink: Uplink::default(),
                video_off: false,
                downlink_lossy_until: None,
                playout: crate::engine::playout::Settle::default(),
                video_share: None,
                video_carried: None,
                probe: None,
                queue_watch: Default::default(),
                _live: LiveGuard::new(&LIVE_PARTICIPANTS),
            },
        );
        // What everyone already here sends, for the newcomer's tiles.
        if let Some(r) = self.rooms.get(&room) {
            for other in r.members.iter().filter(|k| **k != key) {
                if let Some(o) = self.members.get(other) {
                    self.events_out.push_back(EngineEvent::PeerState {
                        participant: key,
                        stream: stream_id(o.id),
                        state: o.state,
                    });
                }
            }
        }
        self.mark_dirty(key);
        Ok(())
    }

    pub(super) fn leg(
        &mut self,
        key: u128,
        leg: MediaLeg,
    ) -> Result<(ConnId, &mut Conn), EngineError> {
        let m = self
            .members
            .get(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        let id = match leg {
            MediaLeg::Publisher => m.publisher,
            MediaLeg::Subscriber => m.subscriber,
        };
        let c = self
            .conns
            .get_mut(&id)
            .ok_or(EngineError::UnknownParticipant)?;
        Ok((id, c))
    }

    pub(super) fn candidate(
        &mut self,
        key: u128,
        leg: MediaLeg,
        candidate: RTCIceCandidateInit,
    ) -> Result<(), EngineError> {
        let (id, c) = self.leg(key, leg)?;
        if candidate.candidate.is_empty() {
            return Ok(());
        }
        if !c.described {
            if c.early.len() >= MAX_EARLY_CANDIDATES {
                return Err(EngineError::BadCandidate("too many candidates".into()));
            }
            c.early.push(candidate);
            return Ok(());
        }
        c.pc.add_remote_candidate(candidate)
            .map_err(|e| EngineError::BadCandidate(e.to_string()))?;
        touch(&mut self.conns, &mut self.touched, id);
        Ok(())
    }

    pub(super) fn leave(&mut self, key: u128) -> Result<(), EngineError> {
        let m = self
            .members
            .remove(&key)
            .ok_or(EngineError::UnknownParticipant)?;
        if let Some(r) = self.rooms.get_mut(&m.room) {
            r.members.retain(|k| *k != key);
            for t in r.forwarder.remove_peer(m.id) {
                r.tracks.remove(&t);
            }
            r.tracks.retain(|_, t| t.publisher != m.id);
            let others = r.members.clone();
            if others.is_empty() {
                self.rooms.remove(&m.room);
            }
            for o in others {
                self.mark_dirty(o);
            }
            // Someone who could not decode a codec may have left.
            self.reconcile_codecs(m.room);
        }
        self.close_conn(m.publisher);
        self.close_conn(m.subscriber);
        Ok(())
    }
}

/// STUN for a connection is routed by the ICE username fragment of its last local
/// description: set at its first, and changed by an ICE restart (the old one is forgotten:
/// the core no longer answers to it). Whether it was an ICE restart.
pub(super) fn follow_local_ufrag(
    by_ufrag: &mut HashMap<String, ConnId>,
    id: ConnId,
    c: &mut Conn,
    sdp: &str,
) -> bool {
    let Some(ufrag) = crate::sdp::ice_ufrag(sdp) else {
        return false;
    };
    if c.ufrag == ufrag {
        return false;
    }
    let restarted = !c.ufrag.is_empty();
    if restarted {
        tracing::debug!(participant = c.participant, leg = ?c.leg, "ICE restarted");
        c.ice_restarted = true;
        if by_ufrag.get(&c.ufrag) == Some(&id) {
            by_ufrag.remove(&c.ufrag);
        }
    }
    c.ufrag = ufrag.to_owned();
    by_ufrag.insert(c.ufrag.clone(), id);
    restarted
}
