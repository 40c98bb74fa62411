//! CreateSession: check every input limit of SPEC §6 and build version 1.
//! Each rejection names the offending field, e.g. `participants[2].initial_time_ms`.

use std::collections::{BTreeMap, HashSet, VecDeque};

use super::RuleError;
use super::budget::Budget;
use super::ids::{GroupId, ParticipantId, RequestId, SessionId};
use super::model::{
    DelayKind, Event, EventKind, Group, MICROS_PER_MS, Micros, Mode, Participant, Session, Stage,
    Status, TimeControl, TimeoutAction,
};
use super::text::{control_reason, first_control};

/// Longest duration accepted anywhere: 30 days.
pub const MAX_DURATION_MS: i64 = 30 * 24 * 3600 * 1000;
pub const MAX_PARTICIPANTS: usize = 1000;
pub const MAX_METADATA_ENTRIES: usize = 32;
pub const MAX_METADATA_BYTES: usize = 4096;

/// The floor, 250 ms, of every duration that starts again by itself: one
/// that makes the server commit again on its own when it runs out, or that
/// resets to full on every move. Refused below it (zero stays allowed where
/// zero means "off"):
/// - `cycle_time_ms` (MODE_PER_CYCLE): SKIP gives the next participant a fresh
///   cycle each time one runs out, so the cycle is the period of a session
///   that commits on its own; it also resets on every switch.
/// - `time_control.byoyomi_period_ms` and `time_control.canadian_block_ms`:
///   they reset to full on a move.
/// - with `TIMEOUT_ACTION_SKIP`, every budget that the flag of the one before
///   arms: `initial_time_ms`, `participants[i].initial_time_ms`,
///   `groups[i].initial_time_ms`, `max_time_ms` (MODE_COUNT_UP).
///
/// Why 250 ms: no turn can be played in less (a human's reaction time, plus a
/// network round trip), so a shorter value only ever produces timeouts; and it
/// holds a session nobody calls to at most 4 automatic commits a second, each
/// a state write, a log and audit entry, a Pub/Sub message and a Postgres row.
/// How many such commits in a row: `apply.rs` (one round, then the session
/// ends). docs/clock-rules.md, "Floors and sessions left alone".
pub const MIN_REPEATING_MS: i64 = 250;

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
    /// How long the session may stay PENDING before it expires (`None`: for
    /// ever); the app sets it from `SYNCKAIROS_UNSTARTED_TTL`.
    pub start_within: Option<Micros>,
    /// Credit SwitchCycle's `lag_ms` from a quota (per-participant and per-group modes).
    pub lag_compensation: bool,
    /// 0: none; else a PENDING session is CANCELLED this long after creation.
    pub start_timeout_ms: i64,
    /// 0: none; else a first turn running longer cancels the session.
    pub first_move_timeout_ms: i64,
}

impl NewParticipant {
    /// A participant with its defaults: index by position, no group, the session's budget.
    pub fn named(id: ParticipantId) -> Self {
        Self {
            id,
            index: None,
            group: None,
            initial_time_ms: None,
        }
    }
}

