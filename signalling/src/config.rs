//! The server's configuration: built-in defaults (`infra/consult.toml`, compiled in), then
//! a config file, then `CONSULT_*` environment variables, then command-line flags.
//! Validated once at start; every field is documented in `infra/consult.toml`.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use protocol::IceServer;
use serde::{Deserialize, Serialize};

use crate::auth::oidc::{Oidc, OidcConfig};
use crate::server::Limits;
use crate::service::TokenLifetimes;
use crate::turn::{Turn, TurnConfig};

/// The documented sample, which is also the defaults.
pub const DEFAULTS: &str = include_str!("../../infra/consult.toml");
/// The prefix of every environment variable the product reads.
pub const ENV_PREFIX: &str = "CONSULT_";

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub listen: SocketAddr,
    pub public_url: String,
    pub tls_cert: PathBuf,
    pub tls_key: PathBuf,
    pub redis_url: String,
    pub redis_wait_ms: u64,
    pub data_dir: PathBuf,
    pub token_secret: String,
    pub staff_token_minutes: u64,
    pub staff_session_hours: u64,
    pub session_check_seconds: u64,
    pub visit_token_hours: u64,
    pub max_connections: usize,
    pub max_message_bytes: usize,
    pub messages_per_second: u32,
    pub message_burst: u32,
    pub entries_per_minute: u32,
    pub sign_ins_per_minute: u32,
    pub media_checks_per_minute: u32,
    pub malformed_per_minute: u32,
    pub password_checks: usize,
    pub password_wait_ms: u64,
    pub anonymous_audit_per_minute: u32,
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub log: String,
    pub media_ip: IpAddr,
    pub media_announced_ip: String,
    pub media_ports: String,
    pub media_ice_tcp: bool,
    pub sfu_secret: String,
    pub metrics_token: String,
    pub ice_servers: Vec<IceServer>,
    pub web_root: PathBuf,
    pub turn: TurnConfig,
    pub oidc: OidcConfig,
    /// Whether `public_url` was left empty and is derived from the listening address.
    #[serde(skip)]
    pub public_url_derived: bool,
}

/// Values given on the command line, which win over everything else.
#[derive(Debug, Default, Serialize)]
pub struct Overrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub public_url: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration: {0}")]
    Load(#[from] Box<figment::Error>),
    #[error("configuration: {0}")]
    Invalid(String),
}

