//! A media loop: one task around one sans-IO [`Endpoint`] (which owns whole rooms and
//! every one of their peer connections), with the endpoint's IO: one UDP socket that all
//! its connections share and, with ICE-TCP, one listener.
//!
//! One turn of the loop: take what is ready (a batch of datagrams, an ICE-TCP frame, a
//! command from the engine, the endpoint's timer) and hand it to the endpoint with the
//! time; then drain the endpoint's outputs: datagrams to the socket (or to the ICE-TCP
//! stream they are for), events to the sender of the participant each names, and arm the
//! timer at [`Endpoint::poll_timeout`]. The loop keeps only the sockets, the ICE-TCP
//! streams ([`super::tcp`]) and each participant's event sender.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc::shared::TransportProtocol;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};

use super::endpoint::{Answer, Command, Endpoint, EndpointConfig, Transmit};
use super::tcp::{self, TcpIn};
use super::{EngineConfig, EngineError, EngineEvent, LoopCounters, webrtc_err};

mod net;

pub(super) use net::bind;

/// Datagrams read in one turn before the endpoint's outputs are drained.
const RECV_BATCH: usize = 64;
/// The largest datagram read (larger ones are truncated, and fail to decrypt).
const RECV_BUF: usize = 2048;
/// ICE-TCP streams one loop keeps open at most.
const MAX_TCP_STREAMS: usize = 4096;
/// How often at most the loop warns of datagrams the socket refused.
const REPORT_EVERY: Duration = Duration::from_secs(1);

/// A command from the engine, with the channel its answer goes back on (and, to join,
/// the channel the participant's events go to).
#[derive(Debug)]
pub(super) struct Request {
    pub command: Command,
    pub events: Option<mpsc::UnboundedSender<EngineEvent>>,
    pub reply: oneshot::Sender<Result<Answer, EngineError>>,
}

/// The engine's way to one loop.
#[derive(Debug)]
pub(super) struct LoopHandle {
    pub tx: mpsc::UnboundedSender<Request>,
    /// The UDP address the loop receives on.
    pub udp: SocketAddr,
}

/// One loop's sockets, bound before it starts.
#[derive(Debug)]
pub(super) struct Sockets {
    udp: std::net::UdpSocket,
    tcp: Option<std::net::TcpListener>,
}

/// Starts a loop on the current runtime.
pub(super) fn spawn(
    sockets: Sockets,
    announced: Option<(IpAddr, IpAddr)>,
    counters: LoopCounters,
) -> Result<LoopHandle, EngineError> {
    let udp = UdpSocket::from_std(sockets.udp).map_err(webrtc_err)?;
    let udp_addr = udp.local_addr().map_err(webrtc_err)?;
    let tcp = sockets
        .tcp
        .map(TcpListener::from_std)
        .transpose()
        .map_err(webrtc_err)?;
    let tcp_addr = match &tcp {
        Some(l) => Some(l.local_addr().map_err(webrtc_err)?),
        None => None,
    };
    let (tx, rx) = mpsc::unbounded_channel();
    let (tcp_tx, tcp_rx) = mpsc::channel(1024);
    let endpoint = Endpoint::new(
        EndpointConfig {
            udp: udp_addr,
            tcp: tcp_addr,
            announced,
            counters: counters.clone(),
        },
        Instant::now(),
    );
    let media_loop = MediaLoop {
        endpoint,
        net: net::Net {
            udp,
            udp_addr,
            tcp_addr,
            tcp_out: HashMap::new(),
            send_errors: 0,
            reported_errors: 0,
            reported_at: None,
        },
        senders: HashMap::new(),
        busy: counters.busy,
    };
    tokio::spawn(media_loop.run(rx, tcp, tcp_tx, tcp_rx));
    Ok(LoopHandle { tx, udp: udp_addr })
}

struct MediaLoop {
    endpoint: Endpoint,
    net: net::Net,
    /// Each participant's event sender.
    senders: HashMap<u128, mpsc::UnboundedSender<EngineEvent>>,
    /// Seconds spent working, from each wake-up to the next wait.
    busy: prometheus_client::metrics::counter::Counter<f64, std::sync::atomic::AtomicU64>,
}

/// What woke the loop.
enum Wake {
    Udp,
    Timer,
    Command(Option<Request>),
    Tcp(TcpIn),
    Accepted(std::io::Result<(tokio::net::TcpStream, SocketAddr)>),
}

