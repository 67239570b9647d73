//! Delivers published events to this instance's websocket connections.
//!
//! The hub reads the store's event feed (every instance sees every event) and hands each
//! event to the connections subscribed to its audience. The message is serialised once
//! and shared by every recipient. A connection that cannot keep up is cut off (its browser
//! reconnects and gets a fresh snapshot) rather than slowing everyone else.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use axum::extract::ws::Utf8Bytes;
use protocol::{ClinicId, PatientState, ServerMsg, VisitEndReason};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::room::Audience;
use crate::store::{Feed, Published};

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
        let text = match serde_json::to_string(&p.event.msg) {
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
        let mut slow = Vec::new();
        {
            let routes = self.routes.read().unwrap_or_else(|p| p.into_inner());
            let Some(subs) = routes.by_audience.get(&p.event.to) else {
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
