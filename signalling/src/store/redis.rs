//! The shared store: everything in Redis, events over Redis pub/sub, so several signalling
//! instances share one state and any of them can restart.
//!
//! # Key layout
//!
//! Every key and the channel start with one prefix, `consult:`:
//!
//! | key                      | type    | contents                                              |
//! |--------------------------|---------|-------------------------------------------------------|
//! | `consult:clinics`        | hash    | clinic id -> JSON [`Clinic`]                          |
//! | `consult:staff`          | hash    | user name -> JSON [`StaffRecord`]                     |
//! | `consult:room:{clinic}`  | hash    | `v` -> version (decimal), `state` -> JSON [`ClinicRoom`] |
//! | `consult:arrivals:{clinic}` | list | JSON [`Visit`]s appended since the room was last written, in arrival order |
//! | `consult:presence:{clinic}` | sorted set | `{visit}/{holder}` by expiry (ms): one lease per open patient connection |
//! | `consult:visits`         | hash    | visit id -> clinic id (the visit index)               |
//! | `consult:audit`          | stream  | one entry per audit record, field `entry` = JSON [`AuditEntry`]; never trimmed |
//! | `consult:token_secret`   | string  | the secret that signs tokens (raw bytes), set once     |
//! | `consult:session:{id}`   | string  | JSON [`SessionRecord`]; expires at the session's end  |
//! | `consult:sessions`       | sorted set | live session ids by end (ms), pruned as they end   |
//! | `consult:staff_sessions:{user}` | set | the session ids of one member of staff            |
//! | `consult:invite:{id}`    | hash    | `record` -> JSON [`InviteRecord`], `visit` -> the visit it admitted, `revoked` -> `1`; expires a day after the invite |
//! | `consult:invites:{clinic}` | sorted set | invite ids by expiry (ms), pruned as they expire |
//! | `consult:events`         | channel | JSON [`Published`], one message per event             |
//!
//! # Why a commit is one script
//!
//! [`Store::commit`] is optimistic concurrency over several keys: compare the version of
//! every room it writes with the version that was read, and only if all still match write
//! the rooms, the visit index and the audit entries and publish the events. Redis runs a Lua
//! script atomically, so doing the compare and every write in one script (`COMMIT_SCRIPT`)
//! means no other client can slip a write in between the check and the writes, and a
//! conflicting commit writes nothing at all. (`WATCH`/`MULTI` would also work but needs a
//! dedicated connection per commit and a retry loop; the script needs neither.) Everything
//! is serialised in Rust beforehand: the script only compares and writes.
//!
//! # Arrivals are appended
//!
//! A new visit depends on nothing else in its room, so it is not a read-modify-write of
//! the room: `ARRIVAL_SCRIPT` pushes the visit's JSON onto the clinic's arrivals list and
//! bumps the room's version (no compare), with its index entry, audit entries and events.
//! Arrivals never conflict with each other or with anything else, and cost the same
//! however full the room is. Reading a room reads its hash and its arrivals list in one
//! transaction and appends each arrival in list order (which gives same-millisecond
//! arrivals their order); a commit, whose version check proves it saw every arrival,
//! writes the merged room and empties the list.
//!
//! # Presence is leases
//!
//! Each open patient connection holds a member of its clinic's presence sorted set, scored
//! by when it expires; its instance renews it while the connection is open and removes it
//! when it closes. A crashed instance's leases simply expire. Nothing of this touches the
//! room.
//!
//! A script may only touch keys of one node. On a single Redis (or one primary with
//! replicas) that always holds. Redis Cluster would need every key a commit touches in one
//! hash slot, i.e. hash tags such as `{consult}:room:derm`, which puts the whole data set on
//! one shard; this store does not use them and does not support Cluster.
//!
//! # Events
//!
//! A separate pub/sub connection, driven by a background task, forwards every message of
//! `consult:events` to a local broadcast channel that [`Store::subscribe`] hands out. The
//! task reconnects with backoff when the connection drops (events published while it was
//! down are lost; they are logged) and stops when the [`RedisStore`] is dropped.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use protocol::{
    AuditEntry, CallQualityView, ClinicId, ConsultationId, InviteId, SessionId, StaffId, Timestamp,
    VisitId,
};
use redis::aio::{ConnectionManagerConfig, PubSub};
use redis::streams::StreamRangeReply;
use redis::{Client, ErrorKind, RedisError, Script, Value};
use redis_link::{Link, Target};
use serde::Serialize;
use tokio::sync::broadcast;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{
    Appended, Arrival, CALL_QUALITY_KEPT_MS, Clinic, Commit, EVENT_BUFFER, EXPIRED_INVITE_KEPT_MS,
    Feed, InviteRecord, InviteState, Lease, Published, QualityReport, SessionRecord, StaffRecord,
    Store, StoreError, Versioned, group_call_quality,
};
use crate::room::{ClinicRoom, Event, Visit};

