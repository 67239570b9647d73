//! The connection to Redis that signalling and the SFU nodes share.
//!
//! A [`Target`] is either one Redis server (`redis://…`, `redis+unix://…`) or a primary
//! found through Redis Sentinel:
//!
//! ```text
//! redis-sentinel://[user:password@]host:port[,host:port…]#primary-name
//! ```
//!
//! (the form Lettuce and other clients use; the credentials are the Redis servers', the
//! sentinels take none). A [`Link`] is a [`ConnectionLike`] over the redis crate's
//! connection manager, which reconnects by itself to the address it was given. Through
//! Sentinel, an error that a failover explains (the connection lost or refused, or a
//! write refused because the server is now a replica) makes the link ask the sentinels
//! for the primary again, at most every [`RESOLVE_EVERY`], and move to it when it
//! changed: the command that failed fails (callers answer "unavailable" and are retried),
//! the next ones go to the new primary.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::sentinel::{SentinelClient, SentinelNodeConnectionInfo, SentinelServerType};
use redis::{
    Client, ErrorKind, RedisConnectionInfo, RedisError, RedisResult, ServerErrorKind, Value,
};

/// How often, at most, the sentinels are asked where the primary is.
pub const RESOLVE_EVERY: Duration = Duration::from_millis(250);

/// Where Redis is.
#[derive(Clone, PartialEq, Eq)]
pub enum Target {
    /// One server, as the redis crate reads its URL.
    Direct(String),
    /// The primary that these sentinels know by `primary`.
    Sentinel {
        sentinels: Vec<String>,
        primary: String,
        username: Option<String>,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    // Never the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Direct(_) => f.write_str("Direct(..)"),
            Self::Sentinel {
                sentinels, primary, ..
            } => f
                .debug_struct("Sentinel")
                .field("sentinels", sentinels)
                .field("primary", primary)
                .finish_non_exhaustive(),
        }
    }
}

const SENTINEL_SCHEME: &str = "redis-sentinel://";

impl Target {
    /// Reads a Redis URL: `redis-sentinel://…` (see the module's documentation) or any URL
    /// the redis crate takes.
    pub fn parse(url: &str) -> Result<Self, String> {
        let url = url.trim();
        let Some(rest) = url.strip_prefix(SENTINEL_SCHEME) else {
            redis::parse_redis_url(url).ok_or_else(|| {
                "not a Redis URL (redis://, rediss://, redis+unix:// or redis-sentinel://)"
                    .to_owned()
            })?;
            return Ok(Self::Direct(url.to_owned()));
        };
        let (rest, primary) = rest
            .split_once('#')
            .ok_or("a redis-sentinel:// URL names its primary after '#'")?;
        if primary.is_empty() || primary.contains(['/', '@', ',', ' ']) {
            return Err("the primary's name after '#' is empty or not a plain name".into());
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('/') || rest.contains('?') {
            return Err("a redis-sentinel:// URL takes no path or query".into());
        }
        let (userinfo, hosts) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (
                    Some(user.to_owned()).filter(|u| !u.is_empty()),
                    Some(pass.to_owned()),
                ),
                None => (Some(u.to_owned()).filter(|u| !u.is_empty()), None),
            },
        };
        let mut sentinels = Vec::new();
        for host in hosts.split(',') {
            let (name, port) = host
                .rsplit_once(':')
                .ok_or_else(|| format!("sentinel '{host}' needs host:port"))?;
            if name.is_empty() || port.parse::<u16>().is_err() {
                return Err(format!("sentinel '{host}' needs host:port"));
            }
            sentinels.push(format!("redis://{host}"));
        }
        Ok(Self::Sentinel {
            sentinels,
            primary: primary.to_owned(),
            username,
            password,
        })
    }
}

/// A connection to Redis that follows the primary (see the module's documentation).
/// Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct Link {
    shared: Arc<Shared>,
    /// This clone's current connection, and the generation it came from.
    con: ConnectionManager,
    generation: u64,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

struct Shared {
    config: ConnectionManagerConfig,
    sentinel: Option<tokio::sync::Mutex<SentinelClient>>,
    current: Mutex<Current>,
}

