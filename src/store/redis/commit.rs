//! The versioned commit: `WATCH` the sessions' states, read them with Redis
//! `TIME` in the same round trip, let a pure plan decide what each session
//! writes, and queue it all into one `MULTI … EXEC`. A nil EXEC means another
//! replica committed first: read again and plan again (jittered backoff,
//! within `RETRY_BUDGET`), which is safe because the plan is pure. An EXEC
//! whose answer was lost is read back before anything is answered
//! (`super::outcome`): committed, it answers as committed; not committed,
//! it runs again like a lost race; unknown, it fails with `OutcomeUnknown`.
//!
//! One commit takes one session (the usual call) or several of one bucket
//! (a timer burst, a group commit): all keys are watched, read and written
//! in the one slot. Between the two round trips only CPU is spent, so a
//! commit that reads back exactly what this replica wrote last reuses it
//! instead of decoding it (`super::recent`), and an event embeds the
//! session's snapshot JSON already made for the state (`wire::encode_state`,
//! `wire::encode_event`).

use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};
use redis::{Pipeline, Value};
use tracing::Instrument as _;

use super::RedisStore;
use super::keys::SessionKeys;
use super::outcome::Landed;
use super::pool::{Conn, Failed, exchange, exchange_or_lost, failed_at_once, io};
use super::recent::{Remembered, Written};
use crate::engine::{self, Applied, Event, EventKind, Micros, Session, SessionKey};
use crate::prometheus::names;
use crate::store::{Change, EVENT_LOG_LEN, StoreError};
use crate::wire;

/// The span of one commit, `store.commit` (for traces only): its group
/// size, its attempts (recorded on a retry only) and, when it failed, why.
/// Under the caller's span, or under `parent:`.
macro_rules! commit_span {
    ($size:expr) => {
        tracing::info_span!(
            target: $crate::telemetry::TRACE_TARGET,
            "store.commit",
            engine = "redis",
            group_size = $size as i64,
            attempts = 1i64,
            error = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    };
    (parent: $parent:expr, $size:expr) => {
        tracing::info_span!(
            target: $crate::telemetry::TRACE_TARGET,
            parent: $parent,
            "store.commit",
            engine = "redis",
            group_size = $size as i64,
            attempts = 1i64,
            error = tracing::field::Empty,
            otel.status_code = tracing::field::Empty,
        )
    };
}
pub(super) use commit_span;

/// How long write conflicts are retried inside the server before `ABORTED`.
/// Writers of one session on one replica take turns first
/// (`super::writers`), so only replicas contend.
const RETRY_BUDGET: Duration = Duration::from_secs(3);

/// The pauses between attempts after lost races: 50 µs doubling up to
/// 6.4 ms, each with up to as much again of jitter (so 50–100 µs first,
/// 6.4–12.8 ms at most), until `RETRY_BUDGET` has passed.
fn race_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_micros(50))
        .with_max_delay(Duration::from_micros(6_400))
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

/// What a commit read of one session, for its plan to decide on.
pub struct SessionRead<'a> {
    /// The session's place in the commit's keys.
    pub index: usize,
    pub keys: &'a SessionKeys,
    /// The state's bytes (`None`: no such session).
    pub stored: Option<&'a [u8]>,
    /// What this replica wrote last, when it remembers.
    pub last_write: Option<&'a Written>,
    /// Redis's `TIME` at the read.
    pub now: Micros,
    /// The earliest deadline the timers here will wake for (see `known_head`).
    pub deadline_head: Option<Micros>,
}

