//! Administration of the SFU nodes: which there are, and taking one out of service
//! (drain) or back in (resume). Only separate nodes (Redis mode) can be drained: a single
//! node's SFU is the only one there is.

use std::time::Duration;

use protocol::NodeId;
use protocol::control::{ControlOp, NodeRecord};

use super::Service;
use crate::error::AppError;

/// The longest drain deadline an administrator may set.
pub const MAX_DRAIN: Duration = Duration::from_secs(24 * 3600);

impl Service {
    fn separate_nodes(&self) -> Result<&std::sync::Arc<crate::media::Media>, AppError> {
        match &self.media {
            Some(m) if m.separate() => Ok(m),
            _ => Err(AppError::Invalid(
                "this server runs its media itself: there is no node to drain".into(),
            )),
        }
    }

    /// Every SFU node's record, by name.
    pub async fn media_nodes(&self) -> Result<Vec<NodeRecord>, AppError> {
        match &self.media {
            Some(m) => m.records().await,
            None => Ok(Vec::new()),
        }
    }

    /// Takes `node` out of service: no new consultation goes there; the ones it carries go
    /// on for up to `deadline`, then move to other nodes.
    pub async fn drain_node(
        &self,
        actor: &str,
        node: &NodeId,
        deadline: Duration,
    ) -> Result<(), AppError> {
        if deadline > MAX_DRAIN {
            return Err(AppError::Invalid(format!(
                "a drain deadline is at most {} hours",
                MAX_DRAIN.as_secs() / 3600
            )));
        }
        let media = self.separate_nodes()?;
        self.known_node(node).await?;
        let deadline_ms = u64::try_from(deadline.as_millis()).unwrap_or(u64::MAX);
        media
            .link(node)
            .await?
            .request(ControlOp::Drain { deadline_ms })
            .await?;
        self.record(protocol::AuditEntry {
            detail: Some(format!("node {node}, deadline {} s", deadline.as_secs())),
            ..self.audit_entry(actor, "node_drain")
        })
        .await;
        Ok(())
    }

    /// Puts a draining `node` back into service.
    pub async fn resume_node(&self, actor: &str, node: &NodeId) -> Result<(), AppError> {
        let media = self.separate_nodes()?;
        self.known_node(node).await?;
        media.link(node).await?.request(ControlOp::Resume).await?;
        self.record(protocol::AuditEntry {
            detail: Some(format!("node {node}")),
            ..self.audit_entry(actor, "node_resume")
        })
        .await;
        Ok(())
    }

    async fn known_node(&self, node: &NodeId) -> Result<(), AppError> {
        if self.media_nodes().await?.iter().any(|r| &r.id == node) {
            Ok(())
        } else {
            Err(AppError::NotFound("no such media node"))
        }
    }
}
