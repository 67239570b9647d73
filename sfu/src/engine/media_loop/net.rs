//! The loop's sockets: binding them, and sending what the endpoint wrote.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rtc::shared::TransportProtocol;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

use super::{EngineConfig, EngineError, Sockets, Transmit};

/// The kernel buffers asked for on the shared UDP socket. Every connection of the loop
/// shares them, so they must absorb a burst of the whole loop's traffic while the loop
/// is busy (hundreds of DTLS handshakes at once, say): with the default ~200 KB, the
/// buffer overflowed at 200 participants and handshake flights were lost. Capped by
/// `net.core.rmem_max` / `wmem_max` (raise those for large nodes).
const SOCKET_BUFFER: usize = 8 << 20;

/// The loop's sockets.
pub(super) struct Net {
    pub udp: UdpSocket,
    pub udp_addr: SocketAddr,
    pub tcp_addr: Option<SocketAddr>,
    /// Each accepted ICE-TCP stream's way out, by the peer's address.
    pub tcp_out: HashMap<SocketAddr, mpsc::Sender<Bytes>>,
    /// Datagrams the socket refused (its buffer full), how many were last reported, and
    /// when.
    pub send_errors: u64,
    pub reported_errors: u64,
    pub reported_at: Option<Instant>,
}

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
            Some(crate::server::listen((ip, port).into()).ok()?)
        } else {
            None
        };
        udp.set_nonblocking(true).ok()?;
        let sock = socket2::SockRef::from(&udp);
        let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
        let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
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
    pub(super) fn send(&mut self, t: Transmit) {
        let peer = t.to;
        match t.proto {
            // A full socket buffer drops the datagram, as a full link would; the receiver's
            // NACK or keyframe request recovers.
            TransportProtocol::UDP if self.udp.try_send_to(&t.bytes, peer).is_err() => {
                self.send_errors += 1;
            }
            TransportProtocol::TCP => {
                if let Some(out) = self.tcp_out.get(&peer) {
                    let _ = out.try_send(t.bytes.freeze());
                }
            }
            _ => {}
        }
    }

    /// Warns of datagrams dropped since the last warning, at most once per `every`.
    pub(super) fn report_errors(&mut self, now: Instant, every: Duration) {
        if self.send_errors == self.reported_errors
            || self
                .reported_at
                .is_some_and(|at| now.saturating_duration_since(at) < every)
        {
            return;
        }
        tracing::warn!(
            dropped = self.send_errors - self.reported_errors,
            "media datagrams dropped: the socket's send buffer was full"
        );
        self.reported_errors = self.send_errors;
        self.reported_at = Some(now);
    }

    pub(super) fn local(&self, proto: TransportProtocol) -> SocketAddr {
        match proto {
            TransportProtocol::TCP => self.tcp_addr.unwrap_or(self.udp_addr),
            _ => self.udp_addr,
        }
    }
}
