//! `apply(session, request, now)`: the status machine (SPEC §2), the modes
//! and the switch (§3), and running out of time (§5). Pure: the same inputs
//! give the same outputs, so a store may retry it after a write conflict.
//!
//! Every applied command first *settles* the clock: a deadline that passed
//! before `now` is processed at the deadline instant, exactly as the timer
//! would have. So a switch that arrives late is judged by the clock and never
//! rescues a flagged participant.
//!
//! A session left alone stops: a per-cycle SKIP hands a fresh cycle on
//! forever, so `Session::unattended_timeouts` counts the timeouts since the
//! last applied command of a caller, and when a whole round of participants
//! timed out in turn the session ends EXPIRED (docs/clock-rules.md, "Floors
//! and sessions left alone"). Every other automatic transition takes a clock
//! out of play for good.

use super::RuleError;
use super::budget::Budget;
use super::ids::{GroupId, ParticipantId, RequestId};
use super::model::{
    CancelReason, Event, EventKind, LagCredit, Micros, Mode, Session, Status, TimeoutAction,
};

/// Who an AdjustTime is for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AdjustTarget {
    Participant(ParticipantId),
    Group(GroupId),
}

/// A mutation of an existing session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    Start {
        first: Option<ParticipantId>,
    },
    Switch {
        from: Option<ParticipantId>,
        next: Option<ParticipantId>,
        /// The mover's measured network lag, 0-60000 ms (lag.rs): used by a
        /// session with lag compensation, ignored by any other.
        lag_ms: Option<i64>,
    },
    /// Takes the last switch back (undo.rs).
    Undo,
    Pause,
    Resume,
    Complete,
    Cancel,
    Adjust {
        target: AdjustTarget,
        delta_ms: i64,
    },
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
        Self {
            command,
            expected_version: None,
            request_id: None,
        }
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

/// At most this many overdue deadlines are processed in one apply; the rest
/// are left for the next apply or timer claim. A safety net: since a session
/// left alone ends after one round (`time_out`), overdue deadlines never
/// number more than the participants (at most `MAX_PARTICIPANTS`, 1000), even
/// for a per-cycle session whose timers were down for hours.
const MAX_SETTLE_STEPS: usize = 1_000;

/// Whose clock runs while a participant is active.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    Participant(usize),
    Group(usize),
    Global,
    Cycle,
}

pub(super) fn owner_of(s: &Session, pos: usize) -> Owner {
    match s.mode {
        Mode::PerParticipant | Mode::CountUp => Owner::Participant(pos),
        Mode::PerGroup => {
            let group = s.participants[pos]
                .group
                .as_ref()
                .and_then(|g| s.group_position(g));
            // Creation guarantees every participant of a per-group session has a group.
            group.map_or(Owner::Participant(pos), Owner::Group)
        }
        Mode::Global => Owner::Global,
        Mode::PerCycle => Owner::Cycle,
    }
}

pub(super) fn budget(s: &Session, owner: Owner) -> Option<&Budget> {
    match owner {
        Owner::Participant(i) => s.participants.get(i).map(|p| &p.clock),
        Owner::Group(i) => s.groups.get(i).map(|g| &g.clock),
        Owner::Global => s.global.as_ref(),
        Owner::Cycle => s.cycle.as_ref(),
    }
}

fn budget_mut(s: &mut Session, owner: Owner) -> Option<&mut Budget> {
    match owner {
        Owner::Participant(i) => s.participants.get_mut(i).map(|p| &mut p.clock),
        Owner::Group(i) => s.groups.get_mut(i).map(|g| &mut g.clock),
        Owner::Global => s.global.as_mut(),
        Owner::Cycle => s.cycle.as_mut(),
    }
}

/// The active participant and when its stretch started, if a clock runs.
pub(super) fn running(s: &Session) -> Option<(usize, Micros)> {
    if s.status != Status::Running {
        return None;
    }
    Some((s.active?, s.cycle_started_at?))
}

