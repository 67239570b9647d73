//! Routing what arrives to its connection: by source address, or by the ICE username of
//! a STUN check.

use super::*;

/// The ICE username fragment a STUN request names as the receiver's (`ours:theirs`).
pub(super) fn stun_local_ufrag(data: &[u8]) -> Option<String> {
    let mut m = rtc::stun::message::Message::new();
    m.unmarshal_binary(data).ok()?;
    let username = m.get(rtc::stun::attributes::ATTR_USERNAME).ok()?;
    let username = std::str::from_utf8(&username).ok()?;
    Some(username.split(':').next()?.to_owned())
}

/// Whether a datagram is a DTLS record (first byte 20 to 63, RFC 7983), as opposed to
/// STUN, SRTP/SRTCP or TURN channel data.
pub(super) fn is_dtls(data: &[u8]) -> bool {
    matches!(data.first(), Some(20..=63))
}

impl Endpoint {
    /// Hands one datagram (or ICE-TCP frame) to its connection.
    pub(super) fn datagram(
        &mut self,
        proto: TransportProtocol,
        local: SocketAddr,
        peer: SocketAddr,
        data: BytesMut,
        now: Instant,
    ) {
        let stun = rtc::stun::message::is_stun_message(&data);
        let id = if stun {
            match self.stun_route(proto, peer, &data) {
                Some(id) => id,
                None => return,
            }
        } else {
            match self.by_addr.get(&(proto, peer)) {
                Some(id) => *id,
                None => return,
            }
        };
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        c.received_bytes += data.len() as u64;
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: local,
                peer_addr: peer,
                ecn: None,
                transport_protocol: proto,
            },
            message: data,
        };
        if stun && !c.described {
            // Before its remote description the core cannot answer it: kept until then,
            // the newest from each address.
            let from = |m: &TaggedBytesMut| {
                (m.transport.transport_protocol, m.transport.peer_addr) == (proto, peer)
            };
            if let Some(old) = c.early_checks.iter_mut().find(|m| from(m)) {
                *old = msg;
            } else if c.early_checks.len() < EARLY_CHECKS {
                c.early_checks.push(msg);
            }
            return;
        }
        if !stun && !c.ice_connected && is_dtls(&msg.message) {
            // The core would drop it before its ICE has chosen a path.
            if c.early_dtls.len() < EARLY_DTLS {
                c.early_dtls.push(msg);
            }
            return;
        }
        let mut back = None;
        match c.pc.handle_read(msg) {
            // Accepted, so authenticated (a STUN check with its credentials, DTLS, SRTP).
            Ok(()) => {
                if c.liveness.heard(now) == Some(liveness::Change::Heard) {
                    tracing::debug!(participant = c.participant, leg = ?c.leg, "heard again");
                }
                let gap = c
                    .last_heard
                    .is_some_and(|at| now.saturating_duration_since(at) >= OUTAGE);
                if gap && c.leg == MediaLeg::Publisher {
                    back = Some((c.participant, c.leg));
                }
                c.last_heard = Some(now);
            }
            Err(e) => tracing::trace!(error = %e, "datagram refused"),
        }
        touch(&mut self.conns, &mut self.touched, id);
        if let Some((key, leg)) = back {
            self.back_after_outage(key, leg, now);
        }
    }

    /// The connection a STUN message is for: the one its username names (which then
    /// owns the source address), else the one the address already belongs to.
    pub(super) fn stun_route(
        &mut self,
        proto: TransportProtocol,
        peer: SocketAddr,
        data: &[u8],
    ) -> Option<ConnId> {
        let key = (proto, peer);
        let named = stun_local_ufrag(data).and_then(|u| self.by_ufrag.get(&u).copied());
        let Some(id) = named else {
            return self.by_addr.get(&key).copied();
        };
        if self.by_addr.get(&key) != Some(&id) {
            let c = self.conns.get_mut(&id)?;
            // The oldest route gives way (a browser that moved networks, a closed stream).
            if c.addrs.len() >= MAX_ADDRS_PER_CONN {
                let oldest = c.addrs.remove(0);
                if self.by_addr.get(&oldest) == Some(&id) {
                    self.by_addr.remove(&oldest);
                }
            }
            c.addrs.push(key);
            if let Some(old) = self.by_addr.insert(key, id) {
                if let Some(o) = self.conns.get_mut(&old) {
                    o.addrs.retain(|a| *a != key);
                }
            }
        }
        Some(id)
    }
}
