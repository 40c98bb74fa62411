//! Where the writer reads committed events from: the memory engine's channel,
//! or the Redis engine's bucket audit streams through a consumer group.
//!
//! Memory: the receiving end of a bounded channel
//! (`SYNCKAIROS_MEMORY_AUDIT_BUFFER` events) that the store fills without
//! ever waiting, and leaves events out of when it is full
//! (`store::audit_outbox`).
//!
//! Redis: each replica is one consumer of the group `synckairos-audit` on
//! every `sk:{b}:audit` stream. It reads new entries (`>`), acknowledges them
//! only after Postgres committed them, and deletes them then (so the streams
//! hold only the backlog). Entries a dead replica read but never
//! acknowledged are taken over with `XAUTOCLAIM` once they have been idle
//! longer than `CLAIM_IDLE`.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::ConnectionManager;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use tokio::sync::mpsc;

use crate::engine::{Event, Tenant};
use crate::store::AuditRecord;
use crate::wire::{self, AUDIT_FIELD_EVENT, AUDIT_FIELD_TENANT};

pub const GROUP: &str = "synckairos-audit";
/// An entry read by a replica that has not acknowledged it for this long is taken over.
const CLAIM_IDLE: Duration = Duration::from_secs(15);
const CLAIM_EVERY: Duration = Duration::from_secs(5);
/// A consumer with nothing pending and idle this long is removed from the
/// group (crashed replicas leave their names behind; a live one that was
/// merely quiet is recreated by its next read).
const FORGET_IDLE: Duration = Duration::from_secs(3600);

/// Where one record came from, to acknowledge it once inserted.
#[derive(Clone, Debug)]
pub enum Ack {
    Memory,
    Redis { stream: usize, id: String },
}

#[async_trait]
pub trait AuditSource: Send {
    /// Up to `max` records not yet inserted; waits at most `wait` for the first.
    async fn next(&mut self, max: usize, wait: Duration)
    -> Result<Vec<(Ack, AuditRecord)>, String>;
    /// The records are in Postgres: forget them.
    async fn ack(&mut self, acks: &[Ack]) -> Result<(), String>;
    /// Records waiting to be inserted (for the lag figures), if known.
    async fn backlog(&mut self) -> Option<u64>;
}

/// The memory engine's channel, the writer's end.
pub struct MemorySource {
    rx: mpsc::Receiver<AuditRecord>,
}

impl MemorySource {
    pub fn new(rx: mpsc::Receiver<AuditRecord>) -> Self {
        Self { rx }
    }
}

