//! The clock rules (SPEC §1–5) as tests, one module per concern.
//!
//! Worked examples of MODE_PER_PARTICIPANT (sudden death and Fischer), built with
//! the helpers below (builders, command shorthands, assertions):
//! - `create`: CreateSession: version 1, defaults, ordering, every input limit.
//! - `start_switch`: Start and Switch: who moves, what a move is charged, the
//!   Fischer increment and its cap.
//! - `pause_complete_adjust`: Pause/Resume, Complete/Cancel, AdjustTime, and
//!   terminal sessions refusing every command.
//! - `timeouts`: the running clock and its deadline, Timeout, END_SESSION /
//!   NOTIFY / SKIP, commands that arrive at or after the deadline.
//! - `idempotency`: request ids, expected_version, the version and snapshot
//!   each event carries.
//! - `hostile_input`: issue 12 — control characters in metadata, the floor of
//!   every duration that repeats, a session left alone stops after one round
//!   (examples and a property).
//! - `stored`: `check_stored`, what a session read back from storage must be.
//!
//! Then, each folder with a `mod.rs` of its own:
//! - `spec`: one worked example per row of SPEC §3 (modes), §4 (time controls)
//!   and §5 (timeout actions), every mode, times in ms, with its own helpers.
//! - `property`: property tests (proptest) that replay thousands of random
//!   command sequences against the pure engine and check the rules after every
//!   `apply`.
//!
//! Units: every instant and duration here (outside `spec`) is microseconds
//! (`Micros`); the `*_ms` fields of the inputs are milliseconds.

use super::*;

mod create;
mod hostile_input;
mod idempotency;
mod pause_complete_adjust;
mod property;
mod spec;
mod start_switch;
mod stored;
mod timeouts;
mod undo_lag_abort;

const MS: Micros = MICROS_PER_MS;
const SEC: Micros = 1_000 * MS;
const MIN: Micros = 60 * SEC;
/// An arbitrary creation instant (2023-11-14).
const T0: Micros = 1_700_000_000_000_000;
/// Five minutes, the default budget of the examples.
const FIVE_MIN_MS: i64 = 5 * 60 * 1000;

fn pid(s: &str) -> ParticipantId {
    ParticipantId::parse("participant_id", s).unwrap()
}

fn rid(s: &str) -> RequestId {
    RequestId::parse("request_id", s).unwrap()
}

fn new_participant(id: &str, initial_ms: Option<i64>) -> NewParticipant {
    NewParticipant {
        id: pid(id),
        index: None,
        group: None,
        initial_time_ms: initial_ms,
    }
}

/// A valid per-participant session: every participant gets `initial_ms`.
fn new_session(ids: &[&str], initial_ms: i64) -> NewSession {
    let participants = ids
        .iter()
        .map(|id| new_participant(id, Some(initial_ms)))
        .collect();
    NewSession {
        epoch: "epoch-1".to_owned(),
        ..NewSession::new(
            SessionId::parse("session_id", "game-1").unwrap(),
            Mode::PerParticipant,
            participants,
        )
    }
}

fn fischer(mut n: NewSession, increment_ms: i64, max_remaining_ms: i64) -> NewSession {
    n.time_control.increment_ms = increment_ms;
    n.time_control.max_remaining_ms = max_remaining_ms;
    n
}

fn on_timeout(mut n: NewSession, action: TimeoutAction) -> NewSession {
    n.timeout_action = Some(action);
    n
}

fn created(n: NewSession) -> Session {
    create(n, T0).expect("valid session").0
}

/// Created at T0 and started at T0 with the default first participant.
fn started(n: NewSession) -> Session {
    ok(&created(n), start(), T0).session
}

fn req(c: Command) -> Request {
    Request::new(c)
}

fn ok(s: &Session, c: Command, now: Micros) -> Applied {
    let c2 = c.clone();
    apply(s, &req(c), now).unwrap_or_else(|e| panic!("{c2:?} at {now} refused: {e}"))
}

fn err(s: &Session, c: Command, now: Micros) -> RuleError {
    let c2 = c.clone();
    match apply(s, &req(c), now) {
        Ok(a) => panic!(
            "{c2:?} at {now} should be refused, got events {:?}",
            kinds(&a)
        ),
        Err(e) => e,
    }
}

fn start() -> Command {
    Command::Start { first: None }
}

fn start_with(id: &str) -> Command {
    Command::Start {
        first: Some(pid(id)),
    }
}

fn switch() -> Command {
    Command::Switch {
        from: None,
        next: None,
        lag_ms: None,
    }
}

fn switch_from(id: &str) -> Command {
    Command::Switch {
        from: Some(pid(id)),
        next: None,
        lag_ms: None,
    }
}

fn switch_to(id: &str) -> Command {
    Command::Switch {
        from: None,
        next: Some(pid(id)),
        lag_ms: None,
    }
}

fn adjust(id: &str, delta_ms: i64) -> Command {
    Command::Adjust {
        target: AdjustTarget::Participant(pid(id)),
        delta_ms,
    }
}

fn kinds(a: &Applied) -> Vec<(EventKind, Option<String>)> {
    a.events
        .iter()
        .map(|e| {
            (
                e.kind,
                e.participant.as_ref().map(|p| p.as_str().to_owned()),
            )
        })
        .collect()
}

fn ev(kind: EventKind, who: Option<&str>) -> (EventKind, Option<String>) {
    (kind, who.map(str::to_owned))
}

fn part<'a>(s: &'a Session, id: &str) -> &'a Participant {
    s.participants
        .iter()
        .find(|p| p.id.as_str() == id)
        .unwrap_or_else(|| panic!("no participant {id}"))
}

fn pos(s: &Session, id: &str) -> usize {
    s.participant_position(&pid(id)).unwrap()
}

fn active_id(s: &Session) -> Option<&str> {
    s.active_participant().map(|p| p.id.as_str())
}

/// `(remaining, used)` of `id` at `now`.
fn clock(s: &Session, id: &str, now: Micros) -> (Micros, Micros) {
    participant_clock(s, pos(s, id), now)
}

fn field(e: &RuleError) -> &str {
    match e {
        RuleError::InvalidArgument { field, .. } => field,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

/// The error is INVALID_ARGUMENT for `name`, and its message starts with the field.
fn assert_field(e: &RuleError, name: &str) {
    assert_eq!(field(e), name, "{e}");
    assert!(
        e.to_string().starts_with(&format!("{name}: ")),
        "message must name the field: {e}"
    );
}

fn assert_failed_precondition(e: &RuleError, mentions: &str) {
    match e {
        RuleError::FailedPrecondition(msg) => assert!(
            msg.contains(mentions),
            "{msg:?} should mention {mentions:?}"
        ),
        other => panic!("expected FailedPrecondition mentioning {mentions:?}, got {other:?}"),
    }
}

fn assert_ledger(s: &Session) {
    for p in &s.participants {
        assert_eq!(
            p.clock.initial + p.clock.credits + p.clock.adjustments - p.clock.used,
            p.clock.remaining,
            "ledger of {}: {p:?}",
            p.id
        );
        assert!(p.clock.remaining >= 0 && p.clock.used >= 0, "{p:?}");
    }
}
