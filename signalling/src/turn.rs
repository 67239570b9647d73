//! The ICE servers handed to browsers: static STUN/TURN servers from the configuration,
//! and the platform's own TURN server (coturn) with a credential minted for each person.
//!
//! TURN credentials follow the TURN REST scheme that coturn checks with
//! `use-auth-secret`: the user name is `EXPIRY:ID` (`EXPIRY` in seconds since the epoch,
//! `ID` saying whose it is: `visit-<id>`, `staff-<username>` or `check`), the password is
//! `base64(HMAC-SHA1(secret, user name))`. coturn recomputes the password from the shared
//! secret and refuses a user name whose expiry has passed, so nothing is stored and nothing
//! needs revoking. A credential is never logged: [`Turn`] and the values it mints only
//! travel in the `media_joined` message and the `/api/media-check` answer.

use std::fmt;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use protocol::IceServer;
use serde::{Deserialize, Serialize};
use sha1::Sha1;

/// The shortest shared secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
/// The longest a credential may be configured to last.
pub const MAX_CREDENTIAL_MINUTES: u64 = 24 * 60;
/// How long the pre-call check's credential lasts: the check connection lives 30 s, and
/// each run of the check fetches a new one.
pub const CHECK_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// The `[turn]` section of the configuration (documented in `infra/consult.toml`).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// coturn's `static-auth-secret`; empty: no TURN server of the platform's own.
    pub secret: String,
    /// The TURN URLs browsers use, e.g. `turns:turn.example.org:443?transport=tcp`.
    pub urls: Vec<String>,
    /// How long a call's credential lasts, in minutes.
    pub credential_minutes: u64,
}

impl fmt::Debug for TurnConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TurnConfig")
            .field("secret", &"<redacted>")
            .field("urls", &self.urls)
            .field("credential_minutes", &self.credential_minutes)
            .finish()
    }
}

/// The platform's TURN server: where it is and the secret it shares with coturn.
#[derive(Clone)]
pub struct Turn {
    secret: Vec<u8>,
    urls: Vec<String>,
    lifetime: Duration,
}

impl fmt::Debug for Turn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Turn")
            .field("secret", &"<redacted>")
            .field("urls", &self.urls)
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

/// Whose credential it is: the `ID` half of the user name, which coturn logs.
#[derive(Debug, Clone, Copy)]
pub enum Subject<'a> {
    /// A patient's visit.
    Visit(protocol::VisitId),
    /// A member of staff.
    Staff(&'a protocol::StaffId),
    /// The pre-call check, before anyone has entered.
    Check,
}

impl fmt::Display for Subject<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Visit(v) => write!(f, "visit-{v}"),
            Subject::Staff(s) => write!(f, "staff-{s}"),
            Subject::Check => f.write_str("check"),
        }
    }
}

impl Turn {
    /// The TURN server of `config`, `None` when none is configured; a configuration
    /// that is half there or malformed is refused with the reason.
    pub fn from_config(config: &TurnConfig) -> Result<Option<Self>, String> {
        let secret = config.secret.trim();
        match (secret.is_empty(), config.urls.is_empty()) {
            (true, true) => return Ok(None),
            (true, false) => {
                return Err("turn.urls are set but turn.secret is empty: give coturn's \
                            static-auth-secret"
                    .into());
            }
            (false, true) => {
                return Err(
                    "turn.secret is set but turn.urls is empty: list the TURN URLs \
                            browsers use"
                        .into(),
                );
            }
            (false, false) => {}
        }
        if secret.len() < MIN_SECRET_BYTES {
            return Err(format!(
                "turn.secret must be at least {MIN_SECRET_BYTES} bytes (e.g. `openssl rand -hex 32`)"
            ));
        }
        for url in &config.urls {
            check_url(url).map_err(|e| format!("turn.urls: {url:?}: {e}"))?;
        }
        if config.credential_minutes == 0 || config.credential_minutes > MAX_CREDENTIAL_MINUTES {
            return Err(format!(
                "turn.credential_minutes must be between 1 and {MAX_CREDENTIAL_MINUTES}"
            ));
        }
        Ok(Some(Self {
            secret: secret.as_bytes().to_vec(),
            urls: config.urls.clone(),
            lifetime: Duration::from_secs(config.credential_minutes * 60),
        }))
    }