/// When the session next needs the timers: when its running clock runs out
/// (`flag_at`) or its mover's first turn has lasted too long
/// (`first_move_abort_at`), or, for a session never started, when its wait
/// to be started ends (`Session::start_by`, or its own `start_timeout`).
pub fn deadline(s: &Session) -> Option<Micros> {
    match s.status {
        Status::Pending => earliest(s.start_by, start_cancel_at(s)),
        _ => earliest(flag_at(s), first_move_abort_at(s)),
    }
}

fn earliest(a: Option<Micros>, b: Option<Micros>) -> Option<Micros> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When the server cancels the session unless something happens first:
/// its start timeout, or the first-move timeout of the turn running now.
pub fn abort_at(s: &Session) -> Option<Micros> {
    earliest(start_cancel_at(s), first_move_abort_at(s))
}

/// When a PENDING session with a `start_timeout` is cancelled.
fn start_cancel_at(s: &Session) -> Option<Micros> {
    (s.status == Status::Pending && s.start_timeout > 0)
        .then(|| s.created_at.saturating_add(s.start_timeout))
}

/// When the running first turn of the active participant reaches the
/// session's `first_move_timeout` (the turn's running time: what its own
/// clock was charged so far, the participant having completed no turn, and
/// the stretch running now).
fn first_move_abort_at(s: &Session) -> Option<Micros> {
    if s.first_move_timeout == 0 {
        return None;
    }
    let (pos, started) = running(s)?;
    let p = &s.participants[pos];
    if p.cycle_count > 0 {
        return None;
    }
    let left = s.first_move_timeout.saturating_sub(p.clock.used).max(0);
    Some(started.saturating_add(left))
}

/// When the running clock runs out (or reaches its cap), if a clock runs.
pub fn flag_at(s: &Session) -> Option<Micros> {
    let (pos, started) = running(s)?;
    let left = budget(s, owner_of(s, pos))?.time_to_flag(&s.time_control)?;
    Some(started.saturating_add(left))
}

pub fn apply(s: &Session, req: &Request, now: Micros) -> Result<Applied, RuleError> {
    if let Some(rid) = &req.request_id {
        if s.has_applied(rid.as_str()) {
            return Ok(Applied {
                session: s.clone(),
                events: Vec::new(),
            });
        }
    }
    if let Some(expected) = req.expected_version {
        if expected != s.version {
            return Err(RuleError::VersionMismatch {
                expected,
                actual: s.version,
            });
        }
    }
    // Time never runs backwards inside one session, whatever the caller's clock says.
    let now = now.max(s.updated_at);
    let mut tx = Tx {
        s: s.clone(),
        now,
        events: Vec::new(),
    };
    let mover_before = s.active;
    tx.settle();
    let settled = !tx.events.is_empty();
    // After a flag the switch still applies only where the flagged mover keeps
    // the turn (NOTIFY); otherwise the session ended or already moved on.
    let turn_moved_on = settled && !(tx.s.status == Status::Running && tx.s.active == mover_before);
    match &req.command {
        Command::Timeout if !settled => return Err(RuleError::NotDue),
        Command::Timeout => {}
        Command::Switch { .. } if turn_moved_on => {}
        // Too late to pause or to complete: the clock ran out first, and the
        // session ended by it. The flag is what commits (the reply says
        // EXPIRED), not a refusal that leaves it to the timers.
        Command::Pause | Command::Complete if settled && tx.s.status.is_terminal() => {}
        command => {
            // A caller is there: the timeouts to come are unattended again
            // from zero. Reset before the command so that its event's snapshot
            // shows it (a refused command drops the whole transaction).
            tx.s.unattended_timeouts = 0;
            if !matches!(
                command,
                Command::Switch { .. } | Command::Pause | Command::Resume | Command::Undo
            ) {
                // Only pauses and resumes leave the last switch undoable.
                tx.s.undo = None;
            }
            match command {
                Command::Switch { from, next, lag_ms } => {
                    tx.switch(from.as_ref(), next.as_ref(), *lag_ms)?
                }
                Command::Undo => tx.undo()?,
                Command::Start { first } => tx.start(first.as_ref())?,
                Command::Pause => tx.pause()?,
                Command::Resume => tx.resume()?,
                Command::Complete => tx.finish(Status::Completed, EventKind::Completed)?,
                Command::Cancel => {
                    tx.s.cancel_reason = Some(CancelReason::Requested);
                    tx.finish(Status::Cancelled, EventKind::Cancelled)?
                }
                Command::Adjust { target, delta_ms } => tx.adjust(target, *delta_ms)?,
                Command::Timeout => {}
            }
        }
    }
    tx.settle();
    if let Some(rid) = &req.request_id {
        tx.s.remember_request(rid.as_str());
        // The last event's session is the session stored, ids and all, so
        // the store encodes it once for both (`wire::encode_event`); the ids
        // never leave in an event's bytes (serde skips them: model.rs).
        if let Some(last) = tx.events.last_mut() {
            last.session.recent_requests = tx.s.recent_requests.clone();
        }
    }
    Ok(Applied {
        session: tx.s,
        events: tx.events,
    })
}

