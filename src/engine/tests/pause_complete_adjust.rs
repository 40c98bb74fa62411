//! The other commands of MODE_PER_PARTICIPANT: Pause and Resume (the running
//! stretch is charged, a paused clock does not move), Complete and Cancel
//! (from each status; after the deadline the session has already expired),
//! AdjustTime (running, waiting, pending and paused clocks, never below zero,
//! a running clock emptied under each timeout action, argument checks), and
//! terminal sessions refusing every command.

use super::*;

// ---------------------------------------------------------------------------
// Pause / resume
// ---------------------------------------------------------------------------

#[test]
fn pause_charges_the_running_stretch_and_stops_the_clock() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = ok(&s, Command::Pause, T0 + 10 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Paused, None)]);
    let s = a.session;
    assert_eq!(s.status, Status::Paused);
    assert_eq!(active_id(&s), Some("a"), "the turn stays with a");
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (290 * SEC, 10 * SEC)
    );
    assert_eq!((s.cycle_started_at, deadline(&s)), (None, None));
    assert_eq!(
        clock(&s, "a", T0 + 60 * MIN),
        (290 * SEC, 10 * SEC),
        "a paused clock does not move"
    );
    assert_eq!(err(&s, Command::Timeout, T0 + 60 * MIN), RuleError::NotDue);

    let a = ok(&s, Command::Resume, T0 + 100 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Resumed, None)]);
    let s = a.session;
    assert_eq!(
        (s.status, s.cycle_started_at),
        (Status::Running, Some(T0 + 100 * SEC))
    );
    assert_eq!(deadline(&s), Some(T0 + 100 * SEC + 290 * SEC));
    assert_eq!(clock(&s, "a", T0 + 101 * SEC), (289 * SEC, 11 * SEC));

    let s = ok(&s, switch(), T0 + 130 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (260 * SEC, 40 * SEC),
        "the pause is not charged"
    );
    assert_ledger(&s);
}

#[test]
fn pause_and_resume_only_from_the_right_status() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(
        &err(&s, Command::Pause, T0),
        "cannot pause a session that is PENDING",
    );
    assert_failed_precondition(&err(&s, Command::Resume, T0), "PENDING");
    let s = ok(&s, start(), T0).session;
    assert_failed_precondition(&err(&s, Command::Resume, T0), "RUNNING");
    let s = ok(&s, Command::Pause, T0).session;
    assert_failed_precondition(&err(&s, Command::Pause, T0), "PAUSED");
}

#[test]
fn resuming_a_clock_adjusted_to_zero_flags_at_once() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, Command::Pause, T0 + 10 * SEC).session;
    let s = ok(&s, adjust("a", -FIVE_MIN_MS), T0 + 20 * SEC).session;
    assert_eq!(part(&s, "a").clock.remaining, 0);
    let a = ok(&s, Command::Resume, T0 + 30 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::Resumed, None),
            ev(EventKind::Expired, Some("a"))
        ]
    );
}

// ---------------------------------------------------------------------------
// Complete / cancel
// ---------------------------------------------------------------------------

#[test]
fn complete_charges_the_running_clock_and_ends_the_session() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = ok(&s, Command::Complete, T0 + 7 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Completed, None)]);
    let s = a.session;
    assert_eq!(
        (s.status, s.ended_at, s.cycle_started_at),
        (Status::Completed, Some(T0 + 7 * SEC), None)
    );
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (293 * SEC, 7 * SEC)
    );
    assert_eq!(deadline(&s), None);
    assert_ledger(&s);
}

#[test]
fn cancel_from_pending_running_and_paused() {
    let pending = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let a = ok(&pending, Command::Cancel, T0 + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Cancelled, None)]);
    assert_eq!(
        (a.session.status, a.session.ended_at),
        (Status::Cancelled, Some(T0 + SEC))
    );

    let running = ok(&pending, start(), T0).session;
    let a = ok(&running, Command::Cancel, T0 + 4 * SEC);
    assert_eq!(
        (a.session.status, part(&a.session, "a").clock.used),
        (Status::Cancelled, 4 * SEC)
    );

    let paused = ok(&running, Command::Pause, T0 + 4 * SEC).session;
    let a = ok(&paused, Command::Complete, T0 + 60 * SEC);
    assert_eq!(
        (a.session.status, part(&a.session, "a").clock.used),
        (Status::Completed, 4 * SEC)
    );
    let a = ok(&paused, Command::Cancel, T0 + 60 * SEC);
    assert_eq!(a.session.status, Status::Cancelled);
}

