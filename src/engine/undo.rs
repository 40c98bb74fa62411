//! UndoSwitch: a switch taken back exactly. At each switch the engine keeps
//! an [`UndoPoint`]: the clocks as they stood at that instant, charged up to
//! it and before the switch credited anything (increment, delay credit,
//! stage time, lag compensation, a fresh cycle). Undoing puts them back:
//! the mover has the turn again with the clock it had when it switched, the
//! participant it switched to has its own as it was then (the time that ran
//! on it since is given back), and the mover's clock runs from the undo.
//!
//! Only the last switch, and only while nothing but pauses and resumes came
//! after it: apply.rs drops the point at any other change (an AdjustTime, a
//! timeout, a completion...), and the undo drops it too (one level).

use super::RuleError;
use super::apply::{Owner, Tx, owner_of};
use super::model::{EventKind, Session, Status, UndoPoint};

/// The point to keep for a switch of the mover at `mover` to `next`, read
/// from `s` charged up to the switch instant.
pub(super) fn point(s: &Session, mover: usize, next: Option<usize>) -> UndoPoint {
    // Who the switch and the turn after it can change: the mover and the
    // next, and under hourglass every clock (the next's time is given to
    // all the others).
    let mut positions: Vec<usize> = if s.time_control.hourglass {
        (0..s.participants.len()).collect()
    } else {
        let mut p = vec![mover];
        p.extend(next.filter(|&n| n != mover));
        p
    };
    positions.sort_unstable();
    let mut groups: Vec<usize> = if s.time_control.hourglass {
        (0..s.groups.len()).collect()
    } else {
        positions
            .iter()
            .filter_map(|&p| match owner_of(s, p) {
                Owner::Group(g) => Some(g),
                _ => None,
            })
            .collect()
    };
    groups.sort_unstable();
    groups.dedup();
    UndoPoint {
        mover,
        participants: positions
            .into_iter()
            .map(|i| (i, s.participants[i].clone()))
            .collect(),
        groups: groups
            .into_iter()
            .map(|i| (i, s.groups[i].clone()))
            .collect(),
        cycle: s.cycle.clone(),
        global: s.global.clone(),
        cycle_count: s.cycle_count,
        unattended_timeouts: s.unattended_timeouts,
    }
}

impl Tx {
    pub(super) fn undo(&mut self) -> Result<(), RuleError> {
        self.require_status(&[Status::Running, Status::Paused], "undo a switch of")?;
        let Some(point) = self.s.undo.take() else {
            return Err(RuleError::FailedPrecondition(
                "no switch to undo: the last change of the turn was not a switch".into(),
            ));
        };
        let point = *point;
        for (i, p) in point.participants {
            if let Some(slot) = self.s.participants.get_mut(i) {
                *slot = p;
            }
        }
        for (i, g) in point.groups {
            if let Some(slot) = self.s.groups.get_mut(i) {
                *slot = g;
            }
        }
        self.s.cycle = point.cycle;
        self.s.global = point.global;
        self.s.cycle_count = point.cycle_count;
        self.s.unattended_timeouts = point.unattended_timeouts;
        self.s.active = Some(point.mover);
        self.s.turn_started_at = Some(self.now);
        self.s.cycle_started_at = (self.s.status == Status::Running).then_some(self.now);
        let who = self.id_of(point.mover);
        self.emit(EventKind::Undone, Some(who));
        Ok(())
    }
}
