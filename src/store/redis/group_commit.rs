//! Group commit, the Redis side: an `update` whose bucket has no commit in
//! flight here commits at once and leads; one that arrives meanwhile waits in
//! the bucket's queue (`super::group_queue`), and when the commit in flight
//! ends the queue goes out in the next commit (up to `MAX_BATCH`, each
//! session once; the rest in the ones after), in a task of its own (a cancelled
//! RPC that happened to lead must not strand the others). A group that
//! loses a race is not rerun as a whole: each change commits again on its
//! own, side by side. A commit that failed slowly (Redis unreachable or not
//! answering) fails the calls queued behind it at once, instead of letting
//! each wait out the same timeout again.
//!
//! Traces: a lead's commit is a `store.commit` span under its own call's; a
//! group commit's runs in a task of its own, so its span is put under the
//! span of the group's oldest call and linked (follows-from) to the others',
//! and a change committed again on its own after a lost race is traced under
//! its own call's span.

use std::time::Instant;

use tokio::sync::oneshot;
use tracing::Instrument as _;

use super::RedisStore;
use super::commit::{Retry, batch_failure, commit_span, only_result};
use super::group_queue::Role;
use super::pool::{SLOW_FAILURE, io};
use crate::engine::{Applied, SessionKey};
use crate::store::{Change, StoreError};

/// A change waiting for its bucket's next group commit.
pub struct Job {
    key: SessionKey,
    change: Change,
    done: oneshot::Sender<Result<Applied, StoreError>>,
    /// The caller's span, for the group commit's trace (disabled, and free,
    /// when traces are off).
    span: tracing::Span,
}

fn key_of(job: &Job) -> &SessionKey {
    &job.key
}

/// A commit of a bucket in flight here: when it ends, or its caller gives
/// up on it, the changes queued meanwhile go on as the next group commit,
/// or, when it `failed` slowly, fail with it.
struct Lead<'a> {
    store: &'a RedisStore,
    bucket: u32,
    failed: Option<String>,
}

impl Drop for Lead<'_> {
    fn drop(&mut self) {
        match self.failed.take() {
            None => self.store.commit_next(self.bucket),
            Some(why) => {
                while let Some(jobs) = self.store.groups.next(self.bucket, key_of) {
                    for job in jobs {
                        let _ = job.done.send(Err(StoreError::Unavailable(why.clone())));
                    }
                }
            }
        }
    }
}

/// Why a commit failed, when it failed with UNAVAILABLE (its outcome known
/// or not) after `SLOW_FAILURE`.
fn slow_failure<T>(outcome: &Result<T, StoreError>, started: Instant) -> Option<String> {
    match outcome {
        Err(StoreError::Unavailable(why) | StoreError::OutcomeUnknown(why))
            if started.elapsed() >= SLOW_FAILURE =>
        {
            Some(why.clone())
        }
        _ => None,
    }
}

impl RedisStore {
    /// `update` of a session whose writer turn the caller holds: leads a
    /// commit of its bucket, or joins the bucket's next group commit.
    pub(super) async fn commit_or_join(
        &self,
        key: &SessionKey,
        f: Change,
    ) -> Result<Applied, StoreError> {
        let b = self.bucket_of(key);
        let mut answer = None;
        let role = self.groups.enter(b, || {
            let (done, rx) = oneshot::channel();
            answer = Some(rx);
            Job {
                key: key.clone(),
                change: f.clone(),
                done,
                span: tracing::Span::current(),
            }
        });
        match role {
            Role::Lead => {
                let mut lead = Lead {
                    store: self,
                    bucket: b,
                    failed: None,
                };
                let started = Instant::now();
                let keys = std::slice::from_ref(key);
                let outs = self
                    .commit(keys, self.plan_update(|_| &f), Retry::Yes)
                    .await;
                lead.failed = slow_failure(&outs, started);
                only_result(outs)
            }
            Role::Queued => match answer {
                Some(answer) => answer
                    .await
                    .unwrap_or_else(|_| Err(io("the group commit ended without an answer"))),
                None => Err(io("a queued change has no answer")),
            },
        }
    }

    /// Starts the next group commit of bucket `b`, if changes are queued, in
    /// a task of its own: its callers wait for it, and it must not end with
    /// the call that happened to lead the one before.
    fn commit_next(&self, b: u32) {
        let Some(jobs) = self.groups.next(b, key_of) else {
            return;
        };
        match (self.me.upgrade(), tokio::runtime::Handle::try_current()) {
            (Some(store), Ok(runtime)) => {
                runtime.spawn(async move {
                    let mut lead = Lead {
                        store: &store,
                        bucket: b,
                        failed: None,
                    };
                    lead.failed = store.commit_group(jobs).await;
                });
            }
            // Shutting down: the callers get an error from their dropped jobs.
            _ => {
                drop(jobs);
                while self.groups.next(b, key_of).is_some() {}
            }
        }
    }

    /// One group commit of queued changes of one bucket (their callers hold
    /// their writer turns). A lost race does not rerun the group: each change
    /// runs again on its own, side by side, so that one hot session does not
    /// hold back the others. Returns why it failed, if it failed slowly.
    async fn commit_group(&self, jobs: Vec<Job>) -> Option<String> {
        // Callers that gave up need nothing committed.
        let jobs: Vec<Job> = jobs.into_iter().filter(|j| !j.done.is_closed()).collect();
        if jobs.is_empty() {
            return None;
        }
        let keys: Vec<SessionKey> = jobs.iter().map(|j| j.key.clone()).collect();
        let retry = if jobs.len() > 1 {
            Retry::No
        } else {
            Retry::Yes
        };
        let span = commit_span!(parent: &jobs[0].span, jobs.len());
        for job in &jobs[1..] {
            span.follows_from(&job.span);
        }
        let started = Instant::now();
        let outcome = self
            .commit_traced(&keys, self.plan_update(|i| &jobs[i].change), retry, span)
            .await;
        let failed = slow_failure(&outcome, started);
        match outcome {
            Ok(outs) => {
                for (job, out) in jobs.into_iter().zip(outs) {
                    let _ = job.done.send(out);
                }
            }
            Err(StoreError::Conflict) if retry == Retry::No => {
                futures_util::future::join_all(jobs.into_iter().map(|job| {
                    let span = job.span.clone();
                    async move {
                        let keys = std::slice::from_ref(&job.key);
                        let plan = self.plan_update(|_| &job.change);
                        let out = self.commit(keys, plan, Retry::Yes).await;
                        let _ = job.done.send(only_result(out));
                    }
                    .instrument(span)
                }))
                .await;
            }
            Err(e) => {
                for job in jobs {
                    let _ = job.done.send(Err(batch_failure(&e)));
                }
            }
        }
        failed
    }
}
