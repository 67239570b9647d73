//! Who may do what: signed tokens (JWT, HS256), staff passwords (argon2), and the policy
//! table of role × action × clinic.
//!
//! Three kinds of token, told apart by their audience claim so one can never pass for
//! another: a staff token (short-lived, from sign-in), a visit credential (resumes one
//! visit and nothing else) and an invite (lets one patient enter one clinic).

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use protocol::{ClinicId, InviteId, Role, SessionId, StaffId, StaffSession, Timestamp, VisitId};
use serde::{Deserialize, Serialize};

pub mod oidc;
mod password;
mod policy;

pub use password::{PasswordError, Scratch, hash_password, verify_password, verify_password_in};
pub use policy::{Action, POLICY, Rule, Target, authorize, may_ever, role_allows};

const AUD_STAFF: &str = "consult-staff";
const AUD_VISIT: &str = "consult-visit";
const AUD_INVITE: &str = "consult-invite";
const AUD_OIDC: &str = "consult-oidc-pending";

/// The shortest signing secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token is missing, malformed or not signed by this service")]
    Invalid,
    #[error("the token has expired")]
    Expired,
    #[error("you are not allowed to do that")]
    Forbidden,
}

/// A signed-in member of staff, as their token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaffClaims {
    pub sub: StaffId,
    /// The display name, for greeting; not used to decide anything.
    pub name: String,
    pub role: Role,
    pub clinics: Vec<ClinicId>,
    /// The server-side session this token belongs to: checked on every request, so
    /// ending the session ends the token.
    pub sid: SessionId,
    aud: String,
    /// Seconds since the epoch.
    pub exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct VisitClaims {
    sub: VisitId,
    aud: String,
    exp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct PendingClaims {
    #[serde(flatten)]
    pending: oidc::Pending,
    aud: String,
    exp: u64,
}

/// What an invite grants: entry to one clinic, optionally for one appointment. `jti` names
/// the server's record of it, which says whether it was used or revoked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteClaims {
    pub jti: InviteId,
    pub clinic: ClinicId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub appointment: Option<String>,
    aud: String,
    pub exp: u64,
}

/// Signs and checks tokens with one secret shared by every signalling instance.
#[derive(Clone)]
pub struct Keys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(..)")
    }
}

fn secs(t: Timestamp) -> u64 {
    t.0 / 1000
}

impl Keys {
    /// `secret` must have at least [`MIN_SECRET_BYTES`] bytes.
    pub fn new(secret: &[u8]) -> Result<Self, &'static str> {
        if secret.len() < MIN_SECRET_BYTES {
            return Err("the token secret must be at least 32 bytes");
        }
        Ok(Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    fn sign<T: Serialize>(&self, claims: &T) -> String {
        // HS256 over claims that always serialise: encoding cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .unwrap_or_else(|e| unreachable!("HS256 signing failed: {e}"))
    }

    fn check<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        aud: &str,
    ) -> Result<T, AuthError> {
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&[aud]);
        v.set_required_spec_claims(&["exp", "aud"]);
        v.leeway = 0;
        jsonwebtoken::decode::<T>(token, &self.decoding, &v)
            .map(|d| d.claims)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            })
    }

    pub fn staff_token(&self, s: &StaffSession, sid: SessionId, expires: Timestamp) -> String {
        self.sign(&StaffClaims {
            sub: s.username.clone(),
            name: s.display_name.clone(),
            role: s.role,
            clinics: s.clinics.clone(),
            sid,
            aud: AUD_STAFF.into(),
            exp: secs(expires),
        })
    }

    pub fn check_staff(&self, token: &str) -> Result<StaffClaims, AuthError> {
        self.check(token, AUD_STAFF)
    }

    /// An OpenID Connect sign-in under way (state, nonce, PKCE verifier), signed for the
    /// browser to carry in a cookie from `start` to `callback`.
    pub fn oidc_pending_token(&self, p: &oidc::Pending, expires: Timestamp) -> String {
        self.sign(&PendingClaims {
            pending: p.clone(),
            aud: AUD_OIDC.into(),
            exp: secs(expires),
        })
    }

    pub fn check_oidc_pending(&self, token: &str) -> Result<oidc::Pending, AuthError> {
        self.check::<PendingClaims>(token, AUD_OIDC)
            .map(|c| c.pending)
    }

    pub fn visit_token(&self, visit: VisitId, expires: Timestamp) -> String {
        self.sign(&VisitClaims {
            sub: visit,
            aud: AUD_VISIT.into(),
            exp: secs(expires),
        })
    }

    pub fn check_visit(&self, token: &str) -> Result<VisitId, AuthError> {
        self.check::<VisitClaims>(token, AUD_VISIT).map(|c| c.sub)
    }

    /// When a valid visit credential expires, in seconds since the epoch.
    pub fn visit_expiry(&self, token: &str) -> Result<u64, AuthError> {
        self.check::<VisitClaims>(token, AUD_VISIT).map(|c| c.exp)
    }

    pub fn invite_token(
        &self,
        id: InviteId,
        clinic: ClinicId,
        appointment: Option<String>,
        expires: Timestamp,
    ) -> String {
        self.sign(&InviteClaims {
            jti: id,
            clinic,
            appointment,
            aud: AUD_INVITE.into(),
            exp: secs(expires),
        })
    }

    pub fn check_invite(&self, token: &str) -> Result<InviteClaims, AuthError> {
        self.check(token, AUD_INVITE)
    }
}

