//! A commit whose `EXEC` went out but whose answer never came back (the
//! connection broke, or Redis did not answer in time) may have committed.
//! Before it answers, the commit reads back, on another connection, the
//! states it wrote (`readback.lua`, which also makes sure that EXEC can no
//! longer run later) and judges each against what it read and wrote:
//!
//! - the state is the bytes this commit wrote: it committed (the MULTI
//!   published its events and wake-ups itself);
//! - the state is what the commit read, or of the same epoch at no later
//!   version than the one this commit wrote (another writer's): it did not
//!   commit, and, the plan being pure, the commit may run again;
//! - anything else (the session gone or recreated, or moved past this
//!   commit's version), or the read-back itself failing: unknown.
//!
//! One MULTI commits all its sessions or none, so one session's answer is
//! the commit's. Only the rare lost answer pays for this; a commit that got
//! its answer reads nothing more.

use tracing::warn;

use super::RedisStore;
use super::keys::SessionKeys;
use super::pool::exchange;
use super::recent::{Remembered, Written};
use crate::engine::Session;
use crate::store::StoreError;

/// What a commit whose answer was lost wrote to one session.
struct Sent<'a> {
    pub state_key: &'a str,
    /// The state it read (`None`: no such session).
    pub read: Option<&'a [u8]>,
    /// The state it wrote (`None`: it deleted the session).
    pub wrote: Option<&'a Written>,
}

/// Whether a commit whose answer was lost committed.
#[derive(Debug, PartialEq)]
pub enum Landed {
    Yes,
    No,
    /// Why it cannot be told.
    Unknown(String),
}

/// The readback script, loaded into Redis on first use.
pub(super) fn readback_script() -> redis::Script {
    redis::Script::new(include_str!("readback.lua"))
}

impl RedisStore {
    /// Whether a commit whose answer was lost (`error`) landed: what it read
    /// of `sessions` (`raws`) and what it wrote (`stored`: `None` where it
    /// wrote nothing, `Some(None)` where it deleted), against the states now.
    pub(super) async fn landed(
        &self,
        sessions: &[Remembered<SessionKeys>],
        raws: &[Option<Vec<u8>>],
        stored: &[Option<Option<Written>>],
        error: &StoreError,
    ) -> Landed {
        let sent: Vec<Sent<'_>> = sessions
            .iter()
            .zip(raws)
            .zip(stored)
            .filter_map(|((s, read), state)| {
                Some(Sent {
                    state_key: &s.keys.state,
                    read: read.as_deref(),
                    wrote: state.as_ref()?.as_ref(),
                })
            })
            .collect();
        let landed = self.read_back(&sent).await;
        warn!(%error, ?landed, "a commit's EXEC answer was lost; read back");
        landed
    }