    /// The ICE server entry for `subject`, with a credential valid from `now_secs` (seconds
    /// since the epoch) for `lifetime`.
    pub fn ice_server(&self, subject: Subject<'_>, now_secs: u64, lifetime: Duration) -> IceServer {
        let (username, credential) = mint(
            &self.secret,
            &subject.to_string(),
            now_secs.saturating_add(lifetime.as_secs()),
        );
        IceServer {
            urls: self.urls.clone(),
            username: Some(username),
            credential: Some(credential),
        }
    }

    /// How long a call's credential lasts.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }
}

/// What browsers are given as their `iceServers`: the configured static servers as they
/// are, then the platform's TURN server with a credential minted for the person.
#[derive(Debug, Clone, Default)]
pub struct IceServers {
    fixed: Vec<IceServer>,
    turn: Option<Turn>,
}

impl IceServers {
    pub fn new(fixed: Vec<IceServer>, turn: Option<Turn>) -> Self {
        Self { fixed, turn }
    }

    /// For someone joining a call's media: a credential for [`Turn::lifetime`].
    pub fn for_call(&self, subject: Subject<'_>, now_secs: u64) -> Vec<IceServer> {
        self.with_turn(|t| t.ice_server(subject, now_secs, t.lifetime()))
    }

    /// For one run of the pre-call check: a credential for [`CHECK_CREDENTIAL_LIFETIME`].
    pub fn for_check(&self, now_secs: u64) -> Vec<IceServer> {
        self.with_turn(|t| t.ice_server(Subject::Check, now_secs, CHECK_CREDENTIAL_LIFETIME))
    }

    fn with_turn(&self, minted: impl FnOnce(&Turn) -> IceServer) -> Vec<IceServer> {
        let mut out = self.fixed.clone();
        out.extend(self.turn.as_ref().map(minted));
        out
    }
}

