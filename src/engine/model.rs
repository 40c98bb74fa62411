//! The session as stored: plain data, serde-serialisable, no behaviour beyond
//! small accessors. Instants and durations are whole **microseconds**
//! (`Micros`): the API speaks milliseconds, but charging in microseconds keeps
//! the ledger exact (no rounding drift over thousands of moves).

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::budget::Budget;
use super::ids::{GroupId, ParticipantId, SessionId};

// Stored sessions skip fields at their zero value: the snapshot is written
// to Redis, published and kept in the audit for every version, so its size
// matters (a two-player session: about half the bytes).
pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}
pub(crate) fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}
pub(crate) fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
pub(crate) fn is_false(v: &bool) -> bool {
    !*v
}

/// Microseconds: an instant (since the Unix epoch) or a duration.
pub type Micros = i64;

/// Microseconds in one millisecond.
pub const MICROS_PER_MS: Micros = 1_000;

/// How many applied `request_id`s a session remembers for idempotency.
pub const REMEMBERED_REQUESTS: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mode {
    PerParticipant,
    PerCycle,
    PerGroup,
    Global,
    CountUp,
}

impl Mode {
    pub fn name(self) -> &'static str {
        super::create::mode_name(self)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    Pending,
    Running,
    Paused,
    Expired,
    Completed,
    Cancelled,
}

impl Status {
    /// EXPIRED, COMPLETED and CANCELLED accept no mutation.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Status::Expired | Status::Completed | Status::Cancelled
        )
    }

    pub fn name(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Running => "RUNNING",
            Status::Paused => "PAUSED",
            Status::Expired => "EXPIRED",
            Status::Completed => "COMPLETED",
            Status::Cancelled => "CANCELLED",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TimeoutAction {
    EndSession,
    Skip,
    Notify,
}

impl TimeoutAction {
    /// SPEC §5: SKIP for per-cycle sessions, END_SESSION for every other mode.
    pub fn default_for(mode: Mode) -> Self {
        match mode {
            Mode::PerCycle => TimeoutAction::Skip,
            _ => TimeoutAction::EndSession,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DelayKind {
    Bronstein,
    Simple,
}

/// One stage of a multi-stage control: at the participant's own
/// `cycle_count == after_cycles`, add `add` and use `increment` from then on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub after_cycles: u32,
    pub add: Micros,
    pub increment: Option<Micros>,
}

/// How budgets change on a move. All zero/empty: sudden death.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeControl {
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub increment: Micros,
    /// 0 = no cap.
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub max_remaining: Micros,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub delay: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay_kind: Option<DelayKind>,
    #[serde(default, skip_serializing_if = "super::model::is_zero_u32")]
    pub byoyomi_periods: u32,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub byoyomi_period: Micros,
    #[serde(default, skip_serializing_if = "super::model::is_zero_u32")]
    pub canadian_stones: u32,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub canadian_block: Micros,
    #[serde(default, skip_serializing_if = "super::model::is_false")]
    pub hourglass: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<Stage>,
}

/// A participant. `clock` is its own clock (per-participant and count-up
/// modes) or, where the running clock belongs to a group, the cycle or the
/// session, an unbounded stopwatch that accounts the wall time of its turns.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Participant {
    pub id: ParticipantId,
    pub index: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<GroupId>,
    pub clock: Budget,
    /// Turns this participant completed.
    #[serde(default, skip_serializing_if = "super::model::is_zero_u64")]
    pub cycle_count: u64,
    /// Out of the rotation: its clock (or its group's) ran out.
    #[serde(default, skip_serializing_if = "super::model::is_false")]
    pub expired: bool,
    /// Lag compensation this participant may still get (sessions with
    /// `lag_compensation`; lag.rs).
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub lag_quota: Micros,
}

/// A group's shared clock (per-group mode).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub id: GroupId,
    pub clock: Budget,
}

