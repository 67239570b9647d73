//! Signalling's Prometheus metrics, served at `/metrics` (who may read them:
//! [`sfu::metrics::Access`]): the waiting rooms (patients waiting and in consultation per
//! clinic, read from the store at each scrape; the wait before admission; admissions),
//! websocket connections, commands and their errors by code, and the store (latency of
//! loads and commits, conflicts). A single-node `consult` adds its in-process SFU's
//! `sfu_…` metrics. Labels name clinics, kinds and codes, never a person or a visit.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use protocol::{Command, ErrorCode};

use crate::room::VisitState;
use crate::store::Store;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClinicLabel {
    pub clinic: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CommandLabel {
    command: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabel {
    code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What a store operation was, for its latency.
#[derive(Debug, Clone, Copy)]
pub enum StoreOp {
    Load,
    Commit,
}

/// Every signalling metric of this instance.
#[derive(Debug)]
pub struct Metrics {
    registry: RwLock<Registry>,
    waiting: Family<ClinicLabel, Gauge>,
    in_consultation: Family<ClinicLabel, Gauge>,
    wait: HistogramFamily<ClinicLabel>,
    admissions: Family<ClinicLabel, Counter>,
    connections: Family<KindLabel, Gauge>,
    commands: Family<CommandLabel, Counter>,
    errors: Family<CodeLabel, Counter>,
    store: HistogramFamily<OpLabel>,
    conflicts: Counter,
    /// The in-process SFU node, whose gauges are set at each scrape.
    node: std::sync::OnceLock<Arc<sfu::control::Node>>,
}

fn wait_buckets() -> Histogram {
    // Seconds: from half a minute to two hours.
    Histogram::new([
        30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0, 7200.0,
    ])
}

fn store_buckets() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    ])
}

impl Default for Metrics {
    fn default() -> Self {
        let m = Self {
            registry: RwLock::new(Registry::default()),
            waiting: Family::default(),
            in_consultation: Family::default(),
            wait: Family::new_with_constructor(wait_buckets),
            admissions: Family::default(),
            connections: Family::default(),
            commands: Family::default(),
            errors: Family::default(),
            store: Family::new_with_constructor(store_buckets),
            conflicts: Counter::default(),
            node: std::sync::OnceLock::new(),
        };
        // Series that exist from the start, at zero, for rates and alerts to see (the
        // error codes the alert rules watch among them); per-clinic ones appear at the
        // first scrape after the clinic does.
        for kind in ["patient", "staff"] {
            drop(m.connections.get_or_create(&KindLabel { kind }));
        }
        for command in Command::KINDS {
            drop(m.commands.get_or_create(&CommandLabel { command }));
        }
        for code in [ErrorCode::Internal, ErrorCode::Unavailable] {
            drop(m.errors.get_or_create(&CodeLabel {
                code: code_name(code),
            }));
        }
        for op in ["load", "commit"] {
            drop(m.store.get_or_create(&OpLabel { op }));
        }
        {
            let mut registry = m.registry.write().unwrap_or_else(|e| e.into_inner());
            let r = registry.sub_registry_with_prefix("consult");
            r.register(
                "patients_waiting",
                "Patients in the waiting room, per clinic",
                m.waiting.clone(),
            );
            r.register(
                "patients_in_consultation",
                "Patients in a consultation, per clinic",
                m.in_consultation.clone(),
            );
            r.register_with_unit(
                "wait",
                "Time from a patient's arrival to their admission, per clinic",
                Unit::Seconds,
                m.wait.clone(),
            );
            r.register(
                "admissions",
                "Patients admitted to a consultation, per clinic",
                m.admissions.clone(),
            );
            r.register(
                "websocket_connections",
                "Open websocket connections of this instance, by kind (patient, staff)",
                m.connections.clone(),
            );
            r.register(
                "commands",
                "Commands carried out or refused, by command",
                m.commands.clone(),
            );
            r.register(
                "command_errors",
                "Commands refused, by error code",
                m.errors.clone(),
            );
            r.register_with_unit(
                "store_operation",
                "Latency of the store's room loads and commits",
                Unit::Seconds,
                m.store.clone(),
            );
            r.register(
                "store_conflicts",
                "Commits that lost a race and were tried again",
                m.conflicts.clone(),
            );
        }
        m
    }
}

impl Metrics {
    /// Adds the in-process SFU node's metrics.
    pub fn add_node(&self, node: Arc<sfu::control::Node>) {
        let mut registry = self.registry.write().unwrap_or_else(|e| e.into_inner());
        node.engine().metrics().register(&mut registry);
        let _ = self.node.set(node);
    }

    /// An open websocket of `kind`, counted until the returned guard is dropped.
    pub fn connection(&self, kind: &'static str) -> ConnectionGuard {
        let gauge = self.connections.get_or_create(&KindLabel { kind }).clone();
        gauge.inc();
        ConnectionGuard(gauge)
    }

    /// A command carried out (`error`: None) or refused.
    pub fn command(&self, command: &'static str, error: Option<ErrorCode>) {
        self.commands.get_or_create(&CommandLabel { command }).inc();
        if let Some(code) = error {
            self.errors
                .get_or_create(&CodeLabel {
                    code: code_name(code),
                })
                .inc();
        }
    }

    /// A patient admitted after waiting `waited_ms`.
    pub fn admitted(&self, clinic: &str, waited_ms: u64) {
        let label = ClinicLabel {
            clinic: clinic.to_owned(),
        };
        self.admissions.get_or_create(&label).inc();
        #[allow(clippy::cast_precision_loss)]
        self.wait
            .get_or_create(&label)
            .observe(waited_ms as f64 / 1000.0);
    }

    /// A store operation that started at `since`.
    pub fn store_op(&self, op: StoreOp, since: Instant) {
        let op = match op {
            StoreOp::Load => "load",
            StoreOp::Commit => "commit",
        };
        self.store
            .get_or_create(&OpLabel { op })
            .observe(since.elapsed().as_secs_f64());
    }

    pub fn conflict(&self) {
        self.conflicts.inc();
    }

    /// The text exposition, with the rooms' gauges read from `store` now.
    pub async fn render(&self, store: &dyn Store) -> String {
        if let Ok(clinics) = store.clinics().await {
            for clinic in clinics {
                let Ok(room) = store.room(&clinic.id).await else {
                    continue;
                };
                let (mut waiting, mut consulting) = (0i64, 0i64);
                if let Some(room) = room {
                    for v in room.value.visit_states() {
                        match v {
                            VisitState::Waiting => waiting += 1,
                            VisitState::InConsultation(_) => consulting += 1,
                        }
                    }
                }
                let label = ClinicLabel {
                    clinic: clinic.id.to_string(),
                };
                self.waiting.get_or_create(&label).set(waiting);
                self.in_consultation.get_or_create(&label).set(consulting);
                drop(self.admissions.get_or_create(&label));
                drop(self.wait.get_or_create(&label));
            }
        }
        if let Some(node) = self.node.get() {
            sfu::server::update_gauges(node, node.engine().metrics());
        }
        let registry = self.registry.read().unwrap_or_else(|e| e.into_inner());
        sfu::metrics::render(&registry)
    }
}

/// An error code as on the wire (`not_found`).
fn code_name(code: ErrorCode) -> String {
    serde_json::to_value(code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Counts one open websocket connection while it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
