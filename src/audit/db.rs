//! PostgreSQL through diesel-async: the pool, the embedded migrations, the
//! batch insert and the history query. Nothing here knows Redis or tonic.
//! A batch is stored in several statements, on up to `PARALLEL` connections
//! at once, and not in one transaction: each statement is idempotent, so a
//! batch that failed partway is simply stored again. A statement Postgres
//! answered with an error is `Refused` (the data, not the connection);
//! events refused on their own go to `audit_dead_letters` ([`dead_letter`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::upsert::excluded;
use diesel_async::pooled_connection::bb8::Pool;
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::{AsyncMigrationHarness, AsyncPgConnection, RunQueryDsl};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use super::connect::PgTarget;
use super::schema::{audit_dead_letters, session_events, sessions};
use crate::engine::{Event, EventKind, Micros, Session};
use crate::store::AuditRecord;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// Rows per INSERT: 12 columns x 4000 rows stays well under Postgres' 65,535 binds.
const ROWS_PER_STATEMENT: usize = 4_000;

pub type PgPool = Pool<AsyncPgConnection>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("stored audit data is unreadable: {0}")]
    Corrupt(String),
    /// Postgres received the statement and refused it: something in the rows
    /// (retrying the same rows fails the same way).
    #[error("Postgres refused the rows: {0}")]
    Refused(String),
}

/// A failed write: `Refused` when Postgres answered with an error about the
/// statement, `Unavailable` when it could not be reached or the connection
/// broke (or the transaction lost a serialization race: worth retrying).
fn write_failed(e: diesel::result::Error) -> DbError {
    use diesel::result::{DatabaseErrorKind as K, Error};
    match e {
        Error::DatabaseError(
            K::UnableToSendCommand | K::ClosedConnection | K::SerializationFailure,
            _,
        ) => unavailable(e),
        Error::DatabaseError(_, info) => DbError::Refused(info.message().to_owned()),
        other => unavailable(other),
    }
}

fn unavailable(e: impl std::fmt::Display) -> DbError {
    DbError::Unavailable(e.to_string())
}

/// A pool that connects lazily: building it never fails on an unreachable
/// database. Every connection is `target`'s ([`PgTarget::connect`]: its
/// `sslmode`).
pub fn pool(target: PgTarget, size: u32) -> PgPool {
    let target = Arc::new(target);
    let mut config = ManagerConfig::default();
    config.custom_setup = Box::new(move |_url| {
        let target = target.clone();
        Box::pin(async move { target.connect().await })
    });
    // The URL is unused (the setup above connects); it stays out of memory dumps.
    let manager = AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config("", config);
    Pool::builder()
        .max_size(size)
        .connection_timeout(Duration::from_secs(2))
        .test_on_check_out(true)
        .build_unchecked(manager)
}

/// Applies the embedded migrations; returns the versions applied now.
/// Needs the multi-thread runtime (the harness uses `block_in_place`).
pub async fn migrate(pool: &PgPool) -> Result<Vec<String>, DbError> {
    let conn = pool.get_owned().await.map_err(unavailable)?;
    let mut harness = AsyncMigrationHarness::new(conn);
    let applied = harness
        .run_pending_migrations(MIGRATIONS)
        .map_err(unavailable)?
        .iter()
        .map(|v| v.to_string())
        .collect();
    drop(harness.into_inner());
    Ok(applied)
}

fn at(micros: Micros) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(micros).unwrap_or_default()
}

#[derive(Insertable)]
#[diesel(table_name = session_events)]
struct NewEventRow<'a> {
    tenant: &'a str,
    session_id: &'a str,
    epoch: &'a str,
    version: i64,
    event_type: &'a str,
    participant_id: Option<&'a str>,
    occurred_at: DateTime<Utc>,
    snapshot: serde_json::Value,
    lag_asked_us: Option<i64>,
    lag_given_us: Option<i64>,
}

#[derive(Insertable)]
#[diesel(table_name = sessions)]
struct SessionRow<'a> {
    tenant: &'a str,
    session_id: &'a str,
    epoch: &'a str,
    mode: &'a str,
    status: &'a str,
    last_version: i64,
    config: serde_json::Value,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    deleted_at: Option<DateTime<Utc>>,
}

