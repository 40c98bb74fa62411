//! SPEC §5, the timeout actions: END_SESSION expires the participant and stops
//! every clock, SKIP eliminates and ends when fewer than two remain, NOTIFY
//! runs on with the clock at zero; a switch after the deadline is judged by
//! the clock; an adjustment that empties the running clock flags at once.

use super::*;

#[test]
fn end_session_expires_the_participant_and_stops_every_clock() {
    let s = started(chess(5_000, NewTimeControl::default()));
    let (s, kinds) = timeout(&s, at(5_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::Expired]);
    assert_eq!(s.status, Status::Expired);
    assert!(s.participants[0].expired);
    assert_eq!(deadline(&s), None);
    assert_eq!(s.ended_at, Some(at(5_000)));
}

#[test]
fn skip_per_participant_eliminates_and_ends_when_fewer_than_two_remain() {
    let new = NewSession {
        initial_time_ms: 5_000,
        timeout_action: Some(TimeoutAction::Skip),
        ..new_session(Mode::PerParticipant, &["a", "b", "c"])
    };
    let s = started(new);
    let (s, kinds) = timeout(&s, at(5_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::ParticipantExpired]);
    assert_eq!(active_id(&s), "b");
    // b and c play; a is skipped from now on.
    let s = switch(&s, at(6_000));
    let s = switch(&s, at(7_000));
    assert_eq!(active_id(&s), "b");
    // b flags: only c is left -> EXPIRED.
    let (s, kinds) = timeout(&s, at(7_000 + 4_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::Expired]);
    assert_eq!(s.status, Status::Expired);
}

#[test]
fn notify_keeps_the_session_running_with_the_clock_at_zero() {
    let new = NewSession {
        timeout_action: Some(TimeoutAction::Notify),
        ..chess(5_000, NewTimeControl::default())
    };
    let s = started(new);
    let (s, kinds) = timeout(&s, at(5_000)).unwrap();
    assert_eq!(kinds, vec![EventKind::ParticipantExpired]);
    assert_eq!(s.status, Status::Running);
    assert_eq!(deadline(&s), None);
    assert_eq!(shown(&s, "w", at(9_000)).remaining, 0);
    assert_eq!(
        timeout(&s, at(9_000)).unwrap_err(),
        RuleError::NotDue,
        "one transition per deadline"
    );
    let s = switch(&s, at(9_000));
    assert_eq!(active_id(&s), "b");
    assert_eq!(deadline(&s), Some(at(9_000 + 5_000)));
}

#[test]
fn a_late_switch_is_judged_by_the_clock() {
    let s = started(chess(
        5_000,
        NewTimeControl {
            increment_ms: 3_000,
            ..Default::default()
        },
    ));
    let (s, kinds) = apply_events(
        &s,
        Command::Switch {
            from: Some(pid("w")),
            next: None,
            lag_ms: None,
        },
        at(5_001),
    );
    assert_eq!(kinds, vec![EventKind::Expired], "the switch is not applied");
    assert!(s.participants[0].expired);
    assert_eq!(clock(&s, "w").remaining, 0);
}

#[test]
fn an_adjustment_that_empties_the_running_clock_flags_at_once() {
    let s = started(chess(60_000, NewTimeControl::default()));
    let adjust = Command::Adjust {
        target: AdjustTarget::Participant(pid("w")),
        delta_ms: -100_000,
    };
    let (s, kinds) = apply_events(&s, adjust, at(1_000));
    assert_eq!(kinds, vec![EventKind::TimeAdjusted, EventKind::Expired]);
    assert_eq!(clock(&s, "w").adjustments, -ms(59_000));
}