/// One session: configuration, status, clocks, and the recent request ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    /// Random id given at creation: versions of a recreated session are new.
    pub epoch: String,
    pub mode: Mode,
    pub status: Status,
    pub version: u64,
    /// Sorted by `index` (the rotation order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<Participant>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<Group>,
    /// Position of the active participant in `participants`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active: Option<usize>,
    /// Cycles (turns) completed in the session.
    #[serde(default, skip_serializing_if = "super::model::is_zero_u64")]
    pub cycle_count: u64,
    /// The engine's anchor: when the running clock was last charged up to
    /// (a switch, a resume, an AdjustTime, a pause's end...); `None` while no
    /// clock runs. Internal: the API's `cycle_started_at` is `turn_started_at`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle_started_at: Option<Micros>,
    /// When the current turn began (start, switch, a timeout that moved the
    /// turn on, an undo); kept while paused and by AdjustTime; `None` before
    /// the start and once the session ended. A state of the release before
    /// has none: the anchor stands in for it (`turn_began`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub turn_started_at: Option<Micros>,
    pub time_control: TimeControl,
    /// MODE_GLOBAL: the one session-wide clock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Budget>,
    /// MODE_PER_CYCLE: the current cycle's clock, fresh every cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<Budget>,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub cycle_time: Micros,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub global_time: Micros,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub max_time: Micros,
    pub timeout_action: TimeoutAction,
    /// Credit SwitchCycle's `lag_ms` from each participant's quota (lag.rs).
    #[serde(default, skip_serializing_if = "super::model::is_false")]
    pub lag_compensation: bool,
    /// A session still PENDING this long after its creation is CANCELLED (0: never).
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub start_timeout: Micros,
    /// A first turn of a participant running longer than this cancels the
    /// session, uncharged (0: never).
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub first_move_timeout: Micros,
    /// Why a CANCELLED session was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cancel_reason: Option<CancelReason>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub created_at: Micros,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<Micros>,
    /// A session still PENDING at this instant ends as EXPIRED (the
    /// unstarted-session cap, `SYNCKAIROS_UNSTARTED_TTL`); `None`: no cap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_by: Option<Micros>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<Micros>,
    #[serde(default, skip_serializing_if = "super::model::is_zero_i64")]
    pub updated_at: Micros,
    /// Timeouts processed in a row since the last command a caller sent
    /// (MODE_PER_CYCLE under SKIP): when it reaches the number of participants
    /// in the rotation, a whole round timed out with nobody calling and the
    /// session ends (apply.rs, `time_out`).
    #[serde(default, skip_serializing_if = "super::model::is_zero_u32")]
    pub unattended_timeouts: u32,
    /// The last `REMEMBERED_REQUESTS` applied request ids, oldest first.
    /// Idempotency needs them only in the stored state, which the commit
    /// reads: no event's snapshot carries them (log, audit, Pub/Sub, clients),
    /// so serde never writes them and `wire::encode_state` adds them to the
    /// state's bytes alone. They are read wherever they are present (a
    /// state, of this release or of the one before, which wrote them inline).
    #[serde(default, skip_serializing)]
    pub recent_requests: VecDeque<String>,
    /// What UndoSwitch restores: the clocks as they stood at the instant of
    /// the last switch (undo.rs); `None` once anything but a pause or a
    /// resume happened since. Like the request ids, only the stored state
    /// carries it (`wire::encode_state`), never an event's snapshot.
    #[serde(default, skip_serializing)]
    pub undo: Option<Box<UndoPoint>>,
}

/// The clocks of a session at the instant a switch was applied, charged up
/// to it, before the switch credited anything: what UndoSwitch puts back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UndoPoint {
    /// The mover's position in `participants`.
    pub mover: usize,
    /// The participants whose records the switch or the turn after it may
    /// change, by position: the mover and the next; every one (hourglass).
    pub participants: Vec<(usize, Participant)>,
    /// Likewise the groups (per-group mode).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<(usize, Group)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cycle: Option<Budget>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub global: Option<Budget>,
    pub cycle_count: u64,
    #[serde(default, skip_serializing_if = "super::model::is_zero_u32")]
    pub unattended_timeouts: u32,
}

