//! The key layout (SPEC §8): every key of one session carries the hash tag
//! `{b}` of its bucket `b = crc32("<tenant>/<session>") % B`, so a session's
//! commit touches one cluster slot, and so do the bucket's shared keys (its
//! deadline index, in-flight claims, audit stream and wake-up channel), and
//! so do a tenant's listing index of the bucket and its sweep position.

use super::RedisStore;
use crate::engine::{self, SessionKey};
use crate::store::ListPosition;

/// The bucket count the replicas sharing this Redis use, set by the first
/// one to start; every other replica compares its own with it.
pub const LAYOUT_KEY: &str = "sk:layout:buckets";

/// The key names of one session, formatted once (`super::recent` keeps them).
pub struct SessionKeys {
    /// `sk:{b}:s:<tenant>:<session>`: the session's state (JSON).
    pub state: String,
    /// `sk:{b}:log:<tenant>:<session>`: its event log (a stream, for replay).
    pub log: String,
    /// `sk:{b}:deadlines`: the bucket's deadline index (a ZSET of members).
    pub deadlines: String,
    /// `sk:{b}:inflight`: the bucket's claimed deadlines, with their leases.
    pub inflight: String,
    /// `sk:{b}:audit`: the bucket's audit stream.
    pub audit: String,
    /// `sk:{b}:ev:<tenant>:<session>`: its Pub/Sub channel.
    pub channel: String,
    /// `sk:{b}:wake`: the bucket's deadline wake-up channel.
    pub wake: String,
    /// `<tenant>/<session>`: its member in the deadline ZSETs.
    pub member: String,
    pub tenant: String,
}

/// `crc32("<tenant>/<session>") % buckets` (SPEC §8), without building the string.
pub fn bucket(key: &SessionKey, buckets: u32) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    crc.update(key.tenant.as_str().as_bytes());
    crc.update(b"/");
    crc.update(key.id.as_str().as_bytes());
    crc.finalize() % buckets
}

/// A deadline ZSET member, `<tenant>/<session>`, back to a key ('/' is in
/// neither alphabet).
pub fn parse_member(m: &str) -> Option<SessionKey> {
    let (t, id) = m.split_once('/')?;
    Some(SessionKey {
        tenant: engine::Tenant::parse("tenant", t).ok()?,
        id: engine::SessionId::parse("session_id", id).ok()?,
    })
}

/// `sk:{b}:list:<tenant>`: the tenant's sessions of bucket `b`, for
/// ListSessions (`super::list`): a ZSET whose scores are all 0 and whose
/// members (`list_member`) sort as the listing does.
pub fn list_key(b: u32, tenant: &engine::Tenant) -> String {
    format!("sk:{{{b}}}:list:{tenant}")
}

/// `sk:{b}:listsweep:<tenant>`: where the create-time sweep of that index
/// goes on from (`super::list`).
pub fn list_sweep_key(b: u32, tenant: &engine::Tenant) -> String {
    format!("sk:{{{b}}}:listsweep:{tenant}")
}

/// `sk:{b}:s:<tenant>:`: the tenant's state keys of bucket `b` without the
/// session id.
pub fn state_prefix(b: u32, tenant: &engine::Tenant) -> String {
    format!("sk:{{{b}}}:s:{tenant}:")
}

/// Digits of a listing member's `created_at` (µs; `u64::MAX` has 20).
pub const LIST_TIME_DIGITS: usize = 20;

/// A listing index member: `created_at` zero-padded to 20 digits, `:`, the
/// session id. Members of one tenant compare byte by byte (Redis's lex
/// order) exactly as their `(created_at, id)` do.
pub fn list_member(pos: &ListPosition) -> String {
    format!(
        "{:0width$}:{}",
        pos.created_at.max(0),
        pos.id,
        width = LIST_TIME_DIGITS
    )
}

/// A listing member back to its position (`None`: not one `list_member` makes).
pub fn parse_list_member(m: &str) -> Option<ListPosition> {
    let (time, id) = (m.get(..LIST_TIME_DIGITS)?, m.get(LIST_TIME_DIGITS..)?);
    let id = id.strip_prefix(':')?;
    if !time.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(ListPosition {
        created_at: time.parse().ok()?,
        id: engine::SessionId::parse("session_id", id).ok()?,
    })
}