#[async_trait]
impl AuditSource for MemorySource {
    async fn next(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(Ack, AuditRecord)>, String> {
        let mut out = Vec::new();
        match tokio::time::timeout(wait, self.rx.recv()).await {
            Ok(Some(r)) => out.push((Ack::Memory, r)),
            Ok(None) | Err(_) => return Ok(out),
        }
        while out.len() < max {
            match self.rx.try_recv() {
                Ok(r) => out.push((Ack::Memory, r)),
                Err(_) => break,
            }
        }
        Ok(out)
    }

    async fn ack(&mut self, _acks: &[Ack]) -> Result<(), String> {
        Ok(())
    }

    async fn backlog(&mut self) -> Option<u64> {
        Some(self.rx.len() as u64)
    }
}

/// The Redis engine's bucket audit streams.
pub struct RedisSource {
    conn: ConnectionManager,
    streams: Vec<String>,
    consumer: String,
    groups_ready: bool,
    last_claim: Option<Instant>,
}

fn err(e: redis::RedisError) -> String {
    e.to_string()
}

impl RedisSource {
    /// Reads through `client` (`store::redis::client`: plaintext or TLS).
    pub async fn connect(
        client: redis::Client,
        streams: Vec<String>,
        consumer: String,
    ) -> Result<Self, String> {
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(2)));
        let conn = ConnectionManager::new_with_config(client, config)
            .await
            .map_err(err)?;
        Ok(Self {
            conn,
            streams,
            consumer,
            groups_ready: false,
            last_claim: None,
        })
    }

    async fn ensure_groups(&mut self) -> Result<(), String> {
        if self.groups_ready {
            return Ok(());
        }
        for s in &self.streams {
            let created: redis::RedisResult<()> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(s)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut self.conn)
                .await;
            if let Err(e) = created {
                if e.code() != Some("BUSYGROUP") {
                    return Err(err(e));
                }
            }
        }
        self.groups_ready = true;
        Ok(())
    }

    fn decode(
        stream: usize,
        id: String,
        fields: &std::collections::HashMap<String, redis::Value>,
    ) -> Option<(Ack, AuditRecord)> {
        let bytes = |f: &str| match fields.get(f) {
            Some(redis::Value::BulkString(b)) => Some(b.clone()),
            _ => None,
        };
        let tenant = Tenant::parse(
            "tenant",
            std::str::from_utf8(&bytes(AUDIT_FIELD_TENANT)?).ok()?,
        )
        .ok()?;
        let event: Event = wire::decode(&bytes(AUDIT_FIELD_EVENT)?).ok()?;
        Some((
            Ack::Redis { stream, id },
            AuditRecord {
                tenant,
                event: std::sync::Arc::new(event),
            },
        ))
    }

    /// Takes over entries that other (dead) consumers read but never acknowledged.
    async fn claim_abandoned(
        &mut self,
        max: usize,
        out: &mut Vec<(Ack, AuditRecord)>,
    ) -> Result<(), String> {
        if self.last_claim.is_some_and(|t| t.elapsed() < CLAIM_EVERY) {
            return Ok(());
        }
        self.last_claim = Some(Instant::now());
        for (i, s) in self.streams.iter().enumerate() {
            let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                .arg(s)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(CLAIM_IDLE.as_millis() as u64)
                .arg("0-0")
                .arg("COUNT")
                .arg(max)
                .query_async(&mut self.conn)
                .await
                .map_err(err)?;
            for entry in reply.claimed {
                match Self::decode(i, entry.id.clone(), &entry.map) {
                    Some(r) => out.push(r),
                    None => {
                        tracing::error!(stream = %s, id = %entry.id, "undecodable audit entry left pending")
                    }
                }
            }
            let consumers: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(s)
                .arg(GROUP)
                .query_async(&mut self.conn)
                .await
                .map_err(err)?;
            for c in consumers.consumers {
                if c.name != self.consumer
                    && c.pending == 0
                    && c.idle as u128 > FORGET_IDLE.as_millis()
                {
                    let _: redis::RedisResult<i64> = redis::cmd("XGROUP")
                        .arg("DELCONSUMER")
                        .arg(s)
                        .arg(GROUP)
                        .arg(&c.name)
                        .query_async(&mut self.conn)
                        .await;
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl AuditSource for RedisSource {
    async fn next(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<(Ack, AuditRecord)>, String> {
        self.ensure_groups().await?;
        let mut out = Vec::new();
        self.claim_abandoned(max, &mut out).await?;
        let started = Instant::now();
        loop {
            // An even share per bucket keeps one batch near `max`.
            let per_stream = max
                .saturating_sub(out.len())
                .div_ceil(self.streams.len())
                .max(1);
            let mut pipe = redis::pipe();
            for s in &self.streams {
                pipe.cmd("XREADGROUP")
                    .arg("GROUP")
                    .arg(GROUP)
                    .arg(&self.consumer)
                    .arg("COUNT")
                    .arg(per_stream)
                    .arg("STREAMS")
                    .arg(s)
                    .arg(">");
            }
            let replies: Vec<Option<StreamReadReply>> =
                pipe.query_async(&mut self.conn).await.map_err(err)?;
            for (i, reply) in replies.into_iter().enumerate() {
                for key in reply.map(|r| r.keys).unwrap_or_default() {
                    for entry in key.ids {
                        match Self::decode(i, entry.id.clone(), &entry.map) {
                            Some(r) => out.push(r),
                            None => {
                                tracing::error!(stream = %key.key, id = %entry.id, "undecodable audit entry left pending")
                            }
                        }
                    }
                }
            }
            if !out.is_empty() || started.elapsed() >= wait {
                return Ok(out);
            }
            tokio::time::sleep(Duration::from_millis(10).min(wait)).await;
        }
    }

    async fn ack(&mut self, acks: &[Ack]) -> Result<(), String> {
        let mut by_stream: Vec<Vec<&str>> = vec![Vec::new(); self.streams.len()];
        for a in acks {
            if let Ack::Redis { stream, id } = a {
                if let Some(ids) = by_stream.get_mut(*stream) {
                    ids.push(id);
                }
            }
        }
        let mut pipe = redis::pipe();
        for (s, ids) in self.streams.iter().zip(&by_stream) {
            if ids.is_empty() {
                continue;
            }
            pipe.cmd("XACK").arg(s).arg(GROUP).arg(ids).ignore();
            // Acknowledged entries are in Postgres: keep Redis memory bounded.
            pipe.cmd("XDEL").arg(s).arg(ids).ignore();
        }
        pipe.query_async::<()>(&mut self.conn).await.map_err(err)
    }

    async fn backlog(&mut self) -> Option<u64> {
        let mut pipe = redis::pipe();
        for s in &self.streams {
            pipe.cmd("XLEN").arg(s);
        }
        let lens: Vec<u64> = pipe.query_async(&mut self.conn).await.ok()?;
        Some(lens.iter().sum())
    }
}
