//! Proto <-> domain, both ways. Requests are parsed here, once: a bad field is
//! an `INVALID_ARGUMENT` naming it, before anything is touched. Replies are
//! computed here at their `server_time`.

use prost_types::Timestamp;

use super::pb;
use crate::app::{AppError, Guards, StreamItem};
use crate::engine::{
    self, CancelReason, DelayKind, Event, EventKind, MICROS_PER_MS, Micros, Mode, NewGroup,
    NewParticipant, NewSession, NewStage, NewTimeControl, ParticipantId, RequestId, Session,
    SessionId, Status, TimeControl, TimeoutAction,
};

fn invalid(e: engine::RuleError) -> AppError {
    AppError::from(e)
}

pub fn timestamp(micros: Micros) -> Timestamp {
    Timestamp {
        seconds: micros.div_euclid(1_000_000),
        nanos: (micros.rem_euclid(1_000_000) * 1_000) as i32,
    }
}

/// Durations and used time: whole milliseconds, rounded down.
fn ms(micros: Micros) -> i64 {
    micros.div_euclid(MICROS_PER_MS)
}

/// Time left: rounded up, so a clock shows 0 only when it has run out.
fn ms_left(micros: Micros) -> i64 {
    (micros + MICROS_PER_MS - 1).div_euclid(MICROS_PER_MS)
}

// ---------- requests ----------

pub fn session_id(raw: &str) -> Result<SessionId, AppError> {
    SessionId::parse("session_id", raw).map_err(invalid)
}

fn participant_id(field: &str, raw: &str) -> Result<ParticipantId, AppError> {
    ParticipantId::parse(field, raw).map_err(invalid)
}

fn optional_participant(
    field: &str,
    raw: Option<&String>,
) -> Result<Option<ParticipantId>, AppError> {
    raw.map(|r| participant_id(field, r)).transpose()
}

/// `request_id` is a plain string: empty means "none".
fn request_id(raw: &str) -> Result<Option<RequestId>, AppError> {
    if raw.is_empty() {
        return Ok(None);
    }
    RequestId::parse("request_id", raw)
        .map(Some)
        .map_err(invalid)
}

/// Free text (no control characters, engine/text.rs); the error names `field`.
pub fn text(field: &str, raw: String) -> Result<String, AppError> {
    engine::check_text(field, &raw).map_err(invalid)?;
    Ok(raw)
}

/// A Subscribe `epoch`: free text, compared with the session's.
pub fn epoch(raw: String) -> Result<String, AppError> {
    text("epoch", raw)
}

/// A ListSessionEvents `page_token`: opaque to the caller, free text here.
pub fn page_token(raw: String) -> Result<String, AppError> {
    text("page_token", raw)
}

/// ListSessions' `statuses`: each a known status; the error names
/// `statuses[i]`.
pub fn statuses(raw: &[i32]) -> Result<Vec<Status>, AppError> {
    raw.iter()
        .enumerate()
        .map(|(i, &r)| {
            let field = || format!("statuses[{i}]");
            match pb::Status::try_from(r) {
                Ok(pb::Status::Unspecified) => Err(AppError::invalid(
                    field(),
                    "STATUS_UNSPECIFIED is not a status to list",
                )),
                Ok(pb::Status::Pending) => Ok(Status::Pending),
                Ok(pb::Status::Running) => Ok(Status::Running),
                Ok(pb::Status::Paused) => Ok(Status::Paused),
                Ok(pb::Status::Expired) => Ok(Status::Expired),
                Ok(pb::Status::Completed) => Ok(Status::Completed),
                Ok(pb::Status::Cancelled) => Ok(Status::Cancelled),
                Err(_) => Err(AppError::invalid(field(), format!("unknown value {r}"))),
            }
        })
        .collect()
}

pub fn guards(expected_version: Option<u64>, raw_request_id: &str) -> Result<Guards, AppError> {
    Ok(Guards {
        expected_version,
        request_id: request_id(raw_request_id)?,
    })
}