#[test]
fn complete_after_the_deadline_finds_the_session_expired() {
    // The clock is judged first: the session ended by time before the complete
    // (or pause) arrived, and that flag is what the call commits.
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for (command, at) in [
        (Command::Complete, T0 + 5 * MIN),
        (Command::Pause, T0 + 6 * MIN),
    ] {
        let a = ok(&s, command, at);
        assert_eq!(a.session.status, Status::Expired);
        assert_eq!(a.session.ended_at, Some(T0 + 5 * MIN));
    }
    // Once it is stored EXPIRED, they are refused as on any ended session.
    let expired = ok(&s, Command::Complete, T0 + 5 * MIN).session;
    assert_failed_precondition(&err(&expired, Command::Complete, T0 + 6 * MIN), "EXPIRED");
    assert_failed_precondition(
        &err(&expired, Command::Pause, T0 + 6 * MIN),
        "cannot pause a session that is EXPIRED",
    );
    let a = ok(&s, Command::Complete, T0 + 5 * MIN - 1);
    assert_eq!(a.session.status, Status::Completed);
}

// ---------------------------------------------------------------------------
// AdjustTime
// ---------------------------------------------------------------------------

#[test]
fn adjust_gives_time_to_the_running_clock_and_moves_its_deadline() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_eq!(deadline(&s), Some(T0 + 5 * MIN));
    let a = ok(&s, adjust("a", 30_000), T0 + 10 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::TimeAdjusted, Some("a"))]);
    let s = a.session;
    assert_eq!(clock(&s, "a", T0 + 10 * SEC), (320 * SEC, 10 * SEC));
    assert_eq!(part(&s, "a").clock.adjustments, 30 * SEC);
    assert_eq!(deadline(&s), Some(T0 + 5 * MIN + 30 * SEC));
    assert_eq!(
        (s.status, active_id(&s)),
        (Status::Running, Some("a")),
        "the turn goes on"
    );
    assert_eq!(clock(&s, "a", T0 + 15 * SEC), (315 * SEC, 15 * SEC));
    let s = ok(&s, switch(), T0 + 20 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (310 * SEC, 20 * SEC)
    );
    assert_ledger(&s);
}

#[test]
fn adjust_takes_time_from_a_waiting_clock_never_below_zero() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("b", -60_000), T0 + SEC).session;
    assert_eq!(
        (
            part(&s, "b").clock.remaining,
            part(&s, "b").clock.adjustments
        ),
        (4 * MIN, -MIN)
    );
    let s = ok(&s, adjust("b", -600_000), T0 + 2 * SEC).session;
    assert_eq!(
        (
            part(&s, "b").clock.remaining,
            part(&s, "b").clock.adjustments
        ),
        (0, -5 * MIN),
        "only what was left is taken"
    );
    assert!(
        !part(&s, "b").expired,
        "a clock that does not run does not flag"
    );
    assert_eq!(
        (s.status, deadline(&s)),
        (Status::Running, Some(T0 + 5 * MIN))
    );
    let s = ok(&s, adjust("b", 1), T0 + 3 * SEC).session;
    assert_eq!(part(&s, "b").clock.remaining, MS);
    assert_ledger(&s);
}

#[test]
fn adjust_works_while_pending_and_paused() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("a", 1000), T0).session;
    assert_eq!(part(&s, "a").clock.remaining, 5 * MIN + SEC);
    let s = ok(&ok(&s, start(), T0).session, Command::Pause, T0 + SEC).session;
    let s = ok(&s, adjust("a", -2000), T0 + 5 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.used),
        (5 * MIN - 2 * SEC, SEC)
    );
    assert_eq!(s.status, Status::Paused);
    assert_ledger(&s);
}

