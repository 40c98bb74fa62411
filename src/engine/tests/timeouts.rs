//! Time and running out of it, in MODE_PER_PARTICIPANT (SPEC §5): what
//! `participant_clock` and `deadline` show at any instant, a `now` earlier
//! than the last change; when a Timeout is due (not one µs before the
//! deadline, exactly once at it, processed at the deadline when late); what
//! END_SESSION, NOTIFY and SKIP do, several deadlines passed at once; and a
//! switch that arrives at or after the deadline, judged by the clock.
//!
//! The timeout actions in the other modes: `spec::timeout_actions`,
//! `spec::modes`.

use super::*;

// ---------------------------------------------------------------------------
// The running clock and its deadline, at any instant
// ---------------------------------------------------------------------------

#[test]
fn a_now_earlier_than_the_last_change_is_treated_as_the_last_change() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 1000, 0));
    let s = ok(&s, switch(), T0 + 10 * SEC).session;
    let a = ok(&s, switch(), T0 + 3 * SEC);
    let s = a.session;
    assert_eq!(
        (part(&s, "b").clock.used, part(&s, "b").clock.remaining),
        (0, 5 * MIN + SEC),
        "charged 0, not -7 s"
    );
    assert_eq!(
        (s.updated_at, a.events[0].at, s.cycle_started_at),
        (T0 + 10 * SEC, T0 + 10 * SEC, Some(T0 + 10 * SEC))
    );
    assert_eq!(err(&s, Command::Timeout, T0), RuleError::NotDue);
}

#[test]
fn participant_clock_charges_the_running_stretch_on_the_fly() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_eq!(clock(&s, "a", T0), (5 * MIN, 0));
    assert_eq!(
        clock(&s, "a", T0 + 1_500_000),
        (5 * MIN - 1_500_000, 1_500_000)
    );
    assert_eq!(
        clock(&s, "a", T0 - 5 * SEC),
        (5 * MIN, 0),
        "never before the cycle started"
    );
    assert_eq!(clock(&s, "a", T0 + 5 * MIN), (0, 5 * MIN));
    assert_eq!(
        clock(&s, "a", T0 + 60 * MIN),
        (0, 5 * MIN),
        "never past zero"
    );
    assert_eq!(
        clock(&s, "b", T0 + 60 * MIN),
        (5 * MIN, 0),
        "a waiting clock does not move"
    );
}

#[test]
fn participant_clock_does_not_panic_on_extreme_instants() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    for now in [i64::MIN, i64::MIN + 1, i64::MAX] {
        let got = std::panic::catch_unwind(|| participant_clock(&s, 0, now));
        assert!(got.is_ok(), "participant_clock(.., {now}) panicked");
    }
    assert_eq!(participant_clock(&s, 0, i64::MIN), (5 * MIN, 0));
    assert_eq!(participant_clock(&s, 0, i64::MAX), (0, 5 * MIN));
}

#[test]
fn deadline_only_while_a_clock_runs() {
    let pending = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_eq!(deadline(&pending), None);
    let running = ok(&pending, start(), T0 + SEC).session;
    assert_eq!(deadline(&running), Some(T0 + SEC + 5 * MIN));
    assert_eq!(
        deadline(&ok(&running, Command::Pause, T0 + 2 * SEC).session),
        None
    );
    assert_eq!(
        deadline(&ok(&running, Command::Complete, T0 + 2 * SEC).session),
        None
    );
}

// ---------------------------------------------------------------------------
// Running out of time (SPEC §5)
// ---------------------------------------------------------------------------

#[test]
fn timeout_is_not_due_one_microsecond_before_the_deadline() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let d = deadline(&s).unwrap();
    assert_eq!(d, T0 + 5 * MIN);
    assert_eq!(err(&s, Command::Timeout, d - 1), RuleError::NotDue);
    assert_eq!(err(&s, Command::Timeout, T0), RuleError::NotDue);
    assert_eq!(clock(&s, "a", d - 1), (1, 5 * MIN - 1));
    let pending = created(new_session(&["a"], 1000));
    assert_eq!(
        err(&pending, Command::Timeout, T0 + 60 * MIN),
        RuleError::NotDue
    );
}