fn enum_arg<T>(field: &str, raw: i32, known: Option<T>) -> Result<T, AppError> {
    known.ok_or_else(|| {
        AppError::invalid(
            field,
            if raw == 0 {
                "is required".to_owned()
            } else {
                format!("unknown value {raw}")
            },
        )
    })
}

fn mode(raw: i32) -> Result<Mode, AppError> {
    let known = match pb::Mode::try_from(raw) {
        Ok(pb::Mode::PerParticipant) => Some(Mode::PerParticipant),
        Ok(pb::Mode::PerCycle) => Some(Mode::PerCycle),
        Ok(pb::Mode::PerGroup) => Some(Mode::PerGroup),
        Ok(pb::Mode::Global) => Some(Mode::Global),
        Ok(pb::Mode::CountUp) => Some(Mode::CountUp),
        Ok(pb::Mode::Unspecified) | Err(_) => None,
    };
    enum_arg("mode", raw, known)
}

/// UNSPECIFIED means "the mode's default".
fn timeout_action(raw: i32) -> Result<Option<TimeoutAction>, AppError> {
    match pb::TimeoutAction::try_from(raw) {
        Ok(pb::TimeoutAction::Unspecified) => Ok(None),
        Ok(pb::TimeoutAction::EndSession) => Ok(Some(TimeoutAction::EndSession)),
        Ok(pb::TimeoutAction::Skip) => Ok(Some(TimeoutAction::Skip)),
        Ok(pb::TimeoutAction::Notify) => Ok(Some(TimeoutAction::Notify)),
        Err(_) => Err(AppError::invalid(
            "timeout_action",
            format!("unknown value {raw}"),
        )),
    }
}

fn delay_kind(raw: i32) -> Result<Option<DelayKind>, AppError> {
    match pb::DelayKind::try_from(raw) {
        Ok(pb::DelayKind::Unspecified) => Ok(None),
        Ok(pb::DelayKind::Bronstein) => Ok(Some(DelayKind::Bronstein)),
        Ok(pb::DelayKind::Simple) => Ok(Some(DelayKind::Simple)),
        Err(_) => Err(AppError::invalid(
            "time_control.delay_kind",
            format!("unknown value {raw}"),
        )),
    }
}

fn time_control(tc: Option<pb::TimeControl>) -> Result<NewTimeControl, AppError> {
    let Some(tc) = tc else {
        return Ok(NewTimeControl::default());
    };
    Ok(NewTimeControl {
        increment_ms: tc.increment_ms,
        max_remaining_ms: tc.max_remaining_ms,
        delay_ms: tc.delay_ms,
        delay_kind: delay_kind(tc.delay_kind)?,
        byoyomi_periods: tc.byoyomi_periods,
        byoyomi_period_ms: tc.byoyomi_period_ms,
        canadian_stones: tc.canadian_stones,
        canadian_block_ms: tc.canadian_block_ms,
        hourglass: tc.hourglass,
        stages: tc
            .stages
            .into_iter()
            .map(|s| NewStage {
                after_cycles: s.after_cycles,
                add_ms: s.add_ms,
                increment_ms: s.increment_ms,
            })
            .collect(),
    })
}

