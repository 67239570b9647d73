//! The single-node store: live rooms in memory; clinics, staff and the audit log in SQLite.
//!
//! Every operation runs on tokio's blocking pool. A commit takes the one room lock, checks
//! versions, appends its audit entries to SQLite, swaps the rooms in, and publishes its
//! events before releasing the lock, so events leave in commit order.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use protocol::{
    AuditEntry, CallQualityView, ClinicId, InviteId, SessionId, StaffId, Timestamp, VisitId,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::broadcast;

use super::{
    Appended, Arrival, CALL_QUALITY_KEPT_MS, Clinic, Commit, EVENT_BUFFER, EXPIRED_INVITE_KEPT_MS,
    Feed, InviteClaim, InviteRecord, InviteState, Lease, Published, QualityReport, SessionRecord,
    StaffRecord, Store, StoreError, Versioned, group_call_quality,
};
use crate::room::ClinicRoom;

#[derive(Debug)]
pub struct LocalStore {
    inner: Arc<Inner>,
    events: broadcast::Sender<Feed>,
}

#[derive(Debug)]
struct Inner {
    db: Mutex<Connection>,
    rooms: Mutex<Rooms>,
    /// Presence leases: each held until its expiry (ms).
    presence: Mutex<HashMap<Lease, u64>>,
}

#[derive(Debug, Default)]
struct Rooms {
    rooms: HashMap<ClinicId, (u64, Arc<ClinicRoom>)>,
    index: HashMap<VisitId, ClinicId>,
}

const SCHEMA: &str = "
    PRAGMA journal_mode = WAL;
    PRAGMA synchronous = NORMAL;
    PRAGMA busy_timeout = 5000;
    CREATE TABLE IF NOT EXISTS clinics (id TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS staff (username TEXT PRIMARY KEY, record TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value BLOB NOT NULL);
    CREATE TABLE IF NOT EXISTS audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, entry TEXT NOT NULL);
    CREATE TABLE IF NOT EXISTS invites (
        id TEXT PRIMARY KEY, clinic TEXT NOT NULL, expires_at INTEGER NOT NULL,
        record TEXT NOT NULL, visit TEXT, revoked INTEGER NOT NULL DEFAULT 0);
    CREATE INDEX IF NOT EXISTS invites_by_clinic ON invites (clinic, expires_at);
    CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, staff TEXT NOT NULL, ends_at INTEGER NOT NULL, record TEXT NOT NULL);
    CREATE INDEX IF NOT EXISTS sessions_by_staff ON sessions (staff);
    CREATE TABLE IF NOT EXISTS call_quality (
        consultation TEXT NOT NULL, session TEXT NOT NULL, clinic TEXT NOT NULL,
        updated_at INTEGER NOT NULL, record TEXT NOT NULL,
        PRIMARY KEY (consultation, session));
    CREATE INDEX IF NOT EXISTS call_quality_by_clinic ON call_quality (clinic, updated_at);
";

fn db_err(e: rusqlite::Error) -> StoreError {
    StoreError::Unavailable(format!("sqlite: {e}"))
}

fn corrupt(e: serde_json::Error) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding these locks would be a bug in this file; the data under them
    // is still consistent (each critical section writes last), so carry on.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl LocalStore {
    /// Opens (creating if needed) the SQLite file at `path`; `None` keeps everything in
    /// memory, for tests.
    pub fn open(path: Option<&Path>) -> Result<Self, StoreError> {
        let db = match path {
            Some(p) => Connection::open(p),
            None => Connection::open_in_memory(),
        }
        .map_err(db_err)?;
        db.execute_batch(SCHEMA).map_err(db_err)?;
        let (events, _) = broadcast::channel(EVENT_BUFFER);
        Ok(Self {
            inner: Arc::new(Inner {
                db: Mutex::new(db),
                rooms: Mutex::new(Rooms::default()),
                presence: Mutex::new(HashMap::new()),
            }),
            events,
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || f(&inner))
            .await
            .map_err(|e| StoreError::Unavailable(format!("store task failed: {e}")))?
    }
}