#[test]
fn timeout_exactly_at_the_deadline_ends_the_session_once() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    let s2 = &a.session;
    assert_eq!(
        (s2.version, s2.status, s2.ended_at, s2.cycle_started_at),
        (3, Status::Expired, Some(d), None)
    );
    let pa = part(s2, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.expired
        ),
        (0, 5 * MIN, 0, true),
        "no increment on a flag"
    );
    assert_eq!(part(s2, "b"), part(&s, "b"));
    assert_eq!(deadline(s2), None);
    assert_ledger(s2);
    // Exactly one transition per deadline: a duplicate timer finds nothing to do.
    assert_eq!(err(s2, Command::Timeout, d), RuleError::NotDue);
    assert_eq!(err(s2, Command::Timeout, d + 60 * MIN), RuleError::NotDue);
}

#[test]
fn a_late_timeout_is_processed_at_the_deadline_instant() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d + 3 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    assert_eq!(a.session.ended_at, Some(d), "ended when the clock ran out");
    assert_eq!(
        (a.events[0].at, a.session.updated_at),
        (d + 3 * SEC, d + 3 * SEC),
        "committed when processed"
    );
    assert_eq!(
        part(&a.session, "a").clock.used,
        5 * MIN,
        "never charged past zero"
    );
    assert_eq!(clock(&s, "a", d + 3 * SEC), (0, 5 * MIN));
}

#[test]
fn notify_flags_the_participant_and_keeps_the_session_running() {
    let s = started(fischer(
        on_timeout(new_session(&["a", "b"], FIVE_MIN_MS), TimeoutAction::Notify),
        2000,
        0,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    let s = a.session;
    assert_eq!((s.status, active_id(&s)), (Status::Running, Some("a")));
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").expired),
        (0, true)
    );
    assert_eq!(
        deadline(&s),
        None,
        "the flagged clock stays at 0, nothing more is due"
    );
    assert_eq!(clock(&s, "a", d + 60 * MIN), (0, 5 * MIN));
    assert_eq!(err(&s, Command::Timeout, d), RuleError::NotDue);

    // The caller moves on: no increment for the flagged mover.
    let a = ok(&s, switch(), d + 4 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("a"))]);
    let s = a.session;
    let pa = part(&s, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.cycle_count
        ),
        (0, 5 * MIN, 0, 1)
    );
    assert_eq!(
        (active_id(&s), s.cycle_started_at, deadline(&s)),
        (Some("b"), Some(d + 4 * SEC), Some(d + 4 * SEC + 5 * MIN))
    );
    // b's moves rotate back to b alone.
    let s = ok(&s, switch(), d + 5 * SEC).session;
    assert_eq!(
        (active_id(&s), part(&s, "b").clock.remaining),
        (Some("b"), 5 * MIN - SEC + 2 * SEC)
    );
    assert_failed_precondition(&err(&s, switch_to("a"), d + 6 * SEC), "has expired");

    // b flags too: nobody is eligible, so the next switch ends the session by time.
    let d2 = deadline(&s).unwrap();
    let a = ok(&s, Command::Timeout, d2);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("b"))]
    );
    assert_eq!(a.session.status, Status::Running);
    let a = ok(&a.session, switch(), d2 + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("b"))]);
    assert_eq!(
        (a.session.status, a.session.ended_at),
        (Status::Expired, Some(d2 + SEC))
    );
    assert_ledger(&a.session);
}

#[test]
fn skip_flags_the_participant_and_moves_on_from_the_deadline() {
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, Command::Timeout, d + 3 * SEC);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    let s = a.session;
    assert_eq!((s.status, active_id(&s)), (Status::Running, Some("b")));
    assert_eq!(
        s.cycle_started_at,
        Some(d),
        "b's turn began when a's clock ran out"
    );
    assert_eq!(clock(&s, "b", d + 3 * SEC), (5 * MIN - 3 * SEC, 3 * SEC));
    assert_eq!(deadline(&s), Some(d + 5 * MIN));
    assert_eq!(
        (
            part(&s, "a").expired,
            part(&s, "a").cycle_count,
            s.cycle_count
        ),
        (true, 1, 1)
    );
    assert_eq!(err(&s, Command::Timeout, d + 3 * SEC), RuleError::NotDue);
}

