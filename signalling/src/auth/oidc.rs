//! Staff sign-in through the hospital's identity provider (OpenID Connect): discovery,
//! the authorisation code flow with PKCE, ID token verification (signature, issuer,
//! audience, nonce, expiry), refreshing at the provider, and the mapping from the
//! provider's groups to a role and clinics. No I/O but the provider's: the session, the
//! directory and the audit log are the service's (`service/identity.rs`).
//!
//! Discovery happens at start and again whenever it is needed and has not succeeded (at
//! most every [`RETRY_DISCOVERY`]), and the provider's metadata and keys are read again
//! after [`METADATA_MAX_AGE`]: consult starts without its identity provider, and local
//! sign-in and `/readyz` never depend on it.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openidconnect::core::{
    CoreAuthDisplay, CoreAuthPrompt, CoreAuthenticationFlow, CoreErrorResponseType,
    CoreGenderClaim, CoreJsonWebKey, CoreJweContentEncryptionAlgorithm, CoreJwsSigningAlgorithm,
    CoreProviderMetadata, CoreRevocableToken, CoreRevocationErrorResponse,
    CoreTokenIntrospectionResponse, CoreTokenType,
};
use openidconnect::{
    AccessToken, AdditionalClaims, AuthorizationCode, Client, ClientId, ClientSecret, CsrfToken,
    EmptyExtraTokenFields, EndpointMaybeSet, EndpointNotSet, EndpointSet, IdTokenClaims,
    IdTokenFields, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RefreshToken, RequestTokenError, Scope, StandardErrorResponse,
    StandardTokenResponse, SubjectIdentifier, TokenResponse, UserInfoClaims, reqwest,
};
use protocol::{ClinicId, Role};
use serde::{Deserialize, Serialize};

/// How long after a failed discovery the next attempt may be made.
pub const RETRY_DISCOVERY: Duration = Duration::from_secs(10);
/// How long the provider's metadata (and so its signing keys) is used before it is read
/// again.
pub const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);
/// Where the provider sends the browser back, under `public_url`.
pub const CALLBACK_PATH: &str = "/api/staff/oidc/callback";

/// The `[oidc]` section of the configuration (documented in `infra/consult.toml`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The provider's issuer URL; empty: no sign-in through an identity provider.
    pub issuer: String,
    pub client_id: String,
    /// The client secret, or empty to read it from `client_secret_file`.
    pub client_secret: String,
    pub client_secret_file: PathBuf,
    /// Shown on the sign-in button: "Sign in with {provider_name}".
    pub provider_name: String,
    /// Scopes asked for besides `openid`.
    pub scopes: Vec<String>,
    /// The claim (ID token, else userinfo) that lists the person's groups.
    pub groups_claim: String,
    /// The claim that becomes the user name in the directory.
    pub username_claim: String,
    /// The claim that becomes the display name.
    pub name_claim: String,
    /// How long a call to the provider may take, in milliseconds.
    pub timeout_ms: u64,
    /// How long a sign-in goes on while the provider cannot be reached, in minutes.
    pub unreachable_grace_minutes: u64,
    /// Group name → what it grants.
    pub groups: BTreeMap<String, GroupGrant>,
}

impl fmt::Debug for OidcConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("client_secret_file", &self.client_secret_file)
            .field("provider_name", &self.provider_name)
            .field("scopes", &self.scopes)
            .field("groups_claim", &self.groups_claim)
            .field("username_claim", &self.username_claim)
            .field("name_claim", &self.name_claim)
            .field("timeout_ms", &self.timeout_ms)
            .field("unreachable_grace_minutes", &self.unreachable_grace_minutes)
            .field("groups", &self.groups)
            .finish()
    }
}

/// What membership of one group of the provider grants.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GroupGrant {
    pub role: Role,
    #[serde(default)]
    pub clinics: Vec<ClinicId>,
}

/// The role and clinics a set of groups maps to: the most trusted role among the groups
/// that map (admin, then clinician, then reception) and every clinic any of them lists.
/// `None` when no group maps.
pub fn map_groups(
    mapping: &BTreeMap<String, GroupGrant>,
    groups: &[String],
) -> Option<(Role, Vec<ClinicId>)> {
    let rank = |r: Role| match r {
        Role::Admin => 3,
        Role::Clinician => 2,
        Role::Reception => 1,
    };
    let mut role: Option<Role> = None;
    let mut clinics: Vec<ClinicId> = Vec::new();
    for g in groups.iter().filter_map(|g| mapping.get(g)) {
        if role.is_none_or(|r| rank(g.role) > rank(r)) {
            role = Some(g.role);
        }
        for c in &g.clinics {
            if !clinics.contains(c) {
                clinics.push(c.clone());
            }
        }
    }
    clinics.sort();
    role.map(|r| (r, clinics))
}

