//! Issue 15's rules as worked examples: UndoSwitch (a takeback exactly),
//! lag compensation (scalachess's quota, on the clock), the abort timeouts
//! (`start_timeout`, `first_move_timeout`) and AdjustTime leaving the turn's
//! start alone. The undo's property over every mode and time control is in
//! `property/undo.rs`.

use super::*;

fn lagged(ms: i64) -> Command {
    Command::Switch {
        from: None,
        next: None,
        lag_ms: Some(ms),
    }
}

fn with_lag(mut n: NewSession) -> NewSession {
    n.lag_compensation = true;
    n
}

// ---------------------------------------------------------------------------
// UndoSwitch
// ---------------------------------------------------------------------------

#[test]
fn an_undo_gives_the_mover_its_turn_back_with_the_clock_it_had() {
    // 5 min + 2 s: a moves after 10 s (increment +2 s), b thinks 7 s, a takes it back.
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2_000, 0));
    let before_switch = view(&s, T0 + 10 * SEC);
    let s = ok(&s, switch(), T0 + 10 * SEC).session;
    assert_eq!(part(&s, "a").clock.remaining, 292 * SEC, "the increment");
    let a = ok(&s, Command::Undo, T0 + 17 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Undone, Some("a"))]);
    let u = a.session;
    assert_eq!(active_id(&u), Some("a"));
    assert_eq!(
        u.participants, before_switch.participants,
        "no increment, b's 7 s back"
    );
    assert_eq!(u.cycle_count, 0);
    assert_eq!(
        (u.cycle_started_at, u.turn_started_at),
        (Some(T0 + 17 * SEC), Some(T0 + 17 * SEC)),
        "a's clock runs from the undo"
    );
    assert_eq!(clock(&u, "a", T0 + 20 * SEC), (287 * SEC, 13 * SEC));
    assert_eq!(clock(&u, "b", T0 + 20 * SEC), (300 * SEC, 0));
    assert_eq!(deadline(&u), Some(T0 + 17 * SEC + 290 * SEC));
    assert_ledger(&u);
    // One level: the undo took the point with it.
    assert_failed_precondition(&err(&u, Command::Undo, T0 + 18 * SEC), "no switch to undo");
}

#[test]
fn an_undo_survives_pauses_but_not_other_changes() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, switch(), T0 + 10 * SEC).session;
    let paused = ok(&s, Command::Pause, T0 + 12 * SEC).session;
    let resumed = ok(&paused, Command::Resume, T0 + 20 * SEC).session;
    let u = ok(&resumed, Command::Undo, T0 + 21 * SEC).session;
    assert_eq!(clock(&u, "a", T0 + 21 * SEC), (290 * SEC, 10 * SEC));
    assert_eq!(
        clock(&u, "b", T0 + 21 * SEC),
        (300 * SEC, 0),
        "b's 3 s back"
    );

    // Undone while paused: a has the turn, and its clock waits for the resume.
    let u = ok(&paused, Command::Undo, T0 + 13 * SEC).session;
    assert_eq!(
        (u.status, active_id(&u), u.cycle_started_at),
        (Status::Paused, Some("a"), None)
    );
    assert_eq!(deadline(&u), None);
    let r = ok(&u, Command::Resume, T0 + 30 * SEC).session;
    assert_eq!(deadline(&r), Some(T0 + 30 * SEC + 290 * SEC));

    // An AdjustTime after the switch takes the undo away.
    let adjusted = ok(&s, adjust("a", 5_000), T0 + 11 * SEC).session;
    assert_failed_precondition(
        &err(&adjusted, Command::Undo, T0 + 12 * SEC),
        "no switch to undo",
    );
    // So does a second switch's undo of the first: only the last one.
    let twice = ok(&s, switch(), T0 + 15 * SEC).session;
    let u = ok(&twice, Command::Undo, T0 + 16 * SEC).session;
    assert_eq!(
        active_id(&u),
        Some("b"),
        "the second switch is undone, not the first"
    );
    assert_failed_precondition(&err(&u, Command::Undo, T0 + 17 * SEC), "no switch to undo");
}