fn append_audit(db: &Connection, entries: &[AuditEntry]) -> Result<(), StoreError> {
    let mut stmt = db
        .prepare_cached("INSERT INTO audit (entry) VALUES (?1)")
        .map_err(db_err)?;
    for e in entries {
        let json = serde_json::to_string(e).map_err(corrupt)?;
        stmt.execute(params![json]).map_err(db_err)?;
    }
    Ok(())
}

fn sql_ms(t: Timestamp) -> i64 {
    i64::try_from(t.0).unwrap_or(i64::MAX)
}

fn invite_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<(String, Option<String>, bool)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

fn invite_state(
    (record, visit, revoked): (String, Option<String>, bool),
) -> Result<InviteState, StoreError> {
    Ok(InviteState {
        record: serde_json::from_str(&record).map_err(corrupt)?,
        visit: visit
            .map(|v| {
                v.parse()
                    .map_err(|_| StoreError::Corrupt(format!("invite visit {v:?}")))
            })
            .transpose()?,
        revoked,
    })
}

/// Binds the claimed invite, or fails with [`StoreError::InviteTaken`] and writes nothing.
fn claim_invite(db: &Connection, claim: &InviteClaim) -> Result<(), StoreError> {
    let expected = claim.expected.map(|v| v.to_string());
    let changed = db
        .execute(
            "UPDATE invites SET visit = ?1 WHERE id = ?2 AND revoked = 0 AND visit IS ?3",
            params![claim.visit.to_string(), claim.invite.to_string(), expected],
        )
        .map_err(db_err)?;
    if changed == 1 {
        Ok(())
    } else {
        Err(StoreError::InviteTaken)
    }
}

fn get_json<T: serde::de::DeserializeOwned>(
    db: &Connection,
    sql: &str,
    key: &str,
) -> Result<Option<T>, StoreError> {
    let json: Option<String> = db
        .query_row(sql, params![key], |r| r.get(0))
        .optional()
        .map_err(db_err)?;
    json.map(|j| serde_json::from_str(&j).map_err(corrupt))
        .transpose()
}

fn all_json<T: serde::de::DeserializeOwned>(
    db: &Connection,
    sql: &str,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = db.prepare_cached(sql).map_err(db_err)?;
    let rows = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .map_err(db_err)?;
    rows.map(|r| {
        let j = r.map_err(db_err)?;
        serde_json::from_str(&j).map_err(corrupt)
    })
    .collect()
}

