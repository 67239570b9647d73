//! A real coturn (Debian's `turnserver`) for one test, run from the production
//! configuration `infra/coturn/turnserver.conf` with this test's addresses, ports and
//! secret put in place of the deployment's; and a real TURN client (`rtc-turn`, the
//! sans-IO client of the `rtc` stack the SFU is built on) over UDP to drive it.
//! `scripts/test` installs coturn where it is missing.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rtc_shared::{TaggedBytesMut, TransportContext, TransportProtocol};
use rtc_turn::client::{Client, ClientConfig, Event};
use sansio::Protocol;

pub const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// The production configuration the tests run.
pub const PRODUCTION_CONFIG: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../infra/coturn/turnserver.conf"
);

/// The settings a deployment changes (addresses, ports, secret, names, certificate, logs):
/// replaced by the test's own. Everything else, the restrictions above all, runs as shipped.
const REPLACED: &[&str] = &[
    "listening-ip",
    "relay-ip",
    "external-ip",
    "listening-port",
    "tls-listening-port",
    "min-port",
    "max-port",
    "static-auth-secret",
    "realm",
    "server-name",
    "allowed-peer-ip",
    "cert",
    "pkey",
    "syslog",
    "log-file",
    "pidfile",
];

#[derive(Debug)]
pub struct Coturn {
    child: Child,
    dir: tempfile::TempDir,
    /// Where it takes TURN over UDP (and TCP).
    pub addr: SocketAddr,
    pub secret: String,
}