/// The prefix of every key and of the channel below.
pub const PREFIX: &str = "consult:";
/// Hash: clinic id -> JSON [`Clinic`].
pub const KEY_CLINICS: &str = "consult:clinics";
/// Hash: user name -> JSON [`StaffRecord`].
pub const KEY_STAFF: &str = "consult:staff";
/// Followed by the clinic id: a hash with `v` (the version) and `state` (JSON [`ClinicRoom`]).
pub const KEY_ROOM_PREFIX: &str = "consult:room:";
/// Followed by the clinic id: a list of JSON [`Visit`]s appended since the room's last
/// commit.
pub const KEY_ARRIVALS_PREFIX: &str = "consult:arrivals:";
/// Followed by the clinic id: a sorted set of presence leases (`{visit}/{holder}`) by
/// expiry (ms).
pub const KEY_PRESENCE_PREFIX: &str = "consult:presence:";
/// Hash: visit id -> clinic id.
pub const KEY_VISITS: &str = "consult:visits";
/// Stream of audit entries, field [`FIELD_ENTRY`]; never trimmed.
pub const KEY_AUDIT: &str = "consult:audit";
/// String: the token signing secret, raw bytes; written once, by the first instance.
pub const KEY_TOKEN_SECRET: &str = "consult:token_secret";
/// Followed by the session id: JSON [`SessionRecord`], expiring at its end.
pub const KEY_SESSION_PREFIX: &str = "consult:session:";
/// Sorted set of every live session id, scored by its end.
pub const KEY_SESSIONS: &str = "consult:sessions";
/// Followed by a user name: the set of that member of staff's session ids.
pub const KEY_STAFF_SESSIONS_PREFIX: &str = "consult:staff_sessions:";
/// Followed by the invite id: a hash with [`FIELD_RECORD`], [`FIELD_VISIT`], [`FIELD_REVOKED`].
pub const KEY_INVITE_PREFIX: &str = "consult:invite:";
/// Followed by the clinic id: a sorted set of that clinic's invite ids, scored by expiry.
pub const KEY_CLINIC_INVITES_PREFIX: &str = "consult:invites:";
/// Followed by the clinic id: a sorted set of that clinic's calls with quality reports,
/// scored by their last report's time.
pub const KEY_CLINIC_QUALITY_PREFIX: &str = "consult:quality:";
/// Followed by the consultation id: a hash of its media sessions' latest reports (field:
/// session, value: JSON [`QualityReport`]), expiring [`CALL_QUALITY_KEPT_MS`] after the last.
pub const KEY_CALL_QUALITY_PREFIX: &str = "consult:call_quality:";
/// Pub/sub channel carrying JSON [`Published`].
pub const CHANNEL_EVENTS: &str = "consult:events";

// The room hash's fields, `v` (the version, decimal; a missing room is version 0) and
// `state` (JSON [`ClinicRoom`]), are read and written only by the scripts above.
/// Audit stream field: JSON [`AuditEntry`].
const FIELD_ENTRY: &str = "entry";
/// Invite hash fields: the JSON record, the visit it admitted, and whether it is revoked.
const FIELD_RECORD: &str = "record";
const FIELD_VISIT: &str = "visit";
const FIELD_REVOKED: &str = "revoked";

/// How long a command may wait for Redis by default, reconnecting included, before it
/// fails as unavailable (`redis_timeout_ms` in the configuration).
pub const DEFAULT_WAIT: Duration = Duration::from_secs(2);
/// Timeouts for commands and for (re)connecting.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RECONNECT_MAX_DELAY: Duration = Duration::from_millis(500);
/// Behind Sentinel, how long a change waits for a replica to have it.
const REPLICA_WAIT: Duration = Duration::from_millis(500);
/// Backoff between attempts to re-establish the event subscription: at most as far apart
/// as the command connection's attempts, so staff boards hear events again within about
/// half a second of Redis returning (a 5 s cap left them deaf for up to 5 s).
const RESUBSCRIBE_MIN_DELAY: Duration = Duration::from_millis(100);
const RESUBSCRIBE_MAX_DELAY: Duration = RECONNECT_MAX_DELAY;
/// How often the event connection is pinged, so a silently dead one is noticed.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(15);

/// How long after expiring a lease is removed (expired ones already count for nothing).
const PRESENCE_PRUNE_MS: u64 = 60_000;

/// What the commit script answers.
const COMMITTED: i64 = 1;
const CONFLICT: i64 = 0;
const INVITE_TAKEN: i64 = 2;