#[test]
fn an_undo_needs_a_switch_and_a_live_session() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, Command::Undo, T0), "PENDING");
    let s = ok(&s, start(), T0).session;
    assert_failed_precondition(&err(&s, Command::Undo, T0 + SEC), "no switch to undo");
    let switched = ok(&s, switch(), T0 + 2 * SEC).session;
    let done = ok(&switched, Command::Complete, T0 + 3 * SEC).session;
    assert_failed_precondition(&err(&done, Command::Undo, T0 + 4 * SEC), "COMPLETED");
}

#[test]
fn a_flag_after_the_switch_takes_the_undo_away() {
    // b has 1 s: it flags before the undo arrives, which is refused: the
    // flag ended the session.
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.participants[1].initial_time_ms = Some(1_000);
    let s = ok(&started(n), switch(), T0 + SEC).session;
    assert_failed_precondition(&err(&s, Command::Undo, T0 + 3 * SEC), "EXPIRED");
}

#[test]
fn an_undo_is_idempotent_by_request_id_and_guarded_by_version() {
    let s = ok(
        &started(new_session(&["a", "b"], FIVE_MIN_MS)),
        switch(),
        T0 + SEC,
    )
    .session;
    let wrong = Request {
        command: Command::Undo,
        expected_version: Some(s.version - 1),
        request_id: None,
    };
    assert!(matches!(
        apply(&s, &wrong, T0 + 2 * SEC),
        Err(RuleError::VersionMismatch { .. })
    ));
    let once = Request {
        command: Command::Undo,
        expected_version: Some(s.version),
        request_id: Some(rid("undo-1")),
    };
    let u = apply(&s, &once, T0 + 2 * SEC).unwrap().session;
    let again = apply(&u, &once, T0 + 3 * SEC).unwrap();
    assert!(again.events.is_empty(), "a retried undo applies nothing");
    assert_eq!(again.session, u);
}

// ---------------------------------------------------------------------------
// Lag compensation
// ---------------------------------------------------------------------------

/// 1+0 on lichess: gain 390 ms, the quota starts at 1.17 s, at most 2.73 s.
#[test]
fn lag_is_compensated_from_the_quota_as_lichess_does() {
    let s = started(with_lag(new_session(&["a", "b"], 60_000)));
    assert_eq!(part(&s, "a").lag_quota, 1_170 * MS);
    // a moves after 2 s reporting 500 ms of lag: charged 1.5 s.
    let a = ok(&s, lagged(500), T0 + 2 * SEC);
    let e = &a.events[0];
    assert_eq!(
        e.lag,
        Some(LagCredit {
            asked: 500 * MS,
            given: 500 * MS
        })
    );
    let s = a.session;
    assert_eq!(part(&s, "a").clock.remaining, 58_500 * MS);
    // quota = min(1.17 + 0.39 - 0.5, 2.73) = 1.06 s
    assert_eq!(part(&s, "a").lag_quota, 1_060 * MS);
    // b reports 5 s of lag: compensated its whole quota, 1.17 s, and no more.
    let a = ok(&s, lagged(5_000), T0 + 8 * SEC);
    assert_eq!(
        a.events[0].lag,
        Some(LagCredit {
            asked: 5 * SEC,
            given: 1_170 * MS
        })
    );
    let s = a.session;
    assert_eq!(
        part(&s, "b").clock.remaining,
        60 * SEC - (6 * SEC - 1_170 * MS)
    );
    assert_eq!(part(&s, "b").lag_quota, 390 * MS, "quota + gain - comp");
    assert_ledger(&s);
}