pub fn create_request(r: pb::CreateSessionRequest) -> Result<NewSession, AppError> {
    // Empty: the server names the session with a UUIDv7 (time-ordered).
    let id = if r.session_id.is_empty() {
        session_id(&uuid::Uuid::now_v7().to_string())?
    } else {
        session_id(&r.session_id)?
    };
    if r.participants.len() > engine::MAX_PARTICIPANTS {
        return Err(AppError::invalid(
            "participants",
            format!(
                "must hold 1 to {} participants, got {}",
                engine::MAX_PARTICIPANTS,
                r.participants.len()
            ),
        ));
    }
    let participants = r
        .participants
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            Ok(NewParticipant {
                id: participant_id(
                    &format!("participants[{i}].participant_id"),
                    &p.participant_id,
                )?,
                index: p.index,
                group: p
                    .group_id
                    .map(|g| {
                        engine::GroupId::parse(&format!("participants[{i}].group_id"), &g)
                            .map_err(invalid)
                    })
                    .transpose()?,
                initial_time_ms: p.initial_time_ms,
            })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    let groups = r
        .groups
        .into_iter()
        .enumerate()
        .map(|(i, g)| {
            Ok(NewGroup {
                id: engine::GroupId::parse(&format!("groups[{i}].group_id"), &g.group_id)
                    .map_err(invalid)?,
                initial_time_ms: g.initial_time_ms,
            })
        })
        .collect::<Result<Vec<_>, AppError>>()?;
    Ok(NewSession {
        id,
        // The app gives every created session a fresh epoch.
        epoch: String::new(),
        mode: mode(r.mode)?,
        participants,
        groups,
        time_control: time_control(r.time_control)?,
        initial_time_ms: r.initial_time_ms,
        cycle_time_ms: r.cycle_time_ms,
        global_time_ms: r.global_time_ms,
        max_time_ms: r.max_time_ms,
        timeout_action: timeout_action(r.timeout_action)?,
        metadata: r.metadata.into_iter().collect(),
        request_id: request_id(&r.request_id)?,
        // The app sets it from its config.
        start_within: None,
        lag_compensation: r.lag_compensation,
        start_timeout_ms: r.start_timeout_ms,
        first_move_timeout_ms: r.first_move_timeout_ms,
    })
}

pub fn start_first(r: &pb::StartSessionRequest) -> Result<Option<ParticipantId>, AppError> {
    optional_participant("first_participant_id", r.first_participant_id.as_ref())
}

pub fn switch_args(
    r: &pb::SwitchCycleRequest,
) -> Result<(Option<ParticipantId>, Option<ParticipantId>), AppError> {
    Ok((
        optional_participant("from_participant_id", r.from_participant_id.as_ref())?,
        optional_participant("next_participant_id", r.next_participant_id.as_ref())?,
    ))
}

/// A SwitchCycle's `lag_ms`: 0-60000 when set.
pub fn lag_ms(r: &pb::SwitchCycleRequest) -> Result<Option<i64>, AppError> {
    match r.lag_ms {
        Some(ms) if !(0..=engine::MAX_LAG_MS).contains(&ms) => Err(AppError::invalid(
            "lag_ms",
            format!("must be between 0 and {} ms, got {ms}", engine::MAX_LAG_MS),
        )),
        other => Ok(other),
    }
}

pub fn adjust_target(r: &pb::AdjustTimeRequest) -> Result<engine::AdjustTarget, AppError> {
    match (r.participant_id.is_empty(), r.group_id.is_empty()) {
        (false, true) => Ok(engine::AdjustTarget::Participant(participant_id(
            "participant_id",
            &r.participant_id,
        )?)),
        (true, false) => Ok(engine::AdjustTarget::Group(
            engine::GroupId::parse("group_id", &r.group_id).map_err(invalid)?,
        )),
        _ => Err(AppError::invalid(
            "participant_id",
            "set exactly one of participant_id and group_id",
        )),
    }
}

// ---------- replies ----------

fn mode_pb(m: Mode) -> pb::Mode {
    match m {
        Mode::PerParticipant => pb::Mode::PerParticipant,
        Mode::PerCycle => pb::Mode::PerCycle,
        Mode::PerGroup => pb::Mode::PerGroup,
        Mode::Global => pb::Mode::Global,
        Mode::CountUp => pb::Mode::CountUp,
    }
}

fn status_pb(s: Status) -> pb::Status {
    match s {
        Status::Pending => pb::Status::Pending,
        Status::Running => pb::Status::Running,
        Status::Paused => pb::Status::Paused,
        Status::Expired => pb::Status::Expired,
        Status::Completed => pb::Status::Completed,
        Status::Cancelled => pb::Status::Cancelled,
    }
}

