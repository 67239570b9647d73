//! Staff sign-in through the hospital's identity provider, over HTTP:
//!
//! - `GET /api/staff/sign-in-options`: whether the sign-in page shows "Sign in with …".
//! - `GET /api/staff/oidc/start`: redirects to the provider. The state, nonce and PKCE
//!   verifier travel in a signed (the token secret), HttpOnly, `SameSite=Lax` cookie that
//!   lasts [`PENDING_LIFETIME`] and is sent only to `/api/staff/oidc/`: nothing is kept
//!   on the server, so any instance can take the callback, and a flood of starts fills no
//!   memory.
//! - `GET /api/staff/oidc/callback`: checks the state against the cookie, exchanges the
//!   code with the verifier, has the ID token verified and the person signed in
//!   (`Service::oidc_sign_in`), then hands the staff token to the page in another
//!   HttpOnly cookie (never in a URL) and sends the browser to `/staff#oidc`.
//! - `POST /api/staff/oidc/session`: the page swaps that cookie for the sign-in, once.
//!
//! Refusals are plain pages that say what to do.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Json;
use axum::extract::{ConnectInfo, Query, State};
use axum::http::StatusCode;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::response::{Html, IntoResponse, Response};
use cookie::{Cookie, SameSite};
use protocol::SignInOptions;
use serde::Deserialize;

use super::{ApiError, ApiResult, AppState, Limit, check_rate};
use crate::auth::oidc::OidcError;
use crate::error::AppError;
use crate::service::OidcRefusal;

/// How long a browser has to sign in at the provider.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// How long the page that lands after the provider has to take its token over.
const HANDOVER_LIFETIME: Duration = Duration::from_secs(60);
const PENDING_COOKIE: &str = "consult_oidc";
const HANDOVER_COOKIE: &str = "consult_oidc_token";
const COOKIE_PATH: &str = "/api/staff/oidc/";

/// `GET /api/staff/sign-in-options`.
pub async fn sign_in_options(State(state): State<AppState>) -> Json<SignInOptions> {
    Json(SignInOptions {
        oidc: state.service.oidc().map(|o| o.provider_name().to_owned()),
    })
}

fn cookie(state: &AppState, name: &'static str, value: String, lasts: Duration) -> HeaderValue {
    let c = Cookie::build((name, value))
        .path(COOKIE_PATH)
        .http_only(true)
        .same_site(SameSite::Lax)
        .secure(state.https || state.service.public_url().starts_with("https://"))
        .max_age(cookie::time::Duration::seconds(
            i64::try_from(lasts.as_secs()).unwrap_or(i64::MAX),
        ))
        .build();
    // A cookie of ASCII names and base64url / JWT values is always a valid header.
    HeaderValue::from_str(&c.to_string()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(Cookie::split_parse)
        .filter_map(Result::ok)
        .find(|c| c.name() == name && !c.value().is_empty())
        .map(|c| c.value().to_owned())
}

/// A plain page for a person whose sign-in did not work.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title} – Consult</title><link rel=\"stylesheet\" href=\"/css/base.css\"></head>\
         <body><main class=\"narrow\"><h1>{title}</h1><p>{text}</p>\
         <p><a href=\"/staff\">Back to staff sign-in</a></p></main></body></html>"
    );
    (status, Html(body)).into_response()
}

/// The page when no identity provider is configured.
fn not_set_up() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Not available",
        "Sign-in through an identity provider is not set up here.",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Sign-in is not available just now",
        "Your organisation's sign-in service is not answering. Try again in a few minutes; \
         if it keeps happening, tell IT support.",
    )
}