/// Why a session was cancelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CancelReason {
    /// A CancelSession call.
    Requested,
    /// Nobody started it within `start_timeout`.
    StartTimeout,
    /// A participant's first turn outlasted `first_move_timeout`.
    FirstMoveTimeout,
}

/// A switch's lag compensation, as the event keeps it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LagCredit {
    /// The lag the mover asked for.
    pub asked: Micros,
    /// The compensation given (taken off its turn's time).
    pub given: Micros,
}

impl Session {
    /// When the current turn began (the API's `cycle_started_at`).
    pub fn turn_began(&self) -> Option<Micros> {
        self.turn_started_at.or(self.cycle_started_at)
    }

    pub fn active_participant(&self) -> Option<&Participant> {
        self.active.map(|i| &self.participants[i])
    }

    pub fn participant_position(&self, id: &ParticipantId) -> Option<usize> {
        self.participants.iter().position(|p| &p.id == id)
    }

    pub fn group_position(&self, id: &GroupId) -> Option<usize> {
        self.groups.iter().position(|g| &g.id == id)
    }

    pub(crate) fn remember_request(&mut self, request_id: &str) {
        if self.recent_requests.len() == REMEMBERED_REQUESTS {
            self.recent_requests.pop_front();
        }
        self.recent_requests.push_back(request_id.to_owned());
    }

    pub fn has_applied(&self, request_id: &str) -> bool {
        self.recent_requests.iter().any(|r| r == request_id)
    }
}

/// What kind of change a version records (SPEC §6 `EventType`, without the
/// stream-only SNAPSHOT and HEARTBEAT).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Created,
    Started,
    Switched,
    Paused,
    Resumed,
    TimeAdjusted,
    TimedOut,
    ParticipantExpired,
    Expired,
    Completed,
    Cancelled,
    Deleted,
    Undone,
}

impl EventKind {
    pub const ALL: [EventKind; 13] = [
        EventKind::Created,
        EventKind::Started,
        EventKind::Switched,
        EventKind::Paused,
        EventKind::Resumed,
        EventKind::TimeAdjusted,
        EventKind::TimedOut,
        EventKind::ParticipantExpired,
        EventKind::Expired,
        EventKind::Completed,
        EventKind::Cancelled,
        EventKind::Deleted,
        EventKind::Undone,
    ];

    /// The stable name stored in the audit (`SWITCHED`, ...).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Created => "CREATED",
            EventKind::Started => "STARTED",
            EventKind::Switched => "SWITCHED",
            EventKind::Paused => "PAUSED",
            EventKind::Resumed => "RESUMED",
            EventKind::TimeAdjusted => "TIME_ADJUSTED",
            EventKind::TimedOut => "TIMED_OUT",
            EventKind::ParticipantExpired => "PARTICIPANT_EXPIRED",
            EventKind::Expired => "EXPIRED",
            EventKind::Completed => "COMPLETED",
            EventKind::Cancelled => "CANCELLED",
            EventKind::Deleted => "DELETED",
            EventKind::Undone => "UNDONE",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// One committed version: what happened, to whom, when, and the session after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub version: u64,
    pub kind: EventKind,
    pub participant: Option<ParticipantId>,
    /// The server instant the change was committed at.
    pub at: Micros,
    pub session: Session,
    /// SWITCHED with lag compensation: the lag asked and the credit given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<LagCredit>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_session_round_trips_with_its_zero_fields_left_out() {
        let participant = crate::engine::NewParticipant {
            initial_time_ms: Some(1_000),
            ..crate::engine::NewParticipant::named(ParticipantId::parse("p", "a").unwrap())
        };
        let new = crate::engine::NewSession {
            epoch: "e".into(),
            ..crate::engine::NewSession::new(
                SessionId::parse("id", "s").unwrap(),
                Mode::PerParticipant,
                vec![participant],
            )
        };
        let (s, _) = crate::engine::create(new, 5).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        assert!(!json.contains("\"credits\""), "{json}");
        let back: Session = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