#[test]
fn adjust_that_empties_the_running_clock_flags_in_the_same_apply() {
    // END_SESSION: TIME_ADJUSTED then EXPIRED, two versions in one apply.
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for delta in [-290_000, -600_000, -MAX_DURATION_MS] {
        let a = ok(&s, adjust("a", delta), T0 + 10 * SEC);
        assert_eq!(
            kinds(&a),
            vec![
                ev(EventKind::TimeAdjusted, Some("a")),
                ev(EventKind::Expired, Some("a"))
            ]
        );
        assert_eq!(
            a.events.iter().map(|e| e.version).collect::<Vec<_>>(),
            [3, 4]
        );
        let s = &a.session;
        let pa = part(s, "a");
        assert_eq!(
            (
                pa.clock.remaining,
                pa.clock.used,
                pa.clock.adjustments,
                pa.expired
            ),
            (0, 10 * SEC, -290 * SEC, true)
        );
        assert_eq!(
            (s.status, s.ended_at, deadline(s)),
            (Status::Expired, Some(T0 + 10 * SEC), None)
        );
        assert_ledger(s);
    }
    // 1 ms left: no flag.
    let a = ok(&s, adjust("a", -289_999), T0 + 10 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::TimeAdjusted, Some("a"))]);
    assert_eq!(deadline(&a.session), Some(T0 + 10 * SEC + MS));

    // NOTIFY: the session runs on with that clock at 0.
    let s = started(on_timeout(
        new_session(&["a", "b"], FIVE_MIN_MS),
        TimeoutAction::Notify,
    ));
    let a = ok(&s, adjust("a", -600_000), T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::TimeAdjusted, Some("a")),
            ev(EventKind::ParticipantExpired, Some("a"))
        ]
    );
    assert_eq!(
        (
            a.session.status,
            active_id(&a.session),
            deadline(&a.session)
        ),
        (Status::Running, Some("a"), None)
    );

    // SKIP: the turn moves on at that instant.
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let a = ok(&s, adjust("a", -600_000), T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::TimeAdjusted, Some("a")),
            ev(EventKind::ParticipantExpired, Some("a"))
        ]
    );
    assert_eq!(
        (active_id(&a.session), a.session.cycle_started_at),
        (Some("b"), Some(T0 + 10 * SEC))
    );
}

#[test]
fn adjust_checks_its_arguments() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for bad in [
        0,
        MAX_DURATION_MS + 1,
        -MAX_DURATION_MS - 1,
        i64::MAX,
        i64::MIN + 1,
    ] {
        assert_field(&err(&s, adjust("a", bad), T0), "delta_ms");
    }
    assert_eq!(
        part(&ok(&s, adjust("b", MAX_DURATION_MS), T0).session, "b")
            .clock
            .remaining,
        5 * MIN + 30 * 24 * 60 * MIN
    );
    assert_field(&err(&s, adjust("nobody", 1000), T0), "participant_id");
    let group = Command::Adjust {
        target: AdjustTarget::Group(GroupId::parse("g", "team").unwrap()),
        delta_ms: 1000,
    };
    assert_field(&err(&s, group, T0), "group_id");
}

/// Regression: `delta_ms.abs()` overflowed on i64::MIN (a panic in debug; in release
/// it passed validation and zeroed the clock, flagging a running one).
#[test]
fn adjust_with_the_most_negative_delta_is_invalid_not_a_panic() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let got = std::panic::catch_unwind(|| apply(&s, &req(adjust("a", i64::MIN)), T0 + SEC));
    match got {
        Ok(Err(e)) => assert_field(&e, "delta_ms"),
        Ok(Ok(a)) => panic!(
            "accepted delta_ms = i64::MIN: {:?}, a's clock {:?}",
            kinds(&a),
            participant_clock(&a.session, 0, T0 + SEC)
        ),
        Err(_) => panic!("apply panicked on delta_ms = i64::MIN"),
    }
}

// ---------------------------------------------------------------------------
// Terminal states
// ---------------------------------------------------------------------------

fn every_command() -> Vec<Command> {
    vec![
        start(),
        start_with("a"),
        switch(),
        switch_from("a"),
        switch_to("b"),
        Command::Pause,
        Command::Resume,
        Command::Complete,
        Command::Cancel,
        adjust("a", 1000),
        adjust("b", -1000),
        adjust("a", 0),
        adjust("nobody", 1000),
    ]
}

#[test]
fn terminal_sessions_accept_no_command() {
    let running = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let expired = ok(&running, Command::Timeout, T0 + 5 * MIN).session;
    let completed = ok(&running, Command::Complete, T0 + SEC).session;
    let cancelled = ok(
        &created(new_session(&["a", "b"], FIVE_MIN_MS)),
        Command::Cancel,
        T0,
    )
    .session;
    for (s, name) in [
        (&expired, "EXPIRED"),
        (&completed, "COMPLETED"),
        (&cancelled, "CANCELLED"),
    ] {
        assert!(s.status.is_terminal());
        for c in every_command() {
            for now in [s.updated_at, s.updated_at + 60 * MIN, T0 - 60 * MIN] {
                assert_failed_precondition(&err(s, c.clone(), now), name);
            }
        }
        // The timer's command has nothing to do on an ended session (the store treats it as a no-op).
        assert_eq!(
            err(s, Command::Timeout, s.updated_at + 60 * MIN),
            RuleError::NotDue
        );
    }
}
