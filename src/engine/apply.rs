//! `apply(session, request, now)`: the status machine (SPEC §2), the switch
//! (§3), and running out of time (§5). Pure: the same inputs give the same
//! outputs, so a store may retry it after a write conflict.
//!
//! Every applied command first *settles* the clock: a deadline that passed
//! before `now` is processed at the deadline instant, exactly as the timer
//! would have. So a switch that arrives late is judged by the clock and never
//! rescues a flagged participant.

use super::ids::{ParticipantId, RequestId};
use super::model::{Event, EventKind, Micros, Participant, Session, Status, TimeoutAction};
use super::RuleError;

/// Who an AdjustTime is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdjustTarget {
    Participant(ParticipantId),
    Group(super::ids::GroupId),
}

/// A mutation of an existing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Start { first: Option<ParticipantId> },
    Switch { from: Option<ParticipantId>, next: Option<ParticipantId> },
    Pause,
    Resume,
    Complete,
    Cancel,
    Adjust { target: AdjustTarget, delta_ms: i64 },
    /// Sent by the timers: process the deadline if it has passed.
    Timeout,
}

/// A command with its concurrency and idempotency guards.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub command: Command,
    pub expected_version: Option<u64>,
    pub request_id: Option<RequestId>,
}

impl Request {
    pub fn new(command: Command) -> Self {
        Self { command, expected_version: None, request_id: None }
    }
}

/// The result of an applied request: the session after it and one event per
/// new version (empty when nothing changed, e.g. a repeated `request_id`).
#[derive(Clone, Debug)]
pub struct Applied {
    pub session: Session,
    pub events: Vec<Event>,
}

/// Largest |delta_ms| AdjustTime accepts: 30 days.
const MAX_ADJUST_MS: i64 = super::create::MAX_DURATION_MS;

/// When the running clock reaches zero, if a clock runs.
pub fn deadline(s: &Session) -> Option<Micros> {
    if s.status != Status::Running {
        return None;
    }
    let started = s.cycle_started_at?;
    let p = s.active_participant()?;
    if p.expired {
        return None;
    }
    Some(started.saturating_add(p.remaining))
}

/// The DELETED event that ends a session's stream: one version past the last.
pub fn deleted_event(s: &Session, now: Micros) -> Event {
    let mut session = s.clone();
    session.version += 1;
    session.updated_at = now.max(s.updated_at);
    Event { version: session.version, kind: EventKind::Deleted, participant: None, at: session.updated_at, session }
}

/// A participant's `(remaining, used)` at `now`: the running stretch is
/// charged on the fly, never past zero.
pub fn participant_clock(s: &Session, pos: usize, now: Micros) -> (Micros, Micros) {
    let p = &s.participants[pos];
    match (s.status, s.active, s.cycle_started_at) {
        (Status::Running, Some(a), Some(started)) if a == pos && !p.expired => {
            let e = (now - started).clamp(0, p.remaining);
            (p.remaining - e, p.used + e)
        }
        _ => (p.remaining, p.used),
    }
}

pub fn apply(s: &Session, req: &Request, now: Micros) -> Result<Applied, RuleError> {
    if let Some(rid) = &req.request_id {
        if s.has_applied(rid.as_str()) {
            return Ok(Applied { session: s.clone(), events: Vec::new() });
        }
    }
    if let Some(expected) = req.expected_version {
        if expected != s.version {
            return Err(RuleError::VersionMismatch { expected, actual: s.version });
        }
    }
    // Time never runs backwards inside one session, whatever the caller's clock says.
    let now = now.max(s.updated_at);
    let mut tx = Tx { s: s.clone(), now, events: Vec::new() };
    let mover_before = s.active;
    tx.settle();
    let settled = !tx.events.is_empty();
    // After a flag the switch still applies only where the flagged mover keeps
    // the turn (NOTIFY); otherwise the session ended or already moved on.
    let turn_moved_on = settled && !(tx.s.status == Status::Running && tx.s.active == mover_before);
    match &req.command {
        Command::Timeout if !settled => return Err(RuleError::NotDue),
        Command::Timeout => {}
        // Judged by the clock: the mover flagged before this switch arrived.
        Command::Switch { .. } if turn_moved_on => {}
        Command::Switch { from, next } => tx.switch(from.as_ref(), next.as_ref())?,
        Command::Start { first } => tx.start(first.as_ref())?,
        Command::Pause => tx.pause()?,
        Command::Resume => tx.resume()?,
        Command::Complete => tx.finish(Status::Completed, EventKind::Completed)?,
        Command::Cancel => tx.finish(Status::Cancelled, EventKind::Cancelled)?,
        Command::Adjust { target, delta_ms } => tx.adjust(target, *delta_ms)?,
    }
    tx.settle();
    if let Some(rid) = &req.request_id {
        tx.s.remember_request(rid.as_str());
        // The remembered id rides on the last event's snapshot too, so a
        // replayed snapshot and the stored session agree.
        if let Some(last) = tx.events.last_mut() {
            last.session.recent_requests = tx.s.recent_requests.clone();
        }
    }
    Ok(Applied { session: tx.s, events: tx.events })
}