#[test]
fn the_quota_grows_by_its_gain_up_to_seven_gains() {
    // ¼+0: gain 210 ms, start 630 ms, max 1.47 s; moves with no lag.
    let mut s = started(with_lag(new_session(&["a", "b"], 15_000)));
    let mut now = T0;
    let mut quotas = Vec::new();
    for _ in 0..12 {
        now += 100 * MS;
        s = ok(&s, lagged(0), now).session;
        quotas.push(part(&s, "a").lag_quota.max(part(&s, "b").lag_quota));
    }
    assert_eq!(part(&s, "a").lag_quota, 1_470 * MS, "capped at 7 × gain");
    assert_eq!(quotas[0], 840 * MS, "630 + 210");
}

#[test]
fn compensation_never_charges_less_than_nothing_nor_rescues_a_flag() {
    // 3+0: gain 870 ms, quota 2.61 s. A 300 ms move reporting 2 s of lag is
    // charged 0 (the quota still pays the 2 s, as scalachess's does).
    let s = started(with_lag(new_session(&["a", "b"], 180_000)));
    let a = ok(&s, lagged(2_000), T0 + 300 * MS);
    assert_eq!(
        a.events[0].lag,
        Some(LagCredit {
            asked: 2 * SEC,
            given: 2 * SEC
        })
    );
    let s = a.session;
    assert_eq!(part(&s, "a").clock.remaining, 180 * SEC, "charged nothing");
    assert_eq!(part(&s, "a").lag_quota, 2_610 * MS + 870 * MS - 2 * SEC);
    // b flags at 180 s; a switch 0.5 s later claiming 1 s of lag is judged by the clock.
    let late = ok(&s, lagged(1_000), T0 + 300 * MS + 180_500 * MS);
    assert_eq!(late.session.status, Status::Expired);
    assert_eq!(kinds(&late), vec![ev(EventKind::Expired, Some("b"))]);
}

#[test]
fn lag_is_refused_out_of_range_and_ignored_without_compensation() {
    let plain = started(new_session(&["a", "b"], 60_000));
    let a = ok(&plain, lagged(800), T0 + 2 * SEC);
    assert_eq!(a.events[0].lag, None, "not a compensated session");
    assert_eq!(part(&a.session, "a").clock.remaining, 58 * SEC);
    for bad in [-1, MAX_LAG_MS + 1, i64::MAX, i64::MIN] {
        assert_field(&err(&plain, lagged(bad), T0 + SEC), "lag_ms");
    }
    let mut n = with_lag(new_session(&["a", "b"], 60_000));
    n.mode = Mode::CountUp;
    for p in &mut n.participants {
        p.initial_time_ms = None;
    }
    assert_field(&create(n, T0).unwrap_err(), "lag_compensation");
}

#[test]
fn an_undo_takes_back_the_compensation_and_its_quota() {
    let s = started(with_lag(new_session(&["a", "b"], 60_000)));
    let before = view(&s, T0 + 2 * SEC);
    let s = ok(&s, lagged(500), T0 + 2 * SEC).session;
    let u = ok(&s, Command::Undo, T0 + 3 * SEC).session;
    assert_eq!(
        u.participants, before.participants,
        "clock and quota as before"
    );
    assert_eq!(part(&u, "a").lag_quota, 1_170 * MS);
}

// ---------------------------------------------------------------------------
// Abort timeouts
// ---------------------------------------------------------------------------

#[test]
fn a_session_nobody_starts_in_time_is_cancelled() {
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.start_timeout_ms = 30_000;
    n.start_within = Some(60 * MIN);
    let s = created(n);
    assert_eq!(
        deadline(&s),
        Some(T0 + 30 * SEC),
        "before the unstarted TTL"
    );
    assert_eq!(
        err(&s, Command::Timeout, T0 + 30 * SEC - 1),
        RuleError::NotDue
    );
    let a = ok(&s, Command::Timeout, T0 + 30 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Cancelled, None)]);
    let c = a.session;
    assert_eq!(
        (c.status, c.cancel_reason, c.ended_at),
        (
            Status::Cancelled,
            Some(CancelReason::StartTimeout),
            Some(T0 + 30 * SEC)
        )
    );
    assert_eq!(deadline(&c), None);
    // A start that arrives late is answered by the cancellation.
    assert_failed_precondition(&err(&s, start(), T0 + 31 * SEC), "CANCELLED");
    // Started in time: the timeout is gone.
    let r = ok(&s, start(), T0 + 29 * SEC).session;
    assert_eq!(deadline(&r), Some(T0 + 29 * SEC + 300 * SEC));
}

