//! Connections to Redis: the bb8 pool, the I/O timeout of every exchange,
//! and the health of each pooled connection.
//!
//! Why a pool and not one multiplexed connection: WATCH belongs to the
//! server-side connection, so a WATCH…EXEC must own its connection for the
//! whole span (another task's commands on a shared connection would run
//! inside it, and updates would be lost). Each bb8 connection is checked out
//! by one task at a time and never cloned out of the guard. A connection
//! that failed, or that a dropped call left mid-WATCH, is flagged `broken`
//! and the pool closes it instead of lending it again.
//!
//! A read that fails at once (a pooled connection that Redis or a proxy
//! closed while it sat idle) runs once more on a fresh connection: reads
//! write nothing. Writes are never repeated blindly after an I/O error,
//! since EXEC may have committed: `exchange_or_lost` tells the commit that
//! the answer was lost, and it reads back what happened (`super::outcome`).

use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;

use super::RedisStore;
use crate::prometheus::{RedisErrorKind, names};
use crate::store::StoreError;

/// One Redis exchange may take this long before the call fails with
/// UNAVAILABLE (redis-rs's own response timeout comes first: a frozen Redis
/// fails a commit after about 500 ms here).
const IO_TIMEOUT: Duration = Duration::from_millis(1_000);
/// A call that failed with UNAVAILABLE after this long waited out a
/// timeout: it is not repeated, and the calls queued behind a commit that
/// failed so fail with it rather than wait again.
pub(super) const SLOW_FAILURE: Duration = Duration::from_millis(100);

/// A pooled connection that remembers an I/O failure, so the pool drops it
/// instead of handing a dead socket to the next caller.
pub struct Conn {
    inner: MultiplexedConnection,
    /// Set on failure, and by a commit for as long as it holds a WATCH.
    pub(super) broken: bool,
}

/// Opens multiplexed connections from the store's client (`super::client`:
/// plaintext or TLS), and tracks broken ones.
pub struct Manager(redis::Client);

impl Manager {
    pub(super) fn new(client: redis::Client) -> Self {
        Self(client)
    }
}

impl bb8::ManageConnection for Manager {
    type Connection = Conn;
    type Error = redis::RedisError;

    async fn connect(&self) -> Result<Conn, redis::RedisError> {
        Ok(Conn {
            inner: self.0.get_multiplexed_async_connection().await?,
            broken: false,
        })
    }

    async fn is_valid(&self, conn: &mut Conn) -> Result<(), redis::RedisError> {
        redis::cmd("PING").query_async::<()>(&mut conn.inner).await
    }

    fn has_broken(&self, conn: &mut Conn) -> bool {
        conn.broken
    }
}

/// A connection checked out of the pool.
pub(super) type Pooled<'a> = bb8::PooledConnection<'a, Manager>;

/// Any failure of the Redis engine, answered as UNAVAILABLE (Redis out of
/// reach, an undecodable value, a reply of the wrong shape); the detail is
/// for logs only.
pub(super) fn io(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// How an exchange failed.
pub(super) struct Failed {
    /// What the call answers (UNAVAILABLE).
    pub error: StoreError,
    /// No answer came back (the connection broke, or Redis did not answer
    /// in time): what was sent may or may not have run. When false, Redis
    /// answered with an error.
    pub answer_lost: bool,
}

/// Runs `f` on a connection within the I/O timeout; marks it broken on failure.
pub(super) async fn exchange<T>(
    conn: &mut Conn,
    f: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
) -> Result<T, StoreError> {
    exchange_or_lost(conn, f)
        .await
        .map_err(|failed| failed.error)
}

/// `exchange`, telling a lost answer from an error Redis answered.
pub(super) async fn exchange_or_lost<T>(
    conn: &mut Conn,
    f: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<T>,
) -> Result<T, Failed> {
    match tokio::time::timeout(IO_TIMEOUT, f(&mut conn.inner)).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            let answer_lost = e.is_io_error()
                || e.is_connection_dropped()
                || e.is_unrecoverable_error()
                || e.is_timeout();
            if answer_lost {
                conn.broken = true;
            }
            let kind = if e.is_timeout() {
                Some(RedisErrorKind::Timeout)
            } else if answer_lost {
                Some(RedisErrorKind::Io)
            } else if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) {
                // A script's first use on this Redis: loaded, then run again.
                None
            } else {
                Some(RedisErrorKind::Response)
            };
            if let Some(kind) = kind {
                kind.count();
            }
            Err(Failed {
                error: io(e),
                answer_lost,
            })
        }
        Err(_) => {
            conn.broken = true;
            RedisErrorKind::Timeout.count();
            Err(Failed {
                error: io("redis did not answer in time"),
                answer_lost: true,
            })
        }
    }
}

/// Whether a read (it writes nothing) failed with UNAVAILABLE at once, as on
/// a connection that Redis or a proxy closed while it sat idle in the pool:
/// then it runs once more on a fresh connection. A slow failure (a timeout)
/// is not repeated: Redis is unreachable, and the call fails fast.
pub(super) fn failed_at_once<T>(read: &Result<T, StoreError>, started: Instant) -> bool {
    matches!(read, Err(StoreError::Unavailable(_))) && started.elapsed() < SLOW_FAILURE
}

impl RedisStore {
    pub(super) async fn conn(&self) -> Result<Pooled<'_>, StoreError> {
        let started = Instant::now();
        let conn = self.pool.get().await;
        metrics::histogram!(names::STORE_POOL_WAIT_SECONDS).record(started.elapsed().as_secs_f64());
        conn.map_err(|e| {
            RedisErrorKind::Pool.count();
            io(format!("no redis connection: {e}"))
        })
    }

    /// The pool's gauges, read at each upkeep.
    pub(super) fn record_pool(&self) {
        let state = self.pool.state();
        let idle = f64::from(state.idle_connections);
        let open = f64::from(state.connections);
        metrics::gauge!(names::STORE_POOL_CONNECTIONS, "state" => "idle").set(idle);
        metrics::gauge!(names::STORE_POOL_CONNECTIONS, "state" => "in_use").set(open - idle);
        metrics::gauge!(names::STORE_POOL_SIZE).set(f64::from(self.settings.pool_size));
    }

    /// Runs `read` (it writes nothing) on a pooled connection, and once more
    /// on a fresh one when it fails at once (see `failed_at_once`).
    pub(super) async fn read<T>(
        &self,
        read: impl for<'c> Fn(&'c mut Conn) -> BoxFuture<'c, Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let mut conn = self.conn().await?;
        let started = Instant::now();
        let out = read(&mut conn).await;
        if !failed_at_once(&out, started) {
            return out;
        }
        // Back to the pool first (which drops it): the pool may have room for one only.
        drop(conn);
        let mut conn = self.conn().await?;
        read(&mut conn).await
    }
}