/// The commit, atomically. Compares first and writes only if every version matches (and
/// the invite it claims, if any, is still unclaimed by anyone else and not revoked).
///
/// KEYS: [1] the visit index, [2] the audit stream, [3] the claimed invite's hash (any
/// key when there is no claim), [4..] for each room written, its hash then its arrivals
/// list (emptied: a matching version means the commit's room holds every arrival).
/// ARGV: [1] the events channel, [2] number of index changes, [3] number of audit entries,
/// [4] `1` if an invite is claimed, [5] the visit it must still be bound to (empty: none),
/// [6] the visit that claims it; then for each room (in KEYS order): expected version, new
/// version, state JSON, number of events, then that many Published JSONs; then for each
/// index change: visit id and clinic id (empty: the visit ended, remove it); then the
/// audit entry JSONs.
const COMMIT_SCRIPT: &str = r"
local rooms = (#KEYS - 3) / 2
local a = 7
for i = 1, rooms do
  local current = redis.call('HGET', KEYS[2 * i + 2], 'v') or '0'
  if current ~= ARGV[a] then
    return 0
  end
  a = a + 4 + tonumber(ARGV[a + 3])
end
if ARGV[4] == '1' then
  if redis.call('HEXISTS', KEYS[3], 'record') == 0 or redis.call('HEXISTS', KEYS[3], 'revoked') == 1 then
    return 2
  end
  if (redis.call('HGET', KEYS[3], 'visit') or '') ~= ARGV[5] then
    return 2
  end
  redis.call('HSET', KEYS[3], 'visit', ARGV[6])
end
a = 7
for i = 1, rooms do
  redis.call('HSET', KEYS[2 * i + 2], 'v', ARGV[a + 1], 'state', ARGV[a + 2])
  redis.call('DEL', KEYS[2 * i + 3])
  a = a + 4 + tonumber(ARGV[a + 3])
end
for i = 1, tonumber(ARGV[2]) do
  if ARGV[a + 1] == '' then
    redis.call('HDEL', KEYS[1], ARGV[a])
  else
    redis.call('HSET', KEYS[1], ARGV[a], ARGV[a + 1])
  end
  a = a + 2
end
for i = 1, tonumber(ARGV[3]) do
  redis.call('XADD', KEYS[2], '*', 'entry', ARGV[a])
  a = a + 1
end
a = 7
for i = 1, rooms do
  local n = tonumber(ARGV[a + 3])
  for j = 1, n do
    redis.call('PUBLISH', ARGV[1], ARGV[a + 3 + j])
  end
  a = a + 4 + n
end
return 1
";

/// An arrival, appended: no version compare (see the module's documentation).
///
/// KEYS: [1] the room's hash, [2] its arrivals list, [3] the visit index, [4] the audit
/// stream, [5] the claimed invite's hash (any key when there is no claim).
/// ARGV: [1] the events channel, [2] the visit id, [3] the clinic id, [4] the visit's
/// JSON, [5] `1` if an invite is claimed, [6] the visit it must still be bound to, [7] the
/// visit that claims it, [8] the JSON of each published event up to its version
/// (`{"clinic":...,"version":`), [9] number of events, then the events' JSONs, then the
/// audit entries' JSONs.
/// Answers 1 (appended), 0 (no such room: nothing written) or 2 (invite taken).
const ARRIVAL_SCRIPT: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
if ARGV[5] == '1' then
  if redis.call('HEXISTS', KEYS[5], 'record') == 0 or redis.call('HEXISTS', KEYS[5], 'revoked') == 1 then
    return 2
  end
  if (redis.call('HGET', KEYS[5], 'visit') or '') ~= ARGV[6] then
    return 2
  end
  redis.call('HSET', KEYS[5], 'visit', ARGV[7])
end
local v = redis.call('HINCRBY', KEYS[1], 'v', 1)
redis.call('RPUSH', KEYS[2], ARGV[4])
redis.call('HSET', KEYS[3], ARGV[2], ARGV[3])
local n = tonumber(ARGV[9])
for i = 1, n do
  redis.call('PUBLISH', ARGV[1], ARGV[8] .. v .. ',"event":' .. ARGV[9 + i] .. '}')
end
for i = 10 + n, #ARGV do
  redis.call('XADD', KEYS[4], '*', 'entry', ARGV[i])
end
return 1
"#;

/// The command connection, with every command's wait bounded: the connection manager
/// holds commands while it reconnects (six attempts with backoff, about 10 s when Redis is
/// away), so the bound is put around each whole command instead.
#[derive(Clone)]
struct Bounded {
    con: Link,
    wait: Duration,
}

fn timed_out() -> RedisError {
    RedisError::from((ErrorKind::Io, "no answer from redis in time"))
}

impl redis::aio::ConnectionLike for Bounded {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        let wait = self.wait;
        Box::pin(async move {
            tokio::time::timeout(wait, self.con.req_packed_command(cmd))
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        let wait = self.wait;
        Box::pin(async move {
            tokio::time::timeout(wait, self.con.req_packed_commands(cmd, offset, count))
                .await
                .unwrap_or_else(|_| Err(timed_out()))
        })
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}

/// Reads a room: its version, the arrivals appended since its last commit, and its
/// document, unless the caller's copy of that document is still the current one (same
/// document version, the room's version less its arrivals, and the same length), in which
/// case only the arrivals it has not read yet.
///
/// KEYS: [1] the room's hash, [2] its arrivals list. ARGV: [1] the document version of the
/// caller's copy (`-1`: none), [2] that document's length in bytes, [3] how many arrivals
/// the caller's copy holds.
/// Answers `{}` (no room), `{v, arrivals}` or `{v, arrivals, state}`.
const READ_SCRIPT: &str = r"
local v = redis.call('HGET', KEYS[1], 'v')
if not v then
  return {}
end
local n = redis.call('LLEN', KEYS[2])
local len = redis.call('HSTRLEN', KEYS[1], 'state')
if tonumber(v) - n == tonumber(ARGV[1]) and len == tonumber(ARGV[2]) and n >= tonumber(ARGV[3]) then
  return {v, redis.call('LRANGE', KEYS[2], tonumber(ARGV[3]), -1)}
end
return {v, redis.call('LRANGE', KEYS[2], 0, -1), redis.call('HGET', KEYS[1], 'state')}
";

/// This instance's copy of a room's document with the arrivals it has read, so that a
/// storm of reconnections reads and parses each room once, then only what was appended.
struct CachedRoom {
    doc_version: u64,
    doc_len: usize,
    applied: usize,
    room: Arc<ClinicRoom>,
}

/// The store on Redis. Dropping it stops its event subscription.
pub struct RedisStore {
    con: Bounded,
    /// Behind Sentinel: a change is acknowledged once a replica has it too (see
    /// [`RedisStore::replicate`]).
    replicated: bool,
    commit_script: Script,
    arrival_script: Script,
    read_script: Script,
    rooms: std::sync::Mutex<std::collections::HashMap<ClinicId, CachedRoom>>,
    events: broadcast::Sender<Feed>,
    /// Cancels the pub/sub task when the store is dropped.
    _subscription: DropGuard,
}

impl fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not the URL: it may hold a password.
        f.debug_struct("RedisStore")
            .field("subscribers", &self.events.receiver_count())
            .finish_non_exhaustive()
    }
}

/// The wire form of [`Published`], borrowing instead of cloning the event (same fields, same
/// order, so it deserialises as [`Published`]).
#[derive(Debug, Serialize)]
struct PublishedRef<'a> {
    clinic: &'a ClinicId,
    version: u64,
    event: &'a Event,
}

