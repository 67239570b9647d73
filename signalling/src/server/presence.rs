//! Presence: which patients have a page open, as leases in the store, outside the room.
//!
//! Each open patient websocket holds one lease (its clinic, its visit, and this instance's
//! name with the connection's id), written when it opens and removed when it closes. The
//! connection owns its lease as a [`Held`]: whatever way the connection ends (closed, a
//! failed send, its task dropped), the lease leaves this instance's set with it, so it is
//! never renewed for a connection that is gone. One
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
    /// Leases of connections that ended without [`Presence::close`] (their [`Held`]
    /// dropped): released by the next renewal.
    orphans: Mutex<Vec<Lease>>,
}

impl Default for Presence {
    fn default() -> Self {
        Self {
            instance: uuid::Uuid::new_v4().simple().to_string(),
            held: Mutex::new(HashMap::new()),
            orphans: Mutex::new(Vec::new()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing under these locks can panic half-way.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn until() -> Timestamp {
    let lease = u64::try_from(LEASE.as_millis()).unwrap_or(u64::MAX);
    Timestamp(now().0.saturating_add(lease))
}

impl Presence {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Lease>> {
        lock(&self.held)
    }

    /// Connection `conn` of visit `visit` (in `clinic`) is open: held as long as the
    /// returned [`Held`] lives. Kept (and renewed) even if the store cannot be written now.
    pub async fn open(
        self: &Arc<Self>,
        store: &dyn Store,
        conn: u64,
        clinic: ClinicId,
        visit: VisitId,
    ) -> Held {
        let lease = Lease {
            clinic,
            visit,
            holder: format!("{}:{conn}", self.instance),
        };
        self.held().insert(conn, lease.clone());
        let held = Held {
            presence: Arc::clone(self),
            conn,
        };
        if let Err(e) = store.hold_presence(&[lease], until()).await {
            tracing::warn!(error = %e, "could not record a patient online; renewing later");
        }
        held
    }

    /// The connection of `held` closed: its lease is released now (not left to expire).
    pub async fn close(&self, store: &dyn Store, held: Held) {
        let Some(lease) = self.held().remove(&held.conn) else {
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
            self.renew_once(&*store).await;
        }
    }

    /// Renews the leases held now, then releases those whose connection ended meanwhile
    /// (a release that reached the store before this renewal would otherwise be undone
    /// by it, and the patient shown online for another [`LEASE`]) and the orphans.
    async fn renew_once(&self, store: &dyn Store) {
        let leases = self.snapshot();
        let renewing: Vec<Lease> = leases.iter().map(|(_, l)| l.clone()).collect();
        if let Err(e) = store.hold_presence(&renewing, until()).await {
            tracing::warn!(error = %e, leases = leases.len(), "could not renew presence");
        }
        self.release_ended(store, leases).await;
    }

    /// The leases held now, by connection.
    fn snapshot(&self) -> Vec<(u64, Lease)> {
        self.held()
            .iter()
            .map(|(conn, lease)| (*conn, lease.clone()))
            .collect()
    }

    /// After a renewal of `leases`: releases those no longer held, and the orphans.
    async fn release_ended(&self, store: &dyn Store, leases: Vec<(u64, Lease)>) {
        let mut ended: Vec<Lease> = {
            let held = self.held();
            leases
                .into_iter()
                .filter(|(conn, _)| !held.contains_key(conn))
                .map(|(_, lease)| lease)
                .collect()
        };
        ended.append(&mut lock(&self.orphans));
        if !ended.is_empty() {
            if let Err(e) = store.release_presence(&ended).await {
                // They expire by themselves within `LEASE`.
                tracing::warn!(error = %e, leases = ended.len(), "could not release presence");
            }
        }
    }
}

/// One connection's lease, owned by the connection: dropped, it leaves this instance's
/// set and is released by the next renewal; [`Presence::close`] releases it at once.
#[derive(Debug)]
pub struct Held {
    presence: Arc<Presence>,
    conn: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        let lease = self.presence.held().remove(&self.conn);
        if let Some(lease) = lease {
            lock(&self.presence.orphans).push(lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::local::LocalStore;

    fn clinic() -> ClinicId {
        ClinicId::parse("derm").expect("a valid id")
    }

    #[tokio::test]
    async fn a_lease_lives_exactly_as_long_as_its_connection() {
        let store = LocalStore::open(None).expect("an in-memory store");
        let presence = Arc::new(Presence::default());
        let (a, b) = (VisitId::random(), VisitId::random());
        let online = || async { store.online(&clinic(), now()).await.expect("online") };

        let held_a = presence.open(&store, 1, clinic(), a).await;
        let held_b = presence.open(&store, 2, clinic(), b).await;
        assert_eq!(online().await, [a, b].into_iter().collect());

        // Closed: released in the store at once.
        presence.close(&store, held_a).await;
        assert_eq!(online().await, [b].into_iter().collect());

        // Ended any other way (a failed send, its task dropped): not renewed, and
        // released by the next renewal.
        drop(held_b);
        assert_eq!(online().await, [b].into_iter().collect());
        presence.renew_once(&store).await;
        assert!(online().await.is_empty());
        assert!(presence.held().is_empty());
        assert!(lock(&presence.orphans).is_empty());

        // A renewal on its way when a connection closes does not bring it back.
        // (renew_once's steps, with the close between its read and its write.)
        let c = VisitId::random();
        let held_c = presence.open(&store, 3, clinic(), c).await;
        let snapshot = presence.snapshot();
        presence.close(&store, held_c).await;
        let renewing: Vec<Lease> = snapshot.iter().map(|(_, l)| l.clone()).collect();
        store.hold_presence(&renewing, until()).await.expect("hold");
        assert_eq!(
            online().await,
            [c].into_iter().collect(),
            "the renewal wrote it back"
        );
        presence.release_ended(&store, snapshot).await;
        assert!(online().await.is_empty(), "and released it once written");
    }
}