/// Claims beyond the standard ones (the groups claim among them), whatever their names.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct OtherClaims(BTreeMap<String, serde_json::Value>);

impl AdditionalClaims for OtherClaims {}

type IdFields = IdTokenFields<
    OtherClaims,
    EmptyExtraTokenFields,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJwsSigningAlgorithm,
>;
type Tokens = StandardTokenResponse<IdFields, CoreTokenType>;
type ProviderClient = Client<
    OtherClaims,
    CoreAuthDisplay,
    CoreGenderClaim,
    CoreJweContentEncryptionAlgorithm,
    CoreJsonWebKey,
    CoreAuthPrompt,
    StandardErrorResponse<CoreErrorResponseType>,
    Tokens,
    CoreTokenIntrospectionResponse,
    CoreRevocableToken,
    CoreRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// A secret string with no `Debug` output (a refresh token, the client secret).
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What the browser carries between `start` and `callback` (in a signed, HttpOnly
/// cookie): the state it must come back with, the nonce the ID token must carry, and the
/// PKCE verifier the code is exchanged with.
#[derive(Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct Pending {
    pub state: String,
    pub nonce: String,
    pub verifier: String,
}

impl fmt::Debug for Pending {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Pending(..)")
    }
}

/// Who the provider says signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The provider's `sub`.
    pub subject: String,
    /// From `username_claim`, as it came (not yet checked as a user name).
    pub username: Option<String>,
    pub display_name: Option<String>,
    pub groups: Vec<String>,
    pub refresh_token: Option<Secret>,
}

/// What a refresh at the provider said.
#[derive(Debug, Clone)]
pub struct Refreshed {
    pub groups: Vec<String>,
    pub display_name: Option<String>,
    /// A new refresh token, when the provider rotates them.
    pub refresh_token: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum OidcError {
    /// The provider could not be reached, timed out, or answered nonsense.
    #[error("the identity provider is unavailable: {0}")]
    Unreachable(String),
    /// The provider answered, and refused (a bad code, a revoked refresh token).
    #[error("the identity provider refused: {0}")]
    Refused(String),
    /// What came back does not verify (signature, issuer, audience, nonce, expiry).
    #[error("the identity provider's answer does not verify: {0}")]
    Invalid(String),
}

/// The settings checked at start.
#[derive(Debug, Clone)]
struct Settings {
    issuer: IssuerUrl,
    client_id: ClientId,
    secret: Secret,
    redirect: RedirectUrl,
    scopes: Vec<String>,
    groups_claim: String,
    username_claim: String,
    name_claim: String,
    timeout: Duration,
}

#[derive(Debug, Default)]
struct Discovered {
    client: Option<(Arc<ProviderClient>, Instant)>,
    last_attempt: Option<Instant>,
}

/// The identity provider, as this instance knows it.
#[derive(Debug)]
pub struct Oidc {
    settings: Settings,
    provider_name: String,
    mapping: BTreeMap<String, GroupGrant>,
    grace: Duration,
    http: reqwest::Client,
    discovered: tokio::sync::Mutex<Discovered>,
}

impl Oidc {
    /// Checks the `[oidc]` section; `Ok(None)` when it is off (no issuer).
    pub fn from_config(c: &OidcConfig, public_url: &str) -> Result<Option<Self>, String> {
        if c.issuer.trim().is_empty() {
            return Ok(None);
        }
        let issuer = IssuerUrl::new(c.issuer.trim().to_owned())
            .map_err(|e| format!("oidc.issuer is not a URL: {e}"))?;
        if !(issuer.url().scheme() == "https" || is_loopback(issuer.url())) {
            return Err("oidc.issuer must be https (http only on a loopback address)".into());
        }
        if c.client_id.trim().is_empty() {
            return Err("oidc.client_id must be set".into());
        }
        let secret = if !c.client_secret.is_empty() {
            c.client_secret.clone()
        } else if !c.client_secret_file.as_os_str().is_empty() {
            std::fs::read_to_string(&c.client_secret_file)
                .map_err(|e| {
                    format!(
                        "oidc.client_secret_file {}: {e}",
                        c.client_secret_file.display()
                    )
                })?
                .trim()
                .to_owned()
        } else {
            String::new()
        };
        if secret.is_empty() {
            return Err("oidc.client_secret or oidc.client_secret_file must be set".into());
        }
        let redirect = RedirectUrl::new(format!(
            "{}{CALLBACK_PATH}",
            public_url.trim_end_matches('/')
        ))
        .map_err(|e| format!("public_url does not make a redirect URL: {e}"))?;
        if c.groups.is_empty() {
            return Err("oidc.groups must map at least one group to a role".into());
        }
        if c.groups_claim.is_empty() || c.username_claim.is_empty() || c.name_claim.is_empty() {
            return Err("oidc.groups_claim, username_claim and name_claim must be set".into());
        }
        if !(100..=60_000).contains(&c.timeout_ms) {
            return Err("oidc.timeout_ms must be 100..=60000".into());
        }
        let timeout = Duration::from_millis(c.timeout_ms);
        let http = reqwest::ClientBuilder::new()
            // The provider's endpoints answer; they never redirect (a redirect would be
            // a way to make this server call elsewhere).
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()
            .map_err(|e| format!("oidc: cannot build an HTTP client: {e}"))?;
        Ok(Some(Self {
            settings: Settings {
                issuer,
                client_id: ClientId::new(c.client_id.trim().to_owned()),
                secret: Secret(secret),
                redirect,
                scopes: c.scopes.clone(),
                groups_claim: c.groups_claim.clone(),
                username_claim: c.username_claim.clone(),
                name_claim: c.name_claim.clone(),
                timeout,
            },
            provider_name: c.provider_name.clone(),
            mapping: c.groups.clone(),
            grace: Duration::from_secs(c.unreachable_grace_minutes * 60),
            http,
            discovered: tokio::sync::Mutex::default(),
        }))
    }