impl MediaLoop {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Request>,
        tcp: Option<TcpListener>,
        tcp_tx: mpsc::Sender<TcpIn>,
        mut tcp_rx: mpsc::Receiver<TcpIn>,
    ) {
        let mut buf = vec![0u8; RECV_BUF];
        let far = || tokio::time::Instant::now() + Duration::from_secs(3600);
        let timer = tokio::time::sleep_until(far());
        tokio::pin!(timer);
        let mut armed: Option<Instant> = None;
        loop {
            let next = self.endpoint.poll_timeout();
            if next != armed {
                armed = next;
                timer
                    .as_mut()
                    .reset(next.map_or_else(far, tokio::time::Instant::from_std));
            }
            let accept = async {
                match &tcp {
                    Some(l) => l.accept().await,
                    None => std::future::pending().await,
                }
            };
            // Unbiased: under a steady stream of datagrams the other arms still get their
            // turn.
            let wake = tokio::select! {
                ready = self.net.udp.readable() => match ready {
                    Ok(()) => Wake::Udp,
                    Err(_) => continue,
                },
                () = &mut timer => Wake::Timer,
                request = commands.recv() => Wake::Command(request),
                Some(frame) = tcp_rx.recv() => Wake::Tcp(frame),
                accepted = accept => Wake::Accepted(accepted),
            };
            let woke = Instant::now();
            match wake {
                Wake::Udp => self.read_udp(&mut buf),
                Wake::Timer => {
                    armed = None;
                    self.endpoint.handle_timeout(woke);
                    self.net.report_errors(woke, REPORT_EVERY);
                }
                Wake::Command(Some(r)) => self.command(r, woke),
                // The engine is gone: close everything and stop.
                Wake::Command(None) => break,
                Wake::Tcp(TcpIn::Frame { peer, data }) => {
                    let local = self.net.local(TransportProtocol::TCP);
                    self.endpoint
                        .handle_datagram(TransportProtocol::TCP, local, peer, data, woke);
                }
                Wake::Tcp(TcpIn::Closed { peer }) => {
                    self.net.tcp_out.remove(&peer);
                    self.endpoint
                        .handle_path_closed(TransportProtocol::TCP, peer);
                }
                Wake::Accepted(Ok((stream, peer))) => {
                    if self.net.tcp_out.len() < MAX_TCP_STREAMS {
                        let (out_tx, out_rx) = mpsc::channel(tcp::STREAM_QUEUE);
                        self.net.tcp_out.insert(peer, out_tx);
                        tokio::spawn(tcp::serve_stream(stream, peer, tcp_tx.clone(), out_rx));
                    }
                }
                Wake::Accepted(Err(_)) => {}
            }
            self.drain();
            self.busy.inc_by(woke.elapsed().as_secs_f64());
        }
        self.endpoint.close();
        self.drain();
    }

    /// Sends what the endpoint wrote, closes the ICE-TCP streams it no longer uses, and
    /// passes its events on.
    fn drain(&mut self) {
        while let Some(t) = self.endpoint.poll_transmit() {
            self.net.send(t);
        }
        while let Some(peer) = self.endpoint.poll_closed_path() {
            self.net.tcp_out.remove(&peer);
        }
        while let Some(event) = self.endpoint.poll_event() {
            if let Some(tx) = self.senders.get(&event.participant()) {
                let _ = tx.send(event);
            }
        }
    }

    /// Reads what the UDP socket holds, up to one batch.
    fn read_udp(&mut self, buf: &mut [u8]) {
        let now = Instant::now();
        let local = self.net.udp_addr;
        for _ in 0..RECV_BATCH {
            match self.net.udp.try_recv_from(buf) {
                Ok((n, peer)) => {
                    let data = BytesMut::from(&buf[..n]);
                    self.endpoint
                        .handle_datagram(TransportProtocol::UDP, local, peer, data, now);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                // An ICMP error for an earlier send: nothing to read this time.
                Err(_) => {}
            }
        }
    }

    fn command(&mut self, request: Request, now: Instant) {
        let Request {
            command,
            events,
            reply,
        } = request;
        let joining = match &command {
            Command::Join { participant, .. } => Some(*participant),
            _ => None,
        };
        let leaving = match &command {
            Command::Leave { participant } => Some(*participant),
            _ => None,
        };
        let answer = self.endpoint.handle_command(command, now);
        if answer.is_ok() {
            if let (Some(key), Some(tx)) = (joining, events) {
                self.senders.insert(key, tx);
            }
            if let Some(key) = leaving {
                self.senders.remove(&key);
            }
        }
        let _ = reply.send(answer);
    }
}