    /// Reads back the states `sent` names and judges whether the commit landed.
    async fn read_back(&self, sent: &[Sent<'_>]) -> Landed {
        let keys: Vec<String> = sent.iter().map(|s| s.state_key.to_owned()).collect();
        let now = self
            .read(|c| {
                let (script, keys) = (self.readback.clone(), keys.clone());
                Box::pin(exchange(c, async move |c| {
                    let mut invocation = script.prepare_invoke();
                    for key in &keys {
                        invocation.key(key);
                    }
                    invocation.invoke_async::<Vec<Option<Vec<u8>>>>(c).await
                }))
            })
            .await;
        match now {
            Ok(now) if now.len() == sent.len() => judge(sent, &now),
            Ok(now) => Landed::Unknown(format!(
                "the read-back answered {} states for {}",
                now.len(),
                sent.len()
            )),
            Err(e) => Landed::Unknown(format!("the read-back failed: {e}")),
        }
    }
}

/// The commit's outcome from its sessions' states now: landed if any is what
/// it wrote, not if any shows it did not, else unknown.
fn judge(sent: &[Sent<'_>], now: &[Option<Vec<u8>>]) -> Landed {
    let verdicts: Vec<Option<bool>> = sent
        .iter()
        .zip(now)
        .map(|(s, now)| judge_one(s, now.as_deref()))
        .collect();
    if verdicts.contains(&Some(true)) {
        Landed::Yes
    } else if verdicts.contains(&Some(false)) {
        Landed::No
    } else {
        Landed::Unknown("the states moved on since".into())
    }
}

/// Whether one session's state `now` shows that the commit landed.
fn judge_one(sent: &Sent<'_>, now: Option<&[u8]>) -> Option<bool> {
    match (sent.wrote, now) {
        (Some(w), Some(now)) if w.bytes == now => Some(true),
        (None, None) => Some(true),
        (_, now) if now == sent.read => Some(false),
        (_, None) => None,
        (wrote, Some(now)) => {
            let now: Session = super::decode(now).ok()?;
            // Versions only grow within an epoch: this commit's version (or
            // an earlier one) held by another write means this one never ran.
            let (epoch, version) = match wrote {
                Some(w) => (w.session.epoch.clone(), w.session.version),
                // A deleted session never comes back under its epoch.
                None => {
                    let read: Session = super::decode(sent.read?).ok()?;
                    (read.epoch, u64::MAX)
                }
            };
            (now.epoch == epoch && now.version <= version).then_some(false)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{self, Mode, NewParticipant, NewSession, ParticipantId, SessionId};
    use crate::wire;

    fn session(version: u64, epoch: &str) -> Session {
        let p = |id: &str| NewParticipant::named(ParticipantId::parse("p", id).unwrap());
        let mut new = NewSession::new(
            SessionId::parse("id", "s").unwrap(),
            Mode::PerParticipant,
            vec![p("a"), p("b")],
        );
        new.initial_time_ms = 60_000;
        new.epoch = epoch.into();
        let (mut s, _) = engine::create(new, 1_000).unwrap();
        s.version = version;
        s
    }

    fn written(s: &Session) -> Written {
        Written {
            bytes: wire::encode_state(s).into_bytes(),
            session: s.clone(),
        }
    }

    fn verdict(
        read: Option<&Session>,
        wrote: Option<&Written>,
        now: Option<&Session>,
    ) -> Option<bool> {
        let read = read.map(|s| wire::encode_state(s).into_bytes());
        let now = now.map(|s| wire::encode_state(s).into_bytes());
        let sent = Sent {
            state_key: "k",
            read: read.as_deref(),
            wrote,
        };
        judge_one(&sent, now.as_deref())
    }

    #[test]
    fn a_state_tells_whether_the_commit_that_wrote_it_landed() {
        let (v2, v3) = (session(2, "e"), session(3, "e"));
        let mut theirs_v3 = v3.clone();
        theirs_v3.updated_at += 1;
        let (v4, other_epoch) = (session(4, "e"), session(1, "f"));
        let ours = written(&v3);
        // An update from v2 to v3.
        assert_eq!(verdict(Some(&v2), Some(&ours), Some(&v3)), Some(true));
        assert_eq!(verdict(Some(&v2), Some(&ours), Some(&v2)), Some(false));
        assert_eq!(
            verdict(Some(&v2), Some(&ours), Some(&theirs_v3)),
            Some(false)
        );
        assert_eq!(verdict(Some(&v2), Some(&ours), Some(&v4)), None);
        assert_eq!(verdict(Some(&v2), Some(&ours), None), None);
        assert_eq!(verdict(Some(&v2), Some(&ours), Some(&other_epoch)), None);
        // A create.
        let created = written(&session(1, "e"));
        assert_eq!(
            verdict(None, Some(&created), Some(&session(1, "e"))),
            Some(true)
        );
        assert_eq!(verdict(None, Some(&created), None), Some(false));
        assert_eq!(verdict(None, Some(&created), Some(&other_epoch)), None);
        // A delete of v2.
        assert_eq!(verdict(Some(&v2), None, None), Some(true));
        assert_eq!(verdict(Some(&v2), None, Some(&v2)), Some(false));
        assert_eq!(verdict(Some(&v2), None, Some(&v4)), Some(false));
        assert_eq!(verdict(Some(&v2), None, Some(&other_epoch)), None);
    }

    #[test]
    fn one_session_that_tells_decides_for_the_whole_commit() {
        let (v2, v3) = (session(2, "e"), session(3, "e"));
        let ours = written(&v3);
        let read = wire::encode_state(&v2).into_bytes();
        let sent = |n| {
            (0..n)
                .map(|_| Sent {
                    state_key: "k",
                    read: Some(&read),
                    wrote: Some(&ours),
                })
                .collect::<Vec<_>>()
        };
        let (landed, unchanged, moved) = (
            Some(ours.bytes.clone()),
            Some(read.clone()),
            Some(wire::encode_state(&session(9, "e")).into_bytes()),
        );
        assert_eq!(judge(&sent(2), &[moved.clone(), landed]), Landed::Yes);
        assert_eq!(judge(&sent(2), &[moved.clone(), unchanged]), Landed::No);
        assert!(matches!(
            judge(&sent(2), &[moved.clone(), moved]),
            Landed::Unknown(_)
        ));
    }
}
