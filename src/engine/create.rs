//! CreateSession: check every input limit of SPEC §6 and build version 1.
//! Each rejection names the offending field, e.g. `participants[2].initial_time_ms`.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::ids::{GroupId, ParticipantId, RequestId, SessionId};
use super::model::{
    DelayKind, Event, EventKind, Micros, Mode, Participant, Session, Stage, Status, TimeControl,
    TimeoutAction, MICROS_PER_MS,
};
use super::RuleError;

/// Longest duration accepted anywhere: 30 days.
pub const MAX_DURATION_MS: i64 = 30 * 24 * 3600 * 1000;
pub const MAX_PARTICIPANTS: usize = 1000;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 4096;

/// A participant as the caller describes it.
#[derive(Clone, Debug)]
pub struct NewParticipant {
    pub id: ParticipantId,
    pub index: Option<u32>,
    pub group: Option<GroupId>,
    pub initial_time_ms: Option<i64>,
}

/// A group as the caller describes it.
#[derive(Clone, Debug)]
pub struct NewGroup {
    pub id: GroupId,
    pub initial_time_ms: i64,
}

/// A stage as the caller describes it (milliseconds).
#[derive(Clone, Debug, Default)]
pub struct NewStage {
    pub after_cycles: u32,
    pub add_ms: i64,
    pub increment_ms: Option<i64>,
}

/// A time control as the caller describes it (milliseconds; zero = unused).
#[derive(Clone, Debug, Default)]
pub struct NewTimeControl {
    pub increment_ms: i64,
    pub max_remaining_ms: i64,
    pub delay_ms: i64,
    pub delay_kind: Option<DelayKind>,
    pub byoyomi_periods: u32,
    pub byoyomi_period_ms: i64,
    pub canadian_stones: u32,
    pub canadian_block_ms: i64,
    pub hourglass: bool,
    pub stages: Vec<NewStage>,
}

/// Everything CreateSession carries, ids already parsed at the edge.
#[derive(Clone, Debug)]
pub struct NewSession {
    pub id: SessionId,
    pub epoch: String,
    pub mode: Mode,
    pub participants: Vec<NewParticipant>,
    pub groups: Vec<NewGroup>,
    pub time_control: NewTimeControl,
    pub initial_time_ms: i64,
    pub cycle_time_ms: i64,
    pub global_time_ms: i64,
    pub max_time_ms: i64,
    pub timeout_action: Option<TimeoutAction>,
    pub metadata: BTreeMap<String, String>,
    pub request_id: Option<RequestId>,
}

/// `0 < ms <= 30 days`, as microseconds.
fn required_duration(field: &str, ms: i64) -> Result<Micros, RuleError> {
    if ms <= 0 || ms > MAX_DURATION_MS {
        return Err(RuleError::invalid(
            field,
            format!("must be between 1 and {MAX_DURATION_MS} ms (30 days), got {ms}"),
        ));
    }
    Ok(ms * MICROS_PER_MS)
}

/// `0 <= ms <= 30 days` (0 = unused), as microseconds.
fn optional_duration(field: &str, ms: i64) -> Result<Micros, RuleError> {
    if ms == 0 {
        return Ok(0);
    }
    required_duration(field, ms)
}

fn must_be_unset(field: &str, set: bool, mode: Mode) -> Result<(), RuleError> {
    if set {
        return Err(RuleError::invalid(field, format!("is not used by {}", mode_name(mode))));
    }
    Ok(())
}

pub(crate) fn mode_name(mode: Mode) -> &'static str {
    match mode {
        Mode::PerParticipant => "MODE_PER_PARTICIPANT",
        Mode::PerCycle => "MODE_PER_CYCLE",
        Mode::PerGroup => "MODE_PER_GROUP",
        Mode::Global => "MODE_GLOBAL",
        Mode::CountUp => "MODE_COUNT_UP",
    }
}

fn check_metadata(metadata: &BTreeMap<String, String>) -> Result<(), RuleError> {
    if metadata.len() > MAX_METADATA_ENTRIES {
        return Err(RuleError::invalid(
            "metadata",
            format!("at most {MAX_METADATA_ENTRIES} entries, got {}", metadata.len()),
        ));
    }
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(RuleError::invalid(
            "metadata",
            format!("at most {MAX_METADATA_BYTES} bytes of keys and values, got {bytes}"),
        ));
    }
    if metadata.keys().any(|k| k.is_empty()) {
        return Err(RuleError::invalid("metadata", "keys must not be empty"));
    }
    Ok(())
}