impl NewSession {
    /// A session with every optional field at its default (no time control,
    /// no mode-specific budget, default timeout action, no metadata).
    pub fn new(id: SessionId, mode: Mode, participants: Vec<NewParticipant>) -> Self {
        Self {
            id,
            epoch: String::new(),
            mode,
            participants,
            groups: Vec::new(),
            time_control: NewTimeControl::default(),
            initial_time_ms: 0,
            cycle_time_ms: 0,
            global_time_ms: 0,
            max_time_ms: 0,
            timeout_action: None,
            metadata: BTreeMap::new(),
            request_id: None,
            start_within: None,
            lag_compensation: false,
            start_timeout_ms: 0,
            first_move_timeout_ms: 0,
        }
    }
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

/// `ms` (already known to be in range; 0 = off) is at least `MIN_REPEATING_MS`.
fn above_floor(field: &str, ms: i64, why: &str) -> Result<(), RuleError> {
    if ms != 0 && ms < MIN_REPEATING_MS {
        return Err(RuleError::invalid(
            field,
            format!("must be at least {MIN_REPEATING_MS} ms{why}, got {ms}"),
        ));
    }
    Ok(())
}

/// What `above_floor` says about a duration that resets or repeats.
const REPEATS: &str = " (the floor of a duration that repeats)";
/// What `above_floor` says about a budget that SKIP arms.
const SKIP_ARMS: &str =
    " with TIMEOUT_ACTION_SKIP (the floor of a budget that the previous flag arms)";

fn must_be_unset(field: &str, set: bool, mode: Mode) -> Result<(), RuleError> {
    if set {
        return Err(RuleError::invalid(
            field,
            format!("is not used by {}", mode_name(mode)),
        ));
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
            format!(
                "at most {MAX_METADATA_ENTRIES} entries, got {}",
                metadata.len()
            ),
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
    // No control characters (text.rs says why): the field is the entry,
    // `metadata["note"]`, its key spelled with Rust's escapes (`"a\u{0}b"`).
    for (k, v) in metadata {
        let field = format!("metadata[{k:?}]");
        if let Some((c, at)) = first_control(k) {
            return Err(RuleError::invalid(
                &field,
                format!("the key {}", control_reason(c, at)),
            ));
        }
        if let Some((c, at)) = first_control(v) {
            return Err(RuleError::invalid(&field, control_reason(c, at)));
        }
    }
    Ok(())
}

fn non_negative(field: &str, ms: i64) -> Result<Micros, RuleError> {
    if !(0..=MAX_DURATION_MS).contains(&ms) {
        return Err(RuleError::invalid(
            field,
            format!("must be between 0 and {MAX_DURATION_MS} ms, got {ms}"),
        ));
    }
    Ok(ms * MICROS_PER_MS)
}

/// Checks a time control and its combinations (SPEC §4): one overtime or
/// delay family at a time; hourglass alone; each pair of fields complete.
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
    let increment = non_negative("time_control.increment_ms", tc.increment_ms)?;
    let max_remaining = optional_duration("time_control.max_remaining_ms", tc.max_remaining_ms)?;
    let delay = non_negative("time_control.delay_ms", tc.delay_ms)?;
    match (delay > 0, tc.delay_kind) {
        (true, None) => {
            return Err(RuleError::invalid(
                "time_control.delay_kind",
                "is required with delay_ms",
            ));
        }
        (false, Some(_)) => {
            return Err(RuleError::invalid(
                "time_control.delay_ms",
                "is required with delay_kind",
            ));
        }
        _ => {}
    }
    let byoyomi_period = non_negative("time_control.byoyomi_period_ms", tc.byoyomi_period_ms)?;
    above_floor(
        "time_control.byoyomi_period_ms",
        tc.byoyomi_period_ms,
        REPEATS,
    )?;
    if (tc.byoyomi_periods > 0) != (byoyomi_period > 0) {
        return Err(RuleError::invalid(
            "time_control.byoyomi_periods",
            "byoyomi_periods and byoyomi_period_ms go together",
        ));
    }
    let canadian_block = non_negative("time_control.canadian_block_ms", tc.canadian_block_ms)?;
    above_floor(
        "time_control.canadian_block_ms",
        tc.canadian_block_ms,
        REPEATS,
    )?;
    if (tc.canadian_stones > 0) != (canadian_block > 0) {
        return Err(RuleError::invalid(
            "time_control.canadian_stones",
            "canadian_stones and canadian_block_ms go together",
        ));
    }
    if tc.byoyomi_periods > 1000 || tc.canadian_stones > 1000 {
        return Err(RuleError::invalid(
            "time_control.byoyomi_periods",
            "periods and stones are at most 1000",
        ));
    }
    // One family at a time: they answer the same question differently.
    let families = [
        (
            "time_control.increment_ms",
            increment > 0 || tc.stages.iter().any(|s| s.increment_ms.is_some()),
        ),
        ("time_control.delay_ms", delay > 0),
        ("time_control.byoyomi_periods", tc.byoyomi_periods > 0),
        ("time_control.canadian_stones", tc.canadian_stones > 0),
        ("time_control.hourglass", tc.hourglass),
    ];
    let set: Vec<&str> = families
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if set.len() > 1 {
        return Err(RuleError::invalid(
            set[1],
            format!(
                "cannot be combined with {} (one of increment, delay, byo-yomi, Canadian, hourglass)",
                set[0]
            ),
        ));
    }
    if max_remaining > 0 && set.first() != Some(&"time_control.increment_ms") {
        return Err(RuleError::invalid(
            "time_control.max_remaining_ms",
            "caps the Fischer increment; set time_control.increment_ms too",
        ));
    }
    if tc.hourglass && !tc.stages.is_empty() {
        return Err(RuleError::invalid(
            "time_control.stages",
            "cannot be combined with time_control.hourglass",
        ));
    }
    let mut stages = Vec::with_capacity(tc.stages.len());
    let mut last_after = 0;
    for (i, st) in tc.stages.iter().enumerate() {
        let field = |n: &str| format!("time_control.stages[{i}].{n}");
        if st.after_cycles == 0 || st.after_cycles <= last_after {
            return Err(RuleError::invalid(
                &field("after_cycles"),
                "must be at least 1 and strictly increasing across stages",
            ));
        }
        last_after = st.after_cycles;
        stages.push(Stage {
            after_cycles: st.after_cycles,
            add: non_negative(&field("add_ms"), st.add_ms)?,
            increment: st
                .increment_ms
                .map(|ms| non_negative(&field("increment_ms"), ms))
                .transpose()?,
        });
    }
    if stages.len() > 32 {
        return Err(RuleError::invalid(
            "time_control.stages",
            "at most 32 stages",
        ));
    }
    Ok(TimeControl {
        increment,
        max_remaining,
        delay,
        delay_kind: tc.delay_kind,
        byoyomi_periods: tc.byoyomi_periods,
        byoyomi_period,
        canadian_stones: tc.canadian_stones,
        canadian_block,
        hourglass: tc.hourglass,
        stages,
    })
}

/// Validates `new` and builds the session at version 1 with its CREATED event.
pub fn create(new: NewSession, now: Micros) -> Result<(Session, Event), RuleError> {
    let mode = new.mode;
    check_metadata(&new.metadata)?;
    if new.participants.is_empty() || new.participants.len() > MAX_PARTICIPANTS {
        return Err(RuleError::invalid(
            "participants",
            format!(
                "must hold 1 to {MAX_PARTICIPANTS} participants, got {}",
                new.participants.len()
            ),
        ));
    }
    let time_control = check_time_control(&new.time_control, mode)?;
    must_be_unset(
        "cycle_time_ms",
        mode != Mode::PerCycle && new.cycle_time_ms != 0,
        mode,
    )?;
    must_be_unset(
        "global_time_ms",
        mode != Mode::Global && new.global_time_ms != 0,
        mode,
    )?;
    must_be_unset(
        "max_time_ms",
        mode != Mode::CountUp && new.max_time_ms != 0,
        mode,
    )?;
    must_be_unset(
        "groups",
        mode != Mode::PerGroup && !new.groups.is_empty(),
        mode,
    )?;
    let own_clocks = mode == Mode::PerParticipant;
    must_be_unset(
        "initial_time_ms",
        !own_clocks && new.initial_time_ms != 0,
        mode,
    )?;
    if new.initial_time_ms != 0 {
        required_duration("initial_time_ms", new.initial_time_ms)?;
    }
    let cycle_time = if mode == Mode::PerCycle {
        let cycle = required_duration("cycle_time_ms", new.cycle_time_ms)?;
        above_floor("cycle_time_ms", new.cycle_time_ms, REPEATS)?;
        cycle
    } else {
        0
    };
    let global_time = if mode == Mode::Global {
        required_duration("global_time_ms", new.global_time_ms)?
    } else {
        0
    };
    let max_time = if mode == Mode::CountUp {
        optional_duration("max_time_ms", new.max_time_ms)?
    } else {
        0
    };
    let timeout_action = new
        .timeout_action
        .unwrap_or(TimeoutAction::default_for(mode));
    if mode == Mode::Global && timeout_action != TimeoutAction::EndSession {
        return Err(RuleError::invalid(
            "timeout_action",
            "MODE_GLOBAL has one clock for everyone: only TIMEOUT_ACTION_END_SESSION applies",
        ));
    }
    if mode == Mode::CountUp && max_time == 0 && new.timeout_action.is_some() {
        return Err(RuleError::invalid(
            "timeout_action",
            "needs max_time_ms: a count-up without a cap never times out",
        ));
    }

    // Under SKIP a flag arms the next budget: each one is a repeating duration.
    let skip_floor = |field: &str, ms: i64| {
        if timeout_action == TimeoutAction::Skip {
            above_floor(field, ms, SKIP_ARMS)
        } else {
            Ok(())
        }
    };
    skip_floor("initial_time_ms", new.initial_time_ms)?;
    skip_floor("max_time_ms", new.max_time_ms)?;
    if new.lag_compensation && !matches!(mode, Mode::PerParticipant | Mode::PerGroup) {
        return Err(RuleError::invalid(
            "lag_compensation",
            format!(
                "only MODE_PER_PARTICIPANT and MODE_PER_GROUP compensate lag, not {}",
                mode_name(mode)
            ),
        ));
    }
    // Both abort timeouts fire on their own: a floor, as for every duration
    // that the server acts on without a call.
    let start_timeout = optional_duration("start_timeout_ms", new.start_timeout_ms)?;
    above_floor("start_timeout_ms", new.start_timeout_ms, "")?;
    let first_move_timeout = optional_duration("first_move_timeout_ms", new.first_move_timeout_ms)?;
    above_floor("first_move_timeout_ms", new.first_move_timeout_ms, "")?;

    let mut groups = Vec::with_capacity(new.groups.len());
    let mut seen_groups = HashSet::new();
    for (i, g) in new.groups.iter().enumerate() {
        if !seen_groups.insert(g.id.clone()) {
            return Err(RuleError::invalid(
                &format!("groups[{i}].group_id"),
                format!("duplicate id {:?}", g.id.as_str()),
            ));
        }
        let field = format!("groups[{i}].initial_time_ms");
        let initial = required_duration(&field, g.initial_time_ms)?;
        skip_floor(&field, g.initial_time_ms)?;
        groups.push(Group {
            id: g.id.clone(),
            clock: Budget::new(initial, &time_control),
        });
    }
    if mode == Mode::PerGroup && groups.is_empty() {
        return Err(RuleError::invalid(
            "groups",
            "MODE_PER_GROUP needs at least one group",
        ));
    }

    let mut seen_ids = HashSet::new();
    let mut seen_indexes = HashSet::new();
    let mut participants = Vec::with_capacity(new.participants.len());
    for (pos, p) in new.participants.iter().enumerate() {
        let field = |name: &str| format!("participants[{pos}].{name}");
        if !seen_ids.insert(p.id.clone()) {
            return Err(RuleError::invalid(
                &field("participant_id"),
                format!("duplicate id {:?}", p.id.as_str()),
            ));
        }
        let index = p.index.unwrap_or(pos as u32);
        if !seen_indexes.insert(index) {
            return Err(RuleError::invalid(
                &field("index"),
                format!("duplicate index {index}"),
            ));
        }
        match (&p.group, mode) {
            (None, Mode::PerGroup) => {
                return Err(RuleError::invalid(
                    &field("group_id"),
                    "is required in MODE_PER_GROUP",
                ));
            }
            (Some(g), Mode::PerGroup) if !seen_groups.contains(g) => {
                return Err(RuleError::invalid(
                    &field("group_id"),
                    format!("no group {:?} in groups", g.as_str()),
                ));
            }
            (Some(_), m) if m != Mode::PerGroup => must_be_unset(&field("group_id"), true, mode)?,
            _ => {}
        }
        must_be_unset(
            &field("initial_time_ms"),
            !own_clocks && p.initial_time_ms.is_some(),
            mode,
        )?;
        let clock = match mode {
            Mode::PerParticipant => {
                let initial = match p.initial_time_ms {
                    Some(ms) => {
                        let initial = required_duration(&field("initial_time_ms"), ms)?;
                        skip_floor(&field("initial_time_ms"), ms)?;
                        initial
                    }
                    None if new.initial_time_ms != 0 => new.initial_time_ms * MICROS_PER_MS,
                    None => {
                        return Err(RuleError::invalid(
                            &field("initial_time_ms"),
                            "is required (or set initial_time_ms for every participant)",
                        ));
                    }
                };
                Budget::new(initial, &time_control)
            }
            Mode::CountUp if max_time > 0 => Budget::new(max_time, &time_control),
            _ => Budget::unbounded(),
        };
        participants.push(Participant {
            id: p.id.clone(),
            index,
            group: p.group.clone(),
            clock,
            cycle_count: 0,
            expired: false,
            lag_quota: 0,
        });
    }
    if let Some((i, g)) = groups
        .iter()
        .enumerate()
        .find(|(_, g)| !participants.iter().any(|p| p.group.as_ref() == Some(&g.id)))
    {
        return Err(RuleError::invalid(
            &format!("groups[{i}].group_id"),
            format!("group {:?} has no participants", g.id.as_str()),
        ));
    }
    participants.sort_by_key(|p| p.index);

    let mut session = Session {
        id: new.id,
        epoch: new.epoch,
        mode,
        status: Status::Pending,
        version: 1,
        participants,
        groups,
        active: None,
        cycle_count: 0,
        cycle_started_at: None,
        turn_started_at: None,
        global: (mode == Mode::Global).then(|| Budget::new(global_time, &time_control)),
        cycle: (mode == Mode::PerCycle).then(|| Budget::new(cycle_time, &time_control)),
        time_control,
        cycle_time,
        global_time,
        max_time,
        timeout_action,
        lag_compensation: new.lag_compensation,
        start_timeout,
        first_move_timeout,
        cancel_reason: None,
        metadata: new.metadata,
        created_at: now,
        started_at: None,
        start_by: new.start_within.map(|d| now.saturating_add(d.max(0))),
        ended_at: None,
        updated_at: now,
        unattended_timeouts: 0,
        recent_requests: VecDeque::new(),
        undo: None,
    };
    if session.lag_compensation {
        for p in &mut session.participants {
            p.lag_quota = 0;
        }
        super::lag::arm_quotas(&mut session);
    }
    if let Some(rid) = &new.request_id {
        session.remember_request(rid.as_str());
    }
    let event = Event {
        version: 1,
        kind: EventKind::Created,
        participant: None,
        at: now,
        session: session.clone(),
        lag: None,
    };
    Ok((session, event))
}
