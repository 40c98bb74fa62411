//! Writers of one session inside this replica take turns: without this, N
//! local callers on one hot session would fight each other's WATCH as well as
//! the other replicas', and most of their round trips would be wasted. So
//! only replicas contend, and a retry rarely loses twice.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::engine::SessionKey;

/// One queue per session that has a writer here right now.
#[derive(Default)]
pub struct LocalWriters {
    queues: Mutex<HashMap<SessionKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// A turn at writing one session; the queue is forgotten when nobody waits.
pub struct WriterTurn<'a> {
    writers: &'a LocalWriters,
    key: SessionKey,
    queue: Arc<tokio::sync::Mutex<()>>,
    turn: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl LocalWriters {
    /// Waits for the session's turn.
    pub async fn turn(&self, key: &SessionKey) -> WriterTurn<'_> {
        let queue = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            queues.entry(key.clone()).or_default().clone()
        };
        let turn = queue.clone().lock_owned().await;
        WriterTurn {
            writers: self,
            key: key.clone(),
            queue,
            turn: Some(turn),
        }
    }
}

impl Drop for WriterTurn<'_> {
    fn drop(&mut self) {
        let mut queues = self
            .writers
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        drop(self.turn.take());
        // Only the map and this turn hold it: nobody is waiting.
        if Arc::strong_count(&self.queue) == 2 {
            queues.remove(&self.key);
        }
    }
}