/// One application in progress: the session being changed and its new events.
pub(super) struct Tx {
    pub(super) s: Session,
    pub(super) now: Micros,
    pub(super) events: Vec<Event>,
}

impl Tx {
    pub(super) fn emit(&mut self, kind: EventKind, participant: Option<ParticipantId>) {
        self.s.version += 1;
        self.s.updated_at = self.now;
        self.events.push(Event {
            version: self.s.version,
            kind,
            participant,
            at: self.now,
            session: self.s.clone(),
            lag: None,
        });
    }

    pub(super) fn require_status(&self, allowed: &[Status], action: &str) -> Result<(), RuleError> {
        if allowed.contains(&self.s.status) {
            return Ok(());
        }
        Err(RuleError::FailedPrecondition(format!(
            "cannot {action} a session that is {}",
            self.s.status.name()
        )))
    }

    fn participant_arg(&self, field: &str, id: &ParticipantId) -> Result<usize, RuleError> {
        self.s.participant_position(id).ok_or_else(|| {
            RuleError::invalid(
                field,
                format!("no participant {:?} in this session", id.as_str()),
            )
        })
    }

    pub(super) fn id_of(&self, pos: usize) -> ParticipantId {
        self.s.participants[pos].id.clone()
    }

    /// Processes every deadline that passed at or before `now`, each at its own instant.
    /// A deadline that fires takes the undo away: the last change of the
    /// turn is no longer a switch.
    fn settle(&mut self) {
        for _ in 0..MAX_SETTLE_STEPS {
            let Some(due) = deadline(&self.s).filter(|due| *due <= self.now) else {
                return;
            };
            self.s.undo = None;
            if start_cancel_at(&self.s) == Some(due) {
                self.cancel_by_server(due, CancelReason::StartTimeout, None);
            } else if self.s.status == Status::Pending {
                self.expire_unstarted(due);
            } else if first_move_abort_at(&self.s) == Some(due) {
                let who = self.s.active.map(|pos| self.id_of(pos));
                self.cancel_by_server(due, CancelReason::FirstMoveTimeout, who);
            } else {
                self.time_out(due);
            }
        }
    }

    /// Charges the running stretch up to `at` to the running clock, the
    /// active participant's own time, and (hourglass) the other clocks; the
    /// next stretch starts at `at`.
    pub(super) fn checkpoint(&mut self, at: Micros) {
        let Some((pos, started)) = running(&self.s) else {
            return;
        };
        let e = at.saturating_sub(started).max(0);
        let tc = self.s.time_control.clone();
        let owner = owner_of(&self.s, pos);
        let charged = budget_mut(&mut self.s, owner).map_or(0, |b| b.consume(e, &tc));
        if owner != Owner::Participant(pos) {
            self.s.participants[pos].clock.consume(charged, &tc);
        }
        if tc.hourglass && charged > 0 {
            match owner {
                Owner::Participant(me) => {
                    for (i, p) in self.s.participants.iter_mut().enumerate() {
                        if i != me && !p.expired {
                            p.clock.receive(charged);
                        }
                    }
                }
                Owner::Group(me) => {
                    for (i, g) in self.s.groups.iter_mut().enumerate() {
                        if i != me && !g.clock.expired {
                            g.clock.receive(charged);
                        }
                    }
                }
                Owner::Global | Owner::Cycle => {}
            }
        }
        self.s.cycle_started_at = Some(at);
    }

