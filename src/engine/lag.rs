//! Lag compensation (opt-in per session, `Session::lag_compensation`), as
//! lichess's scalachess `LagTracker` does it: each participant has a quota
//! of compensation; a move's reported lag is compensated up to the quota,
//! and every move earns `gain` back, up to a maximum.
//!
//! - `gain = min(1000 ms, estimated_total / 250 + 150 ms)`, where
//!   `estimated_total = initial + 40 × increment` of the mover's clock (its
//!   own, or its group's); scalachess writes it in centiseconds as
//!   `min(100, seconds × 2/5 + 15)`;
//! - the quota starts at `3 × gain` and is at most `7 × gain`;
//! - on each move `comp = min(lag, quota)` and
//!   `quota = min(quota + gain − comp, 7 × gain)`.
//!
//! The compensation is taken off the turn's time (scalachess: `moveTime =
//! elapsed − comp`, never below 0): the clock is charged up to `now − comp`.
//! A switch that arrives after its mover's flag is judged by the clock
//! first (apply.rs settles before the command): compensation never rescues
//! a flag the server already passed.

use super::apply::{Owner, budget, owner_of};
use super::model::{Micros, Session};

/// The largest `lag_ms` a SwitchCycle may report: a minute.
pub const MAX_LAG_MS: i64 = 60_000;

/// Most compensation one move earns back.
const MAX_GAIN: Micros = 1_000_000;

/// What one move earns back for a clock of `initial` with `increment`.
pub fn gain(initial: Micros, increment: Micros) -> Micros {
    let estimated_total = initial.saturating_add(increment.saturating_mul(40));
    (estimated_total / 250 + 150_000).min(MAX_GAIN)
}

/// The gain of the participant at `pos`: from its clock's starting budget.
fn gain_of(s: &Session, pos: usize) -> Micros {
    let initial = match owner_of(s, pos) {
        owner @ Owner::Group(_) => budget(s, owner).map_or(0, |b| b.initial),
        _ => s.participants[pos].clock.initial,
    };
    gain(initial, s.time_control.increment)
}

/// Gives every participant its starting quota, `3 × gain`.
pub(super) fn arm_quotas(s: &mut Session) {
    for pos in 0..s.participants.len() {
        let quota = gain_of(s, pos).saturating_mul(3);
        s.participants[pos].lag_quota = quota;
    }
}

/// The participant at `pos` reports `lag` for its move: the compensation it
/// gets, its quota moved on.
pub(super) fn compensate(s: &mut Session, pos: usize, lag: Micros) -> Micros {
    let gain = gain_of(s, pos);
    let p = &mut s.participants[pos];
    let comp = lag.clamp(0, p.lag_quota.max(0));
    p.lag_quota = (p.lag_quota + gain - comp).min(gain.saturating_mul(7));
    comp
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    /// Lichess's figures (scalachess `LagTracker`): gain, start, max.
    #[test]
    fn the_gain_matches_lichess_for_its_time_controls() {
        // ¼+0: 15 s -> 6 + 15 = 21 cs.
        assert_eq!(gain(15 * S, 0), 210_000);
        assert_eq!(gain(15 * S, 0) * 3, 630_000);
        assert_eq!(gain(15 * S, 0) * 7, 1_470_000);
        // 1+0: 60 s -> 24 + 15 = 39 cs.
        assert_eq!(gain(60 * S, 0), 390_000);
        // 3+0: 180 s -> 72 + 15 = 87 cs.
        assert_eq!(gain(180 * S, 0), 870_000);
        // 3+2: 180 + 80 = 260 s -> 104 + 15, capped at 100 cs.
        assert_eq!(gain(180 * S, 2 * S), 1_000_000);
        assert_eq!(gain(600 * S, 5 * S), 1_000_000);
        assert_eq!(gain(90 * 60 * S, 30 * S), 1_000_000);
    }
}