#[test]
fn skip_ends_the_session_when_fewer_than_two_remain() {
    let s = started(on_timeout(
        new_session(&["a", "b"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let a = ok(&s, Command::Timeout, T0 + 5 * MIN);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    assert_eq!(
        (a.session.status, a.session.ended_at),
        (Status::Expired, Some(T0 + 5 * MIN))
    );
}

#[test]
fn skip_processes_every_passed_deadline_at_its_own_instant() {
    let mut n = on_timeout(
        new_session(&["a", "b", "c", "d"], 60_000),
        TimeoutAction::Skip,
    );
    n.participants[0].initial_time_ms = Some(5_000);
    n.participants[1].initial_time_ms = Some(2_000);
    let s = started(n);
    let a = ok(&s, Command::Timeout, T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::ParticipantExpired, Some("b"))
        ]
    );
    assert_eq!(
        a.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4]
    );
    let s2 = &a.session;
    assert_eq!(
        (active_id(s2), s2.cycle_started_at, deadline(s2)),
        (Some("c"), Some(T0 + 7 * SEC), Some(T0 + 67 * SEC))
    );
    assert_eq!(
        (part(s2, "b").clock.used, part(s2, "b").clock.remaining),
        (2 * SEC, 0)
    );

    // With three players the second flag leaves one: the session expires at b's deadline.
    let mut n = on_timeout(new_session(&["a", "b", "c"], 60_000), TimeoutAction::Skip);
    n.participants[0].initial_time_ms = Some(5_000);
    n.participants[1].initial_time_ms = Some(2_000);
    let a = ok(&started(n), Command::Timeout, T0 + 10 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::Expired, Some("b"))
        ]
    );
    assert_eq!(a.session.ended_at, Some(T0 + 7 * SEC));
}

// A switch that arrives after the deadline is judged by the clock (SPEC §5).

#[test]
fn a_late_switch_under_end_session_expires_the_session_instead() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let d = T0 + 5 * MIN;
    for now in [d, d + 1, d + 5 * SEC] {
        let a = ok(&s, switch(), now);
        assert_eq!(
            kinds(&a),
            vec![ev(EventKind::Expired, Some("a"))],
            "switch at d+{}µs",
            now - d
        );
        let s2 = &a.session;
        assert_eq!(
            (s2.status, s2.ended_at, s2.version),
            (Status::Expired, Some(d), 3)
        );
        let pa = part(s2, "a");
        assert_eq!(
            (
                pa.clock.remaining,
                pa.clock.used,
                pa.clock.credits,
                pa.cycle_count,
                pa.expired
            ),
            (0, 5 * MIN, 0, 0, true)
        );
        assert_eq!(
            (s2.cycle_count, part(s2, "b")),
            (0, part(&s, "b")),
            "the switch itself is not applied"
        );
    }
    // Arguments of a switch that came too late do not matter any more.
    let a = ok(&s, switch_from("b"), d + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
}

#[test]
fn a_late_pause_or_complete_under_end_session_commits_the_flag_instead() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let d = T0 + 5 * MIN;
    for command in [Command::Pause, Command::Complete] {
        for now in [d, d + 5 * SEC] {
            let a = ok(&s, command.clone(), now);
            assert_eq!(
                kinds(&a),
                vec![ev(EventKind::Expired, Some("a"))],
                "{command:?} at d+{}µs",
                now - d
            );
            let s2 = &a.session;
            assert_eq!(
                (s2.status, s2.ended_at, s2.version),
                (Status::Expired, Some(d), 3),
                "{command:?}: the flag, at its deadline, is what committed"
            );
            assert_eq!(part(s2, "a").clock.remaining, 0);
        }
        // Before the deadline the command is itself.
        let a = ok(&s, command.clone(), d - 1);
        assert!(
            !kinds(&a).contains(&ev(EventKind::Expired, Some("a"))),
            "{command:?} in time"
        );
    }
}