impl Coturn {
    /// coturn on 127.0.0.1, relaying only to `sfu` (the test's stand-in for the SFU's media
    /// address). Everything here is on loopback, which coturn refuses as a peer unless
    /// told otherwise: `allow-loopback-peers` is the one restriction the test relaxes, and
    /// the production `denied-peer-ip` (everything) still refuses every other address.
    pub fn start(sfu: IpAddr) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let secret = format!("test-secret-{}", uuid::Uuid::new_v4().simple());
        let relay_base = 20_000 + (rand::random::<u16>() % 400) * 100;
        let config = test_config(
            &std::fs::read_to_string(PRODUCTION_CONFIG).expect("infra/coturn/turnserver.conf"),
            &[
                format!("listening-ip={LOOPBACK}"),
                format!("relay-ip={LOOPBACK}"),
                format!("listening-port={port}"),
                format!("min-port={relay_base}"),
                format!("max-port={}", relay_base + 99),
                format!("static-auth-secret={secret}"),
                "realm=turn.test".into(),
                "server-name=turn.test".into(),
                format!("allowed-peer-ip={sfu}"),
                "allow-loopback-peers".into(),
                // TURN over TLS has its own test, in a browser (web-client/tests/turn.test.mjs).
                "no-tls".into(),
                "log-file=stdout".into(),
                "simple-log".into(),
                format!("pidfile={}", dir.path().join("turnserver.pid").display()),
            ],
        );
        let path = dir.path().join("turnserver.conf");
        std::fs::write(&path, config).expect("config written");
        let log = std::fs::File::create(dir.path().join("turnserver.log")).expect("log file");
        let child = Command::new("turnserver")
            .arg("-c")
            .arg(&path)
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("coturn's turnserver must be installed (scripts/test installs it)");
        let server = Self {
            child,
            dir,
            addr: SocketAddr::new(LOOPBACK, port),
            secret,
        };
        server.wait_listening();
        server
    }

    fn wait_listening(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_err() {
            assert!(
                Instant::now() < deadline,
                "coturn did not listen on {} within 10 s\n{}",
                self.addr,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// What coturn has logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("turnserver.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The production configuration with the `REPLACED` settings taken out and `ours` added.
pub fn test_config(production: &str, ours: &[String]) -> String {
    let replaced: BTreeSet<&str> = REPLACED.iter().copied().collect();
    let mut out: Vec<String> = production
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter(|l| {
            let key = l.split('=').next().unwrap_or(l).trim();
            !replaced.contains(key)
        })
        .map(str::to_owned)
        .collect();
    out.extend(ours.iter().cloned());
    out.join("\n") + "\n"
}

/// A port free for both UDP and TCP on loopback, now.
fn free_port() -> u16 {
    loop {
        let tcp = TcpListener::bind((LOOPBACK, 0)).expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if UdpSocket::bind((LOOPBACK, port)).is_ok() {
            return port;
        }
    }
}

/// A TURN client over UDP, driven synchronously: each call runs the sans-IO client until
/// the answer to its request arrives (or a time limit).
pub struct TurnClient {
    client: Client,
    socket: UdpSocket,
    relayed: Option<SocketAddr>,
}

impl std::fmt::Debug for TurnClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TurnClient")
            .field("relayed", &self.relayed)
            .finish()
    }
}

/// How long one request may take (the client retransmits within it).
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

impl TurnClient {
    pub fn new(server: SocketAddr, username: &str, password: &str) -> Self {
        let socket = UdpSocket::bind((LOOPBACK, 0)).expect("bind");
        let provider = rtc_crypto::default_provider().expect("a crypto provider");
        let client = Client::new(
            ClientConfig {
                stun_serv_addr: String::new(),
                turn_serv_addr: server.to_string(),
                local_addr: socket.local_addr().expect("addr"),
                transport_protocol: TransportProtocol::UDP,
                username: username.into(),
                password: password.into(),
                realm: String::new(),
                software: String::new(),
                rto_in_ms: 0,
                allocation_refresh_interval_cap: None,
            },
            provider,
        )
        .expect("client");
        Self {
            client,
            socket,
            relayed: None,
        }
    }

    /// Allocate: the relayed address, or the server's refusal (e.g. "... (error 401 ...)").
    pub fn allocate(&mut self) -> Result<SocketAddr, String> {
        self.client
            .allocate(Instant::now())
            .map_err(|e| e.to_string())?;
        let relayed = self.until(|e| match e {
            Event::AllocateResponse(_, addr) => Some(Ok(addr)),
            Event::AllocateError(_, err) => Some(Err(err.to_string())),
            Event::TransactionTimeout(_) => Some(Err("no answer to Allocate".into())),
            _ => None,
        })?;
        self.relayed = Some(relayed);
        Ok(relayed)
    }

    /// CreatePermission for `peer`: Ok once granted, or the server's refusal.
    pub fn permit(&mut self, peer: SocketAddr) -> Result<(), String> {
        let relayed = self.relayed.ok_or("allocate first")?;
        let sent = self
            .client
            .relay(relayed)
            .and_then(|mut r| r.create_permission(Instant::now(), peer))
            .map_err(|e| e.to_string())?;
        if sent.is_none() {
            return Ok(()); // already permitted
        }
        self.until(|e| match e {
            Event::CreatePermissionResponse(_, p) if p == peer => Some(Ok(())),
            Event::CreatePermissionError(_, err) => Some(Err(err.to_string())),
            Event::TransactionTimeout(_) => Some(Err("no answer to CreatePermission".into())),
            _ => None,
        })
    }

    /// Sends `data` to `peer` through the relay (a permission must be in place).
    pub fn send_to(&mut self, peer: SocketAddr, data: &[u8]) -> Result<(), String> {
        let relayed = self.relayed.ok_or("allocate first")?;
        self.client
            .relay(relayed)
            .and_then(|mut r| r.send_to(Instant::now(), data, peer))
            .map_err(|e| e.to_string())?;
        self.flush();
        Ok(())
    }

    /// Waits for data relayed from a peer: (peer, data).
    pub fn receive(&mut self) -> Result<(SocketAddr, Vec<u8>), String> {
        self.until(|e| match e {
            Event::DataIndicationOrChannelData(_, from, data) => Some(Ok((from, data.to_vec()))),
            _ => None,
        })
    }

    /// Refreshes the allocation now: Ok when the server renews it, or its refusal.
    pub fn refresh(&mut self) -> Result<(), String> {
        self.client
            .refresh_allocations(Instant::now())
            .map_err(|e| e.to_string())?;
        self.flush();
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut buf = vec![0u8; 2048];
        while Instant::now() < deadline {
            if let Some(msg) = self.read(&mut buf, Duration::from_millis(50)) {
                // The client answers a refused refresh with an error from handle_read; a
                // renewed one is applied silently.
                self.client.handle_read(msg).map_err(|e| e.to_string())?;
                return Ok(());
            }
            self.drive();
        }
        Err("no answer to Refresh".into())
    }

    fn until<T>(
        &mut self,
        mut take: impl FnMut(Event) -> Option<Result<T, String>>,
    ) -> Result<T, String> {
        let deadline = Instant::now() + ANSWER_WITHIN;
        let mut buf = vec![0u8; 2048];
        loop {
            self.flush();
            while let Some(e) = self.client.poll_event() {
                if let Some(done) = take(e) {
                    return done;
                }
            }
            if Instant::now() > deadline {
                return Err(format!("no answer within {ANSWER_WITHIN:?}"));
            }
            if let Some(msg) = self.read(&mut buf, Duration::from_millis(20)) {
                self.client.handle_read(msg).map_err(|e| e.to_string())?;
            }
            self.drive();
        }
    }

    fn drive(&mut self) {
        let now = Instant::now();
        if self.client.poll_timeout().is_some_and(|t| t <= now) {
            let _ = self.client.handle_timeout(now);
        }
        self.flush();
    }

    fn flush(&mut self) {
        while let Some(t) = self.client.poll_write() {
            let _ = self.socket.send_to(&t.message, t.transport.peer_addr);
        }
    }

    fn read(&self, buf: &mut [u8], wait: Duration) -> Option<TaggedBytesMut> {
        self.socket.set_read_timeout(Some(wait)).ok()?;
        match self.socket.recv_from(buf) {
            Ok((n, from)) => Some(TaggedBytesMut {
                now: Instant::now(),
                transport: TransportContext {
                    local_addr: self.socket.local_addr().ok()?,
                    peer_addr: from,
                    transport_protocol: TransportProtocol::UDP,
                    ecn: None,
                },
                message: BytesMut::from(&buf[..n]),
            }),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => panic!("TURN client socket: {e}"),
        }
    }
}

/// The seconds since the epoch, as coturn compares them with a credential's expiry.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
