//! A `Budget` is one clock: a participant's, a group's, the global one or the
//! current cycle's. It knows how to run for a stretch under a time control
//! (`consume`), how long it can run before it flags (`time_to_flag`), and how
//! a completed turn credits it (`end_turn`) — SPEC §4.
//!
//! Ledger: `initial + credits + adjustments - used == remaining` always holds
//! for a bounded budget, where `remaining` is the *main* time. Time spent in
//! a free delay or in overtime (byo-yomi periods, Canadian blocks) is used
//! wall time that does not come off the main time, so it is booked as a
//! credit at the moment it is spent.

use serde::{Deserialize, Serialize};

use super::model::{DelayKind, Micros, TimeControl};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Budget {
    /// False for a stopwatch with no limit (count-up without a cap, or
    /// time accounting of a participant whose clock is not its own).
    #[serde(default, skip_serializing_if = "super::model::is_false")]
    pub bounded: bool,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub initial: Micros,
    /// Main time left, as of the last charge.
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub remaining: Micros,
    /// Wall time charged to this clock.
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub used: Micros,
    /// Increments, delay credits, stage additions, overtime spent.
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub credits: Micros,
    /// AdjustTime deltas as applied (after the floor at 0).
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub adjustments: Micros,
    /// Byo-yomi periods not yet used up (the current one included).
    #[serde(default, skip_serializing_if = "super::model::is_zero_u32")]
    pub periods_left: u32,
    /// Time left in the current byo-yomi period.
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub period_left: Micros,
    /// Canadian: moves still to play in the current block.
    #[serde(default, skip_serializing_if = "super::model::is_zero_u32")]
    pub stones_left: u32,
    /// Canadian: time left in the current block.
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub block_left: Micros,
    /// Time of the current turn already charged (delays, Bronstein credit).
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub turn_spent: Micros,
    /// Turns completed by this clock's owner (stages count these).
    #[serde(default, skip_serializing_if = "super::model::is_zero_u64")]
    pub moves: u64,
    /// Flagged: this clock ran out.
    #[serde(default, skip_serializing_if = "super::model::is_false")]
    pub expired: bool,
}

impl Budget {
    /// A clock with `initial` main time under `tc`.
    pub fn new(initial: Micros, tc: &TimeControl) -> Self {
        Budget {
            bounded: true,
            initial,
            remaining: initial,
            periods_left: tc.byoyomi_periods,
            period_left: if tc.byoyomi_periods > 0 {
                tc.byoyomi_period
            } else {
                0
            },
            stones_left: tc.canadian_stones,
            block_left: if tc.canadian_stones > 0 {
                tc.canadian_block
            } else {
                0
            },
            ..Budget::default()
        }
    }

    /// A stopwatch with no limit: only `used` moves.
    pub fn unbounded() -> Self {
        Budget::default()
    }

    /// Whether the main time is spent and overtime runs.
    pub fn in_overtime(&self, tc: &TimeControl) -> bool {
        self.bounded
            && !self.expired
            && self.remaining == 0
            && (tc.byoyomi_periods > 0 || tc.canadian_stones > 0)
    }

    /// Free delay left in this turn (simple/US delay only).
    fn free_delay(&self, tc: &TimeControl) -> Micros {
        match tc.delay_kind {
            Some(DelayKind::Simple) => (tc.delay - self.turn_spent).max(0),
            _ => 0,
        }
    }

    /// How long this clock can run from its last charge before it flags;
    /// `None` for an unbounded or already flagged clock.
    pub fn time_to_flag(&self, tc: &TimeControl) -> Option<Micros> {
        if !self.bounded || self.expired {
            return None;
        }
        let overtime = if tc.byoyomi_periods > 0 {
            if self.periods_left == 0 {
                0
            } else {
                self.period_left + (self.periods_left as Micros - 1) * tc.byoyomi_period
            }
        } else if tc.canadian_stones > 0 {
            self.block_left
        } else {
            0
        };
        Some(self.free_delay(tc) + self.remaining + overtime)
    }