/// The configuration part of a session, for the `sessions` row.
fn config_of(s: &Session) -> serde_json::Value {
    serde_json::json!({
        "participants": s.participants.iter().map(|p| serde_json::json!({
            "participant_id": p.id, "index": p.index, "group_id": p.group, "initial_us": p.clock.initial,
        })).collect::<Vec<_>>(),
        "groups": s.groups.iter().map(|g| serde_json::json!({"group_id": g.id, "initial_us": g.clock.initial})).collect::<Vec<_>>(),
        "time_control": s.time_control,
        "cycle_time_us": s.cycle_time,
        "global_time_us": s.global_time,
        "max_time_us": s.max_time,
        "timeout_action": s.timeout_action,
        "lag_compensation": s.lag_compensation,
        "start_timeout_us": s.start_timeout,
        "first_move_timeout_us": s.first_move_timeout,
        "metadata": s.metadata,
    })
}

/// Event rows per INSERT; chunks go to Postgres on up to `PARALLEL` connections at once.
const CHUNK: usize = 1_000;
const PARALLEL: usize = 4;

/// Stores a batch: every event (a version already present is skipped, so a
/// replayed batch is harmless), then the latest state of each session it
/// touches. Returns the number of new event rows. Not one transaction, and
/// it need not be: the caller acknowledges the batch only after all of it
/// succeeded, and a retry of any part is idempotent.
pub async fn insert_batch(pool: &PgPool, records: &[AuditRecord]) -> Result<usize, DbError> {
    let mut inserted = 0;
    for wave in records.chunks(CHUNK * PARALLEL) {
        let results = futures_util::future::join_all(
            wave.chunks(CHUNK).map(|chunk| insert_events(pool, chunk)),
        )
        .await;
        for r in results {
            inserted += r?;
        }
    }
    upsert_sessions(pool, records).await?;
    Ok(inserted)
}

async fn insert_events(pool: &PgPool, records: &[AuditRecord]) -> Result<usize, DbError> {
    let snapshots: Vec<serde_json::Value> = records
        .iter()
        .map(|r| {
            serde_json::to_value(&r.event.session).map_err(|e| DbError::Refused(e.to_string()))
        })
        .collect::<Result<_, _>>()?;
    let rows: Vec<NewEventRow<'_>> = records
        .iter()
        .zip(snapshots)
        .map(|(r, snapshot)| NewEventRow {
            tenant: r.tenant.as_str(),
            session_id: r.event.session.id.as_str(),
            epoch: &r.event.session.epoch,
            version: r.event.version as i64,
            event_type: r.event.kind.name(),
            participant_id: r.event.participant.as_ref().map(|p| p.as_str()),
            occurred_at: at(r.event.at),
            snapshot,
            lag_asked_us: r.event.lag.map(|l| l.asked),
            lag_given_us: r.event.lag.map(|l| l.given),
        })
        .collect();
    let mut conn = pool.get().await.map_err(unavailable)?;
    diesel::insert_into(session_events::table)
        .values(&rows)
        .on_conflict_do_nothing()
        .execute(&mut conn)
        .await
        .map_err(write_failed)
}