fn check_time_control(tc: &NewTimeControl, mode: Mode) -> Result<TimeControl, RuleError> {
    let uses_controls = matches!(mode, Mode::PerParticipant | Mode::PerGroup);
    let any_set = tc.increment_ms != 0
        || tc.max_remaining_ms != 0
        || tc.delay_ms != 0
        || tc.delay_kind.is_some()
        || tc.byoyomi_periods != 0
        || tc.byoyomi_period_ms != 0
        || tc.canadian_stones != 0
        || tc.canadian_block_ms != 0
        || tc.hourglass
        || !tc.stages.is_empty();
    if !uses_controls {
        must_be_unset("time_control", any_set, mode)?;
        return Ok(TimeControl::default());
    }
    let unsupported = [
        ("time_control.delay_ms", tc.delay_ms != 0 || tc.delay_kind.is_some()),
        ("time_control.byoyomi_periods", tc.byoyomi_periods != 0 || tc.byoyomi_period_ms != 0),
        ("time_control.canadian_stones", tc.canadian_stones != 0 || tc.canadian_block_ms != 0),
        ("time_control.hourglass", tc.hourglass),
        ("time_control.stages", !tc.stages.is_empty()),
    ];
    if let Some((field, _)) = unsupported.iter().find(|(_, set)| *set) {
        return Err(RuleError::Unimplemented(format!("{field}: this time control is not implemented yet")));
    }
    if tc.increment_ms < 0 || tc.increment_ms > MAX_DURATION_MS {
        return Err(RuleError::invalid(
            "time_control.increment_ms",
            format!("must be between 0 and {MAX_DURATION_MS}, got {}", tc.increment_ms),
        ));
    }
    let max_remaining = optional_duration("time_control.max_remaining_ms", tc.max_remaining_ms)?;
    if max_remaining != 0 && tc.increment_ms == 0 {
        return Err(RuleError::invalid(
            "time_control.max_remaining_ms",
            "caps the Fischer increment; set time_control.increment_ms too",
        ));
    }
    Ok(TimeControl {
        increment: tc.increment_ms * MICROS_PER_MS,
        max_remaining,
        delay: 0,
        delay_kind: None,
        byoyomi_periods: 0,
        byoyomi_period: 0,
        canadian_stones: 0,
        canadian_block: 0,
        hourglass: false,
        stages: Vec::<Stage>::new(),
    })
}

/// Validates `new` and builds the session at version 1 with its CREATED event.
pub fn create(new: NewSession, now: Micros) -> Result<(Session, Event), RuleError> {
    let mode = new.mode;
    if mode != Mode::PerParticipant {
        return Err(RuleError::Unimplemented(format!(
            "mode: {} is not implemented yet",
            mode_name(mode)
        )));
    }
    check_metadata(&new.metadata)?;
    if new.participants.is_empty() || new.participants.len() > MAX_PARTICIPANTS {
        return Err(RuleError::invalid(
            "participants",
            format!("must hold 1 to {MAX_PARTICIPANTS} participants, got {}", new.participants.len()),
        ));
    }
    must_be_unset("groups", !new.groups.is_empty(), mode)?;
    must_be_unset("cycle_time_ms", new.cycle_time_ms != 0, mode)?;
    must_be_unset("global_time_ms", new.global_time_ms != 0, mode)?;
    must_be_unset("max_time_ms", new.max_time_ms != 0, mode)?;
    let time_control = check_time_control(&new.time_control, mode)?;
    if new.initial_time_ms != 0 {
        required_duration("initial_time_ms", new.initial_time_ms)?;
    }

    let mut seen_ids = HashSet::new();
    let mut seen_indexes = HashSet::new();
    let mut participants = Vec::with_capacity(new.participants.len());
    for (pos, p) in new.participants.iter().enumerate() {
        let field = |name: &str| format!("participants[{pos}].{name}");
        if !seen_ids.insert(p.id.clone()) {
            return Err(RuleError::invalid(&field("participant_id"), format!("duplicate id {:?}", p.id.as_str())));
        }
        let index = p.index.unwrap_or(pos as u32);
        if !seen_indexes.insert(index) {
            return Err(RuleError::invalid(&field("index"), format!("duplicate index {index}")));
        }
        must_be_unset(&field("group_id"), p.group.is_some(), mode)?;
        let initial = match p.initial_time_ms {
            Some(ms) => required_duration(&field("initial_time_ms"), ms)?,
            None if new.initial_time_ms != 0 => new.initial_time_ms * MICROS_PER_MS,
            None => {
                return Err(RuleError::invalid(
                    &field("initial_time_ms"),
                    "is required (or set initial_time_ms for every participant)",
                ));
            }
        };
        participants.push(Participant {
            id: p.id.clone(),
            index,
            group: None,
            initial,
            remaining: initial,
            used: 0,
            credits: 0,
            adjustments: 0,
            cycle_count: 0,
            expired: false,
        });
    }
    participants.sort_by_key(|p| p.index);

    let mut session = Session {
        id: new.id,
        epoch: new.epoch,
        mode,
        status: Status::Pending,
        version: 1,
        participants,
        groups: Vec::new(),
        active: None,
        cycle_count: 0,
        cycle_started_at: None,
        time_control,
        cycle_time: 0,
        global_time: 0,
        max_time: 0,
        timeout_action: new.timeout_action.unwrap_or(TimeoutAction::default_for(mode)),
        metadata: new.metadata,
        created_at: now,
        started_at: None,
        ended_at: None,
        updated_at: now,
        recent_requests: VecDeque::new(),
    };
    if let Some(rid) = &new.request_id {
        session.remember_request(rid.as_str());
    }
    let event = Event {
        version: 1,
        kind: EventKind::Created,
        participant: None,
        at: now,
        session: session.clone(),
    };
    Ok((session, event))
}