    /// Runs the clock for `e` (clamped to what is left); returns the time
    /// actually charged. At the end of it the clock may sit at zero: the
    /// caller decides what flagging means.
    pub fn consume(&mut self, e: Micros, tc: &TimeControl) -> Micros {
        let e = match self.time_to_flag(tc) {
            Some(limit) => e.clamp(0, limit),
            None if self.expired => 0,
            None => e.max(0),
        };
        self.used += e;
        if !self.bounded {
            self.turn_spent += e;
            return e;
        }
        // A simple delay's free time is spent first, off no budget.
        let free = e.min(self.free_delay(tc));
        self.turn_spent += e;
        self.credits += free;
        let rest = e - free;
        let from_main = rest.min(self.remaining);
        self.remaining -= from_main;
        let mut over = rest - from_main;
        // Overtime time is spent wall time that does not come off the main time.
        self.credits += over;
        if tc.byoyomi_periods > 0 {
            while over > 0 && self.periods_left > 0 {
                let take = over.min(self.period_left);
                self.period_left -= take;
                over -= take;
                if self.period_left == 0 {
                    self.periods_left -= 1;
                    self.period_left = if self.periods_left > 0 {
                        tc.byoyomi_period
                    } else {
                        0
                    };
                }
            }
        } else if tc.canadian_stones > 0 {
            self.block_left -= over.min(self.block_left);
        }
        e
    }

    /// Whether the clock has nothing left (it flags).
    pub fn is_out(&self, tc: &TimeControl) -> bool {
        self.time_to_flag(tc) == Some(0)
    }

    /// The owner completed a turn (and did not flag on it): apply the
    /// per-move credits of the time control.
    pub fn end_turn(&mut self, tc: &TimeControl) {
        let in_overtime = self.in_overtime(tc);
        self.moves += 1;
        if self.bounded && !self.expired {
            // Stage in force for this move: the last one begun before it.
            let increment = tc
                .stages
                .iter()
                .filter(|s| (s.after_cycles as u64) < self.moves)
                .filter_map(|s| s.increment)
                .next_back()
                .unwrap_or(tc.increment);
            let mut credit = increment;
            if tc.max_remaining > 0 {
                credit = credit.min((tc.max_remaining - self.remaining).max(0));
            }
            if tc.delay_kind == Some(DelayKind::Bronstein) {
                credit += self.turn_spent.min(tc.delay);
            }
            for stage in tc
                .stages
                .iter()
                .filter(|s| s.after_cycles as u64 == self.moves)
            {
                credit += stage.add;
            }
            self.remaining += credit;
            self.credits += credit;
            if tc.byoyomi_periods > 0 && self.periods_left > 0 {
                self.period_left = tc.byoyomi_period;
            }
            if tc.canadian_stones > 0 && in_overtime {
                self.stones_left = self.stones_left.saturating_sub(1);
                if self.stones_left == 0 {
                    self.stones_left = tc.canadian_stones;
                    self.block_left = tc.canadian_block;
                }
            }
        }
        self.turn_spent = 0;
    }

    /// Adds (or takes) main time, never below 0; returns the delta applied.
    pub fn adjust(&mut self, delta: Micros) -> Micros {
        let new = self.remaining.saturating_add(delta).max(0);
        let applied = new - self.remaining;
        self.remaining = new;
        self.adjustments += applied;
        applied
    }

    /// Takes the rest of the main time and overtime to zero: the clock flagged.
    pub fn flag(&mut self, tc: &TimeControl) {
        if let Some(left) = self.time_to_flag(tc) {
            self.consume(left, tc);
        }
        self.expired = true;
    }

    /// Gives `e` of the mover's spent time to this clock (hourglass).
    pub fn receive(&mut self, e: Micros) {
        self.remaining += e;
        self.credits += e;
    }

    /// The time shown as `remaining_ms`: main time (a simple delay's free
    /// time is not shown in it), or the current byo-yomi period / Canadian
    /// block while in overtime.
    pub fn shown_remaining(&self, tc: &TimeControl) -> Micros {
        if !self.bounded {
            return 0;
        }
        if self.in_overtime(tc) {
            return if tc.byoyomi_periods > 0 {
                self.period_left
            } else {
                self.block_left
            };
        }
        self.remaining
    }
}