struct Current {
    generation: u64,
    client: Client,
    con: ConnectionManager,
    resolved_at: Option<Instant>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing under these locks can panic half-way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Link {
    /// Connects to `target` (through Sentinel: to the primary the sentinels name now).
    pub async fn connect(target: &Target, config: ConnectionManagerConfig) -> RedisResult<Self> {
        let (sentinel, client) = match target {
            Target::Direct(url) => (None, Client::open(url.as_str())?),
            Target::Sentinel {
                sentinels,
                primary,
                username,
                password,
            } => {
                let mut info = RedisConnectionInfo::default();
                if let Some(u) = username {
                    info = info.set_username(u);
                }
                if let Some(p) = password {
                    info = info.set_password(p);
                }
                let node = SentinelNodeConnectionInfo::default().set_redis_connection_info(info);
                let mut sentinel = SentinelClient::build(
                    sentinels.clone(),
                    primary.clone(),
                    Some(node),
                    SentinelServerType::Master,
                )?;
                let client = sentinel.async_get_client().await?;
                (Some(tokio::sync::Mutex::new(sentinel)), client)
            }
        };
        let con = client
            .get_connection_manager_with_config(config.clone())
            .await?;
        let shared = Arc::new(Shared {
            config,
            sentinel,
            current: Mutex::new(Current {
                generation: 0,
                client,
                con: con.clone(),
                resolved_at: None,
            }),
        });
        Ok(Self {
            shared,
            con,
            generation: 0,
        })
    }

    /// A client for the current primary (for a connection of another kind: pub/sub).
    pub fn client(&self) -> Client {
        lock(&self.shared.current).client.clone()
    }

    /// Picks up a newer connection if another clone moved to a new primary.
    fn refresh(&mut self) {
        let current = lock(&self.shared.current);
        if current.generation != self.generation {
            self.con = current.con.clone();
            self.generation = current.generation;
        }
    }

    /// After `error` on this clone's connection: through Sentinel, and if a failover may
    /// explain it, asks the sentinels where the primary is and moves there if it moved.
    async fn after_error(&mut self, error: &RedisError) {
        let shared = Arc::clone(&self.shared);
        let Some(sentinel) = &shared.sentinel else {
            return;
        };
        if !failover_may_explain(error) {
            return;
        }
        // One question at a time, and not more often than RESOLVE_EVERY.
        let mut sentinel = sentinel.lock().await;
        {
            let current = lock(&shared.current);
            if current.generation != self.generation
                || current
                    .resolved_at
                    .is_some_and(|at| at.elapsed() < RESOLVE_EVERY)
            {
                drop(current);
                self.refresh();
                return;
            }
        }
        lock(&shared.current).resolved_at = Some(Instant::now());
        let client = match sentinel.async_get_client().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "the sentinels did not name a primary");
                return;
            }
        };
        let same = {
            let current = lock(&shared.current);
            current.client.get_connection_info().addr() == client.get_connection_info().addr()
        };
        if same {
            return;
        }
        match client
            .get_connection_manager_with_config(shared.config.clone())
            .await
        {
            Ok(con) => {
                let mut current = lock(&shared.current);
                current.generation += 1;
                current.client = client;
                current.con = con;
                tracing::warn!(
                    primary = %current.client.get_connection_info().addr(),
                    "redis: the sentinels name a new primary; moved to it"
                );
                drop(current);
                self.refresh();
            }
            Err(e) => tracing::warn!(error = %e, "redis: could not connect to the new primary"),
        }
    }
}

/// Whether a failover of the primary may explain `error`: the connection was lost or
/// refused, or the server is a replica now.
fn failover_may_explain(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_dropped()
        || error.is_connection_refusal()
        || error.is_timeout()
        || matches!(
            error.kind(),
            ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
        )
        || error.code() == Some("READONLY")
}

impl ConnectionLike for Link {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        Box::pin(async move {
            self.refresh();
            let result = self.con.req_packed_command(cmd).await;
            if let Err(e) = &result {
                self.after_error(e).await;
            }
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            self.refresh();
            let result = self.con.req_packed_commands(cmd, offset, count).await;
            if let Err(e) = &result {
                self.after_error(e).await;
            }
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn reads_sentinel_urls() {
        assert_eq!(
            Target::parse(
                "redis-sentinel://10.0.0.1:26379,10.0.0.2:26379,sentinel-3:26380#consult"
            )
            .unwrap(),
            Target::Sentinel {
                sentinels: vec![
                    "redis://10.0.0.1:26379".into(),
                    "redis://10.0.0.2:26379".into(),
                    "redis://sentinel-3:26380".into(),
                ],
                primary: "consult".into(),
                username: None,
                password: None,
            }
        );
        assert_eq!(
            Target::parse("redis-sentinel://:s3cret@127.0.0.1:26379/#main").unwrap(),
            Target::Sentinel {
                sentinels: vec!["redis://127.0.0.1:26379".into()],
                primary: "main".into(),
                username: None,
                password: Some("s3cret".into()),
            }
        );
        assert_eq!(
            Target::parse(" redis://127.0.0.1:6379 ").unwrap(),
            Target::Direct("redis://127.0.0.1:6379".into())
        );
    }

    #[test]
    fn refuses_bad_urls_with_a_reason() {
        for bad in [
            "redis-sentinel://127.0.0.1:26379",
            "redis-sentinel://127.0.0.1:26379#",
            "redis-sentinel://127.0.0.1#consult",
            "redis-sentinel://127.0.0.1:port#consult",
            "redis-sentinel://127.0.0.1:26379/0#consult",
            "redis-sentinel://#consult",
            "http://127.0.0.1:6379",
            "",
        ] {
            assert!(Target::parse(bad).is_err(), "{bad} was taken");
        }
    }

    #[test]
    fn never_shows_the_password() {
        let t = Target::parse("redis-sentinel://u:hunter2@127.0.0.1:26379#consult").unwrap();
        assert!(!format!("{t:?}").contains("hunter2"));
        let d = Target::parse("redis://:hunter2@127.0.0.1:6379").unwrap();
        assert!(!format!("{d:?}").contains("hunter2"));
    }
}
