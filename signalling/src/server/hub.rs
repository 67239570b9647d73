//! Delivers published events to this instance's websocket connections.
//!
//! The hub reads the store's event feed (every instance sees every event) and hands each
//! event to the connections subscribed to its audience. The message is serialised once
//! and shared by every recipient. A connection that cannot keep up is cut off (its browser
//! reconnects and gets a fresh snapshot) rather than slowing everyone else.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use protocol::{ClinicId, PatientState, ServerMsg, VisitEndReason, VisitId};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::room::Audience;
use crate::store::{Feed, Published, Store};

/// The version of a delivery that is not a room event (presence): never skipped.
pub const NOT_A_ROOM_EVENT: u64 = u64::MAX;

/// How many deliveries may wait for one connection before it is cut off.
pub const CONNECTION_QUEUE: usize = 256;

/// One event, serialised, as queued for a connection.
#[derive(Debug)]
pub struct Delivery {
    pub clinic: ClinicId,
    pub version: u64,
    pub text: Utf8Bytes,
    /// It tells a patient their visit is over, and why: their connection closes after it.
    pub ends_visit: Option<VisitEndReason>,
}

#[derive(Debug, Default)]
pub struct Hub {
    routes: RwLock<Routes>,
    /// The online visits of each clinic that staff connected here watch, as last read
    /// from the store's presence leases. Every `online` this instance sends staff comes
    /// from here: a `visit_updated` is sent with it, and each change of it is sent as
    /// `visit_presence` while it is locked, so staff never see presence go backwards.
    online: RwLock<HashMap<ClinicId, BTreeSet<VisitId>>>,
    /// One reader of the store into `online` at a time.
    polling: tokio::sync::Mutex<()>,
}

/// One connection's queue, with the id it was subscribed under.
type Route = (u64, mpsc::Sender<Arc<Delivery>>);

#[derive(Debug, Default)]
struct Routes {
    next_id: u64,
    by_audience: HashMap<Audience, Vec<Route>>,
}

/// A connection's place in the hub; dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    hub: Arc<Hub>,
    id: u64,
    audiences: Vec<Audience>,
    pub rx: mpsc::Receiver<Arc<Delivery>>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.hub.remove(self.id, &self.audiences);
    }
}

impl Hub {
    pub fn subscribe(self: &Arc<Self>, audiences: Vec<Audience>) -> Subscription {
        let (tx, rx) = mpsc::channel(CONNECTION_QUEUE);
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.next_id += 1;
        let id = routes.next_id;
        for a in &audiences {
            routes
                .by_audience
                .entry(a.clone())
                .or_default()
                .push((id, tx.clone()));
        }
        Subscription {
            hub: self.clone(),
            id,
            audiences,
            rx,
        }
    }

