//! Who is signed in: staff sign-in with a password (its defences: password checks on
//! threads of their own, bounded in number, and a backoff per account after wrong
//! passwords), the staff session and the tokens issued for it, refreshing, signing out,
//! and ending sign-ins.

use std::sync::Arc;
use std::time::Duration;

use protocol::{
    AuditEntry, ClinicId, MAX_NAME_CHARS, SessionId, SessionView, SignInRequest, SignInResponse,
    StaffId, StaffSession, Timestamp,
};

use super::{Service, later, now, required_text};
use crate::auth::oidc::{Identity, OidcError};
use crate::auth::{self, AuthError, Principal, StaffClaims};
use crate::error::AppError;
use crate::store::{IdpGrant, SessionRecord, StaffRecord};

/// A member of staff's run of wrong passwords.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// No password is checked for the account before this.
    locked_until: Timestamp,
}

/// Wrong passwords in a row that cost nothing; after them, each costs a wait that doubles
/// from 1 s up to [`MAX_BACKOFF_SECS`].
pub const FREE_FAILURES: u32 = 5;
pub const MAX_BACKOFF_SECS: u64 = 15 * 60;

/// How long an account waits after `count` wrong passwords in a row, in seconds.
pub fn backoff_secs(count: u32) -> u64 {
    match count.checked_sub(FREE_FAILURES) {
        None => 0,
        Some(n) => 1u64
            .checked_shl(n)
            .unwrap_or(MAX_BACKOFF_SECS)
            .min(MAX_BACKOFF_SECS),
    }
}

/// One password to check against a stored hash (`None`: an unknown user), and where the
/// answer goes.
type PasswordJob = (String, Option<String>, tokio::sync::oneshot::Sender<bool>);

/// Password checks run on threads of their own, as many as may run at once. Each thread
/// keeps the ~19 MiB its last check used for the next one, so the memory they take stays
/// bounded: on tokio's blocking pool, every new thread kept a heap of its own (measured:
/// 1,000 sign-ins at once took 440 MiB with only two checks at a time). They run at a
/// lower CPU priority ([`PASSWORD_NICE`]) than the runtime's workers, so a flood of
/// sign-ins cannot slow the answers to everything else.
#[derive(Debug)]
struct PasswordPool {
    jobs: std::sync::mpsc::Sender<PasswordJob>,
}

impl PasswordPool {
    fn new(threads: usize) -> Self {
        let (jobs, rx) = std::sync::mpsc::channel::<PasswordJob>();
        let rx = Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("password-{i}"))
                .spawn(move || {
                    lower_priority();
                    // This thread's argon2 memory, kept from one check to the next.
                    let mut scratch = auth::Scratch::default();
                    loop {
                        let job = {
                            let rx = rx.lock().unwrap_or_else(|p| p.into_inner());
                            rx.recv()
                        };
                        // The pool was dropped (the service was rebuilt): stop.
                        let Ok((password, hash, answer)) = job else {
                            return;
                        };
                        let hash = hash.as_deref().unwrap_or(UNKNOWN_USER_HASH);
                        let _ =
                            answer.send(auth::verify_password_in(&password, hash, &mut scratch));
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "could not start a password thread");
            }
        }
        Self { jobs }
    }

    /// Whether `password` matches `hash` (an unknown user's never does, but takes as long).
    async fn verify(&self, password: String, hash: Option<String>) -> bool {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.jobs.send((password, hash, tx)).is_err() {
            return false;
        }
        rx.await.unwrap_or(false)
    }
}

/// The nice value of the password threads (0 is the runtime's; 19 the lowest priority):
/// when the CPU is busy, hashing gets about a tenth of what a runtime worker gets.
const PASSWORD_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`PASSWORD_NICE`] (Linux sets a nice value
/// per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) =
        rustix::process::setpriority_process(Some(rustix::thread::gettid()), PASSWORD_NICE)
    {
        tracing::warn!(error = %e, "could not lower a password thread's priority");
    }
}

