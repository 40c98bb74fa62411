//! The batch writer, one per replica. It first runs the migrations,
//! retrying until the database answers. Then, in a loop: take what the
//! source has, up to `BATCH_MAX` records, as soon as it has anything
//! (waiting at most `FLUSH_EVERY` for the first), store it with
//! `db::insert_batch` (several statements on several connections, not one
//! transaction; storing a batch again is harmless), then acknowledge it.
//! Postgres being down only delays this loop — with backoff, holding the
//! batch — never a commit: the clock does not wait on the audit, and nothing
//! is acknowledged before all of its batch is stored. Rows Postgres refuses
//! (it answered, and the data is the reason) cannot hold the audit up: the
//! batch is split in halves until each refused event stands alone, and that
//! event goes to `audit_dead_letters` with Postgres' reason, counted in
//! `AuditLag::dead_lettered` and logged; the rest is stored as usual. On shutdown it drains
//! for up to `DRAIN_FOR`, and stops sooner once the source has nothing
//! (startup.rs tells it only once the calls and the timers have stopped, so
//! that nothing is committed after its last read). While it holds records it
//! cannot store, `AuditLag::holding_since_ms` says since when: readiness'
//! `audit` check fails past `probes::AUDIT_STUCK_AFTER`.
//! Each try at storing a batch is an `audit.batch` span (its rows, what was
//! inserted, why it failed), for traces only.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument as _, error, info, warn};

use super::db::{self, PgPool};
use super::source::AuditSource;
use crate::engine::Micros;
use crate::prometheus::names;
use crate::store::AuditRecord;

/// Records per batch: large statements insert fastest (1,000-row INSERTs
/// stored about 1.3x the rows per second of 100-row ones, measured in
/// ../shared/STACK.md §5); db::insert_batch spreads a batch over several
/// connections.
pub const BATCH_MAX: usize = 4_000;
/// How long the writer waits for the first record of a batch.
const FLUSH_EVERY: Duration = Duration::from_millis(20);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Pauses between tries of a batch insert: 100 ms doubling to `MAX_BACKOFF`,
/// no jitter, for as long as it takes.
const INSERT_BACKOFF: ExponentialBuilder = ExponentialBuilder::new()
    .with_min_delay(Duration::from_millis(100))
    .with_max_delay(MAX_BACKOFF)
    .with_factor(2.0)
    .without_max_times();
/// Pauses between tries of the migrations: 200 ms doubling to `MAX_BACKOFF`,
/// no jitter, for as long as it takes.
const MIGRATE_BACKOFF: ExponentialBuilder =
    INSERT_BACKOFF.with_min_delay(Duration::from_millis(200));
/// How long shutdown keeps draining.
const DRAIN_FOR: Duration = Duration::from_secs(3);

/// The writer's figures, for logs and tests (the metrics are recorded beside them).
#[derive(Default)]
pub struct AuditLag {
    /// Since when the writer has held records it has not stored yet
    /// ([`monotonic_ms`]; 0: none): set when it takes a batch (or, while
    /// the migrations wait for the database, finds a backlog), cleared when
    /// the batch is stored or the source has nothing. What readiness reads
    /// ([`AuditLag::stuck`]).
    pub holding_since_ms: AtomicU64,
    /// Events stored in Postgres by this replica.
    pub inserted: AtomicU64,
    /// Age, when it reached Postgres, of the oldest event of the last batch (µs).
    pub last_lag_us: AtomicI64,
    /// Largest such age seen (µs).
    pub max_lag_us: AtomicI64,
    /// Records waiting, as last measured.
    pub backlog: AtomicU64,
    /// Events Postgres refused, stored in `audit_dead_letters` instead.
    pub dead_lettered: AtomicU64,
}

/// Milliseconds on the process' monotonic clock, from 1 (0 means "never").
pub fn monotonic_ms() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    u64::try_from(base.elapsed().as_millis())
        .unwrap_or(u64::MAX - 1)
        .saturating_add(1)
}

impl AuditLag {
    /// The writer holds records not yet stored; kept if it already did.
    pub fn holding(&self) {
        let _ = self.holding_since_ms.compare_exchange(
            0,
            monotonic_ms(),
            Ordering::Relaxed,
            Ordering::Relaxed,
        );
    }