    fn remove(&self, id: u64, audiences: &[Audience]) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        for a in audiences {
            if let Some(subs) = routes.by_audience.get_mut(a) {
                subs.retain(|(sid, _)| *sid != id);
                if subs.is_empty() {
                    routes.by_audience.remove(a);
                }
            }
        }
    }

    fn deliver(&self, p: &Published) {
        // Held until the event is queued: see `online`.
        let online = self.online.read().unwrap_or_else(|p| p.into_inner());
        let serialised = match &p.event.msg {
            ServerMsg::VisitUpdated { clinic, visit } => {
                let mut visit = visit.clone();
                visit.online = online.get(clinic).is_some_and(|s| s.contains(&visit.id));
                serde_json::to_string(&ServerMsg::VisitUpdated {
                    clinic: clinic.clone(),
                    visit,
                })
            }
            msg => serde_json::to_string(msg),
        };
        let text = match serialised {
            Ok(t) => Utf8Bytes::from(t),
            Err(e) => {
                tracing::error!(error = %e, "event did not serialise");
                return;
            }
        };
        let ends_visit = match p.event.msg {
            ServerMsg::PatientStatus {
                status: PatientState::Ended { reason },
            } => Some(reason),
            _ => None,
        };
        let delivery = Arc::new(Delivery {
            clinic: p.clinic.clone(),
            version: p.version,
            text,
            ends_visit,
        });
        self.send(&p.event.to, &delivery);
        drop(online);
    }

    /// Queues `delivery` for every connection of `to`; cuts off those that cannot keep up.
    fn send(&self, to: &Audience, delivery: &Arc<Delivery>) {
        let mut slow = Vec::new();
        {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            let Some(subs) = routes.by_audience.get(to) else {
                return;
            };
            for (id, tx) in subs {
                if tx.try_send(delivery.clone()).is_err() {
                    slow.push(*id);
                }
            }
        }
        if !slow.is_empty() {
            // Dropping the senders closes the connection's queue; it then closes its socket.
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            for subs in routes.by_audience.values_mut() {
                subs.retain(|(id, _)| !slow.contains(id));
            }
            tracing::info!(
                connections = slow.len(),
                "cut off connections that could not keep up"
            );
        }
    }

    /// The online visits of `clinic` as this hub tells its staff: read from the store the
    /// first time staff here watch it (subscribe first), then kept by
    /// [`Hub::poll_presence`].
    pub async fn online_in(&self, store: &dyn Store, clinic: &ClinicId) -> BTreeSet<VisitId> {
        let _one = self.polling.lock().await;
        if let Some(known) = self
            .online
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(clinic)
        {
            return known.clone();
        }
        match store.online(clinic, crate::service::now()).await {
            Ok(online) => {
                self.online
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(clinic.clone(), online.clone());
                online
            }
            Err(e) => {
                // Shown offline until the next poll reads it.
                tracing::warn!(error = %e, %clinic, "could not read presence");
                BTreeSet::new()
            }
        }
    }

    /// Reads the presence of every clinic that staff here watch and tells them what changed.
    pub async fn poll_presence(&self, store: &dyn Store) {
        let _one = self.polling.lock().await;
        let watched: Vec<ClinicId> = {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            routes
                .by_audience
                .keys()
                .filter_map(|a| match a {
                    Audience::ClinicStaff(c) => Some(c.clone()),
                    Audience::Visit(_) => None,
                })
                .collect()
        };
        self.online
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|c, _| watched.contains(c));
        for clinic in watched {
            let now_online = match store.online(&clinic, crate::service::now()).await {
                Ok(o) => o,
                Err(e) => {
                    tracing::warn!(error = %e, %clinic, "could not read presence");
                    continue;
                }
            };
            let mut online = self.online.write().unwrap_or_else(|p| p.into_inner());
            let known = online.entry(clinic.clone()).or_default();
            let online: Vec<VisitId> = now_online.difference(known).copied().collect();
            let offline: Vec<VisitId> = known.difference(&now_online).copied().collect();
            *known = now_online;
            if online.is_empty() && offline.is_empty() {
                continue;
            }
            // One message however many changed (a whole instance's patients may): a staff
            // connection's queue holds messages, not visits.
            let msg = ServerMsg::VisitPresence {
                clinic: clinic.clone(),
                online,
                offline,
            };
            let Ok(text) = serde_json::to_string(&msg) else {
                continue;
            };
            let delivery = Arc::new(Delivery {
                clinic: clinic.clone(),
                version: NOT_A_ROOM_EVENT,
                text: Utf8Bytes::from(text),
                ends_visit: None,
            });
            self.send(&Audience::ClinicStaff(clinic), &delivery);
        }
    }

    /// Polls presence every [`super::presence::POLL_EVERY`] until `stop`.
    pub async fn watch_presence(self: Arc<Self>, store: Arc<dyn Store>, stop: CancellationToken) {
        let mut every = tokio::time::interval(super::presence::POLL_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => self.poll_presence(&*store).await,
            }
        }
    }

    /// Cuts every connection off, so each reconnects and resynchronises.
    fn reset(&self) {
        let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
        routes.by_audience.clear();
    }

    /// Delivers the store's events until `stop`.
    pub async fn run(
        self: Arc<Self>,
        mut feed: broadcast::Receiver<Feed>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = feed.recv() => match ev {
                    Ok(Feed::Event(p)) => self.deliver(&p),
                    Ok(Feed::Resync) => {
                        tracing::warn!("event feed interrupted; resynchronising every connection");
                        self.reset();
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(missed = n, "event feed lagged; resynchronising every connection");
                        self.reset();
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                },
            }
        }
    }
}
