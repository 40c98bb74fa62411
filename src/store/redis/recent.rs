//! What this replica last wrote to the sessions it serves, so the Redis
//! engine's next commit of one of them skips work already done: formatting
//! the session's key names, and decoding a state it reads back exactly as it
//! wrote it. Between the commit's two round trips every microsecond of CPU
//! is latency, and a game's switches tend to land on the replica that made
//! the one before.
//!
//! Forgetting is always safe (the commit decodes and formats again), so the
//! memory is bounded the simple way: a full map is cleared.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::{Session, SessionKey};

/// Sessions remembered per replica.
const CAPACITY: usize = 4_096;
/// States larger than this are decoded every time rather than kept.
const MAX_REMEMBERED_BYTES: usize = 16 * 1024;

/// A state as this replica wrote it: the stored bytes and what they decode to.
pub struct Written {
    pub bytes: Vec<u8>,
    pub session: Session,
}

impl Written {
    /// The session `raw` decodes to, when it is byte-for-byte this write.
    pub fn matches(&self, raw: &[u8]) -> Option<Session> {
        (self.bytes == raw).then(|| self.session.clone())
    }
}

/// What this replica knows of one session: its key names, and what it
/// last wrote there (when it remembers).
pub struct Remembered<K> {
    pub keys: Arc<K>,
    pub last_write: Option<Arc<Written>>,
}

impl<K> Clone for Remembered<K> {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys.clone(),
            last_write: self.last_write.clone(),
        }
    }
}

/// Per-session memory of one replica; `K` is the engine's key names.
pub struct Recent<K> {
    map: Mutex<HashMap<SessionKey, Remembered<K>>>,
}

impl<K> Default for Recent<K> {
    fn default() -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
        }
    }
}

impl<K> Recent<K> {
    /// The session's key names (made by `make` the first time) and its last write here.
    pub fn get(&self, key: &SessionKey, make: impl FnOnce() -> K) -> Remembered<K> {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(known) = map.get(key) {
            return known.clone();
        }
        if map.len() >= CAPACITY {
            map.clear();
        }
        let known = Remembered {
            keys: Arc::new(make()),
            last_write: None,
        };
        map.insert(key.clone(), known.clone());
        known
    }

    /// Records what a commit wrote.
    pub fn remember(&self, key: &SessionKey, written: Written) {
        let mut map = self.map.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = map.get_mut(key) {
            e.last_write = (written.bytes.len() <= MAX_REMEMBERED_BYTES).then(|| Arc::new(written));
        }
    }

    /// Drops the session (it was deleted).
    pub fn forget(&self, key: &SessionKey) {
        self.map
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{self, Mode, NewParticipant, NewSession, ParticipantId, SessionId, Tenant};

    fn key(id: &str) -> SessionKey {
        SessionKey {
            tenant: Tenant::default_tenant(),
            id: SessionId::parse("id", id).unwrap(),
        }
    }

    fn session(id: &str) -> Session {
        let p = vec![NewParticipant::named(
            ParticipantId::parse("p", "a").unwrap(),
        )];
        let new = NewSession {
            initial_time_ms: 60_000,
            ..NewSession::new(SessionId::parse("id", id).unwrap(), Mode::PerParticipant, p)
        };
        engine::create(new, 1_000).unwrap().0
    }

    #[test]
    fn a_state_read_back_unchanged_is_the_remembered_session_and_any_other_is_not() {
        let recent: Recent<String> = Recent::default();
        let (k, s) = (key("s1"), session("s1"));
        let last = recent.get(&k, || "keys".into()).last_write;
        assert!(last.is_none());
        let bytes = serde_json::to_vec(&s).unwrap();
        recent.remember(
            &k,
            Written {
                bytes: bytes.clone(),
                session: s.clone(),
            },
        );
        let Remembered {
            keys,
            last_write: last,
        } = recent.get(&k, || unreachable!("made once"));
        assert_eq!(*keys, "keys");
        let last = last.expect("remembered");
        assert_eq!(last.matches(&bytes), Some(s));
        let mut other = bytes.clone();
        *other.last_mut().unwrap() = b' ';
        assert_eq!(last.matches(&other), None);
    }

    #[test]
    fn memory_is_bounded_and_deleted_sessions_are_forgotten() {
        let recent: Recent<u32> = Recent::default();
        for i in 0..CAPACITY + 10 {
            recent.get(&key(&format!("s{i}")), || 0);
        }
        assert!(recent.map.lock().unwrap().len() <= CAPACITY);
        let (k, s) = (key("gone"), session("gone"));
        recent.get(&k, || 1);
        recent.remember(
            &k,
            Written {
                bytes: b"{}".to_vec(),
                session: s,
            },
        );
        recent.forget(&k);
        assert!(recent.get(&k, || 2).last_write.is_none());
        // Oversized states are not kept.
        recent.remember(
            &k,
            Written {
                bytes: vec![b' '; MAX_REMEMBERED_BYTES + 1],
                session: session("gone"),
            },
        );
        assert!(recent.get(&k, || 3).last_write.is_none());
    }
}
