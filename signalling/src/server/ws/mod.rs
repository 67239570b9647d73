//! The websocket every browser keeps open: `hello` with a token, then commands one way and
//! live events the other.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::response::{IntoResponse, Response};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};

use protocol::{
    ClientMsg, ClinicId, ErrorCode, MediaEndReason, ServerMsg, Session, VisitEndReason,
};
use tokio::sync::{OwnedSemaphorePermit, mpsc};
use tracing::Instrument;

use super::AppState;
use crate::auth::Principal;
use crate::error::AppError;
use crate::room::Audience;
use crate::store::StoreError;

mod media;
pub(super) use media::Parked;
use media::{Handover, MediaSession, next_handover, next_media};

/// The read buffer a connection starts with; it grows for a larger frame.
const READ_BUFFER: usize = 4 * 1024;
/// How long a new connection may take to say `hello`.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the server pings an idle connection, and how long silence is tolerated.
const PING_EVERY: Duration = Duration::from_secs(20);
const SILENCE_LIMIT: Duration = Duration::from_secs(60);

/// Close codes (4000-4999 are the application's own).
/// The largest message the server itself sends (a staff snapshot of a very full clinic).
const MAX_SNAPSHOT_BYTES: usize = 16 * 1024 * 1024;
/// The least time between two call-quality reports of one media session that are kept.
const QUALITY_REPORT_MIN: Duration = Duration::from_secs(5);
const CLOSE_POLICY: u16 = 1008;
const CLOSE_TOO_BIG: u16 = 1009;
const CLOSE_RESTART: u16 = 1012;
const CLOSE_TRY_AGAIN: u16 = 1013;
const CLOSE_UNAUTHENTICATED: u16 = 4001;
const CLOSE_VISIT_ENDED: u16 = 4002;
const CLOSE_REPLACED: u16 = 4003;

/// Whether a browser page at `origin` may open a websocket: pages of the platform's own
/// public URL only (and, while the public URL is a loopback address, as in development
/// and tests, pages on any loopback address). Clients that are not browsers send no
/// Origin and are let through: the token in `hello` is what authenticates.
pub fn origin_allowed(origin: &str, public_url: &str) -> bool {
    let origin = origin.trim_end_matches('/');
    if origin.eq_ignore_ascii_case(public_url_origin(public_url)) {
        return true;
    }
    let loopback = |url: &str| {
        let host = url
            .split_once("://")
            .map_or(url, |(_, rest)| rest)
            .split('/')
            .next()
            .unwrap_or("");
        let host = host.rsplit_once(':').map_or(host, |(h, _)| h);
        matches!(host, "localhost" | "[::1]") || host.starts_with("127.")
    };
    loopback(public_url) && loopback(origin) && origin.starts_with("http")
}

/// `https://host:port` of a URL.
fn public_url_origin(url: &str) -> &str {
    let after = url.find("://").map_or(0, |i| i + 3);
    match url[after..].find('/') {
        Some(i) => &url[..after + i],
        None => url,
    }
}