/// `GET /api/staff/oidc/start`.
pub async fn start(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(oidc) = state.service.oidc().cloned() else {
        return not_set_up();
    };
    if let Err(e) = check_rate(&state, Limit::SignIn, addr, &headers) {
        return e.into_response();
    }
    match oidc.begin().await {
        Ok((url, pending)) => {
            let token = state.service.oidc_pending_token(&pending, PENDING_LIFETIME);
            let mut res = (StatusCode::SEE_OTHER, [(header::LOCATION, url)]).into_response();
            res.headers_mut().append(
                header::SET_COOKIE,
                cookie(&state, PENDING_COOKIE, token, PENDING_LIFETIME),
            );
            res
        }
        Err(e) => {
            tracing::warn!(error = %e, "OpenID Connect sign-in could not start");
            unavailable()
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

/// `GET /api/staff/oidc/callback`.
pub async fn callback(
    State(state): State<AppState>,
    ConnectInfo(addr): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    query: Result<Query<CallbackQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let mut res = callback_inner(&state, addr, &headers, query.ok().map(|q| q.0)).await;
    // The sign-in under way is over, whatever happened: its cookie goes.
    res.headers_mut().append(
        header::SET_COOKIE,
        cookie(&state, PENDING_COOKIE, String::new(), Duration::ZERO),
    );
    res
}

async fn callback_inner(
    state: &AppState,
    addr: SocketAddr,
    headers: &HeaderMap,
    query: Option<CallbackQuery>,
) -> Response {
    let Some(oidc) = state.service.oidc().cloned() else {
        return not_set_up();
    };
    if let Err(e) = check_rate(state, Limit::SignIn, addr, headers) {
        return e.into_response();
    }
    let again = "Go back to the staff sign-in page and start again.";
    let Some(q) = query else {
        return page(StatusCode::BAD_REQUEST, "Sign-in did not work", again);
    };
    if let Some(e) = q.error {
        tracing::info!(error = %e, "the identity provider sent the browser back with an error");
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in did not work",
            "Your organisation's sign-in service did not sign you in. Go back to the staff \
             sign-in page and try again.",
        );
    }
    // Only the browser that started this sign-in, coming back with its state, goes on.
    let pending = cookie_value(headers, PENDING_COOKIE)
        .and_then(|t| state.service.check_oidc_pending(&t).ok());
    let (Some(pending), Some(code), Some(got)) = (pending, q.code, q.state) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired or was not started here",
            again,
        );
    };
    // (The state is no secret: it travelled in the URL. It ties this callback to this
    // browser's start.)
    if got != pending.state {
        return page(
            StatusCode::BAD_REQUEST,
            "Sign-in expired or was not started here",
            again,
        );
    }
    let identity = match oidc.finish(code, pending).await {
        Ok(i) => i,
        Err(OidcError::Unreachable(e)) => {
            tracing::warn!(error = %e, "identity provider unavailable at a callback");
            return unavailable();
        }
        Err(e) => {
            tracing::info!(error = %e, "an OpenID Connect callback was refused");
            return page(StatusCode::BAD_REQUEST, "Sign-in did not work", again);
        }
    };
    match state.service.oidc_sign_in(identity).await {
        Ok(signed_in) => {
            let mut res =
                (StatusCode::SEE_OTHER, [(header::LOCATION, "/staff#oidc")]).into_response();
            res.headers_mut().append(
                header::SET_COOKIE,
                cookie(state, HANDOVER_COOKIE, signed_in.token, HANDOVER_LIFETIME),
            );
            res
        }
        Err(OidcRefusal::App(e)) => ApiError::from(e).into_response(),
        Err(r @ (OidcRefusal::NoAccess | OidcRefusal::NoUserName | OidcRefusal::NameTaken)) => {
            page(
                StatusCode::FORBIDDEN,
                "No access to this service",
                &format!(
                    "You signed in, but {r}. If you need access, ask your IT service desk to \
                     add you to the right group."
                ),
            )
        }
        Err(OidcRefusal::NotConfigured) => not_set_up(),
    }
}

/// `POST /api/staff/oidc/session`: the landing page takes its sign-in over, once.
pub async fn session(State(state): State<AppState>, headers: HeaderMap) -> Response {
    let result: ApiResult<protocol::SignInResponse> = async {
        let token = cookie_value(&headers, HANDOVER_COOKIE)
            .ok_or(AppError::Auth(crate::auth::AuthError::Invalid))?;
        Ok(Json(state.service.staff_sign_in_of(&token).await?))
    }
    .await;
    let mut res = result.into_response();
    res.headers_mut().append(
        header::SET_COOKIE,
        cookie(&state, HANDOVER_COOKIE, String::new(), Duration::ZERO),
    );
    res
}
