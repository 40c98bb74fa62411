//! ListSessions on Redis, without scanning the keyspace: each tenant has one
//! listing index per bucket, `sk:{b}:list:<tenant>` (`keys::list_key`), a
//! ZSET whose scores are all 0 and whose members are
//! `<created_at, 20 digits>:<session id>` (`keys::list_member`), so that
//! Redis's lex order is the listing's order and a page resumes exactly after
//! a position (`ZRANGE … BYLEX REV` from `(<member>`), ties of one
//! microsecond included. The index is in the bucket's slot, so it is written
//! in the commits themselves: `ZADD` in the MULTI that creates the session,
//! `ZREM` in the one that deletes it. Switches and every other change leave
//! it alone (the hot path does not touch it).
//!
//! A call merges the tenant's bucket indexes newest first (each read in
//! batches, only the ones the merge ran dry on again), takes at most the
//! `limit` entries asked for, and reads their states with one `MGET` per
//! bucket, in one round trip: what is listed is the state `GetSession`
//! reads, never a copy. An entry whose state is gone (deleted, or expired by
//! its TTL: Redis drops the state key, not the entry) or belongs to a newer
//! session of the same id is not listed and is dropped from the index then.
//! A member names one session incarnation (its `created_at`), so dropping
//! it can never drop a session created meanwhile.
//!
//! Entries of expired sessions are also dropped without a listing, so that
//! an index never grows without bound: each create runs one step of a sweep
//! of its tenant's index in its bucket (`list_sweep.lua`): the next
//! `SWEEP_STEP` members after the sweep's position (`keys::list_sweep_key`),
//! wrapping round at the end, losing those whose state is gone. An index
//! grows by one entry a create and is swept `SWEEP_STEP` entries a create,
//! so a whole pass takes at most a quarter as many creates as it has
//! entries, and an index holds about at most twice the sessions alive in
//! it: its live ones plus those that expired since the sweep last passed
//! them. A tenant that stops creating keeps the entries it has (no more)
//! until a listing passes them. The sweep runs after the create's commit,
//! best effort: a failed step is logged and the next create's goes on.
//! It checks only that the state exists; an entry of an expired session
//! whose id was created again (a rare, bounded leftover) is dropped by the
//! next listing that reads it.

use std::collections::VecDeque;

use tracing::{debug, warn};

use super::RedisStore;
use super::keys::{
    LIST_TIME_DIGITS, list_key, list_member, list_sweep_key, parse_list_member, state_prefix,
};
use super::pool::{Pooled, exchange};
use crate::engine::{Session, SessionKey, Tenant};
use crate::store::{ListPosition, Listed, StoreError};

/// Entries of a tenant's index (in the created session's bucket) the
/// create-time sweep examines per create: more than the one each create adds.
pub(super) const SWEEP_STEP: usize = 4;

/// The sweep script, loaded into Redis on first use.
pub(super) fn sweep_script() -> redis::Script {
    redis::Script::new(include_str!("list_sweep.lua"))
}

/// One bucket's index as the merge reads it: the next batch, and where the
/// one after starts.
struct Feed {
    key: String,
    from: String,
    buffered: VecDeque<String>,
    done: bool,
}

impl Feed {
    fn dry(&self) -> bool {
        self.buffered.is_empty() && !self.done
    }
}