fn timeout_action_pb(a: TimeoutAction) -> pb::TimeoutAction {
    match a {
        TimeoutAction::EndSession => pb::TimeoutAction::EndSession,
        TimeoutAction::Skip => pb::TimeoutAction::Skip,
        TimeoutAction::Notify => pb::TimeoutAction::Notify,
    }
}

fn event_type_pb(k: EventKind) -> pb::EventType {
    match k {
        EventKind::Created => pb::EventType::Created,
        EventKind::Started => pb::EventType::Started,
        EventKind::Switched => pb::EventType::Switched,
        EventKind::Paused => pb::EventType::Paused,
        EventKind::Resumed => pb::EventType::Resumed,
        EventKind::TimeAdjusted => pb::EventType::TimeAdjusted,
        EventKind::TimedOut => pb::EventType::TimedOut,
        EventKind::ParticipantExpired => pb::EventType::ParticipantExpired,
        EventKind::Expired => pb::EventType::Expired,
        EventKind::Completed => pb::EventType::Completed,
        EventKind::Cancelled => pb::EventType::Cancelled,
        EventKind::Deleted => pb::EventType::Deleted,
        EventKind::Undone => pb::EventType::Undone,
    }
}

pub fn cancel_reason_pb(r: Option<CancelReason>) -> pb::CancelReason {
    match r {
        None => pb::CancelReason::Unspecified,
        Some(CancelReason::Requested) => pb::CancelReason::Requested,
        Some(CancelReason::StartTimeout) => pb::CancelReason::StartTimeout,
        Some(CancelReason::FirstMoveTimeout) => pb::CancelReason::FirstMoveTimeout,
    }
}

fn time_control_pb(tc: &TimeControl) -> pb::TimeControl {
    pb::TimeControl {
        increment_ms: ms(tc.increment),
        max_remaining_ms: ms(tc.max_remaining),
        delay_ms: ms(tc.delay),
        delay_kind: match tc.delay_kind {
            None => pb::DelayKind::Unspecified,
            Some(DelayKind::Bronstein) => pb::DelayKind::Bronstein,
            Some(DelayKind::Simple) => pb::DelayKind::Simple,
        } as i32,
        byoyomi_periods: tc.byoyomi_periods,
        byoyomi_period_ms: ms(tc.byoyomi_period),
        canadian_stones: tc.canadian_stones,
        canadian_block_ms: ms(tc.canadian_block),
        hourglass: tc.hourglass,
        stages: tc
            .stages
            .iter()
            .map(|s| pb::Stage {
                after_cycles: s.after_cycles,
                add_ms: ms(s.add),
                increment_ms: s.increment.map(ms),
            })
            .collect(),
    }
}

/// The session with every clock computed at `now`.
pub fn session(stored: &Session, now: Micros) -> pb::Session {
    let s = engine::view(stored, now);
    let tc = &s.time_control;
    let participants = s
        .participants
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let clock = engine::participant_view(&s, i);
            pb::Participant {
                participant_id: p.id.to_string(),
                index: p.index,
                group_id: p.group.as_ref().map(|g| g.to_string()).unwrap_or_default(),
                remaining_ms: ms_left(clock.remaining),
                used_ms: ms(clock.used),
                cycle_count: p.cycle_count,
                active: s.active == Some(i),
                expired: p.expired,
                in_overtime: clock.in_overtime,
                periods_left: clock.periods_left,
                stones_left: clock.stones_left,
                lag_quota_ms: ms(p.lag_quota),
            }
        })
        .collect();
    let groups = s
        .groups
        .iter()
        .map(|g| pb::Group {
            group_id: g.id.to_string(),
            remaining_ms: ms_left(g.clock.shown_remaining(tc)),
            used_ms: ms(g.clock.used),
            expired: g.clock.expired,
        })
        .collect();
    let active = s.active_participant();
    pb::Session {
        session_id: s.id.to_string(),
        mode: mode_pb(s.mode) as i32,
        status: status_pb(s.status) as i32,
        version: s.version,
        participants,
        groups,
        active_participant_id: active.map(|p| p.id.to_string()).unwrap_or_default(),
        active_group_id: active
            .and_then(|p| p.group.as_ref())
            .map(|g| g.to_string())
            .unwrap_or_default(),
        cycle_count: s.cycle_count,
        cycle_started_at: stored.turn_began().map(timestamp),
        deadline_at: engine::flag_at(stored).map(timestamp),
        global_remaining_ms: s.global.as_ref().map_or(0, |g| ms_left(g.remaining)),
        time_control: Some(time_control_pb(tc)),
        timeout_action: timeout_action_pb(s.timeout_action) as i32,
        metadata: s
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        epoch: s.epoch.clone(),
        created_at: Some(timestamp(s.created_at)),
        started_at: s.started_at.map(timestamp),
        ended_at: s.ended_at.map(timestamp),
        updated_at: Some(timestamp(s.updated_at)),
        server_time: Some(timestamp(now)),
        cycle_time_ms: ms(s.cycle_time),
        global_time_ms: ms(s.global_time),
        max_time_ms: ms(s.max_time),
        lag_compensation: s.lag_compensation,
        start_timeout_ms: ms(s.start_timeout),
        first_move_timeout_ms: ms(s.first_move_timeout),
        cancel_reason: cancel_reason_pb(s.cancel_reason) as i32,
        abort_at: engine::abort_at(stored).map(timestamp),
    }
}

