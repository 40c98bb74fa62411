//! The per-replica hub: one broadcast channel per session that has local
//! `Subscribe` streams. A channel is made when the first local stream on a
//! session opens and dropped when the last one closes. Delivery never blocks:
//! a stream that falls more than `capacity` events behind is told it lagged
//! and resynchronises with a fresh snapshot, so it never slows the others.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::broadcast;

use crate::engine::{Event, SessionKey};

/// Events a stream may fall behind before it is skipped to a fresh snapshot.
pub const DEFAULT_STREAM_BUFFER: usize = 256;

pub struct Hub {
    channels: Mutex<HashMap<SessionKey, broadcast::Sender<Arc<Event>>>>,
    capacity: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Hub {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self { channels: Mutex::new(HashMap::new()), capacity: capacity.max(1) })
    }

    /// Joins `key`'s channel; the returned subscription leaves it on drop.
    pub fn subscribe(self: &Arc<Self>, key: &SessionKey) -> Subscription {
        let mut channels = lock(&self.channels);
        let rx = match channels.get(key) {
            Some(tx) => tx.subscribe(),
            None => {
                let (tx, rx) = broadcast::channel(self.capacity);
                channels.insert(key.clone(), tx);
                rx
            }
        };
        Subscription { rx: Some(rx), key: key.clone(), hub: self.clone() }
    }

    /// Hands committed events to the local streams on `key` (if any).
    pub fn deliver(&self, key: &SessionKey, events: &[Arc<Event>]) {
        let channels = lock(&self.channels);
        if let Some(tx) = channels.get(key) {
            for e in events {
                // Err only means no receiver is left; the last one is leaving.
                let _ = tx.send(e.clone());
            }
        }
    }

    /// Sessions with at least one local stream.
    pub fn active_sessions(&self) -> usize {
        lock(&self.channels).len()
    }
}

/// One stream's membership in a session's channel.
pub struct Subscription {
    rx: Option<broadcast::Receiver<Arc<Event>>>,
    key: SessionKey,
    hub: Arc<Hub>,
}

impl Subscription {
    pub fn receiver(&mut self) -> &mut broadcast::Receiver<Arc<Event>> {
        self.rx.as_mut().expect("receiver is present until drop")
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let mut channels = lock(&self.hub.channels);
        drop(self.rx.take());
        if channels.get(&self.key).is_some_and(|tx| tx.receiver_count() == 0) {
            channels.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{SessionId, Tenant};

    fn key(id: &str) -> SessionKey {
        SessionKey { tenant: Tenant::default_tenant(), id: SessionId::parse("id", id).unwrap() }
    }

    #[test]
    fn channel_lives_from_first_subscriber_to_last() {
        let hub = Hub::new(4);
        let a = hub.subscribe(&key("s1"));
        let b = hub.subscribe(&key("s1"));
        assert_eq!(hub.active_sessions(), 1);
        drop(a);
        assert_eq!(hub.active_sessions(), 1);
        drop(b);
        assert_eq!(hub.active_sessions(), 0);
    }
}