/// A TURN REST credential: the user name `EXPIRY:ID` and its password,
/// `base64(HMAC-SHA1(secret, user name))`, as coturn's `use-auth-secret` computes it.
pub fn mint(secret: &[u8], id: &str, expires_at_secs: u64) -> (String, String) {
    let username = format!("{expires_at_secs}:{id}");
    // HMAC takes a key of any length.
    let mut mac = <Hmac<Sha1> as Mac>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
    mac.update(username.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    (username, password)
}

/// Checks a TURN URL as browsers take it (RFC 7065): `turn:` or `turns:`, a host, an
/// optional port, and an optional `?transport=udp|tcp` (TLS, `turns:`, is over TCP only).
pub fn check_url(url: &str) -> Result<(), &'static str> {
    let (scheme, rest) = url
        .split_once(':')
        .ok_or("not a TURN URL (turn:HOST[:PORT][?transport=udp|tcp])")?;
    let tls = match scheme {
        "turn" => false,
        "turns" => true,
        _ => return Err("must start with turn: or turns:"),
    };
    if rest.starts_with("//") {
        return Err("TURN URLs have no // after the scheme");
    }
    let (hostport, query) = match rest.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (rest, None),
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (addr, after) = v6.split_once(']').ok_or("unclosed [ in an IPv6 address")?;
        if addr.parse::<std::net::Ipv6Addr>().is_err() {
            return Err("not an IPv6 address between [ ]");
        }
        match after {
            "" => (addr, None),
            p => (addr, Some(p.strip_prefix(':').ok_or("junk after ]")?)),
        }
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':'));
    if !host_ok {
        return Err("the host name is missing or has characters a host name cannot have");
    }
    if let Some(p) = port {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => {}
            _ => return Err("the port must be a number from 1 to 65535"),
        }
    }
    match query {
        None => Ok(()),
        Some("transport=tcp") => Ok(()),
        Some("transport=udp") if tls => Err("turns: is TLS, which runs over TCP only"),
        Some("transport=udp") => Ok(()),
        Some(_) => Err("the only query a TURN URL takes is ?transport=udp or ?transport=tcp"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(secret: &str, urls: &[&str], minutes: u64) -> TurnConfig {
        TurnConfig {
            secret: secret.into(),
            urls: urls.iter().map(|u| (*u).to_owned()).collect(),
            credential_minutes: minutes,
        }
    }

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    /// The TURN REST scheme's example, computed independently:
    /// `printf %s '1700000000:visit-x' | openssl dgst -sha1 -hmac SECRET -binary | base64`.
    #[test]
    fn a_credential_is_the_hmac_of_its_user_name() {
        let (user, pass) = mint(SECRET.as_bytes(), "visit-x", 1_700_000_000);
        assert_eq!(user, "1700000000:visit-x");
        assert_eq!(pass, "8gndrKKfFkHRSicz5W3Jbvae0SQ=");
    }

    #[test]
    fn each_person_gets_their_own_expiring_credential() {
        let turn = Turn::from_config(&config(
            SECRET,
            &["turn:turn.example.org:3478?transport=udp"],
            60,
        ))
        .unwrap()
        .unwrap();
        let staff = protocol::StaffId::parse("dr.jones").unwrap();
        let s = turn.ice_server(Subject::Staff(&staff), 1000, turn.lifetime());
        assert_eq!(s.username.as_deref(), Some("4600:staff-dr.jones"));
        assert_eq!(s.urls, ["turn:turn.example.org:3478?transport=udp"]);
        let (_, expected) = mint(SECRET.as_bytes(), "staff-dr.jones", 4600);
        assert_eq!(s.credential.as_deref(), Some(expected.as_str()));
        let check = turn.ice_server(Subject::Check, 1000, CHECK_CREDENTIAL_LIFETIME);
        assert_eq!(check.username.as_deref(), Some("1300:check"));
        assert_ne!(check.credential, s.credential);
    }

    #[test]
    fn the_secret_never_shows_in_debug_output() {
        let c = config(SECRET, &["turn:t.example.org"], 60);
        let turn = Turn::from_config(&c).unwrap().unwrap();
        for text in [format!("{c:?}"), format!("{turn:?}")] {
            assert!(!text.contains(SECRET), "{text}");
            assert!(text.contains("redacted"), "{text}");
        }
    }

    #[test]
    fn no_turn_is_fine_and_half_a_turn_is_refused() {
        assert!(Turn::from_config(&config("", &[], 60)).unwrap().is_none());
        let e = Turn::from_config(&config("", &["turn:t.example.org"], 60)).unwrap_err();
        assert!(e.contains("turn.secret"), "{e}");
        let e = Turn::from_config(&config(SECRET, &[], 60)).unwrap_err();
        assert!(e.contains("turn.urls"), "{e}");
        let e = Turn::from_config(&config("short", &["turn:t.example.org"], 60)).unwrap_err();
        assert!(e.contains("32 bytes"), "{e}");
        for minutes in [0, MAX_CREDENTIAL_MINUTES + 1] {
            let e = Turn::from_config(&config(SECRET, &["turn:t.example.org"], minutes));
            assert!(e.unwrap_err().contains("credential_minutes"));
        }
    }

    #[test]
    fn turn_urls_are_checked_as_browsers_read_them() {
        for good in [
            "turn:turn.example.org",
            "turn:turn.example.org:3478",
            "turn:192.0.2.7:3478?transport=udp",
            "turn:192.0.2.7:3478?transport=tcp",
            "turns:turn.example.org:443?transport=tcp",
            "turns:turn.example.org:443",
            "turn:[2001:db8::7]:3478?transport=udp",
        ] {
            assert_eq!(check_url(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "stun:turn.example.org",
            "https://turn.example.org",
            "turn://turn.example.org",
            "turn:",
            "turn::3478",
            "turn:turn.example.org:0",
            "turn:turn.example.org:99999",
            "turn:turn.example.org:port",
            "turns:turn.example.org:443?transport=udp",
            "turn:turn.example.org?transport=sctp",
            "turn:turn example.org",
            "turn:[2001:db8::7:3478",
            "turn:[nonsense]:3478",
        ] {
            assert!(check_url(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