pub fn event(e: &Event) -> pb::SessionEvent {
    pb::SessionEvent {
        session: Some(session(&e.session, e.at)),
        ..event_head(e)
    }
}

/// An event without its session (WatchSessions' `omit_session`).
pub fn event_head(e: &Event) -> pb::SessionEvent {
    pb::SessionEvent {
        session_id: e.session.id.to_string(),
        version: e.version,
        epoch: e.session.epoch.clone(),
        r#type: event_type_pb(e.kind) as i32,
        participant_id: e
            .participant
            .as_ref()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        server_time: Some(timestamp(e.at)),
        session: None,
        lag_ms: e.lag.map_or(0, |l| ms(l.asked)),
        lag_compensation_ms: e.lag.map_or(0, |l| ms(l.given)),
        cancel_reason: if e.kind == EventKind::Cancelled {
            cancel_reason_pb(e.session.cancel_reason) as i32
        } else {
            0
        },
    }
}

pub fn stream_item(item: &StreamItem) -> pb::SessionEvent {
    match item {
        StreamItem::Event(e) => event(e),
        StreamItem::Snapshot { session: s, at } => pb::SessionEvent {
            session_id: s.id.to_string(),
            version: s.version,
            epoch: s.epoch.clone(),
            r#type: pb::EventType::Snapshot as i32,
            participant_id: String::new(),
            server_time: Some(timestamp(*at)),
            session: Some(session(s, *at)),
            ..Default::default()
        },
        StreamItem::Heartbeat {
            session: header,
            version,
            at,
        } => pb::SessionEvent {
            session_id: header.key.id.to_string(),
            version: *version,
            epoch: header.epoch.clone(),
            r#type: pb::EventType::Heartbeat as i32,
            participant_id: String::new(),
            server_time: Some(timestamp(*at)),
            session: None,
            ..Default::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_keep_microseconds_and_handle_pre_epoch() {
        assert_eq!(
            timestamp(1_500_000_123_456),
            Timestamp {
                seconds: 1_500_000,
                nanos: 123_456_000
            }
        );
        assert_eq!(
            timestamp(-1),
            Timestamp {
                seconds: -1,
                nanos: 999_999_000
            }
        );
    }

    #[test]
    fn enum_zero_is_required_and_unknown_values_are_named() {
        assert_eq!(
            mode(0).unwrap_err(),
            AppError::invalid("mode", "is required")
        );
        assert_eq!(
            mode(99).unwrap_err(),
            AppError::invalid("mode", "unknown value 99")
        );
        assert_eq!(timeout_action(0).unwrap(), None);
        assert!(timeout_action(42).is_err());
    }
}