#[test]
fn a_move_landing_exactly_on_the_deadline_instant_is_a_flag() {
    // settle() processes every deadline `d <= now`: the deadline instant itself is
    // already out of time, so the move never earns its increment there.
    let d = T0 + 5 * MIN;
    let n = |action| {
        fischer(
            on_timeout(new_session(&["a", "b", "c"], FIVE_MIN_MS), action),
            2000,
            0,
        )
    };

    let a = ok(&started(n(TimeoutAction::EndSession)), switch(), d);
    assert_eq!(kinds(&a), vec![ev(EventKind::Expired, Some("a"))]);
    assert_eq!(
        (a.session.ended_at, part(&a.session, "a").clock.credits),
        (Some(d), 0)
    );

    let a = ok(&started(n(TimeoutAction::Skip)), switch(), d);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    assert_eq!(
        (active_id(&a.session), a.session.cycle_started_at),
        (Some("b"), Some(d))
    );
    assert_eq!(part(&a.session, "a").clock.credits, 0);

    let a = ok(&started(n(TimeoutAction::Notify)), switch(), d);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::Switched, Some("a"))
        ]
    );
    assert_eq!(
        (active_id(&a.session), part(&a.session, "a").clock.remaining),
        (Some("b"), 0)
    );
    assert_eq!(part(&a.session, "a").clock.credits, 0);

    // The same instant through the timer: one transition, then nothing is due.
    let s = started(n(TimeoutAction::EndSession));
    let t = ok(&s, Command::Timeout, d);
    assert_eq!(t.events.len(), 1);
    assert_eq!(err(&t.session, Command::Timeout, d), RuleError::NotDue);
}

#[test]
fn a_switch_one_microsecond_before_the_deadline_is_in_time() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let a = ok(&s, switch(), T0 + 5 * MIN - 1);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("a"))]);
    assert_eq!(
        (
            part(&a.session, "a").clock.remaining,
            part(&a.session, "a").expired
        ),
        (1 + 2 * SEC, false)
    );
    assert_eq!(active_id(&a.session), Some("b"));
}

#[test]
fn a_late_switch_under_skip_only_applies_the_skip() {
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, switch_from("a"), d + 5 * SEC);
    assert_eq!(
        kinds(&a),
        vec![ev(EventKind::ParticipantExpired, Some("a"))]
    );
    let s2 = &a.session;
    assert_eq!(
        (s2.status, active_id(s2), s2.cycle_started_at),
        (Status::Running, Some("b"), Some(d))
    );
    assert_eq!(
        clock(s2, "b", d + 5 * SEC),
        (5 * MIN - 5 * SEC, 5 * SEC),
        "b has been on the clock since d"
    );
    assert_eq!(s2.cycle_count, 1);
    // Exactly the state the timer would have produced.
    let timer = ok(&s, Command::Timeout, d + 5 * SEC);
    assert_eq!(timer.session, a.session);
}

#[test]
fn a_late_switch_under_notify_flags_then_switches() {
    let s = started(fischer(
        on_timeout(
            new_session(&["a", "b", "c"], FIVE_MIN_MS),
            TimeoutAction::Notify,
        ),
        2000,
        0,
    ));
    let d = T0 + 5 * MIN;
    let a = ok(&s, switch(), d + 5 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::ParticipantExpired, Some("a")),
            ev(EventKind::Switched, Some("a"))
        ]
    );
    assert_eq!(
        a.events.iter().map(|e| e.version).collect::<Vec<_>>(),
        [3, 4]
    );
    let s2 = &a.session;
    assert_eq!(
        (s2.status, active_id(s2), s2.cycle_started_at),
        (Status::Running, Some("b"), Some(d + 5 * SEC))
    );
    let pa = part(s2, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.cycle_count,
            pa.expired
        ),
        (0, 5 * MIN, 0, 1, true)
    );
    assert_ledger(s2);
}
