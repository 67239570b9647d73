//! The HTTP and websocket server: a thin axum shell over [`Service`].
//!
//! `run(listener, state, shutdown)` serves until the injected shutdown future resolves,
//! then stops accepting, tells every websocket to reconnect elsewhere (close code 1012),
//! and waits (bounded) for connections to finish.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{ConnectInfo, FromRequest, Path, Query, State};
use axum::http::header::{self, AUTHORIZATION};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::serve::ListenerExt;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use protocol::{
    AuditEntry, CallQualityView, ClinicEntryInfo, ClinicId, ClinicianView, Command, CreateClinic,
    CreateStaff, EnterRequest, EnterResponse, ErrorBody, ErrorCode, InviteResponse, InviteView,
    IssueInvite, MediaCheckAnswer, MediaCheckInfo, MediaCheckOffer, ServerMsg, SessionView,
    SignInRequest, SignInResponse, StaffId, StaffSession,
};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::set_header::SetResponseHeaderLayer;

use crate::auth::{Action, AuthError, StaffClaims, Target, authorize};
use crate::error::{AppError, status_of};
use crate::service::Service;

pub mod hub;
pub mod limits;
mod oidc;
pub mod presence;
mod ws;

use hub::Hub;

/// Limits that protect the server from clients, all configurable.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open websockets at most; more are refused with 429.
    pub max_connections: usize,
    /// The largest websocket message or REST body, in bytes.
    pub max_message_bytes: usize,
    /// Websocket messages per second per connection, and the burst above that.
    pub messages_per_second: u32,
    pub message_burst: u32,
    /// Patient entries per minute per client address.
    pub entries_per_minute: u32,
    /// Sign-in attempts per minute per client address.
    pub sign_ins_per_minute: u32,
    /// Pre-call media checks per minute per client address.
    pub media_checks_per_minute: u32,
    /// Malformed websocket messages per minute per connection; one more closes it.
    pub malformed_per_minute: u32,
    /// How often an open staff websocket checks that its sign-in goes on.
    pub session_check: Duration,
}

/// What every handler shares.
#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Service,
    pub hub: Arc<Hub>,
    /// The presence leases of this instance's patient connections.
    pub presence: Arc<presence::Presence>,
    pub limits: Limits,
    connection_slots: Arc<Semaphore>,
    addresses: Arc<limits::AddressLimiters>,
    /// Proxies whose `X-Forwarded-For` is believed.
    trusted_proxies: Arc<[ipnet::IpNet]>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    connection_ids: Arc<AtomicU64>,
    /// Where the browser client's files are served from at `/`: the copy embedded in the
    /// binary, or (for development) this directory.
    web_root: Option<std::path::PathBuf>,
    /// Media sessions of lost connections, waiting to be resumed.
    parked: Arc<ws::Parked>,
    /// Whether this server terminates TLS itself (then HSTS, whatever `public_url` says).
    https: bool,
    /// Who may read `/metrics`.
    metrics_access: sfu::metrics::Access,
}

impl AppState {
    pub fn new(service: Service, limits: Limits) -> Self {
        Self {
            service,
            hub: Arc::new(Hub::default()),
            presence: Arc::default(),
            limits,
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            addresses: Arc::new(limits::AddressLimiters::new(limits::PerMinute {
                sign_in: limits.sign_ins_per_minute,
                entry: limits.entries_per_minute,
                media_check: limits.media_checks_per_minute,
            })),
            trusted_proxies: Arc::from(Vec::new()),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            connection_ids: Arc::new(AtomicU64::new(0)),
            parked: Arc::default(),
            web_root: None,
            https: false,
            metrics_access: sfu::metrics::Access::default(),
        }
    }

    /// `/metrics` answers whoever sends `token` as a bearer token (empty: this host only).
    pub fn with_metrics_token(mut self, token: &str) -> Self {
        self.metrics_access = sfu::metrics::Access::new(token);
        self
    }

    /// Believes `X-Forwarded-For` from these proxies (the TLS proxy in front).
    pub fn with_trusted_proxies(mut self, proxies: Vec<ipnet::IpNet>) -> Self {
        self.trusted_proxies = Arc::from(proxies);
        self
    }

