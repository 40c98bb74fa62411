//! Worked examples for every row of SPEC §3 (modes), §4 (time controls) and
//! §5 (timeout actions), straight from the formulas, in every mode. Times are
//! in ms here and converted to the engine's microseconds by `ms()`.
//!
//! The helpers below (`new_session` for any mode, `chess` for two players on
//! one time control, and `step`, `switch`, `timeout` returning the session the
//! command left) are shared by:
//! - `time_controls`: §4, one example per time control;
//! - `modes`: §3, the modes besides per participant, and what AdjustTime
//!   targets in each;
//! - `timeout_actions`: §5, END_SESSION, SKIP and NOTIFY;
//! - `combinations`: what CreateSession refuses across modes and controls.
//!
//! They differ from the parent's helpers of the same names (there `switch()`
//! is a `Command`, here `switch(&s, now)` applies one), so they live apart;
//! `T0` and `pid` are the parent's, which were the same.

use super::{T0, pid};
use crate::engine::*;

mod combinations;
mod modes;
mod time_controls;
mod timeout_actions;

fn ms(v: i64) -> Micros {
    v * 1_000
}

fn at(offset_ms: i64) -> Micros {
    T0 + ms(offset_ms)
}

fn gid(s: &str) -> GroupId {
    GroupId::parse("group_id", s).unwrap()
}

fn new_session(mode: Mode, ids: &[&str]) -> NewSession {
    let participants = ids
        .iter()
        .map(|id| NewParticipant::named(pid(id)))
        .collect();
    NewSession {
        epoch: "e".into(),
        ..NewSession::new(
            SessionId::parse("session_id", "s").unwrap(),
            mode,
            participants,
        )
    }
}

fn chess(initial_ms: i64, tc: NewTimeControl) -> NewSession {
    NewSession {
        initial_time_ms: initial_ms,
        time_control: tc,
        ..new_session(Mode::PerParticipant, &["w", "b"])
    }
}

/// Creates at T0 and starts at T0.
fn started(new: NewSession) -> Session {
    let (s, _) = create(new, T0).unwrap();
    step(&s, Command::Start { first: None }, T0)
}

fn step(s: &Session, command: Command, now: Micros) -> Session {
    apply(s, &Request::new(command), now).unwrap().session
}

fn apply_events(s: &Session, command: Command, now: Micros) -> (Session, Vec<EventKind>) {
    let a = apply(s, &Request::new(command), now).unwrap();
    (a.session, a.events.iter().map(|e| e.kind).collect())
}

fn switch(s: &Session, now: Micros) -> Session {
    step(
        s,
        Command::Switch {
            from: None,
            next: None,
            lag_ms: None,
        },
        now,
    )
}

fn clock<'a>(s: &'a Session, who: &str) -> &'a Budget {
    &s.participants[s.participant_position(&pid(who)).unwrap()].clock
}

fn shown(s: &Session, who: &str, now: Micros) -> ClockView {
    participant_view(&view(s, now), s.participant_position(&pid(who)).unwrap())
}

fn timeout(s: &Session, now: Micros) -> Result<(Session, Vec<EventKind>), RuleError> {
    apply(s, &Request::new(Command::Timeout), now)
        .map(|a| (a.session, a.events.iter().map(|e| e.kind).collect()))
}

fn active_id(s: &Session) -> &str {
    s.active_participant().unwrap().id.as_str()
}
