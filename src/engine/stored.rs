//! What a session read back from storage must be before the rules run on it
//! ([`check_stored`], [`check_stored_event`]). `create` and `apply` only
//! ever make sessions that pass, but a stored value is bytes in Redis: it
//! can be corrupt, or written by anyone who can reach the Redis server, and
//! serde checks only its types. Without this, such a value made the
//! service panic (an `active` past the participants indexed out of
//! bounds), overflow its arithmetic (times near `i64::MAX`), or spin (a
//! byo-yomi count in the billions): found by the `stored_session` fuzz
//! target (fuzz/regressions/stored_session/). The wire format runs these on
//! every state and event it decodes (wire.rs), so a bad value is an error
//! where it is read, never a panic later.
//!
//! The bounds are far beyond anything the rules make: times and clock
//! totals at most 2^60 µs (36,000 years) either side of zero, so that the
//! few of them the rules add up never overflow; counters at most 2^60;
//! the time control within what CreateSession accepts.

use super::create::{MAX_DURATION_MS, MAX_PARTICIPANTS};
use super::ids::{GroupId, ParticipantId, SessionId};
use super::model::{Event, MICROS_PER_MS, Micros, REMEMBERED_REQUESTS, Session, TimeControl};
use super::{Budget, Mode};

/// Largest magnitude of a stored instant or clock total, in µs (2^60).
const MAX_STORED_MICROS: Micros = 1 << 60;
/// Largest stored counter (versions, turns).
const MAX_COUNT: u64 = 1 << 60;
/// Largest duration of a time control, in µs (CreateSession's limit).
const MAX_CONTROL: Micros = MAX_DURATION_MS * MICROS_PER_MS;
/// Largest byo-yomi period or Canadian stone count (CreateSession's limit).
const MAX_PERIODS: u32 = 1_000;

fn within(what: &str, v: Micros, lo: Micros, hi: Micros) -> Result<(), String> {
    if (lo..=hi).contains(&v) {
        Ok(())
    } else {
        Err(format!("{what} {v} is outside {lo}..={hi}"))
    }
}

fn instant(what: &str, v: Micros) -> Result<(), String> {
    within(what, v, -MAX_STORED_MICROS, MAX_STORED_MICROS)
}

fn count(what: &str, v: u64) -> Result<(), String> {
    if v <= MAX_COUNT {
        Ok(())
    } else {
        Err(format!("{what} {v} is above {MAX_COUNT}"))
    }
}

/// An id as `parse` would have made it (serde takes any string).
fn id(e: Result<impl Sized, super::RuleError>) -> Result<(), String> {
    e.map(drop).map_err(|e| e.to_string())
}

fn check_control(tc: &TimeControl) -> Result<(), String> {
    for (what, v) in [
        ("time_control.increment", tc.increment),
        ("time_control.max_remaining", tc.max_remaining),
        ("time_control.delay", tc.delay),
        ("time_control.byoyomi_period", tc.byoyomi_period),
        ("time_control.canadian_block", tc.canadian_block),
    ] {
        within(what, v, 0, MAX_CONTROL)?;
    }
    if tc.byoyomi_periods > MAX_PERIODS || tc.canadian_stones > MAX_PERIODS {
        return Err("time_control: more than 1000 periods or stones".into());
    }
    if tc.stages.len() > 32 {
        return Err("time_control.stages: more than 32".into());
    }
    for st in &tc.stages {
        within("time_control.stages[].add", st.add, 0, MAX_CONTROL)?;
        if let Some(inc) = st.increment {
            within("time_control.stages[].increment", inc, 0, MAX_CONTROL)?;
        }
    }
    Ok(())
}

fn check_budget(what: &str, b: &Budget, tc: &TimeControl) -> Result<(), String> {
    for v in [b.initial, b.remaining, b.used, b.credits, b.turn_spent] {
        within(what, v, 0, MAX_STORED_MICROS)?;
    }
    instant(what, b.adjustments)?;
    within(what, b.period_left, 0, MAX_CONTROL)?;
    within(what, b.block_left, 0, MAX_CONTROL)?;
    if b.periods_left > tc.byoyomi_periods || b.stones_left > tc.canadian_stones {
        return Err(format!(
            "{what}: more periods or stones left than the time control has"
        ));
    }
    count(what, b.moves)
}