    /// How many client addresses the rate limiters hold (they are pruned every minute).
    pub fn limited_addresses(&self) -> usize {
        self.addresses.len()
    }

    /// Serves the browser client's files from `dir` at `/` instead of the embedded copy.
    pub fn with_web_root(mut self, dir: std::path::PathBuf) -> Self {
        self.web_root = Some(dir);
        self
    }

    fn next_connection_id(&self) -> u64 {
        self.connection_ids.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// How long shutdown waits for websockets to finish.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves plain HTTP until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_on(listener, state, None, shutdown).await
}

/// Serves HTTPS with `tls` until `shutdown` resolves, then drains. Reloading `tls`
/// (`RustlsConfig::reload_from_pem_file`) changes the certificate of new connections;
/// open ones, websockets among them, go on.
pub async fn run_tls(
    listener: TcpListener,
    state: AppState,
    tls: RustlsConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    run_on(listener, state, Some(tls), shutdown).await
}

async fn run_on(
    listener: TcpListener,
    mut state: AppState,
    tls: Option<RustlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.https = tls.is_some();
    let hub_task = tokio::spawn(
        state
            .hub
            .clone()
            .run(state.service.store().subscribe(), state.shutdown.clone()),
    );
    tokio::spawn(
        state
            .presence
            .clone()
            .renew(state.service.store().clone(), state.shutdown.clone()),
    );
    tokio::spawn(
        state
            .hub
            .clone()
            .watch_presence(state.service.store().clone(), state.shutdown.clone()),
    );
    // The rate limiters forget clients whose limits have recovered, every minute.
    let addresses = state.addresses.clone();
    let pruning = state.shutdown.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = pruning.cancelled() => return,
                _ = every.tick() => addresses.prune(),
            }
        }
    });
    let stop = state.shutdown.clone();
    let tasks = state.tasks.clone();
    let app = router(state).into_make_service_with_connect_info::<SocketAddr>();
    let served = match tls {
        None => {
            // Small websocket frames must not wait for Nagle's algorithm (a 40 ms stall
            // against delayed ACKs).
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "could not set TCP_NODELAY");
                }
            });
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    shutdown.await;
                    tracing::info!("shutting down: closing connections");
                    stop.cancel();
                })
                .await
        }
        Some(tls) => {
            let handle = axum_server::Handle::new();
            let stopping = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                tracing::info!("shutting down: closing connections");
                stop.cancel();
                stopping.graceful_shutdown(Some(DRAIN_TIMEOUT));
            });
            let acceptor = axum_server::tls_rustls::RustlsAcceptor::new(tls)
                .acceptor(axum_server::accept::NoDelayAcceptor::new());
            axum_server::from_tcp(listener.into_std()?)?
                .acceptor(acceptor)
                .handle(handle)
                .serve(app)
                .await
        }
    };
    tasks.close();
    if tokio::time::timeout(DRAIN_TIMEOUT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(left = tasks.len(), "connections did not finish in time");
    }
    hub_task.abort();
    served
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.limits.max_message_bytes;
    let not_found = || async { ApiError::from_code(ErrorCode::NotFound, "no such endpoint") };
    let api = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws", get(ws::upgrade))
        .route("/api/staff/sign-in", post(sign_in))
        .route("/api/staff/refresh", post(refresh))
        .route("/api/staff/sign-out", post(sign_out))
        .route("/api/staff/sign-in-options", get(oidc::sign_in_options))
        .route("/api/staff/oidc/start", get(oidc::start))
        .route("/api/staff/oidc/callback", get(oidc::callback))
        .route("/api/staff/oidc/session", post(oidc::session))
        .route("/api/admin/sessions", get(list_sessions))
        .route("/api/admin/sessions/{session}/end", post(end_session))
        .route(
            "/api/admin/staff/{user}/end-sessions",
            post(end_staff_sessions),
        )
        .route("/api/clinics/{clinic}", get(clinic_entry))
        .route("/api/clinics/{clinic}/room", get(room))
        .route("/api/clinics/{clinic}/clinicians", get(clinicians))
        .route("/api/clinics/{clinic}/call-quality", get(call_quality))
        .route("/api/media-check", get(media_check_info).post(media_check))
        .route("/api/visits", post(enter))
        .route("/api/commands", post(command))
        .route("/api/admin/clinics", post(create_clinic).get(list_clinics))
        .route("/api/admin/staff", post(create_staff).get(list_staff))
        .route("/api/admin/invites", post(issue_invite))
        .route("/api/clinics/{clinic}/invites", get(list_invites))
        .route("/api/invites/{invite}/revoke", post(revoke_invite))
        .route("/api/admin/audit", get(audit))
        .route("/api/admin/media-nodes", get(media_nodes))
        .route("/api/admin/media-nodes/{node}/drain", post(drain_node))
        .route("/api/admin/media-nodes/{node}/resume", post(resume_node))
        .route("/api/{*rest}", any(not_found))
        .layer(axum::extract::DefaultBodyLimit::max(body_limit));
    // Answers carry patient data: never stored by a browser or a proxy, never sniffed.
    let api = API_HEADERS.iter().fold(api, |api, (name, value)| {
        api.layer(SetResponseHeaderLayer::overriding(
            name.clone(),
            HeaderValue::from_static(value),
        ))
    });
    // HSTS over HTTPS, served here or by a proxy in front of a public_url of https.
    let hsts = state.https || state.service.public_url().starts_with("https://");
    let web_root = state.web_root.clone();
    let api = api.with_state(state);
    let pages = match web_root {
        Some(dir) => pages_from_disk(&dir, not_found),
        None => embedded_pages().fallback(not_found),
    };
    // Every page response: revalidated before use, and the platform's own scripts only.
    let pages = PAGE_HEADERS.iter().fold(pages, |pages, (name, value)| {
        pages.layer(SetResponseHeaderLayer::overriding(
            name.clone(),
            HeaderValue::from_static(value),
        ))
    });
    with_hsts(api.merge(pages), hsts)
}