fn redis_err(e: RedisError) -> StoreError {
    let corrupt =
        matches!(e.kind(), ErrorKind::UnexpectedReturnType) || e.code() == Some("WRONGTYPE");
    if corrupt {
        StoreError::Corrupt(format!("redis: {e}"))
    } else {
        StoreError::Unavailable(format!("redis: {e}"))
    }
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn session_key(id: SessionId) -> String {
    format!("{KEY_SESSION_PREFIX}{id}")
}

fn staff_sessions_key(staff: &StaffId) -> String {
    format!("{KEY_STAFF_SESSIONS_PREFIX}{staff}")
}

fn invite_key(id: InviteId) -> String {
    format!("{KEY_INVITE_PREFIX}{id}")
}

fn clinic_quality_key(clinic: &ClinicId) -> String {
    format!("{KEY_CLINIC_QUALITY_PREFIX}{clinic}")
}

fn call_quality_key(consultation: ConsultationId) -> String {
    format!("{KEY_CALL_QUALITY_PREFIX}{consultation}")
}

fn clinic_invites_key(clinic: &ClinicId) -> String {
    format!("{KEY_CLINIC_INVITES_PREFIX}{clinic}")
}

fn arrivals_key(clinic: &ClinicId) -> String {
    format!("{KEY_ARRIVALS_PREFIX}{clinic}")
}

fn presence_key(clinic: &ClinicId) -> String {
    format!("{KEY_PRESENCE_PREFIX}{clinic}")
}

fn lease_member(lease: &Lease) -> String {
    format!("{}/{}", lease.visit, lease.holder)
}

fn room_key(clinic: &ClinicId) -> String {
    let mut key = String::with_capacity(KEY_ROOM_PREFIX.len() + clinic.as_str().len());
    key.push_str(KEY_ROOM_PREFIX);
    key.push_str(clinic.as_str());
    key
}

async fn subscribe_events(client: &Client) -> Result<PubSub, StoreError> {
    let subscribe = async {
        let mut pubsub = client.get_async_pubsub().await?;
        pubsub.subscribe(CHANNEL_EVENTS).await?;
        Ok::<_, RedisError>(pubsub)
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, subscribe).await {
        Ok(result) => result.map_err(redis_err),
        Err(_) => Err(StoreError::Unavailable(
            "redis: timed out subscribing to events".into(),
        )),
    }
}

/// Forwards the events channel to `events` until `stop`, reconnecting when needed.
async fn forward_events(
    link: Link,
    first: PubSub,
    events: broadcast::Sender<Feed>,
    stop: CancellationToken,
) {
    let mut pubsub = Some(first);
    let mut delay = RESUBSCRIBE_MIN_DELAY;
    loop {
        let connection = match pubsub.take() {
            Some(p) => p,
            None => {
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
                // The primary's, which may have changed (Sentinel).
                let client = link.client();
                let attempt = tokio::select! {
                    () = stop.cancelled() => return,
                    attempt = subscribe_events(&client) => attempt,
                };
                match attempt {
                    Ok(p) => {
                        tracing::warn!(
                            "redis event subscription restored; resynchronising every connection"
                        );
                        // Events published meanwhile were missed: every connection resyncs.
                        let _ = events.send(Feed::Resync);
                        delay = RESUBSCRIBE_MIN_DELAY;
                        p
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, retry_in = ?delay, "redis event subscription failed");
                        delay = (delay * 2).min(RESUBSCRIBE_MAX_DELAY);
                        continue;
                    }
                }
            }
        };
        let (mut sink, mut stream) = connection.split();
        let mut health = tokio::time::interval(HEALTH_CHECK_INTERVAL);
        health.reset(); // The first tick would be immediate; the connection is fresh.
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    if msg.get_channel_name() != CHANNEL_EVENTS {
                        continue;
                    }
                    match serde_json::from_slice::<Published>(msg.get_payload_bytes()) {
                        // No receiver is not an error: nobody is connected.
                        Ok(p) => {
                            let _ = events.send(Feed::Event(Arc::new(p)));
                        }
                        Err(e) => tracing::warn!(error = %e, "ignoring a malformed event from redis"),
                    }
                }
                _ = health.tick() => {
                    match tokio::time::timeout(RESPONSE_TIMEOUT, sink.ping::<Value>()).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "redis event connection failed its health check");
                            break;
                        }
                        Err(_) => {
                            tracing::warn!("redis event connection did not answer its health check");
                            break;
                        }
                    }
                }
            }
        }
        tracing::warn!("redis event subscription lost; reconnecting");
    }
}

impl RedisStore {
    /// Connects to `url` (`redis://host:port`, `redis+unix:///path/to/socket`, ...,
    /// or `redis-sentinel://host:port,host:port#primary` to follow the primary that Redis
    /// Sentinel names) and returns once the event subscription is active. Commands wait
    /// at most [`DEFAULT_WAIT`].
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, DEFAULT_WAIT).await
    }

    /// [`RedisStore::connect`], with commands that wait at most `wait` for Redis
    /// (reconnecting included) before failing as unavailable.
    pub async fn connect_with(url: &str, wait: Duration) -> Result<Self, StoreError> {
        let target =
            Target::parse(url).map_err(|e| StoreError::Unavailable(format!("redis: {e}")))?;
        let replicated = matches!(target, Target::Sentinel { .. });
        let config = ConnectionManagerConfig::new()
            .set_response_timeout(Some(RESPONSE_TIMEOUT))
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            // Reconnection attempts at most this far apart, so commands work again soon
            // after Redis is back (the default backoff grows to 3.2 s between attempts).
            .set_max_delay(RECONNECT_MAX_DELAY);
        let link = Link::connect(&target, config).await.map_err(redis_err)?;
        let mut con = Bounded {
            con: link.clone(),
            wait,
        };
        let commit_script = Script::new(COMMIT_SCRIPT);
        let arrival_script = Script::new(ARRIVAL_SCRIPT);
        let read_script = Script::new(READ_SCRIPT);
        // Loaded now so calls go straight to EVALSHA; `invoke_async` reloads a script if
        // the server lost it (a restart).
        for script in [&commit_script, &arrival_script, &read_script] {
            script
                .prepare_invoke()
                .load_async(&mut con)
                .await
                .map_err(redis_err)?;
        }

        let pubsub = subscribe_events(&link.client()).await?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        let stop = CancellationToken::new();
        tokio::spawn(forward_events(link, pubsub, events.clone(), stop.clone()));
        Ok(Self {
            con,
            replicated,
            commit_script,
            arrival_script,
            read_script,
            rooms: std::sync::Mutex::default(),
            events,
            _subscription: stop.drop_guard(),
        })
    }

    /// Behind Sentinel, waits (at most [`REPLICA_WAIT`]) until a replica has every write
    /// made so far on this connection: a patient told they are in the waiting room is
    /// still there after a failover to that replica. Replication is asynchronous, so an
    /// answer sent before a replica had the write could be lost with the primary. If no
    /// replica answers in time the change stands (on the primary alone), and is said.
    async fn replicate(&self) {
        if !self.replicated {
            return;
        }
        let acked: Result<i64, _> = redis::cmd("WAIT")
            .arg(1)
            .arg(REPLICA_WAIT.as_millis() as u64)
            .query_async(&mut self.con.clone())
            .await;
        match acked {
            Ok(n) if n >= 1 => {}
            Ok(_) => tracing::warn!("redis: no replica confirmed a change in time"),
            Err(e) => tracing::warn!(error = %e, "redis: could not wait for a replica"),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<ClinicId, CachedRoom>> {
        // Nothing under this lock can panic half-way.
        self.rooms.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn hget_json<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
        field: &str,
    ) -> Result<Option<T>, StoreError> {
        let json: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(key)
            .arg(field)
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        json.map(|j| serde_json::from_slice(&j).map_err(corrupt))
            .transpose()
    }

    async fn hset_json<T: Serialize>(
        &self,
        key: &str,
        field: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let json = serde_json::to_vec(value).map_err(corrupt)?;
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(json)
            .query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }

    /// Every value of a hash, ordered by field.
    async fn hvals_sorted<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Vec<T>, StoreError> {
        let all: BTreeMap<String, Vec<u8>> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        all.into_values()
            .map(|j| serde_json::from_slice(&j).map_err(corrupt))
            .collect()
    }
}

/// A field of a hash that expires at `keep_until` (ms since the epoch).
struct Indexed<'a> {
    key: &'a str,
    field: &'a str,
    keep_until: u64,
}