/// One upsert row per session id, newest state wins; never goes back.
async fn upsert_sessions(pool: &PgPool, records: &[AuditRecord]) -> Result<(), DbError> {
    // Postgres refuses to update one row twice in a statement: keep the newest event per id.
    let mut latest: std::collections::HashMap<(&str, &str), &AuditRecord> =
        std::collections::HashMap::new();
    for r in records {
        let k = (r.tenant.as_str(), r.event.session.id.as_str());
        let newer = latest.get(&k).is_none_or(|cur| {
            (r.event.session.created_at, r.event.version)
                > (cur.event.session.created_at, cur.event.version)
        });
        if newer {
            latest.insert(k, r);
        }
    }
    let mut newest: Vec<&AuditRecord> = latest.into_values().collect();
    // One lock order for every writer: concurrent upserts never deadlock.
    newest.sort_by(|a, b| {
        (a.tenant.as_str(), a.event.session.id.as_str())
            .cmp(&(b.tenant.as_str(), b.event.session.id.as_str()))
    });
    let session_rows: Vec<SessionRow<'_>> = newest
        .iter()
        .map(|r| {
            let s = &r.event.session;
            SessionRow {
                tenant: r.tenant.as_str(),
                session_id: s.id.as_str(),
                epoch: &s.epoch,
                mode: s.mode.name(),
                status: s.status.name(),
                last_version: r.event.version as i64,
                config: config_of(s),
                created_at: at(s.created_at),
                started_at: s.started_at.map(at),
                ended_at: s.ended_at.map(at),
                updated_at: at(r.event.at),
                deleted_at: (r.event.kind == EventKind::Deleted).then(|| at(r.event.at)),
            }
        })
        .collect();
    let mut conn = pool.get().await.map_err(unavailable)?;
    for chunk in session_rows.chunks(ROWS_PER_STATEMENT / 2) {
        // `filter` on an upsert is the WHERE of its DO UPDATE.
        use diesel::query_dsl::methods::FilterDsl;
        use sessions::dsl as s;
        diesel::insert_into(sessions::table)
            .values(chunk)
            .on_conflict((s::tenant, s::session_id))
            .do_update()
            .set((
                s::epoch.eq(excluded(s::epoch)),
                s::mode.eq(excluded(s::mode)),
                s::status.eq(excluded(s::status)),
                s::last_version.eq(excluded(s::last_version)),
                s::config.eq(excluded(s::config)),
                s::created_at.eq(excluded(s::created_at)),
                s::started_at.eq(excluded(s::started_at)),
                s::ended_at.eq(excluded(s::ended_at)),
                s::updated_at.eq(excluded(s::updated_at)),
                s::deleted_at.eq(excluded(s::deleted_at)),
            ))
            // Batches from several replicas may land out of order: never go back.
            .filter(
                s::created_at.lt(excluded(s::created_at)).or(s::epoch
                    .eq(excluded(s::epoch))
                    .and(s::last_version.lt(excluded(s::last_version)))),
            )
            .execute(&mut conn)
            .await
            .map_err(write_failed)?;
    }
    Ok(())
}

/// Whether Postgres answers at all (`SELECT 1`).
pub async fn ping(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.get().await.map_err(unavailable)?;
    diesel::sql_query("SELECT 1")
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

#[derive(Insertable)]
#[diesel(table_name = audit_dead_letters)]
struct DeadLetterRow<'a> {
    tenant: &'a str,
    session_id: &'a str,
    epoch: &'a str,
    version: i64,
    reason: &'a str,
    event: Vec<u8>,
}

/// Stores events Postgres refused, with its reason, as the bytes they were
/// committed with.
pub async fn dead_letter(
    pool: &PgPool,
    records: &[AuditRecord],
    reason: &str,
) -> Result<(), DbError> {
    let rows: Vec<DeadLetterRow<'_>> = records
        .iter()
        .map(|r| DeadLetterRow {
            tenant: r.tenant.as_str(),
            session_id: r.event.session.id.as_str(),
            epoch: &r.event.session.epoch,
            version: r.event.version as i64,
            reason,
            event: crate::wire::encode(&*r.event),
        })
        .collect();
    let mut conn = pool.get().await.map_err(unavailable)?;
    diesel::insert_into(audit_dead_letters::table)
        .values(&rows)
        .execute(&mut conn)
        .await
        .map(|_| ())
        .map_err(write_failed)
}

/// One stored event, as it was committed.
pub struct StoredEvent {
    pub event: Event,
    pub epoch: String,
}

#[derive(Queryable)]
struct EventRow {
    epoch: String,
    version: i64,
    event_type: String,
    participant_id: Option<String>,
    occurred_at: DateTime<Utc>,
    snapshot: serde_json::Value,
    lag_asked_us: Option<i64>,
    lag_given_us: Option<i64>,
}