#[async_trait]
impl Store for LocalStore {
    async fn put_clinic(&self, clinic: &Clinic) -> Result<(), StoreError> {
        let json = serde_json::to_string(clinic).map_err(corrupt)?;
        let id = clinic.id.to_string();
        self.blocking(move |i| {
            lock(&i.db)
                .execute(
                    "INSERT INTO clinics (id, record) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET record = excluded.record",
                    params![id, json],
                )
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn clinic(&self, id: &ClinicId) -> Result<Option<Clinic>, StoreError> {
        let id = id.to_string();
        self.blocking(move |i| {
            get_json(
                &lock(&i.db),
                "SELECT record FROM clinics WHERE id = ?1",
                &id,
            )
        })
        .await
    }

    async fn clinics(&self) -> Result<Vec<Clinic>, StoreError> {
        self.blocking(|i| all_json(&lock(&i.db), "SELECT record FROM clinics ORDER BY id"))
            .await
    }

    async fn put_staff(&self, staff: &StaffRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(staff).map_err(corrupt)?;
        let id = staff.username.to_string();
        self.blocking(move |i| {
            lock(&i.db)
                .execute(
                    "INSERT INTO staff (username, record) VALUES (?1, ?2)
                     ON CONFLICT(username) DO UPDATE SET record = excluded.record",
                    params![id, json],
                )
                .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn staff(&self, id: &StaffId) -> Result<Option<StaffRecord>, StoreError> {
        let id = id.to_string();
        self.blocking(move |i| {
            get_json(
                &lock(&i.db),
                "SELECT record FROM staff WHERE username = ?1",
                &id,
            )
        })
        .await
    }

    async fn staff_list(&self) -> Result<Vec<StaffRecord>, StoreError> {
        self.blocking(|i| all_json(&lock(&i.db), "SELECT record FROM staff ORDER BY username"))
            .await
    }

    async fn room(
        &self,
        clinic: &ClinicId,
    ) -> Result<Option<Versioned<Arc<ClinicRoom>>>, StoreError> {
        // In memory: no need for the blocking pool.
        let rooms = lock(&self.inner.rooms);
        Ok(rooms.rooms.get(clinic).map(|(version, room)| Versioned {
            version: *version,
            value: Arc::clone(room),
        }))
    }

    async fn locate(&self, visit: VisitId) -> Result<Option<ClinicId>, StoreError> {
        Ok(lock(&self.inner.rooms).index.get(&visit).cloned())
    }

    async fn commit(&self, commit: Commit) -> Result<(), StoreError> {
        let events = self.events.clone();
        self.blocking(move |i| {
            let mut rooms = lock(&i.rooms);
            for w in &commit.rooms {
                let current = rooms.rooms.get(&w.room.clinic).map_or(0, |(v, _)| *v);
                if current != w.expected {
                    return Err(StoreError::Conflict);
                }
            }
            {
                let db = lock(&i.db);
                if let Some(claim) = &commit.claim {
                    claim_invite(&db, claim)?;
                }
                if !commit.audit.is_empty() {
                    append_audit(&db, &commit.audit)?;
                }
            }
            for (visit, clinic) in commit.index {
                match clinic {
                    Some(c) => rooms.index.insert(visit, c),
                    None => rooms.index.remove(&visit),
                };
            }
            for w in commit.rooms {
                let version = w.expected + 1;
                let clinic = w.room.clinic.clone();
                for event in w.events {
                    // No subscriber is not an error: nobody is connected.
                    let _ = events.send(Feed::Event(Arc::new(Published {
                        clinic: clinic.clone(),
                        version,
                        event,
                    })));
                }
                rooms.rooms.insert(clinic, (version, Arc::new(w.room)));
            }
            Ok(())
        })
        .await
    }

    async fn append_arrival(&self, arrival: Arrival) -> Result<Appended, StoreError> {
        let events = self.events.clone();
        self.blocking(move |i| {
            let mut rooms = lock(&i.rooms);
            let Some((version, _)) = rooms.rooms.get(&arrival.clinic) else {
                return Ok(Appended::NoRoom);
            };
            let version = *version + 1;
            {
                let db = lock(&i.db);
                if let Some(claim) = &arrival.claim {
                    claim_invite(&db, claim)?;
                }
                append_audit(&db, &arrival.audit)?;
            }
            let id = arrival.visit.id;
            rooms.index.insert(id, arrival.clinic.clone());
            if let Some((v, room)) = rooms.rooms.get_mut(&arrival.clinic) {
                *v = version;
                // A copy only while a reader still holds the room.
                Arc::make_mut(room).append(arrival.visit);
            }
            for event in arrival.events {
                let _ = events.send(Feed::Event(Arc::new(Published {
                    clinic: arrival.clinic.clone(),
                    version,
                    event,
                })));
            }
            Ok(Appended::Appended)
        })
        .await
    }

    async fn hold_presence(&self, leases: &[Lease], until: Timestamp) -> Result<(), StoreError> {
        let mut held = lock(&self.inner.presence);
        held.retain(|_, expiry| *expiry > crate::service::now().0);
        for l in leases {
            held.insert(l.clone(), until.0);
        }
        Ok(())
    }

    async fn release_presence(&self, leases: &[Lease]) -> Result<(), StoreError> {
        let mut held = lock(&self.inner.presence);
        for l in leases {
            held.remove(l);
        }
        Ok(())
    }

    async fn online(
        &self,
        clinic: &ClinicId,
        now: Timestamp,
    ) -> Result<BTreeSet<VisitId>, StoreError> {
        Ok(lock(&self.inner.presence)
            .iter()
            .filter(|(l, expiry)| l.clinic == *clinic && **expiry > now.0)
            .map(|(l, _)| l.visit)
            .collect())
    }

    fn subscribe(&self) -> broadcast::Receiver<Feed> {
        self.events.subscribe()
    }

    async fn put_session(&self, session: &SessionRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(session).map_err(corrupt)?;
        let session = session.clone();
        self.blocking(move |i| {
            let db = lock(&i.db);
            db.execute(
                "DELETE FROM sessions WHERE ends_at < ?1",
                params![sql_ms(session.started_at)],
            )
            .map_err(db_err)?;
            db.execute(
                "INSERT OR REPLACE INTO sessions (id, staff, ends_at, record) VALUES (?1, ?2, ?3, ?4)",
                params![
                    session.id.to_string(),
                    session.staff.as_str(),
                    sql_ms(session.ends_at),
                    json
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn session(&self, id: SessionId) -> Result<Option<SessionRecord>, StoreError> {
        let id = id.to_string();
        self.blocking(move |i| {
            get_json(
                &lock(&i.db),
                "SELECT record FROM sessions WHERE id = ?1",
                &id,
            )
        })
        .await
    }

    async fn end_session(&self, id: SessionId) -> Result<bool, StoreError> {
        self.blocking(move |i| {
            let n = lock(&i.db)
                .execute(
                    "DELETE FROM sessions WHERE id = ?1",
                    params![id.to_string()],
                )
                .map_err(db_err)?;
            Ok(n == 1)
        })
        .await
    }

    async fn end_sessions_of(&self, staff: &StaffId) -> Result<usize, StoreError> {
        let staff = staff.to_string();
        self.blocking(move |i| {
            lock(&i.db)
                .execute("DELETE FROM sessions WHERE staff = ?1", params![staff])
                .map_err(db_err)
        })
        .await
    }

    async fn sessions(&self, now: Timestamp) -> Result<Vec<SessionRecord>, StoreError> {
        self.blocking(move |i| {
            let db = lock(&i.db);
            let mut stmt = db
                .prepare_cached("SELECT record FROM sessions WHERE ends_at > ?1 ORDER BY rowid")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![sql_ms(now)], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|r| serde_json::from_str(&r.map_err(db_err)?).map_err(corrupt))
                .collect()
        })
        .await
    }

    async fn put_invite(&self, invite: &InviteRecord) -> Result<(), StoreError> {
        let json = serde_json::to_string(invite).map_err(corrupt)?;
        let invite = invite.clone();
        self.blocking(move |i| {
            let db = lock(&i.db);
            let forget_before = invite.issued_at.0.saturating_sub(EXPIRED_INVITE_KEPT_MS);
            db.execute(
                "DELETE FROM invites WHERE expires_at < ?1",
                params![sql_ms(Timestamp(forget_before))],
            )
            .map_err(db_err)?;
            db.execute(
                "INSERT INTO invites (id, clinic, expires_at, record) VALUES (?1, ?2, ?3, ?4)",
                params![
                    invite.id.to_string(),
                    invite.clinic.as_str(),
                    sql_ms(invite.expires_at),
                    json
                ],
            )
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn invite(&self, id: InviteId) -> Result<Option<InviteState>, StoreError> {
        self.blocking(move |i| {
            let row = lock(&i.db)
                .query_row(
                    "SELECT record, visit, revoked FROM invites WHERE id = ?1",
                    params![id.to_string()],
                    invite_row,
                )
                .optional()
                .map_err(db_err)?;
            row.map(invite_state).transpose()
        })
        .await
    }

    async fn invites(
        &self,
        clinic: &ClinicId,
        now: Timestamp,
    ) -> Result<Vec<InviteState>, StoreError> {
        let clinic = clinic.to_string();
        self.blocking(move |i| {
            let db = lock(&i.db);
            let mut stmt = db
                .prepare_cached(
                    "SELECT record, visit, revoked FROM invites WHERE clinic = ?1 AND expires_at > ?2 ORDER BY rowid",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![clinic, sql_ms(now)], invite_row)
                .map_err(db_err)?;
            rows.map(|r| invite_state(r.map_err(db_err)?)).collect()
        })
        .await
    }

    async fn revoke_invite(&self, id: InviteId) -> Result<bool, StoreError> {
        self.blocking(move |i| {
            let changed = lock(&i.db)
                .execute(
                    "UPDATE invites SET revoked = 1 WHERE id = ?1",
                    params![id.to_string()],
                )
                .map_err(db_err)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn append_audit(&self, entries: &[AuditEntry]) -> Result<(), StoreError> {
        let entries = entries.to_vec();
        self.blocking(move |i| append_audit(&lock(&i.db), &entries))
            .await
    }

    async fn audit_tail(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.blocking(move |i| {
            let db = lock(&i.db);
            let mut stmt = db
                .prepare_cached("SELECT entry FROM (SELECT seq, entry FROM audit ORDER BY seq DESC LIMIT ?1) ORDER BY seq")
                .map_err(db_err)?;
            let rows = stmt
                .query_map(params![limit], |r| r.get::<_, String>(0))
                .map_err(db_err)?;
            rows.map(|r| serde_json::from_str(&r.map_err(db_err)?).map_err(corrupt))
                .collect()
        })
        .await
    }

    async fn token_secret(&self, candidate: &[u8]) -> Result<Vec<u8>, StoreError> {
        let candidate = candidate.to_vec();
        self.blocking(move |i| {
            let db = lock(&i.db);
            db.execute(
                "INSERT INTO settings (key, value) VALUES ('token_secret', ?1) ON CONFLICT(key) DO NOTHING",
                params![candidate],
            )
            .map_err(db_err)?;
            db.query_row("SELECT value FROM settings WHERE key = 'token_secret'", [], |r| r.get(0))
                .map_err(db_err)
        })
        .await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.blocking(|i| {
            lock(&i.db)
                .query_row("SELECT 1", [], |_| Ok(()))
                .map_err(db_err)
        })
        .await
    }

    async fn put_call_quality(&self, report: &QualityReport) -> Result<(), StoreError> {
        let json = serde_json::to_string(report).map_err(corrupt)?;
        let report = report.clone();
        self.blocking(move |i| {
            let db = lock(&i.db);
            let forget_before = report.updated_at.0.saturating_sub(CALL_QUALITY_KEPT_MS);
            db.prepare_cached("DELETE FROM call_quality WHERE updated_at < ?1")
                .and_then(|mut s| s.execute(params![sql_ms(Timestamp(forget_before))]))
                .map_err(db_err)?;
            db.prepare_cached(
                "INSERT INTO call_quality (consultation, session, clinic, updated_at, record) \
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (consultation, session) \
                 DO UPDATE SET updated_at = excluded.updated_at, record = excluded.record",
            )
            .and_then(|mut s| {
                s.execute(params![
                    report.consultation.to_string(),
                    report.session.to_string(),
                    report.clinic.as_str(),
                    sql_ms(report.updated_at),
                    json
                ])
            })
            .map_err(db_err)?;
            Ok(())
        })
        .await
    }

    async fn call_quality(
        &self,
        clinic: &ClinicId,
        since: Timestamp,
        limit: usize,
    ) -> Result<Vec<CallQualityView>, StoreError> {
        let clinic = clinic.to_string();
        self.blocking(move |i| {
            let db = lock(&i.db);
            // Every report of the calls reported last: a call's sessions that reported
            // before `since` are still part of it.
            let mut stmt = db
                .prepare_cached(
                    "SELECT record FROM call_quality WHERE consultation IN ( \
                       SELECT consultation FROM call_quality WHERE clinic = ?1 \
                       GROUP BY consultation HAVING MAX(updated_at) >= ?2 \
                       ORDER BY MAX(updated_at) DESC LIMIT ?3)",
                )
                .map_err(db_err)?;
            let rows = stmt
                .query_map(
                    params![
                        clinic,
                        sql_ms(since),
                        i64::try_from(limit).unwrap_or(i64::MAX)
                    ],
                    |r| r.get::<_, String>(0),
                )
                .map_err(db_err)?;
            let reports = rows
                .map(|r| serde_json::from_str(&r.map_err(db_err)?).map_err(corrupt))
                .collect::<Result<Vec<QualityReport>, StoreError>>()?;
            Ok(group_call_quality(reports, limit))
        })
        .await
    }

    async fn media_nodes(&self) -> Result<Vec<protocol::control::NodeRecord>, StoreError> {
        Ok(Vec::new())
    }
}