    /// Distinct clocks still in play (participants, or groups in per-group mode).
    fn eligible_owners(&self) -> usize {
        match self.s.mode {
            Mode::PerGroup => self.s.groups.iter().filter(|g| !g.clock.expired).count(),
            _ => self.s.participants.iter().filter(|p| !p.expired).count(),
        }
    }

    /// The running clock reached zero at `at` (SPEC §5).
    fn time_out(&mut self, at: Micros) {
        let Some(pos) = self.s.active else { return };
        self.checkpoint(at);
        let tc = self.s.time_control.clone();
        let owner = owner_of(&self.s, pos);
        if let Some(b) = budget_mut(&mut self.s, owner) {
            b.flag(&tc);
        }
        let who = self.id_of(pos);
        if self.s.mode == Mode::PerCycle {
            return match self.s.timeout_action {
                TimeoutAction::EndSession => {
                    self.s.participants[pos].expired = true;
                    self.end_by_time(at, who)
                }
                // SPEC §5: the participant is expired; the cycle sits at zero
                // until the caller switches (expired participants are skipped).
                TimeoutAction::Notify => {
                    self.s.participants[pos].expired = true;
                    self.emit(EventKind::TimedOut, Some(who))
                }
                // Nobody called for a whole round: every participant in the
                // rotation timed out in turn. Nobody is there; the session
                // ends as END_SESSION would have ended it (docs/clock-rules.md,
                // "Floors and sessions left alone").
                TimeoutAction::Skip
                    if self.s.unattended_timeouts + 1 >= self.eligible_owners() as u32 =>
                {
                    self.s.unattended_timeouts += 1;
                    self.s.participants[pos].expired = true;
                    self.end_by_time(at, who)
                }
                TimeoutAction::Skip => {
                    self.s.unattended_timeouts += 1;
                    self.complete_turn(pos);
                    let next = self.next_eligible_after(pos).unwrap_or(pos);
                    self.s.active = Some(next);
                    self.s.cycle = Some(Budget::new(self.s.cycle_time, &tc));
                    self.s.cycle_started_at = Some(at);
                    self.s.turn_started_at = Some(at);
                    self.emit(EventKind::TimedOut, Some(who));
                }
            };
        }
        // The owner of the clock is out of the rotation: the participant, or its whole group.
        match owner {
            Owner::Group(g) => {
                let gid = self.s.groups[g].id.clone();
                for p in self
                    .s
                    .participants
                    .iter_mut()
                    .filter(|p| p.group.as_ref() == Some(&gid))
                {
                    p.expired = true;
                }
            }
            _ => self.s.participants[pos].expired = true,
        }
        match self.s.timeout_action {
            TimeoutAction::EndSession => self.end_by_time(at, who),
            TimeoutAction::Notify => self.emit(EventKind::ParticipantExpired, Some(who)),
            TimeoutAction::Skip => {
                self.complete_turn(pos);
                match self.next_eligible_after(pos) {
                    Some(next) if self.eligible_owners() >= 2 => {
                        self.s.active = Some(next);
                        self.s.cycle_started_at = Some(at);
                        self.s.turn_started_at = Some(at);
                        self.emit(EventKind::ParticipantExpired, Some(who));
                    }
                    _ => self.end_by_time(at, who),
                }
            }
        }
    }

    /// A session nobody started within its wait: EXPIRED, with no participant.
    fn expire_unstarted(&mut self, at: Micros) {
        self.s.status = Status::Expired;
        self.s.ended_at = Some(at);
        self.emit(EventKind::Expired, None);
    }