/// `sk:{b}:deadlines` and `sk:{b}:inflight` of bucket `b`.
pub fn claim_keys(b: u32) -> [String; 2] {
    [
        format!("sk:{{{b}}}:deadlines"),
        format!("sk:{{{b}}}:inflight"),
    ]
}

impl RedisStore {
    /// `sk:{b}:audit` of every one of `buckets` buckets.
    pub fn audit_streams(buckets: u32) -> Vec<String> {
        (0..buckets).map(|b| format!("sk:{{{b}}}:audit")).collect()
    }

    /// `sk:{b}:ev:<tenant>:<session>`.
    pub fn channel_of(&self, key: &SessionKey) -> String {
        format!(
            "sk:{{{}}}:ev:{}:{}",
            self.bucket_of(key),
            key.tenant,
            key.id
        )
    }

    /// `sk:{*}:ev:<tenant>:*`: the Pub/Sub pattern every session channel of
    /// `tenant` matches, whatever its bucket (a replica with a WatchSessions
    /// of the tenant subscribes to it; commits publish nothing more). Ids
    /// hold no glob character (`[A-Za-z0-9._:-]`), so nothing needs escaping.
    /// Tenant names of the keys file hold no `:` either, so the pattern of
    /// tenant `a` matches no other tenant's channel; the id type allows `:`
    /// though, so a receiver still checks the channel against `channel_of`.
    pub fn watch_pattern(tenant: &crate::engine::Tenant) -> String {
        format!("sk:{{*}}:ev:{tenant}:*")
    }

    /// `sk:{b}:wake` of every bucket.
    pub fn wake_channels(&self) -> Vec<String> {
        (0..self.settings.buckets)
            .map(|b| format!("sk:{{{b}}}:wake"))
            .collect()
    }

    pub(super) fn keys(&self, key: &SessionKey) -> SessionKeys {
        let b = self.bucket_of(key);
        let (t, id) = (&key.tenant, &key.id);
        SessionKeys {
            state: format!("sk:{{{b}}}:s:{t}:{id}"),
            log: format!("sk:{{{b}}}:log:{t}:{id}"),
            deadlines: format!("sk:{{{b}}}:deadlines"),
            inflight: format!("sk:{{{b}}}:inflight"),
            audit: format!("sk:{{{b}}}:audit"),
            channel: format!("sk:{{{b}}}:ev:{t}:{id}"),
            wake: format!("sk:{{{b}}}:wake"),
            member: format!("{t}/{id}"),
            tenant: t.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::SessionId;

    #[test]
    fn a_session_s_bucket_is_the_crc32_of_tenant_slash_id() {
        let key = SessionKey {
            tenant: engine::Tenant::default_tenant(),
            id: SessionId::parse("id", "game-42").unwrap(),
        };
        // crc32("default/game-42"), as SPEC §8 spells the bucket.
        let crc = crc32fast::hash(b"default/game-42");
        for buckets in [1, 16, 1024, 65_521] {
            assert_eq!(bucket(&key, buckets), crc % buckets);
        }
        assert_ne!(
            bucket(&key, 1024),
            0,
            "a bucket other than 0, so a wrong hash shows"
        );
    }

    #[test]
    fn listing_members_sort_as_their_positions_and_parse_back() {
        let pos = |t: i64, id: &str| ListPosition {
            created_at: t,
            id: SessionId::parse("id", id).unwrap(),
        };
        let mut all = vec![
            pos(9, "b"),
            pos(10, "a"),
            pos(10, "a:b"),
            pos(10, "b"),
            pos(1_800_000_000_000_000, "Z"),
            pos(i64::MAX, "x"),
        ];
        all.sort();
        let members: Vec<String> = all.iter().map(list_member).collect();
        let mut sorted = members.clone();
        sorted.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        assert_eq!(members, sorted, "byte order is the positions' order");
        for (m, p) in members.iter().zip(&all) {
            assert_eq!(parse_list_member(m).as_ref(), Some(p), "{m}");
        }
        for bad in [
            "",
            "12",
            "0000000000000000001x:a",
            "00000000000000000010a",
            "00000000000000000010:",
            "+0000000000000000010:a",
            "00000000000000000010:a/b",
        ] {
            assert_eq!(parse_list_member(bad), None, "{bad:?}");
        }
    }
}
