//! A real server on port 0, a real HTTP client and a real websocket client.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{
    ClientMsg, ClinicId, Command, CreateClinic, CreateStaff, EnterRequest, EnterResponse, Entry,
    Role, ServerMsg, SignInRequest, SignInResponse, StaffId,
};
use signalling::server::{self, AppState, Limits};
use signalling::service::{Service, TokenLifetimes};
use signalling::store::Store;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const PASSWORD: &str = "a long test password";
pub const TIMEOUT: Duration = Duration::from_secs(5);

pub fn limits() -> Limits {
    Limits {
        max_connections: 100,
        max_message_bytes: protocol::MAX_CLIENT_MESSAGE_BYTES,
        messages_per_second: 100,
        message_burst: 200,
        entries_per_minute: 10_000,
        sign_ins_per_minute: 10_000,
        media_checks_per_minute: 10_000,
        malformed_per_minute: 10_000,
        session_check: Duration::from_millis(200),
    }
}

pub fn lifetimes() -> TokenLifetimes {
    TokenLifetimes {
        staff: Duration::from_secs(600),
        session: Duration::from_secs(3600),
        visit: Duration::from_secs(3600),
    }
}

pub async fn service(store: Arc<dyn Store>) -> Service {
    service_with(store, lifetimes()).await
}

pub async fn service_with(store: Arc<dyn Store>, lifetimes: TokenLifetimes) -> Service {
    let secret = store.token_secret(&rand_secret()).await.unwrap();
    let keys = signalling::auth::Keys::new(&secret).unwrap();
    Service::new(store, keys, lifetimes, "http://test.invalid".into())
}

fn rand_secret() -> [u8; 32] {
    let mut s = [0u8; 32];
    for (i, b) in s.iter_mut().enumerate() {
        *b = (i as u8)
            .wrapping_mul(37)
            .wrapping_add(uuid::Uuid::new_v4().as_bytes()[i % 16]);
    }
    s
}

#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub service: Service,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestServer {
    pub async fn start(store: Arc<dyn Store>, limits: Limits) -> Self {
        Self::start_with_media(store, limits, None).await
    }

    /// A server whose tokens and sessions last `lifetimes`.
    pub async fn start_with_lifetimes(
        store: Arc<dyn Store>,
        limits: Limits,
        lifetimes: TokenLifetimes,
    ) -> Self {
        Self::serve(service_with(store, lifetimes).await, limits).await
    }

    /// A server that carries media through `media`'s nodes.
    pub async fn start_with_media(
        store: Arc<dyn Store>,
        limits: Limits,
        media: Option<Arc<signalling::media::Media>>,
    ) -> Self {
        let mut service = service(store).await;
        if let Some(m) = media {
            service = service.with_media(m);
        }
        Self::serve(service, limits).await
    }

    async fn serve(service: Service, limits: Limits) -> Self {
        Self::start_custom(service, limits, Vec::new()).await
    }

    /// A server over `service` that believes `X-Forwarded-For` from `proxies`.
    pub async fn start_custom(
        service: Service,
        limits: Limits,
        proxies: Vec<ipnet::IpNet>,
    ) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(service.clone(), limits).with_trusted_proxies(proxies);
        let task = tokio::spawn(server::run(listener, state, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            service,
            http: reqwest::Client::new(),
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Graceful shutdown, waiting for it to finish.
    pub async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(Duration::from_secs(15), t)
                .await
                .expect("shutdown in time")
                .unwrap()
                .unwrap();
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub async fn sign_in(&self, user: &str) -> SignInResponse {
        let r = self
            .http
            .post(self.url("/api/staff/sign-in"))
            .json(&SignInRequest {
                username: user.into(),
                password: PASSWORD.into(),
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "sign-in of {user}");
        r.json().await.unwrap()
    }

    pub async fn enter(&self, clinic: &str, name: &str) -> EnterResponse {
        let r = self
            .http
            .post(self.url("/api/visits"))
            .json(&EnterRequest {
                entry: Entry::OpenLink {
                    clinic: ClinicId::parse(clinic).unwrap(),
                },
                name: name.into(),
                details: None,
            })
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "enter {clinic}");
        r.json().await.unwrap()
    }

    /// `POST /api/commands`: the status and, on error, the error code.
    pub async fn command(&self, token: &str, cmd: &Command) -> (u16, Option<protocol::ErrorCode>) {
        self.post("/api/commands", Some(token), cmd).await
    }

    /// POSTs JSON: the status and, on error, the error code.
    pub async fn post(
        &self,
        path: &str,
        token: Option<&str>,
        body: &impl serde::Serialize,
    ) -> (u16, Option<protocol::ErrorCode>) {
        self.post_raw(path, token, serde_json::to_string(body).unwrap())
            .await
    }

    /// POSTs a body labelled JSON, whatever it holds.
    pub async fn post_raw(
        &self,
        path: &str,
        token: Option<&str>,
        body: String,
    ) -> (u16, Option<protocol::ErrorCode>) {
        let mut req = self
            .http
            .post(self.url(path))
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        let status = r.status().as_u16();
        if (200..300).contains(&status) {
            (status, None)
        } else {
            let body: protocol::ErrorBody = r.json().await.unwrap();
            (status, Some(body.code))
        }
    }

    pub async fn snapshot(&self, token: &str, clinic: &str) -> ServerMsg {
        self.get_json(&format!("/api/clinics/{clinic}/room"), token)
            .await
    }

    /// GETs `path` with `token`, expecting 200 and JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, token: &str) -> T {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "GET {path}");
        r.json().await.unwrap()
    }

    pub async fn ws(&self, token: &str) -> Ws {
        Ws::connect(self.addr, token).await
    }
}