    /// Everything the writer took is stored (or there was nothing).
    pub fn caught_up(&self) {
        self.holding_since_ms.store(0, Ordering::Relaxed);
    }

    /// Whether the writer has held records without storing them for longer
    /// than `bound`: Postgres down or not answering, or the migrations not
    /// run, with entries waiting. A writer storing batch after batch of a
    /// large backlog is not stuck, only behind (see `last_lag_us`).
    pub fn stuck(&self, bound: Duration) -> bool {
        let since = self.holding_since_ms.load(Ordering::Relaxed);
        since != 0 && monotonic_ms().saturating_sub(since) > bound.as_millis() as u64
    }
}

/// Runs until `shutdown`, then drains for a little while.
pub async fn run(
    pool: PgPool,
    mut source: Box<dyn AuditSource>,
    lag: Arc<AuditLag>,
    now: impl Fn() -> Micros + Send,
    shutdown: CancellationToken,
) {
    if !migrate_until_ready(&pool, source.as_mut(), &lag, &shutdown).await {
        return;
    }
    let mut logged_lag = Duration::from_secs(1);
    let mut last_backlog = Instant::now();
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_none() && shutdown.is_cancelled() {
            drain_until = Some(Instant::now() + DRAIN_FOR);
        }
        if drain_until.is_some_and(|t| Instant::now() >= t) {
            return;
        }
        let batch = match source.next(BATCH_MAX, FLUSH_EVERY).await {
            Ok(b) => b,
            Err(e) => {
                warn!(error = %e, "audit: reading the source failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    _ = shutdown.cancelled(), if drain_until.is_none() => {}
                }
                continue;
            }
        };
        if batch.is_empty() {
            lag.caught_up();
            if drain_until.is_some() {
                return;
            }
            continue;
        }
        lag.holding();
        let (acks, records): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        let oldest = records
            .iter()
            .map(|r| r.event.at)
            .min()
            .unwrap_or_else(&now);
        let mut backoff = INSERT_BACKOFF.build();
        let mut failures = 0u32;
        loop {
            let t = Instant::now();
            let span = tracing::info_span!(
                target: crate::telemetry::TRACE_TARGET,
                "audit.batch",
                rows = records.len() as i64,
                inserted = tracing::field::Empty,
                error = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let stored = store_batch(&pool, &records, &lag)
                .instrument(span.clone())
                .await;
            match &stored {
                Ok(n) => span.record("inserted", *n as i64),
                Err(e) => span
                    .record("error", tracing::field::display(e))
                    .record("otel.status_code", "ERROR"),
            };
            match stored {
                Ok(n) => {
                    lag.inserted.fetch_add(n as u64, Ordering::Relaxed);
                    metrics::counter!(names::AUDIT_ROWS_WRITTEN).increment(n as u64);
                    lag.caught_up();
                    tracing::debug!(
                        records = records.len(),
                        inserted = n,
                        ms = t.elapsed().as_millis() as u64,
                        "audit: batch stored"
                    );
                    break;
                }
                Err(e) => {
                    failures += 1;
                    // Held: the lag grows for as long as Postgres refuses.
                    metrics::gauge!(names::AUDIT_LAG_SECONDS)
                        .set((now() - oldest).max(0) as f64 / 1e6);
                    if failures == 1 || failures % 20 == 0 {
                        // The backlog is what an outage costs (Redis memory): say it while it grows.
                        let backlog = source.backlog().await;
                        if let Some(b) = backlog {
                            lag.backlog.store(b, Ordering::Relaxed);
                            metrics::gauge!(names::AUDIT_BACKLOG).set(b as f64);
                        }
                        warn!(error = %e, held = records.len(), ?backlog, "audit: Postgres insert failed; holding the batch and retrying");
                    }
                    if drain_until.is_some_and(|t| Instant::now() >= t) {
                        // Redis keeps the entries pending for the next writer; memory cannot.
                        error!(
                            held = records.len(),
                            "audit: shutting down with a batch Postgres did not take"
                        );
                        return;
                    }
                    tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)).await;
                }
            }
        }
        if failures > 0 {
            info!(
                after = failures,
                "audit: Postgres is back; backlog draining"
            );
        }
        if let Err(e) = source.ack(&acks).await {
            // Not acknowledged: they are redelivered and skipped by ON CONFLICT.
            warn!(error = %e, "audit: acknowledging failed; entries will be re-inserted harmlessly");
        }
        let age = (now() - oldest).max(0);
        metrics::gauge!(names::AUDIT_LAG_SECONDS).set(age as f64 / 1e6);
        lag.last_lag_us.store(age, Ordering::Relaxed);
        lag.max_lag_us.fetch_max(age, Ordering::Relaxed);
        let age = Duration::from_micros(age as u64);
        if age > logged_lag {
            warn!(
                lag_ms = age.as_millis() as u64,
                "audit: the writer is behind"
            );
            logged_lag = age * 2;
        } else if age < Duration::from_millis(500) {
            logged_lag = Duration::from_secs(1);
        }
        if last_backlog.elapsed() > Duration::from_secs(2) {
            last_backlog = Instant::now();
            if let Some(b) = source.backlog().await {
                lag.backlog.store(b, Ordering::Relaxed);
                metrics::gauge!(names::AUDIT_BACKLOG).set(b as f64);
            }
        }
    }
}