impl RedisStore {
    /// Writes `value` into a record that expires, and lists it in a sorted `index` as
    /// `(score, member)`, forgetting members scored before `forget_before`: a per-clinic
    /// list of records that end (invites, call-quality reports), in one atomic pipeline.
    async fn put_indexed(
        &self,
        record: Indexed<'_>,
        index: &str,
        (score, member): (u64, &str),
        forget_before: u64,
        value: Vec<u8>,
    ) -> Result<(), StoreError> {
        redis::pipe()
            .atomic()
            .cmd("HSET")
            .arg(record.key)
            .arg(record.field)
            .arg(value)
            .ignore()
            .cmd("PEXPIREAT")
            .arg(record.key)
            .arg(record.keep_until)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(index)
            .arg("-inf")
            .arg(format!("({forget_before}"))
            .ignore()
            .cmd("ZADD")
            .arg(index)
            .arg(score)
            .arg(member)
            .ignore()
            .query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }
}

#[async_trait]
impl Store for RedisStore {
    async fn put_clinic(&self, clinic: &Clinic) -> Result<(), StoreError> {
        self.hset_json(KEY_CLINICS, clinic.id.as_str(), clinic)
            .await
    }

    async fn clinic(&self, id: &ClinicId) -> Result<Option<Clinic>, StoreError> {
        self.hget_json(KEY_CLINICS, id.as_str()).await
    }

    async fn clinics(&self) -> Result<Vec<Clinic>, StoreError> {
        self.hvals_sorted(KEY_CLINICS).await
    }

    async fn put_staff(&self, staff: &StaffRecord) -> Result<(), StoreError> {
        self.hset_json(KEY_STAFF, staff.username.as_str(), staff)
            .await
    }

    async fn staff(&self, id: &StaffId) -> Result<Option<StaffRecord>, StoreError> {
        self.hget_json(KEY_STAFF, id.as_str()).await
    }

    async fn staff_list(&self) -> Result<Vec<StaffRecord>, StoreError> {
        self.hvals_sorted(KEY_STAFF).await
    }

