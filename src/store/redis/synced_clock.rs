//! The replica's view of Redis's clock: the process clock plus an offset to
//! Redis `TIME`, measured at start and then about once a second (the store's
//! upkeep), NTP style (half the round trip). Commits run at Redis's own
//! `TIME`; this clock is the store's `now` for everything else (every
//! reply's `server_time`, `GetServerTime`, Subscribe snapshots and
//! heartbeats, the timers' sleeps, the audit lag), so every replica agrees
//! with the commits to within a fraction of a round trip.

use std::sync::atomic::{AtomicI64, Ordering};

use super::RedisStore;
use super::pool::exchange;
use crate::engine::Micros;
use crate::store::StoreError;
use crate::store::clock::Clock;

pub struct SyncedClock {
    local: Clock,
    offset: AtomicI64,
}

impl SyncedClock {
    pub(super) fn new(local: Clock) -> Self {
        Self {
            local,
            offset: AtomicI64::new(0),
        }
    }

    pub fn now(&self) -> Micros {
        self.local.now() + self.offset.load(Ordering::Relaxed)
    }
}

impl RedisStore {
    /// Measures the offset of Redis `TIME` from the process clock.
    pub async fn measure_offset(&self) -> Result<Micros, StoreError> {
        let mut conn = self.conn().await?;
        let t0 = self.clock.local.now();
        let (secs, micros): (i64, i64) =
            exchange(&mut conn, async |c| redis::cmd("TIME").query_async(c).await).await?;
        let t1 = self.clock.local.now();
        let offset = secs * 1_000_000 + micros - (t0 + t1) / 2;
        self.clock.offset.store(offset, Ordering::Relaxed);
        Ok(offset)
    }
}
