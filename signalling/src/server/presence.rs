//! Presence: which patients have a page open, as leases in the store, outside the room.
//!
//! Each open patient websocket holds one lease (its clinic, its visit, and this instance's
//! name with the connection's id), written when it opens and removed when it closes. One
//! task per instance renews every lease this instance holds every [`RENEW_EVERY`], for
//! [`LEASE`]; the leases of an instance that dies expire by themselves. A page's
//! (re)connection therefore writes no room state and never conflicts with anything.
//!
//! Staff see presence through their instance's hub ([`super::hub::Hub`]), which reads the
//! clinics its staff watch every [`POLL_EVERY`] and tells them what changed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use protocol::{ClinicId, Timestamp, VisitId};
use tokio_util::sync::CancellationToken;

use crate::service::now;
use crate::store::{Lease, Store};

/// How long a lease lasts unless renewed: a crashed instance's patients show offline this
/// long (plus one poll) after it died.
pub const LEASE: Duration = Duration::from_secs(6);
/// How often this instance renews its leases.
pub const RENEW_EVERY: Duration = Duration::from_secs(2);
/// How often a hub reads the presence of the clinics its staff watch.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// This instance's leases.
#[derive(Debug)]
pub struct Presence {
    /// Names this process among the instances sharing the store.
    instance: String,
    held: Mutex<HashMap<u64, Lease>>,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            held: Mutex::new(HashMap::new()),
        }
    }
}

fn until() -> Timestamp {
    let lease = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    Timestamp(now().0.saturating_add(lease))
}

impl Presence {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        // Nothing under this lock can panic half-way.
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `conn` of visit `visit` (in `clinic`) is open: held until it closes.
    /// Kept (and renewed) even if the store cannot be written now.
    pub async fn open(&self, store: &dyn Store, conn: u64, clinic: ClinicId, visit: VisitId) {
        let lease = Lease {
            clinic,
            visit,
            holder: format!("{}:{conn}", self.instance),
        };
        self.held().insert(conn, lease.clone());
        if let Err(e) = store.hold_presence(&[lease], until()).await {
            tracing::warn!(error = %e, "could not record a patient online; renewing later");
        }
    }

    /// Connection `conn` closed.
    pub async fn close(&self, store: &dyn Store, conn: u64) {
        let Some(lease) = self.held().remove(&conn) else {
            return;
        };
        if let Err(e) = store.release_presence(&[lease]).await {
            // It expires by itself within `LEASE`.
            tracing::warn!(error = %e, "could not record a patient offline");
        }
    }

    /// Renews every lease this instance holds until `stop`.
    pub async fn renew(self: Arc<Self>, store: Arc<dyn Store>, stop: CancellationToken) {
        let mut every = tokio::time::interval(RENEW_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            let leases: Vec<Lease> = self.held().values().cloned().collect();
            if let Err(e) = store.hold_presence(&leases, until()).await {
                tracing::warn!(error = %e, leases = leases.len(), "could not renew presence");
            }
        }
    }
}