impl Config {
    pub fn load(file: Option<&Path>, overrides: &Overrides) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Toml::string(DEFAULTS));
        if let Some(f) = file {
            if !f.exists() {
                return Err(ConfigError::Invalid(format!(
                    "no config file at {}",
                    f.display()
                )));
            }
            fig = fig.merge(Toml::file(f));
        }
        let mut config: Config = fig
            .merge(Env::prefixed(ENV_PREFIX).ignore(&["config"]).split("__"))
            .merge(Serialized::defaults(overrides))
            .extract()
            .map_err(Box::new)?;
        if config.public_url.is_empty() {
            config.public_url_derived = true;
            config.public_url = config.url_of(config.listen);
        }
        config.validate()?;
        Ok(config)
    }

    /// Says where the server really listens (the port it was given for port 0): a
    /// derived `public_url` follows it.
    pub fn listening_on(&mut self, addr: SocketAddr) {
        if self.public_url_derived {
            self.public_url = self.url_of(addr);
        }
    }

    /// The URL a browser on this machine reaches `addr` at (loopback for an
    /// unspecified address).
    fn url_of(&self, addr: SocketAddr) -> String {
        let ip = match addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        let scheme = if self.tls().is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", SocketAddr::new(ip, addr.port()))
    }

    /// The certificate and key files, when consult serves HTTPS itself.
    pub fn tls(&self) -> Option<(&Path, &Path)> {
        (!self.tls_cert.as_os_str().is_empty())
            .then_some((self.tls_cert.as_path(), self.tls_key.as_path()))
    }

    /// The directory to serve the browser client from instead of the embedded copy.
    pub fn web_root(&self) -> Option<&Path> {
        (!self.web_root.as_os_str().is_empty()).then_some(self.web_root.as_path())
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if !(self.public_url.starts_with("http://") || self.public_url.starts_with("https://")) {
            return bad("public_url must start with http:// or https://");
        }
        if self.tls_cert.as_os_str().is_empty() != self.tls_key.as_os_str().is_empty() {
            return bad("tls_cert and tls_key go together: set both (HTTPS) or neither");
        }
        if !self.token_secret.is_empty() && self.token_secret.len() < crate::auth::MIN_SECRET_BYTES
        {
            return bad("token_secret must be at least 32 bytes (or empty to generate one)");
        }
        if self.staff_token_minutes == 0
            || self.visit_token_hours == 0
            || self.staff_session_hours == 0
            || self.session_check_seconds == 0
        {
            return bad("token and session lifetimes, and session_check_seconds, must be positive");
        }
        if self.max_connections == 0 || self.max_message_bytes < 1024 {
            return bad("max_connections must be positive and max_message_bytes at least 1024");
        }
        if self.messages_per_second == 0
            || self.entries_per_minute == 0
            || self.sign_ins_per_minute == 0
            || self.media_checks_per_minute == 0
            || self.malformed_per_minute == 0
            || self.anonymous_audit_per_minute == 0
        {
            return bad("rate limits must be positive");
        }
        if !(50..=60_000).contains(&self.redis_wait_ms) {
            return bad("redis_wait_ms must be 50..=60000");
        }
        if self.password_checks == 0 {
            return bad("password_checks must be at least 1");
        }
        if self.media_ip.is_unspecified() {
            return bad("media_ip must be a concrete address of this machine, not 0.0.0.0");
        }
        if self.ice_servers.iter().any(|s| s.urls.is_empty()) {
            return bad("every entry of ice_servers needs at least one URL");
        }
        self.turn()?;
        self.oidc()?;
        self.engine_config().map(|_| ())
    }

    /// Sign-in through the hospital's identity provider (`[oidc]`), if configured.
    pub fn oidc(&self) -> Result<Option<Oidc>, ConfigError> {
        Oidc::from_config(&self.oidc, &self.public_url).map_err(ConfigError::Invalid)
    }

    /// The platform's own TURN server (`[turn]`), if one is configured.
    pub fn turn(&self) -> Result<Option<Turn>, ConfigError> {
        Turn::from_config(&self.turn).map_err(ConfigError::Invalid)
    }

    /// How the in-process SFU binds and announces its media sockets.
    pub fn engine_config(&self) -> Result<sfu::engine::EngineConfig, ConfigError> {
        let announced_ip = match self.media_announced_ip.trim() {
            "" => None,
            ip => Some(ip.parse::<IpAddr>().map_err(|_| {
                ConfigError::Invalid(format!("media_announced_ip {ip:?} is not an IP address"))
            })?),
        };
        let ports = match self.media_ports.trim() {
            "" => None,
            r => Some(
                sfu::engine::parse_port_range(r)
                    .map_err(|e| ConfigError::Invalid(format!("media_ports: {e}")))?,
            ),
        };
        Ok(sfu::engine::EngineConfig {
            bind_ip: self.media_ip,
            announced_ip,
            ports,
            ice_tcp: self.media_ice_tcp,
        })
    }

    /// How long a Redis command may wait, reconnecting included, before it fails as
    /// unavailable.
    pub fn redis_wait(&self) -> Duration {
        Duration::from_millis(self.redis_wait_ms)
    }

    /// `None` means single node (no Redis).
    pub fn redis(&self) -> Option<&str> {
        Some(self.redis_url.trim()).filter(|s| !s.is_empty())
    }

    pub fn limits(&self) -> Limits {
        Limits {
            max_connections: self.max_connections,
            max_message_bytes: self.max_message_bytes,
            messages_per_second: self.messages_per_second,
            message_burst: self.message_burst.max(self.messages_per_second),
            entries_per_minute: self.entries_per_minute,
            sign_ins_per_minute: self.sign_ins_per_minute,
            media_checks_per_minute: self.media_checks_per_minute,
            malformed_per_minute: self.malformed_per_minute,
            session_check: Duration::from_secs(self.session_check_seconds),
        }
    }

    pub fn lifetimes(&self) -> TokenLifetimes {
        TokenLifetimes {
            staff: Duration::from_secs(self.staff_token_minutes * 60),
            session: Duration::from_secs(self.staff_session_hours * 3600),
            visit: Duration::from_secs(self.visit_token_hours * 3600),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_load_and_overrides_win() {
        let c = Config::load(None, &Overrides::default()).unwrap();
        assert_eq!(c.redis(), None);
        // `serve --demo` needs no TURN server: none by default.
        assert!(c.turn().unwrap().is_none());
        let c = Config::load(
            None,
            &Overrides {
                redis_url: Some("redis://127.0.0.1:1".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(c.redis(), Some("redis://127.0.0.1:1"));
    }

    #[test]
    fn a_turn_server_is_configured_in_its_own_section() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let secret = "0123456789abcdef".repeat(2);
        std::fs::write(
            &f,
            format!(
                "[turn]\nsecret = \"{secret}\"\ncredential_minutes = 30\nurls = [\"turn:turn.example.org:3478?transport=udp\", \"turns:turn.example.org:443?transport=tcp\"]\n"
            ),
        )
        .unwrap();
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        let turn = c.turn().unwrap().unwrap();
        assert_eq!(turn.lifetime(), Duration::from_secs(30 * 60));
        assert!(
            !format!("{c:?}").contains(&secret),
            "the secret is not in Debug output"
        );
    }

    #[test]
    fn an_identity_provider_is_configured_in_its_own_section() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        let secret = "an-oidc-client-secret-0123456789";
        let section = "[oidc]\nissuer = \"https://login.example.org/realms/staff\"\nclient_id = \"consult\"\n";
        std::fs::write(
            &f,
            format!(
                "public_url = \"https://video.example.org\"\n{section}client_secret = \"{secret}\"\n[oidc.groups.derm]\nrole = \"reception\"\nclinics = [\"derm\"]\n"
            ),
        )
        .unwrap();
        let c = Config::load(Some(&f), &Overrides::default()).unwrap();
        assert!(c.oidc().unwrap().is_some());
        assert!(
            !format!("{c:?}").contains(secret),
            "the client secret is not in Debug output"
        );
        // Off by default; refused without a secret, a group or an https issuer.
        assert!(
            Config::load(None, &Overrides::default())
                .unwrap()
                .oidc()
                .unwrap()
                .is_none()
        );
        std::fs::write(
            &f,
            format!("{section}[oidc.groups.derm]\nrole = \"reception\"\n"),
        )
        .unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("client_secret"), "{e}");
        std::fs::write(&f, format!("{section}client_secret = \"{secret}\"\n")).unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("oidc.groups"), "{e}");
        std::fs::write(
            &f,
            format!("[oidc]\nissuer = \"http://login.example.org\"\nclient_id = \"c\"\nclient_secret = \"{secret}\"\n[oidc.groups.derm]\nrole = \"reception\"\n"),
        )
        .unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
        std::fs::write(
            &f,
            format!(
                "{section}client_secret = \"{secret}\"\n[oidc.groups.derm]\nrole = \"porter\"\n"
            ),
        )
        .unwrap();
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
    }

    #[test]
    fn bad_values_are_refused_with_a_reason() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, "token_secret = \"short\"\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("token_secret"), "{e}");
        std::fs::write(&f, "media_ports = \"5000-4000\"\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("media_ports"), "{e}");
        std::fs::write(&f, "media_ip = \"0.0.0.0\"\n").unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("media_ip"), "{e}");
        std::fs::write(
            &f,
            "[turn]\nsecret = \"short\"\nurls = [\"turn:t.example.org\"]\n",
        )
        .unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("turn.secret"), "{e}");
        let secret = "s".repeat(32);
        std::fs::write(
            &f,
            format!("[turn]\nsecret = \"{secret}\"\nurls = [\"https://t.example.org\"]\n"),
        )
        .unwrap();
        let e = Config::load(Some(&f), &Overrides::default()).unwrap_err();
        assert!(e.to_string().contains("turn.urls"), "{e}");
        std::fs::write(&f, "[turn]\nsecrets = \"typo\"\n").unwrap();
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
        std::fs::write(&f, "no_such_key = 1\n").unwrap();
        assert!(Config::load(Some(&f), &Overrides::default()).is_err());
        assert!(
            Config::load(
                Some(&dir.path().join("missing.toml")),
                &Overrides::default()
            )
            .is_err()
        );
    }
}