/// Sign-ins that may wait for a password check, per check that may run at once. More are
/// refused at once (429), before anything is looked up or hashed: each would only wait
/// `password_wait` and then be refused, holding its connection meanwhile.
pub const WAITING_PER_CHECK: usize = 8;

/// One sign-in being handled (waiting for, or holding, a password check).
#[derive(Debug)]
struct InFlight<'a>(&'a std::sync::atomic::AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Sign-in defences shared by every clone of the service (one per instance).
#[derive(Debug)]
pub(super) struct Guard {
    /// Sign-ins waiting for or holding a password check; at most
    /// `password_checks * (1 + WAITING_PER_CHECK)`.
    in_flight: std::sync::atomic::AtomicUsize,
    /// Password checks at once (argon2 takes about 19 MiB each).
    password_slots: tokio::sync::Semaphore,
    passwords: PasswordPool,
    pub(super) password_checks: usize,
    pub(super) audit_per_minute: u32,
    pub(super) password_wait: Duration,
    /// Runs of wrong passwords, per known account (so bounded by the directory).
    failures: std::sync::Mutex<std::collections::HashMap<StaffId, Failures>>,
    /// Audit entries for failed sign-ins with unknown names.
    anonymous_audit: governor::DefaultDirectRateLimiter,
    /// Those not recorded since the last one that was.
    anonymous_unrecorded: std::sync::atomic::AtomicU64,
}