/// What `commit` asks for each session: from what was read, queue its
/// writes into the MULTI and say what to answer. Pure: it may run again.
pub trait Planner<T>:
    Fn(SessionRead<'_>, &mut Pipeline) -> Result<Plan<T>, StoreError> + Send
{
}

impl<T, F> Planner<T> for F where
    F: Fn(SessionRead<'_>, &mut Pipeline) -> Result<Plan<T>, StoreError> + Send
{
}

/// What one attempt of a versioned write does with one session.
// One of these lives per session per attempt; boxing `Write` would cost an
// allocation on every commit to save a few hundred bytes of stack.
#[allow(clippy::large_enum_variant)]
pub enum Plan<T> {
    /// Nothing to write; answer `T`.
    Done(T),
    /// Writes were queued into the MULTI; answer `T` once it commits. The
    /// state it stores (`None`: the session is gone).
    Write(T, Option<Written>),
}

/// Whether `commit` runs again after losing a race.
#[derive(Clone, Copy, PartialEq)]
pub enum Retry {
    Yes,
    No,
}

/// The one result of a commit of one session.
pub fn only_result<T>(
    outs: Result<Vec<Result<T, StoreError>>, StoreError>,
) -> Result<T, StoreError> {
    outs?
        .pop()
        .unwrap_or_else(|| Err(io("a commit of one session gave no result")))
}

/// One batch's failure, for each of its sessions.
pub fn batch_failure(e: &StoreError) -> StoreError {
    match e {
        StoreError::Conflict => StoreError::Conflict,
        StoreError::Unavailable(m) => StoreError::Unavailable(m.clone()),
        StoreError::OutcomeUnknown(m) => StoreError::OutcomeUnknown(m.clone()),
        other => StoreError::Unavailable(other.to_string()),
    }
}

/// The session a read returned: the one this replica last wrote when the
/// bytes are exactly those, else decoded.
pub fn read_session(raw: Option<&[u8]>, last: Option<&Written>) -> Result<Session, StoreError> {
    let raw = raw.ok_or(StoreError::NotFound)?;
    match last.and_then(|w| w.matches(raw)) {
        Some(session) => Ok(session),
        None => super::decode(raw),
    }
}

/// A command built at its final size: growing the buffers of the commit's
/// commands argument by argument (the state and events are kilobytes) cost
/// more CPU than anything else in building the MULTI.
fn command(args: &[&[u8]]) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(args.len(), args.iter().map(|a| a.len()).sum());
    for a in args {
        cmd.arg(*a);
    }
    cmd
}

/// `EVENT_LOG_LEN` as a command argument.
const EVENT_LOG_LEN_ARG: &[u8] = b"256";
const _: () = assert!(
    EVENT_LOG_LEN == 256,
    "EVENT_LOG_LEN_ARG must spell EVENT_LOG_LEN"
);

impl RedisStore {
    /// `commit` of sessions of one bucket, each on its writer turn.
    pub(super) async fn commit_in_turn<T>(
        &self,
        keys: &[SessionKey],
        plan: impl Planner<T>,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        // Turns are taken in key order, so two batches never wait on each other.
        let mut order: Vec<&SessionKey> = keys.iter().collect();
        order.sort();
        let mut turns = Vec::with_capacity(keys.len());
        for key in order {
            turns.push(self.writers.turn(key).await);
        }
        self.commit(keys, plan, Retry::Yes).await
    }

    /// `commit_in_turn` of one session.
    pub(super) async fn commit_one<T>(
        &self,
        key: &SessionKey,
        plan: impl Planner<T>,
    ) -> Result<T, StoreError> {
        only_result(self.commit_in_turn(std::slice::from_ref(key), plan).await)
    }

    /// One versioned write of sessions that share a bucket (usually one),
    /// whose callers hold their writer turns: `WATCH`, `GET` (one session)
    /// or `MGET` (several) and `TIME` in one round trip, then `plan` (pure: it may run again) decides for each,
    /// from its state and Redis's now, what to queue into the one MULTI;
    /// `EXEC` commits all of it or, when another writer got there first,
    /// nothing, and the whole thing runs again (`race_backoff`) or, with
    /// `Retry::No`, ends in `Conflict`. One result per key; `Err` when the
    /// round trips themselves fail. Traced as a `store.commit` span under the
    /// caller's (`commit_traced`).
    pub(super) async fn commit<T>(
        &self,
        keys: &[SessionKey],
        plan: impl Planner<T>,
        retry: Retry,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let span = commit_span!(keys.len());
        self.commit_traced(keys, plan, retry, span).await
    }

    /// `commit` in `span` (a `commit_span!`): it
    /// counts the attempts, and says why the commit failed when it did.
    /// Nothing is formatted unless the span is enabled.
    pub(super) async fn commit_traced<T>(
        &self,
        keys: &[SessionKey],
        plan: impl Planner<T>,
        retry: Retry,
        span: tracing::Span,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let started = Instant::now();
        let out = self
            .commit_attempts(keys, plan, retry, &span)
            .instrument(span.clone())
            .await;
        metrics::histogram!(names::STORE_COMMIT_SECONDS).record(started.elapsed().as_secs_f64());
        metrics::histogram!(names::STORE_GROUP_COMMIT_SIZE).record(keys.len() as f64);
        if let Err(e) = &out {
            span.record("error", tracing::field::display(e));
            span.record("otel.status_code", "ERROR");
        }
        out
    }

    async fn commit_attempts<T>(
        &self,
        keys: &[SessionKey],
        plan: impl Planner<T>,
        retry: Retry,
        span: &tracing::Span,
    ) -> Result<Vec<Result<T, StoreError>>, StoreError> {
        let mut conn = self.conn().await?;
        // Only these turns write the sessions here, so the last write
        // remembered is this replica's latest.
        let sessions: Vec<Remembered<SessionKeys>> = keys
            .iter()
            .map(|key| self.recent.get(key, || self.keys(key)))
            .collect();
        let started = Instant::now();
        // Made on the first lost race only: most commits never need it.
        let mut pauses = None;
        for attempt in 0u32.. {
            if attempt > 0 {
                span.record("attempts", i64::from(attempt) + 1);
            }
            // From WATCH until EXEC or UNWATCH answers, the connection carries
            // this call's WATCH: if the call is dropped midway (a cancelled
            // RPC), the pool must close it rather than lend it, WATCH and all,
            // to the next commit.
            conn.broken = true;
            let reading = Instant::now();
            let mut read = self.watch_read(&mut conn, &sessions).await;
            if attempt == 0 && failed_at_once(&read, reading) {
                drop(conn);
                conn = self.conn().await?;
                conn.broken = true;
                read = self.watch_read(&mut conn, &sessions).await;
            }
            let (raws, now) = read?;
            let deadline_head = self.known_head();
            let mut tx = Pipeline::with_capacity(8 * keys.len());
            tx.atomic();
            let (mut outs, mut stored) = (
                Vec::with_capacity(keys.len()),
                Vec::with_capacity(keys.len()),
            );
            for (index, (session, raw)) in sessions.iter().zip(&raws).enumerate() {
                let read = SessionRead {
                    index,
                    keys: &session.keys,
                    stored: raw.as_deref(),
                    last_write: session.last_write.as_deref(),
                    now,
                    deadline_head,
                };
                let (out, state) = match plan(read, &mut tx) {
                    Ok(Plan::Done(out)) => (Ok(out), None),
                    Ok(Plan::Write(out, state)) => (Ok(out), Some(state)),
                    Err(e) => (Err(e), None),
                };
                outs.push(out);
                stored.push(state);
            }
            if stored.iter().all(Option::is_none) {
                self.unwatch(&mut conn).await;
                return Ok(outs);
            }
            let sent = exchange_or_lost(&mut conn, async |c| tx.query_async(c).await).await;
            let done: Option<Value> = match sent {
                Ok(done) => done,
                Err(Failed {
                    error,
                    answer_lost: false,
                }) => return Err(error),
                Err(Failed {
                    error,
                    answer_lost: true,
                }) => {
                    // Back to the pool first (which drops it): the pool may
                    // have room for one only.
                    drop(conn);
                    match self.landed(&sessions, &raws, &stored, &error).await {
                        Landed::Yes => {
                            self.remember(keys, stored);
                            return Ok(outs);
                        }
                        Landed::No if retry == Retry::No => break,
                        Landed::No if started.elapsed() < RETRY_BUDGET => {
                            metrics::counter!(names::STORE_COMMIT_RETRIES).increment(1);
                            conn = self.conn().await?;
                            continue;
                        }
                        Landed::No => {
                            return Err(io(format!("{error}; read back: nothing was applied")));
                        }
                        Landed::Unknown(why) => {
                            return Err(StoreError::OutcomeUnknown(format!("{error}; {why}")));
                        }
                    }
                }
            };
            conn.broken = false; // EXEC, committed or not, ended the WATCH
            if done.is_some() {
                self.remember(keys, stored);
                return Ok(outs);
            }
            metrics::counter!(names::STORE_COMMIT_CONFLICTS).increment(1);
            if retry == Retry::No || started.elapsed() >= RETRY_BUDGET {
                break;
            }
            metrics::counter!(names::STORE_COMMIT_RETRIES).increment(1);
            match pauses.get_or_insert_with(race_backoff).next() {
                Some(pause) => tokio::time::sleep(pause).await,
                None => break,
            }
        }
        Err(StoreError::Conflict)
    }

    /// Records what a commit that landed wrote.
    fn remember(&self, keys: &[SessionKey], stored: Vec<Option<Option<Written>>>) {
        for (key, state) in keys.iter().zip(stored) {
            match state {
                Some(Some(w)) => self.recent.remember(key, w),
                Some(None) => self.recent.forget(key),
                None => {}
            }
        }
    }

    /// Reads the states under WATCH with Redis's TIME, in one round trip.
    async fn watch_read(
        &self,
        conn: &mut Conn,
        sessions: &[Remembered<SessionKeys>],
    ) -> Result<(Vec<Option<Vec<u8>>>, Micros), StoreError> {
        let mut pipe = redis::pipe();
        pipe.cmd("WATCH");
        for s in sessions {
            pipe.arg(&s.keys.state);
        }
        if let [s] = sessions {
            // The common case, one session: a plain GET.
            pipe.ignore().cmd("GET").arg(&s.keys.state).cmd("TIME");
            let (raw, (secs, micros)): (Option<Vec<u8>>, (i64, i64)) =
                exchange(conn, async |c| pipe.query_async(c).await).await?;
            return Ok((vec![raw], secs * 1_000_000 + micros));
        }
        pipe.ignore().cmd("MGET");
        for s in sessions {
            pipe.arg(&s.keys.state);
        }
        pipe.cmd("TIME");
        let (raws, (secs, micros)): (Vec<Option<Vec<u8>>>, (i64, i64)) =
            exchange(conn, async |c| pipe.query_async(c).await).await?;
        if raws.len() != sessions.len() {
            return Err(io(format!(
                "MGET answered {} values for {} keys",
                raws.len(),
                sessions.len()
            )));
        }
        Ok((raws, secs * 1_000_000 + micros))
    }

    /// Ends the WATCH; the connection is reusable again only if that worked.
    async fn unwatch(&self, conn: &mut Conn) {
        if exchange(conn, async |c| {
            redis::cmd("UNWATCH").query_async::<()>(c).await
        })
        .await
        .is_ok()
        {
            conn.broken = false;
        }
    }

    /// The plan of `update`: the change of the session at `index`
    /// (`change(index)`) at Redis's now, its commit queued into `tx`.
    pub(super) fn plan_update<'a>(
        &'a self,
        change: impl Fn(usize) -> &'a Change + Send + 'a,
    ) -> impl Planner<Applied> + 'a {
        move |read: SessionRead<'_>, tx| {
            let session = read_session(read.stored, read.last_write)?;
            let applied = change(read.index)(&session, read.now)?;
            if applied.events.is_empty() {
                return Ok(Plan::Done(applied));
            }
            let (s, events) = (&applied.session, &applied.events);
            let bytes = self.write_commit(tx, read.keys, s, events, read.deadline_head, read.now);
            let written = Written {
                bytes,
                session: applied.session.clone(),
            };
            Ok(Plan::Write(applied, Some(written)))
        }
    }

    /// How long a session's keys live: until it has been idle (or ended) for the configured TTL.
    fn ttl_ms(&self, s: &Session, now: Micros) -> u64 {
        let ms = |d: Duration| d.as_millis() as i64;
        let ttl = if s.status.is_terminal() {
            ms(self.settings.session_ttl)
        } else {
            let horizon = engine::flag_at(s).map_or(now, |d| d.max(now));
            (horizon - now) / 1_000 + ms(self.settings.idle_ttl)
        };
        ttl.max(1) as u64
    }

    /// Queues the writes of one commit into `tx` (already `atomic()`);
    /// returns the state's stored bytes.
    pub(super) fn write_commit(
        &self,
        tx: &mut Pipeline,
        k: &SessionKeys,
        session: &Session,
        events: &[Event],
        head: Option<Micros>,
        now: Micros,
    ) -> Vec<u8> {
        let ttl = self.ttl_ms(session, now).to_string();
        let state = wire::encode_state(session);
        tx.add_command(command(&[
            b"SET",
            k.state.as_bytes(),
            state.bytes(),
            b"PX",
            ttl.as_bytes(),
        ]))
        .ignore();
        let mut batch = Vec::with_capacity(events.len());
        for e in events {
            let bytes = wire::encode_event(e, session, &state);
            let id = format!("{}-0", e.version);
            // `~` trims whole stream nodes (cheap); `events_after` serves only
            // the last EVENT_LOG_LEN, so both engines replay the same window.
            let log = [
                b"XADD",
                k.log.as_bytes(),
                b"MAXLEN",
                b"~",
                EVENT_LOG_LEN_ARG,
                id.as_bytes(),
                wire::LOG_FIELD_EVENT.as_bytes(),
                &bytes,
            ];
            tx.add_command(command(&log)).ignore();
            if self.settings.audit {
                let audit = [
                    b"XADD",
                    k.audit.as_bytes(),
                    b"*",
                    wire::AUDIT_FIELD_TENANT.as_bytes(),
                    k.tenant.as_bytes(),
                    wire::AUDIT_FIELD_EVENT.as_bytes(),
                    &bytes,
                ];
                tx.add_command(command(&audit)).ignore();
            }
            batch.push(bytes);
        }
        tx.add_command(command(&[b"PEXPIRE", k.log.as_bytes(), ttl.as_bytes()]))
            .ignore();
        // A commit that processed a timeout settles the timers' claim in the same MULTI.
        if events.iter().any(|e| {
            matches!(
                e.kind,
                EventKind::Expired | EventKind::ParticipantExpired | EventKind::TimedOut
            )
        }) {
            tx.add_command(command(&[
                b"ZREM",
                k.inflight.as_bytes(),
                k.member.as_bytes(),
            ]))
            .ignore();
        }
        match engine::deadline(session) {
            Some(d) => {
                let d_arg = d.to_string();
                tx.add_command(command(&[
                    b"ZADD",
                    k.deadlines.as_bytes(),
                    d_arg.as_bytes(),
                    k.member.as_bytes(),
                ]))
                .ignore();
                if head.is_none_or(|h| d < h) {
                    tx.add_command(command(&[b"PUBLISH", k.wake.as_bytes(), d_arg.as_bytes()]))
                        .ignore();
                }
            }
            None => {
                tx.add_command(command(&[
                    b"ZREM",
                    k.deadlines.as_bytes(),
                    k.member.as_bytes(),
                ]))
                .ignore();
            }
        }
        tx.add_command(command(&[
            b"PUBLISH",
            k.channel.as_bytes(),
            &wire::join_batch(&batch),
        ]))
        .ignore();
        state.into_bytes()
    }
}