    /// What the sign-in button says: "Sign in with {name}".
    pub fn provider_name(&self) -> &str {
        &self.provider_name
    }

    /// How long a sign-in goes on while the provider cannot be reached.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// The role and clinics `groups` map to.
    pub fn map(&self, groups: &[String]) -> Option<(Role, Vec<ClinicId>)> {
        map_groups(&self.mapping, groups)
    }

    /// The provider's client, discovered now if it has not been (or its metadata is
    /// old); a failed discovery is not tried again for [`RETRY_DISCOVERY`].
    pub async fn client(&self) -> Result<Arc<ProviderClient>, OidcError> {
        let mut d = self.discovered.lock().await;
        if let Some((c, at)) = &d.client {
            if at.elapsed() < METADATA_MAX_AGE {
                return Ok(c.clone());
            }
        }
        if let Some(at) = d.last_attempt {
            if at.elapsed() < RETRY_DISCOVERY {
                // Still the last one (old metadata beats none), else unavailable.
                return d
                    .client
                    .as_ref()
                    .map(|(c, _)| c.clone())
                    .ok_or_else(|| OidcError::Unreachable("discovery failed moments ago".into()));
            }
        }
        d.last_attempt = Some(Instant::now());
        let found = tokio::time::timeout(
            self.settings.timeout,
            CoreProviderMetadata::discover_async(self.settings.issuer.clone(), &self.http),
        )
        .await
        .map_err(|_| OidcError::Unreachable("discovery timed out".into()))
        .and_then(|r| r.map_err(|e| OidcError::Unreachable(format!("discovery: {}", chain(&e)))));
        let meta = match found {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, issuer = %self.settings.issuer.as_str(), "OpenID Connect discovery failed");
                return d.client.as_ref().map(|(c, _)| c.clone()).ok_or(e);
            }
        };
        let client = ProviderClient::from_provider_metadata(
            meta,
            self.settings.client_id.clone(),
            Some(ClientSecret::new(self.settings.secret.0.clone())),
        )
        .set_redirect_uri(self.settings.redirect.clone());
        let client = Arc::new(client);
        tracing::info!(issuer = %self.settings.issuer.as_str(), "OpenID Connect provider discovered");
        d.client = Some((client.clone(), Instant::now()));
        Ok(client)
    }

    /// Where to send the browser to sign in, and what it must bring back.
    pub async fn begin(&self) -> Result<(String, Pending), OidcError> {
        let client = self.client().await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let mut req = client
            .authorize_url(
                CoreAuthenticationFlow::AuthorizationCode,
                CsrfToken::new_random,
                Nonce::new_random,
            )
            .set_pkce_challenge(challenge);
        for s in self.settings.scopes.iter().filter(|s| *s != "openid") {
            req = req.add_scope(Scope::new(s.clone()));
        }
        let (url, state, nonce) = req.url();
        Ok((
            url.to_string(),
            Pending {
                state: state.secret().clone(),
                nonce: nonce.secret().clone(),
                verifier: verifier.secret().clone(),
            },
        ))
    }

    /// Exchanges the code the provider sent back (the state already checked) and verifies
    /// the ID token it comes with.
    pub async fn finish(&self, code: String, pending: Pending) -> Result<Identity, OidcError> {
        let client = self.client().await?;
        let tokens = client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| OidcError::Unreachable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(pending.verifier))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let id_token = tokens
            .id_token()
            .ok_or_else(|| OidcError::Invalid("no ID token".into()))?;
        let nonce = Nonce::new(pending.nonce);
        let claims = id_token
            .claims(&client.id_token_verifier(), &nonce)
            .map_err(|e| OidcError::Invalid(chain(&e)))?;
        let subject = claims.subject().clone();
        let mut identity = Identity {
            subject: subject.to_string(),
            username: self.claim_text(claims, &self.settings.username_claim),
            display_name: self.claim_text(claims, &self.settings.name_claim),
            groups: groups_in(&claims.additional_claims().0, &self.settings.groups_claim),
            refresh_token: tokens.refresh_token().map(|t| Secret(t.secret().clone())),
        };
        if !claims
            .additional_claims()
            .0
            .contains_key(&self.settings.groups_claim)
        {
            let info = self
                .user_info(&client, tokens.access_token().clone(), subject)
                .await?;
            if let Some(info) = info {
                identity.groups =
                    groups_in(&info.additional_claims().0, &self.settings.groups_claim);
                if identity.username.is_none() {
                    identity.username = info_text(&info, &self.settings.username_claim);
                }
                if identity.display_name.is_none() {
                    identity.display_name = info_text(&info, &self.settings.name_claim);
                }
            }
        }
        Ok(identity)
    }

    /// Refreshes at the provider with a sign-in's refresh token and reads the person's
    /// groups again: from the new ID token, or else from userinfo.
    pub async fn refresh(
        &self,
        refresh_token: &Secret,
        subject: &str,
    ) -> Result<Refreshed, OidcError> {
        let client = self.client().await?;
        let token = RefreshToken::new(refresh_token.0.clone());
        let tokens = client
            .exchange_refresh_token(&token)
            .map_err(|e| OidcError::Unreachable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let mut out = Refreshed {
            groups: Vec::new(),
            display_name: None,
            refresh_token: tokens.refresh_token().map(|t| Secret(t.secret().clone())),
        };
        let mut have_groups = false;
        if let Some(id_token) = tokens.id_token() {
            // A refreshed ID token carries the first one's nonce or none (OIDC Core 12.2):
            // what proves it is fresh is the refresh itself, over TLS, with our secret.
            let claims = id_token
                .claims(&client.id_token_verifier(), |_: Option<&Nonce>| Ok(()))
                .map_err(|e| OidcError::Invalid(chain(&e)))?;
            if claims.subject().as_str() != subject {
                return Err(OidcError::Invalid(
                    "the refreshed ID token is for someone else".into(),
                ));
            }
            out.display_name = self.claim_text(claims, &self.settings.name_claim);
            if claims
                .additional_claims()
                .0
                .contains_key(&self.settings.groups_claim)
            {
                out.groups = groups_in(&claims.additional_claims().0, &self.settings.groups_claim);
                have_groups = true;
            }
        }
        if !have_groups {
            let info = self
                .user_info(
                    &client,
                    tokens.access_token().clone(),
                    SubjectIdentifier::new(subject.to_owned()),
                )
                .await?;
            if let Some(info) = info {
                out.groups = groups_in(&info.additional_claims().0, &self.settings.groups_claim);
                if out.display_name.is_none() {
                    out.display_name = info_text(&info, &self.settings.name_claim);
                }
            }
        }
        Ok(out)
    }

    async fn user_info(
        &self,
        client: &ProviderClient,
        access: AccessToken,
        subject: SubjectIdentifier,
    ) -> Result<Option<UserInfoClaims<OtherClaims, CoreGenderClaim>>, OidcError> {
        let Ok(req) = client.user_info(access, Some(subject)) else {
            return Ok(None);
        };
        req.request_async(&self.http)
            .await
            .map(Some)
            .map_err(|e| match e {
                openidconnect::UserInfoError::ClaimsVerification(e) => {
                    OidcError::Invalid(chain(&e))
                }
                openidconnect::UserInfoError::Response(status, _, _)
                    if status.is_client_error() =>
                {
                    OidcError::Refused(format!("userinfo answered {status}"))
                }
                e => OidcError::Unreachable(format!("userinfo: {}", chain(&e))),
            })
    }

    fn claim_text(
        &self,
        claims: &IdTokenClaims<OtherClaims, CoreGenderClaim>,
        name: &str,
    ) -> Option<String> {
        let standard = match name {
            "sub" => Some(claims.subject().to_string()),
            "preferred_username" => claims.preferred_username().map(|u| u.to_string()),
            "email" => claims.email().map(|e| e.to_string()),
            "name" => claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.to_string()),
            _ => None,
        };
        standard
            .or_else(|| text_in(&claims.additional_claims().0, name))
            .filter(|s| !s.trim().is_empty())
    }
}