/// One application in progress: the session being changed and its new events.
struct Tx {
    s: Session,
    now: Micros,
    events: Vec<Event>,
}

impl Tx {
    fn emit(&mut self, kind: EventKind, participant: Option<ParticipantId>) {
        self.s.version += 1;
        self.s.updated_at = self.now;
        self.events.push(Event {
            version: self.s.version,
            kind,
            participant,
            at: self.now,
            session: self.s.clone(),
        });
    }

    fn require_status(&self, allowed: &[Status], action: &str) -> Result<(), RuleError> {
        if allowed.contains(&self.s.status) {
            return Ok(());
        }
        Err(RuleError::FailedPrecondition(format!(
            "cannot {action} a session that is {}",
            self.s.status.name()
        )))
    }

    fn participant_arg(&self, field: &str, id: &ParticipantId) -> Result<usize, RuleError> {
        self.s
            .participant_position(id)
            .ok_or_else(|| RuleError::invalid(field, format!("no participant {:?} in this session", id.as_str())))
    }

    /// Processes every deadline that passed at or before `now`, each at its own instant.
    fn settle(&mut self) {
        while let Some(due) = deadline(&self.s).filter(|d| *d <= self.now) {
            self.time_out(due);
        }
    }

    /// Charges the active participant's running stretch up to `at`.
    fn charge_running(&mut self, at: Micros) -> Micros {
        let (Some(pos), Some(started)) = (self.s.active, self.s.cycle_started_at) else {
            return 0;
        };
        let p = &mut self.s.participants[pos];
        if p.expired || self.s.status != Status::Running {
            return 0;
        }
        let e = (at - started).clamp(0, p.remaining);
        p.used += e;
        p.remaining -= e;
        e
    }

    /// The running clock reached zero at `at` (SPEC §5).
    fn time_out(&mut self, at: Micros) {
        self.charge_running(at);
        let Some(pos) = self.s.active else { return };
        let who = self.s.participants[pos].id.clone();
        self.s.participants[pos].expired = true;
        match self.s.timeout_action {
            TimeoutAction::EndSession => self.end_by_time(at, who),
            TimeoutAction::Notify => {
                // The session runs on with this clock at 0 until the caller acts.
                self.emit(EventKind::ParticipantExpired, Some(who));
            }
            TimeoutAction::Skip => {
                self.s.participants[pos].cycle_count += 1;
                self.s.cycle_count += 1;
                let eligible = self.s.participants.iter().filter(|p| !p.expired).count();
                match self.next_eligible_after(pos) {
                    Some(next) if eligible >= 2 => {
                        self.s.active = Some(next);
                        self.s.cycle_started_at = Some(at);
                        self.emit(EventKind::ParticipantExpired, Some(who));
                    }
                    _ => self.end_by_time(at, who),
                }
            }
        }
    }

    fn end_by_time(&mut self, at: Micros, who: ParticipantId) {
        self.s.status = Status::Expired;
        self.s.ended_at = Some(at);
        self.s.cycle_started_at = None;
        self.emit(EventKind::Expired, Some(who));
    }

    /// The next participant by index after `pos`, wrapping, skipping expired
    /// ones; `pos` itself comes last (a one-player session switches to itself).
    fn next_eligible_after(&self, pos: usize) -> Option<usize> {
        let n = self.s.participants.len();
        (1..=n).map(|k| (pos + k) % n).find(|&i| !self.s.participants[i].expired)
    }