/// Whether `s` is a session the rules can run on (see the module doc);
/// the error says what is wrong, for a log line.
pub fn check_stored(s: &Session) -> Result<(), String> {
    id(SessionId::parse("id", s.id.as_str()))?;
    let n = s.participants.len();
    if n == 0 || n > MAX_PARTICIPANTS || s.groups.len() > MAX_PARTICIPANTS {
        return Err(format!("{n} participants and {} groups", s.groups.len()));
    }
    if s.active.is_some_and(|a| a >= n) {
        return Err(format!("active {:?} of {n} participants", s.active));
    }
    if !s.participants.windows(2).all(|w| w[0].index < w[1].index) {
        return Err("participants not sorted by index".into());
    }
    check_control(&s.time_control)?;
    let tc = &s.time_control;
    for p in &s.participants {
        id(ParticipantId::parse("participant", p.id.as_str()))?;
        check_budget("participant clock", &p.clock, tc)?;
        count("participant cycle_count", p.cycle_count)?;
        match &p.group {
            Some(g) => {
                id(GroupId::parse("participant group", g.as_str()))?;
                if s.group_position(g).is_none() {
                    return Err(format!("participant {} in unknown group {g}", p.id));
                }
            }
            None if s.mode == Mode::PerGroup => {
                return Err(format!("participant {} has no group", p.id));
            }
            None => {}
        }
    }
    for g in &s.groups {
        id(GroupId::parse("group", g.id.as_str()))?;
        check_budget("group clock", &g.clock, tc)?;
    }
    for (what, b) in [("global", &s.global), ("cycle", &s.cycle)] {
        if let Some(b) = b {
            check_budget(what, b, tc)?;
        }
    }
    for (what, v) in [
        ("cycle_time", s.cycle_time),
        ("global_time", s.global_time),
        ("max_time", s.max_time),
    ] {
        within(what, v, 0, MAX_CONTROL)?;
    }
    for (what, v) in [
        ("created_at", Some(s.created_at)),
        ("updated_at", Some(s.updated_at)),
        ("cycle_started_at", s.cycle_started_at),
        ("started_at", s.started_at),
        ("ended_at", s.ended_at),
        ("start_by", s.start_by),
    ] {
        if let Some(v) = v {
            instant(what, v)?;
        }
    }
    count("version", s.version)?;
    count("cycle_count", s.cycle_count)?;
    if s.unattended_timeouts as usize > n {
        return Err(format!(
            "unattended_timeouts {} of {n} participants",
            s.unattended_timeouts
        ));
    }
    if s.recent_requests.len() > REMEMBERED_REQUESTS {
        return Err(format!("{} remembered requests", s.recent_requests.len()));
    }
    if let Some(u) = &s.undo {
        check_undo(s, u)?;
    }
    for (what, v) in [
        ("start_timeout", s.start_timeout),
        ("first_move_timeout", s.first_move_timeout),
    ] {
        within(what, v, 0, MAX_CONTROL)?;
    }
    for p in &s.participants {
        within("lag_quota", p.lag_quota, 0, MAX_CONTROL)?;
    }
    if let Some(t) = s.turn_started_at {
        instant("turn_started_at", t)?;
    }
    Ok(())
}

/// An undo point restores clocks by position: each must be one of the
/// session's, and each clock one the rules can run on.
fn check_undo(s: &Session, u: &crate::engine::UndoPoint) -> Result<(), String> {
    let tc = &s.time_control;
    if u.mover >= s.participants.len() {
        return Err(format!(
            "undo mover {} of {}",
            u.mover,
            s.participants.len()
        ));
    }
    for (i, p) in &u.participants {
        if *i >= s.participants.len() || p.id != s.participants[*i].id {
            return Err(format!("undo participant {i} is not the session's"));
        }
        check_budget("undo participant clock", &p.clock, tc)?;
    }
    for (i, g) in &u.groups {
        if *i >= s.groups.len() || g.id != s.groups[*i].id {
            return Err(format!("undo group {i} is not the session's"));
        }
        check_budget("undo group clock", &g.clock, tc)?;
    }
    for (what, b) in [("undo global", &u.global), ("undo cycle", &u.cycle)] {
        if let Some(b) = b {
            check_budget(what, b, tc)?;
        }
    }
    if u.unattended_timeouts as usize > s.participants.len() {
        return Err("undo unattended_timeouts beyond the participants".into());
    }
    count("undo cycle_count", u.cycle_count)?;
    Ok(())
}

/// [`check_stored`] for an event's session, and its own instant and version.
pub fn check_stored_event(e: &Event) -> Result<(), String> {
    instant("at", e.at)?;
    count("version", e.version)?;
    if let Some(p) = &e.participant {
        id(ParticipantId::parse("participant", p.as_str()))?;
    }
    check_stored(&e.session)
}