fn info_text(info: &UserInfoClaims<OtherClaims, CoreGenderClaim>, name: &str) -> Option<String> {
    let standard = match name {
        "sub" => Some(info.subject().to_string()),
        "preferred_username" => info.preferred_username().map(|u| u.to_string()),
        "email" => info.email().map(|e| e.to_string()),
        "name" => info.name().and_then(|n| n.get(None)).map(|n| n.to_string()),
        _ => None,
    };
    standard
        .or_else(|| text_in(&info.additional_claims().0, name))
        .filter(|s| !s.trim().is_empty())
}

fn text_in(claims: &BTreeMap<String, serde_json::Value>, name: &str) -> Option<String> {
    claims.get(name).and_then(|v| v.as_str()).map(str::to_owned)
}

/// A groups claim: a list of names, or one name.
fn groups_in(claims: &BTreeMap<String, serde_json::Value>, name: &str) -> Vec<String> {
    match claims.get(name) {
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
        Some(serde_json::Value::String(s)) => vec![s.clone()],
        _ => Vec::new(),
    }
}

fn token_error<RE: std::error::Error + 'static>(
    e: RequestTokenError<RE, StandardErrorResponse<CoreErrorResponseType>>,
) -> OidcError {
    match e {
        RequestTokenError::ServerResponse(r) => OidcError::Refused(r.error().to_string()),
        e => OidcError::Unreachable(chain(&e)),
    }
}