    /// An abort timeout fired at `at`: CANCELLED, and the running stretch
    /// (a first turn that lasted too long) is not charged to anyone.
    fn cancel_by_server(&mut self, at: Micros, reason: CancelReason, who: Option<ParticipantId>) {
        self.s.status = Status::Cancelled;
        self.s.cancel_reason = Some(reason);
        self.s.ended_at = Some(at);
        self.s.cycle_started_at = None;
        self.s.turn_started_at = None;
        self.emit(EventKind::Cancelled, who);
    }

    fn end_by_time(&mut self, at: Micros, who: ParticipantId) {
        self.s.status = Status::Expired;
        self.s.ended_at = Some(at);
        self.s.cycle_started_at = None;
        self.s.turn_started_at = None;
        self.emit(EventKind::Expired, Some(who));
    }

    /// Counts a finished turn of the participant at `pos`.
    fn complete_turn(&mut self, pos: usize) {
        let tc = self.s.time_control.clone();
        let p = &mut self.s.participants[pos];
        p.cycle_count += 1;
        if self.s.mode != Mode::PerParticipant && self.s.mode != Mode::CountUp {
            // Its own clock only accounts time: close its turn.
            p.clock.end_turn(&tc);
        }
        self.s.cycle_count += 1;
    }

    /// The next participant by index after `pos`, wrapping, skipping expired
    /// ones; `pos` itself comes last (a one-player session switches to itself).
    fn next_eligible_after(&self, pos: usize) -> Option<usize> {
        let n = self.s.participants.len();
        (1..=n)
            .map(|k| (pos + k) % n)
            .find(|&i| !self.s.participants[i].expired)
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
        self.s.turn_started_at = Some(self.now);
        self.s.started_at = Some(self.now);
        let who = self.id_of(pos);
        self.emit(EventKind::Started, Some(who));
        Ok(())
    }

    fn switch(
        &mut self,
        from: Option<&ParticipantId>,
        next: Option<&ParticipantId>,
        lag_ms: Option<i64>,
    ) -> Result<(), RuleError> {
        let lag = match lag_ms {
            Some(ms) if !(0..=super::lag::MAX_LAG_MS).contains(&ms) => {
                return Err(RuleError::invalid(
                    "lag_ms",
                    format!(
                        "must be between 0 and {} ms, got {ms}",
                        super::lag::MAX_LAG_MS
                    ),
                ));
            }
            Some(ms) if self.s.lag_compensation => Some(ms * super::model::MICROS_PER_MS),
            _ => None,
        };
        self.require_status(&[Status::Running], "switch the cycle of")?;
        let Some(mover) = self.s.active else {
            return Err(RuleError::FailedPrecondition(
                "no participant is active".into(),
            ));
        };
        let mover_id = self.id_of(mover);
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
        // What an undo puts back: the clocks charged up to this instant,
        // before any credit of the switch (its compensation included).
        let (undo, credit) = match lag {
            None => {
                self.checkpoint(self.now);
                (super::undo::point(&self.s, mover, next), None)
            }
            Some(asked) => {
                let mut at_switch = Tx {
                    s: self.s.clone(),
                    now: self.now,
                    events: Vec::new(),
                };
                at_switch.checkpoint(self.now);
                let undo = super::undo::point(&at_switch.s, mover, next);
                let given = super::lag::compensate(&mut self.s, mover, asked);
                // The compensation comes off the turn's time: charged up to
                // now - comp (never before the stretch began).
                let until = running(&self.s)
                    .map_or(self.now, |(_, started)| (self.now - given).max(started));
                self.checkpoint(until);
                (undo, Some(LagCredit { asked, given }))
            }
        };
        self.complete_turn(mover);
        let tc = self.s.time_control.clone();
        let mover_owner = owner_of(&self.s, mover);
        match mover_owner {
            Owner::Participant(_) => self.s.participants[mover].clock.end_turn(&tc),
            // Switching inside a group keeps its clock running: no turn ends.
            Owner::Group(g) => {
                if next.map(|n| owner_of(&self.s, n)) != Some(mover_owner) {
                    self.s.groups[g].clock.end_turn(&tc);
                }
            }
            Owner::Cycle => self.s.cycle = Some(Budget::new(self.s.cycle_time, &tc)),
            Owner::Global => {}
        }
        match next {
            Some(pos) => {
                self.s.active = Some(pos);
                self.s.cycle_started_at = Some(self.now);
                self.s.turn_started_at = Some(self.now);
                self.s.undo = Some(Box::new(undo));
                self.emit(EventKind::Switched, Some(mover_id));
                if let Some(last) = self.events.last_mut() {
                    last.lag = credit;
                }
            }
            None => {
                self.s.undo = None;
                self.end_by_time(self.now, mover_id)
            }
        }
        Ok(())
    }

