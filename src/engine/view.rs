//! What a session shows at an instant, without making a new version: the
//! session with its running stretch charged up to `now` ([`view`]), one
//! participant's clock read from it ([`participant_view`]), and the DELETED
//! event that ends a session's stream. Replies and streams are computed from
//! these at their `server_time`.

use super::apply::{Owner, Tx, budget, flag_at, owner_of};
use super::model::{Event, EventKind, Micros, Mode, Session};

/// The session with its running stretch charged up to `now` (never past the
/// deadline): what every computed value of a reply is read from. A view, not
/// a new version.
pub fn view(s: &Session, now: Micros) -> Session {
    let mut tx = Tx {
        s: s.clone(),
        now,
        events: Vec::new(),
    };
    let until = flag_at(s).map_or(now, |d| d.min(now));
    tx.checkpoint(until);
    tx.s
}

/// What a participant's clock shows, read from a [`view`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClockView {
    pub remaining: Micros,
    pub used: Micros,
    pub in_overtime: bool,
    pub periods_left: u32,
    pub stones_left: u32,
}

/// A participant's clock in a [`view`]: its own, its group's, the cycle's or
/// the global one, with its own used time.
pub fn participant_view(v: &Session, pos: usize) -> ClockView {
    let p = &v.participants[pos];
    let tc = &v.time_control;
    let clock = match owner_of(v, pos) {
        // Only the active participant has a cycle; the others would get a fresh one.
        Owner::Cycle if v.active != Some(pos) => None,
        owner => budget(v, owner),
    };
    let remaining = match (v.mode, clock) {
        (Mode::PerCycle, None) => v.cycle_time,
        (_, Some(b)) => b.shown_remaining(tc),
        (_, None) => 0,
    };
    let owned = clock.unwrap_or(&p.clock);
    ClockView {
        remaining,
        used: p.clock.used,
        in_overtime: owned.in_overtime(tc),
        periods_left: if tc.byoyomi_periods > 0 {
            owned.periods_left
        } else {
            0
        },
        stones_left: if tc.canadian_stones > 0 {
            owned.stones_left
        } else {
            0
        },
    }
}

/// A participant's `(remaining, used)` at `now`.
pub fn participant_clock(s: &Session, pos: usize, now: Micros) -> (Micros, Micros) {
    let c = participant_view(&view(s, now), pos);
    (c.remaining, c.used)
}

/// The DELETED event that ends a session's stream: one version past the last.
pub fn deleted_event(s: &Session, now: Micros) -> Event {
    let mut session = s.clone();
    session.version += 1;
    session.updated_at = now.max(s.updated_at);
    Event {
        version: session.version,
        kind: EventKind::Deleted,
        participant: None,
        at: session.updated_at,
        session,
        lag: None,
    }
}