/// An error with its causes, for the log (never the client).
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

fn is_loopback(url: &openidconnect::url::Url) -> bool {
    match url.host() {
        Some(openidconnect::url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(openidconnect::url::Host::Domain(d)) => d == "localhost",
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(role: Role, clinics: &[&str]) -> GroupGrant {
        GroupGrant {
            role,
            clinics: clinics
                .iter()
                .map(|c| ClinicId::parse(*c).unwrap())
                .collect(),
        }
    }

    #[test]
    fn groups_map_to_the_most_trusted_role_and_every_clinic() {
        let mut m = BTreeMap::new();
        m.insert("derm-reception".into(), grant(Role::Reception, &["derm"]));
        m.insert(
            "eye-clinicians".into(),
            grant(Role::Clinician, &["eye", "derm"]),
        );
        m.insert("it".into(), grant(Role::Admin, &[]));
        let g = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(map_groups(&m, &g(&["unrelated"])), None);
        assert_eq!(map_groups(&m, &g(&[])), None);
        let (role, clinics) = map_groups(&m, &g(&["derm-reception", "x"])).unwrap();
        assert_eq!(role, Role::Reception);
        assert_eq!(clinics, vec![ClinicId::parse("derm").unwrap()]);
        let (role, clinics) = map_groups(&m, &g(&["derm-reception", "eye-clinicians"])).unwrap();
        assert_eq!(role, Role::Clinician);
        assert_eq!(clinics.len(), 2);
        assert_eq!(
            map_groups(&m, &g(&["it", "derm-reception"])).unwrap().0,
            Role::Admin
        );
    }

    #[test]
    fn secrets_have_no_debug_output() {
        let s = Secret::new("very-secret".into());
        assert!(!format!("{s:?}").contains("very-secret"));
        let p = Pending {
            state: "st".into(),
            nonce: "no".into(),
            verifier: "the-verifier".into(),
        };
        assert!(!format!("{p:?}").contains("the-verifier"));
    }
}