    fn start(&mut self, first: Option<&ParticipantId>) -> Result<(), RuleError> {
        self.require_status(&[Status::Pending], "start")?;
        let pos = match first {
            Some(id) => self.participant_arg("first_participant_id", id)?,
            None => 0,
        };
        self.s.status = Status::Running;
        self.s.active = Some(pos);
        self.s.cycle_started_at = Some(self.now);
        self.s.started_at = Some(self.now);
        let who = self.s.participants[pos].id.clone();
        self.emit(EventKind::Started, Some(who));
        Ok(())
    }

    fn switch(&mut self, from: Option<&ParticipantId>, next: Option<&ParticipantId>) -> Result<(), RuleError> {
        self.require_status(&[Status::Running], "switch the cycle of")?;
        let Some(mover) = self.s.active else {
            return Err(RuleError::FailedPrecondition("no participant is active".into()));
        };
        let mover_id = self.s.participants[mover].id.clone();
        if let Some(from) = from {
            if *from != mover_id {
                return Err(RuleError::FailedPrecondition(format!(
                    "from_participant_id {:?} is not the active participant ({:?})",
                    from.as_str(),
                    mover_id.as_str()
                )));
            }
        }
        let next = match next {
            Some(id) => {
                let pos = self.participant_arg("next_participant_id", id)?;
                if self.s.participants[pos].expired {
                    return Err(RuleError::FailedPrecondition(format!(
                        "next_participant_id {:?} has expired",
                        id.as_str()
                    )));
                }
                Some(pos)
            }
            None => self.next_eligible_after(mover),
        };
        let was_expired = self.s.participants[mover].expired;
        self.charge_running(self.now);
        let p = &mut self.s.participants[mover];
        p.cycle_count += 1;
        if !was_expired {
            credit_move(p, &self.s.time_control);
        }
        self.s.cycle_count += 1;
        match next {
            Some(pos) => {
                self.s.active = Some(pos);
                self.s.cycle_started_at = Some(self.now);
                self.emit(EventKind::Switched, Some(mover_id));
            }
            None => self.end_by_time(self.now, mover_id),
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), RuleError> {
        self.require_status(&[Status::Running], "pause")?;
        self.charge_running(self.now);
        self.s.status = Status::Paused;
        self.s.cycle_started_at = None;
        self.emit(EventKind::Paused, None);
        Ok(())
    }

    fn resume(&mut self) -> Result<(), RuleError> {
        self.require_status(&[Status::Paused], "resume")?;
        self.s.status = Status::Running;
        self.s.cycle_started_at = Some(self.now);
        self.emit(EventKind::Resumed, None);
        Ok(())
    }

    fn finish(&mut self, status: Status, kind: EventKind) -> Result<(), RuleError> {
        let action = if status == Status::Completed { "complete" } else { "cancel" };
        self.require_status(&[Status::Pending, Status::Running, Status::Paused], action)?;
        self.charge_running(self.now);
        self.s.status = status;
        self.s.ended_at = Some(self.now);
        self.s.cycle_started_at = None;
        self.emit(kind, None);
        Ok(())
    }

    fn adjust(&mut self, target: &AdjustTarget, delta_ms: i64) -> Result<(), RuleError> {
        self.require_status(&[Status::Pending, Status::Running, Status::Paused], "adjust the time of")?;
        if delta_ms == 0 || delta_ms.abs() > MAX_ADJUST_MS {
            return Err(RuleError::invalid(
                "delta_ms",
                format!("must be non-zero and at most {MAX_ADJUST_MS} ms either way, got {delta_ms}"),
            ));
        }
        let pos = match target {
            AdjustTarget::Participant(id) => self.participant_arg("participant_id", id)?,
            AdjustTarget::Group(_) => {
                return Err(RuleError::invalid("group_id", "this session has no groups"));
            }
        };
        let (now_remaining, _) = participant_clock(&self.s, pos, self.now);
        let new_remaining = now_remaining.saturating_add(delta_ms * 1000).max(0);
        let applied = new_remaining - now_remaining;
        let p = &mut self.s.participants[pos];
        p.remaining += applied;
        p.adjustments += applied;
        let who = p.id.clone();
        self.emit(EventKind::TimeAdjusted, Some(who));
        Ok(())
    }
}

/// Credits a completed move under the time control (Fischer, with its cap).
fn credit_move(p: &mut Participant, tc: &super::model::TimeControl) {
    let mut credit = tc.increment;
    if tc.max_remaining > 0 {
        credit = credit.min((tc.max_remaining - p.remaining).max(0));
    }
    p.remaining += credit;
    p.credits += credit;
}