/// Prepares the embedded pages now (each file decompressed and compressed again: tens
/// of milliseconds in a release build, most of a second in a debug one), so that the
/// first requests after the server says it listens do not wait for it.
pub fn prepare_pages() {
    let _ = embedded_pages();
}

/// The pages behind the links people are given (a clinic's open link, a personal invite,
/// staff and administration: each one HTML file) and every other file of the browser
/// client, all embedded in the binary at build time (`build.rs`): compressed (brotli or
/// gzip, as the browser accepts), with their content types and an ETag each, so a
/// revalidation of an unchanged file costs a 304. Built once per process.
fn embedded_pages() -> Router {
    static PAGES: std::sync::OnceLock<Router> = std::sync::OnceLock::new();
    PAGES
        .get_or_init(|| {
            memory_serve::load!()
                .index_file(Some("/index.html"))
                .add_alias("/c/{clinic}", "/patient.html")
                // The invite travels in the fragment (`/i#...`), which never reaches a server.
                .add_alias("/i", "/patient.html")
                .add_alias("/staff", "/staff.html")
                .add_alias("/admin", "/admin.html")
                .enable_brotli(true)
                .enable_gzip(true)
                // A deployment's new files are seen at once (PAGE_HEADERS says so too).
                .html_cache_control(memory_serve::CacheControl::NoCache)
                .cache_control(memory_serve::CacheControl::NoCache)
                .into_router()
        })
        .clone()
}

/// The same pages read from `dir` at each request (`web_root`, for development: an edit
/// shows on the next reload without a rebuild), compressed as they go.
fn pages_from_disk<H, T>(dir: &std::path::Path, not_found: H) -> Router
where
    H: axum::handler::Handler<T, ()> + Clone,
    T: 'static,
{
    let page = |name: &str| tower_http::services::ServeFile::new(dir.join(name));
    Router::new()
        .route_service("/", page("index.html"))
        .route_service("/c/{clinic}", page("patient.html"))
        .route_service("/i", page("patient.html"))
        .route_service("/staff", page("staff.html"))
        .route_service("/admin", page("admin.html"))
        .fallback_service(
            tower_http::services::ServeDir::new(dir).fallback(axum::routing::any(not_found)),
        )
        // A patient on a poor connection downloads a third of the bytes.
        .layer(tower_http::compression::CompressionLayer::new())
}