impl RedisStore {
    /// `SessionStore::list` (see the module's doc).
    pub(super) async fn list_page(
        &self,
        tenant: &Tenant,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<Listed, StoreError> {
        let limit = limit.max(1);
        let mut conn = self.conn().await?;
        let (picked, more) = self.merge(&mut conn, tenant, after, limit).await?;
        let positions: Vec<Option<ListPosition>> =
            picked.iter().map(|(_, m)| parse_list_member(m)).collect();
        let states = self.states(&mut conn, tenant, &picked, &positions).await?;
        let mut listed = Listed {
            examined: picked.len(),
            more,
            ..Listed::default()
        };
        let mut gone: Vec<(u32, &str)> = Vec::new();
        for (((b, member), pos), raw) in picked.iter().zip(&positions).zip(states) {
            let (Some(pos), Some(raw)) = (pos, raw) else {
                gone.push((*b, member));
                continue;
            };
            match super::decode::<Session>(&raw) {
                Ok(s) if s.created_at == pos.created_at && s.id == pos.id => {
                    listed.sessions.push(s)
                }
                // A newer session of the same id (this entry's expired).
                Ok(_) => gone.push((*b, member)),
                // As GetSession, which answers UNAVAILABLE for it; it stays.
                Err(e) => warn!(error = %e, "a listed session's state does not decode; left out"),
            }
        }
        if let Some(p) = positions.iter().rev().flatten().next() {
            listed.last = Some(p.clone());
        }
        self.drop_entries(&mut conn, tenant, &gone).await;
        Ok(listed)
    }

    /// The next `limit` members of the tenant's bucket indexes after
    /// `after`, newest first, each with its bucket; and whether any index
    /// holds more.
    async fn merge(
        &self,
        conn: &mut Pooled<'_>,
        tenant: &Tenant,
        after: Option<&ListPosition>,
        limit: usize,
    ) -> Result<(Vec<(u32, String)>, bool), StoreError> {
        let buckets = self.settings.buckets.max(1);
        // About twice a bucket's share: usually one round trip.
        let batch = (2 * limit / buckets as usize + 1).min(limit);
        let from = after.map_or_else(|| "+".to_owned(), |a| format!("({}", list_member(a)));
        let mut feeds: Vec<Feed> = (0..buckets)
            .map(|b| Feed {
                key: list_key(b, tenant),
                from: from.clone(),
                buffered: VecDeque::new(),
                done: false,
            })
            .collect();
        let mut picked: Vec<(u32, String)> = Vec::with_capacity(limit);
        loop {
            let refill: Vec<usize> = (0..feeds.len()).filter(|&i| feeds[i].dry()).collect();
            if !refill.is_empty() {
                let mut pipe = redis::pipe();
                for &i in &refill {
                    pipe.cmd("ZRANGE")
                        .arg(&feeds[i].key)
                        .arg(&feeds[i].from)
                        .arg("-")
                        .arg("BYLEX")
                        .arg("REV")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(batch);
                }
                let got: Vec<Vec<String>> =
                    exchange(conn, async |c| pipe.query_async(c).await).await?;
                if got.len() != refill.len() {
                    return Err(super::pool::io("ZRANGE answers do not match the buckets"));
                }
                for (&i, members) in refill.iter().zip(got) {
                    let feed = &mut feeds[i];
                    feed.done = members.len() < batch;
                    if let Some(last) = members.last() {
                        feed.from = format!("({last}");
                    }
                    feed.buffered.extend(members);
                }
            }
            // Merge until `limit`, or until a bucket that may hold more runs dry.
            while picked.len() < limit && !feeds.iter().any(Feed::dry) {
                let newest = feeds
                    .iter()
                    .enumerate()
                    .filter_map(|(i, f)| f.buffered.front().map(|m| (i, m)))
                    .max_by(|a, b| a.1.as_bytes().cmp(b.1.as_bytes()))
                    .map(|(i, _)| i);
                let Some(i) = newest else { break };
                if let Some(m) = feeds[i].buffered.pop_front() {
                    picked.push((i as u32, m));
                }
            }
            let exhausted = feeds.iter().all(|f| f.buffered.is_empty() && f.done);
            if picked.len() >= limit || exhausted {
                return Ok((picked, !exhausted));
            }
        }
    }

    /// The states of the picked entries (`None`: gone, or not an entry this
    /// engine writes), one `MGET` per bucket, all in one round trip.
    async fn states(
        &self,
        conn: &mut Pooled<'_>,
        tenant: &Tenant,
        picked: &[(u32, String)],
        positions: &[Option<ListPosition>],
    ) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        let mut buckets: Vec<(u32, Vec<usize>)> = Vec::new();
        for (i, ((b, _), pos)) in picked.iter().zip(positions).enumerate() {
            if pos.is_none() {
                continue;
            }
            match buckets.iter_mut().find(|(bucket, _)| bucket == b) {
                Some((_, at)) => at.push(i),
                None => buckets.push((*b, vec![i])),
            }
        }
        let mut out: Vec<Option<Vec<u8>>> = vec![None; picked.len()];
        if buckets.is_empty() {
            return Ok(out);
        }
        let mut pipe = redis::pipe();
        for (b, at) in &buckets {
            let prefix = state_prefix(*b, tenant);
            pipe.cmd("MGET");
            for &i in at {
                if let Some(pos) = &positions[i] {
                    pipe.arg(format!("{prefix}{}", pos.id));
                }
            }
        }
        let got: Vec<Vec<Option<Vec<u8>>>> =
            exchange(conn, async |c| pipe.query_async(c).await).await?;
        if got.len() != buckets.len()
            || got
                .iter()
                .zip(&buckets)
                .any(|(g, (_, at))| g.len() != at.len())
        {
            return Err(super::pool::io("MGET answers do not match the keys"));
        }
        for ((_, at), raws) in buckets.iter().zip(got) {
            for (&i, raw) in at.iter().zip(raws) {
                out[i] = raw;
            }
        }
        Ok(out)
    }

    /// Drops entries of sessions that are gone (best effort: the next
    /// listing or sweep that meets them again drops them then).
    async fn drop_entries(&self, conn: &mut Pooled<'_>, tenant: &Tenant, gone: &[(u32, &str)]) {
        if gone.is_empty() {
            return;
        }
        let mut pipe = redis::pipe();
        for (b, member) in gone {
            pipe.cmd("ZREM")
                .arg(list_key(*b, tenant))
                .arg(*member)
                .ignore();
        }
        match exchange(conn, async |c| pipe.query_async::<()>(c).await).await {
            Ok(()) => debug!(
                dropped = gone.len(),
                "listing entries of gone sessions dropped"
            ),
            Err(e) => warn!(error = %e, "dropping listing entries of gone sessions failed"),
        }
    }

    /// One step of the sweep of `key`'s tenant's index in its bucket, after
    /// `key` was created (see the module's doc). Best effort.
    pub(super) async fn sweep_list(&self, key: &SessionKey) {
        let b = self.bucket_of(key);
        let step = async {
            let mut conn = self.conn().await?;
            let script = &self.list_sweep;
            exchange(&mut conn, async |c| {
                script
                    .key(list_key(b, &key.tenant))
                    .key(list_sweep_key(b, &key.tenant))
                    .arg(state_prefix(b, &key.tenant))
                    .arg(SWEEP_STEP)
                    .arg(LIST_TIME_DIGITS)
                    .invoke_async::<i64>(c)
                    .await
            })
            .await
        };
        match step.await {
            Ok(0) => {}
            Ok(n) => debug!(
                dropped = n,
                "listing sweep dropped entries of gone sessions"
            ),
            Err(e) => warn!(error = %e, "a listing sweep step failed"),
        }
    }
}