#[test]
fn a_first_turn_that_lasts_too_long_cancels_the_session_uncharged() {
    let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
    n.first_move_timeout_ms = 20_000;
    let s = started(n);
    assert_eq!(deadline(&s), Some(T0 + 20 * SEC));
    // a moves in time; b's first turn starts the count again.
    let s = ok(&s, switch(), T0 + 15 * SEC).session;
    assert_eq!(deadline(&s), Some(T0 + 35 * SEC));
    // b pauses 100 s in: the pause does not count.
    let p = ok(&s, Command::Pause, T0 + 25 * SEC).session;
    let s = ok(&p, Command::Resume, T0 + 125 * SEC).session;
    assert_eq!(
        deadline(&s),
        Some(T0 + 135 * SEC),
        "10 s of the first turn left"
    );
    let a = ok(&s, Command::Timeout, T0 + 135 * SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Cancelled, Some("b"))]);
    let c = a.session;
    assert_eq!(
        (
            c.status,
            c.cancel_reason,
            c.cycle_started_at,
            c.turn_started_at
        ),
        (
            Status::Cancelled,
            Some(CancelReason::FirstMoveTimeout),
            None,
            None
        )
    );
    assert_eq!(
        part(&c, "b").clock.used,
        10 * SEC,
        "the last stretch is not charged (only what the pause charged)"
    );
    // Past everyone's first move, only the clock counts.
    let s = ok(&s, switch(), T0 + 130 * SEC).session;
    assert_eq!(deadline(&s), Some(T0 + 130 * SEC + 285 * SEC));
    let s = ok(&s, switch(), T0 + 140 * SEC).session;
    assert_eq!(deadline(&s), flag_at(&s));
}

#[test]
fn the_abort_timeouts_have_a_floor_and_a_ceiling() {
    for (set, field) in [
        (
            (|n: &mut NewSession, v| n.start_timeout_ms = v) as fn(&mut NewSession, i64),
            "start_timeout_ms",
        ),
        (
            |n: &mut NewSession, v| n.first_move_timeout_ms = v,
            "first_move_timeout_ms",
        ),
    ] {
        for bad in [-1, 1, MIN_REPEATING_MS - 1, MAX_DURATION_MS + 1] {
            let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
            set(&mut n, bad);
            assert_field(&create(n, T0).unwrap_err(), field);
        }
        let mut n = new_session(&["a", "b"], FIVE_MIN_MS);
        set(&mut n, MIN_REPEATING_MS);
        create(n, T0).unwrap();
    }
}

// ---------------------------------------------------------------------------
// AdjustTime and the turn's start
// ---------------------------------------------------------------------------

#[test]
fn adjust_time_leaves_the_turns_start_alone() {
    let s = ok(
        &started(new_session(&["a", "b"], FIVE_MIN_MS)),
        switch(),
        T0 + 10 * SEC,
    )
    .session;
    assert_eq!(s.turn_began(), Some(T0 + 10 * SEC));
    let s = ok(&s, adjust("b", 30_000), T0 + 14 * SEC).session;
    assert_eq!(
        s.turn_began(),
        Some(T0 + 10 * SEC),
        "the turn began at the switch"
    );
    assert_eq!(clock(&s, "b", T0 + 20 * SEC), (320 * SEC, 10 * SEC));
    // A pause keeps it too; the end clears it.
    let p = ok(&s, Command::Pause, T0 + 15 * SEC).session;
    assert_eq!(p.turn_began(), Some(T0 + 10 * SEC));
    let done = ok(&p, Command::Complete, T0 + 16 * SEC).session;
    assert_eq!(done.turn_began(), None);
}