/// Browsers keep to HTTPS for a year once they have seen the platform over it.
fn with_hsts(router: Router, on: bool) -> Router {
    if on {
        router.layer(SetResponseHeaderLayer::overriding(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static("max-age=31536000"),
        ))
    } else {
        router
    }
}

/// What every API answer carries.
const API_HEADERS: [(header::HeaderName, &str); 2] = [
    (header::CACHE_CONTROL, "no-store"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
];

/// What every page response carries: revalidate before use (a deployment's new files
/// are seen at once; unchanged ones cost a 304), run only the platform's own scripts and
/// styles, connect only back to this origin, never be framed, never leak the address in
/// a referrer, and use camera, microphone and screen only for this origin.
const PAGE_HEADERS: [(header::HeaderName, &str); 5] = [
    (header::CACHE_CONTROL, "no-cache"),
    (
        header::CONTENT_SECURITY_POLICY,
        "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
         img-src 'self' data: blob:; media-src 'self' blob: mediastream:; object-src 'none'; \
         base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (header::REFERRER_POLICY, "no-referrer"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (
        header::HeaderName::from_static("permissions-policy"),
        "camera=(self), microphone=(self), display-capture=(self)",
    ),
];

// --- errors and extractors -------------------------------------------------------------------

/// A refused request: status and a JSON [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiError {
    pub fn from_code(code: ErrorCode, message: &str) -> Self {
        Self {
            status: status_of(code),
            body: ErrorBody {
                code,
                message: message.to_owned(),
            },
        }
    }
}

impl From<AppError> for ApiError {
    fn from(e: AppError) -> Self {
        e.log();
        Self {
            status: e.status(),
            body: e.body(),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        AppError::from(e).into()
    }
}

impl From<JsonRejection> for ApiError {
    fn from(r: JsonRejection) -> Self {
        let code = if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ErrorCode::MessageTooLarge
        } else {
            ErrorCode::BadRequest
        };
        Self::from_code(code, &r.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(r: QueryRejection) -> Self {
        Self::from_code(ErrorCode::BadRequest, &r.body_text())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

/// A JSON body whose rejections are answered in the API's own error format.
#[derive(Debug, FromRequest)]
#[from_request(via(Json), rejection(ApiError))]
pub struct Body<T>(pub T);

type ApiResult<T> = Result<Json<T>, ApiError>;

fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    headers
        .get(AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            ApiError::from_code(
                ErrorCode::Unauthenticated,
                "sign in first (no bearer token)",
            )
        })
}

async fn staff(state: &AppState, headers: &HeaderMap) -> Result<StaffClaims, ApiError> {
    Ok(state.service.authenticate_staff(bearer(headers)?).await?)
}

/// The signed-in administrator making the request, or why not.
async fn admin(state: &AppState, headers: &HeaderMap) -> Result<StaffClaims, ApiError> {
    let claims = staff(state, headers).await?;
    authorize(&claims, Action::Administer, None, Target::Clinic)?;
    Ok(claims)
}

/// Which per-address limit a request counts against.
#[derive(Debug, Clone, Copy)]
enum Limit {
    SignIn,
    Entry,
    MediaCheck,
}

fn check_rate(
    state: &AppState,
    limit: Limit,
    addr: SocketAddr,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    let ip = limits::client_ip(addr, headers, &state.trusted_proxies);
    let limiter = match limit {
        Limit::SignIn => &state.addresses.sign_in,
        Limit::Entry => &state.addresses.entry,
        Limit::MediaCheck => &state.addresses.media_check,
    };
    limiter.check_key(&ip).map_err(|_| {
        ApiError::from_code(
            ErrorCode::RateLimited,
            "too many attempts; wait a minute and try again",
        )
    })
}

// --- handlers --------------------------------------------------------------------------------

async fn readyz(State(state): State<AppState>) -> Response {
    match state.service.store().ping().await {
        Ok(()) => "ready".into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            (StatusCode::SERVICE_UNAVAILABLE, "store unavailable").into_response()
        }
    }
}

async fn metrics(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if !state.metrics_access.allows(peer, &headers) {
        return (StatusCode::FORBIDDEN, "metrics are not open to you").into_response();
    }
    let text = state
        .service
        .metrics()
        .render(state.service.store().as_ref())
        .await;
    ([(header::CONTENT_TYPE, sfu::metrics::CONTENT_TYPE)], text).into_response()
}

async fn media_nodes(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Vec<protocol::control::NodeRecord>> {
    admin(&state, &headers).await?;
    Ok(Json(state.service.media_nodes().await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DrainRequest {
    /// How long the node's calls may go on before they move.
    deadline_seconds: u64,
}

fn node_id(node: String) -> Result<protocol::NodeId, ApiError> {
    protocol::NodeId::parse(node)
        .map_err(|_| ApiError::from_code(ErrorCode::NotFound, "no such media node"))
}

async fn drain_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
    Body(req): Body<DrainRequest>,
) -> Result<StatusCode, ApiError> {
    let claims = admin(&state, &headers).await?;
    let node = node_id(node)?;
    state
        .service
        .drain_node(
            &format!("staff:{}", claims.sub),
            &node,
            Duration::from_secs(req.deadline_seconds),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn resume_node(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(node): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = admin(&state, &headers).await?;
    let node = node_id(node)?;
    state
        .service
        .resume_node(&format!("staff:{}", claims.sub), &node)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn sign_in(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<SignInRequest>,
) -> ApiResult<SignInResponse> {
    check_rate(&state, Limit::SignIn, addr, &headers)?;
    Ok(Json(state.service.sign_in(req).await?))
}

async fn refresh(State(state): State<AppState>, headers: HeaderMap) -> ApiResult<SignInResponse> {
    let claims = staff(&state, &headers).await?;
    Ok(Json(state.service.refresh(&claims).await?))
}

async fn sign_out(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> Result<StatusCode, ApiError> {
    let claims = staff(&state, &headers).await?;
    state.service.sign_out(&claims).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Vec<SessionView>> {
    admin(&state, &headers).await?;
    Ok(Json(state.service.sessions().await?))
}

async fn end_session(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(session): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = admin(&state, &headers).await?;
    let id = session
        .parse()
        .map_err(|_| ApiError::from_code(ErrorCode::NotFound, "no such sign-in"))?;
    state
        .service
        .end_session(&format!("staff:{}", claims.sub), id)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn end_staff_sessions(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = admin(&state, &headers).await?;
    let user = StaffId::parse(user)
        .map_err(|_| ApiError::from_code(ErrorCode::NotFound, "no such member of staff"))?;
    state
        .service
        .end_sessions_of(&format!("staff:{}", claims.sub), &user)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn clinic_entry(
    State(state): State<AppState>,
    Path(clinic): Path<String>,
) -> ApiResult<ClinicEntryInfo> {
    let clinic = clinic_path(clinic)?;
    Ok(Json(state.service.clinic_entry(&clinic).await?))
}

/// A clinic named in a path: one that cannot exist is simply not found.
fn clinic_path(clinic: String) -> Result<ClinicId, ApiError> {
    ClinicId::parse(clinic).map_err(|_| ApiError::from_code(ErrorCode::NotFound, "no such clinic"))
}

async fn room(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(clinic): Path<String>,
) -> ApiResult<ServerMsg> {
    let claims = staff(&state, &headers).await?;
    let clinic = clinic_path(clinic)?;
    Ok(Json(state.service.room_snapshot(&claims, &clinic).await?))
}

async fn clinicians(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(clinic): Path<String>,
) -> ApiResult<Vec<ClinicianView>> {
    let claims = staff(&state, &headers).await?;
    let clinic = clinic_path(clinic)?;
    Ok(Json(state.service.clinicians(&claims, &clinic).await?))
}

/// The ICE servers for one run of the pre-call check, with a TURN credential of its own
/// (short-lived; counted against the address's media checks like the check itself).
async fn media_check_info(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> ApiResult<MediaCheckInfo> {
    check_rate(&state, Limit::MediaCheck, addr, &headers)?;
    let media = state.service.media().ok_or_else(|| {
        ApiError::from(AppError::Unavailable("this server carries no media".into()))
    })?;
    let now_secs = crate::service::now().0 / 1000;
    Ok(Json(MediaCheckInfo {
        ice_servers: media.ice_servers().for_check(now_secs),
    }))
}

async fn media_check(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(offer): Body<MediaCheckOffer>,
) -> ApiResult<MediaCheckAnswer> {
    check_rate(&state, Limit::MediaCheck, addr, &headers)?;
    if offer.sdp.len() > protocol::MAX_SDP_BYTES {
        return Err(AppError::Invalid("the SDP is too long".into()).into());
    }
    let media = state.service.media().ok_or_else(|| {
        ApiError::from(AppError::Unavailable("this server carries no media".into()))
    })?;
    let sdp = media.probe(offer.sdp).await?;
    Ok(Json(MediaCheckAnswer { sdp }))
}

async fn list_clinics(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Vec<ClinicEntryInfo>> {
    admin(&state, &headers).await?;
    let clinics = state
        .service
        .store()
        .clinics()
        .await
        .map_err(AppError::from)?;
    Ok(Json(
        clinics
            .into_iter()
            .map(|c| ClinicEntryInfo {
                id: c.id,
                name: c.name,
                open_link: c.open_link,
            })
            .collect(),
    ))
}

async fn list_staff(
    State(state): State<AppState>,
    headers: HeaderMap,
) -> ApiResult<Vec<StaffSession>> {
    admin(&state, &headers).await?;
    let staff = state
        .service
        .store()
        .staff_list()
        .await
        .map_err(AppError::from)?;
    Ok(Json(
        staff
            .into_iter()
            .map(|s| StaffSession {
                username: s.username,
                display_name: s.display_name,
                role: s.role,
                clinics: s.clinics,
            })
            .collect(),
    ))
}

async fn enter(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Body(req): Body<EnterRequest>,
) -> ApiResult<EnterResponse> {
    check_rate(&state, Limit::Entry, addr, &headers)?;
    Ok(Json(state.service.enter(req).await?))
}

async fn command(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(cmd): Body<Command>,
) -> Result<StatusCode, ApiError> {
    let who = state.service.authenticate(bearer(&headers)?).await?;
    state.service.execute(&who, cmd).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_clinic(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<CreateClinic>,
) -> Result<StatusCode, ApiError> {
    let claims = admin(&state, &headers).await?;
    state
        .service
        .create_clinic(&format!("staff:{}", claims.sub), req)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn create_staff(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<CreateStaff>,
) -> Result<StatusCode, ApiError> {
    let claims = admin(&state, &headers).await?;
    state
        .service
        .create_staff(&format!("staff:{}", claims.sub), req)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn issue_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Body(req): Body<IssueInvite>,
) -> ApiResult<InviteResponse> {
    let claims = staff(&state, &headers).await?;
    authorize(
        &claims,
        Action::IssueInvite,
        Some(&req.clinic),
        Target::Clinic,
    )?;
    Ok(Json(
        state
            .service
            .issue_invite(&format!("staff:{}", claims.sub), req)
            .await?,
    ))
}

/// How the clinic's calls of the last days went (the support desk's summary).
async fn call_quality(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(clinic): Path<String>,
) -> ApiResult<Vec<CallQualityView>> {
    let claims = staff(&state, &headers).await?;
    let clinic = clinic_path(clinic)?;
    Ok(Json(state.service.call_quality(&claims, &clinic).await?))
}

async fn list_invites(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(clinic): Path<String>,
) -> ApiResult<Vec<InviteView>> {
    let claims = staff(&state, &headers).await?;
    let clinic = clinic_path(clinic)?;
    Ok(Json(state.service.invites(&claims, &clinic).await?))
}

async fn revoke_invite(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(invite): Path<String>,
) -> Result<StatusCode, ApiError> {
    let claims = staff(&state, &headers).await?;
    let invite = invite
        .parse()
        .map_err(|_| ApiError::from_code(ErrorCode::NotFound, "no such invite"))?;
    state.service.revoke_invite(&claims, invite).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
struct AuditQuery {
    limit: Option<usize>,
}

async fn audit(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> ApiResult<Vec<AuditEntry>> {
    admin(&state, &headers).await?;
    let Query(q) = query?;
    let limit = q.limit.unwrap_or(100).min(10_000);
    Ok(Json(
        state
            .service
            .store()
            .audit_tail(limit)
            .await
            .map_err(AppError::from)?,
    ))
}