/// How long a lone event Postgres refused waits before it is tried once more
/// (after checking that Postgres answers), before it goes to the dead letters.
const REFUSED_RETRY: Duration = Duration::from_millis(100);

/// `db::insert_batch`, except that rows Postgres refuses do not fail the
/// batch: a refused batch is split in halves, each stored the same way, until
/// a refused event stands alone. Such an event is tried once more, after a
/// pause and a `SELECT 1` (so a refusal that was Postgres going away is held
/// and retried like any outage, not dead-lettered), then stored in
/// `audit_dead_letters`. A batch of n events with k refused ones costs about
/// 2·k·log2(n) statements more. `Unavailable` fails the whole call: the
/// caller holds the batch and retries it.
async fn store_batch(
    pool: &PgPool,
    records: &[AuditRecord],
    lag: &AuditLag,
) -> Result<usize, db::DbError> {
    let refused = match db::insert_batch(pool, records).await {
        Err(db::DbError::Refused(why)) => why,
        other => return other,
    };
    if let [record] = records {
        tokio::time::sleep(REFUSED_RETRY).await;
        db::ping(pool).await?;
        let why = match db::insert_batch(pool, records).await {
            Err(db::DbError::Refused(why)) => why,
            other => return other,
        };
        db::dead_letter(pool, records, &why).await?;
        lag.dead_lettered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::AUDIT_ROWS_DEAD_LETTERED).increment(1);
        error!(
            tenant = %record.tenant,
            session = %record.event.session.id,
            version = record.event.version,
            reason = %why,
            "audit: Postgres refused an event; it is stored in audit_dead_letters"
        );
        return Ok(0);
    }
    tracing::debug!(records = records.len(), reason = %refused, "audit: batch refused; splitting it");
    let (first, second) = records.split_at(records.len() / 2);
    let a = Box::pin(store_batch(pool, first, lag)).await?;
    let b = Box::pin(store_batch(pool, second, lag)).await?;
    Ok(a + b)
}

/// Runs the migrations, retrying while the database cannot be reached; with
/// records waiting meanwhile the writer counts as holding them.
async fn migrate_until_ready(
    pool: &PgPool,
    source: &mut dyn AuditSource,
    lag: &AuditLag,
    shutdown: &CancellationToken,
) -> bool {
    let mut backoff = MIGRATE_BACKOFF.build();
    let mut attempt = 0u32;
    loop {
        match db::migrate(pool).await {
            Ok(applied) => {
                info!(?applied, "audit: migrations up to date; writer running");
                return true;
            }
            Err(e) => {
                attempt += 1;
                if attempt == 1 || attempt % 10 == 0 {
                    error!(error = %e, "DATABASE_URL: cannot reach the audit database; the clock keeps serving, the audit waits");
                }
                if source.backlog().await.is_some_and(|b| b > 0) {
                    lag.holding();
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return false,
            _ = tokio::time::sleep(backoff.next().unwrap_or(MAX_BACKOFF)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoffs_double_from_100ms_or_200ms_to_5s() {
        let ms =
            |b: ExponentialBuilder| b.build().take(8).map(|d| d.as_millis()).collect::<Vec<_>>();
        assert_eq!(
            ms(INSERT_BACKOFF),
            [100, 200, 400, 800, 1600, 3200, 5000, 5000]
        );
        assert_eq!(
            ms(MIGRATE_BACKOFF),
            [200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
    }
}