impl Guard {
    pub(super) fn new(
        password_checks: usize,
        password_wait: Duration,
        audit_per_minute: u32,
    ) -> Self {
        let per_minute =
            std::num::NonZeroU32::new(audit_per_minute).unwrap_or(std::num::NonZeroU32::MIN);
        Self {
            in_flight: std::sync::atomic::AtomicUsize::new(0),
            password_slots: tokio::sync::Semaphore::new(password_checks.max(1)),
            passwords: PasswordPool::new(password_checks),
            password_checks,
            audit_per_minute,
            password_wait,
            failures: std::sync::Mutex::default(),
            anonymous_audit: governor::RateLimiter::direct(governor::Quota::per_minute(per_minute)),
            anonymous_unrecorded: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<StaffId, Failures>> {
        // The map is consistent after every statement: carry on after a panic elsewhere.
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A place among the sign-ins being handled, unless they are all taken.
    fn enter(&self) -> Option<InFlight<'_>> {
        use std::sync::atomic::Ordering;
        let max = self.password_checks.max(1) * (1 + WAITING_PER_CHECK);
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()?;
        Some(InFlight(&self.in_flight))
    }

    /// How long a known account still waits after its run of wrong passwords, in ms.
    fn locked_for(&self, id: &StaffId) -> Option<u64> {
        let left = self
            .failures()
            .get(id)?
            .locked_until
            .0
            .saturating_sub(now().0);
        (left > 0).then_some(left)
    }
}

impl Service {
    pub async fn sign_in(&self, req: SignInRequest) -> Result<SignInResponse, AppError> {
        let busy =
            || AppError::RateLimited("the server is busy; please try again in a moment".into());
        let id = StaffId::parse(req.username.trim().to_lowercase()).ok();
        // A run of wrong passwords for this account: wait, whatever the address. Only
        // known accounts have runs, so this costs no lookup and no hashing. Looked at
        // again once a check is free: others may have ended their turn wrongly meanwhile.
        let locked = || {
            let left = id.as_ref().and_then(|id| self.guard.locked_for(id))?;
            Some(AppError::RateLimited(format!(
                "too many wrong passwords for this account; try again in {} s",
                left.div_ceil(1000)
            )))
        };
        if let Some(e) = locked() {
            return Err(e);
        }
        // A bounded number of sign-ins at once, from the directory lookup to the password
        // check (argon2, ~19 MiB each); a few more wait briefly, the rest are refused at
        // once.
        let Some(_in_flight) = self.guard.enter() else {
            return Err(busy());
        };
        let Ok(Ok(permit)) = tokio::time::timeout(
            self.guard.password_wait,
            self.guard.password_slots.acquire(),
        )
        .await
        else {
            return Err(busy());
        };
        if let Some(e) = locked() {
            return Err(e);
        }
        let record = match &id {
            Some(id) => self.store.staff(id).await?,
            None => None,
        };
        // Verify against a real hash even for unknown users, so timing tells nothing.
        // Someone the identity provider keeps has no password here: checked against the
        // unknown user's hash, which nothing matches, so it takes as long.
        let hash = record
            .as_ref()
            .filter(|r| r.idp_subject.is_none())
            .map(|r| r.password_hash.clone());
        let ok = self.guard.passwords.verify(req.password, hash).await;
        drop(permit);
        let (Some(record), true) = (&record, ok) else {
            self.sign_in_failed(record.as_ref()).await;
            return Err(AppError::WrongCredentials);
        };
        let record = record.clone();
        self.guard.failures().remove(&record.username);
        let started_at = now();
        let session = SessionRecord {
            id: SessionId::random(),
            staff: record.username.clone(),
            started_at,
            ends_at: later(self.lifetimes.session),
            idp: None,
        };
        self.store.put_session(&session).await?;
        self.record(AuditEntry {
            detail: Some(format!("session {}", session.id)),
            ..self.audit_entry(&format!("staff:{}", record.username), "sign_in")
        })
        .await;
        Ok(self.issue_staff_token(record, &session))
    }

    /// Counts a wrong password against a known account, and records the failure in the
    /// audit log: by account name when there is one, never the name typed for an unknown
    /// one (it may be a password typed in the wrong field), and only so many a minute.
    async fn sign_in_failed(&self, record: Option<&StaffRecord>) {
        use std::sync::atomic::Ordering;
        let Some(r) = record else {
            if self.guard.anonymous_audit.check().is_err() {
                self.guard
                    .anonymous_unrecorded
                    .fetch_add(1, Ordering::Relaxed);
                return;
            }
            let unrecorded = self.guard.anonymous_unrecorded.swap(0, Ordering::Relaxed);
            let detail = if unrecorded > 0 {
                format!("unknown user name ({unrecorded} more not recorded before this)")
            } else {
                "unknown user name".to_owned()
            };
            self.record(AuditEntry {
                detail: Some(detail),
                ..self.audit_entry("system", "sign_in_failed")
            })
            .await;
            return;
        };
        let count = {
            let mut all = self.guard.failures();
            let f = all.entry(r.username.clone()).or_insert(Failures {
                count: 0,
                locked_until: Timestamp(0),
            });
            f.count = f.count.saturating_add(1);
            f.locked_until = now().saturating_add_ms(backoff_secs(f.count) * 1000);
            f.count
        };
        self.record(AuditEntry {
            detail: Some(format!("user {} ({count} failures in a row)", r.username)),
            ..self.audit_entry("system", "sign_in_failed")
        })
        .await;
    }

    /// A fresh token for a signed-in member of staff, from the directory as it is now, no
    /// later than the end of their session.
    pub async fn refresh(&self, claims: &StaffClaims) -> Result<SignInResponse, AppError> {
        let session = self.live_session(claims).await?;
        if let Some(grant) = session.idp.clone() {
            return self.refresh_at_provider(session, grant).await;
        }
        let record = self
            .store
            .staff(&claims.sub)
            .await?
            .ok_or(AppError::SessionEnded)?;
        Ok(self.issue_staff_token(record, &session))
    }

    fn issue_staff_token(&self, r: StaffRecord, s: &SessionRecord) -> SignInResponse {
        let expires_at = later(self.lifetimes.staff).min(s.ends_at);
        let session = StaffSession {
            username: r.username,
            display_name: r.display_name,
            role: r.role,
            clinics: r.clinics,
        };
        SignInResponse {
            token: self.keys.staff_token(&session, s.id, expires_at),
            expires_at,
            session,
        }
    }

    /// The session a staff token belongs to, if it has not been ended or run out.
    pub async fn live_session(&self, claims: &StaffClaims) -> Result<SessionRecord, AppError> {
        match self.store.session(claims.sid).await? {
            Some(s) if s.staff == claims.sub && s.ends_at > now() => Ok(s),
            _ => Err(AppError::SessionEnded),
        }
    }

    /// Checks a staff token (and that its session goes on) or a visit credential.
    pub async fn authenticate(&self, token: &str) -> Result<Principal, AppError> {
        match self.keys.check_staff(token) {
            Ok(c) => {
                self.live_session(&c).await?;
                Ok(Principal::Staff(c))
            }
            Err(AuthError::Expired) => Err(AuthError::Expired.into()),
            Err(_) => Ok(Principal::Patient(self.keys.check_visit(token)?)),
        }
    }

    pub async fn authenticate_staff(&self, token: &str) -> Result<StaffClaims, AppError> {
        let claims = self.keys.check_staff(token)?;
        self.live_session(&claims).await?;
        Ok(claims)
    }

    /// When a visit credential runs out (seconds since the epoch).
    pub fn visit_expiry(&self, token: &str) -> Result<u64, AppError> {
        Ok(self.keys.visit_expiry(token)?)
    }

    /// Signing out: the token's session ends, on every instance.
    pub async fn sign_out(&self, claims: &StaffClaims) -> Result<(), AppError> {
        self.store.end_session(claims.sid).await?;
        self.record(AuditEntry {
            detail: Some(format!("session {}", claims.sid)),
            ..self.audit_entry(&format!("staff:{}", claims.sub), "sign_out")
        })
        .await;
        Ok(())
    }

    /// Every live staff sign-in, for an administrator.
    pub async fn sessions(&self) -> Result<Vec<SessionView>, AppError> {
        Ok(self
            .store
            .sessions(now())
            .await?
            .into_iter()
            .map(|s| SessionView {
                id: s.id,
                username: s.staff,
                signed_in_at: s.started_at,
                ends_at: s.ends_at,
            })
            .collect())
    }

    /// Ends one sign-in (an administrator's decision).
    pub async fn end_session(&self, actor: &str, id: SessionId) -> Result<(), AppError> {
        if !self.store.end_session(id).await? {
            return Err(AppError::NotFound("no such sign-in"));
        }
        self.record(AuditEntry {
            detail: Some(format!("session {id}")),
            ..self.audit_entry(actor, "end_session")
        })
        .await;
        Ok(())
    }

    /// Ends every sign-in of a member of staff: on a change of password, role or clinics,
    /// or when an administrator asks.
    pub async fn end_sessions_of(&self, actor: &str, staff: &StaffId) -> Result<usize, AppError> {
        let n = self.store.end_sessions_of(staff).await?;
        if n > 0 {
            self.record(AuditEntry {
                detail: Some(format!("user {staff} sessions {n}")),
                ..self.audit_entry(actor, "end_sessions")
            })
            .await;
        }
        Ok(n)
    }

    // --- sign-in through the identity provider (OpenID Connect) ---------------------------

    /// Signs in someone the identity provider has vouched for (its ID token verified):
    /// their groups must map to a role, and their user name must be free or already
    /// theirs. Their directory record follows the provider (role, clinics, name; no
    /// password), and their session keeps the provider's refresh token.
    pub async fn oidc_sign_in(&self, who: Identity) -> Result<SignInResponse, OidcRefusal> {
        let oidc = self.oidc.clone().ok_or(OidcRefusal::NotConfigured)?;
        let typed = who.username.clone().unwrap_or_default();
        let Ok(username) = StaffId::parse(typed.trim().to_lowercase()) else {
            self.refused(&format!(
                "via oidc: subject {} has no usable user name",
                who.subject
            ))
            .await;
            return Err(OidcRefusal::NoUserName);
        };
        let Some((role, clinics)) = oidc.map(&who.groups) else {
            self.refused(&format!(
                "via oidc: user {username}: no group maps to a role ({} groups)",
                who.groups.len()
            ))
            .await;
            return Err(OidcRefusal::NoAccess);
        };
        let existing = self.store.staff(&username).await?;
        if let Some(e) = &existing {
            if e.idp_subject.as_deref() != Some(who.subject.as_str()) {
                self.refused(&format!(
                    "via oidc: user {username} exists here and is not this person's"
                ))
                .await;
                return Err(OidcRefusal::NameTaken);
            }
        }
        let display_name = who
            .display_name
            .as_deref()
            .and_then(|n| required_text("name", n, MAX_NAME_CHARS).ok())
            .unwrap_or_else(|| username.to_string());
        let record = StaffRecord {
            username: username.clone(),
            display_name,
            role,
            clinics,
            password_hash: String::new(),
            idp_subject: Some(who.subject.clone()),
        };
        self.follow_provider(existing.as_ref(), &record).await?;
        let session = SessionRecord {
            id: SessionId::random(),
            staff: username.clone(),
            started_at: now(),
            ends_at: later(self.lifetimes.session),
            idp: Some(IdpGrant {
                subject: who.subject,
                refresh_token: who.refresh_token,
                checked_at: now(),
            }),
        };
        self.store.put_session(&session).await?;
        self.record(AuditEntry {
            detail: Some(format!("session {} via oidc", session.id)),
            ..self.audit_entry(&format!("staff:{username}"), "sign_in")
        })
        .await;
        Ok(self.issue_staff_token(record, &session))
    }

    /// Writes what the provider says of someone into the directory when it changed; a
    /// change of role or clinics ends their sign-ins (their tokens carry the old rights),
    /// as an administrator's change does. Whether it did.
    async fn follow_provider(
        &self,
        before: Option<&StaffRecord>,
        now_is: &StaffRecord,
    ) -> Result<bool, AppError> {
        if before == Some(now_is) {
            return Ok(false);
        }
        self.store.put_staff(now_is).await?;
        let clinics: Vec<&str> = now_is.clinics.iter().map(ClinicId::as_str).collect();
        self.record(AuditEntry {
            detail: Some(format!(
                "user {} role {:?} clinics [{}] via oidc",
                now_is.username,
                now_is.role,
                clinics.join(",")
            )),
            ..self.audit_entry("system", "put_staff")
        })
        .await;
        let rights_changed =
            before.is_some_and(|b| b.role != now_is.role || b.clinics != now_is.clinics);
        if rights_changed {
            self.end_sessions_of("system", &now_is.username).await?;
        }
        Ok(rights_changed)
    }

    /// A refresh of a sign-in through the provider: the provider is asked again, with
    /// the refresh token kept with the session, and the person's groups read again.
    /// Refused there, or in no mapped group any more: the sign-in ends. The provider
    /// unreachable: the sign-in goes on as it was for up to the grace period after the
    /// provider last confirmed it.
    async fn refresh_at_provider(
        &self,
        session: SessionRecord,
        grant: IdpGrant,
    ) -> Result<SignInResponse, AppError> {
        let Some(oidc) = self.oidc.clone() else {
            return self
                .end_idp_session(&session, "sign-in through an identity provider is off")
                .await;
        };
        let Some(token) = grant.refresh_token.clone() else {
            return self
                .end_idp_session(&session, "the identity provider gave no refresh token")
                .await;
        };
        let record = self
            .store
            .staff(&session.staff)
            .await?
            .ok_or(AppError::SessionEnded)?;
        let refreshed = match oidc.refresh(&token, &grant.subject).await {
            Ok(r) => r,
            Err(OidcError::Refused(e)) => {
                return self
                    .end_idp_session(
                        &session,
                        &format!("the identity provider refused the refresh ({e})"),
                    )
                    .await;
            }
            Err(e) => {
                let since = now().0.saturating_sub(grant.checked_at.0);
                let grace = u64::try_from(oidc.grace().as_millis()).unwrap_or(u64::MAX);
                if since > grace {
                    return self
                        .end_idp_session(
                            &session,
                            &format!(
                                "the identity provider has not confirmed it for {} min",
                                since / 60_000
                            ),
                        )
                        .await;
                }
                tracing::warn!(error = %e, session = %session.id, "identity provider unavailable at a refresh; the sign-in goes on");
                return Ok(self.issue_staff_token(record, &session));
            }
        };
        let Some((role, clinics)) = oidc.map(&refreshed.groups) else {
            return self
                .end_idp_session(&session, "no group maps to a role any more")
                .await;
        };
        let display_name = refreshed
            .display_name
            .as_deref()
            .and_then(|n| required_text("name", n, MAX_NAME_CHARS).ok())
            .unwrap_or_else(|| record.display_name.clone());
        let now_is = StaffRecord {
            role,
            clinics,
            display_name,
            ..record.clone()
        };
        if self.follow_provider(Some(&record), &now_is).await? {
            // Its rights changed: this sign-in ended with the others.
            return Err(AppError::SessionEnded);
        }
        // Ended meanwhile (signed out, or by an administrator): not brought back.
        if self.store.session(session.id).await?.is_none() {
            return Err(AppError::SessionEnded);
        }
        let session = SessionRecord {
            idp: Some(IdpGrant {
                refresh_token: refreshed.refresh_token.or(grant.refresh_token),
                checked_at: now(),
                subject: grant.subject,
            }),
            ..session
        };
        self.store.put_session(&session).await?;
        Ok(self.issue_staff_token(now_is, &session))
    }

    /// Ends a sign-in the provider no longer vouches for, and says why in the audit log.
    async fn end_idp_session(
        &self,
        session: &SessionRecord,
        why: &str,
    ) -> Result<SignInResponse, AppError> {
        self.store.end_session(session.id).await?;
        self.record(AuditEntry {
            detail: Some(format!("session {} via oidc: {why}", session.id)),
            ..self.audit_entry(&format!("staff:{}", session.staff), "sign_in_ended")
        })
        .await;
        Err(AppError::SessionEnded)
    }

    /// The browser's proof of an OpenID Connect sign-in under way (see `server/oidc.rs`).
    pub fn oidc_pending_token(&self, p: &crate::auth::oidc::Pending, lasts: Duration) -> String {
        self.keys.oidc_pending_token(p, later(lasts))
    }

    pub fn check_oidc_pending(&self, token: &str) -> Result<crate::auth::oidc::Pending, AuthError> {
        self.keys.check_oidc_pending(token)
    }

    /// The sign-in a staff token carries, as sign-in answers it: for the page that lands
    /// after a sign-in at the provider, which takes its token over from a cookie.
    pub async fn staff_sign_in_of(&self, token: &str) -> Result<SignInResponse, AppError> {
        let c = self.authenticate_staff(token).await?;
        Ok(SignInResponse {
            token: token.to_owned(),
            expires_at: Timestamp(c.exp.saturating_mul(1000)),
            session: StaffSession {
                username: c.sub,
                display_name: c.name,
                role: c.role,
                clinics: c.clinics,
            },
        })
    }

    /// Records a refused sign-in through the provider.
    async fn refused(&self, detail: &str) {
        self.record(AuditEntry {
            detail: Some(detail.to_owned()),
            ..self.audit_entry("system", "sign_in_refused")
        })
        .await;
    }
}

/// Why someone the identity provider vouched for is not signed in.
#[derive(Debug, thiserror::Error)]
pub enum OidcRefusal {
    #[error("sign-in through an identity provider is not configured")]
    NotConfigured,
    #[error("your account at the identity provider gives you no access here")]
    NoAccess,
    #[error("your account at the identity provider has no user name this service can use")]
    NoUserName,
    #[error("a different account of that user name exists here")]
    NameTaken,
    #[error(transparent)]
    App(#[from] AppError),
}

impl From<crate::store::StoreError> for OidcRefusal {
    fn from(e: crate::store::StoreError) -> Self {
        Self::App(e.into())
    }
}

/// A valid argon2 hash of a random password nobody knows, verified against when the user
/// name is unknown so that sign-in takes as long either way.
const UNKNOWN_USER_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$yGrtf3mNHFq1dd+uD9KCeHBnmaDt/Qm7xWF2ZmSW1S8";
