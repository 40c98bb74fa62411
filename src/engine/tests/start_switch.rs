//! Start and Switch in MODE_PER_PARTICIPANT: who starts (the lowest index, or
//! the one named), who moves next (the next index, wrapping and skipping
//! expired participants, or the one named), what the mover is charged, the
//! Fischer increment and its cap, the checks on `first`, `from`, `next` and on
//! the status, and a clock already at zero flagging the moment it would run.

use super::*;

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

#[test]
fn start_defaults_to_the_participant_with_the_lowest_index() {
    let mut n = new_session(&["x", "y", "z"], FIVE_MIN_MS);
    n.participants[0].index = Some(9);
    n.participants[1].index = Some(3);
    n.participants[2].index = Some(4);
    let now = T0 + 2 * SEC;
    let a = ok(&created(n), start(), now);
    assert_eq!(kinds(&a), vec![ev(EventKind::Started, Some("y"))]);
    let s = &a.session;
    assert_eq!((s.version, s.status), (2, Status::Running));
    assert_eq!(active_id(s), Some("y"));
    assert_eq!(
        (s.cycle_started_at, s.started_at, s.updated_at),
        (Some(now), Some(now), now)
    );
    assert_eq!(deadline(s), Some(now + 5 * MIN));
    assert_eq!(a.events[0].session, *s);
    assert_eq!((a.events[0].version, a.events[0].at), (2, now));
}

#[test]
fn start_with_an_explicit_first_participant() {
    let a = ok(
        &created(new_session(&["a", "b", "c"], FIVE_MIN_MS)),
        start_with("c"),
        T0,
    );
    assert_eq!(kinds(&a), vec![ev(EventKind::Started, Some("c"))]);
    assert_eq!(active_id(&a.session), Some("c"));
}

#[test]
fn start_with_an_unknown_participant_is_invalid() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_field(&err(&s, start_with("zed"), T0), "first_participant_id");
}

#[test]
fn start_only_from_pending() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, start(), T0 + SEC), "RUNNING");
    let paused = ok(&s, Command::Pause, T0 + SEC).session;
    assert_failed_precondition(&err(&paused, start(), T0 + 2 * SEC), "PAUSED");
}

#[test]
fn start_with_a_budget_adjusted_to_zero_flags_at_once() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("a", -FIVE_MIN_MS), T0).session;
    let a = ok(&s, start(), T0 + SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::Started, Some("a")),
            ev(EventKind::Expired, Some("a"))
        ]
    );
    assert_eq!(a.session.status, Status::Expired);
}

// ---------------------------------------------------------------------------
// Switch
// ---------------------------------------------------------------------------

#[test]
fn switch_charges_the_elapsed_time_and_activates_the_next() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let now = T0 + 12_345_678;
    let a = ok(&s, switch(), now);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("a"))]);
    let s = &a.session;
    let pa = part(s, "a");
    assert_eq!(
        (
            pa.clock.remaining,
            pa.clock.used,
            pa.clock.credits,
            pa.cycle_count
        ),
        (5 * MIN - 12_345_678, 12_345_678, 0, 1)
    );
    assert_eq!(
        part(s, "b"),
        part(&created(new_session(&["a", "b"], FIVE_MIN_MS)), "b"),
        "the next is not charged"
    );
    assert_eq!(
        (s.version, s.cycle_count, s.cycle_started_at),
        (3, 1, Some(now))
    );
    assert_eq!(active_id(s), Some("b"));
    assert_eq!(deadline(s), Some(now + 5 * MIN));
    assert_ledger(s);
}

#[test]
fn switch_adds_the_fischer_increment() {
    let s = started(fischer(new_session(&["a", "b"], FIVE_MIN_MS), 2000, 0));
    let s = ok(&s, switch(), T0 + 12_345_678).session;
    let pa = part(&s, "a");
    assert_eq!(
        (pa.clock.remaining, pa.clock.used, pa.clock.credits),
        (5 * MIN - 12_345_678 + 2 * SEC, 12_345_678, 2 * SEC)
    );
    // An instant move still earns the increment.
    let s = ok(&s, switch(), T0 + 12_345_678).session;
    let pb = part(&s, "b");
    assert_eq!(
        (pb.clock.remaining, pb.clock.used, pb.clock.credits),
        (5 * MIN + 2 * SEC, 0, 2 * SEC)
    );
    assert_ledger(&s);
}

#[test]
fn the_increment_never_lifts_the_budget_above_the_cap() {
    // 60 s + 10 s per move, capped at 65 s.
    let s = started(fischer(new_session(&["a", "b"], 60_000), 10_000, 65_000));
    let s = ok(&s, switch(), T0 + 3 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.credits),
        (65 * SEC, 8 * SEC),
        "57 s + min(10 s, 8 s)"
    );
    let s = ok(&s, switch(), T0 + 4 * SEC).session;
    assert_eq!(
        (part(&s, "b").clock.remaining, part(&s, "b").clock.credits),
        (65 * SEC, 6 * SEC),
        "59 s + min(10 s, 6 s)"
    );
    // Above the cap (by an adjustment) the increment is 0, and the cap never takes time away.
    let s = ok(&s, adjust("a", 30_000), T0 + 4 * SEC).session;
    let s = ok(&s, switch(), T0 + 5 * SEC).session;
    assert_eq!(
        (part(&s, "a").clock.remaining, part(&s, "a").clock.credits),
        (94 * SEC, 8 * SEC)
    );
    assert_ledger(&s);

    // A cap far above the budget lets the whole increment through.
    let s = started(fischer(new_session(&["a", "b"], 60_000), 10_000, 120_000));
    let s = ok(&s, switch(), T0 + 3 * SEC).session;
    assert_eq!(part(&s, "a").clock.remaining, 67 * SEC);
}