/// Clinics `derm` (open link) and `cardio` (invites only); staff `admin`, `alice`
/// (reception, derm), `bob` (reception, cardio), `dr.jones` and `dr.smith` (clinicians,
/// derm).
pub async fn directory(service: &Service) {
    for (id, open) in [("derm", true), ("cardio", false)] {
        service
            .create_clinic(
                "test",
                CreateClinic {
                    id: ClinicId::parse(id).unwrap(),
                    name: format!("Clinic {id}"),
                    open_link: open,
                },
            )
            .await
            .unwrap();
    }
    let staff: [(&str, Role, &[&str]); 5] = [
        ("admin", Role::Admin, &[]),
        ("alice", Role::Reception, &["derm"]),
        ("bob", Role::Reception, &["cardio"]),
        ("dr.jones", Role::Clinician, &["derm"]),
        ("dr.smith", Role::Clinician, &["derm"]),
    ];
    for (user, role, clinics) in staff {
        service
            .create_staff(
                "test",
                CreateStaff {
                    username: StaffId::parse(user).unwrap(),
                    display_name: format!("{user} name"),
                    role,
                    clinics: clinics
                        .iter()
                        .map(|c| ClinicId::parse(*c).unwrap())
                        .collect(),
                    password: PASSWORD.into(),
                },
            )
            .await
            .unwrap();
    }
}

/// A websocket client that keeps every text frame it received (for privacy checks) and a
/// queue of those not yet consumed.
#[derive(Debug)]
pub struct Ws {
    stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pending: VecDeque<ServerMsg>,
    pub raw: Vec<String>,
    pub welcome: ServerMsg,
    next_req: u32,
    pub closed: Option<u16>,
}

impl Ws {
    /// Connects without saying hello.
    pub async fn open(addr: SocketAddr) -> WebSocketStream<MaybeTlsStream<TcpStream>> {
        let (stream, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws"))
            .await
            .unwrap();
        stream
    }

    pub async fn connect(addr: SocketAddr, token: &str) -> Ws {
        let stream = Self::open(addr).await;
        let mut ws = Ws {
            stream,
            pending: VecDeque::new(),
            raw: Vec::new(),
            welcome: ServerMsg::Ack { req: 0 },
            next_req: 0,
            closed: None,
        };
        ws.send(&ClientMsg::Hello {
            token: token.into(),
        })
        .await;
        ws.welcome = ws.recv().await;
        assert!(
            matches!(ws.welcome, ServerMsg::Welcome { .. }),
            "expected welcome, got {:?}",
            ws.welcome
        );
        ws
    }

    pub async fn send(&mut self, msg: &ClientMsg) {
        self.send_raw(&serde_json::to_string(msg).unwrap()).await;
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.stream.send(Message::text(text)).await.unwrap();
    }

    /// The next message from the server, or the close code if the server closed.
    pub async fn next(&mut self) -> Result<ServerMsg, Option<u16>> {
        if let Some(m) = self.pending.pop_front() {
            return Ok(m);
        }
        loop {
            let frame = tokio::time::timeout(TIMEOUT, self.stream.next())
                .await
                .expect("a message in time");
            match frame {
                Some(Ok(Message::Text(t))) => {
                    self.raw.push(t.to_string());
                    return Ok(serde_json::from_str(&t)
                        .unwrap_or_else(|e| panic!("bad server message {t}: {e}")));
                }
                Some(Ok(Message::Close(frame))) => {
                    self.closed = Some(frame.map_or(1005, |f| f.code.into()));
                    return Err(self.closed);
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(self.closed),
            }
        }
    }

    pub async fn recv(&mut self) -> ServerMsg {
        self.next().await.expect("connection open")
    }

    /// The first message matching `pred`; the others stay queued, in order.
    pub async fn until(&mut self, what: &str, pred: impl Fn(&ServerMsg) -> bool) -> ServerMsg {
        let mut skipped = Vec::new();
        let found = loop {
            let m = match self.next().await {
                Ok(m) => m,
                Err(code) => panic!("closed ({code:?}) while waiting for {what}; got {skipped:?}"),
            };
            if pred(&m) {
                break m;
            }
            skipped.push(m);
        };
        for m in skipped.into_iter().rev() {
            self.pending.push_front(m);
        }
        found
    }

    /// Sends a command and waits for its ack or error.
    pub async fn command(&mut self, command: Command) -> ServerMsg {
        self.next_req += 1;
        let req = self.next_req;
        self.send(&ClientMsg::Command { req, command }).await;
        self.until("an answer", |m| matches!(m, ServerMsg::Ack { req: r } | ServerMsg::Error { req: Some(r), .. } if *r == req)).await
    }

    /// Sends a command and asserts it is carried out.
    pub async fn ok(&mut self, command: Command) {
        let r = self.command(command).await;
        assert!(
            matches!(r, ServerMsg::Ack { .. }),
            "expected ack, got {r:?}"
        );
    }

    /// Sends a command and asserts it is refused with `code`.
    pub async fn refused(&mut self, command: Command, code: protocol::ErrorCode) {
        let r = self.command(command).await;
        assert!(
            matches!(&r, ServerMsg::Error { code: c, .. } if *c == code),
            "expected {code:?}, got {r:?}"
        );
    }

    /// The stream and the messages received but not yet consumed.
    pub fn into_parts(
        self,
    ) -> (
        WebSocketStream<MaybeTlsStream<TcpStream>>,
        VecDeque<ServerMsg>,
    ) {
        (self.stream, self.pending)
    }

    /// Waits for the server to close; returns the close code.
    pub async fn closed(&mut self) -> Option<u16> {
        loop {
            match self.next().await {
                Ok(_) => continue,
                Err(code) => return code,
            }
        }
    }
}
