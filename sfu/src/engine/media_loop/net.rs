//! The loop's sockets: binding them, sending, and routing what arrives to its
//! connection (by source address, or by the ICE username of a STUN check).

use super::*;

/// Binds up to `wanted` loops' sockets as configured: ports of the range in turn (UDP,
/// and TCP on the same port number with ICE-TCP), or any free port. At least one.
pub(in crate::engine) fn bind(
    config: &EngineConfig,
    wanted: usize,
) -> Result<Vec<Sockets>, EngineError> {
    let ip = config.bind_ip;
    let mut out = Vec::with_capacity(wanted);
    let one = |port: u16| -> Option<Sockets> {
        let udp = std::net::UdpSocket::bind((ip, port)).ok()?;
        let port = udp.local_addr().ok()?.port();
        let tcp = if config.ice_tcp {
            Some(std::net::TcpListener::bind((ip, port)).ok()?)
        } else {
            None
        };
        udp.set_nonblocking(true).ok()?;
        let sock = socket2::SockRef::from(&udp);
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
        if let Some(t) = &tcp {
            t.set_nonblocking(true).ok()?;
        }
        Some(Sockets { udp, tcp })
    };
    match config.ports {
        Some((first, last)) => {
            for port in first..=last {
                if out.len() == wanted {
                    break;
                }
                if let Some(s) = one(port) {
                    out.push(s);
                }
            }
        }
        None => {
            // Port 0 for UDP; TCP then wants the same number, which may be taken.
            for _ in 0..wanted * 4 {
                if out.len() == wanted {
                    break;
                }
                if let Some(s) = one(0) {
                    out.push(s);
                }
            }
        }
    }
    if out.is_empty() {
        return Err(EngineError::NoFreePort);
    }
    Ok(out)
}

impl Net {
    pub(super) fn send(&mut self, msg: TaggedBytesMut) {
        let peer = msg.transport.peer_addr;
        match msg.transport.transport_protocol {
            // A full socket buffer drops the datagram, as a full link would; the receiver's
            // NACK or keyframe request recovers.
            TransportProtocol::UDP if self.udp.try_send_to(&msg.message, peer).is_err() => {
                self.send_errors += 1;
            }
            TransportProtocol::TCP => {
                if let Some(out) = self.tcp_out.get(&peer) {
                    let _ = out.try_send(msg.message.freeze());
                }
            }
            _ => {}
        }
    }

    pub(super) fn local(&self, proto: TransportProtocol) -> SocketAddr {
        match proto {
            TransportProtocol::TCP => self.tcp_addr.unwrap_or(self.udp_addr),
            _ => self.udp_addr,
        }
    }
}

/// The ICE username fragment a STUN request names as the receiver's (`ours:theirs`).
pub(super) fn stun_local_ufrag(data: &[u8]) -> Option<String> {
    let mut m = rtc::stun::message::Message::new();
    m.unmarshal_binary(data).ok()?;
    let username = m.get(rtc::stun::attributes::ATTR_USERNAME).ok()?;
    let username = std::str::from_utf8(&username).ok()?;
    Some(username.split(':').next()?.to_owned())
}

impl MediaLoop {
    /// Reads what the UDP socket holds, up to one batch.
    pub(super) fn read_udp(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        for _ in 0..RECV_BATCH {
            match self.net.udp.try_recv_from(buf) {
                Ok((n, peer)) => {
                    self.datagram(TransportProtocol::UDP, peer, BytesMut::from(&buf[..n]), now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier send: nothing to read this time.
                Err(_) => {}
            }
        }
    }

    /// Hands one datagram (or ICE-TCP frame) to its connection.
    pub(super) fn datagram(
        &mut self,
        proto: TransportProtocol,
        peer: SocketAddr,
        data: BytesMut,
        now: Instant,
    ) {
        let id = if rtc::stun::message::is_stun_message(&data) {
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
        let msg = TaggedBytesMut {
            now,
            transport: TransportContext {
                local_addr: self.net.local(proto),
                peer_addr: peer,
                ecn: None,
                transport_protocol: proto,
            },
            message: data,
        };
        match c.pc.handle_read(msg) {
            // Accepted, so authenticated (a STUN check with its credentials, DTLS, SRTP).
            Ok(()) => {
                if c.liveness.heard(now) == Some(liveness::Change::Heard) {
                    tracing::debug!(participant = c.participant, leg = ?c.leg, "heard again");
                }
            }
            Err(e) => tracing::trace!(error = %e, "datagram refused"),
        }
        touch(&mut self.conns, &mut self.touched, id);
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