#[test]
fn switch_goes_to_the_next_index_wrapping() {
    let mut n = new_session(&["x", "y", "z"], FIVE_MIN_MS);
    n.participants[0].index = Some(20);
    n.participants[1].index = Some(5);
    n.participants[2].index = Some(11);
    let mut s = started(n);
    let mut seen = vec![active_id(&s).unwrap().to_owned()];
    for k in 1..=4 {
        s = ok(&s, switch(), T0 + k * SEC).session;
        seen.push(active_id(&s).unwrap().to_owned());
    }
    assert_eq!(seen, ["y", "z", "x", "y", "z"]);
    assert_eq!(s.cycle_count, 4);
    assert_eq!(
        s.participants
            .iter()
            .map(|p| p.cycle_count)
            .collect::<Vec<_>>(),
        [2, 1, 1]
    );
}

#[test]
fn switch_to_an_explicit_next_participant() {
    let s = started(new_session(&["a", "b", "c"], FIVE_MIN_MS));
    let s = ok(&s, switch_to("c"), T0 + SEC).session;
    assert_eq!(active_id(&s), Some("c"));
    // The mover may even keep the turn.
    let a = ok(
        &s,
        Command::Switch {
            from: Some(pid("c")),
            next: Some(pid("c")),
            lag_ms: None,
        },
        T0 + 3 * SEC,
    );
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("c"))]);
    assert_eq!(active_id(&a.session), Some("c"));
    assert_eq!(a.session.cycle_started_at, Some(T0 + 3 * SEC));
    assert_eq!(part(&a.session, "c").clock.used, 2 * SEC);
    assert_field(
        &err(&s, switch_to("nobody"), T0 + 4 * SEC),
        "next_participant_id",
    );
}

#[test]
fn a_one_participant_session_switches_to_itself() {
    let s = started(new_session(&["solo"], FIVE_MIN_MS));
    let a = ok(&s, switch(), T0 + SEC);
    assert_eq!(kinds(&a), vec![ev(EventKind::Switched, Some("solo"))]);
    assert_eq!(active_id(&a.session), Some("solo"));
    assert_eq!(part(&a.session, "solo").clock.remaining, 5 * MIN - SEC);
}

#[test]
fn switch_from_a_participant_who_is_not_active_is_refused() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, switch_from("b"), T0 + SEC), "from_participant_id");
    assert_failed_precondition(
        &err(&s, switch_from("ghost"), T0 + SEC),
        "from_participant_id",
    );
    let s = ok(&s, switch_from("a"), T0 + SEC).session;
    assert_eq!(active_id(&s), Some("b"));
    // The second of two racing moves by "a" is refused.
    assert_failed_precondition(
        &err(&s, switch_from("a"), T0 + SEC),
        "not the active participant",
    );
}

#[test]
fn switch_to_an_expired_participant_is_refused_and_rotation_skips_it() {
    let s = started(on_timeout(
        new_session(&["a", "b", "c"], FIVE_MIN_MS),
        TimeoutAction::Skip,
    ));
    let s = ok(&s, Command::Timeout, T0 + 5 * MIN).session;
    assert!(part(&s, "a").expired);
    assert_eq!(active_id(&s), Some("b"));
    assert_failed_precondition(&err(&s, switch_to("a"), T0 + 6 * MIN), "has expired");
    let s = ok(&s, switch(), T0 + 6 * MIN).session;
    assert_eq!(active_id(&s), Some("c"));
    let s = ok(&s, switch(), T0 + 7 * MIN).session;
    assert_eq!(
        active_id(&s),
        Some("b"),
        "c wraps around past the expired a"
    );
}

#[test]
fn switch_only_while_running() {
    let s = created(new_session(&["a", "b"], FIVE_MIN_MS));
    assert_failed_precondition(&err(&s, switch(), T0), "PENDING");
    let s = ok(&ok(&s, start(), T0).session, Command::Pause, T0 + SEC).session;
    assert_failed_precondition(&err(&s, switch(), T0 + 2 * SEC), "PAUSED");
}

#[test]
fn switching_to_a_clock_at_zero_flags_it_at_once() {
    let s = started(new_session(&["a", "b"], FIVE_MIN_MS));
    let s = ok(&s, adjust("b", -10 * 60 * 1000), T0 + SEC).session;
    assert_eq!(
        (
            part(&s, "b").clock.remaining,
            part(&s, "b").clock.adjustments,
            part(&s, "b").expired
        ),
        (0, -5 * MIN, false)
    );
    let a = ok(&s, switch(), T0 + 2 * SEC);
    assert_eq!(
        kinds(&a),
        vec![
            ev(EventKind::Switched, Some("a")),
            ev(EventKind::Expired, Some("b"))
        ]
    );
    assert_eq!(a.session.ended_at, Some(T0 + 2 * SEC));
    assert!(part(&a.session, "b").expired);
}