/// Who is calling, once their token has been checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    Staff(StaffClaims),
    Patient(VisitId),
}

impl Principal {
    /// The label recorded in the audit log; never a token or a patient's name.
    pub fn audit_label(&self) -> String {
        match self {
            Principal::Staff(s) => format!("staff:{}", s.sub),
            Principal::Patient(v) => format!("patient:{v}"),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn session(user: &str, role: Role, clinics: Vec<ClinicId>) -> StaffSession {
        StaffSession {
            username: StaffId::parse(user).unwrap(),
            display_name: format!("{user} (display)"),
            role,
            clinics,
        }
    }

    fn keys() -> Keys {
        Keys::new(&[7u8; 32]).unwrap()
    }
    fn now_ms() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    }
    fn later() -> Timestamp {
        Timestamp(now_ms() + 3_600_000)
    }
    fn earlier() -> Timestamp {
        Timestamp(now_ms() - 10_000)
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(Keys::new(&[1u8; 31]).is_err());
    }

    #[test]
    fn each_kind_of_token_round_trips() {
        let k = keys();
        let derm = ClinicId::parse("derm").unwrap();
        let t = k.staff_token(
            &session("alice", Role::Reception, vec![derm.clone()]),
            SessionId::random(),
            later(),
        );
        let c = k.check_staff(&t).unwrap();
        assert_eq!(
            (c.sub.as_str(), c.role, c.clinics.len()),
            ("alice", Role::Reception, 1)
        );
        let v = VisitId::random();
        assert_eq!(k.check_visit(&k.visit_token(v, later())), Ok(v));
        let i = k
            .check_invite(&k.invite_token(
                InviteId::random(),
                derm.clone(),
                Some("APT-1".into()),
                later(),
            ))
            .unwrap();
        assert_eq!((i.clinic, i.appointment), (derm, Some("APT-1".into())));
    }

    #[test]
    fn one_kind_never_passes_for_another() {
        let k = keys();
        let visit = k.visit_token(VisitId::random(), later());
        let invite = k.invite_token(
            InviteId::random(),
            ClinicId::parse("derm").unwrap(),
            None,
            later(),
        );
        let staff = k.staff_token(
            &session("alice", Role::Admin, vec![]),
            SessionId::random(),
            later(),
        );
        assert_eq!(k.check_staff(&visit), Err(AuthError::Invalid));
        assert_eq!(k.check_staff(&invite), Err(AuthError::Invalid));
        assert_eq!(k.check_visit(&staff).unwrap_err(), AuthError::Invalid);
        assert_eq!(k.check_invite(&visit).unwrap_err(), AuthError::Invalid);
    }

    #[test]
    fn expired_forged_and_garbage_tokens_are_refused() {
        let k = keys();
        assert_eq!(
            k.check_visit(&k.visit_token(VisitId::random(), earlier())),
            Err(AuthError::Expired)
        );
        let other = Keys::new(&[8u8; 32]).unwrap();
        assert_eq!(
            other.check_visit(&k.visit_token(VisitId::random(), later())),
            Err(AuthError::Invalid)
        );
        for junk in ["", "abc", "a.b.c", "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0."] {
            assert_eq!(
                k.check_staff(junk).unwrap_err(),
                AuthError::Invalid,
                "{junk}"
            );
        }
    }
}