pub async fn upgrade(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Response {
    if let Some(origin) = headers.get(axum::http::header::ORIGIN) {
        let ok = origin
            .to_str()
            .is_ok_and(|o| origin_allowed(o, state.service.public_url()));
        if !ok {
            return super::ApiError::from_code(
                ErrorCode::Forbidden,
                "websockets are only accepted from the platform's own pages",
            )
            .into_response();
        }
    }
    let Ok(permit) = state.connection_slots.clone().try_acquire_owned() else {
        let err = super::ApiError::from_code(
            ErrorCode::TooManyConnections,
            "the server is at its connection limit; please try again shortly",
        );
        return err.into_response();
    };
    let max = state.limits.max_message_bytes;
    // tungstenite's defaults reserve 128 KiB to read and 128 KiB to write per connection,
    // nearly all of a waiting patient's memory (measured: 142 KiB per patient); messages
    // here are small and each is flushed as it is sent.
    ws.max_message_size(max)
        .max_frame_size(max)
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        // A staff snapshot of a full clinic is one message of about 250 bytes a visit
        // (1.2 MB for 5,000): it must fit, or staff of a large clinic could never load it.
        .max_write_buffer_size((max * 4).max(MAX_SNAPSHOT_BYTES))
        .on_upgrade(move |socket| {
            let id = state.next_connection_id();
            let span = tracing::info_span!("ws", conn = id);
            let tracker = state.tasks.clone();
            tracker.track_future(
                async move { Connection::serve(state, socket, permit, id).await }.instrument(span),
            )
        })
}

struct Connection {
    state: AppState,
    socket: WebSocket,
    limiter: DefaultDirectRateLimiter,
    /// Malformed messages: a few are mistakes, more are an attack; then the connection
    /// closes.
    malformed: DefaultDirectRateLimiter,
    /// The room version each snapshot was read at: older events are already in it.
    seen: HashMap<ClinicId, u64>,
    /// This connection's media session, if it joined one.
    media: Option<MediaSession>,
    /// Who this connection is (once it said hello), as the key its media session is kept
    /// under if the connection is lost.
    park_key: Option<String>,
    id: u64,
    /// A newer connection of the same person asking for this one's media session (the
    /// page came back from a new network before this connection was seen to be lost).
    handover: Option<mpsc::Receiver<Handover>>,
}

/// Whether a connection ended because it was lost (no close from the page, a failed read
/// or write, no answer to pings) rather than closed on purpose by either side.
fn lost(code: u16, reason: &str) -> bool {
    matches!(
        (code, reason),
        (CLOSE_RESTART, "") | (CLOSE_POLICY, "") | (CLOSE_POLICY, NO_PONG)
    )
}

const NO_PONG: &str = "no answer to ping";

enum Flow {
    Continue,
    Close(u16, &'static str),
}

fn encode(msg: &ServerMsg) -> Message {
    // Wire types always serialise.
    Message::Text(serde_json::to_string(msg).unwrap_or_default().into())
}

fn error(req: Option<u32>, code: ErrorCode, message: impl Into<String>) -> ServerMsg {
    ServerMsg::Error {
        req,
        code,
        message: message.into(),
    }
}

fn app_error(req: Option<u32>, e: &AppError) -> ServerMsg {
    e.log();
    error(req, e.code(), e.public_message())
}

/// Why a text frame is not a valid message: unknown type, or not the expected shape.
fn parse_error(e: &serde_json::Error) -> ServerMsg {
    let text = e.to_string();
    if text.starts_with("unknown variant") {
        error(None, ErrorCode::UnknownMessage, "unknown message type")
    } else {
        error(
            None,
            ErrorCode::BadRequest,
            format!("malformed message: {text}"),
        )
    }
}

impl Connection {
    async fn serve(state: AppState, socket: WebSocket, _permit: OwnedSemaphorePermit, id: u64) {
        let limits = state.limits;
        let per_second = NonZeroU32::new(limits.messages_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.message_burst).unwrap_or(per_second);
        let mut conn = Connection {
            state,
            socket,
            limiter: RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            malformed: RateLimiter::direct(Quota::per_minute(
                NonZeroU32::new(limits.malformed_per_minute).unwrap_or(NonZeroU32::MIN),
            )),
            seen: HashMap::new(),
            media: None,
            park_key: None,
            id,
            handover: None,
        };
        let (code, reason) = conn.run().await;
        if let Some(session) = conn.media.take() {
            // A connection lost (not closed by the page, not ended by the server): its media
            // session waits a little for the page to come back on a new connection. Parked
            // before this connection leaves the live list (see `Parked::claim`).
            match &conn.park_key {
                Some(key) if lost(code, reason) => {
                    tracing::debug!(code, reason, "connection lost: its media session is kept");
                    conn.state.parked.park(key.clone(), session)
                }
                _ => session.leave(),
            }
        }
        if let Some(key) = conn.park_key.take() {
            conn.state.parked.unregister(&key, id);
        }
        let _ = conn
            .socket
            .send(Message::Close(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from_static(reason),
            })))
            .await;
        tracing::debug!(code, reason, "connection closed");
    }

    async fn send(&mut self, msg: &ServerMsg) -> bool {
        self.socket.send(encode(msg)).await.is_ok()
    }

    async fn run(&mut self) -> (u16, &'static str) {
        let (principal, visit_expires) = match self.hello().await {
            Ok(p) => p,
            Err(close) => return close,
        };
        // Counted in the metrics while it is open.
        let _open = self.state.service.metrics().connection(match &principal {
            Principal::Patient(_) => "patient",
            Principal::Staff(_) => "staff",
        });
        let key = match &principal {
            Principal::Patient(visit) => format!("visit:{visit}"),
            Principal::Staff(claims) => format!("staff:{}:{}", claims.sub, claims.sid),
        };
        let (handover, requests) = mpsc::channel(1);
        self.state.parked.register(&key, self.id, handover);
        self.handover = Some(requests);
        self.park_key = Some(key);
        let shutdown = self.state.shutdown.clone();
        let (subscription, expires, held) = match &principal {
            Principal::Staff(claims) => {
                let clinics = match self.state.service.staff_clinics(claims).await {
                    Ok(c) => c,
                    Err(e) => {
                        self.send(&app_error(None, &e)).await;
                        return (CLOSE_TRY_AGAIN, "could not load the waiting rooms");
                    }
                };
                let audiences = clinics
                    .iter()
                    .map(|c| Audience::ClinicStaff(c.clone()))
                    .collect();
                let sub = self.state.hub.subscribe(audiences);
                // Subscribed first, then read: an event is either in the snapshot or after it.
                let rooms = match self.state.service.staff_rooms(claims, clinics).await {
                    Ok(r) => r,
                    Err(e) => {
                        self.send(&app_error(None, &e)).await;
                        return (CLOSE_TRY_AGAIN, "could not load the waiting rooms");
                    }
                };
                let session = Session::Staff(protocol::StaffSession {
                    username: claims.sub.clone(),
                    display_name: claims.name.clone(),
                    role: claims.role,
                    clinics: rooms.iter().map(|r| r.clinic.clone()).collect(),
                });
                if !self.send(&ServerMsg::Welcome { session }).await {
                    return (CLOSE_RESTART, "");
                }
                for mut r in rooms {
                    let online = self
                        .state
                        .hub
                        .online_in(&**self.state.service.store(), &r.clinic)
                        .await;
                    if let ServerMsg::ClinicSnapshot { visits, .. } = &mut r.msg {
                        for v in visits {
                            v.online = online.contains(&v.id);
                        }
                    }
                    self.seen.insert(r.clinic, r.version);
                    if !self.send(&r.msg).await {
                        return (CLOSE_RESTART, "");
                    }
                }
                (sub, claims.exp, None)
            }
            Principal::Patient(visit) => {
                let sub = self.state.hub.subscribe(vec![Audience::Visit(*visit)]);
                let start = match self.state.service.patient_start(*visit).await {
                    Ok(s) => s,
                    Err(e @ AppError::VisitEnded) => {
                        self.send(&app_error(None, &e)).await;
                        return (CLOSE_VISIT_ENDED, "visit ended");
                    }
                    // Only the store's word ends a visit: anything else (the store away)
                    // is a reason to come back.
                    Err(e) => {
                        self.send(&app_error(None, &e)).await;
                        return (CLOSE_TRY_AGAIN, "could not load the visit");
                    }
                };
                // Staff see the patient online from now until this connection ends: a
                // lease of this instance's, outside the room, owned by this function
                // whichever way it returns.
                let held = self
                    .state
                    .presence
                    .open(
                        &**self.state.service.store(),
                        self.id,
                        start.clinic.clone(),
                        *visit,
                    )
                    .await;
                self.seen.insert(start.clinic, start.version);
                if !self
                    .send(&ServerMsg::Welcome {
                        session: start.session,
                    })
                    .await
                {
                    return (CLOSE_RESTART, "");
                }
                for m in &start.msgs {
                    if !self.send(m).await {
                        return (CLOSE_RESTART, "");
                    }
                }
                (sub, visit_expires, Some(held))
            }
        };
        let close = self
            .live(&principal, subscription, expires, &shutdown)
            .await;
        if let Some(held) = held {
            self.state
                .presence
                .close(&**self.state.service.store(), held)
                .await;
        }
        close
    }

    /// Waits for `hello` and checks its token.
    /// Waits for `hello` and checks its token; for a patient, also when their credential
    /// runs out (seconds since the epoch).
    async fn hello(&mut self) -> Result<(Principal, u64), (u16, &'static str)> {
        let first = match tokio::time::timeout(HELLO_TIMEOUT, self.socket.recv()).await {
            Err(_) => return Err((CLOSE_POLICY, "no hello")),
            Ok(None | Some(Err(_))) => return Err((CLOSE_POLICY, "")),
            Ok(Some(Ok(m))) => m,
        };
        let Message::Text(text) = first else {
            self.send(&error(
                None,
                ErrorCode::BadRequest,
                "the first message must be hello",
            ))
            .await;
            return Err((CLOSE_POLICY, "expected hello"));
        };
        let token = match serde_json::from_str::<ClientMsg>(&text) {
            Ok(ClientMsg::Hello { token }) => token,
            Ok(_) => {
                self.send(&error(
                    None,
                    ErrorCode::Unauthenticated,
                    "the first message must be hello",
                ))
                .await;
                return Err((CLOSE_UNAUTHENTICATED, "expected hello"));
            }
            Err(e) => {
                self.send(&parse_error(&e)).await;
                return Err((CLOSE_POLICY, "expected hello"));
            }
        };
        match self.state.service.authenticate(&token).await {
            Ok(p) => {
                let expires = self.state.service.visit_expiry(&token).unwrap_or(u64::MAX);
                Ok((p, expires))
            }
            // The store away is no verdict on the credential: come back.
            Err(e @ AppError::Store(StoreError::Unavailable(_))) => {
                self.send(&app_error(None, &e)).await;
                Err((CLOSE_TRY_AGAIN, "could not check the sign-in"))
            }
            Err(e) => {
                self.send(&app_error(None, &e)).await;
                Err((CLOSE_UNAUTHENTICATED, "unauthenticated"))
            }
        }
    }

    /// The connection's life after `hello`: commands in, events out.
    async fn live(
        &mut self,
        principal: &Principal,
        mut sub: super::hub::Subscription,
        expires_secs: u64,
        shutdown: &tokio_util::sync::CancellationToken,
    ) -> (u16, &'static str) {
        let expiry = tokio::time::sleep(until(expires_secs));
        tokio::pin!(expiry);
        // A staff sign-in can be ended at any time (sign-out elsewhere, a change of
        // password, role or clinics, an administrator): looked up again every few seconds.
        let mut session_check = tokio::time::interval(self.state.limits.session_check);
        session_check.reset();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return (CLOSE_RESTART, "server restarting"),
                _ = &mut expiry => {
                    self.send(&error(None, ErrorCode::TokenExpired, "your sign-in has expired")).await;
                    return (CLOSE_UNAUTHENTICATED, "token expired");
                }
                _ = session_check.tick() => {
                    if let Principal::Staff(claims) = principal {
                        if let Err(AppError::SessionEnded) = self.state.service.live_session(claims).await {
                            self.send(&app_error(None, &AppError::SessionEnded)).await;
                            return (CLOSE_UNAUTHENTICATED, "sign-in ended");
                        }
                    }
                }
                _ = ping.tick() => {
                    if last_heard.elapsed() > SILENCE_LIMIT {
                        return (CLOSE_POLICY, NO_PONG);
                    }
                    if self.socket.send(Message::Ping(Default::default())).await.is_err() {
                        return (CLOSE_RESTART, "");
                    }
                }
                Some(h) = next_handover(&mut self.handover) => {
                    if self.media.as_ref().is_some_and(|s| s.consultation == h.consultation) {
                        if let Some(session) = self.media.take() {
                            if let Err(session) = h.reply.send(session) {
                                session.leave();
                            }
                        }
                        return (CLOSE_REPLACED, "continued on a new connection");
                    }
                }
                Some(msg) = next_media(&mut self.media) => {
                    if matches!(msg, ServerMsg::MediaEnded { .. }) {
                        if let Some(s) = self.media.take() {
                            s.link.unroute(s.participant);
                        }
                    }
                    if !self.send(&msg).await {
                        return (CLOSE_RESTART, "");
                    }
                }
                delivery = sub.rx.recv() => {
                    let Some(d) = delivery else {
                        return (CLOSE_TRY_AGAIN, "too slow; reconnect");
                    };
                    if self.seen.get(&d.clinic).is_some_and(|v| d.version <= *v) {
                        continue;
                    }
                    if self.socket.send(Message::Text(d.text.clone())).await.is_err() {
                        return (CLOSE_RESTART, "");
                    }
                    // The patient's visit is over: so is their connection, and its media
                    // session, which the page is told of first (the node's own word would
                    // come too late, on a closed socket).
                    if let (Some(why), Principal::Patient(_)) = (d.ends_visit, principal) {
                        if let Some(session) = self.media.take() {
                            session.leave();
                            let reason = match why {
                                VisitEndReason::ConsultationEnded => MediaEndReason::ConsultationEnded,
                                _ => MediaEndReason::RemovedFromConsultation,
                            };
                            self.send(&ServerMsg::MediaEnded { reason }).await;
                        }
                        return (CLOSE_VISIT_ENDED, "visit ended");
                    }
                }
                incoming = self.socket.recv() => {
                    last_heard = tokio::time::Instant::now();
                    let msg = match incoming {
                        None => return (CLOSE_RESTART, ""),
                        Some(Err(e)) => {
                            let too_big = e.to_string().contains("too long") || e.to_string().contains("too big");
                            if too_big {
                                self.send(&error(None, ErrorCode::MessageTooLarge, "message too large")).await;
                                return (CLOSE_TOO_BIG, "message too large");
                            }
                            return (CLOSE_POLICY, "");
                        }
                        Some(Ok(m)) => m,
                    };
                    match self.incoming(principal, msg).await {
                        Flow::Continue => {}
                        Flow::Close(code, reason) => return (code, reason),
                    }
                }
            }
        }
    }

    async fn incoming(&mut self, principal: &Principal, msg: Message) -> Flow {
        let text = match msg {
            Message::Text(t) => t,
            Message::Close(_) => return Flow::Close(1000, ""),
            Message::Ping(_) | Message::Pong(_) => return Flow::Continue,
            Message::Binary(_) => {
                self.send(&error(
                    None,
                    ErrorCode::BadRequest,
                    "binary messages are not accepted",
                ))
                .await;
                return Flow::Continue;
            }
        };
        let reply = match serde_json::from_str::<ClientMsg>(&text) {
            Err(_) if self.malformed.check().is_err() => {
                self.send(&error(
                    None,
                    ErrorCode::RateLimited,
                    "too many malformed messages",
                ))
                .await;
                return Flow::Close(CLOSE_POLICY, "too many malformed messages");
            }
            Err(e) => parse_error(&e),
            Ok(ClientMsg::Hello { .. }) => error(None, ErrorCode::BadRequest, "already said hello"),
            Ok(ClientMsg::Command { req, .. }) if self.limiter.check().is_err() => error(
                Some(req),
                ErrorCode::RateLimited,
                "too many messages; slow down",
            ),
            Ok(ClientMsg::Command { req, .. })
                if session_ended(&self.state.service, principal).await =>
            {
                let reply = app_error(Some(req), &AppError::SessionEnded);
                self.send(&reply).await;
                return Flow::Close(CLOSE_UNAUTHENTICATED, "sign-in ended");
            }
            Ok(ClientMsg::Command { req, command }) => {
                match self.state.service.execute(principal, command).await {
                    Ok(()) => ServerMsg::Ack { req },
                    Err(e) => app_error(Some(req), &e),
                }
            }
            Ok(_) if self.limiter.check().is_err() => {
                error(None, ErrorCode::RateLimited, "too many messages; slow down")
            }
            Ok(media) => match self.media_message(principal, media).await {
                Some(reply) => reply,
                None => return Flow::Continue,
            },
        };
        if self.send(&reply).await {
            Flow::Continue
        } else {
            Flow::Close(CLOSE_RESTART, "")
        }
    }
}

/// Whether a staff connection's sign-in has been ended (a store that does not answer
/// ends nothing).
async fn session_ended(service: &crate::service::Service, principal: &Principal) -> bool {
    match principal {
        Principal::Staff(claims) => matches!(
            service.live_session(claims).await,
            Err(AppError::SessionEnded)
        ),
        Principal::Patient(_) => false,
    }
}

/// The time left until `exp` (seconds since the epoch).
fn until(exp_secs: u64) -> Duration {
    let now_secs = crate::service::now().0 / 1000;
    // Patients' connections have no expiry here (u64::MAX): about 584 billion years.
    Duration::from_secs(exp_secs.saturating_sub(now_secs).min(100 * 365 * 24 * 3600))
}