/// The session id's latest epoch (the one that exists now, or existed last).
pub async fn latest_epoch(
    pool: &PgPool,
    tenant: &str,
    session_id: &str,
) -> Result<Option<String>, DbError> {
    use session_events::dsl as e;
    use sessions::dsl as s;
    let mut conn = pool.get().await.map_err(unavailable)?;
    let row = s::sessions
        .filter(s::tenant.eq(tenant).and(s::session_id.eq(session_id)))
        .select(s::epoch)
        .first::<String>(&mut conn)
        .await
        .optional()
        .map_err(unavailable)?;
    if row.is_some() {
        return Ok(row);
    }
    // A batch writes its events before the sessions rows (insert_batch): for
    // a moment a session has events and no row. Its newest event says the
    // epoch then, so that the history is never NOT_FOUND while it exists.
    e::session_events
        .filter(e::tenant.eq(tenant).and(e::session_id.eq(session_id)))
        .order((e::occurred_at.desc(), e::version.desc()))
        .select(e::epoch)
        .first::<String>(&mut conn)
        .await
        .optional()
        .map_err(unavailable)
}

/// Events of one epoch of a session after `after`, in version order: at most
/// `limit`, and no more than fit in `max_bytes` of snapshot JSON (but at
/// least one). Returns them and whether more events follow.
pub async fn events_page(
    pool: &PgPool,
    tenant: &str,
    session_id: &str,
    epoch: &str,
    after: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<StoredEvent>, bool), DbError> {
    use session_events::dsl as e;
    let after = after.min(i64::MAX as u64) as i64;
    let mut conn = pool.get().await.map_err(unavailable)?;
    // First the sizes (one more row than asked: whether a next page exists),
    // so a page of large snapshots is never loaded whole only to be cut.
    let sizes: Vec<Option<i32>> = e::session_events
        .filter(e::tenant.eq(tenant))
        .filter(e::session_id.eq(session_id))
        .filter(e::epoch.eq(epoch))
        .filter(e::version.gt(after))
        .order(e::version.asc())
        .limit(limit as i64 + 1)
        .select(diesel::dsl::sql::<
            diesel::sql_types::Nullable<diesel::sql_types::Integer>,
        >("octet_length(snapshot::text)"))
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
    let mut take = 0;
    let mut bytes = 0usize;
    for size in sizes.iter().take(limit) {
        bytes += size.unwrap_or(0).max(0) as usize;
        if take > 0 && bytes > max_bytes {
            break;
        }
        take += 1;
    }
    let more = sizes.len() > take;
    let rows: Vec<EventRow> = e::session_events
        .filter(e::tenant.eq(tenant))
        .filter(e::session_id.eq(session_id))
        .filter(e::epoch.eq(epoch))
        .filter(e::version.gt(after))
        .order(e::version.asc())
        .limit(take as i64)
        .select((
            e::epoch,
            e::version,
            e::event_type,
            e::participant_id,
            e::occurred_at,
            e::snapshot,
            e::lag_asked_us,
            e::lag_given_us,
        ))
        .load(&mut conn)
        .await
        .map_err(unavailable)?;
    let events = rows
        .into_iter()
        .map(|r| {
            let session: Session =
                serde_json::from_value(r.snapshot).map_err(|e| DbError::Corrupt(e.to_string()))?;
            let kind = EventKind::from_name(&r.event_type)
                .ok_or_else(|| DbError::Corrupt(r.event_type.clone()))?;
            let participant = r
                .participant_id
                .map(|p: String| crate::engine::ParticipantId::parse("participant_id", &p))
                .transpose()
                .map_err(|e| DbError::Corrupt(e.to_string()))?;
            Ok(StoredEvent {
                epoch: r.epoch,
                event: Event {
                    version: r.version as u64,
                    kind,
                    participant,
                    at: r.occurred_at.timestamp_micros(),
                    session,
                    lag: match (r.lag_asked_us, r.lag_given_us) {
                        (Some(asked), Some(given)) => {
                            Some(crate::engine::LagCredit { asked, given })
                        }
                        _ => None,
                    },
                },
            })
        })
        .collect::<Result<_, _>>()?;
    Ok((events, more))
}
