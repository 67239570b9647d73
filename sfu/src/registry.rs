//! A separate SFU node in the store (Redis): its record, refreshed by a heartbeat, and the
//! control secret it shares with signalling. Key names are in `protocol::control`.

use protocol::control::{CONTROL_SECRET_KEY, HEARTBEAT_MS, NODE_TTL_MS, NODES_KEY, NodeRecord};
use protocol::{NodeId, Timestamp};
use redis::AsyncCommands;
use redis::aio::ConnectionLike;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::control::{Load, Node, Service};

fn now() -> Timestamp {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or_default();
    Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// The node's record as of now.
pub fn record(id: &NodeId, control_url: &str, load: Load, service: Service) -> NodeRecord {
    let at = now();
    NodeRecord {
        id: id.clone(),
        control_url: control_url.to_owned(),
        participants: load.participants,
        consultations: load.consultations,
        draining: service != Service::Serving,
        moving: service == Service::Moving,
        heartbeat_at: at,
        expires_at: at.saturating_add_ms(NODE_TTL_MS),
    }
}

/// Writes the node's record once.
pub async fn announce(
    conn: &mut (impl ConnectionLike + Send + Sync),
    record: &NodeRecord,
) -> redis::RedisResult<()> {
    let json = serde_json::to_string(record).unwrap_or_default();
    conn.hset::<_, _, _, ()>(NODES_KEY, record.id.as_str(), json)
        .await
}

/// Refreshes `node`'s record every [`HEARTBEAT_MS`], and at once when it starts or stops
/// draining, until `stop`; then removes it so that no new consultation is placed here.
pub async fn heartbeat(
    mut conn: impl ConnectionLike + Send + Sync,
    node: Arc<Node>,
    id: NodeId,
    control_url: String,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_millis(HEARTBEAT_MS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut service = node.watch_service();
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
            changed = service.changed() => {
                if changed.is_err() {
                    break;
                }
            }
        }
        let now = node.service();
        match announce(&mut conn, &record(&id, &control_url, node.load(), now)).await {
            Ok(()) => node.announced(now),
            Err(e) => tracing::warn!(error = %e, "heartbeat not written"),
        }
    }
    let _: redis::RedisResult<()> = conn.hdel(NODES_KEY, id.as_str()).await;
}

/// The control secret: the configured one, or the one kept in Redis (created now if no
/// process has yet).
pub async fn control_secret(
    conn: &mut (impl ConnectionLike + Send + Sync),
    configured: &str,
) -> redis::RedisResult<String> {
    if !configured.is_empty() {
        return Ok(configured.to_owned());
    }
    let candidate: [u8; 32] = rand::random();
    let candidate: String = candidate.iter().map(|b| format!("{b:02x}")).collect();
    let _: bool = redis::cmd("SET")
        .arg(CONTROL_SECRET_KEY)
        .arg(&candidate)
        .arg("NX")
        .query_async::<Option<String>>(conn)
        .await?
        .is_some();
    conn.get(CONTROL_SECRET_KEY).await
}
