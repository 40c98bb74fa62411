//! The memory engine's audit outbox: a bounded channel of committed events
//! to the audit writer (`SYNCKAIROS_MEMORY_AUDIT_BUFFER` events, default
//! 100,000). A commit never waits on the audit, so when the channel is full
//! (Postgres down, or slower than the commits for long enough) the commit
//! goes on and its event is left out of the audit: counted
//! (`AuditOutbox::dropped`), with one warning when a burst of drops begins
//! and one line with its count when it ends. The newest events are the
//! ones dropped; what the channel holds is written once Postgres is back.
//! The memory engine cannot keep a larger backlog anywhere else; the Redis
//! engine keeps its backlog in the audit streams, bounded by Redis' memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::mpsc;

use super::AuditRecord;

/// The default capacity: at about 1–2 KB an event (a two-player session),
/// 100–200 MB of memory at most; at 1,000 commits a second, about 100 s of
/// Postgres outage before events are left out.
pub const DEFAULT_CAPACITY: usize = 100_000;

/// The memory engine's audit channel, bounded by `capacity` events: the
/// store's end, and the writer's (`audit::source::MemorySource`).
pub fn outbox(capacity: usize) -> (Arc<AuditOutbox>, mpsc::Receiver<AuditRecord>) {
    let capacity = capacity.max(1);
    let (tx, rx) = mpsc::channel(capacity);
    let feed = AuditOutbox {
        tx,
        capacity,
        dropped: AtomicU64::new(0),
        burst_began: AtomicU64::new(NO_BURST),
    };
    (Arc::new(feed), rx)
}

/// `AuditOutbox::burst_began` when no burst of drops is going on.
const NO_BURST: u64 = u64::MAX;

/// The store's end of the audit channel.
pub struct AuditOutbox {
    tx: mpsc::Sender<AuditRecord>,
    capacity: usize,
    /// Events dropped from the audit because the channel was full.
    dropped: AtomicU64,
    /// `dropped` when the current burst of drops began, or `NO_BURST`.
    burst_began: AtomicU64,
}

impl AuditOutbox {
    /// Hands `record` to the writer, or, when the channel is full, drops it
    /// (counted, and logged once per burst); never waits. False when dropped.
    pub fn send(&self, record: AuditRecord) -> bool {
        match self.tx.try_send(record) {
            Ok(()) => {
                if self.burst_began.load(Ordering::Relaxed) != NO_BURST {
                    let began = self.burst_began.swap(NO_BURST, Ordering::Relaxed);
                    if began != NO_BURST {
                        let total = self.dropped.load(Ordering::Relaxed);
                        tracing::info!(
                            dropped = total - began,
                            dropped_total = total,
                            "audit: the channel has room again; events are recorded again"
                        );
                    }
                }
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let before = self.dropped.fetch_add(1, Ordering::Relaxed);
                if self
                    .burst_began
                    .compare_exchange(NO_BURST, before, Ordering::Relaxed, Ordering::Relaxed)
                    .is_ok()
                {
                    tracing::warn!(
                        capacity = self.capacity,
                        dropped_total = before + 1,
                        "audit: the memory engine's audit channel is full (Postgres down or slow); \
                         new events are left out of the audit until it drains, commits go on"
                    );
                }
                false
            }
            // The writer is gone (shutting down): nothing to record into.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Events left out of the audit because the channel was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Events waiting for the writer.
    pub fn queued(&self) -> usize {
        self.capacity - self.tx.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Mode, NewParticipant, NewSession, ParticipantId, SessionId, Tenant};

    fn record() -> AuditRecord {
        let p = |id: &str| NewParticipant::named(ParticipantId::parse("p", id).unwrap());
        let new = NewSession {
            initial_time_ms: 60_000,
            ..NewSession::new(
                SessionId::parse("id", "s").unwrap(),
                Mode::PerParticipant,
                vec![p("a"), p("b")],
            )
        };
        let (_, event) = crate::engine::create(new, 0).unwrap();
        AuditRecord {
            tenant: Tenant::default_tenant(),
            event: Arc::new(event),
        }
    }

    #[test]
    fn a_full_outbox_drops_and_counts_one_burst_at_a_time() {
        let (outbox, mut rx) = outbox(2);
        assert!(outbox.send(record()) && outbox.send(record()));
        assert_eq!(outbox.queued(), 2);
        assert!(!outbox.send(record()) && !outbox.send(record()));
        assert_eq!(outbox.dropped(), 2);
        assert_eq!(
            outbox.burst_began.load(Ordering::Relaxed),
            0,
            "one burst, begun at 0"
        );
        rx.try_recv().unwrap();
        assert!(outbox.send(record()), "room again: the burst ends");
        assert_eq!(outbox.burst_began.load(Ordering::Relaxed), NO_BURST);
        assert!(!outbox.send(record()));
        assert_eq!(outbox.burst_began.load(Ordering::Relaxed), 2, "a new burst");
        assert_eq!((outbox.dropped(), outbox.queued()), (3, 2));
        drop(rx);
        assert!(!outbox.send(record()), "no writer: nothing recorded");
        assert_eq!(outbox.dropped(), 3, "a closed channel is not a drop");
    }
}