    fn pause(&mut self) -> Result<(), RuleError> {
        self.require_status(&[Status::Running], "pause")?;
        self.checkpoint(self.now);
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
        let action = if status == Status::Completed {
            "complete"
        } else {
            "cancel"
        };
        self.require_status(&[Status::Pending, Status::Running, Status::Paused], action)?;
        self.checkpoint(self.now);
        self.s.status = status;
        self.s.ended_at = Some(self.now);
        self.s.cycle_started_at = None;
        self.s.turn_started_at = None;
        self.emit(kind, None);
        Ok(())
    }

    fn adjust(&mut self, target: &AdjustTarget, delta_ms: i64) -> Result<(), RuleError> {
        self.require_status(
            &[Status::Pending, Status::Running, Status::Paused],
            "adjust the time of",
        )?;
        if delta_ms == 0 || delta_ms.unsigned_abs() > MAX_ADJUST_MS as u64 {
            return Err(RuleError::invalid(
                "delta_ms",
                format!(
                    "must be non-zero and at most {MAX_ADJUST_MS} ms either way, got {delta_ms}"
                ),
            ));
        }
        let (owner, who) = match (target, self.s.mode) {
            (AdjustTarget::Group(id), Mode::PerGroup) => {
                let g = self.s.group_position(id).ok_or_else(|| {
                    RuleError::invalid(
                        "group_id",
                        format!("no group {:?} in this session", id.as_str()),
                    )
                })?;
                (Owner::Group(g), None)
            }
            (AdjustTarget::Group(_), _) => {
                return Err(RuleError::invalid("group_id", "this session has no groups"));
            }
            (AdjustTarget::Participant(_), Mode::PerGroup) => {
                return Err(RuleError::invalid(
                    "participant_id",
                    "participants of MODE_PER_GROUP share their group's clock: adjust group_id",
                ));
            }
            (AdjustTarget::Participant(id), Mode::PerCycle) => {
                let pos = self.participant_arg("participant_id", id)?;
                if self.s.active != Some(pos) {
                    return Err(RuleError::FailedPrecondition(format!(
                        "participant_id {:?}: in MODE_PER_CYCLE only the active participant's cycle can be adjusted",
                        id.as_str()
                    )));
                }
                (Owner::Cycle, Some(id.clone()))
            }
            (AdjustTarget::Participant(id), Mode::Global) => {
                self.participant_arg("participant_id", id)?;
                (Owner::Global, Some(id.clone()))
            }
            (AdjustTarget::Participant(id), _) => (
                Owner::Participant(self.participant_arg("participant_id", id)?),
                Some(id.clone()),
            ),
        };
        if !budget(&self.s, owner).is_some_and(|b| b.bounded) {
            return Err(RuleError::invalid(
                "participant_id",
                "this clock has no limit (count-up without max_time_ms)",
            ));
        }
        self.checkpoint(self.now);
        if let Some(b) = budget_mut(&mut self.s, owner) {
            b.adjust(delta_ms.saturating_mul(1_000));
        }
        self.emit(EventKind::TimeAdjusted, who);
        Ok(())
    }
}