    async fn room(
        &self,
        clinic: &ClinicId,
    ) -> Result<Option<Versioned<Arc<ClinicRoom>>>, StoreError> {
        let known = self
            .cache()
            .get(clinic)
            .map(|c| (c.doc_version, c.doc_len, c.applied));
        let (cached_version, cached_len, applied) = match known {
            Some((v, len, applied)) => (v.to_string(), len.to_string(), applied),
            None => ("-1".to_owned(), "-1".to_owned(), 0),
        };
        // The room and the arrivals appended since its last commit, read together; only
        // the arrivals this instance has not read yet when its copy is still current.
        let reply: Value = self
            .read_script
            .key(room_key(clinic))
            .key(arrivals_key(clinic))
            .arg(&cached_version)
            .arg(&cached_len)
            .arg(applied)
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        let bad = |what: &str| StoreError::Corrupt(format!("room {clinic}: {what}"));
        let Value::Array(items) = reply else {
            return Err(bad("unexpected answer from the read script"));
        };
        let mut items = items.into_iter();
        let version: u64 = match items.next() {
            None => return Ok(None),
            Some(Value::BulkString(v)) => std::str::from_utf8(&v)
                .ok()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| bad("version is not a number"))?,
            Some(_) => return Err(bad("version is not a string")),
        };
        let arrivals = match items.next() {
            Some(Value::Array(a)) => a,
            _ => return Err(bad("arrivals are not a list")),
        };
        let parse_arrival = |v: Value| match v {
            Value::BulkString(json) => serde_json::from_slice::<Visit>(&json).map_err(corrupt),
            _ => Err(bad("an arrival is not a string")),
        };
        let (mut value, doc_len, applied_before) = match items.next() {
            // A fresh copy of the room's document.
            Some(Value::BulkString(state)) => {
                let room: ClinicRoom = serde_json::from_slice(&state).map_err(corrupt)?;
                (Arc::new(room), state.len(), 0)
            }
            Some(Value::Nil) => return Err(bad("needs both a version and a state")),
            Some(_) => return Err(bad("state is not a string")),
            // Ours is current: only the new arrivals came.
            None => {
                let cache = self.cache();
                let c = cache
                    .get(clinic)
                    .ok_or_else(|| bad("the cached copy vanished"))?;
                (Arc::clone(&c.room), c.doc_len, c.applied)
            }
        };
        let applied = applied_before + arrivals.len();
        let doc_version = version
            .checked_sub(applied as u64)
            .ok_or_else(|| bad("more arrivals than versions"))?;
        if !arrivals.is_empty() {
            // Copied (from the cache's) only when there is something to add.
            let room = Arc::make_mut(&mut value);
            for a in arrivals {
                room.append(parse_arrival(a)?);
            }
        }
        let mut cache = self.cache();
        let newer = cache
            .get(clinic)
            .is_none_or(|c| (c.doc_version, c.applied) < (doc_version, applied));
        if newer {
            cache.insert(
                clinic.clone(),
                CachedRoom {
                    doc_version,
                    doc_len,
                    applied,
                    room: Arc::clone(&value),
                },
            );
        }
        Ok(Some(Versioned { version, value }))
    }

    async fn locate(&self, visit: VisitId) -> Result<Option<ClinicId>, StoreError> {
        let clinic: Option<String> = redis::cmd("HGET")
            .arg(KEY_VISITS)
            .arg(visit.to_string())
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        clinic
            .map(|c| {
                ClinicId::parse(c).map_err(|e| StoreError::Corrupt(format!("visit {visit}: {e}")))
            })
            .transpose()
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let mut invocation = self.commit_script.prepare_invoke();
        let (claim_key, claimed, expected, visit) = match &commit.claim {
            Some(c) => (
                invite_key(c.invite),
                "1",
                c.expected.map(|v| v.to_string()).unwrap_or_default(),
                c.visit.to_string(),
            ),
            None => (
                KEY_INVITE_PREFIX.to_owned(),
                "0",
                String::new(),
                String::new(),
            ),
        };
        invocation
            .key(KEY_VISITS)
            .key(KEY_AUDIT)
            .key(claim_key)
            .arg(CHANNEL_EVENTS)
            .arg(commit.index.len())
            .arg(commit.audit.len())
            .arg(claimed)
            .arg(expected)
            .arg(visit);
        // One scratch buffer for every JSON value: the invocation copies each argument.
        let mut json = Vec::new();
        for w in &commit.rooms {
            let version = w.expected.checked_add(1).ok_or_else(|| {
                StoreError::Corrupt(format!("room {}: version overflow", w.room.clinic))
            })?;
            invocation
                .key(room_key(&w.room.clinic))
                .key(arrivals_key(&w.room.clinic));
            json.clear();
            serde_json::to_writer(&mut json, &w.room).map_err(corrupt)?;
            invocation
                .arg(w.expected)
                .arg(version)
                .arg(json.as_slice())
                .arg(w.events.len());
            for event in &w.events {
                json.clear();
                let published = PublishedRef {
                    clinic: &w.room.clinic,
                    version,
                    event,
                };
                serde_json::to_writer(&mut json, &published).map_err(corrupt)?;
                invocation.arg(json.as_slice());
            }
        }
        for (visit, clinic) in &commit.index {
            invocation
                .arg(visit.to_string())
                .arg(clinic.as_ref().map_or("", ClinicId::as_str));
        }
        for entry in &commit.audit {
            json.clear();
            serde_json::to_writer(&mut json, entry).map_err(corrupt)?;
            invocation.arg(json.as_slice());
        }
        let answer: i64 = invocation
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        if answer == COMMITTED {
            self.replicate().await;
        }
        match answer {
            COMMITTED => Ok(()),
            CONFLICT => Err(StoreError::Conflict),
            INVITE_TAKEN => Err(StoreError::InviteTaken),
            other => Err(StoreError::Corrupt(format!(
                "commit script answered {other}"
            ))),
        }
    }

    async fn append_arrival(&self, arrival: Arrival) -> Result<Appended, StoreError> {
        let (claim_key, claimed, expected, visit) = match &arrival.claim {
            Some(c) => (
                invite_key(c.invite),
                "1",
                c.expected.map(|v| v.to_string()).unwrap_or_default(),
                c.visit.to_string(),
            ),
            None => (
                KEY_INVITE_PREFIX.to_owned(),
                "0",
                String::new(),
                String::new(),
            ),
        };
        let clinic_json = serde_json::to_string(&arrival.clinic).map_err(corrupt)?;
        let mut invocation = self.arrival_script.prepare_invoke();
        invocation
            .key(room_key(&arrival.clinic))
            .key(arrivals_key(&arrival.clinic))
            .key(KEY_VISITS)
            .key(KEY_AUDIT)
            .key(claim_key)
            .arg(CHANNEL_EVENTS)
            .arg(arrival.visit.id.to_string())
            .arg(arrival.clinic.as_str())
            .arg(serde_json::to_vec(&arrival.visit).map_err(corrupt)?)
            .arg(claimed)
            .arg(expected)
            .arg(visit)
            .arg(format!("{{\"clinic\":{clinic_json},\"version\":"))
            .arg(arrival.events.len());
        for event in &arrival.events {
            invocation.arg(serde_json::to_vec(event).map_err(corrupt)?);
        }
        for entry in &arrival.audit {
            invocation.arg(serde_json::to_vec(entry).map_err(corrupt)?);
        }
        let answer: i64 = invocation
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        if answer == 1 {
            self.replicate().await;
        }
        match answer {
            1 => Ok(Appended::Appended),
            0 => Ok(Appended::NoRoom),
            2 => Err(StoreError::InviteTaken),
            other => Err(StoreError::Corrupt(format!(
                "arrival script answered {other}"
            ))),
        }
    }

    async fn hold_presence(&self, leases: &[Lease], until: Timestamp) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut by_clinic: BTreeMap<&ClinicId, Vec<String>> = BTreeMap::new();
        for l in leases {
            by_clinic
                .entry(&l.clinic)
                .or_default()
                .push(lease_member(l));
        }
        let mut pipe = redis::pipe();
        for (clinic, members) in by_clinic {
            let key = presence_key(clinic);
            let mut zadd = redis::cmd("ZADD");
            zadd.arg(&key);
            for m in members {
                zadd.arg(until.0).arg(m);
            }
            pipe.add_command(zadd).ignore();
            // Leases of connections whose instance died, long expired: pruned here.
            pipe.cmd("ZREMRANGEBYSCORE")
                .arg(&key)
                .arg("-inf")
                .arg(format!(
                    "({}",
                    crate::service::now().0.saturating_sub(PRESENCE_PRUNE_MS)
                ))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }

    async fn release_presence(&self, leases: &[Lease]) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for l in leases {
            pipe.cmd("ZREM")
                .arg(presence_key(&l.clinic))
                .arg(lease_member(l))
                .ignore();
        }
        pipe.query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }

    async fn online(
        &self,
        clinic: &ClinicId,
        now: Timestamp,
    ) -> Result<std::collections::BTreeSet<VisitId>, StoreError> {
        let members: Vec<String> = redis::cmd("ZRANGE")
            .arg(presence_key(clinic))
            .arg(format!("({}", now.0))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        members
            .iter()
            .map(|m| {
                m.split_once('/')
                    .and_then(|(v, _)| v.parse().ok())
                    .ok_or_else(|| StoreError::Corrupt(format!("presence lease {m:?}")))
            })
            .collect()
    }

    fn subscribe(&self) -> broadcast::Receiver<Feed> {
        self.events.subscribe()
    }

    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(session).map_err(corrupt)?;
        let id = session.id.to_string();
        redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(session_key(session.id))
            .arg(json)
            .arg("PXAT")
            .arg(session.ends_at.0)
            .ignore()
            .cmd("ZREMRANGEBYSCORE")
            .arg(KEY_SESSIONS)
            .arg("-inf")
            .arg(format!("({}", session.started_at.0))
            .ignore()
            .cmd("ZADD")
            .arg(KEY_SESSIONS)
            .arg(session.ends_at.0)
            .arg(&id)
            .ignore()
            .cmd("SADD")
            .arg(staff_sessions_key(&session.staff))
            .arg(&id)
            .ignore()
            .query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }

    async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let json: Option<Vec<u8>> = redis::cmd("GET")
            .arg(session_key(id))
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        json.map(|j| serde_json::from_slice(&j).map_err(corrupt))
            .transpose()
    }

    async fn end_session(&self, id: SessionId) -> Result<bool, StoreError> {
        let Some(s) = self.session(id).await? else {
            return Ok(false);
        };
        let (deleted,): (i64,) = redis::pipe()
            .atomic()
            .cmd("DEL")
            .arg(session_key(id))
            .cmd("ZREM")
            .arg(KEY_SESSIONS)
            .arg(id.to_string())
            .ignore()
            .cmd("SREM")
            .arg(staff_sessions_key(&s.staff))
            .arg(id.to_string())
            .ignore()
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        Ok(deleted == 1)
    }

    async fn end_sessions_of(&self, staff: &StaffId) -> Result<usize, StoreError> {
        // One script, so a sign-in at the same moment is either ended or not yet recorded.
        let script = Script::new(
            "local ids = redis.call('SMEMBERS', KEYS[1]) local n = 0 \
             for _, id in ipairs(ids) do \
               n = n + redis.call('DEL', ARGV[1] .. id) \
               redis.call('ZREM', KEYS[2], id) \
             end \
             redis.call('DEL', KEYS[1]) return n",
        );
        let n: i64 = script
            .key(staff_sessions_key(staff))
            .key(KEY_SESSIONS)
            .arg(KEY_SESSION_PREFIX)
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        Ok(usize::try_from(n).unwrap_or(0))
    }

    async fn sessions(&self, now: Timestamp) -> Result<Vec<SessionRecord>, StoreError> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(KEY_SESSIONS)
            .arg(format!("({}", now.0))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id: SessionId = id
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("session id {id:?}")))?;
            if let Some(s) = self.session(id).await? {
                out.push(s);
            }
        }
        out.sort_by_key(|s| s.started_at);
        Ok(out)
    }

    async fn put_invite(&self, invite: &InviteRecord) -> Result<(), StoreError> {
        let json = serde_json::to_vec(invite).map_err(corrupt)?;
        let key = invite_key(invite.id);
        let index = clinic_invites_key(&invite.clinic);
        let keep_until = invite.expires_at.0.saturating_add(EXPIRED_INVITE_KEPT_MS);
        let forget_before = invite.issued_at.0.saturating_sub(EXPIRED_INVITE_KEPT_MS);
        self.put_indexed(
            Indexed {
                key: &key,
                field: FIELD_RECORD,
                keep_until,
            },
            &index,
            (invite.expires_at.0, &invite.id.to_string()),
            forget_before,
            json,
        )
        .await
    }

    async fn invite(&self, id: InviteId) -> Result<Option<InviteState>, StoreError> {
        let (record, visit, revoked): (Option<Vec<u8>>, Option<String>, Option<String>) =
            redis::cmd("HMGET")
                .arg(invite_key(id))
                .arg(FIELD_RECORD)
                .arg(FIELD_VISIT)
                .arg(FIELD_REVOKED)
                .query_async(&mut self.con.clone())
                .await
                .map_err(redis_err)?;
        let Some(record) = record else {
            return Ok(None);
        };
        Ok(Some(InviteState {
            record: serde_json::from_slice(&record).map_err(corrupt)?,
            visit: visit
                .map(|v| {
                    v.parse()
                        .map_err(|_| StoreError::Corrupt(format!("invite {id}: visit {v:?}")))
                })
                .transpose()?,
            revoked: revoked.is_some(),
        }))
    }

    async fn invites(
        &self,
        clinic: &ClinicId,
        now: Timestamp,
    ) -> Result<Vec<InviteState>, StoreError> {
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(clinic_invites_key(clinic))
            .arg(format!("({}", now.0))
            .arg("+inf")
            .arg("BYSCORE")
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let id: InviteId = id
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("invite id {id:?}")))?;
            if let Some(state) = self.invite(id).await? {
                out.push(state);
            }
        }
        out.sort_by_key(|s| s.record.issued_at);
        Ok(out)
    }

    async fn revoke_invite(&self, id: InviteId) -> Result<bool, StoreError> {
        // Only an existing invite: HSET on a missing key would create a bare one.
        let script = Script::new(
            "if redis.call('HEXISTS', KEYS[1], 'record') == 1 then \
               redis.call('HSET', KEYS[1], 'revoked', '1') return 1 end return 0",
        );
        let done: i64 = script
            .key(invite_key(id))
            .invoke_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        Ok(done == 1)
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut json = Vec::new();
        for entry in entries {
            json.clear();
            serde_json::to_writer(&mut json, entry).map_err(corrupt)?;
            pipe.cmd("XADD")
                .arg(KEY_AUDIT)
                .arg("*")
                .arg(FIELD_ENTRY)
                .arg(json.as_slice())
                .ignore();
        }
        pipe.query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }

    async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let reply: StreamRangeReply = redis::cmd("XREVRANGE")
            .arg(KEY_AUDIT)
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(limit)
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        reply
            .ids
            .iter()
            .rev()
            .map(|id| match id.map.get(FIELD_ENTRY) {
                Some(Value::BulkString(json)) => serde_json::from_slice(json).map_err(corrupt),
                _ => Err(StoreError::Corrupt(format!(
                    "audit entry {} has no {FIELD_ENTRY:?} field",
                    id.id
                ))),
            })
            .collect()
    }

    async fn token_secret(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        // Set if absent and read back in one transaction: every instance gets the one secret
        // that was stored first.
        let (secret,): (Option<Vec<u8>>,) = redis::pipe()
            .atomic()
            .cmd("SET")
            .arg(KEY_TOKEN_SECRET)
            .arg(candidate)
            .arg("NX")
            .ignore()
            .cmd("GET")
            .arg(KEY_TOKEN_SECRET)
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        secret.ok_or_else(|| StoreError::Unavailable("redis: the token secret vanished".into()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        redis::cmd("PING")
            .query_async::<()>(&mut self.con.clone())
            .await
            .map_err(redis_err)
    }
    async fn put_call_quality(&self, report: &QualityReport) -> Result<(), StoreError> {
        let json = serde_json::to_vec(report).map_err(corrupt)?;
        let key = call_quality_key(report.consultation);
        let index = clinic_quality_key(&report.clinic);
        let keep_until = report.updated_at.0.saturating_add(CALL_QUALITY_KEPT_MS);
        let forget_before = report.updated_at.0.saturating_sub(CALL_QUALITY_KEPT_MS);
        self.put_indexed(
            Indexed {
                key: &key,
                field: &report.session.to_string(),
                keep_until,
            },
            &index,
            (report.updated_at.0, &report.consultation.to_string()),
            forget_before,
            json,
        )
        .await
    }

    async fn call_quality(
        &self,
        clinic: &ClinicId,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CallQualityView>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let ids: Vec<String> = redis::cmd("ZRANGE")
            .arg(clinic_quality_key(clinic))
            .arg("+inf")
            .arg(since.0)
            .arg("BYSCORE")
            .arg("REV")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        let mut pipe = redis::pipe();
        for id in &ids {
            let id: ConsultationId = id
                .parse()
                .map_err(|_| StoreError::Corrupt(format!("consultation id {id:?}")))?;
            pipe.cmd("HVALS").arg(call_quality_key(id));
        }
        let calls: Vec<Vec<Vec<u8>>> = pipe
            .query_async(&mut self.con.clone())
            .await
            .map_err(redis_err)?;
        let reports = calls
            .iter()
            .flatten()
            .map(|json| serde_json::from_slice(json).map_err(corrupt))
            .collect::<Result<Vec<QualityReport>, StoreError>>()?;
        Ok(group_call_quality(reports, limit))
    }

    async fn media_nodes(&self) -> Result<Vec<protocol::control::NodeRecord>, StoreError> {
        self.hvals_sorted(protocol::control::NODES_KEY).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // A failing unwrap is a failing test.
mod tests {
    use super::*;
    use crate::room::Audience;
    use protocol::ServerMsg;

    #[test]
    fn every_key_has_the_prefix() {
        for key in [
            KEY_CLINICS,
            KEY_STAFF,
            KEY_ROOM_PREFIX,
            KEY_ARRIVALS_PREFIX,
            KEY_PRESENCE_PREFIX,
            KEY_VISITS,
            KEY_AUDIT,
            KEY_TOKEN_SECRET,
            KEY_INVITE_PREFIX,
            KEY_CLINIC_INVITES_PREFIX,
            KEY_SESSION_PREFIX,
            KEY_SESSIONS,
            KEY_STAFF_SESSIONS_PREFIX,
            CHANNEL_EVENTS,
        ] {
            assert!(key.starts_with(PREFIX), "{key}");
        }
    }

    #[test]
    fn published_ref_is_the_wire_form_of_published() {
        let clinic = ClinicId::parse("derm").unwrap();
        let event = Event {
            to: Audience::ClinicStaff(clinic.clone()),
            msg: ServerMsg::ConsultationEnded {
                clinic: clinic.clone(),
                consultation: protocol::ConsultationId::random(),
            },
        };
        let json = serde_json::to_vec(&PublishedRef {
            clinic: &clinic,
            version: 7,
            event: &event,
        })
        .unwrap();
        let back: Published = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            back,
            Published {
                clinic,
                version: 7,
                event,
            }
        );
    }
}
